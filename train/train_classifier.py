"""Train the evaluation classifier (PointNet++ SSG) and save it with its held-out accuracy.

    .venv/bin/python train/train_classifier.py --out runs/classifier \
        --shapenet ../shared/data/shapenet_core_v2_subset_pc4096 [--shards runs/data/sh3d ...] \
        [--categories Lights Vehicles ...] [--preset small] [--epochs 150] [--num-points 1024]
        [--colour] [--key=value ...]

Labels: ShapeNet synset names and the ``category`` of shard entries. Held out = every object
whose split is not ``train``. Writes OUT/model.safetensors, OUT/config.json (config, classes,
accuracy, data counts, command) and OUT/log.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np
import torch

from pointdiff.config import apply_overrides
from pointdiff.evaluation.classifier import (
    CLASSIFIER_PRESETS,
    PointNet2Classifier,
    save_classifier,
    with_classes,
)
from pointdiff.training.classifier import (
    accuracy,
    concat_clouds,
    load_shapenet_subset,
    load_shard_categories,
    perturb,
    train_classifier,
)

# generated clouds as measured on pointdiff-small 1: out-of-plane σ ≈ 0.011–0.015, 2–4 % strays
NOISY_SIGMA, NOISY_STRAYS = 0.015, 0.03


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shapenet", default=None, help="directory of ShapeNet subset .npz files")
    p.add_argument("--shards", nargs="*", default=[], help="shard directories with 'category'")
    p.add_argument(
        "--categories",
        nargs="*",
        default=None,
        help="keep only these labels, from every source (e.g. Sweet Home 3D's kinds)",
    )
    p.add_argument("--preset", default="small", choices=sorted(CLASSIFIER_PRESETS))
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-points", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--colour", action="store_true", help="use rgb as input features")
    p.add_argument(
        "--rotation",
        type=float,
        default=180.0,
        help="augmentation: rotate about the up axis by up to ± this many degrees",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="augmentation: per-cloud jitter σ up to this (generator-like; e.g. 0.015)",
    )
    p.add_argument(
        "--outliers",
        type=float,
        default=0.0,
        help="augmentation: up to this fraction of points scattered (e.g. 0.05)",
    )
    p.add_argument(
        "--shapenet-yaw",
        type=float,
        default=0.0,
        help="rotate the ShapeNet clouds about the up axis by this many degrees "
        "(180 faces ShapeNet's chairs like Sweet Home 3D's)",
    )
    p.add_argument(
        "--fps-share",
        type=float,
        default=0.0,
        help="share of training clouds subsampled by their farthest-point prefix (as at "
        "evaluation) instead of at random, so both subsets are judged alike (e.g. 0.5)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args, overrides = p.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    parts = [load_shapenet_subset(args.shapenet, yaw=args.shapenet_yaw)] if args.shapenet else []
    parts += [load_shard_categories(s) for s in args.shards]
    if args.categories is not None:
        parts = [part.subset(np.isin(part.labels, args.categories)) for part in parts]
    if not parts:
        p.error("give --shapenet and/or --shards")
    data = concat_clouds(parts)
    names = sorted(set(data.labels))
    cfg = with_classes(CLASSIFIER_PRESETS[args.preset], names)
    cfg = apply_overrides(dataclasses.replace(cfg, in_channels=6 if args.colour else 3), overrides)
    train, held = data.subset(data.splits == "train"), data.subset(data.splits != "train")
    counts = {c: [int((train.labels == c).sum()), int((held.labels == c).sum())] for c in names}
    print(f"{len(train)} train / {len(held)} held-out clouds, {len(names)} classes: {counts}")

    model = PointNet2Classifier(cfg)
    history = train_classifier(
        model,
        train,
        args.epochs,
        args.batch_size,
        args.num_points,
        args.lr,
        args.seed,
        log_path=f"{args.out}/log.jsonl" if _mkdir(args.out) else None,
        held_out=held,
        rotation=args.rotation,
        noise=args.noise,
        outliers=args.outliers,
        fps_share=args.fps_share,
    )
    noisy = perturb(held, NOISY_SIGMA, NOISY_STRAYS)  # with the generator's measured defects
    result = {
        "held_out": accuracy(model, held, args.num_points) if len(held) else None,
        "held_out_noisy": accuracy(model, noisy, args.num_points) if len(held) else None,
        "train": accuracy(model, train, args.num_points),
        "counts_train_heldout": counts,
        "sources": sorted(set(data.source)),
        "num_points": args.num_points,
        "epochs": args.epochs,
        "history": history,
        "command": " ".join(
            ["train/train_classifier.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    save_classifier(model, args.out, extra=result)
    print(
        json.dumps(
            {k: result[k] for k in ("held_out", "held_out_noisy", "train")}, indent=1, default=_np
        )
    )
    return result


def _mkdir(path: str) -> bool:
    import pathlib

    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    return True


def _np(v):
    return v.item() if isinstance(v, np.generic) else str(v)


if __name__ == "__main__":
    main()
