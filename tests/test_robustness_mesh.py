"""`pointdiff mesh` on bad input: every case exits with a message naming the problem, never a
traceback, and never a wrong file with exit code 0. Bad files are made on the fly."""

import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pointdiff.cli import main
from pointdiff.meshing import mesh as mesh_module
from pointdiff.meshing import reconstruct, vertex_colors_from_cloud
from pointdiff.pointcloud import PointCloud, PointCloudError


def _sphere(n: int = 600, seed: int = 0) -> PointCloud:
    g = np.random.default_rng(seed)
    p = g.normal(size=(n, 3))
    p = 0.4 * p / np.linalg.norm(p, axis=1, keepdims=True)
    return PointCloud(p.astype(np.float32), np.clip(p + 0.5, 0, 1).astype(np.float32))


def _mesh(capsys, *args) -> tuple[int, str]:
    """Run ``pointdiff mesh ARGS`` in-process -> (exit code, stderr); no traceback allowed."""
    try:
        code = main(["mesh", *map(str, args)])
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Warning:" not in err, err
    return code, err


def _fails(capsys, pattern: str, *args) -> str:
    code, err = _mesh(capsys, *args)
    assert code == 2, err
    assert "error:" in err and pattern in err, err
    return err


def _ply_header(n, props=("float x", "float y", "float z"), fmt="binary_little_endian") -> bytes:
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {n}"]
    lines += [f"property {p}" for p in props] + ["end_header", ""]
    return "\n".join(lines).encode()


def _glb_normals(path) -> np.ndarray:
    data = path.read_bytes()
    (js_len,) = struct.unpack("<I", data[12:16])
    gltf = json.loads(data[20 : 20 + js_len])
    acc = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["NORMAL"]]
    view = gltf["bufferViews"][acc["bufferView"]]
    start = 20 + js_len + 8 + view["byteOffset"]
    return np.frombuffer(data[start : start + view["byteLength"]], np.float32).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Input files: what is wrong with them is named, with the file


def _bad_inputs(tmp_path) -> dict[str, tuple[str, object]]:
    """name -> (expected message, path) of broken cloud files."""
    good = tmp_path / "good.ply"
    _sphere().save(good)
    _sphere().save(tmp_path / "good.npz")
    cases = {}

    def add(name, pattern, data: bytes):
        (tmp_path / name).write_bytes(data)
        cases[name] = (pattern, tmp_path / name)

    add("empty.ply", "empty file (0 bytes)", b"")
    add("empty.npz", "empty file (0 bytes)", b"")
    add("garbage.ply", "not a PLY file", np.random.default_rng(0).bytes(5000))
    add("garbage.npz", "not a valid .npz file", np.random.default_rng(1).bytes(5000))
    add("text.npz", "not a valid .npz file", b"x y z\n0 0 0\n")
    add("cut.npz", "not a valid .npz file", (tmp_path / "good.npz").read_bytes()[:3000])
    add("cut.ply", "truncated PLY vertex data", good.read_bytes()[:2000])
    add("noend.ply", "no end_header", _ply_header(10)[:-12])
    add("huge_count.ply", "declares 1,000,000,000,000 vertices", _ply_header(10**12) + b"\0" * 64)
    add("ascii_cut.ply", "truncated", _ply_header(100, fmt="ascii") + b"0 0 0\n1 1 1\n")
    add("bad_count.ply", "malformed PLY header line 'element vertex many'",
        _ply_header("many"))  # fmt: skip
    add("neg_count.ply", "negative count", _ply_header(-5))
    add("bad_type.ply", "unknown type 'float128'", _ply_header(1, ("float128 x",)))
    add("no_z.ply", "no 'z' property", _ply_header(1, ("float x", "float y")) + b"\0" * 8)
    good_npz = bytearray((tmp_path / "good.npz").read_bytes())
    good_npz[200:210] = b"\xff" * 10  # inside coords.npy's data: the CRC no longer matches
    add("crc.npz", "Bad CRC-32", bytes(good_npz))

    def npz(name, pattern, **arrays):
        np.savez(tmp_path / name, **arrays)
        cases[name] = (pattern, tmp_path / name)

    xyz = _sphere().coords
    npz("no_coords.npz", "no 'coords' array (keys: ['points'])", points=xyz)
    npz("flat.npz", "coords must be [N, 3]", coords=xyz[:, :2])
    npz("strings.npz", "coords must be numbers", coords=np.array([["a", "b", "c"]]))
    npz("nan.npz", "1 of 600 points have non-finite (NaN/inf) coordinates (first: point 7)",
        coords=np.where(np.arange(600)[:, None] == 7, np.nan, xyz))  # fmt: skip
    npz("inf.npz", "non-finite (NaN/inf) coordinates", coords=xyz * np.float32(np.inf))
    npz("overflow.npz", "must lie within ±1e+37", coords=xyz.astype(np.float64) * 1e300)
    npz("nan_colors.npz", "non-finite (NaN/inf) colours", coords=xyz,
        colors=np.full_like(xyz, np.nan))  # fmt: skip
    npz("neg_colors.npz", "colours range from -0.4", coords=xyz, colors=xyz.round(1))
    npz("big_colors.npz", "colours range from 0 to 1000; expected 0..1 or 0..255", coords=xyz,
        colors=np.linspace(0, 1000, xyz.size).reshape(xyz.shape))  # fmt: skip
    npz("few_colors.npz", "colors (10, 3) must match coords (600, 3)", coords=xyz,
        colors=np.zeros((10, 3)))  # fmt: skip
    npz("zero.npz", "zero points", coords=np.zeros((0, 3)))
    # an npy header claiming 10^12 points, inside a valid zip
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w") as z, z.open("coords.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)}
        )
        f.write(b"\0" * 48)
    cases["bomb.npz"] = ("declares shape (1000000000000, 3)", bomb)
    # paths that are not files
    (tmp_path / "folder.ply").mkdir()
    cases["folder.ply"] = ("is a directory", tmp_path / "folder.ply")
    os.symlink(tmp_path / "gone.ply", tmp_path / "dangling.ply")
    cases["dangling.ply"] = ("broken symbolic link", tmp_path / "dangling.ply")
    cases["missing.ply"] = ("no such file", tmp_path / "missing.ply")
    cases["cloud.xyz"] = ("unsupported suffix '.xyz'", good.with_suffix(".xyz"))
    good.with_suffix(".xyz").write_bytes(good.read_bytes())
    return cases


