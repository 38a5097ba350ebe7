"""Data-tool benchmarks, side by side (CPU).

1. Farthest point sampling 32,768 → 4,096 points: pointdiff's ``farthest_point_sample`` (numpy
   path for one CPU cloud; the batched torch loop per cloud) vs open3d's
   ``farthest_point_down_sample``; both start at index 0, so the chosen sets are compared.
2. Per-object conversion: ``data_tools.convert.convert_object`` (load, colour sampling, visible
   surface from 20 views, FPS, 8192 SDF queries with two sign tests) with its stage times, vs a
   plain baseline (trimesh load + ``trimesh.sample.sample_surface`` 32K + open3d FPS: no colours,
   no visibility, no SDF).

3. ``--binvox``: SDF sign vs ShapeNet's ``solid.binvox`` on every model of the shared subset
   (queries farther than 1.5 voxels from the surface), split by the ``sdf_reliable`` verdict.

4. ``--loader``: samples/s the training DataLoader delivers for base40M-sized items (1024 of
   4096 stored points, batch 64) with 0, 1 and 2 workers: the old path (FPS per sample, a new
   DataLoader each epoch) against the new one (``pointdiff.training.batches.micro_batches``:
   the first 1024 points of FPS-ordered clouds, one loader with persistent workers). Then the
   text-embedding cache: the first start (embed every caption, write the
   table) against the second (read it back), with a frozen ``small`` text tower.

Usage: ``.venv/bin/python benchmarks/bench_data.py [--repeats 3] [--threads 1] [--binvox]
[--loader] [--only-loader]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # data_tools is a top-level package of the repository
SHARED = ROOT.parent / "shared" / "data"
OBJECTS = {
    "Duck (glb, 4K faces)": "gltf_samples/Duck/Duck.glb",
    "WaterBottle (gltf, 4.5K)": "gltf_samples/WaterBottle/WaterBottle.gltf",
    "Greenhouse (objaverse glb)": (
        "objaverse_cap3d_examples/glbs/9bc465a181f349908b95d030f541663a.glb"
    ),
    "chair (ShapeNet, 40K)": "shapenet_core_v2_subset/03001627/2d204f50f33b3994fe52ffd0e748a1ab",
    "piano (ShapeNet, 73K)": "shapenet_core_v2_subset/03928116/c86b1da5558ff70a9949833630526071",
}


def _best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def bench_fps(repeats: int) -> None:
    import open3d as o3d

    from pointdiff.pointcloud import farthest_point_sample

    x = np.random.default_rng(0).uniform(-0.5, 0.5, (32768, 3)).astype(np.float32)
    xt = torch.from_numpy(x)
    t_np, ours = _best(lambda: farthest_point_sample(xt, 4096).numpy(), repeats)
    batch = xt[None].repeat(4, 1, 1)
    t_torch, _ = _best(lambda: farthest_point_sample(batch, 4096), 1)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(x.astype(np.float64)))
    t_o3d, down = _best(lambda: pcd.farthest_point_down_sample(4096), repeats)
    same = (
        len(
            {tuple(p) for p in np.asarray(down.points).astype(np.float32).round(6)}
            & {tuple(p) for p in x[ours].round(6)}
        )
        / 4096
    )
    print("\n## FPS 32,768 → 4,096 points (one cloud, CPU)\n")
    print("| method | seconds | vs open3d |")
    print("|---|---:|---:|")
    print(f"| pointdiff farthest_point_sample (numpy path) | {t_np:.3f} | {t_np / t_o3d:.1f}× |")
    print(
        f"| pointdiff batched torch loop (B=4, per cloud) | {t_torch / 4:.3f} | "
        f"{t_torch / 4 / t_o3d:.1f}× |"
    )
    print(f"| open3d farthest_point_down_sample | {t_o3d:.3f} | 1.0× |")
    print(f"\nsame points chosen (start index 0): {same:.1%}")


def _baseline(path: Path) -> np.ndarray:
    import open3d as o3d
    import trimesh

    mesh = trimesh.load(str(path), force="mesh")
    pts, _ = trimesh.sample.sample_surface(mesh, 32768, seed=0)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    return np.asarray(pcd.farthest_point_down_sample(4096).points)


def bench_convert(repeats: int, threads: int) -> None:
    from data_tools import surface_sampling as surface
    from data_tools.convert import convert_object
    from data_tools.jobs import Job, Settings

    print(f"\n## Per-object conversion (median of {repeats}; open3d threads={threads})\n")
    print(
        "| object | faces | full convert s | load | sample+colour | visibility | FPS | SDF |"
        " baseline s | full/baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rel in OBJECTS.items():
        path = SHARED / rel
        root = None
        if path.is_dir():  # a ShapeNet model folder
            root, path = path, path / "models/model_normalized.obj"
        job = Job(id=name, path=str(path), source="bench", root=str(root) if root else None)
        stages = _stage_times(job, threads, surface)
        t_full, (arrays, _) = _best(lambda j=job: convert_object(j, Settings(), threads), repeats)
        t_base, _ = _best(lambda p=path: _baseline(p), repeats)
        s = stages
        print(
            f"| {name} | {arrays['meta']['num_faces']} | {t_full:.2f} | {s['load']:.2f} | "
            f"{s['sample']:.2f} | {s['visible']:.2f} | {s['fps']:.2f} | {s['sdf']:.2f} | "
            f"{t_base:.2f} | {t_full / t_base:.1f}× |"
        )


def _stage_times(job, threads: int, surface) -> dict[str, float]:
    """One conversion's stages timed separately (same calls as convert_object)."""
    from data_tools.mesh_reader import load_mesh
    from pointdiff.pointcloud import farthest_point_sample, normalize_bbox

    t, out = time.perf_counter(), {}
    soup = load_mesh(job.path, root=job.root)
    _, center, scale = normalize_bbox(soup.triangles.reshape(-1, 3))
    soup = soup.transformed((soup.triangles - center) / scale)
    out["load"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    dense = surface.sample_surface(soup, 32768, rng)
    out["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    rc = surface.MeshRaycaster(soup.triangles, threads=threads)
    vis = dense.select(rc.visible(dense.points, 20))
    out["visible"] = time.perf_counter() - t
    t = time.perf_counter()
    farthest_point_sample(torch.from_numpy(vis.points.astype(np.float32)), 4096)
    out["fps"] = time.perf_counter() - t
    t = time.perf_counter()
    surface.sample_sdf(rc, dense.points, 8192, rng)
    out["sdf"] = time.perf_counter() - t
    return out


def bench_binvox() -> None:
    from data_tools.binvox import read_binvox
    from data_tools.mesh_reader import load_mesh
    from data_tools.surface_sampling import MeshRaycaster, sample_sdf, sample_surface

    rows = []
    for obj in sorted((SHARED / "shapenet_core_v2_subset").glob("*/*/models/model_normalized.obj")):
        soup = load_mesh(obj, up="z", root=obj.parent.parent, strict=False)  # binvox frame
        rng = np.random.default_rng(0)
        surf = sample_surface(soup, 20000, rng)
        sdf = sample_sdf(MeshRaycaster(soup.triangles), surf.points, 8192, rng)
        solid = read_binvox(obj.with_name("model_normalized.solid.binvox"))
        far = np.abs(sdf.values) > 1.5 * solid.voxel_size
        agree = np.mean((sdf.values[far] < 0) == solid.lookup(sdf.points[far]))
        rows.append((agree, sdf.reliable))
    acc = np.array([r[0] for r in rows])
    rel = np.array([r[1] for r in rows])
    print(f"\n## SDF sign vs solid.binvox ({len(rows)} ShapeNet models, far queries)\n")
    print("| models | n | mean agreement | median | min |")
    print("|---|---:|---:|---:|---:|")
    for name, m in (("all", np.ones_like(rel)), ("sdf_reliable", rel), ("flagged", ~rel)):
        if m.any():
            a = acc[m]
            print(f"| {name} | {m.sum()} | {a.mean():.4f} | {np.median(a):.4f} | {a.min():.3f} |")


def _cpu_name() -> str:
    from pointdiff.precision import cpu_name

    model = cpu_name()
    cpus = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {cpus} CPUs, {torch.backends.cpu.get_cpu_capability()}, load avg {load}"


def _loader_shards(out: Path, objects: int) -> Path:
    """``objects`` random clouds of 4096 points with one caption each (the reading cost does not
    depend on the clouds' shape; the new path reads their first points as FPS-ordered ones)."""
    from pointdiff.data import write_shards

    g = np.random.default_rng(0)
    records = (
        {
            "id": f"obj{i:05d}",
            "caption": f"a {['red', 'green', 'blue'][i % 3]} thing number {i}",
            "source": "bench",
            "licence": "CC0",
            "split": "train",
            "coords": g.uniform(-0.5, 0.5, (4096, 3)).astype(np.float32),
            "colors": g.integers(0, 256, (4096, 3), dtype=np.uint8),
        }
        for i in range(objects)
    )
    write_shards(records, out, point_order="fps")
    return out


def _rate(batches, samples: int) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process) after the first
    batch (start-up excluded) over ``samples`` samples. With 0 workers the second is what one
    worker can deliver on an idle core, whatever else the machine runs."""
    next(batches)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while n < samples:
        n += len(next(batches)["index"])
    rates = n / (time.perf_counter() - start), n / (time.process_time() - cpu)
    batches.close()  # stops its DataLoader workers
    return rates


def _old_batches(ds, batch: int, workers: int):
    """The previous loader: FPS per sample, a DataLoader rebuilt every epoch."""
    from pointdiff.training.batches import ResumableSampler

    sampler, epoch = ResumableSampler(len(ds), block=batch), 0
    while True:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True
        )
        yield from loader
        epoch += 1


def bench_loader(samples: int, old_samples: int, batch: int = 64) -> None:
    import tempfile

    from pointdiff.config import TrainConfig
    from pointdiff.data import PointCloudDataset
    from pointdiff.training.batches import ResumableSampler, micro_batches

    print(f"\n## Training DataLoader, base40M items (1024 of 4096 points), batch {batch}\n")
    print(f"CPU: {_cpu_name()}\n")
    print("| path | workers | samples/s | per worker | x old | samples per main-process CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        root = _loader_shards(Path(tmp) / "shards", 1024)
        for workers in (0, 1, 2):
            old_ds = PointCloudDataset(root, num_points=1024, subsample="fps", fps_cache=0)
            old, old_cpu = _rate(_old_batches(old_ds, batch, workers), old_samples)
            new_ds = PointCloudDataset(root, num_points=1024)  # auto: "first"
            cfg = TrainConfig(batch_size=batch, num_workers=workers)
            sampler = ResumableSampler(len(new_ds), block=batch)
            batches = micro_batches(new_ds, sampler, cfg, 0, torch.device("cpu"))
            new, new_cpu = _rate(batches, samples)
            per = max(workers, 1)
            print(
                f"| old: fps, loader per epoch | {workers} | {old:.0f} | {old / per:.0f} | 1.0 "
                f"| {old_cpu:.0f} |"
            )
            print(
                f"| new: {new_ds.subsample}, persistent | {workers} | {new:.0f} | "
                f"{new / per:.0f} | {new / old:.0f} | {new_cpu:.0f} |",
                flush=True,
            )
        bench_text_cache(root, Path(tmp) / "text-cache")


def bench_text_cache(root: Path, cache: Path, arch: str = "small") -> None:
    from pointdiff.conditioning.text import TextEncoder
    from pointdiff.data import PointCloudDataset
    from pointdiff.training.text_cache import set_text_table

    print(f"\n## Text-embedding cache (frozen {arch!r} text tower, CPU)\n")
    print("| start | captions | seconds |")
    print("|---|---:|---:|")
    for start in ("first (embed + write)", "second (read back)"):
        text = TextEncoder.from_config(arch, seed=0).freeze()  # a new process's encoder
        ds = PointCloudDataset(root, num_points=1024)
        t = time.perf_counter()
        set_text_table(ds, text, cache_dir=cache)
        print(f"| {start} | {len(ds.captions)} | {time.perf_counter() - t:.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="open3d ray-casting threads")
    p.add_argument("--binvox", action="store_true", help="also check SDF signs vs binvox (~1 min)")
    p.add_argument("--loader", action="store_true", help="also the DataLoader and text cache")
    p.add_argument("--only-loader", action="store_true", help="only the DataLoader and text cache")
    p.add_argument("--samples", type=int, default=4096, help="samples timed per new-path row")
    p.add_argument("--old-samples", type=int, default=512, help="samples per old-path row")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.only_loader:
        bench_fps(args.repeats)
        bench_convert(args.repeats, args.threads)
    if args.binvox:
        bench_binvox()
    if args.loader or args.only_loader:
        bench_loader(args.samples, args.old_samples)


if __name__ == "__main__":
    main()
