"""The mesh type: ``TriMesh`` (object space, Z-up), its checks and its files.

``TriMesh.save`` writes PLY, OBJ or GLB by suffix (``meshing.export``); ``check_mesh_output``
says before any work whether a path can take a mesh. ``MeshError`` is every meshing failure
with its reason; ``NoSurfaceError`` is the one case a caller may answer with another method:
an SDF whose field never crosses the level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pointdiff.meshing import export


class MeshError(ValueError):
    """Bad input to meshing or export (empty/NaN data, bad grid, unwritable path), with the
    reason."""


class NoSurfaceError(MeshError):
    """The SDF never crosses the level inside the grid: there is no surface to mesh."""


@dataclass
class TriMesh:
    """A triangle mesh in object space (Z-up).

    :param verts: [V, 3] float32.
    :param faces: [F, 3] int64 vertex indices, counter-clockwise seen from outside.
    :param colors: [V, 3] float32 sRGB in [0, 1], or None.
    :param normals: [V, 3] float32 unit vertex normals, or None (computed on demand).
    """

    verts: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __post_init__(self):
        verts = np.ascontiguousarray(self.verts, dtype=np.float32)
        faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if verts.ndim != 2 or verts.shape[1] != 3:
            raise MeshError(f"verts must be [V, 3], got {verts.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise MeshError(f"faces must be [F, 3], got {faces.shape}")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
            raise MeshError(f"face indices out of range for {len(verts)} vertices")
        if not np.isfinite(verts).all():
            raise MeshError("mesh vertices contain NaN/inf")
        self.verts, self.faces = verts, faces
        for name in ("colors", "normals"):
            a = getattr(self, name)
            if a is not None:
                a = np.ascontiguousarray(a, dtype=np.float32)
                if a.shape != verts.shape:
                    raise MeshError(f"{name} {a.shape} must match verts {verts.shape}")
                if not np.isfinite(a).all():
                    raise MeshError(f"mesh {name} contain NaN/inf")
                setattr(self, name, a)

    @property
    def num_verts(self) -> int:
        return len(self.verts)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def vertex_normals(self) -> np.ndarray:
        """[V, 3] unit normals: the stored ones, else area-weighted face normals."""
        if self.normals is not None:
            return self.normals
        # Directions do not depend on scale: work in float64 on the box scaled to unit size, so
        # neither huge (1e30: the cross product overflows float32) nor tiny coordinates (below
        # the 1e-12 floor) turn normals into NaN or zero.
        v = self.verts.astype(np.float64)
        if len(v):
            v = (v - v.min(0)) / max(float(np.ptp(v, axis=0).max()), 1e-300)
        tri = v[self.faces]  # [F, 3, 3]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2·area
        vn = np.stack(
            [
                np.bincount(self.faces.ravel(), np.repeat(fn[:, i], 3), minlength=len(self.verts))
                for i in range(3)
            ],
            axis=1,
        )
        return (vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )

    def with_colors(self, colors: np.ndarray) -> TriMesh:
        return replace(self, colors=colors)

    def save(self, path: str | os.PathLike) -> None:
        """Write by suffix: ``.ply`` (binary, Z-up, uchar colours), ``.obj`` (+ ``.mtl``, Y-up,
        ``v x y z r g b``) or ``.glb`` (glTF 2.0, Y-up, ``COLOR_0``). See ``meshing.export``."""
        self.__post_init__()  # fields may have been reassigned since construction
        path = check_mesh_output(path)
        normals = self.vertex_normals()
        if not np.isfinite(normals).all():  # never write a file whose shading is NaN
            raise MeshError(f"cannot write {path}: vertex normals contain NaN/inf")
        try:
            _WRITERS[path.suffix.lower()](path, self.verts, self.faces, self.colors, normals)
        except OSError as e:
            raise MeshError(f"cannot write {path}: {e}") from None


_WRITERS = {".ply": export.write_ply, ".obj": export.write_obj}
_WRITERS[".glb"] = export.write_glb


def check_mesh_output(path: str | os.PathLike) -> Path:
    """Raise ``MeshError`` unless a mesh can be written to ``path``: a supported suffix, an
    existing writable directory, and no directory in the way. Cheap, so callers run it before
    hours of work rather than after.
    """
    path = Path(path)
    if path.suffix.lower() not in _WRITERS:
        raise MeshError(f"unsupported mesh suffix {path.suffix!r} ({' | '.join(_WRITERS)})")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise MeshError(f"cannot write {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise MeshError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MeshError(f"cannot write {path}: directory {parent} is not writable")
    for target in (path, path.with_suffix(".mtl")) if path.suffix.lower() == ".obj" else (path,):
        if target.is_dir():
            raise MeshError(f"cannot write {target}: it is a directory")
    return path