def test_bad_cloud_files_are_named_with_the_problem(tmp_path, capsys):
    for name, (pattern, path) in _bad_inputs(tmp_path).items():
        err = _fails(capsys, pattern, path, "-o", tmp_path / "m.glb", "--method", "poisson")
        assert str(path) in err, (name, err)
        assert not (tmp_path / "m.glb").exists(), name


def test_links_to_a_cloud_are_followed(tmp_path):
    _sphere().save(tmp_path / "real.npz")
    os.symlink(tmp_path / "real.npz", tmp_path / "link.npz")
    assert len(PointCloud.load(tmp_path / "link.npz")) == 600


def test_points_all_at_one_place(tmp_path, capsys):
    np.savez(tmp_path / "dot.npz", coords=np.ones((50, 3)))
    _fails(capsys, "degenerate bounding box (all 50 points at one place)", tmp_path / "dot.npz",
           "-o", tmp_path / "m.glb", "--method", "poisson")  # fmt: skip


@pytest.mark.parametrize("n", [3, 31])
def test_too_few_points_is_one_clear_error(tmp_path, capsys, n):
    _sphere(n).save(tmp_path / "few.npz")
    method = "auto" if n == 3 else "poisson"  # auto: no fallback note, the same single error
    err = _fails(capsys, f"has {n} points: too few to mesh (minimum 32)",
                 tmp_path / "few.npz", "-o", tmp_path / "m.glb", "--method", method,
                 "--precision", "fp32")  # fmt: skip
    assert "note:" not in err  # no fallback note (fp32: no note on the precision either)


# ----------------------------------------------------------------------------------------------
# Colours: one rule for every reader


