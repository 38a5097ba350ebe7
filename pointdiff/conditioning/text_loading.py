"""Text encoders from their records: a saved directory (``load_text_encoder``), a ``TextConfig``
(``build_text_encoder``: the one place that builds any encoder a config names), and training's
frozen CLIP tower with its record (``load_frozen_clip``).

``build_text_encoder`` returns the encoder the config's ``arch`` names: ``words``
(``WordEncoder``), ``hf:…`` (``HFTextEncoder``), a from-scratch ``tiny``/``small`` tower, a
directory written by ``save``, or a pretrained CLIP tower found by tag and checked against its
weights hash (``TAG@sha256:HEX``, the record ``clip_text_config`` writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from pointdiff.conditioning import hf_text
from pointdiff.conditioning.clip_weights import WEIGHTS_ENV
from pointdiff.conditioning.text import (
    EMA_WEIGHTS_NAME,
    SCRATCH_CONFIGS,
    WEIGHTS_NAME,
    TextEncoder,
    TextEncoderError,
    clip_text_config,
)
from pointdiff.conditioning.words import CONFIG_NAME, WordEncoder
from pointdiff.config import TextConfig


def load_text_encoder(
    path: str | os.PathLike, trainable: bool = False, use_ema: bool = True
) -> nn.Module:
    """Rebuild a text encoder from a directory (or a weights file in it) written by its ``save``
    (``TextEncoder`` or ``WordEncoder``).

    In a training checkpoint a jointly trained tower has raw (``text.safetensors``) and EMA
    (``text_ema.safetensors``) weights; a directory gives the EMA ones unless ``use_ema``
    is False, matching ``checkpoint.load_model``.
    """
    path = Path(path)
    root = path if path.is_dir() else path.parent
    saved_arch = _saved_arch(root / CONFIG_NAME)
    if saved_arch.startswith(WordEncoder.ARCH):
        return _words_encoder(saved_arch)
    weights = path if path.is_file() else root / WEIGHTS_NAME
    if path.is_dir() and use_ema and (root / EMA_WEIGHTS_NAME).is_file():
        weights = root / EMA_WEIGHTS_NAME
    cfg_file = root / CONFIG_NAME
    if not weights.is_file() or not cfg_file.is_file():
        raise TextEncoderError(f"{path}: expected {WEIGHTS_NAME} and {CONFIG_NAME} there")
    try:
        spec = json.loads(cfg_file.read_text())
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - report any parse failure the same way
        raise TextEncoderError(f"{path}: cannot read text encoder ({e})") from e
    enc = TextEncoder(spec)
    try:
        enc.tower.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise TextEncoderError(f"{weights}: weights do not match {CONFIG_NAME} ({e})") from e
    return enc.requires_grad_(True).train() if trainable else enc.freeze()


def build_text_encoder(
    cfg: TextConfig,
    seed: int | None = None,
    clip_weights: str | os.PathLike | None = None,
    download: bool = True,
) -> nn.Module:
    """The text encoder a ``TextConfig`` names: a CLIP tower (``TextEncoder``), a ``WordEncoder``
    (``words``) or an ``HFTextEncoder`` (``hf:…``).

    ``pretrained`` may name a directory (or its ``text.safetensors``) written by ``save``
    (``load_text_encoder``); for the from-scratch archs (``tiny``/``small``) anything that is not
    a path (e.g. the default tag ``"openai"``) means random init. A CLIP ``TAG@sha256:HEX`` or
    ``sha256:HEX`` record is found as ``TextEncoder.from_pretrained`` finds a tag
    (``clip_weights``: a local file of it), hash-checked.
    """
    if cfg.arch.startswith(WordEncoder.ARCH):
        return _words_encoder(cfg.arch)
    if cfg.arch.startswith(hf_text.ARCH_PREFIX):
        try:
            return hf_text.HFTextEncoder.from_name(
                cfg.arch[len(hf_text.ARCH_PREFIX) :], cfg.pretrained or None
            )
        except hf_text.HFTextError as e:
            raise TextEncoderError(str(e)) from None
    p = cfg.pretrained
    if p and (Path(p, CONFIG_NAME).is_file() or Path(p).with_name(CONFIG_NAME).is_file()):
        enc = load_text_encoder(p)
    elif cfg.arch in SCRATCH_CONFIGS:
        if p and (os.sep in p or p.endswith(".safetensors")):
            raise TextEncoderError(f"{p}: no saved text encoder ({CONFIG_NAME}) there")
        enc = TextEncoder.from_config(cfg.arch, seed=seed)
    else:
        tag, _, digest = p.rpartition("sha256:") if "sha256:" in p else (p, "", "")
        tag = tag.removesuffix("@")
        # a weights file must be handed over unless a tag (or an hf-hub arch) names it
        known = tag or cfg.arch.startswith("hf-hub:") or os.environ.get(WEIGHTS_ENV)
        if digest and not known and not clip_weights:
            raise TextEncoderError(
                f"the CLIP {cfg.arch} weights of this checkpoint came from a local file "
                f"(text-tower SHA-256 {digest}): pass that file with --clip-weights PATH or "
                f"{WEIGHTS_ENV}=PATH"
            )
        enc = TextEncoder.from_pretrained(
            cfg.arch, tag, download=download, weights=clip_weights, sha256=digest or None
        )
    return enc.requires_grad_(True).train() if cfg.trainable else enc.freeze()


def load_frozen_clip(
    arch: str, tag: str = "openai", weights: str | None = None, download: bool = True
) -> tuple[TextEncoder, TextConfig]:
    """A frozen CLIP tower and its checkpoint record, for every rank of a training run.

    Under a process group, local rank 0 of each node resolves the weights first (downloading
    them once where needed), then a barrier, then the other ranks read them from the cache it
    filled; never every rank downloading at once. Without a group it is
    ``TextEncoder.from_pretrained``.
    """
    import torch.distributed as tdist

    group = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
    first = not group or int(os.environ.get("LOCAL_RANK", 0)) == 0
    enc, error = None, None
    if first:
        try:
            enc = TextEncoder.from_pretrained(arch, tag, download=download, weights=weights)
        except TextEncoderError as e:  # the others must still reach the barrier
            error = e
    if group:
        tdist.barrier()
    if error is not None:
        raise error
    if enc is None:  # rank 0 of this node has filled the cache: no download here
        enc = TextEncoder.from_pretrained(arch, tag, download=False, weights=weights)
    return enc, clip_text_config(enc)


def _words_encoder(arch: str) -> WordEncoder:
    try:
        return WordEncoder.from_arch(arch)
    except ValueError as e:
        raise TextEncoderError(str(e)) from None


def _saved_arch(config_file: Path) -> str:
    """The ``arch`` recorded in a saved ``text_config.json`` ('' when absent or unreadable)."""
    try:
        return str(json.loads(config_file.read_text()).get("arch", ""))
    except (OSError, ValueError, AttributeError):
        return ""
