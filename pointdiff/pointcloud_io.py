"""Point-cloud files: ``.ply`` (binary or ASCII, from any tool) and ``.npz`` (ours, or point-e's
``coords`` + ``R``, ``G``, ``B``), read into arrays and written atomically.

``PointCloud.load`` and ``PointCloud.save`` (``pointdiff.pointcloud``) are the way in; this module
holds the formats and :class:`PointCloudError`, which every check of a cloud or a cloud file
raises. Readers check declared sizes against the bytes that follow before allocating, so a
corrupt or hostile header is reported instead of exhausting memory.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pointdiff.atomic import atomic_path

#: what parsers raise on a corrupt file (numpy, zipfile, zlib and struct each have their own)
_UNREADABLE = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)


class PointCloudError(ValueError):
    """A point cloud (or cloud file) that cannot be used, with the reason."""


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(coords [N, 3], colours [N, 3] in [0, 1] or None) of a ``.ply`` or ``.npz`` file, as
    stored (``PointCloud`` validates them). Use inside ``reading(path)``."""
    if path.suffix.lower() == ".ply":
        return _read_ply(path)
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    raise PointCloudError(f"unsupported suffix {path.suffix!r} (.ply | .npz)")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Check that ``path`` is a readable file, then turn every error of the block (a bad format,
    a corrupt archive, too little memory, an invalid cloud) into a ``PointCloudError`` that
    names the file."""
    _check_readable_file(path)
    try:
        yield
    except PointCloudError as e:
        raise PointCloudError(f"{path}: {e}") from None
    except MemoryError:
        size = path.stat().st_size
        raise PointCloudError(f"{path}: not enough memory to load {size:,} bytes") from None
    except _UNREADABLE as e:
        raise PointCloudError(f"{path}: unreadable point cloud ({e})") from None


def write_arrays(path: str | os.PathLike, coords: np.ndarray, colors: np.ndarray) -> None:
    """Write ``.ply`` (binary, float xyz + uchar rgb) or ``.npz`` (by suffix), atomically."""
    path = Path(path)
    if path.suffix not in (".ply", ".npz"):
        raise PointCloudError(f"unsupported point-cloud suffix {path.suffix!r} (.ply | .npz)")
    with atomic_path(path) as tmp:
        if path.suffix == ".ply":
            _write_ply(tmp, coords, colors)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, coords=coords, colors=colors)


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


# PLY property types (both spellings) -> numpy type codes
_PLY_TYPES = {
    **dict.fromkeys(("char", "int8"), "i1"),
    **dict.fromkeys(("uchar", "uint8"), "u1"),
    **dict.fromkeys(("short", "int16"), "i2"),
    **dict.fromkeys(("ushort", "uint16"), "u2"),
    **dict.fromkeys(("int", "int32"), "i4"),
    **dict.fromkeys(("uint", "uint32"), "u4"),
    **dict.fromkeys(("float", "float32"), "f4"),
    **dict.fromkeys(("double", "float64"), "f8"),
}


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


def _read_ply_header(f) -> tuple[str, list[tuple[str, int, list]]]:
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
        fmt, elements = _read_ply_header(f)
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
