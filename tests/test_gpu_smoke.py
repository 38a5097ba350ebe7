"""benchmarks/gpu_smoke.sh: its synthetic data here, and the whole script in its reduced
``--cpu-check`` mode (every step of the GPU run, at tiny sizes on the CPU, no network)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_smoke

    return gpu_smoke


@pytest.mark.parametrize("shape", ["sphere", "box", "cylinder"])
def test_synthetic_shapes_have_their_surface_at_the_zero_of_their_sdf(smoke, shape):
    rng = np.random.default_rng(0)
    size = np.array([0.3, 0.3, 0.4])
    surface = smoke._surface(shape, size, 2000, rng)
    np.testing.assert_allclose(smoke._sdf(shape, size, surface), 0, atol=1e-6)
    assert smoke._sdf(shape, size, np.zeros((1, 3)))[0] < 0  # the centre is inside
    assert smoke._sdf(shape, size, np.full((1, 3), 0.9))[0] > 0


def test_synthetic_shards_read_back_with_captions_and_sdf(smoke, tmp_path):
    from pointdiff.data import PointCloudDataset

    meta = smoke.make_shards(str(tmp_path), objects=6, points=128, sdf_points=64)
    assert meta["num_objects"] == 6 and meta["num_sdf"] == 64
    data = PointCloudDataset(tmp_path, num_points=64, subsample="first", augment=False)
    assert "a red sphere" in data.captions and data[0]["points"].shape == (64, 6)


@pytest.mark.slow
def test_the_smoke_script_runs_every_step_in_cpu_check_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "POINTDIFF_CLIP_WEIGHTS"}
    env["PYTHON"] = sys.executable  # the interpreter running the tests, wherever its venv is
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), "--cpu-check", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout[out.stdout.index("| what |") :].splitlines()
    whats = [row.split("|")[1].strip() for row in table[2:]]
    expected = ["train base (resumed)", "train base (DDP)", "train base (FSDP)"]
    expected += ["train base (compile)", "train upsampler", "sample 256 points, CFG", "SDF mesh"]
    assert len(whats) == len(expected), table
    assert all(w.startswith(e) for w, e in zip(whats, expected, strict=True)), whats
    for row in table[2:]:
        samples_s = float(row.split("|")[4])
        assert samples_s > 0, row
    # the resumed run continued the stopped one; the frozen CLIP is recorded by hash, no path
    assert sorted(p.name for p in (tmp_path / "base").glob("ckpt-*")) == [
        "ckpt-0000002",
        "ckpt-0000004",
    ]
    base = (tmp_path / "base" / "config.json").read_text()
    assert '"pretrained": "sha256:' in base and str(tmp_path) not in base
    for name in ("cloud.ply", "mesh.glb"):
        assert (tmp_path / "samples" / "00_a_red_box" / name).stat().st_size > 0
