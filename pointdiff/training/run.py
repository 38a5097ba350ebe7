"""A diffusion training run from the command line (``train/train_base.py``,
``train/train_upsampler.py``): preset + ``--key=value`` overrides → configs → dataset, text
encoder, model and the stage's loss (``training.objectives``) → ``training.loop.train``. The
scripts in ``train/`` only call ``cli(stage, argv)``.

Overrides are routed by field name to the model config (``DenoiserConfig``/``UpsamplerConfig``),
``TrainConfig`` or ``DiffusionConfig`` (their field names do not overlap); an unknown key is an
error listing the valid ones. ``--text`` chooses the condition:

* ``clip:ARCH[:TAG]`` a frozen pretrained open_clip tower (default tag ``openai``), downloaded
  once per node when missing (``--no-clip-download`` fails instead); offline,
  ``--clip-weights PATH`` hands over the weights file of that tag;
* ``tiny`` / ``small`` a from-scratch tower trained jointly (``--freeze-text`` keeps it fixed);
* ``none`` unconditional (the model's ``cond_dim`` must be 0).

A frozen encoder embeds every caption once, before training, into a table cached beside the
shards (``training.text_cache``: a restart reads it back) and is then released; a trained
tower becomes part of the trained module (``objectives.TextConditioned``).

The default follows the preset's ``cond_dim``: 768 → ``clip:ViT-L-14:openai`` (Point-E),
512 → ``small``, 32 → ``tiny``, 0 → ``none``.

``--init-from`` a converted point-e model (``pointdiff convert-pointe``) fine-tunes it with
point-e's own loss (``training.pointe_objective``; ``--objective pointe|edm`` chooses
explicitly): the model config is the checkpoint's, and the run has no EDM diffusion config.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import torch

from pointdiff.checkpoint import init_from_checkpoint, load_configs, load_into, load_weights
from pointdiff.conditioning import hf_text, transfer
from pointdiff.conditioning.text import SCRATCH_CONFIGS
from pointdiff.conditioning.text_loading import build_text_encoder, load_frozen_clip
from pointdiff.conditioning.words import WordEncoder
from pointdiff.config import (
    DiffusionConfig,
    TextConfig,
    TrainConfig,
    apply_overrides,
    get_preset,
    to_dict,
)
from pointdiff.data import SUBSAMPLES, PointCloudDataset
from pointdiff.models import build_model, count_params
from pointdiff.training import distributed as dist
from pointdiff.training.loop import train
from pointdiff.training.objectives import (
    BaseLoss,
    TextConditioned,
    UpsamplerLoss,
    build_diffusion_model,
)
from pointdiff.training.pointe_objective import (
    PointeLoss,
    choose_objective,
    mark_pointe_checkpoints,
)
from pointdiff.training.preemption import run_script
from pointdiff.training.run_dir import TrainError
from pointdiff.training.text_cache import cache_dir_for, set_text_table

STAGES = {"base": ("denoiser", "small"), "upsampler": ("upsampler", "upsample_small")}
DEFAULT_TEXT = {768: "clip:ViT-L-14:openai", 512: "small", 32: "tiny", 0: "none"}


def route_overrides(configs: dict, argv: list[str]) -> dict:
    """Apply ``--key=value`` overrides to whichever config of ``configs`` has the field."""
    owners = {
        f.name: name
        for name, cfg in configs.items()
        for f in dataclasses.fields(cfg)
        if f.name != "kind"
    }
    routed: dict[str, list[str]] = {name: [] for name in configs}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"unrecognised argument {arg!r}; overrides look like --key=value")
        key = arg[2:].split("=", 1)[0].replace("-", "_")
        if key not in owners:
            raise ValueError(f"no config has a field {key!r}; valid: {', '.join(sorted(owners))}")
        routed[owners[key]].append(arg)
    return {name: apply_overrides(cfg, routed[name]) for name, cfg in configs.items()}


def build_text(spec: str, clip_weights: str | None, download: bool, freeze: bool):
    """(TextEncoder or None, TextConfig or None) for a ``--text`` value."""
    if spec == "none":
        return None, None
    if spec.startswith(WordEncoder.ARCH):
        enc = WordEncoder.from_arch(spec)
        return enc, TextConfig(arch=enc.spec["arch"], pretrained="", trainable=False)
    if spec.startswith(hf_text.ARCH_PREFIX):
        cfg = TextConfig(arch=spec, pretrained="", trainable=False)
        enc = build_text_encoder(cfg)
        return enc, dataclasses.replace(
            cfg, arch=enc.spec["arch"], pretrained=enc.spec["pretrained"]
        )
    if spec in SCRATCH_CONFIGS:
        cfg = TextConfig(arch=spec, pretrained="", trainable=not freeze)
        return build_text_encoder(cfg, seed=0), cfg
    if not spec.startswith("clip:"):
        raise ValueError(
            f"--text {spec!r}: use clip:ARCH[:TAG], hf:DIR_OR_HUB_ID, tiny, small, words[-D] "
            "or none"
        )
    arch, _, tag = spec[len("clip:") :].partition(":")
    # local rank 0 fetches first; the record is the tag and the weights' SHA-256, never a path
    return load_frozen_clip(arch, tag or "openai", clip_weights, download)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options of every diffusion training command (this one and ``distill_run``): the data,
    the run directory, resuming and stopping (``train_run`` hands them to the loop)."""
    p.add_argument("--data", required=True, help="shard directory (data_tools output)")
    p.add_argument("--run-dir", required=True, help="checkpoints, log.jsonl, config.json go here")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step"
    )


