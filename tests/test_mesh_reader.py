"""Mesh loading: formats, scene graphs, materials, Z-up, and clear errors on broken files."""

import shutil

import numpy as np
import pytest
import trimesh

from data_tools.mesh_files import MeshError, MissingAssetError, gltf_asset_extras
from data_tools.mesh_reader import load_mesh
from pointdiff.pointcloud import y_up_to_z_up

BOX_OBJ = """mtllib box.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
usemtl red
f 1/1 2/2 3/3
f 1/1 3/3 4/2
"""


def _write(path, text):
    path.write_text(text)
    return path


def test_glb_texture_and_z_up(shared_data):
    path = shared_data / "gltf_samples/Duck/Duck.glb"
    soup = load_mesh(path)
    raw = load_mesh(path, up="z")
    assert len(soup) == 4212 and len(soup.materials) == 1
    mat = soup.materials[0]
    assert mat.linear and mat.texture is not None and mat.texture.shape[2] == 4
    assert np.isfinite(soup.uvs).all()
    np.testing.assert_allclose(soup.triangles, y_up_to_z_up(raw.triangles))
    # The Duck's node scales its mesh by 0.01: the scene graph transform is applied.
    assert np.ptp(raw.triangles.reshape(-1, 3), axis=0).max() < 2.0


def test_multi_file_gltf_and_missing_buffer(shared_data, tmp_path):
    soup = load_mesh(shared_data / "gltf_samples/WaterBottle/WaterBottle.gltf")
    assert soup.materials[0].texture.shape[:2] == (256, 256)
    shutil.copy(shared_data / "gltf_samples/WaterBottle/WaterBottle.gltf", tmp_path)
    with pytest.raises(MeshError):  # the .bin (and the PNGs) are not next to it
        load_mesh(tmp_path / "WaterBottle.gltf")


def test_symlinked_folder_inside_root(shared_data, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/bottle").symlink_to(shared_data / "gltf_samples/WaterBottle")
    soup = load_mesh(tmp_path / "data/bottle/WaterBottle.gltf", root=tmp_path / "data")
    assert soup.materials[0].texture is not None


def test_scene_graph_multiple_primitives(tmp_path):
    scene = trimesh.Scene()
    a = trimesh.creation.box((1, 1, 1))
    a.visual.face_colors = [255, 0, 0, 255]
    b = trimesh.creation.box((1, 1, 1))
    b.visual.face_colors = [0, 0, 255, 255]
    scene.add_geometry(
        a, node_name="a", transform=trimesh.transformations.translation_matrix([3, 0, 0])
    )
    scene.add_geometry(b, node_name="b", transform=trimesh.transformations.scale_matrix(2.0))
    path = tmp_path / "two.glb"
    scene.export(path)
    soup = load_mesh(path, up="z")
    assert len(soup) == 24
    lo, hi = soup.triangles.reshape(-1, 3).min(0), soup.triangles.reshape(-1, 3).max(0)
    np.testing.assert_allclose([lo[0], hi[0]], [-1.0, 3.5], atol=1e-6)  # scaled b, moved a


@pytest.mark.parametrize("fmt", ["ply", "off", "stl"])
def test_other_formats(tmp_path, fmt):
    mesh = trimesh.creation.box((1, 2, 3))
    mesh.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(mesh.vertices), 1))
    path = tmp_path / f"box.{fmt}"
    mesh.export(path)
    soup = load_mesh(path, up="z")
    assert len(soup) == 12
    np.testing.assert_allclose(np.ptp(soup.triangles.reshape(-1, 3), axis=0), [1, 2, 3], atol=1e-5)
    if fmt == "ply":
        assert soup.has_vertex_colors.all()
        np.testing.assert_allclose(
            soup.colors[0, 0, :3], [10 / 255, 200 / 255, 30 / 255], atol=1e-6
        )
    if fmt == "stl":
        assert not soup.face_colored.any()


def test_obj_material_and_texture_override(shared_data, tmp_path):
    _write(tmp_path / "box.mtl", "newmtl red\nKd 1 0 0\n")
    soup = load_mesh(_write(tmp_path / "box.obj", BOX_OBJ), up="z")
    np.testing.assert_allclose(soup.materials[0].color, [1, 0, 0, 1])
    spot = shared_data / "classic_meshes/spot"
    plain = load_mesh(spot / "spot_triangulated.obj")
    assert not plain.face_colored.any()  # UVs but no mtllib: no colour information
    textured = load_mesh(spot / "spot_triangulated.obj", texture=spot / "spot_texture.png")
    assert textured.face_colored.all()
    assert textured.materials[textured.material_ids[0]].texture is not None


def test_missing_mtl_and_texture(tmp_path):
    obj = _write(tmp_path / "box.obj", BOX_OBJ)
    with pytest.raises(MissingAssetError, match="box.mtl"):
        load_mesh(obj)
    assert load_mesh(obj, strict=False).warnings
    _write(tmp_path / "box.mtl", "newmtl red\nKd 1 1 1\nmap_Kd gone.png\n")
    with pytest.raises(MissingAssetError, match="gone.png"):
        load_mesh(obj)


def test_missing_non_colour_maps_are_only_warnings(shared_data, tmp_path):
    shutil.copytree(shared_data / "gltf_samples/WaterBottle", tmp_path / "wb")
    (tmp_path / "wb/WaterBottle_normal.png").unlink()
    soup = load_mesh(tmp_path / "wb/WaterBottle.gltf")
    assert soup.materials[0].texture is not None
    assert "WaterBottle_normal.png" in soup.warnings[0]
    (tmp_path / "wb/WaterBottle_baseColor.png").unlink()
    with pytest.raises(MissingAssetError, match="base-colour"):
        load_mesh(tmp_path / "wb/WaterBottle.gltf")


def test_textures_outside_root_are_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (4, 4), (0, 255, 0)).save(tmp_path / "images/t.png")
    _write(tmp_path / "models/box.mtl", "newmtl red\nKd 1 1 1\nmap_Kd ../images/t.png\n")
    obj = _write(tmp_path / "models/box.obj", BOX_OBJ)
    with pytest.raises(MissingAssetError):
        load_mesh(obj)  # root defaults to the OBJ's folder
    soup = load_mesh(obj, root=tmp_path)  # ShapeNet layout: the model folder is the root
    assert soup.materials[0].texture[0, 0, 1] == 255


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.obj", b"", "empty_file"),
        ("nan.obj", b"v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "non_finite_vertices"),
        ("nofaces.obj", b"v 0 0 0\nv 1 0 0\n", None),
        ("junk.glb", b"glTF\x02\x00\x00\x00garbage", None),
        ("mesh.xyz", b"1 2 3\n", "unsupported_format"),
    ],
)
def test_bad_files_raise_mesh_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MeshError) as err:
        load_mesh(path)
    if reason:
        assert err.value.reason == reason


def test_truncated_glb(synthetic_meshes, tmp_path):
    data = synthetic_meshes["torus"].export(file_type="glb")
    path = tmp_path / "cut.glb"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(MeshError):
        load_mesh(path)


def test_asset_extras_licence(shared_data):
    path = shared_data / "objaverse_cap3d_examples/glbs/b416732d162e4e4d92ee9a37c65fedbc.glb"
    extras = gltf_asset_extras(path)
    assert extras["license"].startswith("CC-BY-SA-4.0")
    assert extras["title"] == "Foldable Bed Lamp"
