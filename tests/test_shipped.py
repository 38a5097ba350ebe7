"""Guards the shipped weights in checkpoints/ against silent breakage."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from pointdiff.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = sorted(p.parent for p in ROOT.glob("*/pipeline.json"))


def test_shipped_checkpoints_are_small_fp16_safetensors():
    assert SHIPPED, "no shipped pipeline under checkpoints/"
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total < 60 * 2**20, f"checkpoints/ is {total / 2**20:.1f} MiB (limit 60)"
    for f in ROOT.rglob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            dtypes = {h.get_slice(k).get_dtype() for k in h.keys()}
        assert dtypes <= {"F16", "I64"}, (f, dtypes)
    for d in SHIPPED:
        assert (d / "MODEL_CARD.md").is_file(), d


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipeline_samples_deterministically(path):
    pipe = load_pipeline(path)
    known = pipe.known_captions
    assert known and json.loads((path / "base" / "captions.json").read_text()) == known
    prompt = next(c for c in known if "bed" in c)
    a = pipe.sample_clouds([prompt], seed=0, overrides={"steps": 8})
    b = pipe.sample_clouds([prompt], seed=0, overrides={"steps": 8})
    np.testing.assert_array_equal(a[0].coords, b[0].coords)
    assert len(a[0]) == sum(s.num_points for s in pipe.stages)
    assert np.abs(a[0].coords).max() < 1.0 and np.isfinite(a[0].colors).all()
    assert pipe.prompt_warnings(["a quantum spaceship"]) and not pipe.prompt_warnings([prompt])
