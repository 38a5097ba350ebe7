"""Reader for ``.binvox`` voxel grids (ShapeNet's ``model_normalized.{solid,surface}.binvox``).

Format (Patrick Min's binvox): an ASCII header ``#binvox 1``, ``dim D H W``, ``translate tx ty
tz``, ``scale s``, ``data``, then run-length pairs of bytes (value, count). The decoded flat
array, reshaped to ``dim``, is indexed ``[x, z, y]``; ``Voxels.occupancy`` is stored ``[x, y, z]``.
A point ``p`` lies in voxel ``floor((p - translate) / scale * dim)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class BinvoxError(ValueError):
    """A file that is not a readable binvox grid."""


@dataclass
class Voxels:
    """A boolean occupancy grid ``occupancy`` [X, Y, Z] covering the cube
    ``translate + [0, scale]³``."""

    occupancy: np.ndarray
    translate: np.ndarray
    scale: float

    def lookup(self, points: np.ndarray) -> np.ndarray:
        """[N] bool occupancy at points [N, 3] (False outside the grid)."""
        dims = np.array(self.occupancy.shape)
        ijk = np.floor((np.asarray(points) - self.translate) / self.scale * dims).astype(np.int64)
        ok = ((ijk >= 0) & (ijk < dims)).all(axis=1)
        out = np.zeros(len(ijk), dtype=bool)
        i = ijk[ok]
        out[ok] = self.occupancy[i[:, 0], i[:, 1], i[:, 2]]
        return out

    @property
    def voxel_size(self) -> float:
        return self.scale / self.occupancy.shape[0]


def read_binvox(path: str | os.PathLike) -> Voxels:
    """Read a binvox file into ``Voxels`` (occupancy indexed [x, y, z])."""
    path = Path(path)
    with open(path, "rb") as f:
        if not f.readline().startswith(b"#binvox"):
            raise BinvoxError(f"{path}: not a binvox file")
        dims = translate = scale = None
        while True:
            line = f.readline()
            if not line:
                raise BinvoxError(f"{path}: header has no 'data' line")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "dim":
                dims = tuple(int(w) for w in words[1:4])
            elif words[0] == "translate":
                translate = np.array([float(w) for w in words[1:4]])
            elif words[0] == "scale":
                scale = float(words[1])
            elif words[0] == "data":
                break
        if dims is None or translate is None or scale is None:
            raise BinvoxError(f"{path}: header lacks dim/translate/scale")
        raw = np.frombuffer(f.read(), dtype=np.uint8)
    if len(raw) % 2:
        raise BinvoxError(f"{path}: odd number of run-length bytes")
    values, counts = raw[::2], raw[1::2].astype(np.int64)
    if counts.sum() != np.prod(dims):
        raise BinvoxError(f"{path}: run lengths sum to {counts.sum()}, expected {np.prod(dims)}")
    flat = np.repeat(values.astype(bool), counts)
    occupancy = flat.reshape(dims).transpose(0, 2, 1)  # stored [x, z, y] → [x, y, z]
    return Voxels(np.ascontiguousarray(occupancy), translate, scale)
