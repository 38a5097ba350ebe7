"""Triangle meshes from point clouds: ``TriMesh``, coarse-to-fine marching cubes, colours, Poisson.

``marching_cubes`` takes any SDF *callable* (queries [Q, 3] -> [Q], object space, negative
inside), never a model: the pipeline builds the callable (``SDFModel.query_fn``), so this module
imports only config-free numpy/torch/scikit-image and ``pointcloud``.

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

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pointdiff.meshing import export
from pointdiff.pointcloud import PointCloud, PointCloudError

SDFFn = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


class MeshError(ValueError):
    """Bad input to meshing or export (empty/NaN data, bad grid, unwritable path), with the reason."""


# ----------------------------------------------------------------------------------------------
# The mesh type


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
# Marching cubes and colours


def marching_cubes(
    sdf_fn: SDFFn,
    grid_size: int = 128,
    bound: float = 0.51,
    level: float = 0.0,
    coarse_stride: int = 8,
    safety: float = 1.5,
    batch_size: int = 32768,
) -> TriMesh:
    """Mesh the level set of an SDF callable with scikit-image's marching cubes (Lewiner).

    :param sdf_fn: queries [Q, 3] float32 tensor (object space) -> [Q] (tensor or array),
        negative inside.
    :param grid_size: samples per axis over [-bound, bound] (Point-E: 128 for evals).
    :param coarse_stride: first-lattice stride of the coarse-to-fine evaluation; 1 = dense grid.
    :return: an uncoloured ``TriMesh`` with outward-facing (CCW) faces.
    """
    from skimage import measure  # scikit-image is heavy to import; only meshing needs it

    vol, _ = evaluate_grid(sdf_fn, grid_size, bound, level, coarse_stride, safety, batch_size)
    if not (vol.min() < level < vol.max()):
        raise MeshError(
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


def vertex_colors_from_cloud(verts: np.ndarray, cloud: PointCloud, k: int = 4) -> np.ndarray:
    """Colour vertices by inverse-squared-distance weighting of their k nearest cloud points.

    Point-E copies the single nearest point's colour; averaging a few removes the speckle that
    sampling noise in generated clouds leaves on the mesh, and a vertex lying on a point still
    takes that point's colour. A k-d tree finds the neighbours: memory O(N + V·k), so a scan of
    millions of points colours a mesh of millions of vertices (a dense [V, N] distance matrix
    would need V·N·4 bytes, 32 GB for 4096 vertices of a 2M-point cloud).

    :param verts: [V, 3] object space.
    :return: [V, 3] float32 sRGB in [0, 1].
    """
    from scipy.spatial import cKDTree

    v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    k = min(k, len(cloud))
    d, idx = cKDTree(cloud.coords).query(v, k)
    d, idx = d.reshape(len(v), k), idx.reshape(len(v), k)  # k = 1 returns [V]
    w = 1.0 / (d * d + 1e-8)  # [V, k]
    out = (w[..., None] * cloud.colors[idx]).sum(1) / w.sum(1, keepdims=True)
    return np.clip(out, 0, 1).astype(np.float32)


def snap_to_cloud(mesh: TriMesh, cloud: PointCloud, k: int = 16, max_dist: float = 0.03) -> TriMesh:
    """Move each vertex onto the plane fitted to its k nearest cloud points (point-set surface
    projection); faces, hence topology and watertightness, are unchanged.

    A learned SDF decides *where* the surface is and what is inside (filling gaps, ignoring
    strays) but is smooth at the scale of its training; the cloud says more precisely where the
    surface passes. Projecting onto the local least-squares plane (centroid c of the k
    neighbours, normal n = their covariance's smallest eigenvector): ``v' = v - ((v - c)·n) n``,
    which also averages out the points' noise along n. A vertex farther than ``max_dist`` from
    its centroid (surface the cloud does not support) stays where the SDF put it, and the move
    is capped at ``max_dist``.

    :param mesh: object space, like the cloud.
    :return: a new mesh (colours kept; normals recomputed on demand).
    """
    from scipy.spatial import cKDTree

    if mesh.num_verts == 0 or len(cloud) < 3:
        return mesh
    k = min(k, len(cloud))
    pts = cloud.coords.astype(np.float64)
    v = mesh.verts.astype(np.float64)
    _, idx = cKDTree(pts).query(v, k)
    nb = pts[idx]  # [V, k, 3]
    c = nb.mean(1)
    d = nb - c[:, None]
    _, vecs = np.linalg.eigh(np.einsum("vki,vkj->vij", d, d))
    n = vecs[:, :, 0]  # smallest eigenvalue's eigenvector
    move = -np.einsum("vi,vi->v", v - c, n)[:, None] * n
    length = np.linalg.norm(move, axis=1, keepdims=True)
    move *= np.minimum(1.0, max_dist / np.maximum(length, 1e-12))
    near = np.linalg.norm(v - c, axis=1) <= max_dist
    out = np.where(near[:, None], v + move, v).astype(np.float32)
    return TriMesh(out, mesh.faces, mesh.colors)


# ----------------------------------------------------------------------------------------------
# Whole reconstructions


#: fewest points a cloud needs to be meshed: a surface is fitted to neighbourhoods (Poisson's
#: normals use 20 neighbours, snapping 16); Poisson's sphere from 16 random points is 15 % small.
MIN_MESH_POINTS = 32

#: Poisson reconstructs from at most this many points (uniformly drawn; colours still come from
#: all): its normal orientation grows faster than linearly (100k points: ~17 s, 300k: ~60 s on
#: one core), and a depth-8 octree gains little from more.
POISSON_MAX_POINTS = 50_000


def check_meshable(cloud: PointCloud) -> None:
    """Raise ``PointCloudError`` (not ``MeshError``: the cloud, not the method, is at fault, so
    no fallback method should be tried) when the cloud has too few points to mesh."""
    if len(cloud) < MIN_MESH_POINTS:
        raise PointCloudError(
            f"the cloud has {len(cloud)} points: too few to mesh (minimum {MIN_MESH_POINTS})"
        )


def poisson_mesh(
    cloud: PointCloud,
    depth: int = 8,
    trim_quantile: float = 0.02,
    max_points: int | None = None,
) -> TriMesh:
    """Screened Poisson reconstruction (open3d) with k-NN vertex colours: the baseline.

    Normals are estimated (20-NN PCA) and oriented by a consistent tangent-plane propagation
    (away from the centroid where that propagation fails, e.g. qhull on coplanar points);
    the ``trim_quantile`` lowest-density vertices (Poisson's extrapolated skirt) are removed and
    the result cropped to the cloud's bounding box (+2 %). Faces are flipped if the enclosed
    volume comes out negative (normals oriented inward as a whole). A cloud of more than
    ``max_points`` (default ``POISSON_MAX_POINTS``) points is reconstructed from a seeded
    random ``max_points`` of them (with a warning saying so) and coloured from all of them.
    """
    import open3d as o3d  # heavy; only this baseline needs it

    check_meshable(cloud)
    max_points = POISSON_MAX_POINTS if max_points is None else max_points
    xyz = cloud.coords
    if len(xyz) > max_points:
        keep = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
        xyz = xyz[np.sort(keep)]
        warnings.warn(
            f"Poisson reconstruction uses a random {max_points:,} of the cloud's "
            f"{len(cloud):,} points (colours come from all of them)",
            stacklevel=2,
        )
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(20))
    try:
        pcd.orient_normals_consistent_tangent_plane(20)
    except RuntimeError:  # qhull precision errors on degenerate (e.g. coplanar) clouds
        pcd.orient_normals_towards_camera_location(xyz.mean(0).astype(np.float64))
        pcd.normals = o3d.utility.Vector3dVector(-np.asarray(pcd.normals))
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    density = np.asarray(density)
    if trim_quantile > 0 and len(density):
        mesh.remove_vertices_by_mask(density < np.quantile(density, trim_quantile))
    lo, hi = cloud.coords.min(0), cloud.coords.max(0)
    pad = 0.02 * (hi - lo).max()
    mesh = mesh.crop(o3d.geometry.AxisAlignedBoundingBox(lo - pad, hi + pad))
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(faces) == 0:
        raise MeshError("Poisson reconstruction produced no faces")
    tri = verts[faces]
    if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
        faces = faces[:, [1, 0, 2]]
    return TriMesh(verts=verts, faces=faces, colors=vertex_colors_from_cloud(verts, cloud))


METHODS = ("sdf", "poisson")


def mesh_from_cloud(
    cloud: PointCloud,
    sdf_fn: SDFFn | None = None,
    method: str = "sdf",
    grid_size: int = 128,
    snap: bool = True,
    **kwargs,
) -> TriMesh:
    """Coloured mesh of a cloud: marching cubes over ``sdf_fn`` (method ``sdf``, the SDF model's
    ``query_fn(cloud)``; with ``snap`` its vertices then projected onto the cloud's local planes,
    ``snap_to_cloud``) or open3d Poisson (``poisson``; kwargs go to ``poisson_mesh``)."""
    check_meshable(cloud)
    if method == "poisson":
        return poisson_mesh(cloud, **kwargs)
    if method != "sdf":
        raise MeshError(f"unknown meshing method {method!r}; choose one of {METHODS}")
    if sdf_fn is None:
        raise MeshError("method 'sdf' needs an sdf_fn (e.g. SDFModel.query_fn(cloud_xyz))")
    mesh = marching_cubes(sdf_fn, grid_size=grid_size, **kwargs)
    if snap:
        mesh = snap_to_cloud(mesh, cloud)
    return mesh.with_colors(vertex_colors_from_cloud(mesh.verts, cloud))


def sample_surface(mesh: TriMesh, count: int, seed: int = 0) -> np.ndarray:
    """``count`` area-weighted random points on the mesh's triangles -> [count, 3] float32."""
    tri = mesh.verts[mesh.faces].astype(np.float64)  # [F, 3, 3]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if len(tri) == 0 or area.sum() <= 0:
        raise MeshError("the mesh has no surface area to sample")
    g = np.random.default_rng(seed)
    face = g.choice(len(tri), count, p=area / area.sum())
    u, v = g.random(count), g.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    return (t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])).astype(
        np.float32
    )


def surface_fit(
    mesh: TriMesh, cloud: PointCloud, samples: int = 20000, trim: float = 0.05
) -> dict[str, float]:
    """How well a mesh explains a cloud, in the cloud's units (object space: largest side 1).

    :param trim: fraction of the cloud's points farthest from the surface left out of
        ``cloud_to_mesh``: a generated cloud's few stray points (2–4 % on the shipped model's
        samples) should not be meshed, and a surface that skips them still fits.
    :return: ``{"cloud_to_mesh": mean distance from the (1 − trim) nearest cloud points to the
        nearest surface sample (surface missing where the cloud has points), "mesh_to_cloud":
        mean distance from surface samples to the nearest cloud point (surface the cloud does
        not support; its floor is about half the cloud's point spacing)}``.
    """
    from scipy.spatial import cKDTree

    surf = sample_surface(mesh, samples)
    to_mesh = np.sort(cKDTree(surf).query(cloud.coords)[0])
    keep = max(1, int(round(len(to_mesh) * (1.0 - trim))))
    return {
        "cloud_to_mesh": float(to_mesh[:keep].mean()),
        "mesh_to_cloud": float(cKDTree(cloud.coords).query(surf)[0].mean()),
    }
