"""Evaluate a text -> cloud -> mesh pipeline on held-out objects (the model card's numbers).

    .venv/bin/python benchmarks/eval_shipped.py --checkpoint checkpoints/pointdiff-small \
        --data runs/data/ship --classifier runs/ship/classifier --seeds 0 1 2 --out runs/eval_ship
    .venv/bin/python benchmarks/eval_shipped.py ... --sweep "heun:64 dpmpp_2m:16 dpmpp_2m:24"
    .venv/bin/python benchmarks/eval_shipped.py --only natural --data runs/data/ship3 \
        --classifier checkpoints/pointdiff-small/classifier --seeds 0 1 2

For every held-out object (splits ``--splits``) its caption is the prompt and its shape class the
prompted category. Reported, per seed and as mean ± std:

* category R-precision: top-1 of the evaluation classifier on the generated cloud (among all its
  classes), overall and per category;
* 1-NNA-CD, COV-CD, MMD-CD against the held-out clouds, per-shape bbox protocol (DPM), generated
  and reference clouds both at the generated point count (references by FPS);
* nearest-reference accuracy: the category of the training cloud nearest by Chamfer distance
  (bbox protocol, 512 FPS points) — a judge with no weights, to cross-check the classifier;
* the same metrics (R-precision and set metrics) for a trivial baseline: for each prompt, the
  training cloud whose caption shares most words with it (ties broken by the seed);
Metrics are computed on the base stage's clouds (1024 points; the upsampler keeps them verbatim);
the first seed runs the whole pipeline (upsampler + meshes), the other seeds the base stage only.

* meshes (first seed): share of clouds whose SDF mesh has one main connected component (>= 90 %
  of the faces) and share whose main component is watertight; mesh Chamfer-L1 (bbox protocol,
  4096 surface samples) to the held-out object's cloud.
* surface spread (``metrics.surface``; 0 = a surface, ≈ 0.87 = a volume): of the base clouds
  (every seed) and the final clouds (first seed), beside the held-out clouds' own
  (``surface_spread_real_<points>``: FPS subsets at the base count, and as stored).

``--natural [TSV]`` (default ``benchmarks/natural_prompts.tsv``) also samples every prompt of a
natural-prompt suite (``evaluation.natural``: prompts as people type them, e.g. "a navy sofa",
each with its expected class and, where it names one, its basic colour) for every seed, and
reports per seed and as mean ± std: category accuracy (top-1 of 11) by the classifier and by the
nearest-reference judge, overall and per class; colour accuracy on the prompts that name a
colour (a hit when the named colour is among the one or two words ``colours.describe_colours``
gives for the base cloud; beside it the named colour's mean share of the points, and the chance
level: the hit rate with the named colours shuffled among the clouds); surface
spread (base, and final on the first seed). ``--only natural`` skips the held-out captions.

``--data``: shard directory. Its ``train`` split are the nearest-reference judge's references
and its held-out splits the prompts; an object's class is its ``category`` when that is a
classifier class, else (shards not yet selected, e.g. all of Sweet Home 3D) the class
``data_tools.select_classes`` gives its name; objects of no class are left out.

``--sweep`` instead times samplers/steps/guidance scales on the first seed (quality vs
seconds), to choose the
default. ``--sheet`` writes a PNG of prompts -> clouds -> meshes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pointdiff.data import ShardReader
from pointdiff.evaluation.alignment import category_r_precision, nearest_reference_accuracy
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.evaluation.natural import load_natural_prompts, natural_table
from pointdiff.metrics.sets import compute_set_metrics
from pointdiff.metrics.surface import surface_spread
from pointdiff.pipeline import load_pipeline
from pointdiff.pointcloud import PointCloud

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # data_tools is a top-level package of the repository
sys.path.insert(0, str(ROOT / "benchmarks"))  # run as a script or imported by tests
NATURAL_PROMPTS = ROOT / "benchmarks" / "natural_prompts.tsv"

# the per-seed computations; re-exported for rescore_clouds.py, surface_spread.py and the tests
from shipped_metrics import (  # noqa: E402
    NATURAL_KEYS,
    NEAREST_POINTS,
    baseline_rows,
    classify,
    evenly,
    fps_np,
    load_split,
    mesh_stats,
    natural_seed,
    object_class,
    sample,
    save_clouds,
    spread_of,
    summarise,
    training_references,
    write_sheet,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/pointdiff-small")
    ap.add_argument("--data", default="runs/data/ship")
    ap.add_argument("--classifier", default="runs/ship/classifier")
    ap.add_argument("--splits", nargs="+", default=["test", "val", "test_group"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument(
        "--sweep",
        default=None,
        help='sampler:steps[:guidance] ..., e.g. "heun:64 dpmpp_2m:16 dpmpp_2m:16:5"',
    )
    ap.add_argument("--guidance", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument(
        "--stray-ratio",
        type=float,
        default=None,
        help="base stage stray relocation (default: the checkpoint's; 0: off)",
    )
    ap.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only where LO < sigma <= HI (default: the checkpoint's; 0 1e9: every sigma)",
    )
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only N held-out prompts and N natural prompts (evenly spaced)",
    )
    ap.add_argument(
        "--natural",
        nargs="?",
        const=str(NATURAL_PROMPTS),
        default=None,
        metavar="TSV",
        help=f"also evaluate a natural-prompt suite (default TSV: {NATURAL_PROMPTS.name})",
    )
    ap.add_argument(
        "--only",
        choices=["heldout", "natural"],
        default=None,
        help="only the held-out captions, or only the natural prompts (implies --natural)",
    )
    ap.add_argument("--mesh-grid", type=int, default=48)
    ap.add_argument("--no-mesh", action="store_true", help="base stage only on every seed")
    ap.add_argument("--sheet", default=None, help="PNG of 16 prompts -> clouds -> meshes")
    ap.add_argument("--out", default="runs/eval_ship")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument(
        "--save-clouds",
        action="store_true",
        help="also write each run's clouds to "
        "OUT/[natural-]clouds-<sampler>-<steps>-<guidance>[-gi<lo>-<hi>]-seed<k>.npz "
        "(coords, colors: base; final_coords, final_colors where all stages ran; prompts, "
        "categories[, colours]), so other classifiers can score them",
    )
    args = ap.parse_args()
    heldout = args.only != "natural"
    natural_path = args.natural or (str(NATURAL_PROMPTS) if args.only == "natural" else None)
    natural_path = None if args.only == "heldout" else natural_path

    pipe = load_pipeline(args.checkpoint)
    clf = load_classifier(args.classifier).eval()
    names = list(clf.cfg.class_names)
    reader = ShardReader(args.data)
    train_rows = load_split(reader, ["train"], names)
    nn_refs, nn_cats = training_references(reader, train_rows, names)
    n = pipe.stages[0].num_points  # metrics on the base clouds (the upsampler keeps them)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"classes {names}; nearest-reference judge: {len(train_rows)} training clouds of "
        f"{args.data}"
    )
    suite = []
    if natural_path:
        suite = evenly(load_natural_prompts(natural_path), args.limit)
        unknown = sorted({p.category for p in suite} - set(names))
        if unknown:
            raise SystemExit(f"{natural_path}: classes {unknown} are not classifier classes")
        print(
            f"{len(suite)} natural prompts ({natural_path}), "
            f"{sum(p.colour is not None for p in suite)} name a colour"
        )
    if heldout:
        rows = evenly(load_split(reader, args.splits, names), args.limit)
        prompts = [reader.entries[i]["caption"] for i in rows]
        cats = [object_class(reader.entries[i], names) for i in rows]
        row_splits = [reader.entries[i]["split"] for i in rows]
        refs4096 = np.stack([reader.get(i, "coords") for i in rows]).astype(np.float32)
        # the held-out clouds' own surface spread, at the base and the full point count
        real_spread = {
            f"surface_spread_real_{len(c[0])}": surface_spread(c)["surface_spread"]
            for c in (fps_np(refs4096, n), refs4096)
        }
        print(
            f"{len(prompts)} held-out prompts ({', '.join(args.splits)}); {json.dumps(real_spread)}"
        )

    runs = [(args.sampler, args.steps, args.guidance)]
    if args.sweep:  # sampler:steps[:guidance]
        runs = [
            (f[0], int(f[1]), float(f[2]) if len(f) > 2 else args.guidance)
            for f in (s.split(":") for s in args.sweep.split())
        ]
    results = []
    base_defaults = pipe.stages[0].sample
    stray = args.stray_ratio if args.stray_ratio is not None else base_defaults.stray_ratio
    interval = args.guidance_interval or base_defaults.guidance_interval
    interval = None if interval is None else tuple(interval)
    tag = "" if interval is None else f"-gi{interval[0]:g}-{interval[1]:g}"
    for sampler, steps, guidance in runs:
        # the checkpoint's defaults where not overridden, so rows and file names say what ran
        sampler = sampler if sampler is not None else base_defaults.sampler
        steps = steps if steps is not None else base_defaults.steps
        guidance = guidance if guidance is not None else base_defaults.guidance
        overrides = {
            "sampler": sampler,
            "steps": steps,
            "guidance": guidance,
            "stray_ratio": args.stray_ratio,
            "guidance_interval": interval,
        }
        settings = {
            "sampler": sampler,
            "steps": steps,
            "guidance": guidance,
            "stray_ratio": stray,
            "guidance_interval": interval,
        }
        name = f"{sampler}-{steps}-{guidance}{tag}"
        per_seed, natural_rows = [], []
        for seed in args.seeds if not args.sweep else args.seeds[:1]:
            # the whole pipeline (upsampler, meshes) on the first seed; the base stage elsewhere
            full = seed == args.seeds[0] and not args.no_mesh and not args.sweep
            if natural_path:
                texts = [p.prompt for p in suite]
                clouds, sec = sample(pipe, texts, seed, overrides, full, args.bf16)
                if args.save_clouds:
                    save_clouds(
                        out / f"natural-clouds-{name}-seed{seed}.npz",
                        clouds,
                        n,
                        prompts=texts,
                        categories=[p.category for p in suite],
                        colours=[p.colour or "" for p in suite],
                    )
                row = {
                    "seed": seed,
                    **settings,
                    "s_per_sample": sec,
                    "sampled": "all stages" if full else "base",
                    "points": len(clouds[0]),
                    **natural_seed(clf, names, suite, clouds, n, nn_refs, nn_cats),
                }
                print(
                    "natural "
                    + json.dumps({k: v for k, v in row.items() if not isinstance(v, dict | list)}),
                    flush=True,
                )
                natural_rows.append(row)
            if not heldout:
                continue
            clouds, sec = sample(pipe, prompts, seed, overrides, full, args.bf16)
            base_clouds = [PointCloud(c.coords[:n], c.colors[:n]) for c in clouds]
            gen = np.stack([c.coords for c in base_clouds])
            if args.save_clouds:
                save_clouds(
                    out / f"clouds-{name}-seed{seed}.npz",
                    clouds,
                    n,
                    prompts=prompts,
                    categories=cats,
                )
            refs = fps_np(refs4096, n) if n < refs4096.shape[1] else refs4096
            logits = classify(clf, base_clouds).numpy()
            rp = category_r_precision(logits, cats, names)
            by_split = {  # held-out objects vs held-out name groups: reported apart
                f"r_precision_{sp}": category_r_precision(
                    logits[idx], [cats[j] for j in idx], names
                )["r_precision"]
                for sp in args.splits
                if (idx := [j for j, s in enumerate(row_splits) if s == sp])
            }
            nn = nearest_reference_accuracy(fps_np(gen, NEAREST_POINTS), cats, nn_refs, nn_cats)
            sm = compute_set_metrics(gen, refs, protocol="bbox", metrics=("cd",), with_jsd=False)
            base_pc = [
                PointCloud(reader.get(i, "coords"), reader.get(i, "colors") / np.float32(255))
                for i in baseline_rows(reader, prompts, train_rows, seed)
            ]
            base = fps_np(np.stack([c.coords for c in base_pc]), n)
            bm = compute_set_metrics(base, refs, protocol="bbox", metrics=("cd",), with_jsd=False)
            bm["r_precision"] = category_r_precision(classify(clf, base_pc).numpy(), cats, names)[
                "r_precision"
            ]
            row = {
                "seed": seed,
                **settings,
                "s_per_sample": sec,
                "sampled": "all stages" if full else "base",
                "points": len(clouds[0]),
                "r_precision": rp["r_precision"],
                **by_split,
                "per_category": rp["per_category"],
                "nn_accuracy": nn["accuracy"],
                "nn_per_category": nn["per_category"],
                **{k: sm[k] for k in ("1nna_cd", "cov_cd", "mmd_cd")},
                **spread_of(clouds, n),
                **{f"baseline_{k}": bm[k] for k in ("r_precision", "1nna_cd", "cov_cd", "mmd_cd")},
            }
            print(
                json.dumps({k: v for k, v in row.items() if not k.endswith("per_category")}),
                flush=True,
            )
            per_seed.append(row)
            if full:
                ms = mesh_stats(pipe, clouds, refs4096, args.mesh_grid)
                meshes = ms.pop("meshes")
                row["mesh"] = ms
                print(json.dumps(ms), flush=True)
                if args.sheet:
                    write_sheet(args.sheet, prompts, clouds, meshes)
        result = {**settings, "seeds": per_seed}
        if heldout:
            keys = [
                "r_precision",
                *(k for k in per_seed[0] if k.startswith("r_precision_")),
                "nn_accuracy",
                "1nna_cd",
                "cov_cd",
                "mmd_cd",
                "baseline_r_precision",
                "baseline_1nna_cd",
                "baseline_cov_cd",
                "baseline_mmd_cd",
                "surface_spread_base",
                "surface_spread_final",
            ] + ["s_per_sample"] * bool(args.sweep)
            summary = {**summarise(per_seed, keys), **real_spread}
            cats_all = sorted({c for r in per_seed for c in r["per_category"]})
            for key in ("per_category", "nn_per_category"):
                summary[key] = {c: float(np.mean([r[key][c] for r in per_seed])) for c in cats_all}
            result["summary"] = summary
            print(
                f"== {sampler}:{steps}:{guidance}{tag}: "
                + ", ".join(
                    f"{k} {v[0]:.4g}±{v[1]:.2g}" for k, v in summary.items() if isinstance(v, tuple)
                )
            )
        if natural_path:
            ns = summarise(natural_rows, NATURAL_KEYS)
            for key in ("per_category", "nn_per_category", "colour_per_colour"):
                ns[key] = {
                    c: float(np.mean([r[key][c] for r in natural_rows]))
                    for c in natural_rows[0][key]
                }
            result["natural"] = {
                "suite": natural_path,
                "prompts": len(suite),
                "seeds": natural_rows,
                "summary": ns,
            }
            print(
                f"== natural {sampler}:{steps}:{guidance}{tag} ({len(suite)} prompts, "
                f"seeds {[r['seed'] for r in natural_rows]}): "
                + ", ".join(
                    f"{k} {v[0]:.4g}±{v[1]:.2g}" for k, v in ns.items() if isinstance(v, tuple)
                )
            )
            print(natural_table(ns, suite))
        results.append(result)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
