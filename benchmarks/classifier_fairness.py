"""Is the evaluation classifier a fair judge? Agreement of its class between point subsets.

    .venv/bin/python benchmarks/classifier_fairness.py --data runs/data/ship3 \
        --classifier checkpoints/pointdiff-small/classifier \
        [--clouds runs/eval/clouds-*.npz runs/eval/natural-clouds-*.npz]

Prints a table:

* real held-out clouds (the non-train splits of ``--data``, 4096 points as stored): the class of
  a farthest-point 1024-subset against that of random 1024-subsets (``--draws`` of them), and the
  accuracy of each against the object's category;
* generated clouds saved by ``eval_shipped.py --save-clouds`` (with ``final_coords``): the class
  of the base cloud (1024 points) against that of a farthest-point and a random 1024-subset of
  the final 4096-point cloud.

A fair judge gives the same class whichever subset it sees (≥ 95 % agreement).
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import torch

from pointdiff.data import ShardReader
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.pointcloud import farthest_point_sample


def predict(clf, coords: np.ndarray, colors: np.ndarray, batch: int = 32) -> np.ndarray:
    """[B, N, 3] coords, [B, N, 3] colours in [0, 1] → [B] class indices."""
    out = []
    for i in range(0, len(coords), batch):
        pts = torch.from_numpy(np.concatenate([coords[i : i + batch], colors[i : i + batch]], -1))
        with torch.no_grad():
            out.append(clf(pts.float())["logits"].argmax(-1).numpy())
    return np.concatenate(out)


def subsets(coords, colors, k, rng=None):
    """FPS (``rng`` None) or random ``k``-subsets of each cloud: ([B, k, 3], [B, k, 3])."""
    idx = [
        farthest_point_sample(torch.from_numpy(c), k).numpy()
        if rng is None
        else rng.choice(len(c), k, replace=False)
        for c in coords
    ]
    return (
        np.stack([c[i] for c, i in zip(coords, idx, strict=True)]),
        np.stack([c[i] for c, i in zip(colors, idx, strict=True)]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="shard directory with held-out splits")
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--clouds", nargs="*", default=[], help="eval_shipped --save-clouds files")
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--draws", type=int, default=5, help="random subsets per real cloud")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    clf = load_classifier(a.classifier).eval()
    names = list(clf.cfg.class_names)
    rng = np.random.default_rng(a.seed)
    rows = []

    reader = ShardReader(a.data)
    held = [
        i
        for i, e in enumerate(reader.entries)
        if e["split"] != "train" and e.get("category") in names
    ]
    coords = np.stack([reader.get(i, "coords") for i in held])
    colors = np.stack([reader.get(i, "colors") for i in held]).astype(np.float32) / 255
    truth = np.array([names.index(reader.entries[i]["category"]) for i in held])
    fps = predict(clf, *subsets(coords, colors, a.points))
    agree, acc = [], []
    for _ in range(a.draws):
        rnd = predict(clf, *subsets(coords, colors, a.points, rng))
        agree.append(np.mean(rnd == fps))
        acc.append(np.mean(rnd == truth))
    rows.append(
        (
            f"real held-out ({len(held)}): FPS vs random {a.points}",
            np.mean(agree),
            f"accuracy FPS {np.mean(fps == truth):.3f}, random {np.mean(acc):.3f}",
        )
    )

    files = sorted({f for pattern in a.clouds for f in glob.glob(pattern)})
    base_c, base_k, fin_c, fin_k = [], [], [], []
    for f in files:
        d = np.load(f)
        if "final_coords" not in d.files:
            continue
        base_c.append(d["coords"])
        base_k.append(d["colors"])
        fin_c.append(d["final_coords"])
        fin_k.append(d["final_colors"])
    if fin_c:
        base_c, base_k = np.concatenate(base_c), np.concatenate(base_k)
        fin_c, fin_k = np.concatenate(fin_c), np.concatenate(fin_k)
        base = predict(clf, base_c.astype(np.float32), base_k.astype(np.float32))
        ffps = predict(clf, *subsets(fin_c.astype(np.float32), fin_k.astype(np.float32), a.points))
        frnd = predict(
            clf, *subsets(fin_c.astype(np.float32), fin_k.astype(np.float32), a.points, rng)
        )
        share = {n: float(np.mean(frnd == j)) for j, n in enumerate(names) if np.any(frnd == j)}
        top = max(share, key=share.get)
        rows.append(
            (f"generated ({len(base)}): base vs final FPS {a.points}", np.mean(base == ffps), "")
        )
        rows.append(
            (
                f"generated ({len(base)}): base vs final random {a.points}",
                np.mean(base == frnd),
                f"most common class of final random subsets: {top} {share[top]:.2f}",
            )
        )
    print(f"classifier {a.classifier}")
    print("| clouds | class agreement | note |\n| --- | ---: | --- |")
    for what, value, note in rows:
        print(f"| {what} | {value:.3f} | {note} |")


if __name__ == "__main__":
    main()
