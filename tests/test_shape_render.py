"""pointdiff.nerf against Shap-E's own renderer: a seeded NeRF render of a tiny random decoder
and its STF mesh (tests/data/shape_fixtures/shape_decoder.npz), plus a property check."""

from pathlib import Path

import numpy as np
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
