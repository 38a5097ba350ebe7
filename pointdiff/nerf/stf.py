"""STF mesh extraction: marching cubes on a signed-distance field, colours from a texture field.

Shap-E's convention: the field is sampled on a ``grid_size``³ grid spanning [−1, 1]³ (endpoints
included), **positive inside**, and the grid is padded with one layer of "outside" so every
surface closes at the box. Shap-E then places the padded grid's vertices over [−1, 1]³, which
shrinks the mesh by (G − 1)/(G + 1) about the origin; ``shrink=True`` keeps that (its released
meshes), ``False`` leaves the zero set where the field put it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pointdiff.meshing import TriMesh, marching_cubes

PointFn = Callable[[torch.Tensor], torch.Tensor]


def extract_mesh(
    sdf_fn: PointFn,
    color_fn: PointFn | None = None,
    grid_size: int = 128,
    shrink: bool = True,
    batch_size: int = 65536,
) -> TriMesh:
    """Mesh the zero set of ``sdf_fn`` and colour its vertices with ``color_fn``.

    :param sdf_fn: points [Q, 3] -> [Q], positive inside (Shap-E's STF SDF).
    :param color_fn: points [Q, 3] -> [Q, 3] sRGB in [0, 1], queried at the final vertices.
    :param grid_size: samples per axis over [−1, 1] (Shap-E: 128).
    :raises pointdiff.meshing.NoSurfaceError: the field is nowhere positive.
    """
    voxel = 2.0 / (grid_size - 1)
    inner = 1.0 + voxel / 2  # between the last grid sample and the padding layer

    def padded(points: torch.Tensor) -> torch.Tensor:
        # pointdiff's marching cubes wants negative inside; the padding layer is "outside" (+1)
        outside = (points.abs() > inner).any(dim=-1)
        # Query at Shap-E's exact float32 grid positions idx/(G − 1)·2 − 1: the field's highest
        # encoding frequency (2^14) turns a 1-ulp position difference into a visible one.
        idx = torch.round((points + 1.0) / voxel).clamp(0, grid_size - 1)
        with torch.no_grad():
            values = -sdf_fn(idx / (grid_size - 1) * 2.0 - 1.0).reshape(-1).float()
        return torch.where(outside, torch.ones_like(values), values)

    # the (G + 2)³ lattice at −1 − voxel + i·voxel: its inner G³ samples are Shap-E's grid
    mesh = marching_cubes(
        padded, grid_size=grid_size + 2, bound=1.0 + voxel, coarse_stride=1, batch_size=batch_size
    )
    verts = mesh.verts * ((grid_size - 1) / (grid_size + 1) if shrink else 1.0)
    colors = None
    if color_fn is not None:
        with torch.no_grad():
            q = torch.from_numpy(verts)
            colors = torch.cat([color_fn(c).float() for c in q.split(batch_size)]).cpu().numpy()
    return TriMesh(verts=verts, faces=mesh.faces, colors=colors)
