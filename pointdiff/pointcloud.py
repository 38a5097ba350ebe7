"""Coloured point clouds: the ``PointCloud`` type and the one owner of normalisation, model space
and subsampling (file formats: ``pointdiff.pointcloud_io``).

Conventions (the whole project uses them; nothing else re-implements them):

* **Object space**: coordinates centred on the bounding box, largest side 1, so xyz ∈ [-0.5, 0.5];
  **Z is up** (point-e's convention; Y-up sources are converted at load with ``y_up_to_z_up``).
  Colours are float32 RGB in [0, 1].
* **Model space** (what networks see, Point-E's scaling): xyz × 2 ∈ [-1, 1] and rgb × 2 − 1 ∈
  [-1, 1] (equivalently 0..255 / 127.5 − 1). Tensors are channels-last ``[..., N, 6]``.

Subsampling (``farthest_point_sample``, ``random_subsample``) and ``relocate_strays`` work on
tensors, so the data loader, the training loop and the pipeline share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pointdiff.pointcloud_io import PointCloudError, read_arrays, reading, write_arrays

#: scale and bias mapping object-space [xyz, rgb∈[0,1]] to model space (Point-E convention).
_MODEL_SCALE = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], dtype=np.float32)
_MODEL_BIAS = np.array([0.0, 0.0, 0.0, -1.0, -1.0, -1.0], dtype=np.float32)


#: σ (object units) of the extra displacement of generator-like "stray" points, used wherever
#: clouds are given such defects on purpose (SDF and classifier augmentation, noisy benchmarks): a
#: small generator scatters points around thin parts (measured on pointdiff-small's samples, 2–4 %
#: of points lie > 3× the median k-NN spacing from the rest).
STRAY_SIGMA = 0.05

#: ``PointCloud.subsample``'s FPS looks at no more than this many points per point it keeps.
FPS_POOL = 32

#: largest coordinate magnitude a cloud may have (see ``PointCloud``).
MAX_COORD = 1e37


# ----------------------------------------------------------------------------------------------
# Model-space mapping (the single place that owns it)


def to_model_space(coords: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Map object-space coords [..., N, 3] and colours [..., N, 3] in [0, 1] to model space.

    :return: [..., N, 6] with xyz × 2 and rgb × 2 − 1.
    """
    x = torch.cat([coords, colors], dim=-1)
    scale = torch.as_tensor(_MODEL_SCALE, device=x.device, dtype=x.dtype)
    bias = torch.as_tensor(_MODEL_BIAS, device=x.device, dtype=x.dtype)
    return x * scale + bias


