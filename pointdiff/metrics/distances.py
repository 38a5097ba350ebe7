"""Distances between point clouds (pure PyTorch, CPU or GPU) and chunked pairwise matrices.

Conventions (see ``shared/reference/metrics-and-anchors.md`` §1.2 and §2):

* ``chamfer_distance``: PointFlow/PVD/LION convention: **squared** Euclidean distances,
  mean over the points of each cloud, the two directions **summed** (not halved).
* ``chamfer_l1``: the mesh-reconstruction convention (ONet, ConvONet, SAP "Chamfer-L1"):
  unsquared Euclidean distances, mean over points, the two directions **averaged**.
* ``emd_exact``: optimal one-to-one matching (Hungarian, ``scipy.optimize.linear_sum_assignment``)
  divided by N; O(N³) per pair, meant for checking.
* ``emd_approx``: a dense PyTorch port of Fan et al.'s ``approxmatch`` (the CUDA kernel behind the
  EMD numbers in PointFlow, PVD and LION): 10 annealing levels ``-4^j`` for j = 7 … -1 and a final
  level 0 (the kernel's ``j == -2`` branch), then the match
  cost divided by N. ``cost="squared"`` is the LION/PVD kernel, ``cost="euclidean"`` PointFlow's.
  Its error against the exact solver (``benchmarks/bench_metrics.py``, 8 random pairs of ShapeNet
  clouds at 1024 and 2048 points): approx / exact = 1.37-2.48 (median 1.72) for the squared
  cost and 1.13-1.27 (median 1.17) for the Euclidean cost; it never undercuts the optimum (its
  plan is a feasible doubly-stochastic matching) and it ranked the 8 pairs exactly as the exact
  EMD (Spearman 1.0). So approxmatch numbers are comparable with the published tables (same
  algorithm), not with true EMD; the tests allow ratios in [1, 3.5] (squared) / [1, 1.5].
  On a 2-core CPU it costs ~0.5-1 s per 2048-point pair: EMD over full test sets needs a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

EMD_COSTS = ("squared", "euclidean")


class MetricInputError(ValueError):
    """Point sets that a metric cannot use (shape, emptiness, NaNs), with the reason."""


def as_clouds(x, name: str = "clouds") -> torch.Tensor:
    """Validate and convert clouds to a float32 tensor [B, N, 3].

    :param x: [B, N, 3] or [N, 3] (numpy or torch); extra channels beyond xyz are dropped.
    """
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[-1] < 3:
        raise MetricInputError(f"{name}: expected [B, N, 3] clouds, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise MetricInputError(f"{name}: empty set (shape {tuple(t.shape)})")
    t = t[..., :3].float()
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(-1).any(-1).nonzero().flatten()[:5].tolist()
        raise MetricInputError(f"{name}: non-finite (NaN/inf) coordinates in clouds {bad}")
    return t


# ----------------------------------------------------------------------------------------------
# Per-pair distances (batched over aligned pairs)


def squared_distances(
    x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """All squared distances between the points of aligned cloud pairs.

    One GEMM on augmented vectors ([x, |x|², 1] · [-2y, 1, |y|²]) so the [N, M] block is written
    once; clamped at 0 against cancellation.

    :param x: [B, N, 3]; :param y: [B, M, 3] (or [1, M, 3] / [B, 1..]: broadcast over B).
    :param out: optional [B, N, M] buffer to write into (reusing one avoids page-faulting a
        fresh 16 MB block per 2048-point pair, which dominates the CPU time otherwise).
    :return: [B, N, M].
    """
    xx = x.square().sum(-1, keepdim=True)
    yy = y.square().sum(-1, keepdim=True)
    xa = torch.cat([x, xx, torch.ones_like(xx)], dim=-1)
    ya = torch.cat([-2 * y, torch.ones_like(yy), yy], dim=-1)
    if out is not None and xa.shape[0] == ya.shape[0]:
        return torch.bmm(xa, ya.transpose(-1, -2), out=out).clamp_min_(0.0)
    return torch.matmul(xa, ya.transpose(-1, -2)).clamp_min_(0.0)


def nearest_squared(
    x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from every point to the nearest point of the other cloud.

    :return: (d_xy [B, N], d_yx [B, M]).
    """
    d = squared_distances(x, y, out)
    return d.amin(dim=2), d.amin(dim=1)


