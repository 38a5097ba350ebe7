"""pointdiff.nerf against Shap-E's own renderer: a seeded NeRF render of a tiny random decoder
and its STF mesh (tests/data/shape_fixtures/shape_decoder.npz); the coarse-to-fine grid gives the
dense grid's mesh, and misses what its band cannot see; a property check."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pointdiff.compat.shape import ShapeDecoder, ShapeDecoderConfig, decode_outputs
from pointdiff.nerf import Cameras, extract_mesh, pan_cameras, render_views

FIX = Path(__file__).parent / "data" / "shape_fixtures" / "shape_decoder.npz"


def _decoder():
    f = np.load(FIX)
    model = ShapeDecoder(ShapeDecoderConfig(channels=16, hidden=8))
    model.load_state_dict({k[3:]: torch.from_numpy(f[k]) for k in f.files if k[:3] == "sd/"})
    params = [w[:1] for w in model.latent_to_params(torch.from_numpy(f["latent"]))]
    return f, model, params


def test_pan_cameras_match_shape_e():
    f = np.load(FIX)
    cams = pan_cameras(8)
    for k in ("origin", "x", "y", "z"):
        np.testing.assert_array_equal(getattr(cams, k)[:4].numpy(), f[f"nerf/{k}"])


def test_nerf_render_matches_shape_e():
    f, model, params = _decoder()

    def field(points):
        out = decode_outputs(model.query(points[None], params))
        density = torch.stack([out["density_coarse"][0], out["density_fine"][0]], dim=-1)
        return density, torch.stack([out["nerf_coarse"][0], out["nerf_fine"][0]], dim=-2)

    cams = Cameras(*(torch.from_numpy(f[f"nerf/{k}"]) for k in ("origin", "x", "y", "z")), 8, 8)
    with torch.no_grad():  # Shap-E seeded its global generator with 7, ray chunks of 64
        img = render_views(field, cams, 8, 16, chunk=64, generator=torch.Generator().manual_seed(7))
    ref = f["nerf/channels"][0] / 255.0
    assert ref.max() > 0.3  # a visible object, not just background
    assert np.abs(img.numpy() - ref).max() <= 1e-4 * ref.max()


def test_stf_mesh_matches_shape_e():
    f, model, params = _decoder()
    mesh = extract_mesh(
        lambda q: decode_outputs(model.query(q[None], params))["sdf"][0],
        lambda q: decode_outputs(model.query(q[None], params))["texture"][0],
        grid_size=16,
    )
    ref_v, ref_c = f["stf/verts"], f["stf/vertex_rgb"]
    # every Shap-E vertex (one per sign-changing grid edge) is one of ours
    dist, idx = cKDTree(mesh.verts).query(ref_v)
    assert dist.max() < 1e-5
    np.testing.assert_allclose(mesh.colors[idx], ref_c, atol=1e-4)
    # scikit-image's Lewiner tables add a few interior vertices in ambiguous cells
    assert len(ref_v) <= len(mesh.verts) <= 1.02 * len(ref_v)


def test_stf_sphere_radius():
    mesh = extract_mesh(lambda q: 0.5 - q.norm(dim=-1), grid_size=33, shrink=False)
    r = np.linalg.norm(mesh.verts, axis=1)
    assert np.abs(r - 0.5).max() < 2 / 32


def _smooth_tiny_field():
    """The fixture decoder in float64 with its high encoding frequencies damped (4^-k), as a
    trained field's are: an object-like surface, and values that do not depend on the batch
    (float32 GEMMs round differently with the batch's size; float64 hides that)."""
    _, model, params = _decoder()
    model = model.double()
    k = (torch.arange(93) - 3).clamp(min=0).remainder(45).div(3, rounding_mode="floor")
    params = [w.double() for w in params]
    params[0] = params[0] * 0.25 ** k.double()
    calls = []

    def out(q, key):
        calls.append(len(q))
        return decode_outputs(model.query(q.double()[None], params))[key][0]

    return (lambda q: out(q, "sdf")), (lambda q: out(q, "texture")), calls


@pytest.mark.parametrize("stride, band", [(8, 1.5), (4, 1.5), (8, 3.0)])
def test_stf_coarse_to_fine_is_the_dense_mesh(stride, band):
    sdf, texture, calls = _smooth_tiny_field()
    dense = extract_mesh(sdf, texture, grid_size=48, coarse_stride=1)
    dense_queries = sum(calls)
    calls.clear()
    mesh = extract_mesh(sdf, texture, grid_size=48, coarse_stride=stride, band=band)
    assert len(mesh.faces) > 1000
    np.testing.assert_array_equal(mesh.verts, dense.verts)
    np.testing.assert_array_equal(mesh.faces, dense.faces)
    np.testing.assert_array_equal(mesh.colors, dense.colors)
    if stride == 8:
        # the SDF queries (colours are queried at the vertices either way)
        assert sum(calls) - len(mesh.verts) < dense_queries - len(dense.verts)


def test_stf_coarse_to_fine_widens_its_band_on_a_rough_field():
    # the fixture decoder at full gain on every encoding frequency: steeper between
    # neighbouring voxels than its coarse samples show, so the band widens (or, after three
    # tries, every sample is queried) and the mesh is still the dense grid's
    _, model, params = _decoder()
    model, params = model.double(), [w.double() for w in params]

    def sdf(q):
        return decode_outputs(model.query(q.double()[None], params))["sdf"][0]

    dense = extract_mesh(sdf, grid_size=40, coarse_stride=1)
    mesh = extract_mesh(sdf, grid_size=40, coarse_stride=8)
    assert len(dense.faces) > 1000
    np.testing.assert_array_equal(mesh.verts, dense.verts)
    np.testing.assert_array_equal(mesh.faces, dense.faces)


def test_stf_coarse_to_fine_misses_a_spike_between_coarse_samples():
    # a sphere (slope 1) and a narrow bump (slope ~30) that pokes above zero away from it:
    # no sample of the stride-8 lattice comes near the bump, so the band never reaches it
    centre = torch.tensor([0.7, 0.7, 0.7])

    def sdf(q):
        bump = 1.2 * torch.exp(-((q - centre) ** 2).sum(-1) / (2 * 0.03**2))
        return 0.4 - q.norm(dim=-1) + bump

    dense = extract_mesh(sdf, grid_size=65, shrink=False, coarse_stride=1)
    coarse = extract_mesh(sdf, grid_size=65, shrink=False, coarse_stride=8)

    def near_bump(mesh):
        return (np.linalg.norm(mesh.verts - centre.numpy(), axis=1) < 0.1).sum()

    assert near_bump(dense) > 0 and near_bump(coarse) == 0
    # away from the bump both meshes are the same sphere
    assert len(coarse.verts) == len(dense.verts) - near_bump(dense)


@pytest.mark.parametrize("grid_size", [4, 8, 16])
def test_stf_coarse_to_fine_small_grids(grid_size):
    # strides larger than the grid allows are capped (at least 3 lattice samples per axis)
    def sdf(q):
        return 0.6 - q.norm(dim=-1)

    mesh = extract_mesh(sdf, grid_size=grid_size)
    dense = extract_mesh(sdf, grid_size=grid_size, coarse_stride=1)
    np.testing.assert_array_equal(mesh.faces, dense.faces)
    np.testing.assert_allclose(mesh.verts, dense.verts, atol=1e-6)  # float32 norm: ulps
