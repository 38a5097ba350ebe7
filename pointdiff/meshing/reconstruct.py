"""Meshes of point clouds: the SDF head's surface (marching cubes, then snapped onto the cloud),
open3d screened Poisson, and the choice between them, returned as a ``MeshResult``.

``mesh_from_cloud(cloud, sdf_fn, method)`` is the one entry point:

* ``sdf``: marching cubes over ``sdf_fn`` (``marching.marching_cubes``), vertices snapped onto
  the cloud's local planes (``snap_to_cloud``), k-NN vertex colours;
* ``poisson``: ``poisson_mesh``;
* ``auto``: the SDF mesh when ``sdf_fn`` is given and its surface fits the cloud
  (``surface_fit``), else Poisson. Only a field with no surface (``NoSurfaceError``) or a
  surface that misses the cloud falls back; any other error is raised. The fit is judged on the
  uncoloured mesh, so only the mesh returned is coloured.

The result names the method that made the mesh and why, so callers report it instead of
catching warnings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pointdiff.meshing.marching import SDFFn, marching_cubes
from pointdiff.meshing.mesh import MeshError, NoSurfaceError, TriMesh
from pointdiff.pointcloud import PointCloud, PointCloudError

# ----------------------------------------------------------------------------------------------
# Colours and snapping


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
# Poisson


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
    random ``max_points`` of them and coloured from all of them (``mesh_from_cloud`` says so in
    its result's notes).
    """
    import open3d as o3d  # heavy; only this baseline needs it

    check_meshable(cloud)
    max_points = POISSON_MAX_POINTS if max_points is None else max_points
    xyz = cloud.coords
    if len(xyz) > max_points:
        keep = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
        xyz = xyz[np.sort(keep)]
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(20))
    try:
        pcd.orient_normals_consistent_tangent_plane(20)
    except RuntimeError:  # qhull precision errors on degenerate (e.g. coplanar) clouds
        pcd.orient_normals_towards_camera_location(xyz.mean(0).astype(np.float64))
        pcd.normals = o3d.utility.Vector3dVector(-np.asarray(pcd.normals))
    # n_threads=1: open3d's multi-threaded Poisson segfaults at random (isl-org/Open3D#6828,
    # seen in a test run). One thread costs little at depth 8 on 2 cores: 0.83 vs 0.68 s for a
    # 4096-point sphere, 2.5 vs 2.3 s at 50k points, same triangles.
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
            pcd, depth=depth, n_threads=1
        )
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


# ----------------------------------------------------------------------------------------------
# How well a mesh explains a cloud


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


# ----------------------------------------------------------------------------------------------
# Choosing the method

METHODS = ("auto", "sdf", "poisson")


@dataclass(frozen=True)
class MeshResult:
    """A mesh and how it was made.

    :param mesh: coloured ``TriMesh`` in the cloud's frame.
    :param method: ``sdf`` (marching cubes on the SDF head), ``sdf_snapped`` (the same, vertices
        moved onto the cloud's local planes) or ``poisson``.
    :param reason: why that method: asked for, or what ``auto`` found.
    :param fallback: ``auto`` wanted the SDF surface and fell back to Poisson (``reason`` says why).
    :param notes: other facts worth telling the user (Poisson on a subset of the points).
    """

    mesh: TriMesh
    method: str
    reason: str
    fallback: bool = False
    notes: tuple[str, ...] = ()


def _poisson(cloud: PointCloud, reason: str, fallback: bool = False, **kwargs) -> MeshResult:
    mesh = poisson_mesh(cloud, **kwargs)
    limit = kwargs.get("max_points") or POISSON_MAX_POINTS
    notes = ()
    if len(cloud) > limit:
        notes = (
            f"Poisson reconstruction uses a random {limit:,} of the cloud's {len(cloud):,} "
            "points (colours come from all of them)",
        )
    return MeshResult(mesh, "poisson", reason, fallback, notes)


def mesh_from_cloud(
    cloud: PointCloud,
    sdf_fn: SDFFn | None = None,
    method: str = "auto",
    grid_size: int = 128,
    snap: bool = True,
    max_fit_error: float = 0.03,
    **kwargs,
) -> MeshResult:
    """Coloured mesh of a cloud, and which method made it (module docstring).

    :param sdf_fn: the SDF head's ``query_fn(cloud)`` (queries [Q, 3] -> [Q], negative inside).
    :param method: ``auto``, ``sdf`` (no fallback) or ``poisson`` (kwargs go to ``poisson_mesh``;
        with ``sdf``, to ``marching_cubes``).
    :param snap: move the SDF mesh's vertices onto the cloud's local planes (``snap_to_cloud``):
        the SDF head gives the topology, the points the position.
    :param max_fit_error: ``auto`` keeps the SDF mesh when both mean distances of
        ``surface_fit`` (cloud → mesh without the 5 % farthest points, mesh → cloud) are at most
        this, in object units.
    :raises PointCloudError: too few points to mesh (no method can help).
    """
    check_meshable(cloud)
    if method not in METHODS:
        raise MeshError(f"unknown meshing method {method!r}; choose one of {METHODS}")
    if method == "poisson":
        return _poisson(cloud, "asked for", **kwargs)
    if sdf_fn is None:
        if method == "sdf":
            raise MeshError("method 'sdf' needs an sdf_fn (e.g. SDFModel.query_fn(cloud_xyz))")
        return _poisson(cloud, "there is no SDF head")
    try:
        mesh = marching_cubes(sdf_fn, grid_size=grid_size, **kwargs)
    except NoSurfaceError as e:
        if method == "sdf":
            raise
        return _poisson(cloud, f"SDF head found no surface ({e})", fallback=True)
    if snap:
        mesh = snap_to_cloud(mesh, cloud)
    reason = "asked for"
    if method == "auto":
        fit = surface_fit(mesh, cloud)
        c2m, m2c = fit["cloud_to_mesh"], fit["mesh_to_cloud"]
        if max(c2m, m2c) > max_fit_error:
            reason = (
                f"SDF head's surface does not fit the cloud (mean distance cloud→mesh {c2m:.3f}, "
                f"mesh→cloud {m2c:.3f} > {max_fit_error})"
            )
            return _poisson(cloud, reason, fallback=True)
        reason = f"SDF head's surface fits the cloud (mean distances {c2m:.3f}, {m2c:.3f})"
    mesh = mesh.with_colors(vertex_colors_from_cloud(mesh.verts, cloud))
    return MeshResult(mesh, "sdf_snapped" if snap else "sdf", reason)
