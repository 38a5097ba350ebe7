"""Surface spread: how far a cloud's points scatter off a local surface, in units of its spacing.

Per point, the square root of the smallest eigenvalue of the covariance of its ``k`` nearest
neighbours (the point itself excluded) is the neighbourhood's RMS distance to its best-fit plane
(PCA normal estimation, Hoppe et al. 1992). Dividing by the cloud's median nearest-neighbour
distance makes it free of scale and, for a flat surface, of point count. The median over points,
then over clouds, is robust to the few stray points and thin parts every cloud has.

Reference values with ``k = 16`` (``tests/test_surface_spread.py``): 0 for a plane; ≈ 0.16 for
1024 points uniform on a sphere and ≈ 0.08 for 4096 (curvature: the neighbourhood's sagitta
shrinks faster than the spacing, ∝ k / sqrt(N), so compare clouds at the same point count);
≈ 0.87 for points uniform in a cube (a volume: no surface at all). It also depends on how evenly
the points are spread: a farthest-point subset of a sphere (1024 of 4096) gives ≈ 0.10, not 0.16,
because its spacing is wider than a random sample's; compare clouds sampled alike. A generated
cloud whose value is several times its training data's at the same point count is a diffuse
shell, not a surface.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

SPREAD_NEIGHBOURS = 16  # the k of the definition; the values above are for this k


def point_spread(coords: np.ndarray, k: int = SPREAD_NEIGHBOURS) -> np.ndarray:
    """Per-point surface spread of one cloud.

    :param coords: [N, 3] points, N > k.
    :return: [N] sqrt(smallest eigenvalue of the covariance of the k nearest neighbours) /
        median nearest-neighbour distance of the cloud. NaN everywhere when that median is 0
        (more than half the points sit on a duplicate): the cloud has no spacing to measure by.
    """
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"expected [N, 3] coordinates, got {x.shape}")
    if len(x) <= k:
        raise ValueError(f"need more than k={k} points, got {len(x)}")
    dist, idx = cKDTree(x).query(x, k=k + 1)
    # column 0 is the point itself (distance 0), unless a duplicate took its place: either way
    # the k columns after it are the k nearest *other* points, and column 1 the nearest one
    spacing = np.median(dist[:, 1])
    if spacing <= 0:
        return np.full(len(x), np.nan)
    nb = x[idx[:, 1:]]  # [N, k, 3]
    nb = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb) / k  # population covariance, [N, 3, 3]
    smallest = np.linalg.eigvalsh(cov)[:, 0]  # ascending eigenvalues
    return np.sqrt(np.clip(smallest, 0.0, None)) / spacing


def cloud_spread(coords: np.ndarray, k: int = SPREAD_NEIGHBOURS) -> float:
    """Median of ``point_spread`` over the points of one [N, 3] cloud."""
    return float(np.median(point_spread(coords, k)))


def surface_spread(clouds: np.ndarray | Sequence[np.ndarray], k: int = SPREAD_NEIGHBOURS) -> dict:
    """Surface spread of a set of clouds (module docstring).

    :param clouds: [B, N, 3] or a list of [N_i, 3] clouds (only xyz is read: pass ``coords``).
    :return: {"surface_spread": median over clouds, "per_cloud": [B] list, "count": B}; clouds
        without spacing (NaN) are left out of the median.
    """
    per = np.array([cloud_spread(np.asarray(c)[..., :3], k) for c in clouds], dtype=np.float64)
    if len(per) == 0:
        raise ValueError("no clouds")
    ok = per[np.isfinite(per)]
    value = float(np.median(ok)) if len(ok) else float("nan")
    return {"surface_spread": value, "per_cloud": per.tolist(), "count": len(per)}
