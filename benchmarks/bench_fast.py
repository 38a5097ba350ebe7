"""Quality vs network calls: the teacher's samplers against distilled students, side by side.

    .venv/bin/python benchmarks/bench_fast.py --checkpoint checkpoints/pointdiff-small \
        --data runs/data/ship3 --classifier checkpoints/pointdiff-small/classifier --seeds 0 1 2 \
        --rows "teacher:dpmpp_2m:16 teacher:heun:8 fast:consistency:1 fast:consistency:4" \
        --out runs/bench_fast

Each row is ``PIPELINE:SAMPLER:STEPS[:PROJECTION[:GUIDANCE]]`` (PROJECTION: surface-projection
passes after sampling, GUIDANCE: the classifier-free guidance scale; empty or absent: the stage's
own): ``teacher`` is ``--checkpoint`` as shipped, ``fast`` the
same with its distilled stages (``load_pipeline(fast=True)``), and ``--student NAME=DIR`` adds
other pipelines with distilled stages (e.g. a student under evaluation). For every row and seed,
the base stage samples the natural-prompt suite and the held-out captions (as
``eval_shipped.py``); reported as mean ± std over the seeds:

* ``calls``: network calls per stage per sample (a guided teacher step is two: the conditional
  and the unconditional half; a student takes the scale as an input);
* natural-prompt category accuracy (evaluation classifier, and the nearest-reference judge),
  colour accuracy on the prompts that name a colour;
* caption R-precision and 1-NNA-CD on the held-out captions;
* surface spread of the base clouds (natural prompts), and seconds per sample (batched, this
  CPU, named in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pointdiff import precision
from pointdiff.data import ShardReader
from pointdiff.evaluation.alignment import category_r_precision
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.evaluation.natural import load_natural_prompts
from pointdiff.metrics.sets import compute_set_metrics
from pointdiff.pipeline import load_pipeline
from pointdiff.pointcloud import PointCloud

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shipped_metrics import (  # noqa: E402
    classify,
    fps_np,
    load_split,
    natural_seed,
    object_class,
    sample,
    summarise,
    training_references,
)

NATURAL_PROMPTS = ROOT / "benchmarks" / "natural_prompts.tsv"
#: model evaluations of a sampler for n steps (Heun: Euler on the last step)
EVALS = {"heun": lambda n: 2 * n - 1, "euler": int, "dpmpp_2m": int, "consistency": int}
KEYS = ("accuracy", "nn_accuracy", "colour_accuracy", "r_precision", "1nna_cd", "spread", "sec")


def calls_per_sample(stage, sampler: str, steps: int, guidance: float) -> int:
    """Network calls of one sample through ``stage``: evaluations × 2 for a guided pair."""
    pair = stage.cond_key is not None and not stage.takes_guidance and guidance != 1.0
    return EVALS[sampler](steps) * (2 if pair else 1)


def cpu_name() -> str:
    """The CPU, torch's kernels and threads: what a timing in the table depends on."""
    cap, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    return f"{precision.cpu_name()}, torch {cap}, {threads} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/pointdiff-small")
    ap.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another pipeline whose distilled stages a row may name",
    )
    ap.add_argument(
        "--table",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only print the table of earlier runs' results.json files, in order",
    )
    ap.add_argument("--rows", help="PIPELINE:SAMPLER:STEPS[:PROJECTION[:GUIDANCE]] ...")
    ap.add_argument("--data", help="shards: training references, held-out captions")
    ap.add_argument("--classifier")
    ap.add_argument("--splits", nargs="+", default=["test", "val", "test_group"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.table:
        print(table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return
    if not (args.rows and args.data and args.classifier and args.out):
        ap.error("--rows, --data, --classifier and --out are required (or --table)")

    pipes = {
        "teacher": lambda: load_pipeline(args.checkpoint),
        "fast": lambda: load_pipeline(args.checkpoint, fast=True),
    }
    for spec in args.student:
        name, _, folder = spec.partition("=")
        pipes[name] = lambda folder=folder: load_pipeline(folder, fast=True)
    rows = [r.split(":") for r in args.rows.split()]
    bad = [
        ":".join(r)
        for r in rows
        if len(r) not in (3, 4, 5) or r[0] not in pipes or r[1] not in EVALS
    ]
    if bad:
        raise SystemExit(
            f"bad rows {bad}: PIPELINE ({', '.join(pipes)}):SAMPLER:STEPS[:PROJECTION[:GUIDANCE]]"
        )

    clf = load_classifier(args.classifier).eval()
    names = list(clf.cfg.class_names)
    reader = ShardReader(args.data)
    nn_refs, nn_cats = training_references(reader, load_split(reader, ["train"], names), names)
    suite = load_natural_prompts(NATURAL_PROMPTS)[: args.limit]
    held = load_split(reader, args.splits, names)[: args.limit]
    captions = [reader.entries[i]["caption"] for i in held]
    cats = [object_class(reader.entries[i], names) for i in held]
    refs = np.stack([reader.get(i, "coords") for i in held]).astype(np.float32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}; {len(suite)} natural prompts, {len(held)} held-out captions")

    results, loaded = [], {}
    for pipe_name, sampler, steps, *extra in rows:
        pipe = loaded.get(pipe_name) or loaded.setdefault(pipe_name, pipes[pipe_name]())
        stage = pipe.stages[0]
        projection, guidance = (extra + ["", ""])[:2]
        over = {"sampler": sampler, "steps": int(steps)}
        if projection:
            over["surface_projection"] = float(projection)
        if guidance:
            over["guidance"] = float(guidance)
        n, guidance = stage.num_points, over.get("guidance", stage.sample.guidance)
        label = ":".join([pipe_name, sampler, steps, *extra])
        per_seed = []
        for seed in args.seeds:
            clouds, sec_nat = sample(pipe, [p.prompt for p in suite], seed, over, False, args.bf16)
            nat = natural_seed(clf, names, suite, clouds, n, nn_refs, nn_cats)
            clouds, sec = sample(pipe, captions, seed, over, False, args.bf16)
            base = [PointCloud(c.coords[:n], c.colors[:n]) for c in clouds]
            rp = category_r_precision(classify(clf, base).numpy(), cats, names)["r_precision"]
            gen = np.stack([c.coords for c in base])
            sm = compute_set_metrics(
                gen, fps_np(refs, n), protocol="bbox", metrics=("cd",), with_jsd=False
            )
            per_seed.append(
                {
                    "seed": seed,
                    "accuracy": nat["accuracy"],
                    "nn_accuracy": nat["nn_accuracy"],
                    "colour_accuracy": nat["colour_accuracy"],
                    "r_precision": rp,
                    "1nna_cd": sm["1nna_cd"],
                    "spread": nat["surface_spread_base"],
                    "sec": (sec_nat * len(suite) + sec * len(held)) / (len(suite) + len(held)),
                }
            )
            print(json.dumps({"row": label, **per_seed[-1]}), flush=True)
        row = {
            "pipeline": pipe_name,
            "sampler": sampler,
            "steps": int(steps),
            "surface_projection": over.get("surface_projection", stage.sample.surface_projection),
            "guidance": guidance,
            "calls": calls_per_sample(stage, sampler, int(steps), guidance),
            "seeds": per_seed,
            "summary": summarise(per_seed, list(KEYS)),
        }
        results.append(row)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(table(results))


def table(results: list[dict]) -> str:
    head = (
        "| pipeline | sampler | steps | projection | guidance | calls/stage | natural (clf) "
        "| natural (NN) | colour | R-precision | 1-NNA-CD | spread | s/sample |"
    )
    lines = [head, "|" + " --- |" * 13]
    for r in results:
        s = r["summary"]
        pct = [f"{100 * s[k][0]:.1f} ± {100 * s[k][1]:.1f}" for k in KEYS[:5]]
        lines.append(
            f"| {r['pipeline']} | {r['sampler']} | {r['steps']} | {r.get('surface_projection', '')} "
            f"| {r.get('guidance', '')} | {r['calls']} | "
            + " | ".join(pct)
            + f" | {s['spread'][0]:.3f} | {s['sec'][0]:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
