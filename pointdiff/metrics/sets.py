"""Set-level generation metrics: MMD, COV, 1-NNA (CD and EMD) and JSD, with named protocols.

Definitions follow PointFlow ``metrics/evaluation_metrics.py`` (also PVD, LION; see
``shared/reference/metrics-and-anchors.md`` §1.2). S = generated samples, R = references:

* MMD-d = mean_{r∈R} min_{s∈S} d(r, s)          (``lgan_mmd``)
* COV-d = |{argmin_r d(s, r) : s ∈ S}| / |R|     (``lgan_cov``)
* 1-NNA-d = leave-one-out accuracy of a 1-NN classifier on S ∪ R labelled real/fake (50% is
  ideal; 100% = perfectly separable; < 50% means samples sit closer to references than the
  references to each other, i.e. copying). Ties between equally near neighbours are resolved by
  **expected** accuracy (the fraction of tied neighbours with the same label), not by an
  implementation-defined index order.
* JSD on the occupancy of a 28³ grid clipped to the sphere of radius 0.5 (Achlioptas et al.):
  every point goes to its nearest in-sphere grid point; the two count histograms are compared.

Protocols (they change the numbers a lot, so every report names one):

* ``global`` (PointFlow / PVD / LION Table 1): no per-shape normalisation; both sets keep their
  common frame (pointdiff's object space, the closest analogue of PointFlow's de-normalised
  ShapeNet scale). Scale-free metrics (COV, 1-NNA) match; MMD depends on that frame.
* ``bbox`` (DPM ``shape_bbox``): every cloud centred on its bounding box and scaled so its largest
  side spans [-1, 1].
* ``lion_box`` (LION ``norm_box``, Tables 2/3): ``bbox`` × 0.5.
"""

from __future__ import annotations

import numpy as np
import torch

from pointdiff.metrics.distances import MetricInputError, as_clouds, pairwise_matrix

PROTOCOLS = {
    "global": "PointFlow/PVD/LION Table 1: common frame, no per-shape normalisation",
    "bbox": "DPM shape_bbox: per-shape bbox centre, largest side scaled to [-1, 1]",
    "lion_box": "LION norm_box: per-shape bbox, largest side scaled to [-0.5, 0.5]",
}


def normalize_clouds(clouds, protocol: str) -> torch.Tensor:
    """Apply a protocol's per-shape normalisation to [B, N, 3] clouds (``global``: unchanged)."""
    if protocol not in PROTOCOLS:
        raise MetricInputError(f"unknown protocol {protocol!r} ({' | '.join(PROTOCOLS)})")
    x = as_clouds(clouds)
    if protocol == "global":
        return x
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    scale = (hi - lo).amax(dim=-1, keepdim=True) / 2
    if (scale <= 0).any():
        raise MetricInputError("a cloud has a degenerate (zero-size) bounding box")
    x = (x - (lo + hi) / 2) / scale
    return x * 0.5 if protocol == "lion_box" else x


# ----------------------------------------------------------------------------------------------
# Metrics from distance matrices


def mmd_cov(m_sr: torch.Tensor) -> dict[str, float]:
    """MMD and COV from the sample × reference matrix [n_s, n_r] (PointFlow ``lgan_mmd_cov``)."""
    nearest_ref = m_sr.argmin(dim=1)
    return {
        "mmd": float(m_sr.min(dim=0).values.mean()),
        "cov": len(torch.unique(nearest_ref)) / m_sr.shape[1],
        "mmd_smp": float(m_sr.min(dim=1).values.mean()),
    }


def one_nn_accuracy(m_rr: torch.Tensor, m_rs: torch.Tensor, m_ss: torch.Tensor) -> dict:
    """Leave-one-out 1-NN accuracy on R ∪ S (PointFlow ``knn(M_rr, M_rs, M_ss, 1)``).

    Ties are scored by expectation: a point whose nearest distance is shared by several
    neighbours scores the fraction of them that carry its own label.

    :return: {"acc", "acc_ref", "acc_sample"} in [0, 1].
    """
    n_r, n_s = m_rr.shape[0], m_ss.shape[0]
    m = torch.cat([torch.cat([m_rr, m_rs], 1), torch.cat([m_rs.T, m_ss], 1)], 0).double()
    m.fill_diagonal_(float("inf"))
    label = torch.cat([torch.ones(n_r), torch.zeros(n_s)]).bool()
    tied = m == m.min(dim=1, keepdim=True).values  # [n, n] nearest neighbours (incl. ties)
    same = (tied & (label[None, :] == label[:, None])).sum(1).double()
    credit = same / tied.sum(1).double()
    return {
        "acc": float(credit.mean()),
        "acc_ref": float(credit[:n_r].mean()),
        "acc_sample": float(credit[n_r:].mean()),
    }


