"""Checkpoints: atomic save, resolve, load, rebuild, and export of release weights.

A training checkpoint is a directory ``run_dir/ckpt-{step:07d}/``::

    model.safetensors      raw network weights
    ema.safetensors        EMA network weights (what sampling uses)
    config.json            {"format", "version", "kind", "step", "configs": {name: to_dict(cfg)}}
    state.pt               optimizer, LR scheduler, per-rank RNG states, step, data position
                           (tensors/numbers/strings only: loads with ``weights_only=True``)
    text.safetensors, text_ema.safetensors, text_config.json
                           only when the text tower was trained jointly

``run_dir/latest.json`` names the newest one. A checkpoint is written into a hidden temporary
directory that is renamed into place (``os.replace``), and single files go through
``pointdiff.atomic``, so a crash never leaves a half-written checkpoint behind a name; only the
last ``keep_last`` are kept. Weights files hold bare networks (a diffusion model's
preconditioner has no weights of its own), so they rebuild from the model config alone. A
*release* directory (``checkpoints/<name>/``) holds ``model.safetensors`` (EMA weights, fp16 by
default) + ``config.json`` (+ the text files), as written by ``export_for_release``. Weights
never go through pickle.

A release directory's ``config.json`` also holds ``"sha256": {file name: hex digest}`` for its
weight files (``record_hashes``); ``load_weights`` checks them, so a corrupted or edited weights
file is an error that names it instead of a model that loads and samples garbage. Directories
without hashes (older exports, training checkpoints) load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pointdiff.atomic import write_json_atomic
from pointdiff.config import from_dict, to_dict
from pointdiff.models import build_model

FORMAT = "pointdiff-checkpoint"
VERSION = 1
LATEST = "latest.json"
HASHES = "sha256"  # config.json key: {file name: SHA-256 hex digest} of the files beside it
_CKPT_RE = re.compile(r"^ckpt-(\d{7,})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind (the reason is named)."""


