"""Surface spread of generated clouds against real held-out clouds at the same point count.

    .venv/bin/python benchmarks/surface_spread.py --data runs/data/ship3 --prompts 16 --seeds 0
    .venv/bin/python benchmarks/surface_spread.py --data runs/data/ship3 \
        --clouds runs/eval_ship/clouds-*.npz runs/eval_ship/natural-clouds-*.npz

Surface spread (``pointdiff.metrics.surface``): per point, the RMS distance of its 16 nearest
neighbours to their best-fit plane over the cloud's median nearest-neighbour distance; median
over points, then over clouds (0 = a surface, ≈ 0.87 = a volume). It depends on the point count
(curvature) and on how evenly points are spread (an FPS subset is evener than a random sample:
0.10 against 0.16 on a sphere at 1024), so each generated set is compared with the real clouds
at its own count, and the 1024-point real clouds are FPS subsets, as the base model's training
clouds were.

Real: the objects of ``--splits`` of ``--data`` (at most ``--prompts``, evenly spaced; all with
``--clouds``), their stored clouds (4096 points) and 1024-point FPS subsets. Generated: either
sampled here with ``--checkpoint`` — one prompt per real object (its caption), for each seed; the
base stage's 1024 points and the final 4096 (base + upsampler) — or read from ``--clouds``
(``eval_shipped.py --save-clouds``: ``coords`` = base, ``final_coords`` where all stages ran).
The table gives the median, the quartiles of the per-cloud values and the ratio generated / real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pointdiff.data import ShardReader
from pointdiff.metrics.surface import surface_spread


def _row(name: str, clouds, real: dict[int, float] | None = None) -> dict:
    s = surface_spread(clouds)
    per = np.asarray(s["per_cloud"])
    points = int(np.asarray(clouds[0]).shape[0])
    q1, q3 = np.nanpercentile(per, [25, 75])
    ratio = s["surface_spread"] / real[points] if real and points in real else float("nan")
    return {
        "clouds": name,
        "points": points,
        "count": s["count"],
        "surface_spread": s["surface_spread"],
        "q25": float(q1),
        "q75": float(q3),
        "ratio_to_real": ratio,
    }


def _print(rows: list[dict]) -> None:
    print("| clouds | points | n | surface spread (median) | quartiles | generated / real |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = "—" if np.isnan(r["ratio_to_real"]) else f"{r['ratio_to_real']:.2f}"
        print(
            f"| {r['clouds']} | {r['points']} | {r['count']} | {r['surface_spread']:.3f} | "
            f"{r['q25']:.3f}–{r['q75']:.3f} | {ratio} |"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="shard directory of the real clouds")
    ap.add_argument("--splits", nargs="+", default=["test", "val", "test_group"])
    ap.add_argument("--checkpoint", default="checkpoints/pointdiff-small")
    ap.add_argument("--prompts", type=int, default=16, help="real objects / prompts (N)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--clouds", nargs="+", default=None, help="saved npz files instead of sampling")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from eval_shipped import fps_np  # the evaluation's FPS subsets

    reader = ShardReader(args.data)
    rows = [i for i, e in enumerate(reader.entries) if e["split"] in args.splits]
    if not rows:
        raise SystemExit(f"{args.data}: no objects in splits {args.splits}")
    if args.clouds is None and args.prompts < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, args.prompts).round().astype(int)]
    real = np.stack([reader.get(i, "coords") for i in rows]).astype(np.float32)
    real_sets = {real.shape[1]: real, 1024: fps_np(real, 1024)}
    out = [
        _row(f"real held-out ({', '.join(args.splits)})", c) for _, c in sorted(real_sets.items())
    ]
    ref = {r["points"]: r["surface_spread"] for r in out}

    if args.clouds:
        for path in args.clouds:
            with np.load(path, allow_pickle=False) as d:
                sets = [("base", d["coords"])]
                if "final_coords" in d:
                    sets.append(("final", d["final_coords"]))
                out += [_row(f"{Path(path).name} {k}", c, ref) for k, c in sets]
    else:
        from pointdiff.pipeline import load_pipeline

        pipe = load_pipeline(args.checkpoint)
        n = pipe.stages[0].num_points
        prompts = [reader.entries[i]["caption"] for i in rows]
        base, final = [], []
        for seed in args.seeds:
            clouds = pipe.sample_clouds(prompts, seed=seed, bf16=args.bf16)
            base += [c.coords[:n] for c in clouds]
            final += [c.coords for c in clouds]
        seeds = " ".join(map(str, args.seeds))
        out.append(_row(f"generated base ({len(prompts)} prompts, seeds {seeds})", base, ref))
        out.append(_row(f"generated final ({len(prompts)} prompts, seeds {seeds})", final, ref))
    _print(out)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