# ----------------------------------------------------------------------------------------------
# JSD on a 28³ occupancy grid


def _sphere_grid(resolution: int) -> np.ndarray:
    """Grid points of the cube [-0.5, 0.5]³ (spacing 1/(res−1)) inside the sphere of radius 0.5."""
    ax = np.arange(resolution) / (resolution - 1) - 0.5
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return g[np.linalg.norm(g, axis=1) <= 0.5]


def occupancy_counts(clouds, resolution: int = 28) -> np.ndarray:
    """How many points of all clouds fall nearest to each in-sphere grid point: [G] float64.

    Points outside the sphere count for the nearest in-sphere grid point, as in Achlioptas et
    al.'s ``entropy_of_occupancy_grid`` (there with sklearn ``NearestNeighbors``; here a k-d tree).
    """
    from scipy.spatial import cKDTree

    x = as_clouds(clouds).reshape(-1, 3).double().numpy()
    grid = _sphere_grid(resolution)

    # Fast path: the nearest point of the full cube grid (by rounding) when it is in the sphere.
    def cell(p):
        return np.clip(np.round((p + 0.5) * (resolution - 1)), 0, resolution - 1).astype(
            np.int64
        ) @ [resolution**2, resolution, 1]

    lookup = np.full(resolution**3, -1)
    lookup[cell(grid)] = np.arange(len(grid))
    idx = lookup[cell(x)]
    far = idx < 0
    if far.any():  # near or beyond the sphere: k-d tree over the in-sphere grid
        idx[far] = cKDTree(grid).query(x[far], k=1)[1]
    return np.bincount(idx, minlength=len(grid)).astype(np.float64)


def _entropy2(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def jsd(samples, refs, resolution: int = 28) -> float:
    """Jensen-Shannon divergence (base 2) between the grid occupancies of two sets."""
    p, q = occupancy_counts(samples, resolution), occupancy_counts(refs, resolution)
    p, q = p / p.sum(), q / q.sum()
    return _entropy2((p + q) / 2) - 0.5 * (_entropy2(p) + _entropy2(q))


# ----------------------------------------------------------------------------------------------
# Everything at once


def compute_set_metrics(
    samples,
    refs,
    protocol: str = "global",
    metrics: tuple[str, ...] = ("cd", "emd"),
    emd_cost: str = "squared",
    with_jsd: bool = True,
    memory_mb: float = 512.0,
    device: str | None = None,
    progress: bool = False,
    return_matrices: bool = False,
) -> dict:
    """MMD, COV and 1-NNA for each distance in ``metrics``, plus JSD, under ``protocol``.

    :param samples: [n_s, N, 3]; :param refs: [n_r, N', 3] (EMD needs N = N').
    :param metrics: any of ``cd``, ``emd`` (approxmatch), ``emd_exact``, ``cd_l1``.
    :return: {"protocol", "n_samples", "n_refs", "num_points", "emd_cost",
              "mmd_<m>", "cov_<m>", "1nna_<m>", "1nna_<m>_ref", "1nna_<m>_sample", "jsd"}
             and, with ``return_matrices``, {"matrices": {m: {"rr", "rs", "ss"}}}.
    """
    s = normalize_clouds(as_clouds(samples, "samples"), protocol)
    r = normalize_clouds(as_clouds(refs, "references"), protocol)
    if len(s) < 2 or len(r) < 2:
        raise MetricInputError(f"need at least 2 samples and 2 references, got {len(s)}, {len(r)}")
    out: dict = {
        "protocol": protocol,
        "protocol_description": PROTOCOLS[protocol],
        "n_samples": len(s),
        "n_refs": len(r),
        "num_points": [s.shape[1], r.shape[1]],
        "emd_cost": emd_cost,
    }
    mats = {}
    for m in metrics:
        kw = dict(metric=m, emd_cost=emd_cost, memory_mb=memory_mb, device=device)
        m_rs = pairwise_matrix(r, s, progress=progress, **kw)
        m_rr = pairwise_matrix(r, progress=progress, **kw)
        m_ss = pairwise_matrix(s, progress=progress, **kw)
        mc = mmd_cov(m_rs.T)
        nn = one_nn_accuracy(m_rr, m_rs, m_ss)
        out[f"mmd_{m}"], out[f"cov_{m}"] = mc["mmd"], mc["cov"]
        out[f"1nna_{m}"] = nn["acc"]
        out[f"1nna_{m}_ref"], out[f"1nna_{m}_sample"] = nn["acc_ref"], nn["acc_sample"]
        mats[m] = {"rr": m_rr, "rs": m_rs, "ss": m_ss}
    if with_jsd:
        out["jsd"] = jsd(s, r)
    if return_matrices:
        out["matrices"] = mats
    return out
