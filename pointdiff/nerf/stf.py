"""STF mesh extraction: marching cubes on a signed-distance field, colours from a texture field.

Shap-E's convention: the field is sampled on a ``grid_size``³ grid spanning [−1, 1]³ (endpoints
included), **positive inside**, and the grid is padded with one layer of "outside" so every
surface closes at the box. Shap-E then places the padded grid's vertices over [−1, 1]³, which
shrinks the mesh by (G − 1)/(G + 1) about the origin; ``shrink=True`` keeps that (its released
meshes), ``False`` leaves the zero set where the field put it.

The grid is evaluated coarse-to-fine (``pointdiff.meshing.evaluate_grid``): a lattice of every
``coarse_stride``-th sample first, then finer lattices only in blocks whose corners straddle zero
or come within a margin of it; the samples never queried keep the sign of their block (they
produce no triangles), so the mesh is the dense grid's exactly whenever every sign change of
the dense grid lies in a refined block. (Bit for bit when ``sdf_fn``'s value at a point does not
depend on the batch it comes in: float32 kernels may round the last bit differently with the
batch's size, so a vertex can move by an ulp.) Shap-E's field is a tanh of a learned SDF, not a
distance, so the margin is scaled by the field's own steepest slope L, first measured between
neighbouring samples of the first lattice: a block is refined when a corner is within
``band · L · (its half-diagonal)`` of zero. Afterwards the samples queried one voxel apart are
checked: if any pair is steeper than ``band · L``, the band was too narrow, L becomes that
slope and the evaluation goes again (no sample is queried twice; after three tries, every
sample). A noise field, steep everywhere, thus ends up dense, with the dense mesh.
**What it can miss:** a surface inside a block whose 8 corners all lie beyond the margin with
one sign, i.e. where the field crosses zero and back between coarse samples, more than ``band``
times steeper than the steepest slope between any queried neighbours (near the surface too): a
sheet, spike or blob thinner than a coarse block (``coarse_stride`` voxels) that no queried
sample comes near. A wider ``band`` (≥ 1) or a smaller ``coarse_stride`` narrows that;
``coarse_stride=1`` evaluates the dense grid, as Shap-E does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pointdiff.meshing import NoSurfaceError, TriMesh, marching_cubes

PointFn = Callable[[torch.Tensor], torch.Tensor]


def extract_mesh(
    sdf_fn: PointFn,
    color_fn: PointFn | None = None,
    grid_size: int = 128,
    shrink: bool = True,
    coarse_stride: int = 8,
    band: float = 1.5,
    batch_size: int = 8192,
) -> TriMesh:
    """Mesh the zero set of ``sdf_fn`` and colour its vertices with ``color_fn``.

    :param sdf_fn: points [Q, 3] -> [Q], positive inside (Shap-E's STF SDF).
    :param color_fn: points [Q, 3] -> [Q, 3] sRGB in [0, 1], queried at the final vertices.
    :param grid_size: samples per axis over [−1, 1] (Shap-E: 128).
    :param coarse_stride: first lattice of the coarse-to-fine evaluation (rounded down to a power
        of two); 1 = the dense grid.
    :param band: margin of the refined band in units of the field's measured slope (≥ 1; see
        above).
    :param batch_size: points per ``sdf_fn``/``color_fn`` call (8192 keeps an MLP's activations
        in cache: about 1.6× faster per point than 65536 on one CPU thread).
    :raises pointdiff.meshing.NoSurfaceError: the field is nowhere positive.
    """
    voxel = 2.0 / (grid_size - 1)
    inner = 1.0 + voxel / 2  # between the last grid sample and the padding layer
    grid = _CachedGrid(sdf_fn, grid_size, batch_size)

    def padded(points: torch.Tensor) -> torch.Tensor:
        # pointdiff's marching cubes wants negative inside; the padding layer is "outside" (+1)
        values = torch.ones(len(points))
        inside = (points.abs() <= inner).all(dim=-1)
        idx = torch.round((points[inside] + 1.0) / voxel).long().clamp(0, grid_size - 1)
        values[inside] = -grid(idx)
        return values

    stride = 1 << max(0, int(coarse_stride).bit_length() - 1)
    stride = min(stride, 1 << max(0, (grid_size + 1).bit_length() - 2))  # as evaluate_grid's
    slope = grid.steepest_slope(stride) if stride > 1 else 0.0
    for attempt in range(4):
        if attempt == 3:  # still steeper than assumed after three tries: every sample
            stride = 1
        # the (G + 2)³ lattice at −1 − voxel + i·voxel: its inner G³ samples are Shap-E's grid
        mesh, error = None, None
        try:
            mesh = marching_cubes(
                padded,
                grid_size=grid_size + 2,
                bound=1.0 + voxel,
                coarse_stride=stride,
                safety=band * slope,
                batch_size=batch_size,
            )
        except NoSurfaceError as e:
            error = e
        # The band assumed no slope above band × slope; neighbouring samples queried one voxel
        # apart may show a steeper one (a field rougher than its coarse samples): then widen
        # the band to what was seen and go again (known samples are not queried twice).
        seen = grid.steepest_slope(1)
        if stride == 1 or seen <= band * slope:
            break
        slope = seen
    if error is not None:
        raise error
    verts = mesh.verts * ((grid_size - 1) / (grid_size + 1) if shrink else 1.0)
    colors = None
    if color_fn is not None:
        with torch.no_grad():
            q = torch.from_numpy(verts)
            colors = torch.cat([color_fn(c).float() for c in q.split(batch_size)]).cpu().numpy()
    return TriMesh(verts=verts, faces=mesh.faces, colors=colors)


class _CachedGrid:
    """The field on the G³ grid, each sample queried at most once (in batches of ``batch``).

    Positions are Shap-E's exact float32 grid positions idx/(G − 1)·2 − 1: the field's highest
    encoding frequency (2^14) turns a 1-ulp position difference into a visible one."""

    def __init__(self, sdf_fn: PointFn, grid_size: int, batch: int):
        self.sdf_fn, self.size, self.batch = sdf_fn, grid_size, batch
        self.values = torch.zeros((grid_size,) * 3)
        self.known = torch.zeros((grid_size,) * 3, dtype=torch.bool)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """:param idx: [Q, 3] long grid indices. :return: [Q] field values."""
        g = self.size
        flat = (idx[:, 0] * g + idx[:, 1]) * g + idx[:, 2]
        values, known = self.values.view(-1), self.known.view(-1)
        new = flat[~known[flat]].unique()
        for chunk in new.split(self.batch):
            ijk = torch.stack([chunk // (g * g), chunk // g % g, chunk % g], dim=-1).float()
            with torch.no_grad():
                values[chunk] = self.sdf_fn(ijk / (g - 1) * 2.0 - 1.0).reshape(-1).float()
            known[chunk] = True
        return values[flat]

    def steepest_slope(self, stride: int) -> float:
        """max |Δf| / distance between axis neighbours ``stride`` samples apart, over the known
        pairs, querying the lattice of every ``stride``-th sample first when stride > 1 (field
        units per unit length; a distance field has 1)."""
        ticks = torch.arange(0, self.size, stride)
        sub = (slice(None, None, stride),) * 3
        if stride > 1:
            idx = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1)
            self(idx.reshape(-1, 3))
        f, k = self.values[sub], self.known[sub]
        steepest = 0.0
        for d in range(3):
            both = k.narrow(d, 0, len(ticks) - 1) & k.narrow(d, 1, len(ticks) - 1)
            diff = f.diff(dim=d).abs()[both]
            steepest = max(steepest, float(diff.max()) if len(diff) else 0.0)
        return steepest / (stride * 2.0 / (self.size - 1))
