"""``pointdiff convert-shape`` and ``pointdiff sample --shape-dir`` on tiny random Shap-E models
(the parity fixtures' weights), offline errors, and the turntable/GLB writers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pointdiff.cli import main
from pointdiff.compat.shape.command import check_shape_files, infer_shape_name
from pointdiff.meshing import TriMesh
from pointdiff.nerf import pan_cameras
from pointdiff.nerf.turntable import render_mesh_views, save_turntable

FIX = Path(__file__).parent / "data" / "shape_fixtures"


def _save_pt(fixture: str, path: Path, prefix: str = "") -> Path:
    f = np.load(FIX / f"shape_{fixture}.npz")
    torch.save({prefix + k[3:]: torch.from_numpy(f[k]) for k in f.files if k[:3] == "sd/"}, path)
    return path


@pytest.fixture
def shape_dir(tmp_path) -> Path:
    """text300M (2 blocks, width 32, 12-d text features) and decoder under Shap-E's file names."""
    d = tmp_path / "shape"
    d.mkdir()
    _save_pt("text", d / "text_cond.pt")
    _save_pt("decoder", d / "vector_decoder.pt")
    return d


def test_missing_files_name_urls_and_places(tmp_path, capsys):
    with pytest.raises(FileNotFoundError) as e:
        check_shape_files(tmp_path)
    msg = str(e.value)
    assert "https://openaipublic.azureedge.net/main/shap-e/text_cond.pt" in msg
    assert str(tmp_path / "vector_decoder.pt") in msg and "transmitter" in msg
    rc = main(["sample", "--shape-dir", str(tmp_path), "--out", str(tmp_path / "o"), "a chair"])
    assert rc == 2 and "text_cond.pt" in capsys.readouterr().err


def test_clip_missing_says_what_is_needed(shape_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POINTDIFF_CLIP_WEIGHTS", str(tmp_path / "nowhere.pt"))
    args = ["sample", "--shape-dir", str(shape_dir), "--out", str(tmp_path / "o"), "a chair"]
    assert main([*args, "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "CLIP ViT-L/14 text features" in err and "--clip-features" in err


@pytest.mark.slow
def test_sample_writes_mesh_render_and_latent(shape_dir, tmp_path):
    feats = tmp_path / "clip.npy"
    np.save(feats, torch.nn.functional.normalize(torch.randn(1, 12), dim=1).numpy())
    out = tmp_path / "out"
    args = ["sample", "--shape-dir", str(shape_dir), "--clip-features", str(feats)]
    args += ["--steps", "2", "--grid-size", "16", "--render-size", "16", "--render-views", "4"]
    assert main([*args, "--out", str(out), "--precision", "fp32", "a red chair"]) == 0
    folder = out / "00_a_red_chair"
    latent = np.load(folder / "latent.npy")
    assert latent.shape == (32 * 16,) and np.isfinite(latent).all()
    assert (folder / "prompt.txt").read_text() == "a red chair\n"
    if (folder / "mesh.glb").exists():  # a random model may decode to no surface at all
        assert (folder / "mesh.ply").stat().st_size > 0
        assert Image.open(folder / "render.png").size == (4 * 16, 16)
        assert Image.open(folder / "turntable.gif").n_frames == 3  # the repeated view dropped


def test_convert_shape_cli_infers_the_name(tmp_path, capsys):
    src = _save_pt("decoder", tmp_path / "vector_decoder.pt")
    assert main(["convert-shape", str(src), str(tmp_path / "decoder")]) == 0
    meta = json.loads((tmp_path / "decoder" / "config.json").read_text())
    assert meta["name"] == "decoder" and meta["kind"] == "decoder"
    assert infer_shape_name("text_cond.pt") == "text300M"
    assert infer_shape_name("image300M.pt") == "image300M"
    with pytest.raises(ValueError, match="--name"):
        infer_shape_name("model.pt")
    # and a converted directory is found in place of the .pt
    shape = tmp_path / "dir"
    shape.mkdir()
    (tmp_path / "decoder").rename(shape / "decoder")
    _save_pt("text", shape / "text300M.pt")
    assert check_shape_files(shape)["decoder"] == shape / "decoder"


def test_turntable_png_gif_and_mesh_views(tmp_path):
    """A unit sphere's turntable: centred, lit, background around it; the GIF loops once."""
    verts = np.random.default_rng(0).normal(size=(400, 3))
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    from scipy.spatial import ConvexHull

    mesh = TriMesh(verts * 0.5, ConvexHull(verts).simplices, np.full_like(verts, 0.8))
    images = render_mesh_views(mesh, pan_cameras(32, views=5))
    assert images.shape == (5, 32, 32, 3)
    assert images[:, 16, 16].min() > 0.2  # the sphere covers the centre in every view
    assert images[:, 0, 0].max() == 0.0  # black background in the corners
    save_turntable(images, tmp_path / "t.png", tmp_path / "t.gif", cols=5)
    assert Image.open(tmp_path / "t.png").size == (5 * 32, 32)
    assert Image.open(tmp_path / "t.gif").n_frames == 4
    mesh.save(tmp_path / "m.glb")
    blob = (tmp_path / "m.glb").read_bytes()
    assert blob[:4] == b"glTF" and b"COLOR_0" in blob
