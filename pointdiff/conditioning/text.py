"""The CLIP text encoder: the open_clip text tower, pretrained and frozen or built from scratch.

``TextEncoder.embed(prompts) -> [B, D]`` returns pooled, L2-normalised embeddings (point-e's
``FrozenImageCLIP.embed_text`` convention; the denoiser multiplies by √D itself).

Sources of weights (``TextEncoder.from_pretrained(arch, pretrained)``):

* an open_clip tag (``"ViT-L-14", "openai"`` as Point-E uses): a local file handed over
  (``weights=``, ``--clip-weights``, ``$POINTDIFF_CLIP_WEIGHTS``), else open_clip's caches,
  else downloaded once (``download=True``, the default; ``conditioning.clip_weights``). Offline,
  the :class:`TextEncoderError` names the file to fetch and where to put it.
* a local weights file (``.safetensors``; ``.bin``/``.pt``/``.pth`` loaded with
  ``weights_only=True``; OpenAI's TorchScript ``ViT-L-14.pt`` through ``torch.jit.load``).
* ``hf-hub:org/repo``: ``open_clip_config.json`` + weights from the local HF cache.

A frozen CLIP tower is recorded in checkpoints by tag and weights hash, never by path
(``clip_text_config``): ``TextConfig(arch, pretrained="openai@sha256:<hex>")`` (``sha256:<hex>``
alone for weights from a local file that is no tag's); loading finds the file as above and
checks the hash. Only the text tower is built (123M of ViT-L-14's 428M).

Small from-scratch towers (``TextEncoder.from_config("tiny" | "small")``) are random-init and
trainable; they serve tests and offline-trained checkpoints (``save``).
``conditioning.text_loading`` reads them back and builds any encoder a ``TextConfig`` names.
``text_condition`` gives the condition a model takes, pooled or with per-token states.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pointdiff.atomic import atomic_path, write_json_atomic
from pointdiff.conditioning import clip_weights
from pointdiff.conditioning.clip_weights import ClipFilesError
from pointdiff.conditioning.prompts import check_prompts
from pointdiff.conditioning.scratch import build_scratch_tower
from pointdiff.conditioning.words import CONFIG_NAME
from pointdiff.config import TextConfig


def _open_clip():
    """open_clip, imported where a CLIP tower is built (importing it takes about 2 s on a
    2-core CPU; the ``hf:`` and ``words`` encoders never need it)."""
    import open_clip
    import open_clip.model

    return open_clip


WEIGHTS_NAME = "text.safetensors"
EMA_WEIGHTS_NAME = "text_ema.safetensors"  # training checkpoints of a jointly trained tower

# From-scratch towers: CLIP's text transformer shape, scaled down. ``embed_dim`` matches the
# ``cond_dim`` of the denoiser preset of the same name (tiny: 32, small: 512).
SCRATCH_CONFIGS = {
    "tiny": {"embed_dim": 32, "text_cfg": {"width": 64, "layers": 2, "heads": 2}},
    "small": {"embed_dim": 512, "text_cfg": {"width": 256, "layers": 4, "heads": 4}},
}


class TextEncoderError(ValueError):
    """A text encoder that cannot be built, found or read (the reason is named)."""


class TextEncoder(nn.Module):
    """An open_clip text tower: ``embed(prompts) -> [B, D]`` pooled, L2-normalised.

    Frozen encoders (no parameter requires grad) cache one embedding per prompt; a trainable
    one never caches (its weights change), and ``embed`` builds a graph in training mode.

    :param spec: JSON-able description that rebuilds the architecture: ``embed_dim``,
        ``text_cfg`` (open_clip ``CLIPTextCfg`` fields), ``quick_gelu``, plus provenance.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = dict(spec)
        open_clip = _open_clip()
        text_cfg = open_clip.model.CLIPTextCfg(**spec["text_cfg"])
        if text_cfg.hf_model_name or text_cfg.hf_tokenizer_name:
            raise TextEncoderError(
                f"{spec.get('arch')}: HuggingFace-transformers text towers are not supported "
                "(they need the network for their tokenizer); use a CLIP-style tower"
            )
        self.tower = open_clip.model._build_text_tower(
            spec["embed_dim"], text_cfg, spec.get("quick_gelu", False)
        )
        self.tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.context_length)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return int(self.spec["embed_dim"])

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def freeze(self) -> TextEncoder:
        """Stop gradients and switch to eval mode (embeddings are cached from now on)."""
        self.requires_grad_(False)
        return self.eval()

    # ------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_config(cls, arch: str = "tiny", seed: int | None = None) -> TextEncoder:
        """A random-init, trainable tower (``"tiny"`` or ``"small"``)."""
        if arch not in SCRATCH_CONFIGS:
            raise TextEncoderError(
                f"unknown from-scratch text tower {arch!r}; choose one of {sorted(SCRATCH_CONFIGS)}"
            )
        text_cfg = _open_clip().model.CLIPTextCfg
        return build_scratch_tower(cls, arch, SCRATCH_CONFIGS[arch], seed, text_cfg=text_cfg)

    @classmethod
    def from_pretrained(
        cls,
        arch: str = "ViT-L-14",
        pretrained: str = "openai",
        cache_dir: str | os.PathLike | None = None,
        download: bool = True,
        weights: str | os.PathLike | None = None,
        sha256: str | None = None,
    ) -> TextEncoder:
        """A frozen pretrained CLIP text tower (see the module docstring for ``pretrained``).

        :param pretrained: an open_clip tag of ``arch`` or a local weights file. With a file the
            activation follows ``arch`` (open_clip's convention: OpenAI weights need the
            ``-quickgelu`` arch, e.g. ``ViT-L-14-quickgelu``), except OpenAI's TorchScript file.
        :param weights: a local file holding the weights of the tag ``pretrained`` (keeps the
            tag's settings, e.g. OpenAI's QuickGELU): the ``--clip-weights PATH`` option;
            default ``$POINTDIFF_CLIP_WEIGHTS`` when set.
        :param download: let open_clip fetch a tag that is not in the local caches.
        :param sha256: the expected ``clip_weights.tower_sha256`` (``spec["sha256"]``: actual).
        :raises TextEncoderError: weights not found (naming what to fetch and where to put
            it), unreadable, not matching ``arch``, or not the expected ones.
        """
        weights = weights or os.environ.get(clip_weights.WEIGHTS_ENV) or None
        open_clip = _open_clip()
        if arch.startswith("hf-hub:"):
            model_cfg, path = _clip_call(
                clip_weights.resolve_hf_hub, arch[len("hf-hub:") :], cache_dir, download
            )
            quick_gelu = model_cfg.get("quick_gelu", False)
        else:
            model_cfg = open_clip.get_model_config(arch)
            if model_cfg is None:
                raise TextEncoderError(
                    f"unknown open_clip architecture {arch!r}; e.g. ViT-L-14, ViT-B-32 "
                    "(open_clip.list_models()), or 'tiny'/'small' via TextEncoder.from_config"
                )
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
            if weights is not None:
                if not Path(weights).is_file():
                    raise TextEncoderError(
                        f"--clip-weights / ${clip_weights.WEIGHTS_ENV} {weights}: no such file"
                    )
                path = str(weights)
            else:
                path = _clip_call(
                    clip_weights.resolve_weights, arch, pretrained, tag_cfg, cache_dir, download
                )
            # OpenAI's CLIP was trained with QuickGELU; open_clip records it on the tag.
            quick_gelu = (
                model_cfg.get("quick_gelu", False)
                or tag_cfg.get("quick_gelu", False)
                or clip_weights.is_torchscript(path)
            )
        spec = {
            "arch": arch,
            "pretrained": pretrained,
            "embed_dim": model_cfg["embed_dim"],
            "text_cfg": asdict(open_clip.model.CLIPTextCfg(**model_cfg["text_cfg"])),
            "quick_gelu": bool(quick_gelu),
        }
        enc = cls(spec)
        sd = _clip_call(clip_weights.tower_state_dict, path, enc.tower, "text.", "text-tower")
        enc.spec["sha256"] = got = clip_weights.tower_sha256(sd)
        if sha256 and got != sha256:
            raise TextEncoderError(
                f"{path}: its {arch} text-tower weights have SHA-256 {got}, not the {sha256} "
                f"this checkpoint was trained with ({pretrained or 'a local file'}): another or "
                "a corrupted copy; pass the right one with --clip-weights PATH"
            )
        enc.tower.load_state_dict(sd)
        return enc.freeze()

    # ------------------------------------------------------------------------------------------
    # Files

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``text.safetensors`` + ``text_config.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous()
            for k, v in self.tower.state_dict().items()
        }
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_file(sd, str(tmp))
        write_json_atomic(out / CONFIG_NAME, self.spec)
        return out

    # ------------------------------------------------------------------------------------------
    # Embedding

    def clear_cache(self) -> None:
        self._cache.clear()

    def load_state_dict(self, *args, **kwargs):  # new weights invalidate cached embeddings
        self._cache.clear()
        return super().load_state_dict(*args, **kwargs)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        device = self.tower.positional_embedding.device
        tokens = self.tokenizer(prompts).to(device)
        return F.normalize(self.tower(tokens).float(), dim=-1)

    def embed(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Pooled, L2-normalised text embeddings.

        :param prompts: a non-empty list of strings.
        :return: [B, D] float32 on the encoder's device.
        """
        check_prompts(prompts)
        device = self.tower.positional_embedding.device
        if self.trainable:
            # Weights change under training: no cache; a graph only in training mode.
            with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
                chunks = [
                    self._encode(list(prompts[i : i + batch_size]))
                    for i in range(0, len(prompts), batch_size)
                ]
            return torch.cat(chunks)
        todo = sorted({p for p in prompts if p not in self._cache})
        with torch.no_grad():
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                for p, e in zip(chunk, self._encode(chunk), strict=True):
                    self._cache[p] = e
        return torch.stack([self._cache[p].to(device) for p in prompts])


def text_condition(encoder, prompts: list[str], tokens: int = 0) -> torch.Tensor:
    """The condition a text model takes: [B, D] pooled (``tokens == 0``), or
    [B, 1 + tokens, D] pooled then per-token states (encoders with ``condition``: ``hf:``)."""
    if tokens == 0:
        return encoder.embed(prompts)
    if not hasattr(encoder, "condition"):
        raise TextEncoderError(
            f"the model takes {tokens} per-token text states, which only hf: encoders give; "
            f"got {type(encoder).__name__}"
        )
    return encoder.condition(prompts, tokens)


def clip_text_config(enc: TextEncoder) -> TextConfig:
    """The checkpoint record of a frozen pretrained CLIP tower: its arch, tag and weights hash
    (``TAG@sha256:HEX``; ``sha256:HEX`` when the weights were a file of no tag), never a path."""
    arch, tag, digest = enc.spec["arch"], enc.spec["pretrained"], enc.spec["sha256"]
    known = bool(tag) and bool(_open_clip().get_pretrained_cfg(arch, tag))
    pretrained = f"{tag}@sha256:{digest}" if known else f"sha256:{digest}"
    return TextConfig(arch=arch, pretrained=pretrained, trainable=False)


def _clip_call(fn, *args):
    """``fn(*args)`` of ``conditioning.clip_weights``, its errors as :class:`TextEncoderError`."""
    try:
        return fn(*args)
    except ClipFilesError as e:
        raise TextEncoderError(str(e)) from None
