"""Train the SDF head (cloud -> signed distance) on SDF samples from the data tools' shards.

    .venv/bin/python train/train_sdf.py --data runs/data/shapenet runs/data/meshes \
        --out runs/sdf_small [--preset sdf_small] [--resume] [--stop-at STEP] [--key=value ...]

``--key=value`` overrides go to the model config (``SDFConfig`` fields, e.g. ``--width=192``) or
the training config (``TrainConfig`` fields, e.g. ``--lr=5e-4 --max_steps=20000``). Loss and
augmentation are documented in ``pointdiff/training/sdf.py``.

Stopped by SIGTERM/SIGUSR1 (a scheduler's preemption), the run writes a checkpoint after the
step it was in and exits with status 75 (``REQUEUE_EXIT_CODE``, as ``train_base.py``); rerun
with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

from pointdiff.checkpoint import init_from_checkpoint
from pointdiff.config import SDFConfig, TrainConfig, apply_overrides, get_preset
from pointdiff.models import build_model, count_params
from pointdiff.training.loop import train
from pointdiff.training.preemption import run_script
from pointdiff.training.sdf import SDFDataset, SDFLoss

#: training defaults for the SDF head (small data, small model): overridable with --key=value
SDF_TRAIN = TrainConfig(
    batch_size=8, lr=3e-4, warmup_steps=200, max_steps=20_000, ema_decay=0.999, ckpt_every=500
)


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    model_keys = {f.name for f in dataclasses.fields(SDFConfig)}
    model, rest = [], []
    for arg in argv:
        key = arg[2:].split("=", 1)[0].replace("-", "_")
        (model if key in model_keys else rest).append(arg)
    return model, rest


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="shard directories with SDF samples")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl)")
    p.add_argument("--preset", default="sdf_small")
    p.add_argument("--split", default="train", help="objects of this split ('all' = every one)")
    p.add_argument("--num-queries", type=int, default=2048, help="SDF samples per cloud per step")
    p.add_argument("--noise", type=float, default=0.01, help="max Gaussian σ on input clouds")
    p.add_argument("--dropout", type=float, default=0.1, help="max fraction of duplicated points")
    p.add_argument(
        "--outliers",
        type=float,
        default=0.0,
        help="max fraction of input points scattered by σ 0.05 (generator strays)",
    )
    p.add_argument("--clamp", type=float, default=0.1, help="clamped-L1 band (object units)")
    p.add_argument("--include-unreliable", action="store_true", help="keep unreliable SDF signs")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="start a new run from a checkpoint's EMA weights (same architecture)",
    )
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at step")
    p.add_argument("--device", default=None)
    args, overrides = p.parse_known_args(argv)

    model_over, train_over = _split_overrides(overrides)
    model_cfg = apply_overrides(get_preset(args.preset), model_over)
    if not isinstance(model_cfg, SDFConfig):
        p.error(f"preset {args.preset!r} is not an SDF model")
    train_cfg = apply_overrides(SDF_TRAIN, train_over)
    dataset = SDFDataset(
        args.data,
        split=None if args.split == "all" else args.split,
        num_points=model_cfg.num_points,
        num_queries=args.num_queries,
        noise=args.noise,
        dropout=args.dropout,
        outliers=args.outliers,
        reliable_only=not args.include_unreliable,
        seed=train_cfg.seed,
    )
    model = build_model(model_cfg)
    if args.init_from:
        print(f"initialised from {init_from_checkpoint(model, args.init_from)}")
    print(
        f"SDF head {args.preset}: {count_params(model) / 1e6:.2f} M params, {len(dataset)} objects"
    )
    return train(
        model,
        SDFLoss(args.clamp),
        dataset,
        train_cfg,
        args.out,
        configs={"model": model_cfg},
        resume=args.resume,
        device=args.device,
        stop_at=args.stop_at,
    )


def cli(argv: list[str] | None = None) -> None:
    """``main`` as a script (``preemption.run_script``): a bad argument, config or shard directory
    ends with one error line; a run stopped by a signal exits with ``REQUEUE_EXIT_CODE``."""
    run_script("train_sdf.py", functools.partial(main, argv))


if __name__ == "__main__":
    cli()