# ----------------------------------------------------------------------------------------------
# Saving


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def _config_json(configs: dict, step: int) -> dict:
    if "model" not in configs:
        raise CheckpointError("configs must hold the model config under 'model'")
    dicts = {k: (v if isinstance(v, dict) else to_dict(v)) for k, v in configs.items()}
    kind = dicts["model"]["kind"]
    return {"format": FORMAT, "version": VERSION, "kind": kind, "step": step, "configs": dicts}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place (replacing an older one of that name).
    Whole directories are swapped by renames: ``pointdiff.atomic`` writes single files."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _state_of(obj) -> dict | None:
    return obj if obj is None or isinstance(obj, dict) else obj.state_dict()


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer | dict | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | dict | None,
    configs: dict,
    extra: dict | None = None,
    *,
    text_encoder: nn.Module | None = None,
    text_ema: nn.Module | None = None,
    rng_states: list[dict] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write ``run_dir/ckpt-{step:07d}`` atomically, point ``latest.json`` at it, prune old ones.

    Call on rank 0 only (others ``barrier()``). ``model``/``ema`` are plain networks (unwrap DDP
    first). ``text_encoder`` needs a ``save(dir)`` method (``conditioning.text.TextEncoder``).

    :param optimizer, scheduler: the objects or their state dicts (a gathered FSDP state).
    :param configs: ``{"model": <model config>, ...}`` config objects (or ``to_dict`` dicts).
    :param extra: JSON-like training state (data position, …) stored in ``state.pt``.
    :param rng_states: one RNG state per rank (``training.rng.get_rng_state``), if any.
    :return: the checkpoint directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:07d}"
    tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_cpu_state(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_cpu_state(ema), str(tmp / "ema.safetensors"))
    if text_encoder is not None:
        text_encoder.save(tmp)  # text.safetensors + text_config.json
        if text_ema is not None:
            save_file(_cpu_state(text_ema.tower), str(tmp / "text_ema.safetensors"))
    write_json_atomic(tmp / "config.json", _config_json(configs, step))
    state = {
        "step": step,
        "optimizer": _state_of(optimizer),
        "scheduler": _state_of(scheduler),
        "rng": rng_states or [],
        "extra": extra or {},
    }
    torch.save(state, tmp / "state.pt")
    _replace_dir(tmp, final)
    write_json_atomic(run_dir / LATEST, {"checkpoint": final.name, "step": step})
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The ``ckpt-*`` directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest.json`` names (or the newest ``ckpt-*``), None for a fresh run."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if pointer.is_file():
        try:
            path = run_dir / json.loads(pointer.read_text())["checkpoint"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{pointer}: unreadable ({e})") from e
        if path.is_dir():
            return path
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------
# File hashes (release directories)


def hash_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def record_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """Store the SHA-256 of the ``*.safetensors`` weight files in ``folder`` in its
    ``config.json`` under ``"sha256"``, keeping the rest of the JSON as it is (the JSON files are
    not hashed: they are text, whose line endings git may rewrite on checkout).

    Call it last, after every file of the directory is written (and again after changing one on
    purpose).

    :return: ``{file name: hex digest}``.
    """
    folder = Path(folder)
    cfg_file = folder / "config.json"
    meta = json.loads(cfg_file.read_text())
    names = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    meta[HASHES] = {name: hash_file(folder / name) for name in names}
    write_json_atomic(cfg_file, meta, sort_keys=False)
    return meta[HASHES]


def verify_hashes(folder: str | os.PathLike) -> int:
    """Check the files of ``folder`` against the hashes in its ``config.json``.

    :return: how many files were checked (0 for a directory without recorded hashes).
    :raises CheckpointError: naming the first file that is missing or whose hash differs.
    """
    folder = Path(folder)
    cfg_file = folder / "config.json"
    try:
        hashes = json.loads(cfg_file.read_text()).get(HASHES, {}) if cfg_file.is_file() else {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable ({e})") from e
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{cfg_file}: {HASHES!r} must map file names to SHA-256 digests")
    for name, want in sorted(hashes.items()):
        path = folder / name
        restore = f"restore it (`git checkout -- {path}` in a clone, or download it again)"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, but {cfg_file} lists it; {restore}")
        got = hash_file(path)
        if got != want:
            raise CheckpointError(
                f"{path}: SHA-256 mismatch (expected {str(want)[:12]}…, got {got[:12]}…, "
                f"recorded in {cfg_file}): the file is corrupt or was changed; {restore} or "
                "re-export the checkpoint (after an intentional change, record the new hashes "
                "with pointdiff.checkpoint.record_hashes)"
            )
    return len(hashes)


# ----------------------------------------------------------------------------------------------
# Loading


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint, release or run directory (→ its latest)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    if (path / LATEST).is_file() or list_checkpoints(path):  # a run directory
        return latest_checkpoint(path)
    markers = ("config.json", "model.safetensors", "ema.safetensors", "state.pt")
    if not any((path / m).exists() for m in markers):
        raise CheckpointError(
            f"{path}: not a checkpoint (no config.json / model.safetensors) and no ckpt-* in it"
        )
    return path


def _existing(ckpt: Path, name: str, consequence: str = "") -> Path:
    """``ckpt / name``; a CheckpointError naming the missing file (and ``consequence``) if
    absent."""
    f = ckpt / name
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: {name} is missing{consequence}")
    return f


def load_configs(path: str | os.PathLike) -> dict:
    """``{name: config object}`` from a checkpoint's ``config.json``."""
    cfg_file = _existing(resolve(path), "config.json", "; cannot rebuild the model")
    try:
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{cfg_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
        return {name: from_dict(d) for name, d in meta["configs"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{cfg_file}: unreadable config ({type(e).__name__}: {e})") from e


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _existing(path.parent, path.name)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e


def load_weights(path: str | os.PathLike, use_ema: bool = True) -> tuple[dict, dict]:
    """(state_dict, configs) of a checkpoint; EMA weights when present and ``use_ema``.

    Every file of the directory with a hash in its ``config.json`` is checked first
    (``verify_hashes``), a text tower's weights beside a base model included.
    """
    ckpt = resolve(path)
    configs = load_configs(ckpt)
    verify_hashes(ckpt)
    name = "ema.safetensors" if use_ema and (ckpt / "ema.safetensors").is_file() else None
    return _load_safetensors(ckpt / (name or "model.safetensors")), configs


def load_model(
    path: str | os.PathLike,
    kind: str | None = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint (eval mode, float32) and its configs.

    :param kind: expected model kind (``"denoiser"``, ``"upsampler"``, ``"sdf"``); a checkpoint of
        another kind is an error.
    """
    state, configs = load_weights(path, use_ema=use_ema)
    if "model" not in configs:
        raise CheckpointError(f"{path}: config.json has no 'model' config")
    cfg = configs["model"]
    if kind is not None and cfg.kind != kind:
        raise CheckpointError(f"{path}: holds a {cfg.kind!r} model, expected {kind!r}")
    model = build_model(cfg)
    _load_state(model, state, f"{path}: weights do not match its {cfg.kind} config")
    return model.to(device).eval(), configs


def load_training_state(path: str | os.PathLike) -> dict:
    """``state.pt`` of a training checkpoint (optimizer, scheduler, RNG, step, extra)."""
    f = _existing(resolve(path), "state.pt", " (a release checkpoint cannot resume)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing
        raise CheckpointError(f"{f}: unreadable training state ({type(e).__name__}: {e})") from e


def load_into(module: nn.Module, path: Path, keep_missing: tuple[str, ...] = ()) -> None:
    """Load a safetensors file into ``module`` (strict), casting to its dtypes.

    :param keep_missing: name prefixes of parameters the file may lack; they keep their init
        (e.g. a zero-init layer added when fine-tuning from an older architecture).
    """
    state, want = _load_safetensors(path), module.state_dict()
    for k in want:
        if keep_missing and k not in state and k.startswith(keep_missing):
            state[k] = want[k]
    _load_state(module, state, f"{path}: does not match the module")


def _load_state(module: nn.Module, state: dict, error: str) -> None:
    """Strict ``load_state_dict``, cast to the module's dtypes; a mismatch is ``error``."""
    want = module.state_dict()
    try:
        module.load_state_dict(
            {k: v.to(want[k].dtype) if k in want else v for k, v in state.items()}
        )
    except RuntimeError as e:
        raise CheckpointError(f"{error} ({e})") from e


def init_from_checkpoint(
    module: nn.Module, path: str | os.PathLike, keep_missing: tuple[str, ...] = ()
) -> Path:
    """Start ``module`` from a run's (or checkpoint's) EMA weights (its raw weights when it has no
    EMA); returns the checkpoint directory used. See ``load_into`` for ``keep_missing``."""
    ckpt = resolve(path)
    ema = ckpt / "ema.safetensors"
    load_into(module, ema if ema.is_file() else ckpt / "model.safetensors", keep_missing)
    return ckpt


# ----------------------------------------------------------------------------------------------
# Release


def export_for_release(
    ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> Path:
    """Write a shipped checkpoint: EMA weights (cast to ``dtype``) + config.json (+ text files),
    with the SHA-256 of each file in config.json (``record_hashes``).

    :return: ``out_dir``, written atomically.
    """
    ckpt = resolve(ckpt_dir)
    out = Path(out_dir)
    state, _ = load_weights(ckpt, use_ema=True)
    meta = json.loads((ckpt / "config.json").read_text())
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def cast(sd):
        return {
            k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()
        }

    save_file(cast(state), str(tmp / "model.safetensors"))
    released = {**meta, "released_from": str(ckpt.name), "dtype": str(dtype)}
    write_json_atomic(tmp / "config.json", released)
    if (ckpt / "text_config.json").is_file():  # the EMA text tower when it was trained
        text = ckpt / "text_ema.safetensors"
        text = text if text.is_file() else ckpt / "text.safetensors"
        save_file(cast(_load_safetensors(text)), str(tmp / "text.safetensors"))
        shutil.copyfile(ckpt / "text_config.json", tmp / "text_config.json")
    record_hashes(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    _replace_dir(tmp, out)
    return out
