"""Surface sampling, texture lookup, visibility and SDF signs (analytic shapes, ShapeNet binvox)."""

import numpy as np
import pytest
import trimesh

from data_tools.binvox import read_binvox
from data_tools.mesh_reader import Material, TriangleSoup, load_mesh
from data_tools.surface_sampling import (
    MeshRaycaster,
    linear_to_srgb,
    sample_sdf,
    sample_sdf_queries,
    sample_surface,
    sample_texture,
    srgb_to_linear,
)

# A small ShapeNet bottle (1716 faces) that is solid inside and whose sign tests agree.
BOTTLE = "02876657/2bbd2b37776088354e23e9314af9ae57"


def _soup(mesh: trimesh.Trimesh, color=(1, 1, 1, 1), texture=None, linear=False) -> TriangleSoup:
    tri = mesh.triangles.astype(np.float64)
    f = len(tri)
    uvs = np.full((f, 3, 2), np.nan, np.float32)
    if texture is not None:
        uvs = np.broadcast_to(np.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]], np.float32), (f, 3, 2))
    mat = Material("m", np.array(color, np.float32), texture, linear=linear)
    return TriangleSoup(
        tri,
        uvs.copy(),
        np.ones((f, 3, 4), np.float32),
        np.zeros(f, np.int32),
        np.zeros(f, bool),
        [mat],
    )


def test_texture_bilinear_and_wrap_modes():
    tex = np.array([[[0], [100]], [[200], [255]]], np.uint8)  # row 0 is the top (v = 1)
    centres = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25]])
    np.testing.assert_allclose(
        sample_texture(tex, centres)[:, 0] * 255, [0, 100, 200, 255], atol=1e-3
    )
    mid = sample_texture(tex, np.array([[0.5, 0.75]]))[0, 0] * 255
    assert mid == pytest.approx(50, abs=1e-3)  # halfway between 0 and 100
    uv = np.array([[1.25, 0.75]])
    rep = sample_texture(tex, uv, ("repeat", "repeat"))
    np.testing.assert_allclose(rep, sample_texture(tex, np.array([[0.25, 0.75]])))
    clamp = sample_texture(tex, np.array([[1.7, 0.75]]), ("clamp", "clamp"))
    assert clamp[0, 0] * 255 == pytest.approx(100, abs=1e-3)
    mirror = sample_texture(tex, uv, ("mirror", "mirror"))
    np.testing.assert_allclose(mirror, sample_texture(tex, np.array([[0.75, 0.75]])))


def test_srgb_roundtrip_and_gltf_linear_composition():
    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    white = np.full((2, 2, 4), 255, np.uint8)
    soup = _soup(trimesh.creation.box(), color=(0.5, 0.5, 0.5, 1), texture=white, linear=True)
    s = sample_surface(soup, 100, np.random.default_rng(0))
    np.testing.assert_allclose(s.colors, linear_to_srgb(np.float32(0.5)), atol=1e-5)  # ≈ 0.735


