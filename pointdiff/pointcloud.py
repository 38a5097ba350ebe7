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
import zipfile
import zlib
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

#: ``PointCloud.subsample``'s FPS looks at no more than this many points per point it keeps.
FPS_POOL = 32

#: largest coordinate magnitude a cloud may have (see ``PointCloud``).
MAX_COORD = 1e37


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

    def normalized(self) -> PointCloud:
        """A copy centred on its bbox with largest side 1."""
        coords, _, _ = normalize_bbox(self.coords)
        return PointCloud(coords, self.colors.copy())

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
        """Read ``.ply`` (binary or ASCII, any tool) or ``.npz`` (ours, or point-e's coords,R,G,B).

        Colours in 0..255 or 0..1 are both read as [0, 1] (``colors_to_unit``). Every problem,
        from a directory or a broken link to a corrupt file, raises ``PointCloudError`` naming
        the file and what is wrong with it.
        """
        path = Path(path)
        _check_readable_file(path)
        try:
            if path.suffix.lower() == ".ply":
                coords, colors = _read_ply(path)
            elif path.suffix.lower() == ".npz":
                coords, colors = _read_npz(path)
            else:
                raise PointCloudError(f"unsupported suffix {path.suffix!r} (.ply | .npz)")
            return cls(coords, colors)
        except PointCloudError as e:
            raise PointCloudError(f"{path}: {e}") from None
        except MemoryError:
            size = path.stat().st_size
            raise PointCloudError(f"{path}: not enough memory to load {size:,} bytes") from None
        except (OSError, ValueError, KeyError, EOFError, struct.error, zipfile.BadZipFile,
                zlib.error) as e:  # fmt: skip
            raise PointCloudError(f"{path}: unreadable point cloud ({e})") from None


def _check_readable_file(path: Path) -> None:
    """Raise ``PointCloudError`` unless ``path`` is an existing, non-empty regular file."""
    if path.is_symlink() and not path.exists():
        raise PointCloudError(f"{path}: broken symbolic link (to {os.readlink(path)})")
    if path.is_dir():
        raise PointCloudError(f"{path}: is a directory, not a point-cloud file")
    if not path.exists():
        raise PointCloudError(f"{path}: no such file")
    if not path.is_file():
        raise PointCloudError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise PointCloudError(f"{path}: empty file (0 bytes)")


def colors_to_unit(colors: np.ndarray, stored: np.dtype | str | None = None) -> np.ndarray:
    """Colours as a file stores them -> float32 RGB in [0, 1]: the one rule for every reader.

    Floats are read as [0, 1] when they fit and as 0..255 otherwise (several tools write 0..255
    floats); integers are 8-bit, or 16-bit when a 2-byte type holds values above 255.
    Negative values or values beyond those ranges raise ``PointCloudError``.

    :param colors: [N, 3].
    :param stored: the type in the file when ``colors`` was already converted (ASCII PLY).
    """
    c = np.asarray(colors)
    kind = np.dtype(stored if stored is not None else c.dtype)
    if kind.kind not in "iuf":
        raise PointCloudError(f"colours must be numbers, got dtype {kind}")
    c = c.astype(np.float64)
    if c.size == 0 or not np.isfinite(c).all():
        return c.astype(np.float32)  # PointCloud reports the empty or NaN cloud
    hi = c.max()
    if kind.kind == "f":
        full = 1.0 if hi <= 1.0 else 255.0
    else:
        full = 65535.0 if kind.itemsize == 2 and hi > 255 else 255.0
    if c.min() < 0 or hi > full:
        raise PointCloudError(
            f"colours range from {c.min():g} to {hi:g}; expected 0..1 or 0..255"
            + (" (or 0..65535 for 16-bit integers)" if kind.kind != "f" else "")
        )
    return (c / full).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# File formats


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not zipfile.is_zipfile(path):
        raise PointCloudError("not a valid .npz file (not a zip archive as np.savez writes)")
    _check_npz_sizes(path)
    with np.load(path, allow_pickle=False) as d:
        if "coords" not in d:
            raise PointCloudError(f"npz has no 'coords' array (keys: {sorted(d.files)})")
        coords = d["coords"]
        if "colors" in d:
            colors = d["colors"]
        elif all(k in d for k in "RGB"):  # point-e's PointCloud.save format, channels in [0, 1]
            colors = np.stack([d["R"], d["G"], d["B"]], axis=-1)
        else:
            return coords, None
    if colors.ndim == 2 and colors.shape[1] == 4:  # RGBA: a mesh has no use for alpha
        colors = colors[:, :3]
    return coords, colors_to_unit(colors)