def chamfer_distance(x, y) -> torch.Tensor:
    """Chamfer distance, PointFlow convention: mean squared NN distance, both directions summed.

    :param x: [B, N, 3]; :param y: [B, M, 3] (N may differ from M).
    :return: [B].
    """
    x, y = as_clouds(x, "x"), as_clouds(y, "y").to(x.device)
    _check_batch(x, y)
    d_xy, d_yx = nearest_squared(x, y)
    return d_xy.mean(1) + d_yx.mean(1)


def chamfer_l1(x, y) -> torch.Tensor:
    """Chamfer-L1 as in mesh reconstruction papers (ONet/ConvONet/SAP).

    0.5 · (mean_x min_y ‖x−y‖ + mean_y min_x ‖x−y‖), unsquared distances. :return: [B].
    """
    x, y = as_clouds(x, "x"), as_clouds(y, "y").to(x.device)
    _check_batch(x, y)
    d_xy, d_yx = nearest_squared(x, y)
    return 0.5 * (d_xy.sqrt().mean(1) + d_yx.sqrt().mean(1))


def f_score(x, y, threshold: float = 0.01) -> torch.Tensor:
    """F-score at ``threshold`` (harmonic mean of precision of x and recall of y). :return: [B]."""
    x, y = as_clouds(x, "x"), as_clouds(y, "y").to(x.device)
    _check_batch(x, y)
    d_xy, d_yx = nearest_squared(x, y)
    precision = (d_xy <= threshold**2).float().mean(1)
    recall = (d_yx <= threshold**2).float().mean(1)
    return 2 * precision * recall / (precision + recall).clamp_min(1e-12)


def emd_exact(x, y, cost: str = "squared") -> torch.Tensor:
    """Exact EMD: optimal bijection cost / N (Hungarian algorithm, CPU, O(N³) per pair).

    :param x, y: [B, N, 3] with the same N. :param cost: ``squared`` or ``euclidean``.
    :return: [B] float64.
    """
    from scipy.optimize import linear_sum_assignment

    x, y = as_clouds(x, "x"), as_clouds(y, "y")
    _check_batch(x, y)
    _check_emd(x, y, cost)
    d = squared_distances(x.double().cpu(), y.double().cpu())
    if cost == "euclidean":
        d = d.sqrt()
    out = []
    for c in d.numpy():
        rows, cols = linear_sum_assignment(c)
        out.append(c[rows, cols].mean())
    return torch.tensor(out, dtype=torch.float64)


def emd_approx(x, y, cost: str = "squared") -> torch.Tensor:
    """Approximate EMD: dense port of Fan et al.'s ``approxmatch`` + ``matchcost``, divided by N.

    Each level j = 7 … -1 uses the kernel K = exp(-4^j · ‖x−y‖²) weighted by the mass still
    unmatched on both sides, and moves mass so no point exceeds its capacity (1 per point for
    N = M). Only the cost is accumulated, never the [N, M] match matrix itself.

    :param x, y: [B, N, 3] with the same N. :return: [B] float32.
    """
    x, y = as_clouds(x, "x"), as_clouds(y, "y").to(x.device)
    _check_batch(x, y)
    _check_emd(x, y, cost)
    return _approxmatch_cost(x, y, cost)


