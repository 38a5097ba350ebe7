"""What ``eval_shipped.py`` computes per seed: held-out rows and classes, the classifier and
nearest-reference judges, the trivial caption baseline, mesh statistics, surface spread and
the natural-prompt scores (see ``eval_shipped.py`` for the protocol). ``rescore_clouds.py`` and
``surface_spread.py`` reuse the FPS subsets and the classification from here."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pointdiff.data import ShardReader
from pointdiff.evaluation.alignment import category_r_precision, nearest_reference_categories
from pointdiff.evaluation.natural import colour_scores, hit_rates
from pointdiff.metrics.distances import chamfer_l1
from pointdiff.metrics.sets import normalize_clouds
from pointdiff.metrics.surface import surface_spread
from pointdiff.pointcloud import PointCloud, farthest_point_sample
from pointdiff.render import render_cloud, render_grid, render_mesh_views


def _words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() else " " for c in text.lower()).split())


def object_class(entry: dict, names: list[str]) -> str | None:
    """The entry's class among the classifier's ``names``: its ``category``, or for shards not
    selected into classes the class ``data_tools.select_classes`` reads from its name."""
    if entry.get("category") in names:
        return entry["category"]
    from data_tools.select_classes import classify as name_class

    cls = name_class(entry)
    return cls if cls in names else None


def load_split(reader: ShardReader, splits: list[str], names: list[str] | None = None) -> list[int]:
    """Rows of ``splits`` (with ``names``: only objects of a class among them)."""
    return [
        i
        for i, e in enumerate(reader.entries)
        if e["split"] in splits and (names is None or object_class(e, names) is not None)
    ]


def baseline_rows(reader, prompts, train_rows, seed) -> list[int]:
    """For each prompt, the training object whose caption has the most words in common with it."""
    g = np.random.default_rng(seed)
    out = []
    for p in prompts:
        scores = np.array(
            [len(_words(p) & _words(reader.entries[i]["caption"])) for i in train_rows]
        )
        best = np.flatnonzero(scores == scores.max())
        out.append(train_rows[g.choice(best)])
    return out


def classify(model, clouds: list[PointCloud]) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(np.concatenate([c.coords, c.colors], -1)) for c in clouds])
    idx = farthest_point_sample(x, min(1024, x.shape[1]))
    x = torch.gather(x, 1, idx[..., None].expand(-1, -1, 6))
    with torch.no_grad():
        return model(x[..., : model.cfg.in_channels])["logits"]


NEAREST_POINTS = 512  # the nearest-reference judge compares 512-point FPS subsets


def training_references(
    reader: ShardReader, train_rows: list[int], names: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """The training clouds (``NEAREST_POINTS`` FPS points) and their categories (with ``names``:
    ``object_class``): the references of the nearest-reference judge
    (``evaluation.alignment.nearest_reference_accuracy``)."""
    coords = np.stack([reader.get(i, "coords") for i in train_rows]).astype(np.float32)
    cats = [
        reader.entries[i]["category"] if names is None else object_class(reader.entries[i], names)
        for i in train_rows
    ]
    return fps_np(coords, NEAREST_POINTS), cats


def fps_np(coords: np.ndarray, k: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
    idx = farthest_point_sample(t, k)
    return torch.gather(t, 1, idx[..., None].expand(-1, -1, 3)).numpy()


def mesh_stats(pipe, clouds, refs, grid) -> dict:
    import trimesh

    one, tight, cl1, fails, poisson = [], [], [], 0, 0
    meshes = []
    for c, ref in zip(clouds, refs, strict=True):
        try:
            result = pipe.to_mesh(c, grid_size=grid)
        except ValueError:
            fails += 1
            meshes.append(None)
            continue
        poisson += result.fallback  # auto meshing found no fitting SDF surface
        m = result.mesh
        meshes.append(m)
        tm = trimesh.Trimesh(m.verts, m.faces, process=True)
        parts = tm.split(only_watertight=False)
        main = max(parts, key=lambda p: len(p.faces)) if len(parts) else tm
        one.append(len(main.faces) >= 0.9 * len(tm.faces))
        tight.append(bool(main.is_watertight))
        surf = tm.sample(4096, seed=0).astype(np.float32)
        a = normalize_clouds(torch.from_numpy(surf)[None], "bbox")
        b = normalize_clouds(torch.from_numpy(ref)[None], "bbox")
        cl1.append(float(chamfer_l1(a, b)[0]))
    n = len(clouds)
    return {
        "meshed": n - fails,
        "poisson_fallback": poisson,
        "one_component": float(np.sum(one)) / n,
        "watertight_main": float(np.sum(tight)) / n,
        "chamfer_l1_bbox": float(np.mean(cl1)) if cl1 else float("nan"),
        "meshes": meshes,
    }


def sample(pipe, prompts, seed, base_overrides, full, bf16) -> tuple[list[PointCloud], float]:
    """One cloud per prompt (all stages with ``full``, else the base stage) and seconds per
    sample."""
    t0 = time.perf_counter()
    clouds = pipe.sample_clouds(
        prompts,
        seed=seed,
        bf16=bf16,
        stop_after=None if full else "base",
        stage_overrides={"base": base_overrides},
    )
    return clouds, (time.perf_counter() - t0) / len(prompts)


def save_clouds(path: Path, clouds: list[PointCloud], n: int, **meta) -> None:
    """The base clouds (``coords``, ``colors``: their first ``n`` points), the final ones when
    more stages ran (``final_coords``, ``final_colors``) and per-cloud ``meta`` arrays."""
    arrays = {
        "coords": np.stack([c.coords[:n] for c in clouds]),
        "colors": np.stack([c.colors[:n] for c in clouds]),
    }
    if len(clouds[0]) > n:
        arrays["final_coords"] = np.stack([c.coords for c in clouds])
        arrays["final_colors"] = np.stack([c.colors for c in clouds])
    np.savez_compressed(path, **arrays, **{k: np.array(v) for k, v in meta.items()})


def spread_of(clouds: list[PointCloud], n: int) -> dict:
    """Surface spread of the base clouds (first ``n`` points) and, when sampled, the final ones."""
    out = {"surface_spread_base": surface_spread([c.coords[:n] for c in clouds])["surface_spread"]}
    if len(clouds[0]) > n:
        out["surface_spread_final"] = surface_spread([c.coords for c in clouds])["surface_spread"]
    return out


def summarise(rows: list[dict], keys: list[str]) -> dict:
    """(mean, std) over the rows that have each key (e.g. final-cloud values: first seed only)."""
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = (float(np.mean(vals)), float(np.std(vals)))
    return out


def natural_seed(clf, names, suite, clouds, n, nn_refs, nn_cats) -> dict:
    """Metrics of one seed's clouds of a natural-prompt suite (module docstring)."""
    cats = [p.category for p in suite]
    base = [PointCloud(c.coords[:n], c.colors[:n]) for c in clouds]
    logits = classify(clf, base).numpy()
    acc = category_r_precision(logits, cats, names)  # top-1 among all classes
    nn_pred = nearest_reference_categories(
        fps_np(np.stack([c.coords for c in base]), NEAREST_POINTS), nn_refs, nn_cats
    )
    nn_acc, nn_per = hit_rates(nn_pred, cats)
    col = colour_scores([c.colors for c in base], [p.colour for p in suite])
    described = iter(col["described"])
    predictions = [
        {
            "prompt": p.prompt,
            "class": p.category,
            "classifier": names[int(k)],
            "nearest": r,
            "colour": p.colour,
            "described": next(described) if p.colour else None,
        }
        for p, k, r in zip(suite, logits.argmax(1), nn_pred, strict=True)
    ]
    return {
        "accuracy": acc["r_precision"],
        "per_category": acc["per_category"],
        "nn_accuracy": nn_acc,
        "nn_per_category": nn_per,
        "colour_accuracy": col["accuracy"],
        "colour_chance": col["chance"],
        "colour_share": col["share"],
        "colour_count": col["count"],
        "colour_per_colour": col["per_colour"],
        **spread_of(clouds, n),
        "predictions": predictions,
    }


NATURAL_KEYS = [
    "accuracy",
    "nn_accuracy",
    "colour_accuracy",
    "colour_chance",
    "colour_share",
    "surface_spread_base",
    "surface_spread_final",
    "s_per_sample",
]


def write_sheet(path, prompts, clouds, meshes) -> None:
    from PIL import Image

    k = min(16, len(clouds))
    pick = np.linspace(0, len(clouds) - 1, k).round().astype(int)
    items, caps = [], []
    for i in pick:
        items.append(render_cloud(clouds[i], size=192))
        m = meshes[i]
        items.append(
            render_mesh_views(m.verts, m.faces, m.colors, views=1, size=192)
            if m is not None
            else np.full((192, 192, 3), 255, np.uint8)
        )
        caps += [prompts[i][:40], "mesh"]
    imgs = [Image.fromarray(np.asarray(x)) for x in items]
    render_grid(imgs, caps, cols=8).save(path)


def evenly(items: list, limit: int | None) -> list:
    if not limit or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