def test_area_weighted_and_deterministic():
    big = trimesh.Trimesh([[0, 0, 0], [3, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    small = trimesh.Trimesh([[0, 0, 1], [1, 0, 1], [0, 1, 1]], [[0, 1, 2]])
    soup = _soup(trimesh.util.concatenate(big, small))
    a = sample_surface(soup, 20000, np.random.default_rng(1))
    assert np.mean(a.faces == 1) == pytest.approx(0.25, abs=0.015)
    assert np.allclose(a.points[a.faces == 1, 2], 1.0)
    b = sample_surface(soup, 20000, np.random.default_rng(1))
    assert np.array_equal(a.points, b.points) and np.array_equal(a.colors, b.colors)


def test_visibility_removes_inner_box():
    outer = trimesh.creation.box((2, 2, 2))
    inner = trimesh.creation.box((0.6, 0.6, 0.6))
    soup = _soup(trimesh.util.concatenate(outer, inner))
    s = sample_surface(soup, 20000, np.random.default_rng(0))
    seen = MeshRaycaster(soup.triangles).visible(s.points, views=20)
    on_inner = s.faces >= len(outer.faces)
    assert on_inner.sum() > 500
    assert not seen[on_inner].any()
    assert seen[~on_inner].mean() > 0.999


def test_visibility_prefers_front_side_of_coincident_twins():
    box = trimesh.creation.box((1, 1, 1))
    inner = trimesh.Trimesh(box.vertices, box.faces[:, ::-1])  # same place, facing inwards
    soup = _soup(trimesh.util.concatenate(box, inner))
    s = sample_surface(soup, 8000, np.random.default_rng(0))
    rc = MeshRaycaster(soup.triangles)
    assert rc.has_twin.all()
    on_inner = s.faces >= len(box.faces)
    plain = rc.visible(s.points, views=20)
    assert plain[on_inner].mean() > 0.9  # without face ids both shells show: a speckle
    sided = rc.visible(s.points, views=20, faces=s.faces)
    # Only points within the 1e-3 × diagonal tolerance of an edge can slip through.
    assert sided[on_inner].mean() < 0.01 and sided[~on_inner].all()


@pytest.mark.parametrize("shape", ["sphere", "box"])
def test_sdf_sign_and_value_on_analytic_shapes(shape):
    if shape == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
        exact = lambda q: np.linalg.norm(q, axis=1) - 0.4  # noqa: E731
        tol = 0.4 * (1 - np.cos(np.pi / 80)) + 1e-3  # faceting error of a level-4 icosphere
    else:
        mesh = trimesh.creation.box((0.8, 0.6, 0.4))
        half = np.array([0.4, 0.3, 0.2])

        def exact(q):
            d = np.abs(q) - half
            return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)

        tol = 1e-4
    soup = _soup(mesh)
    rng = np.random.default_rng(0)
    surf = sample_surface(soup, 4000, rng)
    sdf = sample_sdf(MeshRaycaster(soup.triangles), surf.points, 4000, rng)
    truth = exact(sdf.points.astype(np.float64))
    assert sdf.reliable and sdf.disagree_fraction == 0.0
    clear = np.abs(truth) > 2 * tol
    assert np.array_equal(sdf.values[clear] < 0, truth[clear] < 0)
    np.testing.assert_allclose(sdf.values, truth, atol=2 * tol)


def test_open_mesh_is_flagged_unreliable():
    box = trimesh.creation.box((0.8, 0.8, 0.8))
    top = box.face_normals[:, 2] > 0.5
    open_box = trimesh.Trimesh(box.vertices, box.faces[~top])  # a box without its lid
    soup = _soup(open_box)
    rng = np.random.default_rng(0)
    surf = sample_surface(soup, 4000, rng)
    sdf = sample_sdf(MeshRaycaster(soup.triangles), surf.points, 4000, rng)
    assert not sdf.reliable


def test_queries_mix_near_surface_and_uniform():
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 3))
    q = sample_sdf_queries(pts, 1000, np.random.default_rng(1))
    assert q.shape == (1000, 3) and q.dtype == np.float32
    assert np.abs(q[-200:]).max() <= 0.55  # the uniform part


def test_binvox_orientation_and_shapenet_sign(shared_data):
    model = shared_data / "shapenet_core_v2_subset" / BOTTLE
    obj = model / "models/model_normalized.obj"
    soup = load_mesh(obj, up="z", root=model, strict=False)  # keep ShapeNet's own frame
    rng = np.random.default_rng(0)
    surf = sample_surface(soup, 20000, rng)
    surface = read_binvox(obj.with_name("model_normalized.surface.binvox"))
    assert surface.occupancy.shape == (128, 128, 128)
    hits = surface.lookup(surf.points).mean()
    swapped = surface.occupancy.transpose(0, 2, 1)  # the file's raw [x, z, y] read as [x, y, z]
    wrong = type(surface)(swapped, surface.translate, surface.scale).lookup(surf.points).mean()
    assert hits > 0.5 and hits > wrong + 0.1
    solid = read_binvox(obj.with_name("model_normalized.solid.binvox"))
    sdf = sample_sdf(MeshRaycaster(soup.triangles), surf.points, 8192, rng)
    far = np.abs(sdf.values) > 1.5 * solid.voxel_size  # binvox is exact only to a voxel
    agree = np.mean((sdf.values[far] < 0) == solid.lookup(sdf.points[far]))
    assert sdf.reliable and agree > 0.98
    assert (sdf.values[far] < 0).mean() > 0.05  # the check covers inside points too


def test_spot_colours_match_texture(shared_data):
    spot = shared_data / "classic_meshes/spot"
    soup = load_mesh(spot / "spot_triangulated.obj", texture=spot / "spot_texture.png")
    rng = np.random.default_rng(0)
    s = sample_surface(soup, 20000, rng)
    seen = MeshRaycaster(soup.triangles).visible(s.points)
    s = s.select(seen)
    # Independent lookup: closest point on the mesh → its UV → nearest texel of the image.
    tex = soup.materials[soup.material_ids[0]].texture
    idx = rng.choice(len(s.points), 2000, replace=False)
    faces = s.faces[idx]
    bary = trimesh.triangles.points_to_barycentric(soup.triangles[faces], s.points[idx])
    uv = np.einsum("nk,nkc->nc", bary, soup.uvs[faces])
    h, w = tex.shape[:2]
    px = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    py = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    nearest = tex[py, px, :3] / 255.0
    assert np.median(np.abs(nearest - s.colors[idx]).max(axis=1)) < 0.03
    # Mean over the visible surface ≈ mean of the texture over the area it covers.
    covered = np.zeros((h, w), bool)
    from PIL import Image, ImageDraw

    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for tri in soup.uvs[:: max(1, len(soup) // 3000)]:
        draw.polygon([(u * w, (1 - v) * h) for u, v in tri], fill=255)
    covered = np.asarray(mask) > 0
    tex_mean = tex[covered][:, :3].mean(0) / 255.0
    assert np.abs(s.colors.mean(0) - tex_mean).max() < 0.06