def _check_npz_sizes(path: Path) -> None:
    """Compare each array's declared shape with the bytes the archive holds for it, so a corrupt
    or hostile header is reported instead of allocated."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = npy.read_magic(f)
                if version not in readers:
                    continue  # np.load reports it
                shape, _, dtype = readers[version](f)
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if need > info.file_size:
                raise PointCloudError(
                    f"array {info.filename!r} declares shape {shape} ({need:,} bytes) but the "
                    f"archive holds {info.file_size:,} bytes for it: truncated or corrupt file"
                )


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


_MAX_PLY_HEADER = 1 << 20  # bytes; real headers are a few hundred


def read_ply_header(f) -> tuple[str, list[tuple[str, int, list]]]:
    """Parse a PLY header from a binary file object.

    :return: (format, elements) with elements = [(name, count, [(prop, dtype | ("list", ...))])].
    """
    if f.readline(64).strip() != b"ply":
        raise PointCloudError("not a PLY file (missing 'ply' magic)")
    fmt, elements, size = None, [], 0
    while True:
        line = f.readline(4096)  # bounded: a binary file without newlines is not read whole
        size += len(line)
        if not line:
            raise PointCloudError("truncated PLY header (no end_header)")
        if size > _MAX_PLY_HEADER:
            raise PointCloudError("PLY header longer than 1 MiB without end_header: corrupt file")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
                if elements[-1][1] < 0:
                    raise ValueError("negative count")
            elif words[0] == "property":
                if words[1] == "list":
                    elements[-1][2].append(
                        (words[4], ("list", _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
                    )
                else:
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        except (IndexError, KeyError, ValueError) as e:
            why = f"unknown type {e}" if isinstance(e, KeyError) else str(e) or "too few words"
            line = line.decode("ascii", "replace").strip()[:80]
            raise PointCloudError(f"malformed PLY header line {line!r} ({why})") from None
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
        # Check the declared count against the bytes that follow before allocating for it: a
        # corrupt count (say 10^12) is then a clear error, not a MemoryError.
        left = os.fstat(f.fileno()).st_size - f.tell()
        types = dict(props)
        if fmt == "ascii":
            need = n * 2 * len(props) - 1  # at least one digit and one separator per value
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, endian + t) for name, t in props])
            need = dtype.itemsize * n
        if need > left:
            raise PointCloudError(
                f"truncated PLY vertex data: the header declares {n:,} vertices (at least "
                f"{need:,} bytes) but {left:,} bytes follow it"
            )
        if fmt == "ascii":
            data = np.loadtxt(f, max_rows=n, ndmin=2)
            if data.shape[0] != n or (n and data.shape[1] != len(props)):
                raise PointCloudError(
                    f"expected {n} vertices of {len(props)} values, found {data.shape[0]} rows "
                    f"of {data.shape[1]}"
                )
            cols = {name: data[:, i] for i, (name, _) in enumerate(props)}
        else:
            arr = np.frombuffer(f.read(need), dtype=dtype, count=n)
            cols = {name: arr[name] for name in arr.dtype.names}
    for axis in "xyz":
        if axis not in cols:
            raise PointCloudError(f"PLY vertices have no '{axis}' property")
    coords = np.stack([cols["x"], cols["y"], cols["z"]], axis=-1)
    names = next(
        (c for c in (("red", "green", "blue"), ("r", "g", "b")) if all(k in cols for k in c)), None
    )
    if names is None:
        return coords, None
    colors = np.stack([cols[k] for k in names], axis=-1)
    return coords, colors_to_unit(colors, stored=types[names[0]])
