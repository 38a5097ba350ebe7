"""Coarse-to-fine marching cubes over an SDF callable.

``marching_cubes`` takes any SDF *callable* (queries [Q, 3] -> [Q], object space, negative
inside), never a model: the pipeline builds the callable (``SDFModel.query_fn``), so this module
imports only numpy/torch/scikit-image and the mesh type.

Coarse-to-fine evaluation (``evaluate_grid``). The fine grid has ``grid_size`` samples per axis
at ``-bound + i·voxel`` (voxel = 2·bound / (grid_size − 1), Point-E's grid). We first evaluate
the lattice of every ``coarse_stride``-th sample, then halve the stride level by level. A block
(a cube between neighbouring lattice samples) is *active* when its 8 corner values straddle the
level or one corner lies within ``safety × half the block diagonal`` of it; only the next
lattice's samples inside active blocks are queried. For a true SDF (1-Lipschitz) a surface point
inside a block is within half a diagonal of the nearest corner, whose |value| is then at most
that; so every cell holding a crossing on the dense grid lies in an active finest block whose
corners were all evaluated exactly, and the mesh is identical to the dense one (tests check this
on sphere, box and torus, with an sdf_fn whose value at a point does not depend on the batch).
Samples never queried (far from the surface) are **filled by trilinear interpolation of the
coarsest block judged inactive**: its corners share one sign and lie more than the margin from
the level, so the fill keeps that sign and that distance, never crosses the level and produces
no triangles (its children are never active, so the fill is final). A learned SDF is only
approximately Lipschitz; ``safety`` (default 1.5) widens the band, and a head trained on clamped
targets under-estimates far distances, which only widens the band (safe, slightly slower).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pointdiff.meshing.mesh import MeshError, NoSurfaceError, TriMesh

SDFFn = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


# ----------------------------------------------------------------------------------------------
# Grid evaluation (dense or coarse-to-fine)


def _query(sdf_fn: SDFFn, ijk: np.ndarray, bound: float, voxel: float, batch_size: int):
    """Evaluate sdf_fn at integer grid coordinates ijk [Q, 3] in batches -> float32 [Q]."""
    out = np.empty(len(ijk), dtype=np.float32)
    for s in range(0, len(ijk), batch_size):
        q = torch.from_numpy(ijk[s : s + batch_size].astype(np.float32) * voxel - bound)
        v = sdf_fn(q)
        v = v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if v.shape != (len(q),):
            raise MeshError(f"sdf_fn returned shape {v.shape} for {len(q)} queries; want [Q]")
        if not np.isfinite(v).all():
            raise MeshError("sdf_fn returned NaN/inf values")
        out[s : s + len(q)] = v
    return out


def _upsample(lattice: np.ndarray, size: int) -> np.ndarray:
    """Trilinear upsampling of an [m, m, m] lattice to [size, size, size] (corners aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(lattice))[None, None]
    return F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0].numpy()


def _active_blocks(lattice: np.ndarray, level: float, margin: float) -> np.ndarray:
    """[m, m, m] corner values -> [m-1]^3 bool: may the block hold the level set?"""
    m = lattice.shape[0]
    corners = np.stack(
        [
            lattice[i : m - 1 + i, j : m - 1 + j, k : m - 1 + k]
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ]
    )  # [8, m-1, m-1, m-1]
    lo, hi = corners.min(0), corners.max(0)
    near = np.abs(corners - level).min(0) < margin
    return ((lo <= level) & (hi >= level)) | near


