"""Guards the shipped weights in checkpoints/ against silent breakage."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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


# One training caption per category of the shipped model. The bar: its samples are
# classified as the prompted category (target >= 80 % top-1). The current pointdiff-small does
# NOT meet it (model card: the classifier calls most of its samples "plant"), so the test is a
# strict xfail: it documents the gap, and turns into a failure (XPASS) the day a shipped model
# meets the bar, so that the xfail is removed and the test becomes the guard it is meant to be.
CATEGORY_PROMPTS = {
    "bed": "a bed (bedroom)", "bottle": "a bottle (bathroom)", "cabinet": "a wardrobe (bedroom)",
    "chair": "a chair, seat (office)", "door": "a garage door (doors and windows)",
    "lamp": "a lamp (lights)", "person": "a male, human, people (characters)",
    "plant": "a palm tree, outdoor, garden (exterior)", "sofa": "a couch, sofa (living room)",
    "table": "a table (living room)", "window": "a window shutter (doors and windows)",
}  # fmt: skip


@pytest.mark.xfail(strict=True, reason="pointdiff-small is under-trained: R-precision at chance")
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_samples_are_classified_as_the_prompted_category(path):
    from pointdiff.evaluation.classifier import load_classifier

    clf = load_classifier(path / "classifier")
    pipe = load_pipeline(path)
    clouds = pipe.sample_clouds(list(CATEGORY_PROMPTS.values()), seed=0, stop_after="base")
    x = torch.stack([torch.from_numpy(np.concatenate([c.coords, c.colors], -1)) for c in clouds])
    with torch.no_grad():
        logits = clf(x[..., : clf.cfg.in_channels])["logits"]
    got = [clf.cfg.class_names[i] for i in logits.argmax(-1).tolist()]
    hits = [g == want for g, want in zip(got, CATEGORY_PROMPTS, strict=True)]
    assert np.mean(hits) >= 0.8, dict(zip(CATEGORY_PROMPTS, got, strict=True))