def train_run(args, model, loss_fn, data, configs: dict, device, pointe: dict | None) -> dict:
    """``training.loop.train`` with ``configs["train"]`` into ``--run-dir`` (``--resume``,
    ``--stop-at``); a point-e run's checkpoints then describe themselves as the converted model
    (``pointe``: its ``pointe_objective`` record, or None)."""
    result = train(
        model,
        loss_fn,
        data,
        configs["train"],
        args.run_dir,
        configs=configs,
        resume=args.resume,
        device=device,
        stop_at=args.stop_at,
    )
    if pointe is not None and dist.is_main():
        mark_pointe_checkpoints(args.run_dir, pointe)
    return result


def parse(stage: str, argv: list[str] | None):
    kind, preset = STAGES[stage]
    p = argparse.ArgumentParser(
        prog=f"train_{stage}.py",
        description=f"Train the {stage} diffusion model ({kind}). Launch with torchrun for "
        "several GPUs/nodes. Extra --key=value arguments override model/train/diffusion fields.",
    )
    p.add_argument(
        "preset",
        nargs="?",
        default=None,
        help=f"model preset (default {preset}; a point-e --init-from brings its own)",
    )
    add_run_args(p)
    p.add_argument(
        "--text",
        default=None,
        help="clip:ARCH[:TAG] (frozen CLIP) | hf:DIR_OR_HUB_ID (frozen Hugging Face encoder; "
        "hf:minilm = the bundled all-MiniLM-L6-v2) | tiny | small (open_clip towers trained "
        "jointly) | words[-D] (frozen hashed bag of words, no weights) | none",
    )
    p.add_argument("--clip-weights", default=None, help="local weights file of the CLIP tag")
    p.add_argument(
        "--clip-download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch CLIP weights missing locally (once per node); --no-clip-download: fail instead",
    )
    p.add_argument("--freeze-text", action="store_true", help="do not train a tiny/small tower")
    p.add_argument("--split", default="train", help="shard split to train on ('all' = every one)")
    p.add_argument(
        "--subsample",
        default="auto",
        choices=SUBSAMPLES,
        help="points of each stored cloud: auto (default) = first when the shards are stored in "
        "farthest-point order (data_tools writes them so: no FPS at load time), else fps",
    )
    p.add_argument("--no-augment", action="store_true", help="no rotation / scale jitter")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="start a new run from a checkpoint's EMA weights (same architecture; e.g. to "
        "fine-tune at another num_points or on other data); the optimizer starts fresh",
    )
    p.add_argument(
        "--objective",
        default=None,
        choices=["edm", "pointe"],
        help="edm (the default) | pointe: point-e's discrete ε + learned-variance loss "
        "(training.pointe_objective; the default when --init-from is a point-e model)",
    )
    return p.parse_known_args(argv)