def evaluate_grid(
    sdf_fn: SDFFn,
    grid_size: int = 128,
    bound: float = 0.51,
    level: float = 0.0,
    coarse_stride: int = 8,
    safety: float = 1.5,
    batch_size: int = 32768,
) -> tuple[np.ndarray, int]:
    """SDF values on the ``grid_size``³ grid over [-bound, bound]³, dense or coarse-to-fine.

    :param coarse_stride: stride of the first lattice (rounded down to a power of two); 1 = dense.
    :return: (volume [G, G, G] float32 indexed [x, y, z], number of sdf_fn queries made).
    """
    if not isinstance(grid_size, int) or grid_size < 2:
        raise MeshError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    if not bound > 0:
        raise MeshError(f"bound must be positive, got {bound!r}")
    if batch_size < 1:
        raise MeshError(f"batch_size must be >= 1, got {batch_size}")
    voxel = 2 * bound / (grid_size - 1)
    stride = 1 << max(0, int(coarse_stride).bit_length() - 1)  # largest power of 2 <= it
    stride = min(stride, 1 << max(0, (grid_size - 1).bit_length() - 2))  # >= 3 samples per axis
    if stride <= 1:
        ijk = np.stack(np.meshgrid(*[np.arange(grid_size)] * 3, indexing="ij"), -1).reshape(-1, 3)
        vol = _query(sdf_fn, ijk, bound, voxel, batch_size).reshape((grid_size,) * 3)
        return vol, len(ijk)

    # Pad the grid to n = k·stride + 1 samples so every lattice is uniform and nested; the few
    # padding samples lie just outside the box and are cropped at the end.
    n = -(-(grid_size - 1) // stride) * stride + 1
    m = (n - 1) // stride + 1
    ijk = np.stack(np.meshgrid(*[np.arange(m) * stride] * 3, indexing="ij"), -1).reshape(-1, 3)
    lattice = _query(sdf_fn, ijk, bound, voxel, batch_size).reshape(m, m, m)
    known = np.ones((m, m, m), dtype=bool)  # which lattice values are exact (queried)
    num_queries = len(ijk)

    while stride > 1:
        margin = safety * stride * voxel * np.sqrt(3.0) / 2  # safety × half-diagonal
        active = _active_blocks(lattice, level, margin)  # [m-1]^3
        # Halve the stride: new sample p lies in (the closure of) blocks (p-1)//2 and p//2, and
        # is needed when one of those is active. Active blocks only ever lie inside active
        # parents (a trilinear fill keeps its corners' sign and distance), so their corners are
        # exact values.
        stride, m2 = stride // 2, 2 * m - 1
        p = np.arange(m2)
        lo_blk, hi_blk = np.maximum((p - 1) // 2, 0), np.minimum(p // 2, m - 2)
        need = np.zeros((m2,) * 3, dtype=bool)
        for bx in (lo_blk, hi_blk):
            for by in (lo_blk, hi_blk):
                for bz in (lo_blk, hi_blk):
                    need |= active[np.ix_(bx, by, bz)]
        known2 = np.zeros((m2,) * 3, dtype=bool)
        known2[::2, ::2, ::2] = known
        new = np.argwhere(need & ~known2)
        # Midpoint subdivision keeps the old samples exactly and fills the rest trilinearly
        # (trilinear reproduces trilinear, so a far block's fill is its coarsest interpolation).
        lattice = _upsample(lattice, m2)
        lattice[tuple(new.T)] = _query(sdf_fn, new * stride, bound, voxel, batch_size)
        known2[tuple(new.T)] = True
        known, m = known2, m2
        num_queries += len(new)
    vol = lattice
    return vol[:grid_size, :grid_size, :grid_size], num_queries


# ----------------------------------------------------------------------------------------------
# Marching cubes


def marching_cubes(
    sdf_fn: SDFFn,
    grid_size: int = 128,
    bound: float = 0.51,
    level: float = 0.0,
    **grid_kwargs: float,
) -> TriMesh:
    """Mesh the level set of an SDF callable with scikit-image's marching cubes (Lewiner).

    :param sdf_fn: queries [Q, 3] float32 tensor (object space) -> [Q] (tensor or array),
        negative inside.
    :param grid_size: samples per axis over [-bound, bound] (Point-E: 128 for evals).
    :param grid_kwargs: ``coarse_stride`` (1 = dense grid), ``safety`` and ``batch_size`` of the
        coarse-to-fine evaluation (``evaluate_grid``, which holds their defaults).
    :return: an uncoloured ``TriMesh`` with outward-facing (CCW) faces.
    """
    from skimage import measure  # scikit-image is heavy to import; only meshing needs it

    vol, _ = evaluate_grid(sdf_fn, grid_size, bound, level, **grid_kwargs)
    if not (vol.min() < level < vol.max()):
        raise NoSurfaceError(
            f"the SDF never crosses level {level} inside the grid (values in "
            f"[{vol.min():.3g}, {vol.max():.3g}]): no surface to mesh"
        )
    voxel = 2 * bound / (grid_size - 1)
    verts, faces, _, _ = measure.marching_cubes(
        vol, level=level, spacing=(voxel,) * 3, allow_degenerate=False
    )
    # skimage's winding makes faces point towards increasing values: outward for negative-inside
    # SDFs (Point-E swaps two corners because its SDF is positive inside).
    return TriMesh(verts=verts - bound, faces=faces)