def _approxmatch_cost(
    x: torch.Tensor, y: torch.Tensor, cost: str, work: list[torch.Tensor] | None = None
) -> torch.Tensor:
    b, n, _ = x.shape
    if work is None:
        work = [torch.empty(b, n, n, device=x.device) for _ in range(3)]
    d2 = squared_distances(x, y, out=work[0][:b])  # [B, N, N]
    dc = torch.sqrt(d2, out=work[2][:b]) if cost == "euclidean" else d2
    remain_l = x.new_ones(b, n)  # capacity left on each side (multiL = multiR = 1 when N == M)
    remain_r = x.new_ones(b, n)
    total = x.new_zeros(b)
    k = work[1][:b]
    d2_max = float(d2.amax())
    for j in range(7, -2, -1):
        level = -(4.0**j)
        torch.mul(d2, level, out=k)
        if level * d2_max < -80.0:
            # exp() of very negative arguments takes a slow underflow path on CPUs (~10x);
            # clamping at -80 changes K only from ~0 to 2e-35, far below the kernel's 1e-9 eps.
            k.clamp_(min=-80.0)
        k.exp_()
        # Left points spread their remaining mass proportionally to K · remaining right capacity.
        ratio_l = remain_l / (_matvec(k, remain_r) + 1e-9)
        # Right points accept at most their remaining capacity (consumption <= 1).
        sumr = _vecmat(ratio_l, k) * remain_r
        ratio_r = torch.clamp(remain_r / (sumr + 1e-9), max=1.0) * remain_r
        remain_r = torch.clamp(remain_r - sumr, min=0.0)
        # match_kl += K_kl * ratio_l_k * ratio_r_l: accumulate its cost and the mass it used.
        remain_l = torch.clamp(remain_l - _matvec(k, ratio_r) * ratio_l, min=0.0)
        total += (_matvec(k.mul_(dc), ratio_r) * ratio_l).sum(-1)
    # The kernel's last level (j = -2) is 0, K = 1: what is left is spread uniformly.
    ratio_l = remain_l / (remain_r.sum(-1, keepdim=True) + 1e-9)
    sumr = ratio_l.sum(-1, keepdim=True) * remain_r
    ratio_r = torch.clamp(remain_r / (sumr + 1e-9), max=1.0) * remain_r
    total += (_matvec(dc, ratio_r) * ratio_l).sum(-1)
    return total / n