def main(stage: str, argv: list[str] | None = None) -> dict:
    """Run one training command line of ``stage`` (``base`` or ``upsampler``)."""
    args, overrides = parse(stage, argv)
    kind, preset = STAGES[stage][0], args.preset or STAGES[stage][1]
    # point-e's objective trains a point-e network: its config, no EDM diffusion config
    model_cfg, pointe = choose_objective(args.objective, args.init_from, kind)
    if model_cfg is not None and args.preset:
        raise ValueError(f"--init-from {args.init_from} brings its model config; drop {preset!r}")
    model_cfg = model_cfg or get_preset(preset)
    if model_cfg.kind != kind:
        raise ValueError(f"preset {preset!r} is a {model_cfg.kind}, not a {kind}")
    configs = {"model": model_cfg, "train": TrainConfig()}
    if not pointe:
        configs["diffusion"] = DiffusionConfig()
    configs = route_overrides(configs, overrides)
    model_cfg, train_cfg, diff_cfg = configs["model"], configs["train"], configs.get("diffusion")
    if pointe and model_cfg.out_channels != 2 * model_cfg.in_channels:
        raise ValueError("--objective pointe trains ε + variance outputs: pass --out_channels=12")

    spec = args.text or DEFAULT_TEXT.get(model_cfg.cond_dim, "none")
    dist.init(args.device)  # the process group first: CLIP weights are fetched once per node
    text, text_cfg = build_text(spec, args.clip_weights, args.clip_download, args.freeze_text)
    dim = text.dim if text is not None else 0
    if dim != model_cfg.cond_dim:
        raise ValueError(
            f"the model takes {model_cfg.cond_dim}-d conditions but --text gives {dim}-d ones; "
            f"pass --cond_dim={dim} or another --text"
        )
    if text_cfg is not None:
        configs["text"] = text_cfg
    _check_resume(Path(args.run_dir), configs, args.resume)

    dataset = PointCloudDataset(
        args.data,
        split=None if args.split == "all" else args.split,
        num_points=model_cfg.num_points + getattr(model_cfg, "num_cond_points", 0),
        subsample=args.subsample,
        augment=not args.no_augment,
        seed=train_cfg.seed,
    )
    device = dist.init(args.device)
    torch.manual_seed(train_cfg.seed)  # same init on every rank (DDP broadcasts anyway)
    model = build_model(model_cfg) if pointe else build_diffusion_model(model_cfg, diff_cfg)
    text_note = "none" if text_cfg is None else text_cfg.arch + (" (trained)" * text_cfg.trainable)
    source = args.init_from if pointe and args.init_from else preset  # where the model is from
    dist.print0(
        f"{stage} {source}: {count_params(model) / 1e6:.2f} M params, {len(dataset)} objects, "
        f"text {text_note}, subsample {dataset.subsample}"
    )
    if args.init_from:
        _init_from(Path(args.init_from), model if pointe else model.net, text, dataset)

    # the condition the stage's loss hands the model (see training.objectives)
    condition = None
    if text is not None and text.trainable:
        model, condition = TextConditioned(model, text), "caption"
    elif text is not None:
        cache = cache_dir_for(args.data, args.run_dir)
        set_text_table(dataset, text, getattr(model_cfg, "text_tokens", 0), cache, device)
        text, condition = None, "text_emb"  # the table holds all the encoder gives: free it
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if pointe:
        loss_fn = PointeLoss(
            pointe["schedule"], condition, getattr(model_cfg, "num_cond_points", 0)
        )
    elif stage == "base":
        loss_fn = BaseLoss(diff_cfg, condition)
    else:
        loss_fn = UpsamplerLoss(diff_cfg, model_cfg.num_cond_points, condition)
    return train_run(args, model, loss_fn, dataset, configs, device, pointe)


def _init_from(path: Path, model, text, dataset) -> None:
    """Load a checkpoint's EMA weights into ``model`` (and a trainable text tower). A
    ``--cond_bias=True`` (``--text_tokens=T``) model may start from one without that bias (those
    token layers): zero-initialised, they leave the start model's output unchanged.
    A checkpoint trained with another frozen text encoder has its condition layers mapped to
    this one (``conditioning.transfer``, fitted on the dataset's captions)."""
    old_text = load_configs(path).get("text")
    if text is not None and old_text is not None and old_text.arch != text.spec["arch"]:
        _init_with_new_text(path, model, text, build_text_encoder(old_text), dataset)
        return
    ckpt = init_from_checkpoint(model, path, keep_missing=("text_bias.", "token_proj."))
    if text is not None and text.trainable:
        files = [ckpt / n for n in ("text_ema.safetensors", "text.safetensors")]
        name = next((f.name for f in files if f.is_file()), None)
        if name is None:
            raise TrainError(f"--init-from {ckpt}: it has no trained text tower to start from")
        load_into(text.tower, ckpt / name)
    dist.print0(f"initialised from {ckpt}")


def _init_with_new_text(path: Path, model, text, old_text, dataset) -> None:
    if text.trainable:
        raise TrainError("--init-from with another text encoder needs a frozen one")
    captions = sorted({dataset.entry(i)["caption"] for i in range(len(dataset))})
    a, r2 = transfer.fit_text_map(
        transfer.model_inputs(text.embed(captions).cpu()),
        transfer.model_inputs(old_text.embed(captions).cpu()),
    )
    state, _ = load_weights(path)
    want = model.state_dict()
    state = transfer.transfer_condition(state, a)
    state.update({k: want[k] for k in want if k not in state and k.startswith("text_bias.")})
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()})
    dist.print0(
        f"initialised from {path}; condition mapped from {old_text.spec['arch']} to "
        f"{text.spec['arch']} on {len(captions)} captions (R² {r2:.3f})"
    )


def _check_resume(run_dir: Path, configs: dict, resume: bool) -> None:
    """On --resume the model, diffusion and text configs must be those the run started with."""
    saved_path = run_dir / "config.json"
    if not resume or not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    for name in ("model", "diffusion", "text"):
        now = to_dict(configs[name]) if name in configs else {}
        was = saved.get(name) or {}
        if was != now:
            diff = sorted(k for k in set(now) | set(was) if now.get(k) != was.get(k))
            raise TrainError(
                f"--resume: the {name} config differs from the run's ({run_dir / 'config.json'}) "
                f"in {diff}; resume with the original command line"
            )


def cli(stage: str, argv: list[str] | None = None) -> None:
    """``main`` for the scripts: a bad argument, config or checkpoint ends with one error line;
    a run stopped by SIGTERM/SIGUSR1 (after its checkpoint) exits with ``REQUEUE_EXIT_CODE``."""
    run_script(f"train_{stage}.py", functools.partial(main, stage, argv))
