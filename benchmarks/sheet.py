"""A contact sheet of plain prompts → final clouds → meshes (the README's picture), with a table
of what the evaluation classifier and the colour namer make of each sample.

    .venv/bin/python benchmarks/sheet.py --out docs/shipped_sheet.png [--seed 0] [PROMPT ...]

Each prompt is sampled with the pipeline's defaults (prompt i with seed + i) and meshed with the
default method; the table says which method made each mesh (the SDF head, or Poisson after it
found no fitting surface).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from pointdiff.colours import describe_colours
from pointdiff.evaluation.classifier import load_classifier
from pointdiff.pipeline import load_pipeline
from pointdiff.render import render_cloud, render_grid, render_mesh_views

PROMPTS = [
    "a red sofa",
    "a black office chair",
    "a floor lamp",
    "a potted plant",
    "a white wardrobe",
    "a wooden dining table",
    "a double bed",
    "a blue armchair",
    "a green chair",
    "a front door",
    "a glass bottle",
    "a standing man",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("prompts", nargs="*", default=PROMPTS)
    ap.add_argument("--checkpoint", default="checkpoints/pointdiff-small")
    ap.add_argument("--classifier", default=None, help="default: CHECKPOINT/classifier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="PNG path")
    a = ap.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(a.checkpoint)
    clf = load_classifier(a.classifier or f"{a.checkpoint}/classifier").eval()
    clouds = pipe.sample_clouds(a.prompts, seed=a.seed)
    n_base = pipe.stages[0].num_points
    base = torch.stack(
        [torch.from_numpy(np.c_[c.coords[:n_base], c.colors[:n_base]]) for c in clouds]
    )
    with torch.no_grad():
        pred = clf(base.float())["logits"].argmax(-1).tolist()
    items, caps = [], []
    print("| prompt | class | colour words | mesh |\n| --- | --- | --- | --- |")
    for p, c, k in zip(a.prompts, clouds, pred, strict=True):
        result = pipe.to_mesh(c)
        m, method = result.mesh, "Poisson" if result.method == "poisson" else "SDF"
        words = " and ".join(describe_colours(np.asarray(c.colors[:n_base]))) or "-"
        print(f"| {p} | {clf.cfg.class_names[k]} | {words} | {method} |")
        items += [
            render_cloud(c, size=192),
            render_mesh_views(m.verts, m.faces, m.colors, views=1, size=192),
        ]
        caps += [p[:40], "mesh"]
    render_grid([Image.fromarray(np.asarray(x)) for x in items], caps, cols=8).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