def test_colour_ranges_are_read_the_same_by_every_reader(tmp_path):
    cloud = _sphere()
    want = np.round(cloud.colors * 255) / 255  # what an 8-bit file can hold
    c8 = np.round(cloud.colors * 255).astype(np.uint8)
    np.savez(tmp_path / "unit.npz", coords=cloud.coords, colors=want)
    np.savez(tmp_path / "u8.npz", coords=cloud.coords, colors=c8)
    np.savez(tmp_path / "f255.npz", coords=cloud.coords, colors=c8.astype(np.float32))
    np.savez(tmp_path / "rgba.npz", coords=cloud.coords,
             colors=np.concatenate([c8, np.full((600, 1), 255, np.uint8)], 1))  # fmt: skip
    cloud.save(tmp_path / "u8.ply")  # uchar red/green/blue
    rows = np.concatenate([cloud.coords, c8.astype(np.float32)], 1)
    props = ["float x", "float y", "float z", "float red", "float green", "float blue"]
    (tmp_path / "f255.ply").write_bytes(_ply_header(600, props) + rows.astype("<f4").tobytes())
    for name in ("unit.npz", "u8.npz", "f255.npz", "rgba.npz", "u8.ply", "f255.ply"):
        got = PointCloud.load(tmp_path / name).colors
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


def test_npz_with_0_255_colours_meshes_in_colour(tmp_path, capsys):
    cloud = _sphere()
    np.savez(tmp_path / "c.npz", coords=cloud.coords, colors=cloud.colors * 255)
    code, err = _mesh(capsys, tmp_path / "c.npz", "-o", tmp_path / "m.ply", "--method", "poisson")
    assert code == 0, err
    import trimesh

    rgb = trimesh.load(tmp_path / "m.ply", process=False).visual.vertex_colors[:, :3] / 255.0
    assert rgb.mean() < 0.8 and rgb.std(0).min() > 0.05  # the sphere's gradient, not white


# ----------------------------------------------------------------------------------------------
# Huge coordinates and huge clouds


def test_huge_coordinates_give_finite_unit_normals(tmp_path, capsys):
    cloud = _sphere()
    PointCloud(cloud.coords * np.float32(1e30), cloud.colors).save(tmp_path / "far.ply")
    code, err = _mesh(capsys, tmp_path / "far.ply", "-o", tmp_path / "m.glb",
                      "--method", "poisson")  # fmt: skip
    assert code == 0, err
    n = _glb_normals(tmp_path / "m.glb")
    assert np.isfinite(n).all()
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-4)


def test_tiny_coordinates_give_unit_normals():
    m = mesh_module.TriMesh(np.eye(3) * 1e-20, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(np.linalg.norm(m.vertex_normals(), axis=1), 1, atol=1e-6)


def test_colouring_a_large_cloud_keeps_memory_bounded():
    """4096 vertices of a 300k-point cloud under a 512 MB address-space headroom: a dense
    vertex x point distance matrix (4.9 GB) cannot be allocated, a k-d tree needs ~50 MB."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux /proc to measure the address space")
    code = """
import resource
import numpy as np
from pointdiff.meshing import vertex_colors_from_cloud
from pointdiff.pointcloud import PointCloud

g = np.random.default_rng(0)
cloud = PointCloud(g.uniform(-0.5, 0.5, (300_000, 3)), g.uniform(0, 1, (300_000, 3)))
verts = cloud.coords[:4096] + np.float32(1e-3)
vm = next(int(s.split()[1]) for s in open("/proc/self/status") if s.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + (512 << 20), resource.RLIM_INFINITY))
colors = vertex_colors_from_cloud(verts, cloud)
assert np.abs(colors - cloud.colors[:4096]).max() < 0.6
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_vertex_colors_with_one_neighbour_or_one_point():
    cloud = _sphere()
    np.testing.assert_allclose(vertex_colors_from_cloud(cloud.coords[:5], cloud, k=1),
                               cloud.colors[:5])  # fmt: skip
    one = PointCloud(np.zeros((1, 3)), np.full((1, 3), 0.25))
    np.testing.assert_allclose(vertex_colors_from_cloud(np.ones((4, 3)), one), 0.25)