def _matvec(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, N, M] @ [B, M] -> [B, N]; a loop of ``mv`` on CPU (MKL's batched N=1 GEMM is slower)."""
    if k.device.type == "cpu":
        return torch.stack([torch.mv(ki, vi) for ki, vi in zip(k, v, strict=True)])
    return torch.bmm(k, v[..., None])[..., 0]


def _vecmat(v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, N] @ [B, N, M] -> [B, M]."""
    if k.device.type == "cpu":
        return torch.stack([torch.mv(ki.T, vi) for ki, vi in zip(k, v, strict=True)])
    return torch.bmm(v[:, None], k)[:, 0]


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        raise MetricInputError(f"batch sizes differ: {x.shape[0]} vs {y.shape[0]}")


def _check_emd(x: torch.Tensor, y: torch.Tensor, cost: str) -> None:
    if cost not in EMD_COSTS:
        raise MetricInputError(f"unknown EMD cost {cost!r} ({' | '.join(EMD_COSTS)})")
    if x.shape[1] != y.shape[1]:
        raise MetricInputError(
            f"EMD needs clouds with equal point counts, got {x.shape[1]} and {y.shape[1]} "
            "(subsample both sets to the same count first)"
        )


# ----------------------------------------------------------------------------------------------
# Pairwise matrices between two sets (chunked)


#: CPU tiles for the Chamfer blocks: [P pairs, 128 rows, M] of about 4 MB stay in cache (2x
#: faster than writing and re-reading whole 16 MB [N, M] blocks); on GPUs a block is one tile.
_CPU_TILE_BYTES, _CPU_TILE_ROWS = 4 * 2**20, 128


def _nearest_tiled(x, y, work):
    """Row and column minima of the squared-distance blocks of aligned pairs, tile by tile.

    :param work: [[P, T, M]] buffer; T rows of x at a time. :return: (d_xy [P, N], d_yx [P, M]).
    """
    buf = work[0]
    p, n, m, tile = len(x), x.shape[1], y.shape[1], work[0].shape[1]
    if tile >= n:
        return nearest_squared(x, y, out=buf[:p, :n])
    d_xy = x.new_empty(p, n)
    d_yx = x.new_full((p, m), float("inf"))
    for r in range(0, n, tile):
        blk = squared_distances(x[:, r : r + tile], y, out=buf[:p, : min(tile, n - r)])
        torch.amin(blk, dim=2, out=d_xy[:, r : r + tile])
        torch.minimum(d_yx, blk.amin(dim=1), out=d_yx)
    return d_xy, d_yx


def _pair_cd(x, y, cost, work):
    d_xy, d_yx = _nearest_tiled(x, y, work)
    return d_xy.mean(1) + d_yx.mean(1)


def _pair_cd_l1(x, y, cost, work):
    d_xy, d_yx = _nearest_tiled(x, y, work)
    return 0.5 * (d_xy.sqrt().mean(1) + d_yx.sqrt().mean(1))


def _pair_emd(x, y, cost, work):
    return _approxmatch_cost(x, y, cost, work)


def _pair_emd_exact(x, y, cost, work):
    return emd_exact(x, y, cost).to(x)


#: metric name -> (pair function, [N, M] float32 work buffers per pair)
PAIR_METRICS = {
    "cd": (_pair_cd, 1),
    "cd_l1": (_pair_cd_l1, 1),
    "emd": (_pair_emd, 3),
    "emd_exact": (_pair_emd_exact, 0),
}


def pairwise_matrix(
    a,
    b=None,
    metric: str = "cd",
    emd_cost: str = "squared",
    memory_mb: float = 512.0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Distances between every cloud of ``a`` and every cloud of ``b``, computed in pair batches.

    Memory is bounded by ``memory_mb`` for the [pairs, N, M] blocks (a 1000 × 1000 matrix of
    2048-point clouds runs in the default 512 MB). With ``b=None`` the matrix of ``a`` against
    itself is computed: only the upper triangle d(a_i, a_j), i < j, mirrored, diagonal = 0.
    (CD and exact EMD are symmetric; approxmatch is not exactly, by ~1-3%: PointFlow computes
    both orders, this halves the cost.) Entry [i, j] is d(a_i, b_j) with a_i as the first cloud.

    :param a: [n_a, N, 3]; :param b: [n_b, M, 3] or None.
    :param metric: ``cd`` | ``cd_l1`` | ``emd`` (approxmatch) | ``emd_exact``.
    :return: [n_a, n_b] float32 on the CPU.
    """
    if metric not in PAIR_METRICS:
        raise MetricInputError(f"unknown metric {metric!r} ({' | '.join(PAIR_METRICS)})")
    fn, buffers = PAIR_METRICS[metric]
    a = as_clouds(a, "a")
    device = torch.device(device) if device is not None else a.device
    a = a.to(device)
    sym = b is None
    b = a if sym else as_clouds(b, "b").to(device)
    if metric.startswith("emd"):
        _check_emd(a, b, emd_cost)
    n_a, n_b = len(a), len(b)
    if sym:
        ii, jj = torch.triu_indices(n_a, n_a, offset=1)
    else:
        ii = torch.arange(n_a).repeat_interleave(n_b)
        jj = torch.arange(n_b).repeat(n_a)
    per_pair = a.shape[1] * b.shape[1] * 4 * max(buffers, 1)
    step = max(1, min(int(memory_mb * 2**20 // per_pair), len(ii)))
    rows = a.shape[1]
    if metric.startswith("cd") and device.type == "cpu":
        rows = min(rows, _CPU_TILE_ROWS)
        step = max(1, min(step, _CPU_TILE_BYTES // (rows * b.shape[1] * 4)))
    # Work buffers are allocated once and reused by every chunk.
    work = [torch.empty(step, rows, b.shape[1], device=device) for _ in range(buffers)]
    out = torch.zeros(n_a, n_b)
    chunks = range(0, len(ii), step)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"pairwise {metric} {n_a}x{n_b}", leave=False)
    with torch.no_grad():
        for s in chunks:
            i, j = ii[s : s + step], jj[s : s + step]
            out[i, j] = fn(a[i.to(device)], b[j.to(device)], emd_cost, work).float().cpu()
    if sym:
        out = out + out.T
    return out