def from_model_space(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``to_model_space``: [..., N, 6] → (coords [..., N, 3], colours [..., N, 3]).

    Colours are clamped to [0, 1]; coordinates are returned as they are.
    """
    scale = torch.as_tensor(_MODEL_SCALE, device=x.device, dtype=x.dtype)
    bias = torch.as_tensor(_MODEL_BIAS, device=x.device, dtype=x.dtype)
    y = (x - bias) / scale
    return y[..., :3], y[..., 3:].clamp(0.0, 1.0)


def y_up_to_z_up(coords: np.ndarray) -> np.ndarray:
    """Rotate Y-up coordinates (ShapeNet, glTF) +90° about X into the project's Z-up frame.

    (x, y, z) → (x, −z, y): the old +Y becomes +Z and the old +Z (front) becomes −Y.
    """
    c = np.asarray(coords)
    return np.stack([c[..., 0], -c[..., 2], c[..., 1]], axis=-1)


def normalize_bbox(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the bounding box and scale its largest side to 1 (xyz ∈ [-0.5, 0.5]).

    :param coords: [N, 3].
    :return: (normalised [N, 3] float32, centre [3], scale) with ``coords = out * scale + centre``.
    """
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3 or len(c) == 0:
        raise PointCloudError(f"need a non-empty [N, 3] array, got shape {c.shape}")
    lo, hi = c.min(axis=0), c.max(axis=0)
    center = (lo + hi) / 2
    scale = float((hi - lo).max())
    if not np.isfinite(scale) or scale <= 0:
        where = f"all {len(c)} points at one place" if scale == 0 else f"largest side {scale}"
        raise PointCloudError(f"degenerate bounding box ({where})")
    return ((c - center) / scale).astype(np.float32), center.astype(np.float32), scale


# ----------------------------------------------------------------------------------------------
# Subsampling


def farthest_point_sample(
    points: torch.Tensor, k: int, start: torch.Tensor | int | None = 0
) -> torch.Tensor:
    """Batched farthest point sampling on xyz (vectorised over the batch; k sequential steps).

    :param points: [B, N, C] (only the first 3 channels are used) or [N, C].
    :param k: number of points to keep (≤ N).
    :param start: first index per cloud: an int, a [B] tensor, or None for index 0.
    :return: indices [B, k] (or [k] for unbatched input) into the N points.
    """
    squeeze = points.dim() == 2
    if squeeze:
        points = points[None]
    b, n, _ = points.shape
    if not 0 < k <= n:
        raise PointCloudError(f"cannot pick {k} of {n} points")
    xyz = points[..., :3].float()
    idx = torch.empty(b, k, dtype=torch.long, device=points.device)
    if start is None:
        start = 0
    cur = torch.as_tensor(start, device=points.device).long().expand(b).clone()
    if points.device.type == "cpu" and b == 1:  # one CPU cloud: numpy loop, ~5x faster
        idx = torch.from_numpy(_fps_numpy(xyz[0].numpy(), k, int(cur[0])))
        return idx if squeeze else idx[None]
    dist = torch.full((b, n), float("inf"), device=points.device)
    batch = torch.arange(b, device=points.device)
    for i in range(k):
        idx[:, i] = cur
        d = (xyz - xyz[batch, cur][:, None]).square().sum(-1)  # [B, N]
        dist = torch.minimum(dist, d)
        cur = dist.argmax(-1)
    return idx[0] if squeeze else idx


def _fps_numpy(xyz: np.ndarray, k: int, start: int) -> np.ndarray:
    """Single-cloud FPS with preallocated float32 buffers (same arithmetic as the torch loop:
    dx² + dy² + dz², first argmax on ties), avoiding per-step kernel overhead on the CPU."""
    x = np.ascontiguousarray(xyz.T)  # [3, N]: each coordinate row is contiguous
    n = x.shape[1]
    dist = np.full(n, np.inf, dtype=np.float32)
    d, tmp = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    idx = np.empty(k, dtype=np.int64)
    cur = start
    for i in range(k):
        idx[i] = cur
        np.subtract(x[0], x[0, cur], out=tmp)
        np.multiply(tmp, tmp, out=d)
        for c in (1, 2):
            np.subtract(x[c], x[c, cur], out=tmp)
            d += tmp * tmp
        np.minimum(dist, d, out=dist)
        cur = int(dist.argmax())
    return idx


def random_subsample(n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of k distinct points out of n, uniformly at random: [k]."""
    if not 0 < k <= n:
        raise PointCloudError(f"cannot pick {k} of {n} points")
    return torch.randperm(n, generator=generator)[:k]


def relocate_strays(
    x: torch.Tensor, ratio: float, k: int = 8, context: torch.Tensor | None = None
) -> torch.Tensor:
    """Move stray points onto their nearest inlier (coordinates and colour), keeping the count.

    A point is a stray when the mean distance to its ``k`` nearest neighbours exceeds ``ratio``
    × the median of that distance over ``x``'s points (scale-free: works in object or model
    space). Small generators scatter 2–4 % of their points this way; left in, they float in
    viewers and, since point-e's classifier normalises by the farthest point, shrink the shape.

    :param x: [B, N, C] clouds, xyz in the first 3 channels (e.g. one stage's new points).
    :param ratio: threshold multiple of the median k-NN distance; ``<= 0`` returns ``x``.
    :param context: [B, M, C] points already accepted (an upsampler's low-res cloud): they count
        as neighbours and inliers, and are never moved.
    :returns: [B, N, C]; non-stray points bit-identical to ``x``.
    """
    if ratio <= 0:
        return x
    out = x.clone()
    for b in range(x.shape[0]):
        pts = x[b] if context is None else torch.cat([context[b], x[b]])
        if pts.shape[0] <= k:
            continue
        d = torch.cdist(x[b, :, :3].float(), pts[:, :3].float())  # [N, M + N]
        knn = d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(1)  # skip the point itself
        stray = knn > ratio * knn.median()
        if not stray.any():
            continue
        inlier = torch.ones(pts.shape[0], dtype=torch.bool, device=x.device)
        inlier[pts.shape[0] - x.shape[1] :] = ~stray
        if not inlier.any():
            continue
        nearest = d[stray][:, inlier].argmin(1)
        out[b, stray] = pts[inlier][nearest]
    return out


# ----------------------------------------------------------------------------------------------
# The PointCloud type


@dataclass
class PointCloud:
    """A coloured point cloud in object space.

    :param coords: [N, 3] float32, Z-up, normally in [-0.5, 0.5].
    :param colors: [N, 3] float32 RGB in [0, 1].
    """

    coords: np.ndarray
    colors: np.ndarray

    def __post_init__(self):
        raw = np.asarray(self.coords)
        if raw.dtype.kind not in "iuf":
            raise PointCloudError(f"coords must be numbers, got dtype {raw.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
            self.coords = np.ascontiguousarray(raw, dtype=np.float32)
        if self.colors is None:
            self.colors = np.full_like(self.coords, 0.5)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.float32)
        if self.coords.ndim != 2 or self.coords.shape[1] != 3:
            raise PointCloudError(f"coords must be [N, 3], got {self.coords.shape}")
        if self.colors.shape != self.coords.shape:
            raise PointCloudError(
                f"colors {self.colors.shape} must match coords {self.coords.shape}"
            )
        if len(self.coords) == 0:
            raise PointCloudError("point cloud has zero points")
        for name, a in (("coordinates", raw), ("colours", self.colors)):
            bad = ~np.isfinite(a).all(axis=1)
            if bad.any():
                raise PointCloudError(
                    f"{bad.sum()} of {len(a)} points have non-finite (NaN/inf) {name} "
                    f"(first: point {int(bad.argmax())})"
                )
        big = float(np.abs(raw).max())
        if big > MAX_COORD:
            raise PointCloudError(
                f"coordinates reach {big:.3g}; they must lie within ±{MAX_COORD:g} (float32 "
                "holds ±3.4e38; bounding-box sizes and the mesh mapped back to them need headroom)"
            )

    def __len__(self) -> int:
        return len(self.coords)

    # -- model space ---------------------------------------------------------------------------

    def to_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """Model-space tensor [N, 6]."""
        return to_model_space(
            torch.from_numpy(self.coords).to(device), torch.from_numpy(self.colors).to(device)
        )

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> PointCloud:
        """Build from a model-space tensor [N, 6]."""
        coords, colors = from_model_space(x.detach().float().cpu())
        return cls(coords.numpy(), colors.numpy())

    # -- geometry ------------------------------------------------------------------------------

    def subsample(self, k: int, method: str = "fps", seed: int = 0) -> PointCloud:
        """k points by farthest point sampling (``fps``, starting at a seeded index) or ``random``.

        FPS costs O(k·N); from a cloud of more than ``FPS_POOL`` × k points (a scan of millions)
        it picks among a seeded uniform random ``FPS_POOL`` × k of them, which covers the shape
        as well at a fraction of the time (4096 of 2M points: ~2 s instead of ~30 s).
        """
        g = torch.Generator().manual_seed(seed)
        if method == "fps":
            pool = np.arange(len(self))
            if len(self) > FPS_POOL * k > 0:
                pool = random_subsample(len(self), FPS_POOL * k, generator=g).numpy()
            start = int(torch.randint(len(pool), (1,), generator=g))
            coords = torch.from_numpy(self.coords[pool])
            idx = pool[farthest_point_sample(coords, k, start=start).numpy()]
        elif method == "random":
            idx = random_subsample(len(self), k, generator=g).numpy()
        else:
            raise ValueError(f"unknown subsample method {method!r} (fps | random)")
        return PointCloud(self.coords[idx], self.colors[idx])

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.ply`` (binary, float xyz + uchar rgb) or ``.npz`` (by suffix), atomically."""
        write_arrays(path, self.coords, self.colors)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PointCloud:
        """Read ``.ply`` (binary or ASCII, any tool) or ``.npz`` (ours, or point-e's coords,R,G,B).

        Colours in 0..255 or 0..1 are both read as [0, 1] (``pointcloud_io.colors_to_unit``).
        Every problem, from a directory or a broken link to a corrupt file, raises
        ``PointCloudError`` naming the file and what is wrong with it.
        """
        path = Path(path)
        with reading(path):
            return cls(*read_arrays(path))
