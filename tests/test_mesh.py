"""Meshing: marching cubes (dense = coarse-to-fine), colours, exports that load back, errors."""

import json
import math
import os
import struct

import numpy as np
import pytest
import torch

from pointdiff import meshing
from pointdiff.colours import linear_to_srgb
from pointdiff.pointcloud import PointCloud, PointCloudError

# Analytic SDFs (negative inside), evaluated in float64 numpy so a value never depends on which
# batch the query arrived in (torch reductions may differ in the last bit between batch sizes).


def _np_fn(f):
    return lambda q: torch.from_numpy(f(q.double().numpy()))


def _sphere(p, r=0.35):
    return np.linalg.norm(p, axis=-1) - r


def _box(p, half=(0.3, 0.2, 0.25)):
    d = np.abs(p) - np.array(half)
    return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)


def _torus(p, big=0.3, small=0.1):
    ring = np.hypot(p[:, 0], p[:, 1]) - big
    return np.hypot(ring, p[:, 2]) - small


SHAPES = {"sphere": _sphere, "box": _box, "torus": _torus}


def _signed_volume(mesh: meshing.TriMesh) -> float:
    tri = mesh.verts.astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6)


def _two_tone_sphere_cloud(n=2048, r=0.35, seed=0) -> PointCloud:
    """Points on a sphere: red above z=0, blue below."""
    g = np.random.default_rng(seed)
    p = g.normal(size=(n, 3))
    p = r * p / np.linalg.norm(p, axis=1, keepdims=True)
    colors = np.where(p[:, 2:] > 0, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    return PointCloud(p.astype(np.float32), colors.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Marching cubes


def test_sphere_vertices_within_one_voxel_of_radius():
    grid, bound = 40, 0.51
    mesh = meshing.marching_cubes(_np_fn(_sphere), grid_size=grid, bound=bound)
    voxel = 2 * bound / (grid - 1)
    r = np.linalg.norm(mesh.verts, axis=1)
    assert mesh.num_faces > 100
    assert np.abs(r - 0.35).max() <= voxel
    # faces wind counter-clockwise seen from outside: the enclosed volume is positive
    assert _signed_volume(mesh) == pytest.approx(4 / 3 * math.pi * 0.35**3, rel=0.03)
    n = mesh.vertex_normals()
    assert (np.einsum("ij,ij->i", n, mesh.verts / r[:, None]) > 0.9).mean() > 0.99


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("grid", [33, 48])
def test_coarse_to_fine_equals_dense(name, grid):
    fn = _np_fn(SHAPES[name])
    dense = meshing.marching_cubes(fn, grid_size=grid, coarse_stride=1)
    fine = meshing.marching_cubes(fn, grid_size=grid, coarse_stride=8)
    np.testing.assert_array_equal(fine.faces, dense.faces)
    np.testing.assert_array_equal(fine.verts, dense.verts)
    _, n_dense = meshing.evaluate_grid(fn, grid_size=grid, coarse_stride=1)
    _, n_fine = meshing.evaluate_grid(fn, grid_size=grid, coarse_stride=8)
    assert n_dense == grid**3
    assert n_fine < 0.5 * n_dense


def test_coarse_to_fine_query_fraction_shrinks_with_grid():
    fn = _np_fn(_sphere)
    fractions = [meshing.evaluate_grid(fn, grid_size=g)[1] / g**3 for g in (32, 64)]
    assert fractions[1] < fractions[0] < 0.6


def test_sdf_fn_batches_are_bounded():
    sizes = []

    def fn(q):
        sizes.append(len(q))
        return _np_fn(_sphere)(q)

    meshing.marching_cubes(fn, grid_size=24, batch_size=1000)
    assert max(sizes) <= 1000


# ----------------------------------------------------------------------------------------------
# Colours and whole reconstructions


def test_vertex_colors_follow_nearest_points():
    cloud = _two_tone_sphere_cloud()
    colors = meshing.vertex_colors_from_cloud(cloud.coords[:50], cloud)  # vertices on points
    np.testing.assert_allclose(colors, cloud.colors[:50], atol=1e-3)
    mesh = meshing.mesh_from_cloud(cloud, _np_fn(_sphere), "sdf", grid_size=32).mesh
    top, bottom = mesh.verts[:, 2] > 0.1, mesh.verts[:, 2] < -0.1
    assert (mesh.colors[top, 0] > 0.9).all() and (mesh.colors[bottom, 2] > 0.9).all()


def test_poisson_baseline_reconstructs_sphere():
    cloud = _two_tone_sphere_cloud(n=4096)
    mesh = meshing.poisson_mesh(cloud, depth=6)
    r = np.linalg.norm(mesh.verts, axis=1)
    assert np.median(np.abs(r - 0.35)) < 0.01
    assert _signed_volume(mesh) > 0
    assert mesh.colors is not None and mesh.colors.shape == mesh.verts.shape
    result = meshing.mesh_from_cloud(cloud, method="poisson", depth=5)
    assert result.method == "poisson" and result.reason == "asked for"
    assert result.mesh.num_faces > 0 and result.notes == ()


def test_surface_samples_and_fit_to_a_cloud():
    mesh = meshing.marching_cubes(_np_fn(_sphere), grid_size=48)
    pts = meshing.sample_surface(mesh, 5000)
    assert pts.shape == (5000, 3) and np.abs(np.linalg.norm(pts, axis=1) - 0.35).max() < 0.01
    fit = meshing.surface_fit(mesh, _two_tone_sphere_cloud())
    assert fit["cloud_to_mesh"] < 0.01 and fit["mesh_to_cloud"] < 0.02, fit  # ~ point spacing
    moved = _two_tone_sphere_cloud()
    moved = PointCloud(moved.coords * 0.5, moved.colors)  # a smaller sphere inside
    assert min(meshing.surface_fit(mesh, moved).values()) > 0.08
    # a few stray points (3 %, far off) are left out of cloud -> mesh; many are not
    cloud = _two_tone_sphere_cloud()
    for frac, fits in ((0.03, True), (0.2, False)):
        coords = cloud.coords.copy()
        coords[: int(frac * len(coords))] *= 2.0  # 0.35 -> 0.7: 0.35 off the surface
        fit = meshing.surface_fit(mesh, PointCloud(coords, cloud.colors))["cloud_to_mesh"]
        assert (fit < 0.01) == fits, (frac, fit)


def test_snapping_moves_vertices_onto_the_cloud_and_keeps_faces():
    # an SDF surface 0.02 inside the true sphere (radius 0.33) snapped to a cloud on radius 0.35
    mesh = meshing.marching_cubes(_np_fn(lambda p: _sphere(p, 0.33)), grid_size=32)
    cloud = _two_tone_sphere_cloud(n=8192, r=0.35)
    snapped = meshing.snap_to_cloud(mesh, cloud)
    before = np.abs(np.linalg.norm(mesh.verts, axis=1) - 0.35).mean()
    after = np.abs(np.linalg.norm(snapped.verts, axis=1) - 0.35).mean()
    assert before > 0.019 and after < 0.003, (before, after)
    np.testing.assert_array_equal(snapped.faces, mesh.faces)  # topology unchanged
    # noisy points: the plane fit averages the noise out
    g = np.random.default_rng(1)
    noisy = PointCloud(
        cloud.coords + g.normal(0, 0.01, cloud.coords.shape).astype(np.float32), cloud.colors
    )
    off = np.abs(np.linalg.norm(meshing.snap_to_cloud(mesh, noisy).verts, axis=1) - 0.35).mean()
    assert off < 0.006, off
    # surface the cloud does not support stays where the SDF put it
    far = PointCloud(cloud.coords + np.float32([2.0, 0, 0]), cloud.colors)
    np.testing.assert_array_equal(meshing.snap_to_cloud(mesh, far).verts, mesh.verts)


# ----------------------------------------------------------------------------------------------
# Export: files load back in other readers with the same vertices and colours


@pytest.fixture(scope="module")
def colored_mesh() -> meshing.TriMesh:
    return meshing.mesh_from_cloud(
        _two_tone_sphere_cloud(), _np_fn(_sphere), "sdf", grid_size=20
    ).mesh


def _bytes(c):
    return np.round(np.clip(c, 0, 1) * 255).astype(int)


def test_ply_loads_back(tmp_path, colored_mesh):
    import open3d as o3d
    import trimesh

    path = tmp_path / "m.ply"
    colored_mesh.save(path)
    t = trimesh.load(path, process=False)
    assert len(t.vertices) == colored_mesh.num_verts and len(t.faces) == colored_mesh.num_faces
    np.testing.assert_allclose(t.vertices, colored_mesh.verts, atol=1e-6)
    np.testing.assert_array_equal(t.visual.vertex_colors[:, :3], _bytes(colored_mesh.colors))
    o = o3d.io.read_triangle_mesh(str(path))
    assert len(o.vertices) == colored_mesh.num_verts
    np.testing.assert_allclose(np.asarray(o.vertex_colors), _bytes(colored_mesh.colors) / 255)


def test_glb_loads_back_with_color_0(tmp_path, colored_mesh):
    import trimesh

    path = tmp_path / "m.glb"
    colored_mesh.save(path)
    # the container itself: glTF 2 header, JSON chunk first, COLOR_0 present, counts right
    raw = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", raw[:12])
    assert (magic, version, length) == (b"glTF", 2, len(raw))
    js_len, js_type = struct.unpack("<I4s", raw[12:20])
    gltf = json.loads(raw[20 : 20 + js_len])
    prim = gltf["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(prim["attributes"])
    assert gltf["accessors"][prim["attributes"]["COLOR_0"]]["count"] == colored_mesh.num_verts
    # another reader: trimesh (one geometry; with a material present it keeps COLOR_0 as a float
    # vertex attribute, in linear RGB as glTF requires)
    (t,) = trimesh.load(path, process=False).geometry.values()
    assert len(t.vertices) == colored_mesh.num_verts and len(t.faces) == colored_mesh.num_faces
    v = colored_mesh.verts
    np.testing.assert_allclose(t.vertices, np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1), atol=1e-6)
    srgb = linear_to_srgb(np.asarray(t.visual.vertex_attributes["color"])[:, :3])
    np.testing.assert_allclose(srgb, colored_mesh.colors, atol=1e-5)


def test_obj_loads_back_with_vertex_colors(tmp_path, colored_mesh):
    import open3d as o3d
    import trimesh

    path = tmp_path / "m.obj"
    colored_mesh.save(path)
    assert (tmp_path / "m.mtl").is_file()
    t = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    assert len(t.vertices) == colored_mesh.num_verts and len(t.faces) == colored_mesh.num_faces
    np.testing.assert_allclose(t.visual.vertex_colors[:, :3], _bytes(colored_mesh.colors), atol=1)
    o = o3d.io.read_triangle_mesh(str(path))  # re-orders vertices: match them by position
    assert len(o.vertices) == colored_mesh.num_verts
    v = colored_mesh.verts
    y_up = torch.from_numpy(np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1))
    match = torch.cdist(torch.from_numpy(np.asarray(o.vertices, np.float32)), y_up).argmin(1)
    np.testing.assert_allclose(np.asarray(o.vertex_colors), colored_mesh.colors[match], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Bad input gives a clear error


def test_empty_or_nan_cloud_is_rejected():
    with pytest.raises(PointCloudError, match="zero points"):
        PointCloud(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(PointCloudError, match="NaN"):
        PointCloud(np.full((4, 3), np.nan), np.zeros((4, 3)))


@pytest.mark.parametrize("grid", [0, 1, -5, 2.5])
def test_bad_grid_size(grid):
    with pytest.raises(meshing.MeshError, match="grid_size"):
        meshing.marching_cubes(_np_fn(_sphere), grid_size=grid)


def test_sdf_fn_nan_or_wrong_shape():
    with pytest.raises(meshing.MeshError, match="NaN"):
        meshing.marching_cubes(lambda q: torch.full((len(q),), float("nan")), grid_size=16)
    with pytest.raises(meshing.MeshError, match="shape"):
        meshing.marching_cubes(lambda q: torch.zeros(len(q), 1), grid_size=16)


def test_no_surface_in_grid():
    with pytest.raises(meshing.MeshError, match="never crosses"):
        meshing.marching_cubes(lambda q: torch.ones(len(q)), grid_size=16)


def test_unwritable_or_unknown_output(tmp_path, colored_mesh):
    with pytest.raises(meshing.MeshError, match="does not exist"):
        colored_mesh.save(tmp_path / "missing" / "m.glb")
    with pytest.raises(meshing.MeshError, match="suffix"):
        colored_mesh.save(tmp_path / "m.stl")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            with pytest.raises(meshing.MeshError, match="not writable"):
                colored_mesh.save(locked / "m.ply")
    finally:
        locked.chmod(0o700)


def test_trimesh_validates_shapes():
    with pytest.raises(meshing.MeshError, match="out of range"):
        meshing.TriMesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))
    with pytest.raises(meshing.MeshError, match="colors"):
        meshing.TriMesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), colors=np.zeros((2, 3)))


def test_poisson_survives_a_degenerate_cloud():
    """Generated clouds can be clamped onto a bbox face; qhull then fails inside open3d's
    normal orientation, and the baseline must still return a mesh (or a MeshError)."""
    g = np.random.default_rng(0)
    p = g.uniform(-0.5, 0.5, size=(512, 3)).astype(np.float32)
    p[:256, 1] = -0.5  # half the points on one face, as a clamped sample
    cloud = PointCloud(p, np.full((512, 3), 0.5, np.float32))
    try:
        assert meshing.poisson_mesh(cloud, depth=5).num_faces > 0
    except meshing.MeshError:
        pass
