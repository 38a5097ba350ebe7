"""Coloured point clouds: the one owner of normalisation, model space, file I/O and subsampling.

Conventions (the whole project uses them; nothing else re-implements them):

* **Object space**: coordinates centred on the bounding box, largest side 1, so xyz ∈ [-0.5, 0.5];
  **Z is up** (point-e's convention; Y-up sources are converted at load with ``y_up_to_z_up``).
  Colours are float32 RGB in [0, 1].
* **Model space** (what networks see, Point-E's scaling): xyz × 2 ∈ [-1, 1] and rgb × 2 − 1 ∈
  [-1, 1] (equivalently 0..255 / 127.5 − 1). Tensors are channels-last ``[..., N, 6]``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: scale and bias mapping object-space [xyz, rgb∈[0,1]] to model space (Point-E convention).
_MODEL_SCALE = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], dtype=np.float32)
_MODEL_BIAS = np.array([0.0, 0.0, 0.0, -1.0, -1.0, -1.0], dtype=np.float32)


#: σ (object units) of the extra displacement of generator-like "stray" points, used wherever
#: clouds are given such defects on purpose (SDF and classifier augmentation, noisy benchmarks): a
#: small generator scatters points around thin parts (measured on pointdiff-small's samples, 2–4 %
#: of points lie > 3× the median k-NN spacing from the rest).
STRAY_SIGMA = 0.05


class PointCloudError(ValueError):
    """A point cloud (or cloud file) that cannot be used, with the reason."""


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
        raise PointCloudError(f"degenerate bounding box (largest side {scale})")
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
        self.coords = np.ascontiguousarray(self.coords, dtype=np.float32)
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
        if not (np.isfinite(self.coords).all() and np.isfinite(self.colors).all()):
            raise PointCloudError("point cloud has non-finite (NaN/inf) values")

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

    def normalized(self) -> PointCloud:
        """A copy centred on its bbox with largest side 1."""
        coords, _, _ = normalize_bbox(self.coords)
        return PointCloud(coords, self.colors.copy())

    def subsample(self, k: int, method: str = "fps", seed: int = 0) -> PointCloud:
        """k points by farthest point sampling (``fps``, starting at a seeded index) or ``random``."""
        g = torch.Generator().manual_seed(seed)
        if method == "fps":
            start = int(torch.randint(len(self), (1,), generator=g))
            idx = farthest_point_sample(torch.from_numpy(self.coords), k, start=start).numpy()
        elif method == "random":
            idx = random_subsample(len(self), k, generator=g).numpy()
        else:
            raise ValueError(f"unknown subsample method {method!r} (fps | random)")
        return PointCloud(self.coords[idx], self.colors[idx])

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.ply`` (binary, float xyz + uchar rgb) or ``.npz`` (by suffix), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".ply":
            _write_ply(tmp, self.coords, self.colors)
        elif path.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, coords=self.coords, colors=self.colors)
        else:
            raise PointCloudError(f"unsupported point-cloud suffix {path.suffix!r} (.ply | .npz)")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PointCloud:
        """Read ``.ply`` (binary or ASCII, any tool) or ``.npz`` (ours, or point-e's coords,R,G,B)."""
        path = Path(path)
        if not path.is_file():
            raise PointCloudError(f"{path}: no such file")
        try:
            if path.suffix == ".ply":
                coords, colors = _read_ply(path)
            elif path.suffix == ".npz":
                coords, colors = _read_npz(path)
            else:
                raise PointCloudError(f"unsupported suffix {path.suffix!r} (.ply | .npz)")
        except PointCloudError as e:
            raise PointCloudError(f"{path}: {e}") from None
        except (OSError, ValueError, KeyError, struct.error) as e:
            raise PointCloudError(f"{path}: unreadable point cloud ({e})") from None
        try:
            return cls(coords, colors)
        except PointCloudError as e:
            raise PointCloudError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# File formats


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as d:
        if "coords" not in d:
            raise PointCloudError(f"npz has no 'coords' array (keys: {sorted(d.files)})")
        coords = d["coords"]
        if "colors" in d:
            colors = d["colors"]
        elif all(k in d for k in "RGB"):  # point-e's PointCloud.save format, channels in [0, 1]
            colors = np.stack([d["R"], d["G"], d["B"]], axis=-1)
        else:
            colors = None
    return coords, colors


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _write_ply(path: Path, coords: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY: float x,y,z + uchar red,green,blue (one vectorised write)."""
    n = len(coords)
    rec = np.empty(n, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rec["xyz"] = coords
    rec["rgb"] = np.round(np.clip(colors, 0, 1) * 255).astype(np.uint8)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


def read_ply_header(f) -> tuple[str, list[tuple[str, int, list]]]:
    """Parse a PLY header from a binary file object.

    :return: (format, elements) with elements = [(name, count, [(prop, dtype | ("list", ...))])].
    """
    if f.readline().strip() != b"ply":
        raise PointCloudError("not a PLY file (missing 'ply' magic)")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise PointCloudError("truncated PLY header (no end_header)")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list":
                elements[-1][2].append(
                    (words[4], ("list", _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
                )
            else:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "end_header":
            break
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointCloudError(f"unsupported PLY format {fmt!r}")
    return fmt, elements


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertex positions and colours of any PLY (ASCII or binary); other elements are ignored."""
    with open(path, "rb") as f:
        fmt, elements = read_ply_header(f)
        if not elements or elements[0][0] != "vertex":
            raise PointCloudError("PLY has no leading 'vertex' element")
        _, n, props = elements[0]
        if any(isinstance(t, tuple) for _, t in props):
            raise PointCloudError("list properties on vertices are not supported")
        if fmt == "ascii":
            data = np.loadtxt(f, max_rows=n, ndmin=2)
            if data.shape[0] != n:
                raise PointCloudError(f"expected {n} vertices, found {data.shape[0]}")
            cols = {name: data[:, i] for i, (name, _) in enumerate(props)}
            types = dict(props)
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, endian + t) for name, t in props])
            buf = f.read(dtype.itemsize * n)
            if len(buf) < dtype.itemsize * n:
                raise PointCloudError("truncated PLY vertex data")
            arr = np.frombuffer(buf, dtype=dtype, count=n)
            cols = {name: arr[name] for name in arr.dtype.names}
            types = dict(props)
    for axis in "xyz":
        if axis not in cols:
            raise PointCloudError(f"PLY vertices have no '{axis}' property")
    coords = np.stack([cols["x"], cols["y"], cols["z"]], axis=-1).astype(np.float32)
    names = next(
        (c for c in (("red", "green", "blue"), ("r", "g", "b")) if all(k in cols for k in c)), None
    )
    if names is None:
        return coords, None
    colors = np.stack([cols[k] for k in names], axis=-1).astype(np.float32)
    if types[names[0]].startswith("u1") or types[names[0]] == "u1" or colors.max() > 1.0:
        colors = colors / 255.0
    return coords, colors
