"""OpenAI's released Point-E checkpoints as a pointdiff ``TextTo3D`` pipeline.

A *point-e directory* holds the released ``.pt`` files, named as point-e names the models
(``base40M-textvec.pt``) or as point-e's download cache names them (``base_40m_textvec.pt``), or
directories converted once by ``pointdiff convert-pointe`` (``base40M-textvec/`` with
``model.safetensors`` + ``config.json``). Two pipelines:

* **text**: ``base40M-textvec`` (CLIP ViT-L/14 text vector, guided) → ``upsample`` (conditioned
  on the low-res cloud only; its 256 CLIP-grid tokens are zeros) → ``sdf``;
* **image**: ``base40M`` / ``base300M`` / ``base1B`` (CLIP ViT-L/14 patch grid of the image,
  guided) → ``upsample`` (the same grid, guided) → ``sdf``.

Each diffusion stage is the converted network behind ``DiscreteEpsDenoiser`` (cosine schedule
for the base models, linear for the upsampler) with point-e's sampler settings
(``PointCloudSampler`` defaults): Karras grid σ ∈ [1e-3, 120] (base) / [1e-3, 160] (upsampler),
ρ = 7, 64 Heun steps (127 NFE), s_churn 3 / 0, guidance 3 on conditioned stages, denoised
clamped to [-1, 1] before guidance. Point-e's guidance zeroes *every* model input of the
unconditional half: for the guided image upsampler that includes the low-res cloud (raw xyz 0,
rgb 0, i.e. black points at the origin); ``_pointe_upsampler_guide`` reproduces that. The SDF
head's sign is flipped to pointdiff's negative-inside convention (``_flip_sdf_sign``).

``exact_pointe=True`` uses point-e's floored σ → t bridge (bit parity, see
``pointdiff.diffusion.discrete``); the default uses continuous t. ``FAST`` holds overrides for a
faster sampler (DPM-Solver++(2M), 32 steps per stage) for ``sample_clouds(overrides=FAST)``.
Point-e's settings are point-e's constants (``BASE_SAMPLE``, ``UPSAMPLE_SAMPLE``), not our
defaults, so they are spelled out here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from pointdiff.checkpoint import load_configs
from pointdiff.compat.pointe import POINTE_MODELS, load_converted, load_pointe_model, save_converted
from pointdiff.conditioning.image import ImageEncoder, clip_cache_places, resolve_clip_weights
from pointdiff.conditioning.text import TextEncoder
from pointdiff.config import SampleConfig
from pointdiff.diffusion import ALPHAS_CUMPROD, DiscreteEpsDenoiser, classifier_free_guidance
from pointdiff.diffusion.discrete import POINTE_SIGMAS
from pointdiff.pipeline import PipelineError, Stage, TextTo3D
from pointdiff.pointcloud import to_model_space

POINTE_URL = "https://openaipublic.azureedge.net/main/point-e/"
#: released name -> file name in point-e's download cache (and its URL under POINTE_URL)
POINTE_FILES = {
    "base40M-imagevec": "base_40m_imagevec.pt",
    "base40M-textvec": "base_40m_textvec.pt",
    "base40M-uncond": "base_40m_uncond.pt",
    "base40M": "base_40m.pt",
    "base300M": "base_300m.pt",
    "base1B": "base_1b.pt",
    "upsample": "upsample_40m.pt",
    "sdf": "sdf.pt",
    "pointnet": "pointnet.pt",
}
TEXT_BASES = ("base40M-textvec",)
IMAGE_BASES = ("base40M", "base300M", "base1B")
CLIP_ARCH = "ViT-L-14"  # point-e's CLIP, always
CLIP_TAG = "openai"

# point-e PointCloudSampler defaults (base, upsampler): the same but for churn
BASE_SAMPLE = SampleConfig(sampler="heun", steps=64, guidance=3.0, s_churn=3.0, clip_denoised=True)
UPSAMPLE_SAMPLE = replace(BASE_SAMPLE, s_churn=0.0)
SIGMA_MIN, BASE_SIGMA_MAX, RHO = POINTE_SIGMAS["cosine"]
UPSAMPLE_SIGMA_MAX = POINTE_SIGMAS["linear"][1]
#: our faster sampler (``sample_clouds(..., overrides=FAST)``; use with ``bf16=True``): 32 NFE
#: per stage instead of 127. Chosen on the Bayes-optimal Gaussian ε-net through the adapter
#: (tests/test_pointe_pipeline.py): sample std off by 3.5 % at 32 steps, 9 % at 20, 1.4 % for
#: point-e's 64 Heun steps. Untested on the released weights (no network here).
FAST = {"sampler": "dpmpp_2m", "steps": 32}


class PointeFilesError(PipelineError):
    """Point-e checkpoints or CLIP weights missing: the message names each file and its place."""


# ----------------------------------------------------------------------------------------------
# Files


def find_pointe_file(pointe_dir: str | os.PathLike, name: str) -> Path | None:
    """The checkpoint of released model ``name`` in ``pointe_dir``, or None.

    Looked for, in order: ``name/`` (converted by ``convert-pointe``), ``name.pt``,
    ``name.safetensors``, point-e's cache name (``base_40m_textvec.pt``).
    """
    root = Path(pointe_dir)
    converted = root / name
    if (converted / "config.json").is_file() and (converted / "model.safetensors").is_file():
        return converted
    for fname in (f"{name}.pt", f"{name}.safetensors", POINTE_FILES.get(name, "")):
        if fname and (root / fname).is_file():
            return root / fname
    return None


def check_pointe_files(
    pointe_dir: str | os.PathLike,
    names: list[str],
    clip_weights: str | None = None,
    need_clip: bool = True,
    download: bool = False,
) -> dict[str, Path]:
    """Locate every needed checkpoint (and CLIP) before loading anything.

    :param download: fetch CLIP ViT-L/14 (open_clip's ``openai`` tag) when it is not in the local
        caches, once every point-e checkpoint is found (``conditioning.clip_weights``: it says
        what comes from where; offline, the error names the file and its URL).
    :return: released name -> file or converted directory.
    :raises PointeFilesError: one message naming every missing file, where to put it and where
        to download it.
    """
    root = Path(pointe_dir)
    found = {n: find_pointe_file(root, n) for n in names}
    lines = []
    if not root.is_dir():
        lines.append(f"the point-e directory {root} does not exist")
    missing = [n for n, p in found.items() if p is None]
    if missing:
        files = ", ".join(f"{n}.pt" for n in missing)
        lines.append(f"put {files} into {root} (point-e's cache names are accepted too):")
        lines += [f"  {n}.pt: {POINTE_URL}{POINTE_FILES[n]}" for n in missing]
        lines.append(
            f"  (or convert once: `pointdiff convert-pointe FILE.pt {root}/NAME --name NAME`)"
        )
    if need_clip:
        try:  # a download only when nothing else is missing (no large fetch before an error)
            resolve_clip_weights(
                CLIP_ARCH, clip_weights or CLIP_TAG, download=download and not lines
            )
        except ValueError as e:
            places = clip_cache_places(CLIP_ARCH, clip_weights or CLIP_TAG)
            if not places:  # a file name, not a tag
                lines.append(f"CLIP weights file {clip_weights} (--clip-weights) does not exist")
            elif download and not lines:  # the download failed: the file, its URL and why
                lines.append(str(e))
            else:
                lines.append(
                    f"CLIP {CLIP_ARCH} weights are not in the local cache: pass --clip-weights "
                    "FILE (OpenAI's ViT-L-14.pt or an open_clip ViT-L-14 checkpoint), or place "
                    f"it at {' or in '.join(places)}"
                )
    if lines:
        raise PointeFilesError("point-e pipeline: missing files\n" + "\n".join(lines))
    return found


def _load_net(path: Path, name: str, overrides: dict) -> torch.nn.Module:
    if path.is_dir():
        net, _, info = load_converted(path)
        if info.get("name") not in (None, name):
            raise PointeFilesError(f"{path} holds point-e model {info['name']!r}, not {name!r}")
        return net
    return load_pointe_model(path, name, **overrides)


def convert_pointe_file(
    path_pt: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None, **overrides
) -> Path:
    """``pointdiff convert-pointe``: convert one released file (name from the file if not given).

    :param overrides: config fields for re-sized models (tests).
    """
    if name is None:
        name = infer_pointe_name(path_pt)
    return save_converted(path_pt, name, out_dir, **overrides)


def infer_pointe_name(path: str | os.PathLike) -> str:
    """Released model name from a file name (``base40M-textvec.pt`` or ``base_40m_textvec.pt``)."""
    fname = Path(path).name
    for name, cache_name in POINTE_FILES.items():
        if fname in (f"{name}.pt", f"{name}.safetensors", cache_name):
            return name
    raise PointeFilesError(
        f"cannot tell which point-e model {fname!r} is; pass --name (one of: "
        f"{', '.join(POINTE_MODELS)})"
    )


# ----------------------------------------------------------------------------------------------
# Stages


def _pointe_upsampler_guide(model, scale: float):
    """Point-e's guided upsampler: the unconditional half gets a zero grid AND point-e's zero raw
    low-res cloud (xyz 0, rgb 0), which in model space is ``to_model_space(0, 0)``."""
    null = to_model_space(torch.zeros(3), torch.zeros(3))  # [0, 0, 0, -1, -1, -1]

    def shifted(x, sigma, low_res, **kw):
        return model(x, sigma, low_res=low_res + null.to(low_res), **kw)

    guided = classifier_free_guidance(shifted, scale, cond_keys=("grid", "low_res"))

    def model_fn(x, sigma, low_res, **kw):
        return guided(x, sigma, low_res=low_res - null.to(low_res), **kw)

    return model_fn


def _flip_sdf_sign(sdf_net: torch.nn.Module) -> None:
    """Point-e's SDF is positive inside, pointdiff's mesher expects negative inside: negate the
    output layer. (Point-e swaps the winding of scikit-image's faces, which face outward only
    for negative-inside volumes, so its released field must be positive inside.)"""
    with torch.no_grad():
        sdf_net.output_proj.weight.neg_()
        sdf_net.output_proj.bias.neg_()


def _sample_for(path: Path, default: SampleConfig) -> SampleConfig:
    """A distilled student's own sampler settings (its config's ``sample``), else point-e's."""
    own = load_configs(path).get("sample") if path.is_dir() else None
    return own if own is not None else default


