"""Score clouds saved by ``eval_shipped.py --save-clouds`` with another evaluation classifier.

    .venv/bin/python benchmarks/rescore_clouds.py --classifier runs/s5/classifier_sh3d \
        runs/s5/eval/clouds-*.npz

Prints, per file and as mean ± std over the files (the seeds), category R-precision (top-1),
per-category R-precision and the most frequent confusions. ``--stray-ratio R`` first applies the
pipeline's stray relocation (``pointcloud.relocate_strays``) to the saved clouds, so its threshold
can be chosen on the same samples (paired: only the strays differ). The clouds are classified exactly as
``eval_shipped.py`` does (farthest-point subset of at most 1024 points, xyz or xyz + rgb).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from pointdiff.evaluation.alignment import category_r_precision
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.pointcloud import PointCloud, relocate_strays


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("clouds", nargs="+", help="npz files with coords, colors, categories")
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--stray-ratio", type=float, default=0.0, help="relocate strays first (0: off)")
    args = ap.parse_args(argv)

    from eval_shipped import classify  # the same preprocessing as the evaluation

    clf = load_classifier(args.classifier).eval()
    names = list(clf.cfg.class_names)
    scores, per_cat = [], collections.defaultdict(list)
    for path in args.clouds:
        with np.load(path, allow_pickle=False) as d:
            x = torch.from_numpy(np.concatenate([d["coords"], d["colors"]], -1).astype(np.float32))
            x = relocate_strays(x, args.stray_ratio).numpy()  # scale-free: object space is fine
            clouds = [PointCloud(c[:, :3], c[:, 3:]) for c in x]
            cats = [str(c) for c in d["categories"]]
        logits = classify(clf, clouds).numpy()
        rp = category_r_precision(logits, cats, names)
        wrong = collections.Counter(
            (c, names[p]) for c, p in zip(cats, logits.argmax(-1), strict=True) if names[p] != c
        )
        print(f"{path}: R-precision {rp['r_precision']:.3f}; most confused: "
              + ", ".join(f"{a} -> {b} ×{n}" for (a, b), n in wrong.most_common(5)))  # fmt: skip
        scores.append(rp["r_precision"])
        for c, v in rp["per_category"].items():
            per_cat[c].append(v)
    summary = {"r_precision": (float(np.mean(scores)), float(np.std(scores))),
               "per_category": {c: float(np.mean(v)) for c, v in sorted(per_cat.items())}}  # fmt: skip
    print(f"== R-precision {summary['r_precision'][0]:.3f} ± {summary['r_precision'][1]:.3f} over "
          f"{len(scores)} files; per category: "
          + ", ".join(f"{c} {v:.0%}" for c, v in summary["per_category"].items()))  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
