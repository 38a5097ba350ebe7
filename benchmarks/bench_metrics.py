"""Benchmark the set metrics: time and memory of the 3n² pairwise CD / EMD matrices, and the
error of the approxmatch EMD against the exact (Hungarian) EMD on real ShapeNet clouds.

    .venv/bin/python benchmarks/bench_metrics.py [--sizes 100 400] [--points 2048]
        [--budget-s 60] [--emd-pairs 8] [--nna-check] [--threads 2]

Timing: each (n, metric) runs in a fresh process (its peak RSS is reported). 1-NNA needs
M_rs (n²) and M_rr, M_ss (only their upper triangles are computed: n(n−1) pairs), i.e.
n² + n(n−1) ≈ 2n² pair distances instead of PointFlow's 3n². When all of them would take longer
than --budget-s, the run times a prefix of M_rs rows and extrapolates (marked "extrap.").
Clouds: ShapeNet subset clouds, randomly subsampled to --points and rotated about the up axis.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pointdiff.metrics import emd_approx, emd_exact, one_nn_accuracy, pairwise_matrix

SHAPENET = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "shapenet_core_v2_subset_pc4096"
)


def load_shapes() -> list[np.ndarray]:
    out = []
    for f in sorted(SHAPENET.glob("*.npz")):
        with np.load(f, allow_pickle=False) as d:
            out += list(d["xyz"].astype(np.float32))
    return out


def make_set(shapes, n: int, k: int, seed: int) -> torch.Tensor:
    """n clouds of k points: random shape, random point subset, random rotation about Z."""
    g = np.random.default_rng(seed)
    out = np.empty((n, k, 3), np.float32)
    for i in range(n):
        s = shapes[g.integers(len(shapes))]
        p = s[g.choice(len(s), k, replace=False)]
        a = g.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])  # Y-up
        out[i] = p @ rot.T.astype(np.float32)
    return torch.from_numpy(out)


def _time_one(n, k, metric, budget_s, threads, queue):
    torch.set_num_threads(threads)
    shapes = load_shapes()
    s, r = make_set(shapes, n, k, 0), make_set(shapes, n, k, 1)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total_pairs = n * n + n * (n - 1)
    # Probe throughput on a few rows, then either run everything or extrapolate.
    t0 = time.perf_counter()
    pairwise_matrix(r[:1], s[: min(n, 16)], metric)
    probe = (time.perf_counter() - t0) / min(n, 16)
    if probe * total_pairs <= budget_s:
        t0 = time.perf_counter()
        pairwise_matrix(r, s, metric)
        pairwise_matrix(r, None, metric)
        pairwise_matrix(s, None, metric)
        secs, measured, mode = time.perf_counter() - t0, total_pairs, "full"
    else:
        rows = max(1, int(budget_s / max(probe * n, 1e-9)))
        t0 = time.perf_counter()
        pairwise_matrix(r[:rows], s, metric)
        measured = rows * n
        secs = (time.perf_counter() - t0) * total_pairs / measured
        mode = f"extrap. from {measured} pairs"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        dict(
            n=n,
            metric=metric,
            pairs=total_pairs,
            secs=secs,
            mode=mode,
            ms_per_pair=1000 * secs / total_pairs,
            peak_mb=peak,
            extra_mb=peak - base_rss,
        )
    )


def bench_timing(sizes, k, budget_s, threads):
    print(f"\n## Pairwise matrices for 1-NNA/COV/MMD ({k} points, {threads} threads)\n")
    print("| n | metric | pair distances | time | ms/pair | peak RSS MB (+ over data) | how |")
    print("|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for n in sizes:
        for metric in ("cd", "emd"):
            q = ctx.Queue()
            p = ctx.Process(target=_time_one, args=(n, k, metric, budget_s, threads, q))
            p.start()
            res = q.get()
            p.join()
            print(
                f"| {n} | {metric} | {res['pairs']:,} | {res['secs']:.1f} s | "
                f"{res['ms_per_pair']:.1f} | {res['peak_mb']:.0f} (+{res['extra_mb']:.0f}) | "
                f"{res['mode']} |",
                flush=True,
            )


def bench_emd_error(shapes, pairs: int, k: int):
    print(
        f"\n## approxmatch EMD vs exact EMD ({pairs} random pairs of ShapeNet clouds, {k} points)\n"
    )
    print(
        "| cost | approx/exact min | median | max | Spearman ρ over pairs "
        "| exact s/pair | approx s/pair |"
    )
    print("|---|---|---|---|---|---|---|")
    g = np.random.default_rng(0)
    idx = [g.choice(len(shapes), 2, replace=False) for _ in range(pairs)]
    x = torch.from_numpy(np.stack([shapes[i][:k] for i, _ in idx]))
    y = torch.from_numpy(np.stack([shapes[j][:k] for _, j in idx]))
    for cost in ("squared", "euclidean"):
        t0 = time.perf_counter()
        ex = emd_exact(x, y, cost).numpy()
        te = (time.perf_counter() - t0) / pairs
        t0 = time.perf_counter()
        ap = emd_approx(x, y, cost).double().numpy()
        ta = (time.perf_counter() - t0) / pairs
        ratio = ap / ex
        rho = np.corrcoef(np.argsort(np.argsort(ex)), np.argsort(np.argsort(ap)))[0, 1]
        print(
            f"| {cost} | {ratio.min():.3f} | {np.median(ratio):.3f} | {ratio.max():.3f} | "
            f"{rho:.3f} | {te:.2f} | {ta:.2f} |",
            flush=True,
        )


def bench_nna_agreement(shapes, n: int, k: int):
    """1-NNA-EMD with approxmatch vs exact on the same small sets (two different category mixes)."""
    g = np.random.default_rng(1)
    half = len(shapes) // 2
    s = torch.from_numpy(np.stack([shapes[i][:k] for i in g.choice(half, n, replace=False)]))
    r = torch.from_numpy(
        np.stack(
            [shapes[i][:k] for i in g.choice(np.arange(half // 2, len(shapes)), n, replace=False)]
        )
    )
    print(f"\n## 1-NNA-EMD agreement ({n} vs {n} ShapeNet clouds, {k} points)\n")
    for metric in ("emd", "emd_exact"):
        t0 = time.perf_counter()
        mats = [
            pairwise_matrix(r, s, metric),
            pairwise_matrix(r, None, metric),
            pairwise_matrix(s, None, metric),
        ]
        acc = one_nn_accuracy(mats[1], mats[0], mats[2])["acc"]
        print(f"- {metric}: 1-NNA {100 * acc:.1f}% ({time.perf_counter() - t0:.0f} s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 400])
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--budget-s", type=float, default=60.0, help="max seconds per timing run")
    p.add_argument("--emd-pairs", type=int, default=8)
    p.add_argument("--emd-points", type=int, nargs="*", default=[1024, 2048])
    p.add_argument("--nna-check", action="store_true")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# bench_metrics: torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.1f} (CPU shared with other jobs)"
    )
    print("command:", " ".join([sys.executable.split("/")[-1], *sys.argv]))
    bench_timing(args.sizes, args.points, args.budget_s, args.threads)
    shapes = load_shapes()
    for k in args.emd_points:
        bench_emd_error(shapes, args.emd_pairs, k)
    if args.nna_check:
        bench_nna_agreement(shapes, 10, 512)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
