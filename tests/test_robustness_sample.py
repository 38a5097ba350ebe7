"""`pointdiff sample` on bad input: a clear message naming the problem and exit code 2, never a
traceback, a lie (a checkpoint whose weights changed) or a silent mix of two runs' files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdiff.checkpoint import CheckpointError, save_checkpoint, verify_hashes
from pointdiff.cli import main
from pointdiff.conditioning.text import TextEncoder
from pointdiff.config import DiffusionConfig, SampleConfig, get_preset
from pointdiff.models import build_model
from pointdiff.pipeline import load_pipeline
from pointdiff.release import export_pipeline

SAMPLE_FILES = {"cloud.ply", "cloud.npz", "cloud.png", "prompt.txt"}


def _checkpoint(run_dir: Path, cfg, text_encoder: TextEncoder | None = None) -> Path:
    """A step-1 checkpoint of a random-weight ``cfg`` model (no EMA or optimizer state)."""
    configs = {"model": cfg, "diffusion": DiffusionConfig()}
    model = build_model(cfg)
    return save_checkpoint(run_dir, 1, model, None, None, None, configs, text_encoder=text_encoder)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A base + upsampler pipeline of tiny random models, exported as a release would be."""
    tmp = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    text = TextEncoder.from_config("tiny", seed=0)
    base = _checkpoint(tmp / "run_base", get_preset("tiny"), text)
    up = _checkpoint(tmp / "run_up", get_preset("upsample_tiny"))
    sample = SampleConfig(sampler="euler", steps=1, guidance=3.0)
    return export_pipeline(
        tmp / "pipe",
        base,
        up,
        sample=sample,
        upsampler_sample=sample,
        captions=["a chair", "a table"],
        dtype=torch.float32,
    )


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the real CLI entry (argparse errors exit via SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _sample(pipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sample",
        "a chair",
        "--checkpoint",
        str(pipe),
        "--out",
        str(out),
        "--steps",
        "1",
        "--stop-after",
        "base",
        *extra,
    ]


# ----------------------------------------------------------------------------------------------
# Arguments, checked before anything is loaded or sampled

BAD_ARGS = {
    "guidance nan": (["--guidance", "nan"], "argument --guidance: must be a finite number"),
    "guidance inf": (["--guidance", "inf"], "argument --guidance: must be a finite number"),
    "guidance < 0": (["--guidance", "-1"], "argument --guidance: must be a number from 0 to 100"),
    "guidance word": (["--guidance", "high"], "argument --guidance: must be a number"),
    "steps 0": (["--steps", "0"], "argument --steps: must be an integer from 1 to 1000"),
    "steps float": (["--steps", "2.5"], "argument --steps: must be an integer"),
    "steps huge": (["--steps", "10000000000"], "argument --steps: must be an integer from 1"),
    "num-samples 0": (["--num-samples", "0"], "argument --num-samples: must be an integer from 1"),
    "seed < 0": (["--seed", "-1"], "argument --seed: must be an integer from 0"),
    "seed 2**63": (["--seed", str(2**63)], "argument --seed: must be an integer from 0"),
    "stray-ratio nan": (["--stray-ratio", "nan"], "argument --stray-ratio: must be a finite"),
    "stray-ratio < 0": (["--stray-ratio", "-0.5"], "argument --stray-ratio: must be a number >= 0"),
    "interval nan": (["--guidance-interval", "nan", "1"], "argument --guidance-interval: must be"),
    "interval < 0": (["--guidance-interval", "-1", "1"], "argument --guidance-interval: must be"),
    "grid-size 1": (["--grid-size", "1"], "argument --grid-size: must be an integer from 8 to 512"),
    "device banana": (["--device", "banana"], "argument --device: unknown device 'banana'"),
    "device cuda:x": (["--device", "cuda:x"], "argument --device: unknown device"),
    "sampler": (["--sampler", "ddim"], "argument --sampler: invalid choice: 'ddim'"),
}


@pytest.mark.parametrize("extra, message", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_argument_is_named_with_exit_code_2(extra, message, tmp_path, capsys):
    code, err = _run(_sample(tmp_path / "no_checkpoint", tmp_path / "out", *extra), capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_unavailable_device_is_named(tmp_path, capsys):
    want = "CUDA is not available" if not torch.cuda.is_available() else "CUDA device(s)"
    device = "cuda" if not torch.cuda.is_available() else "cuda:99"
    code, err = _run(_sample(tmp_path, tmp_path / "out", "--device", device), capsys)
    assert code == 2 and f"argument --device: '{device}': " in err and want in err, err
    if not torch.backends.mps.is_available():
        code, err = _run(_sample(tmp_path, tmp_path / "out", "--device", "mps"), capsys)
        assert code == 2 and "argument --device: 'mps': MPS is not available" in err, err


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "argument prompts: every prompt must be a non-empty string, got ''"),
        ("  \t", "argument prompts: every prompt must be a non-empty string"),
        ("a chair " * 40, "argument prompts: a prompt may have at most 300 characters, got 320"),
    ],
    ids=["empty", "blank", "too long"],
)
def test_bad_prompt_is_named(prompt, message, tmp_path, capsys):
    code, err = _run(["sample", "a table", prompt, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and message in err, err


def test_arguments_checked_together_before_loading(tiny_pipeline, tmp_path, capsys):
    code, err = _run(
        _sample(tmp_path / "missing", tmp_path / "o", "--guidance-interval", "5", "1"), capsys
    )
    assert code == 2 and "argument --guidance-interval: LO must be below HI, got 5 1" in err, err
    code, err = _run(["sample", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "give text prompts or --image FILE" in err, err
    code, err = _run(["sample", "a chair", "--fast", "--pointe-dir", str(tmp_path)], capsys)
    assert code == 2 and "argument --fast: a point-e directory has no fast variant" in err, err
    # a checkpoint without distilled stages: named after loading, before sampling
    code, err = _run(_sample(tiny_pipeline, tmp_path / "o", "--fast"), capsys)
    assert code == 2 and "has no distilled stages" in err and "Traceback" not in err, err
    (tmp_path / "file").write_text("x")
    code, err = _run(_sample(tiny_pipeline, tmp_path / "file"), capsys)
    assert code == 2 and f"argument --out: {tmp_path / 'file'} exists and is not a directory" in err
    # a stage the checkpoint does not have: named after loading, before sampling
    code, err = _run(
        _sample(tiny_pipeline / "base", tmp_path / "o", "--stop-after", "upsampler"), capsys
    )
    assert code == 2 and "argument --stop-after: " in err and "no 'upsampler' stage" in err, err
    assert not (tmp_path / "o").exists()
    # an interval up to infinity is a valid one
    assert (
        _run(_sample(tiny_pipeline, tmp_path / "o", "--guidance-interval", "0.1", "inf"), capsys)[0]
        == 0
    )


# ----------------------------------------------------------------------------------------------
# The output folder


def test_non_empty_out_is_refused_and_overwrite_leaves_no_stale_file(
    tiny_pipeline, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    assert _run(_sample(tiny_pipeline, out, "--num-samples", "2"), capsys)[0] == 0
    first = (out / "01_a_chair" / "cloud.npz").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["00_a_chair", "01_a_chair"]
    assert {p.name for p in (out / "00_a_chair").iterdir()} == SAMPLE_FILES
    # what an earlier run with meshing (or another version) left, and a file of the user's
    (out / "00_a_chair" / "mesh.glb").write_bytes(b"a mesh of another seed")
    (out / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    code, err = _run(_sample(tiny_pipeline, out, "--seed", "5"), capsys)
    assert code == 2 and f"argument --out: {out} is not empty (3 entries: 00_a_chair" in err
    assert "--overwrite" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched

    code, err = _run(_sample(tiny_pipeline, out, "--seed", "5", "--overwrite"), capsys)
    assert code == 0 and "removed 2 sample folder(s)" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["00_a_chair", "notes.txt"]  # no 01_, no tmp
    assert {p.name for p in (out / "00_a_chair").iterdir()} == SAMPLE_FILES  # no stale mesh
    assert (out / "notes.txt").read_text() == "mine"
    # the new sample is seed 5's, not the earlier run's seed 1
    assert (out / "00_a_chair" / "cloud.npz").read_bytes() != first


def test_help_documents_overwrite(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--overwrite" in out and "must be empty" in out


# ----------------------------------------------------------------------------------------------
# Checkpoint hashes


def test_export_records_hashes_of_every_weights_file(tiny_pipeline):
    base = json.loads((tiny_pipeline / "base" / "config.json").read_text())
    assert set(base["sha256"]) == {"model.safetensors", "text.safetensors"}
    up = json.loads((tiny_pipeline / "upsampler" / "config.json").read_text())
    assert set(up["sha256"]) == {"model.safetensors"}
    assert verify_hashes(tiny_pipeline / "base") == 2


@pytest.mark.parametrize("name", ["upsampler/model.safetensors", "base/text.safetensors"])
def test_tampered_weights_are_refused_naming_the_file(name, tiny_pipeline, tmp_path, capsys):
    pipe = shutil.copytree(tiny_pipeline, tmp_path / "pipe")
    f = pipe / name
    data = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # past the safetensors header: tensor bytes
    data[start : start + 65536] = bytes(len(data[start : start + 65536]))  # zero up to 64 KiB
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_pipeline(pipe)
    code, err = _run(_sample(pipe, tmp_path / "out"), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"error: {f}: SHA-256 mismatch" in err and "git checkout --" in err, err
    assert not (tmp_path / "out").exists()
    f.unlink()  # a file the config lists but that is gone is named too
    code, err = _run(_sample(pipe, tmp_path / "out"), capsys)
    assert code == 2 and f"{f}: missing, but {f.parent / 'config.json'} lists it" in err, err


def test_checkpoints_without_hashes_still_load(tiny_pipeline, tmp_path):
    pipe = shutil.copytree(tiny_pipeline, tmp_path / "pipe")
    for stage in ("base", "upsampler"):
        cfg = pipe / stage / "config.json"
        meta = json.loads(cfg.read_text())
        del meta["sha256"]
        cfg.write_text(json.dumps(meta))
        assert verify_hashes(pipe / stage) == 0
    assert len(load_pipeline(pipe).stages) == 2


def test_tampered_classifier_is_refused(tmp_path):
    from pointdiff.evaluation import classifier as clf

    torch.manual_seed(0)
    model = clf.PointNet2Classifier(clf.CLASSIFIER_PRESETS["tiny"])
    clf.save_classifier(model, tmp_path, dtype=torch.float16)
    clf.load_classifier(tmp_path)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-4:] = bytes(4)
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{f}: SHA-256 mismatch"):
        clf.load_classifier(tmp_path)


def test_export_pipeline_ships_subset_trained_models_at_other_point_counts(tmp_path):
    torch.manual_seed(0)
    text = TextEncoder.from_config("tiny", seed=0)
    ckpt = _checkpoint(tmp_path / "run", get_preset("tiny"), text)
    sample = SampleConfig(sampler="heun", steps=3, s_churn=1.0, guidance_interval=(0.1, 5.0))
    out = export_pipeline(
        tmp_path / "pipe",
        ckpt,
        sample=sample,
        captions=["a b", "a b", "c"],
        points={"base": {"num_points": 96}},
    )
    pipe = load_pipeline(out)
    assert pipe.known_captions == ["a b", "c"]
    assert pipe.stages[0].sample == sample  # the interval survives config.json (list -> tuple)
    cloud = pipe.sample_clouds(["a b"], seed=0, overrides={"steps": 2})[0]
    assert len(cloud) == 96 and np.isfinite(cloud.coords).all()
    with pytest.raises(ValueError, match="cannot set 'width'"):
        export_pipeline(tmp_path / "p2", ckpt, points={"base": {"width": 8}})
