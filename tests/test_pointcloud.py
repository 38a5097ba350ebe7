import numpy as np
import pytest
import torch

from pointdiff.pointcloud import (
    PointCloud,
    PointCloudError,
    farthest_point_sample,
    from_model_space,
    normalize_bbox,
    relocate_strays,
    to_model_space,
    y_up_to_z_up,
)


def _cloud(n=500, seed=0):
    g = np.random.default_rng(seed)
    return PointCloud(g.uniform(-0.5, 0.5, (n, 3)), g.uniform(0, 1, (n, 3)))


def test_model_space_round_trip_and_range():
    c = _cloud()
    x = c.to_tensor()
    assert x.shape == (500, 6)
    assert x.min() >= -1 and x.max() <= 1
    back = PointCloud.from_tensor(x)
    np.testing.assert_allclose(back.coords, c.coords, atol=1e-6)
    np.testing.assert_allclose(back.colors, c.colors, atol=1e-6)
    # Point-E convention: rgb 0..255 -> /127.5 - 1 ; xyz * 2
    x = to_model_space(torch.tensor([[0.5, -0.25, 0.0]]), torch.tensor([[1.0, 0.0, 0.5]]))
    torch.testing.assert_close(x, torch.tensor([[1.0, -0.5, 0.0, 1.0, -1.0, 0.0]]))
    coords, colors = from_model_space(torch.tensor([[0.0, 0, 0, 3.0, -3.0, 0.0]]))
    assert colors.tolist() == [[1.0, 0.0, 0.5]]  # colours clamp to [0, 1]


def test_ply_round_trip_is_exact_for_coords(tmp_path):
    c = _cloud()
    c.save(tmp_path / "a.ply")
    d = PointCloud.load(tmp_path / "a.ply")
    np.testing.assert_array_equal(d.coords, c.coords)
    np.testing.assert_allclose(d.colors, c.colors, atol=0.5 / 255 + 1e-7)
    c.save(tmp_path / "a.npz")
    e = PointCloud.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(e.coords, c.coords)
    np.testing.assert_array_equal(e.colors, c.colors)


def test_reads_ascii_ply_from_other_tools(tmp_path):
    text = (
        "ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 2\n"
        "property double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 255 0 0\n0.1 0.2 0.3 0 255 0\n"
    )
    (tmp_path / "a.ply").write_text(text)
    c = PointCloud.load(tmp_path / "a.ply")
    np.testing.assert_allclose(c.coords[1], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(c.colors, [[1, 0, 0], [0, 1, 0]])


def test_reads_pointe_example_npz_and_mesh_ply(shared_data):
    c = PointCloud.load(shared_data / "point_e_examples" / "pc_corgi.npz")
    assert len(c) == 4096
    assert c.coords.min() >= -0.5 and c.coords.max() <= 0.5
    assert 0.2 < c.colors.mean() < 0.9
    m = PointCloud.load(shared_data / "point_e_examples" / "corgi.ply")  # binary mesh PLY
    assert len(m) == 1585 and m.colors.max() <= 1.0


def test_bad_clouds_give_clear_errors(tmp_path):
    with pytest.raises(PointCloudError, match="zero points"):
        PointCloud(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(PointCloudError, match="non-finite"):
        PointCloud(np.array([[0, np.nan, 0]]), np.zeros((1, 3)))
    np.savez(tmp_path / "nan.npz", coords=np.array([[0, np.inf, 0]], np.float32))
    with pytest.raises(PointCloudError, match="nan.npz: .*non-finite"):
        PointCloud.load(tmp_path / "nan.npz")
    (tmp_path / "t.ply").write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n"
        b"property float x\nproperty float y\nproperty float z\nend_header\n\0\0"
    )
    with pytest.raises(PointCloudError, match="truncated"):
        PointCloud.load(tmp_path / "t.ply")
    with pytest.raises(PointCloudError, match="no such file"):
        PointCloud.load(tmp_path / "missing.ply")


def test_normalize_bbox_and_up_axis():
    g = np.random.default_rng(1)
    pts = g.normal(size=(100, 3)) * [3, 1, 2] + 7
    out, center, scale = normalize_bbox(pts)
    assert np.isclose(np.ptp(out, axis=0).max(), 1.0)
    np.testing.assert_allclose((out.max(0) + out.min(0)) / 2, 0, atol=1e-6)
    np.testing.assert_allclose(out * scale + center, pts, rtol=1e-5)
    assert y_up_to_z_up(np.array([[0.0, 1.0, 0.0]])).tolist() == [[0.0, 0.0, 1.0]]


def test_fps_batched_matches_unbatched_and_spreads():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 400, 6, generator=g)
    idx = farthest_point_sample(pts, 32, start=torch.tensor([0, 5, 9]))
    assert idx.shape == (3, 32)
    for b, s in enumerate([0, 5, 9]):
        assert torch.equal(idx[b], farthest_point_sample(pts[b], 32, start=s))
        assert len(set(idx[b].tolist())) == 32  # distinct
    # FPS covers space better than the first points: larger minimum pairwise distance.
    sel = pts[0, idx[0], :3]
    d_fps = torch.cdist(sel, sel).fill_diagonal_(9).min()
    first = pts[0, :32, :3]
    assert d_fps > torch.cdist(first, first).fill_diagonal_(9).min()


def _sphere(n: int, g: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, 3, generator=g)
    return 0.5 * v / v.norm(dim=1, keepdim=True)


def test_relocate_strays_puts_far_points_back_on_the_surface_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    xyz = _sphere(1000, g)
    far = torch.tensor([[1.5, 0.0, 0.0], [0.0, -1.2, 0.3], [0.9, 0.9, 0.9]])
    xyz[:3] = far  # three strays well off the sphere of radius 0.5
    x = torch.cat([xyz, torch.rand(1000, 3, generator=g)], dim=1)[None]  # [1, N, 6] with colours
    out = relocate_strays(x, ratio=3.0)
    assert out.shape == x.shape
    r = out[0, :, :3].norm(dim=1)
    assert torch.allclose(r, torch.full_like(r, 0.5), atol=1e-5)  # every point now on the sphere
    assert torch.equal(out[0, 3:], x[0, 3:])  # inliers bit-identical
    # a moved point is a copy of an inlier: its coordinates *and* colour
    for i in range(3):
        assert ((x[0, 3:] - out[0, i]).abs().sum(1) == 0).any()
    assert torch.equal(relocate_strays(x, ratio=0.0), x)  # off
    assert not torch.equal(relocate_strays(x, ratio=3.0), x)


def test_relocate_strays_with_context_judges_new_points_against_the_accepted_cloud():
    g = torch.Generator().manual_seed(1)
    low = torch.cat([_sphere(500, g), torch.zeros(500, 3)], dim=1)[None]
    new = torch.cat([_sphere(300, g), torch.ones(300, 3)], dim=1)[None]
    new[0, 0, :3] = torch.tensor([2.0, 0.0, 0.0])
    out = relocate_strays(new, ratio=3.0, context=low)
    assert out.shape == new.shape
    assert torch.equal(out[0, 1:], new[0, 1:])
    assert abs(float(out[0, 0, :3].norm()) - 0.5) < 1e-5  # moved onto its nearest neighbour
    # a clean cloud is left exactly as it was
    assert torch.equal(relocate_strays(low, ratio=3.0), low)
