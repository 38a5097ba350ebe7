"""Image encoder: CLIP's visual tower as point-e's image-grid models use it.

With ``conditioning.text`` and ``conditioning.clip_weights`` (finding and reading CLIP files),
the only modules that import open_clip for conditioning (``evaluation.alignment`` loads a full
open_clip model lazily for CLIP R-precision). ``ImageEncoder.embed(images)`` returns the
**patch grid** ``[B, 256, 1024]`` of CLIP ViT-L/14 at 224 px, taken as point-e's
``ImageCLIP.embed_images_grid`` takes it: ``conv1`` → + class token → + positional embedding →
``ln_pre`` → transformer, keeping the 256 patch tokens (the class token dropped) BEFORE CLIP's
final ``ln_post`` and projection. Point-e's ``base40M``/``base300M``/``base1B`` and its upsampler
normalise these tokens themselves (``clip_embed = LayerNorm + Linear``).

Preprocessing is CLIP's (open_clip ``image_transform`` for the tag: resize the shortest side to
224 with bicubic interpolation, centre crop, RGB, normalise with CLIP's mean/std), as point-e's
``clip.load`` preprocess.

Weights (``ImageEncoder.from_pretrained(arch, pretrained)``): an open_clip tag resolved from the
LOCAL caches only (the same file and the same lookup as ``conditioning.text``: one CLIP
checkpoint serves both towers), or a local weights file (``.safetensors``, ``.bin``/``.pt``
read with ``weights_only=True``, OpenAI's TorchScript ``ViT-L-14.pt``). Only the ``visual.*``
weights are loaded. ``ImageEncoder.from_config("tiny")`` is a random-init tower of the same
token layout (224 px, 14 px patches: 256 tokens) for tests.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from open_clip.transform import image_transform
from PIL import Image
from torch import nn

from pointdiff.conditioning.clip_weights import ClipFilesError, resolve_weights, tower_state_dict
from pointdiff.conditioning.scratch import build_scratch_tower

# From-scratch towers: ViT-L/14's token layout (224 px, 14 px patches -> 16×16 grid), tiny width.
SCRATCH_CONFIGS = {
    "tiny": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 224,
            "patch_size": 14,
            "width": 64,
            "layers": 2,
            "head_width": 32,
        },
    },
}
_CLIP_MEAN = open_clip.OPENAI_DATASET_MEAN
_CLIP_STD = open_clip.OPENAI_DATASET_STD


class ImageEncoderError(ValueError):
    """Bad images, or CLIP image weights that cannot be found or read (the reason is named)."""


class ImageEncoder(nn.Module):
    """An open_clip ViT visual tower returning point-e's patch grid.

    :param spec: JSON-able description: ``embed_dim``, ``vision_cfg`` (open_clip
        ``CLIPVisionCfg`` fields), ``quick_gelu``, ``mean``/``std``/``interpolation``/
        ``resize_mode`` of the preprocessing, plus provenance (``arch``, ``pretrained``).
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = dict(spec)
        vision_cfg = CLIPVisionCfg(**spec["vision_cfg"])
        if vision_cfg.timm_model_name or isinstance(vision_cfg.layers, (tuple, list)):
            raise ImageEncoderError(f"{spec.get('arch')}: only CLIP ViT towers give a patch grid")
        self.visual = _build_vision_tower(spec["embed_dim"], vision_cfg, spec.get("quick_gelu"))
        self.preprocess = image_transform(
            vision_cfg.image_size,
            is_train=False,
            mean=tuple(spec.get("mean", _CLIP_MEAN)),
            std=tuple(spec.get("std", _CLIP_STD)),
            resize_mode=spec.get("resize_mode", "shortest"),
            interpolation=spec.get("interpolation", "bicubic"),
        )

    @property
    def dim(self) -> int:
        """Feature size of each grid token (the tower's width; 1024 for ViT-L/14)."""
        return int(self.spec["vision_cfg"]["width"])

    @property
    def grid_tokens(self) -> int:
        """Patch tokens per image (256 for ViT-L/14 at 224 px)."""
        cfg = self.spec["vision_cfg"]
        return (cfg["image_size"] // cfg["patch_size"]) ** 2

    # ------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_config(cls, arch: str = "tiny", seed: int | None = None) -> ImageEncoder:
        """A random-init, frozen tower (``"tiny"``: ViT-L/14's 256-token layout at width 64)."""
        if arch not in SCRATCH_CONFIGS:
            choices = sorted(SCRATCH_CONFIGS)
            raise ImageEncoderError(
                f"unknown from-scratch image tower {arch!r}; choose one of {choices}"
            )
        fields = SCRATCH_CONFIGS[arch]
        enc = build_scratch_tower(cls, arch, fields, seed, vision_cfg=CLIPVisionCfg)
        return enc.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(
        cls,
        arch: str = "ViT-L-14",
        pretrained: str = "openai",
        cache_dir: str | os.PathLike | None = None,
        download: bool = False,
    ) -> ImageEncoder:
        """A frozen pretrained CLIP visual tower.

        :param arch: an open_clip ViT architecture (point-e: ``ViT-L-14``).
        :param pretrained: an open_clip tag (``openai``) or a local weights file.
        :param download: allow open_clip to fetch a missing tag over the network.
        :raises ImageEncoderError: weights not found locally (at once, naming where to put
            them), unreadable, or not matching ``arch``.
        """
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None or "vision_cfg" not in model_cfg:
            raise ImageEncoderError(f"unknown open_clip architecture {arch!r}; e.g. ViT-L-14")
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
        path = resolve_clip_weights(arch, pretrained, cache_dir, download)
        spec = {
            "arch": arch,
            "pretrained": pretrained,
            "embed_dim": model_cfg["embed_dim"],
            "vision_cfg": asdict(CLIPVisionCfg(**model_cfg["vision_cfg"])),
            # OpenAI's CLIP was trained with QuickGELU; open_clip records it on the tag.
            "quick_gelu": bool(model_cfg.get("quick_gelu") or tag_cfg.get("quick_gelu")),
            "mean": tuple(tag_cfg.get("mean", _CLIP_MEAN)),
            "std": tuple(tag_cfg.get("std", _CLIP_STD)),
            "interpolation": tag_cfg.get("interpolation", "bicubic"),
            "resize_mode": tag_cfg.get("resize_mode", "shortest"),
        }
        enc = cls(spec)
        enc.visual.load_state_dict(_visual_state_dict(path, enc.visual))
        return enc.requires_grad_(False).eval()

    # ------------------------------------------------------------------------------------------
    # Embedding

    def preprocess_images(self, images: list) -> torch.Tensor:
        """CLIP preprocessing. :param images: PIL images or image file paths.
        :return: [B, 3, S, S] float32 on the encoder's device."""
        if isinstance(images, (str, os.PathLike, Image.Image)) or not isinstance(
            images, (list, tuple)
        ):
            raise ImageEncoderError("images must be a list of PIL images or image file paths")
        if not images:
            raise ImageEncoderError("images is an empty list; give at least one image")
        device = self.visual.conv1.weight.device
        return torch.stack([self.preprocess(_open_image(im)) for im in images]).to(device)

    @torch.no_grad()
    def embed(self, images: list) -> torch.Tensor:
        """Point-e's CLIP patch grid (before ``ln_post``/projection).

        :param images: PIL images or image file paths.
        :return: [B, grid_tokens, dim] float32 ([B, 256, 1024] for ViT-L/14).
        """
        v = self.visual
        x = self.preprocess_images(images).to(v.conv1.weight.dtype)
        x = v.conv1(x)  # [B, w, g, g]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, g², w]
        cls_tok = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        x = v.transformer(x if batch_first else x.transpose(0, 1))
        x = x if batch_first else x.transpose(0, 1)
        return x[:, 1:].float().contiguous()  # drop the class token


# ----------------------------------------------------------------------------------------------
# Files


def _open_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageEncoderError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except OSError as e:
            raise ImageEncoderError(f"cannot read image {path}: {e}") from None
    raise ImageEncoderError(f"expected a PIL image or a file path, got {type(image).__name__}")


def resolve_clip_weights(
    arch: str = "ViT-L-14",
    pretrained: str = "openai",
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> str:
    """A local CLIP weights file for (arch, tag or file), never the network unless ``download``.

    Same lookup as the text tower (one CLIP checkpoint serves both).
    :raises ImageEncoderError: not found (naming where to put it) or an unknown tag.
    """
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    try:
        return resolve_weights(arch, pretrained, tag_cfg, cache_dir, download)
    except ClipFilesError as e:
        raise ImageEncoderError(str(e)) from None


def clip_cache_places(arch: str = "ViT-L-14", pretrained: str = "openai") -> list[str]:
    """Where open_clip's local caches hold the weights of a tag (empty if not a known tag)."""
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    places = []
    if cfg.get("url"):
        places.append(f"~/.cache/clip/{os.path.basename(cfg['url'])} (from {cfg['url']})")
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].rstrip("/")
        places.append(f"the HF hub cache ~/.cache/huggingface/hub (repo {repo})")
    return places


def _visual_state_dict(path: str, visual: nn.Module) -> dict[str, torch.Tensor]:
    """The visual-tower state dict of a CLIP weights file (open_clip or OpenAI layout)."""
    try:
        return tower_state_dict(path, visual, "visual.", "image-tower")
    except ClipFilesError as e:
        raise ImageEncoderError(str(e)) from None


__all__ = [
    "ImageEncoder",
    "ImageEncoderError",
    "SCRATCH_CONFIGS",
    "clip_cache_places",
    "resolve_clip_weights",
]
