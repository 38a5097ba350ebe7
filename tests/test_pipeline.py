"""The text -> cloud -> mesh pipeline and the ``pointdiff`` CLI, end to end on tiny checkpoints."""

import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pointdiff import precision
from pointdiff.checkpoint import CheckpointError, export_for_release, save_checkpoint
from pointdiff.cli import main
from pointdiff.conditioning.prompts import PromptError
from pointdiff.conditioning.text import TextEncoder
from pointdiff.config import DiffusionConfig, SampleConfig, get_preset
from pointdiff.meshing import MeshResult, TriMesh
from pointdiff.models import build_model
from pointdiff.pipeline import PipelineError, SurfaceUpsampler, TextTo3D, load_pipeline
from pointdiff.pointcloud import PointCloud

SAMPLE = SampleConfig(sampler="heun", steps=3, guidance=3.0, s_churn=1.0)


def _release(tmp, name, model, cfg, text=None):
    configs = {"model": cfg, "diffusion": DiffusionConfig(), "sample": SAMPLE}
    ckpt = save_checkpoint(
        tmp / f"run_{name}", 1, model, None, None, None, configs, text_encoder=text
    )
    return export_for_release(ckpt, tmp / "pipe" / name, dtype=torch.float32)


def _fit_sphere_sdf(model, steps=80):
    """A few Adam steps towards |q| - 0.3 so the tiny SDF head crosses zero (meshable)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pts = torch.nn.functional.normalize(
        torch.randn(1, model.cfg.num_points, 3, generator=g), dim=-1
    )
    pts = pts * 0.3
    for _ in range(steps):
        q = torch.rand(1, 256, 3, generator=g) - 0.5
        loss = (model(pts, q) - (q.norm(dim=-1) - 0.3)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    base_cfg = get_preset("tiny")
    text = TextEncoder.from_config("tiny", seed=0)
    assert text.dim == base_cfg.cond_dim
    _release(tmp, "base", build_model(base_cfg), base_cfg, text)
    up_cfg = get_preset("upsample_tiny")
    _release(tmp, "upsampler", build_model(up_cfg), up_cfg)
    sdf_cfg = get_preset("sdf_tiny")
    _release(tmp, "sdf", _fit_sphere_sdf(build_model(sdf_cfg)), sdf_cfg)
    spec = {"stages": {"base": "base", "upsampler": "upsampler", "sdf": "sdf"}}
    (tmp / "pipe" / "pipeline.json").write_text(json.dumps(spec))
    (tmp / "pipe" / "base" / "captions.json").write_text(json.dumps(["a chair", "a table"]))
    return tmp / "pipe"


def test_pipeline_stages_keep_low_res_and_are_deterministic(tiny_pipeline):
    pipe = load_pipeline(tiny_pipeline)
    assert [s.name for s in pipe.stages] == ["base", "upsampler"]
    base = pipe.sample_clouds(["a chair", "a table"], seed=3, stop_after="base")
    full = pipe.sample_clouds(["a chair", "a table"], seed=3)
    assert len(base[0]) == 64 and len(full[0]) == 64 + 192
    # the upsampler keeps the base points verbatim (same seed -> same base stage)
    np.testing.assert_array_equal(full[0].coords[:64], base[0].coords)
    again = pipe.sample_clouds(["a chair", "a table"], seed=3)
    np.testing.assert_array_equal(again[1].coords, full[1].coords)
    other = pipe.sample_clouds(["a chair", "a table"], seed=4)
    assert not np.array_equal(other[1].coords, full[1].coords)
    # each sampler runs through the pipeline
    for sampler in ("euler", "dpmpp_2m"):
        c = pipe.sample_clouds(["a chair"], seed=0, overrides={"sampler": sampler, "steps": 2})
        assert np.isfinite(c[0].coords).all()
    # per-stage overrides reach only their stage: the base part is unchanged
    per = pipe.sample_clouds(
        ["a chair", "a table"],
        seed=3,
        stage_overrides={"upsampler": {"sampler": "euler", "steps": 2}},
    )
    np.testing.assert_array_equal(per[0].coords[:64], base[0].coords)
    assert not np.array_equal(per[0].coords, full[0].coords)
    with pytest.raises(PipelineError, match="unknown stages"):
        pipe.sample_clouds(["a chair"], stage_overrides={"nope": {"steps": 2}})
    result = pipe.to_mesh(full[0], grid_size=24)
    assert isinstance(result, MeshResult) and result.method in ("sdf_snapped", "poisson")
    mesh = result.mesh
    assert isinstance(mesh, TriMesh) and mesh.num_faces > 0 and mesh.colors is not None


def test_pipeline_bad_inputs(tiny_pipeline, tmp_path):
    pipe = load_pipeline(tiny_pipeline)
    with pytest.raises(PromptError, match="empty"):
        pipe.sample_clouds([])
    with pytest.raises(PromptError, match="list of strings"):
        pipe.sample_clouds("a chair")
    with pytest.raises(PromptError, match="non-empty string"):
        pipe.sample_clouds(["a chair", 3])
    with pytest.raises(PromptError, match="non-empty string"):
        pipe.read_prompts(["a chair", " "])
    with pytest.raises(PipelineError, match="unknown sampler"):
        pipe.sample_clouds(["a chair"], overrides={"sampler": "ddim"})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pipeline(tmp_path / "nope")
    # the upsampler's directory given where a base model is expected: wrong kind
    with pytest.raises(CheckpointError, match="expected 'denoiser'"):
        load_pipeline(tiny_pipeline / "upsampler")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError):
        load_pipeline(tmp_path / "bad")
    chair, ship = pipe.read_prompts(["a chair", "a spaceship"])
    assert chair.warnings == () and len(ship.warnings) == 1 and "shares no word" in ship.warnings[0]


def test_cli_sample_writes_cloud_mesh_and_previews(tiny_pipeline, tmp_path, capsys):
    args = [
        "sample",
        "a chair",
        "--checkpoint",
        str(tiny_pipeline),
        "--out",
        str(tmp_path),
        "--steps",
        "2",
        "--grid-size",
        "20",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    folder = tmp_path / "00_a_chair"
    for name in ("cloud.ply", "cloud.npz", "cloud.png", "mesh.glb", "mesh.ply", "mesh.png"):
        assert (folder / name).stat().st_size > 0, name
    cloud = PointCloud.load(folder / "cloud.ply")
    assert len(cloud) == 256
    first = (folder / "cloud.npz").read_bytes()
    assert main(args + ["--overwrite"]) == 0  # same seed -> same bytes
    assert (folder / "cloud.npz").read_bytes() == first
    # an interval holding every sigma is plain guidance: same bytes again
    assert main(args + ["--overwrite", "--guidance-interval", "0", "1e9"]) == 0
    assert (folder / "cloud.npz").read_bytes() == first
    # bad input gives one clear line and exit code 2, no traceback
    with pytest.raises(SystemExit) as e:  # argparse's own check of each prompt
        main(["sample", " ", "--checkpoint", str(tiny_pipeline), "--out", str(tmp_path)])
    assert e.value.code == 2 and "non-empty string" in capsys.readouterr().err
    assert main(["sample", "x", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_mesh_any_cloud(tiny_pipeline, tmp_path, synthetic_clouds):
    out = tmp_path / "torus.glb"
    torus = synthetic_clouds[0]
    cloud = tmp_path / "torus.npz"  # point-e's layout: coords and R, G, B channels in [0, 1]
    r, g, b = torus["colors"].T / np.float32(255)
    np.savez(cloud, coords=torus["coords"], R=r, G=g, B=b)
    assert (
        main(
            [
                "mesh",
                str(cloud),
                "-o",
                str(out),
                "--checkpoint",
                str(tiny_pipeline),
                "--grid-size",
                "20",
            ]
        )
        == 0
    )
    assert out.stat().st_size > 0
    assert main(["mesh", str(cloud), "-o", str(tmp_path / "m.stl")]) == 2
    # a cloud in other units and place: the mesh comes back in the cloud's own frame
    src = PointCloud.load(cloud)
    moved = PointCloud(src.coords * 10 + np.float32([5, 0, -3]), src.colors)
    moved.save(tmp_path / "moved.ply")
    for method in ("poisson", "auto"):
        ply = tmp_path / f"moved_{method}.ply"
        assert (
            main(
                [
                    "mesh",
                    str(tmp_path / "moved.ply"),
                    "-o",
                    str(ply),
                    "--method",
                    method,
                    "--checkpoint",
                    str(tiny_pipeline),
                    "--grid-size",
                    "20",
                ]
            )
            == 0
        )
        import trimesh

        v = trimesh.load(ply, process=False).vertices
        lo, hi = moved.coords.min(0), moved.coords.max(0)
        assert (v.min(0) > lo - 0.15 * (hi - lo)).all() and (v.max(0) < hi + 0.15 * (hi - lo)).all()
        assert (v.max(0) - v.min(0)).max() > 0.5 * (hi - lo).max()


def test_auto_meshing_falls_back_to_poisson_when_the_sdf_surface_misses_the_cloud(tiny_pipeline):
    pipe = load_pipeline(tiny_pipeline)  # its SDF head was fitted to a sphere of radius 0.3
    g = np.random.default_rng(0)
    p = g.normal(size=(2048, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    colors = np.full((2048, 3), 0.5, np.float32)
    sphere = PointCloud((0.3 * p).astype(np.float32), colors)
    fitted = pipe.to_mesh(sphere, grid_size=32, max_fit_error=0.05)
    assert fitted.method == "sdf_snapped" and not fitted.fallback and "fits" in fitted.reason
    small = PointCloud((0.1 * p).astype(np.float32), colors)  # the SDF head ignores it
    fallback = pipe.to_mesh(small, grid_size=32, max_fit_error=0.05)
    assert fallback.method == "poisson" and fallback.fallback
    assert "does not fit the cloud" in fallback.reason
    assert np.abs(np.linalg.norm(fallback.mesh.verts, axis=1) - 0.1).mean() < 0.02
    assert np.abs(np.linalg.norm(fitted.mesh.verts, axis=1) - 0.3).mean() < 0.05
    # method="sdf" returns the SDF mesh whatever its fit
    forced = pipe.to_mesh(small, grid_size=32, method="sdf")
    assert forced.method == "sdf_snapped" and forced.mesh.num_faces > 0
    assert pipe.to_mesh(small, method="poisson").reason == "asked for"


def test_auto_meshing_falls_back_only_when_the_field_has_no_surface(tiny_pipeline, monkeypatch):
    """No surface in the field -> Poisson, saying so; any other meshing error is raised."""
    from pointdiff.meshing import MeshError

    pipe = load_pipeline(tiny_pipeline)
    g = np.random.default_rng(0)
    p = g.normal(size=(512, 3))
    cloud = PointCloud(
        (0.3 * p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32),
        np.full((512, 3), 0.5, np.float32),
    )
    model = pipe.sdf_model
    monkeypatch.setattr(model, "query_fn", lambda *a, **k: lambda q: torch.ones(len(q)))
    empty = pipe.to_mesh(cloud, grid_size=16)
    assert empty.fallback and empty.method == "poisson" and "no surface" in empty.reason
    with pytest.raises(MeshError, match="never crosses"):
        pipe.to_mesh(cloud, grid_size=16, method="sdf")
    monkeypatch.setattr(model, "query_fn", lambda *a, **k: lambda q: torch.full((len(q),), np.nan))
    with pytest.raises(MeshError, match="NaN"):
        pipe.to_mesh(cloud, grid_size=16)


def test_a_prompts_sample_does_not_depend_on_the_rest_of_the_batch(tiny_pipeline):
    pipe = load_pipeline(tiny_pipeline)
    kw = {"overrides": {"sampler": "heun", "steps": 3, "s_churn": 1.0}}  # churn draws noise too
    batch = pipe.sample_clouds(["a chair", "a table", "a lamp"], seed=7, **kw)
    alone = pipe.sample_clouds(["a table"], seed=8, **kw)[0]  # prompt i uses seed + i
    np.testing.assert_allclose(batch[1].coords, alone.coords, atol=1e-5)
    np.testing.assert_allclose(batch[1].colors, alone.colors, atol=1)
    first = pipe.sample_clouds(["a chair"], seed=7, **kw)[0]
    np.testing.assert_allclose(batch[0].coords, first.coords, atol=1e-5)


def test_stray_relocation_runs_after_each_stage_and_keeps_the_point_count(tiny_pipeline):
    from pointdiff.pointcloud import relocate_strays, to_model_space

    pipe = load_pipeline(tiny_pipeline)
    assert pipe.stages[0].sample.stray_ratio == 0.0  # off unless the checkpoint asks for it
    raw = pipe.sample_clouds(["a chair"], seed=2, stop_after="base")[0]
    clean = pipe.sample_clouds(
        ["a chair"], seed=2, stop_after="base", overrides={"stray_ratio": 1.1}
    )[0]
    assert len(clean) == len(raw)
    x = to_model_space(torch.from_numpy(raw.coords), torch.from_numpy(raw.colors))[None]
    want = PointCloud.from_tensor(relocate_strays(x, 1.1)[0])
    np.testing.assert_allclose(clean.coords, want.coords, atol=1e-6)
    assert not np.array_equal(clean.coords, raw.coords)  # ratio 1.1: many points are "strays"
    full = pipe.sample_clouds(["a chair"], seed=2, overrides={"stray_ratio": 1.1})[0]
    np.testing.assert_array_equal(full.coords[:64], clean.coords)  # the upsampler keeps them


def test_guidance_interval_bounds_where_guidance_acts(tiny_pipeline):
    """An interval holding every σ of the grid is plain guidance; one holding none is the
    conditional model (guidance 1); one holding some differs from both."""
    pipe = load_pipeline(tiny_pipeline)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the tiny model's zero-init layers ignore the prompt: wake them up
        for p in pipe.stages[0].denoiser.net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))

    def base(**ov):
        return pipe.sample_clouds(
            ["a chair"],
            seed=3,
            stop_after="base",
            overrides={"sampler": "dpmpp_2m", "steps": 6, **ov},
        )[0].coords

    guided, cond = base(guidance=3.0), base(guidance=1.0)
    np.testing.assert_array_equal(base(guidance=3.0, guidance_interval=(0.0, 1e9)), guided)
    np.testing.assert_array_equal(base(guidance=3.0, guidance_interval=(1e8, 1e9)), cond)
    part = base(guidance=3.0, guidance_interval=(0.0, 1.0))
    assert not np.array_equal(guided, cond)
    assert not np.array_equal(part, guided) and not np.array_equal(part, cond)


def test_a_lexicon_reads_unknown_words_as_known_ones(tiny_pipeline, tmp_path, capsys, monkeypatch):
    import shutil

    from pointdiff.conditioning.lexicon import PromptReader, save_lexicon

    plain = load_pipeline(tiny_pipeline)
    (desk,) = plain.read_prompts(["a desk"])
    assert plain.aliases == {} and (desk.read, dict(desk.swaps)) == ("a desk", {})
    assert desk.warnings  # shares no word with "a chair", "a table"
    pipe_dir = shutil.copytree(tiny_pipeline, tmp_path / "pipe")
    save_lexicon(pipe_dir / "base", {"desk": "table", "chair": "seat"})
    pipe = load_pipeline(pipe_dir)
    desk, chair = pipe.read_prompts(["a Desk", "a chair"])
    assert (desk.text, desk.read, dict(desk.swaps)) == ("a Desk", "a table", {"desk": "table"})
    assert (chair.read, dict(chair.swaps)) == ("a chair", {})  # known words are never swapped
    assert desk.warnings == ()
    # the model is given the rewritten prompt: "a desk" samples exactly what "a table" does
    kw = dict(seed=3, stop_after="base", overrides={"steps": 2})
    desk = pipe.sample_clouds(["a desk"], **kw)[0].coords
    assert np.array_equal(desk, pipe.sample_clouds(["a table"], **kw)[0].coords)
    seen = []
    embed = pipe.text_encoder.embed
    monkeypatch.setattr(pipe.text_encoder, "embed", lambda p: seen.extend(p) or embed(p))
    pipe.sample_clouds(["a desk, table (office)", "a chair"], **kw)
    assert seen == ["a table", "a chair"]  # "office" is no caption word: noise, dropped
    # a prompt read once is not read again: the pipeline embeds what the Prompt says
    seen.clear()
    read = pipe.read_prompts(["a desk"])
    reads = []
    real_read = PromptReader.read
    monkeypatch.setattr(PromptReader, "read", lambda self, t: reads.append(t) or real_read(self, t))
    pipe.sample_clouds(read, **kw)
    assert seen == ["a table"] and reads == []
    args = [
        "sample",
        "a desk",
        "--checkpoint",
        str(pipe_dir),
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "2",
        "--stop-after",
        "base",
    ]
    assert main(args) == 0
    assert reads == ["a desk"]  # the command reads each prompt once
    err = capsys.readouterr().err
    assert "'desk' as 'table'" in err and "warning" not in err
    assert (tmp_path / "out" / "00_a_desk" / "cloud.ply").is_file()  # files keep the user's prompt


def test_pipeline_with_a_surface_upsampler(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, pipe_dir)
    shutil.rmtree(pipe_dir / "upsampler")
    (pipe_dir / "pipeline.json").write_text(
        json.dumps({"stages": {"base": "base", "upsampler": {"surface": 192}, "sdf": "sdf"}})
    )
    pipe = load_pipeline(pipe_dir)
    assert isinstance(pipe.stages[1], SurfaceUpsampler)
    base = pipe.sample_clouds(["a chair", "a table"], seed=3, stop_after="base")
    full = pipe.sample_clouds(["a chair", "a table"], seed=3)
    assert len(full[0]) == 64 + 192
    np.testing.assert_array_equal(full[0].coords[:64], base[0].coords)
    again = pipe.sample_clouds(["a table"], seed=4)
    np.testing.assert_array_equal(again[0].coords, full[1].coords)
    proj = pipe.sample_clouds(
        ["a chair"], seed=3, stop_after="base", overrides={"surface_projection": 1.0}
    )
    assert not np.array_equal(proj[0].coords, base[0].coords)
    np.testing.assert_array_equal(proj[0].colors, base[0].colors)
    (pipe_dir / "pipeline.json").write_text(
        json.dumps({"stages": {"base": "base", "upsampler": {"surface": -1}}})
    )
    with pytest.raises(CheckpointError, match="surface"):
        load_pipeline(pipe_dir)


# ----------------------------------------------------------------------------------------------
# Device and precision: auto picks for the hardware; --bf16 is --precision bf16


@pytest.fixture
def spy_bf16(monkeypatch):
    """The ``bf16`` each pipeline call received (sampling, meshing), in order."""
    seen = []
    sample, mesh = TextTo3D.sample_clouds, TextTo3D.to_mesh

    def sample_clouds(self, prompts, *a, bf16=None, **kw):
        seen.append(("sample", self.bf16 if bf16 is None else bf16))
        return sample(self, prompts, *a, bf16=bf16, **kw)

    def to_mesh(self, cloud, *a, bf16=None, **kw):
        seen.append(("mesh", self.bf16 if bf16 is None else bf16))
        return mesh(self, cloud, *a, bf16=bf16, **kw)

    monkeypatch.setattr(TextTo3D, "sample_clouds", sample_clouds)
    monkeypatch.setattr(TextTo3D, "to_mesh", to_mesh)
    return seen


def _cpu(monkeypatch, flags, capability):
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(flags))
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)


def test_cli_precision_auto_fp32_bf16_and_the_alias(
    tiny_pipeline, tmp_path, capsys, spy_bf16, monkeypatch
):
    base = ["sample", "a chair", "--checkpoint", str(tiny_pipeline), "--steps", "2"]
    base += ["--grid-size", "16", "--overwrite", "--out", str(tmp_path)]
    _cpu(monkeypatch, {"avx2"}, "AVX2")  # no native bf16: auto is fp32, silently
    assert main(base) == 0 and spy_bf16 == [("sample", False), ("mesh", False)]
    assert "note: bf16" not in capsys.readouterr().err
    for flag in (["--bf16"], ["--precision", "bf16"]):  # honoured, with what it costs
        spy_bf16.clear()
        assert main(base + flag) == 0 and spy_bf16 == [("sample", True), ("mesh", True)]
        err = capsys.readouterr().err
        assert "note: bf16 on this CPU (AVX2, no AMX/AVX512-BF16): ~3-6× slower than fp32" in err
    assert main(base + ["--bf16", "--precision", "fp32"]) == 2
    assert "argument --bf16: not allowed with --precision fp32" in capsys.readouterr().err
    _cpu(monkeypatch, {"avx2", "avx512_bf16"}, "AVX512")  # native bf16: auto is bf16, said once
    spy_bf16.clear()
    assert main(base + ["--device", "auto"]) == 0 and spy_bf16[0] == ("sample", True)
    assert "note: bf16 autocast: this CPU computes bf16 natively (AVX512-BF16)" in (
        capsys.readouterr().err
    )
    spy_bf16.clear()
    assert main(base + ["--precision", "fp32"]) == 0 and spy_bf16[0] == ("sample", False)
    # pointdiff mesh takes the same options
    cloud = tmp_path / "00_a_chair" / "cloud.ply"
    spy_bf16.clear()
    mesh = ["mesh", str(cloud), "-o", str(tmp_path / "m.ply"), "--checkpoint", str(tiny_pipeline)]
    assert main(mesh + ["--grid-size", "16", "--precision", "fp32"]) == 0
    assert main(mesh + ["--grid-size", "16"]) == 0
    assert spy_bf16 == [("mesh", False), ("mesh", True)]


def test_load_pipeline_device_and_precision(tiny_pipeline, monkeypatch):
    pipe = load_pipeline(tiny_pipeline)  # the library's defaults: cpu, fp32
    assert pipe.device == torch.device("cpu") and not pipe.bf16
    _cpu(monkeypatch, {"avx2"}, "AVX2")
    assert not load_pipeline(tiny_pipeline, "auto", "auto").bf16
    fast = load_pipeline(tiny_pipeline, "auto", "bf16")
    assert fast.bf16 and fast.device == torch.device("cpu")
    # the pipeline's precision is the default of each call; a call may still choose
    autocast = []
    denoiser = fast.stages[0].denoiser

    def recording(*args, **kwargs):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return denoiser(*args, **kwargs)

    fast.stages[0].denoiser = recording
    kw = {"seed": 1, "stop_after": "base", "overrides": {"steps": 1, "sampler": "euler"}}
    fast.sample_clouds(["a chair"], **kw)
    c32 = fast.sample_clouds(["a chair"], bf16=False, **kw)[0]
    assert autocast == [True, False]  # one guided call per step
    np.testing.assert_array_equal(c32.coords, pipe.sample_clouds(["a chair"], **kw)[0].coords)
    with pytest.raises(ValueError, match="unknown precision"):
        load_pipeline(tiny_pipeline, precision="half")


# ----------------------------------------------------------------------------------------------
# A checkpoint with a frozen CLIP text encoder: its weights found by tag, downloaded, hash-checked


@pytest.fixture
def clip_pipeline(tmp_path, monkeypatch, tiny_clip_config):
    """A base-only pipeline conditioned on a tiny registered CLIP arch whose tag ``pdtest``
    "downloads" (no network) from a local file; ``HOME`` is empty, so nothing is cached."""
    import open_clip

    from pointdiff.conditioning.text import clip_text_config

    arch = "pdtest-pipe-clip"
    cfg = tiny_clip_config(embed_dim=32, text_layers=1)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / f"{arch}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    url = "https://example.invalid/clip/pdtest-pipe.pt"
    tags = {"pdtest": open_clip.pretrained._pcfg(url=url)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, tags)
    torch.manual_seed(0)
    served = tmp_path / "served.pt"
    torch.save(open_clip.create_model(arch).state_dict(), served)
    encoder = TextEncoder.from_pretrained(arch, str(served))
    text_cfg = replace(
        clip_text_config(encoder), pretrained=f"pdtest@sha256:{encoder.spec['sha256']}"
    )
    downloads = []

    def download_pretrained(tag_cfg, cache_dir=None):
        downloads.append(tag_cfg["url"])
        target = Path("~/.cache/clip").expanduser() / "pdtest-pipe.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(served, target)
        return str(target)

    monkeypatch.setattr(open_clip, "download_pretrained", download_pretrained)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POINTDIFF_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    base_cfg = replace(get_preset("tiny"), cond_dim=32)
    configs = {
        "model": base_cfg,
        "diffusion": DiffusionConfig(),
        "sample": SAMPLE,
        "text": text_cfg,
    }
    ckpt = save_checkpoint(tmp_path / "run", 1, build_model(base_cfg), None, None, None, configs)
    pipe = export_for_release(ckpt, tmp_path / "pipe", dtype=torch.float32)
    return SimpleNamespace(
        path=pipe, served=served, downloads=downloads, url=url, home=tmp_path / "home"
    )


def test_cli_sample_downloads_the_recorded_clip_weights_or_says_what_to_fetch(
    clip_pipeline, tmp_path, capsys
):
    recorded = json.loads((clip_pipeline.path / "config.json").read_text())["configs"]["text"]
    assert recorded["pretrained"].startswith("pdtest@sha256:") and "/" not in recorded["pretrained"]
    args = ["sample", "a chair", "--checkpoint", str(clip_pipeline.path), "--steps", "2"]
    args += ["--precision", "fp32"]
    assert main(args + ["--no-download", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    cached = clip_pipeline.home / ".cache" / "clip" / "pdtest-pipe.pt"
    assert "does not download" in err and f"copy it to {cached}" in err and "--clip-weights" in err
    assert main(args + ["--out", str(tmp_path / "b")]) == 0  # the default: download once
    assert clip_pipeline.downloads == [clip_pipeline.url]
    assert f"downloading CLIP pdtest-pipe-clip/pdtest weights from {clip_pipeline.url}" in (
        capsys.readouterr().err
    )
    assert main(args + ["--out", str(tmp_path / "c")]) == 0  # now from the cache
    assert clip_pipeline.downloads == [clip_pipeline.url]
    same = [(tmp_path / d / "00_a_chair" / "cloud.npz").read_bytes() for d in ("b", "c")]
    assert same[0] == same[1]
    # a local copy of other weights is refused by the recorded hash
    torch.manual_seed(5)
    import open_clip

    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("pdtest-pipe-clip").state_dict(), other)
    assert main(args + ["--clip-weights", str(other), "--out", str(tmp_path / "d")]) == 2
    assert "this checkpoint was trained with" in capsys.readouterr().err
    assert (
        main(args + ["--clip-weights", str(clip_pipeline.served), "--out", str(tmp_path / "e")])
        == 0
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_auto_is_bf16_and_meshes_on_the_gpu(tiny_pipeline, tmp_path, capsys):
    pipe = load_pipeline(tiny_pipeline, device="auto", precision="auto")
    assert pipe.device.type == "cuda" and pipe.bf16
    clouds = pipe.sample_clouds(["a chair", "a table"], seed=0, overrides={"steps": 3})
    assert all(np.isfinite(c.coords).all() and len(c) == 256 for c in clouds)
    exact = load_pipeline(tiny_pipeline, device="cuda", precision="fp32")
    fp32 = exact.sample_clouds(["a chair"], seed=0, overrides={"steps": 3})[0]
    assert np.isfinite(fp32.coords).all()
    assert pipe.to_mesh(clouds[0], grid_size=32, method="sdf").mesh.faces.shape[0] > 0
    # the command line: auto device and precision, CFG, upsampler, mesh
    args = ["sample", "a chair", "--checkpoint", str(tiny_pipeline), "--out", str(tmp_path)]
    assert main(args + ["--steps", "3", "--grid-size", "32"]) == 0
    assert (tmp_path / "00_a_chair" / "mesh.glb").stat().st_size > 0
