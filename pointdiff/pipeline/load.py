"""``load_pipeline``: a ``TextTo3D`` from a checkpoint directory.

Checkpoint layouts understood:

* a **pipeline directory** with ``pipeline.json`` (``{"stages": {"base": "base", "upsampler":
  "upsampler", "sdf": "sdf"}}``; the shipped ``checkpoints/<name>/`` use this), each entry a model
  directory, or for the upsampler ``{"surface": N}`` (``SurfaceUpsampler``, no weights); an
  optional ``"fast": {"base": "base_fast"}`` names distilled students that ``fast=True`` loads
  in place of those stages (``pointdiff sample --fast``);
* a single **model directory** (``model.safetensors`` + ``config.json``, e.g. a training run's
  ``ckpt-*`` or a release export): a base-only pipeline.

A text tower trained jointly with the base model is stored beside it (``text.safetensors``);
otherwise ``TextConfig`` in the base config names the encoder. Sampler settings default to each
stage's ``SampleConfig`` in its ``config.json``; ``overrides`` replace fields of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pointdiff.checkpoint import CheckpointError, load_model
from pointdiff.conditioning.lexicon import LexiconError, PromptReader, load_lexicon
from pointdiff.conditioning.text import TextEncoder
from pointdiff.conditioning.text_loading import build_text_encoder, load_text_encoder
from pointdiff.config import DiffusionConfig, SampleConfig, TextConfig
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.pipeline.stages import Stage, SurfaceUpsampler
from pointdiff.pipeline.text_to_3d import TextTo3D
from pointdiff.precision import choose_precision, resolve_device


def _stage_from_dir(path: Path, name: str, device: torch.device) -> tuple[Stage, dict]:
    net, configs = load_model(path, kind="upsampler" if name == "upsampler" else "denoiser")
    net.to(device).eval()
    dcfg = configs.get("diffusion", DiffusionConfig())
    stage = Stage(
        name=name,
        denoiser=KarrasDenoiser(net, sigma_data=dcfg.sigma_data),
        num_points=net.cfg.num_points,
        sample=configs.get("sample", SampleConfig()),
        sigma_min=dcfg.sigma_min,
        sigma_max=dcfg.sigma_max,
        rho=dcfg.rho,
        cond_key="text_emb" if net.cfg.cond_dim > 0 else None,
        takes_low_res=net.cfg.kind == "upsampler",
        text_tokens=getattr(net.cfg, "text_tokens", 0),
        takes_guidance=getattr(net.cfg, "guidance_embed", False),
    )
    return stage, configs


def _surface_upsampler(entry: dict, root: Path) -> SurfaceUpsampler:
    n = entry.get("surface")
    if set(entry) != {"surface"} or not isinstance(n, int) or n < 1:
        raise CheckpointError(
            f'{root}/pipeline.json: an upsampler entry is a directory or {{"surface": N}} '
            f"with N > 0 new points, got {entry!r}"
        )
    return SurfaceUpsampler(num_points=n)


def _text_encoder_for(
    path: Path, configs: dict, device: torch.device, clip_weights, download: bool
) -> TextEncoder | None:
    if (path / "text.safetensors").is_file():
        return load_text_encoder(path).to(device).eval()
    cfg = configs.get("text", TextConfig())
    return build_text_encoder(cfg, None, clip_weights, download).to(device).eval()


def _prompt_reader(base: Path) -> PromptReader:
    """The base model's training captions (``captions.json``) and lexicon (``lexicon.json``)."""
    captions = []
    if (base / "captions.json").is_file():
        captions = json.loads((base / "captions.json").read_text())
    try:
        aliases = load_lexicon(base)
    except LexiconError as e:
        raise CheckpointError(str(e)) from None
    return PromptReader(tuple(captions), aliases)


def load_pipeline(
    checkpoint: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    clip_weights: str | Path | None = None,
    download: bool = True,
    fast: bool = False,
) -> TextTo3D:
    """Build a ``TextTo3D`` from a pipeline directory or a single base-model directory.

    :param fast: load the pipeline's distilled stages (``pipeline.json`` ``"fast"``) in place of
        their teachers.
    :param device, precision: a device or ``auto``; fp32 | bf16 | auto (``pointdiff.precision``).
    :param clip_weights: a local file of the CLIP weights the base config names (hash-checked);
        None: the local caches, then a download where ``download``."""
    root = Path(checkpoint)
    dev = resolve_device(device)
    bf16 = choose_precision(precision, dev).bf16
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    spec = {"stages": {"base": "."}}  # a single model directory
    if (root / "pipeline.json").is_file():
        spec = json.loads((root / "pipeline.json").read_text())
    entries = spec.get("stages", {})
    if fast:
        if not spec.get("fast"):
            raise CheckpointError(
                f'{root} has no distilled stages (pipeline.json "fast"); sample without '
                "--fast, or distil them with train/distill.py"
            )
        entries = {**entries, **spec["fast"]}
    if "base" not in entries:
        raise CheckpointError(f"{root}/pipeline.json names no 'base' stage")
    stages, base_cfg = [], None
    for name in ("base", "upsampler"):
        if isinstance(entries.get(name), dict):  # {"surface": N}: no weights
            stages.append(_surface_upsampler(entries[name], root))
        elif name in entries:
            stage, configs = _stage_from_dir(root / entries[name], name, dev)
            stages.append(stage)
            base_cfg = base_cfg or configs
    text = None
    if stages[0].cond_key is not None:
        text = _text_encoder_for(root / entries["base"], base_cfg, dev, clip_weights, download)
    sdf = None
    if "sdf" in entries:
        sdf, _ = load_model(root / entries["sdf"], kind="sdf")
        sdf.to(dev).eval()
    reader = _prompt_reader(root / entries["base"])
    return TextTo3D(text, stages, sdf, dev, reader, bf16=bf16)