def _stage(name, net, schedule, sample, sigma_max, exact, cond_key, guide=None):
    """A point-e stage; ``cond_key`` None: it takes no prompt (the text upsampler). A distilled
    student (``guidance_embed``) takes the guidance scale as an input."""
    denoiser = DiscreteEpsDenoiser(net, ALPHAS_CUMPROD[schedule](), exact_pointe=exact)
    return Stage(
        name=name,
        denoiser=denoiser,
        num_points=net.cfg.num_points,
        sample=sample,
        sigma_min=SIGMA_MIN,
        sigma_max=sigma_max,
        rho=RHO,
        cond_key=cond_key,
        takes_low_res=net.cfg.kind == "upsampler",
        guide=guide,
        takes_guidance=getattr(net.cfg, "guidance_embed", False),
    )


def load_pointe_pipeline(
    pointe_dir: str | os.PathLike,
    image: bool = False,
    base: str | None = None,
    upsample: bool = True,
    sdf: bool = True,
    clip_weights: str | None = None,
    device: str = "cpu",
    exact_pointe: bool = False,
    text_encoder: TextEncoder | None = None,
    image_encoder: ImageEncoder | None = None,
    overrides: dict[str, dict] | None = None,
    download: bool = False,
) -> TextTo3D:
    """Build a ``TextTo3D`` from a directory of point-e checkpoints.

    :param image: the image pipeline (prompts are image files / PIL images).
    :param base: the base model (default ``base40M-textvec``; image: ``base40M``, or
        ``base300M``/``base1B``).
    :param upsample, sdf: include the upsampler / the SDF head (their files are then required).
    :param clip_weights: a local CLIP ViT-L/14 weights file (default: open_clip's ``openai`` tag
        from the local caches, downloaded there first with ``download``).
    :param download: fetch missing CLIP weights (see ``check_pointe_files``).
    :param exact_pointe: point-e's floored σ → t bridge instead of continuous t.
    :param text_encoder, image_encoder: prebuilt encoders (tests: tiny random towers).
    :param overrides: per released name, config fields for re-sized models (tests).
    :raises PointeFilesError: at once, before loading, naming every missing file.
    """
    base = base or (IMAGE_BASES[0] if image else TEXT_BASES[0])
    allowed = IMAGE_BASES if image else TEXT_BASES
    if base not in allowed:
        kind = "image" if image else "text"
        raise PointeFilesError(
            f"{base!r} is not a point-e {kind} model; use one of {', '.join(allowed)}"
            + ("" if image else " (base300M/base1B are image-grid models: pass --image)")
        )
    names = [base] + (["upsample"] if upsample else []) + (["sdf"] if sdf else [])
    encoder = image_encoder if image else text_encoder
    files = check_pointe_files(pointe_dir, names, clip_weights, encoder is None, download)
    overrides = overrides or {}
    dev = torch.device(device)

    cond_key = "grid" if image else "text_emb"
    base_net = _load_net(files[base], base, overrides.get(base, {})).to(dev)
    stages = [
        _stage(
            "base",
            base_net,
            "cosine",
            _sample_for(files[base], BASE_SAMPLE),
            BASE_SIGMA_MAX,
            exact_pointe,
            cond_key,
        )
    ]
    if upsample:
        up_net = _load_net(files["upsample"], "upsample", overrides.get("upsample", {})).to(dev)
        if up_net.cfg.num_cond_points != base_net.cfg.num_points:
            raise PointeFilesError(
                f"upsample takes {up_net.cfg.num_cond_points} low-res points but {base} makes "
                f"{base_net.cfg.num_points}"
            )
        # the image upsampler is guided on the image grid; the text one takes no prompt (its
        # grid tokens stay zero)
        guide = _pointe_upsampler_guide if image else None
        up_key = "grid" if image else None
        up_sample = _sample_for(files["upsample"], UPSAMPLE_SAMPLE)
        up = (up_sample, UPSAMPLE_SIGMA_MAX, exact_pointe, up_key, guide)
        stages.append(_stage("upsampler", up_net, "linear", *up))
    sdf_net = None
    if sdf:
        sdf_net = _load_net(files["sdf"], "sdf", overrides.get("sdf", {})).to(dev)
        _flip_sdf_sign(sdf_net)

    if encoder is None:
        weights = clip_weights or CLIP_TAG
        cls = ImageEncoder if image else TextEncoder
        encoder = cls.from_pretrained(CLIP_ARCH, weights, download=download)
    encoder = encoder.to(dev).eval()
    return TextTo3D(
        text_encoder=None if image else encoder,
        stages=stages,
        sdf_model=sdf_net,
        device=dev,
        image_encoder=encoder if image else None,
    )


__all__ = [
    "BASE_SAMPLE",
    "FAST",
    "IMAGE_BASES",
    "POINTE_FILES",
    "POINTE_URL",
    "PointeFilesError",
    "TEXT_BASES",
    "UPSAMPLE_SAMPLE",
    "check_pointe_files",
    "convert_pointe_file",
    "find_pointe_file",
    "infer_pointe_name",
    "load_pointe_pipeline",
]
