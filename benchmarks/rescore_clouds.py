"""Score clouds saved by ``eval_shipped.py --save-clouds`` with another evaluation classifier.

    .venv/bin/python benchmarks/rescore_clouds.py --classifier runs/s5/classifier_sh3d \
        runs/s5/eval/clouds-*.npz

Prints, per file and as mean ± std over the files (the seeds), category R-precision (top-1),
per-category R-precision and the most frequent confusions. ``--stray-ratio R`` first applies the
pipeline's stray relocation (``pointcloud.relocate_strays``) to the saved clouds, so its threshold
can be chosen on the same samples (paired: only the strays differ). ``--nearest SHARDS`` also
scores them with the nearest-reference judge against that shard directory's training clouds
(``eval_shipped.py``'s ``nn_accuracy``; no classifier needed). The clouds are classified exactly as
``eval_shipped.py`` does (farthest-point subset of at most 1024 points, xyz or xyz + rgb).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from pointdiff.data import ShardReader
from pointdiff.evaluation.alignment import category_r_precision, nearest_reference_accuracy
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.pointcloud import PointCloud, relocate_strays


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("clouds", nargs="+", help="npz files with coords, colors, categories")
    ap.add_argument("--classifier", default=None)
    ap.add_argument(
        "--nearest",
        default=None,
        metavar="SHARDS",
        help="also judge by the nearest training cloud of this shard directory",
    )
    ap.add_argument("--stray-ratio", type=float, default=0.0, help="relocate strays first (0: off)")
    args = ap.parse_args(argv)
    if args.classifier is None and args.nearest is None:
        ap.error("give --classifier, --nearest or both")

    # the same preprocessing as the evaluation
    from eval_shipped import NEAREST_POINTS, classify, fps_np, load_split, training_references

    clf = load_classifier(args.classifier).eval() if args.classifier else None
    names = list(clf.cfg.class_names) if clf is not None else []
    refs = None
    if args.nearest:
        reader = ShardReader(args.nearest)
        refs = training_references(reader, load_split(reader, ["train"]))
    scores, per_cat, nn_scores = [], collections.defaultdict(list), []
    for path in args.clouds:
        with np.load(path, allow_pickle=False) as d:
            x = torch.from_numpy(np.concatenate([d["coords"], d["colors"]], -1).astype(np.float32))
            x = relocate_strays(x, args.stray_ratio).numpy()  # scale-free: object space is fine
            clouds = [PointCloud(c[:, :3], c[:, 3:]) for c in x]
            cats = [str(c) for c in d["categories"]]
        if refs is not None:
            coords = np.stack([c.coords for c in clouds]).astype(np.float32)
            nn = nearest_reference_accuracy(fps_np(coords, NEAREST_POINTS), cats, *refs)
            nn_scores.append(nn["accuracy"])
            print(f"{path}: nearest-reference accuracy {nn['accuracy']:.3f}")
        if clf is None:
            continue
        logits = classify(clf, clouds).numpy()
        rp = category_r_precision(logits, cats, names)
        wrong = collections.Counter(
            (c, names[p]) for c, p in zip(cats, logits.argmax(-1), strict=True) if names[p] != c
        )
        print(
            f"{path}: R-precision {rp['r_precision']:.3f}; most confused: "
            + ", ".join(f"{a} -> {b} ×{n}" for (a, b), n in wrong.most_common(5))
        )
        scores.append(rp["r_precision"])
        for c, v in rp["per_category"].items():
            per_cat[c].append(v)
    summary = {}
    if nn_scores:
        summary["nn_accuracy"] = (float(np.mean(nn_scores)), float(np.std(nn_scores)))
        print(
            f"== nearest-reference accuracy {summary['nn_accuracy'][0]:.3f} ± "
            f"{summary['nn_accuracy'][1]:.3f} over {len(nn_scores)} files"
        )
    if clf is None:
        return summary
    summary |= {
        "r_precision": (float(np.mean(scores)), float(np.std(scores))),
        "per_category": {c: float(np.mean(v)) for c, v in sorted(per_cat.items())},
    }
    print(
        f"== R-precision {summary['r_precision'][0]:.3f} ± {summary['r_precision'][1]:.3f} over "
        f"{len(scores)} files; per category: "
        + ", ".join(f"{c} {v:.0%}" for c, v in summary["per_category"].items())
    )
    return summary


if __name__ == "__main__":
    main()