def test_poisson_on_a_huge_cloud_reconstructs_from_a_subset_and_says_so(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(reconstruct, "POISSON_MAX_POINTS", 1000)  # stands in for 50k of 2M
    _sphere(3000).save(tmp_path / "big.ply")
    code, err = _mesh(capsys, tmp_path / "big.ply", "-o", tmp_path / "m.glb",
                      "--method", "poisson")  # fmt: skip
    assert code == 0, err
    assert "note: Poisson reconstruction uses a random 1,000 of the cloud's 3,000 points" in err


def test_fps_subsample_of_a_huge_cloud_looks_at_a_bounded_pool(monkeypatch):
    seen = []
    from pointdiff import pointcloud

    fps = pointcloud.farthest_point_sample
    monkeypatch.setattr(pointcloud, "farthest_point_sample",
                        lambda x, k, start: seen.append(len(x)) or fps(x, k, start))  # fmt: skip
    cloud = _sphere(20_000)
    sub = cloud.subsample(64)
    assert seen == [pointcloud.FPS_POOL * 64] and len(sub) == 64
    assert len(np.unique(sub.coords, axis=0)) == 64
    # spread like FPS over the whole cloud: no two picks much closer than the usual spacing
    d = np.linalg.norm(sub.coords[:, None] - sub.coords[None], axis=-1) + np.eye(64)
    assert d.min() > 0.05
    assert np.array_equal(cloud.subsample(64).coords, sub.coords)  # still seeded
    seen.clear()
    cloud.subsample(1000)  # 20k < 32 x 1000: the whole cloud, as before
    assert seen == [20_000]


# ----------------------------------------------------------------------------------------------
# Outputs are checked before any work; arguments at the edge


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if meshing starts: the output and argument checks must come first."""
    from pointdiff import outputs

    def forbidden(*args, **kwargs):
        raise AssertionError("meshing started before the arguments were checked")

    monkeypatch.setattr(outputs, "mesh_cloud_file", forbidden)


def test_bad_outputs_are_reported_before_meshing(tmp_path, capsys, no_work):
    cloud = tmp_path / "c.ply"
    _sphere().save(cloud)
    (tmp_path / "file").write_text("x")
    (tmp_path / "taken.glb").mkdir()
    cases = {
        tmp_path / "missing" / "m.glb": f"directory {tmp_path / 'missing'} does not exist",
        tmp_path / "file" / "m.glb": "is not a directory",
        tmp_path / "taken.glb": "it is a directory",
        tmp_path / "m.stl": "unsupported mesh suffix '.stl'",
        tmp_path / "m": "unsupported mesh suffix ''",
        cloud: "is the input cloud",
    }
    for out, pattern in cases.items():
        err = _fails(capsys, pattern, cloud, "-o", out, "--method", "poisson")
        assert "argument -o/--out" in err
    assert (tmp_path / "c.ply").stat().st_size > 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_directory_is_reported_before_meshing(tmp_path, capsys, no_work):
    _sphere().save(tmp_path / "c.ply")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, "is not writable", tmp_path / "c.ply", "-o", locked / "m.glb")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--grid-size", "0"], "argument --grid-size: must be an integer from 8 to 512, got '0'"),
        (["--grid-size", "-4"], "argument --grid-size"),
        (["--grid-size", "100000"], "argument --grid-size"),
        (["--grid-size", "1.5"], "argument --grid-size"),
        (["--grid-size", "abc"], "argument --grid-size"),
        (["--method", "marching"], "argument --method: invalid choice: 'marching'"),
        (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
        (["--checkpoint", "no/such/dir"], "argument --checkpoint: no/such/dir is not a directory"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, capsys, no_work, args, pattern):
    _sphere().save(tmp_path / "c.ply")
    _fails(capsys, pattern, tmp_path / "c.ply", "-o", tmp_path / "m.glb", *args)


def test_a_missing_checkpoint_is_fine_for_poisson(tmp_path, capsys):
    _sphere().save(tmp_path / "c.ply")
    code, err = _mesh(capsys, tmp_path / "c.ply", "-o", tmp_path / "m.obj", "--method", "poisson",
                      "--checkpoint", tmp_path / "none")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "m.obj").stat().st_size > 0 and (tmp_path / "m.mtl").exists()


def test_library_refuses_to_write_nan_normals(tmp_path):
    m = mesh_module.TriMesh(np.eye(3), np.array([[0, 1, 2]]))
    m.normals = np.full((3, 3), np.nan, np.float32)
    with pytest.raises(mesh_module.MeshError, match="normals contain NaN"):
        m.save(tmp_path / "m.glb")
    assert not (tmp_path / "m.glb").exists()


def test_library_loader_errors_are_point_cloud_errors(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(PointCloudError, match="is a directory"):
        PointCloud.load(tmp_path / "d.npz")
