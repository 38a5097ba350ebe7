"""Mesh quality from 4096-point clouds: open3d Poisson vs the trained SDF head, one table.

    .venv/bin/python benchmarks/eval_mesh_quality.py [--sdf runs/sdf_small [runs/sdf_b ...]] \
        [--grid 128] [--poisson-depth 8] [--points 30000] [--noise 0.015] [--outliers 0.03] \
        [--limit N] [--threads 2]

Shapes: the ShapeNet test split of ``../shared/data`` (``shapenet_core_v2_subset_pc4096``,
``split == "test"``, 19 models). Input: the derived 4096-point cloud of each model (Y-up there,
rotated to our Z-up); reference: the original ``model_normalized.obj`` put in the same frame
(``(v - center) / scale``, then Z-up).

Metrics (ONet / ConvONet / SAP conventions, object normalised to a largest bbox side of 1), each
from ``--points`` area-weighted samples (with face normals) on the reconstruction and on the
reference mesh, nearest neighbours by KD-tree:

* Chamfer-L1 = ½ (mean_pred min_gt ‖p − g‖ + mean_gt min_pred ‖g − p‖) (as
  ``pointdiff.metrics.distances.chamfer_l1``), lower is better;
* normal consistency = ½ (mean |n_p · n_nn(p)| + mean |n_g · n_nn(g)|) (absolute value: ShapeNet
  windings are not consistent), higher is better;
* F-score@1 % = harmonic mean of precision and recall at distance 0.01 (``f_score``), higher is
  better.

``--noise`` and ``--outliers`` make the inputs look like a small generator's samples (Gaussian
jitter on every point; a fraction of the points scattered by a further σ = 0.05, as
``pointdiff.training.sdf`` augments), seeded, the same for every method.

Every SDF head is also reported "+ snap": its marching-cubes mesh with each vertex projected onto
the plane of its 16 nearest cloud points (``mesh.snap_to_cloud``; topology unchanged).

Caveat: ShapeNet meshes are not watertight and contain interior faces; the reference samples
include them, which penalises every method that produces a closed outer surface.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pointdiff.meshing import TriMesh, marching_cubes, poisson_mesh, snap_to_cloud
from pointdiff.pointcloud import STRAY_SIGMA, PointCloud, y_up_to_z_up

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _sample(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0):
    """Area-weighted surface samples: (points [n, 3], unit face normals [n, 3])."""
    rng = np.random.default_rng(seed)
    tri = verts[faces].astype(np.float64)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    f = rng.choice(len(tri), n, p=area / area.sum())
    r = rng.random((n, 2))
    flip = r.sum(1) > 1
    r[flip] = 1 - r[flip]
    pts = tri[f, 0] + r[:, :1] * (tri[f, 1] - tri[f, 0]) + r[:, 1:] * (tri[f, 2] - tri[f, 0])
    return pts, cross[f] / np.maximum(area[f, None], 1e-20)


def mesh_metrics(pred: TriMesh, gt_verts, gt_faces, n: int, tau: float = 0.01) -> dict:
    """Chamfer-L1, normal consistency and F-score@tau between two meshes (see module doc)."""
    from scipy.spatial import cKDTree

    p, pn = _sample(pred.verts, pred.faces, n, seed=1)
    g, gn = _sample(gt_verts, gt_faces, n, seed=2)
    d_pg, i_pg = cKDTree(g).query(p)
    d_gp, i_gp = cKDTree(p).query(g)
    nc = 0.5 * (np.abs((pn * gn[i_pg]).sum(1)).mean() + np.abs((gn * pn[i_gp]).sum(1)).mean())
    precision, recall = (d_pg <= tau).mean(), (d_gp <= tau).mean()
    return {
        "chamfer_l1": 0.5 * (d_pg.mean() + d_gp.mean()),
        "normal_consistency": nc,
        "f_score": 2 * precision * recall / max(precision + recall, 1e-12),
    }


def _test_shapes(limit: int | None):
    import trimesh

    for path in sorted((SHARED / "shapenet_core_v2_subset_pc4096").glob("*.npz")):
        d = np.load(path, allow_pickle=False)
        synset = str(d["synset"])
        for i in np.nonzero(d["split"] == "test")[0]:
            obj = SHARED / "shapenet_core_v2_subset" / synset / str(d["model_id"][i])
            mesh = trimesh.load(
                obj / "models" / "model_normalized.obj", force="mesh", process=False
            )
            verts = (np.asarray(mesh.vertices) - d["center"][i]) / d["scale"][i]
            cloud = PointCloud(y_up_to_z_up(d["xyz"][i].astype(np.float32)), d["rgb"][i] / 255.0)
            yield str(d["synset_name"]), cloud, y_up_to_z_up(verts), np.asarray(mesh.faces)
            limit = None if limit is None else limit - 1
            if limit == 0:
                return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sdf", nargs="*", default=[], help="SDF-head checkpoints (run or ckpt dirs)")
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--poisson-depth", type=int, default=8)
    p.add_argument("--points", type=int, default=30000, help="surface samples per mesh")
    p.add_argument("--limit", type=int, default=None, help="only the first N test shapes")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="Gaussian σ added to the input clouds (generated clouds are noisy)",
    )
    p.add_argument(
        "--outliers",
        type=float,
        default=0.0,
        help="fraction of input points scattered by a further σ 0.05 (strays)",
    )
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    methods = {"poisson": lambda cloud: poisson_mesh(cloud, depth=args.poisson_depth)}
    for path in args.sdf:
        from pointdiff.checkpoint import load_model

        model, _ = load_model(path, kind="sdf")

        def sdf_mesh(cloud: PointCloud, model=model) -> TriMesh:
            fn = model.query_fn(torch.from_numpy(cloud.coords))
            return marching_cubes(fn, grid_size=args.grid)

        methods[f"sdf head ({Path(path).name})"] = sdf_mesh

    snapped = {f"{m} + snap" for m in methods if m.startswith("sdf head")}
    results: dict[str, list] = {m: [] for m in [*methods, *sorted(snapped)]}
    print(f"{'shape':<12}{'method':<36}{'CD-L1':>8}{'NC':>7}{'F@1%':>7}{'s':>7}")
    rng = np.random.default_rng(0)
    for category, cloud, gt_v, gt_f in _test_shapes(args.limit):
        if args.noise > 0:
            jitter = rng.normal(0.0, args.noise, cloud.coords.shape).astype(np.float32)
            cloud = PointCloud(cloud.coords + jitter, cloud.colors)
        if args.outliers > 0:
            moved = rng.random(len(cloud.coords)) < args.outliers
            coords = cloud.coords.copy()
            coords[moved] += rng.normal(0.0, STRAY_SIGMA, (moved.sum(), 3)).astype(np.float32)
            cloud = PointCloud(coords, cloud.colors)
        for name, make in methods.items():
            t = time.perf_counter()
            try:
                mesh = make(cloud)
            except ValueError as e:  # e.g. no surface in the grid: worst scores
                print(f"{category:<12}{name:<28} failed: {e}")
                for label in (name, f"{name} + snap"):
                    if label in results:
                        results[label].append((category, np.inf, 0.0, 0.0, 0.0))
                continue
            secs = time.perf_counter() - t
            variants = [(name, mesh, secs)]
            if f"{name} + snap" in snapped:  # the same SDF mesh, vertices snapped to the cloud
                t = time.perf_counter()
                variants.append(
                    (f"{name} + snap", snap_to_cloud(mesh, cloud), secs + time.perf_counter() - t)
                )
            for label, out, sec in variants:
                m = mesh_metrics(out, gt_v, gt_f, args.points)
                row = (category, m["chamfer_l1"], m["normal_consistency"], m["f_score"], sec)
                results[label].append(row)
                print(
                    f"{category:<12}{label:<36}{row[1]:>8.4f}{row[2]:>7.3f}{row[3]:>7.3f}"
                    f"{sec:>7.1f}"
                )

    n = len(next(iter(results.values())))
    print(
        f"\nShapeNet test split, {n} shapes, 4096-point input clouds, noise σ={args.noise}, "
        f"outliers {args.outliers:.0%}"
    )
    print("(mean over shapes)\n")
    print("| method | Chamfer-L1 ↓ | normal consistency ↑ | F-score@1% ↑ | s / shape |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        a = np.array([r[1:] for r in rows], dtype=np.float64)
        print(
            f"| {name} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} | "
            f"{a[:, 3].mean():.1f} |"
        )


if __name__ == "__main__":
    main()
