"""Guards the shipped weights in checkpoints/ against silent breakage."""

import functools
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


@pytest.mark.slow
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
# classified as the prompted category (target >= 80 % top-1). On these 11 prompts (seed 0) the
# session-8 pointdiff-small gets 9 of 11 (bottle -> cabinet, plant -> lamp; session 7: 10 of 11),
# a plain guard since session 7 (it was a strict xfail while 6 of 11 held). The measure proper, R-precision on
# held-out objects' prompts over 3 seeds, is in the model card.
CATEGORY_PROMPTS = {
    "bed": "a bed (bedroom)", "bottle": "a bottle (bathroom)", "cabinet": "a wardrobe (bedroom)",
    "chair": "a chair, seat (office)", "door": "a garage door (doors and windows)",
    "lamp": "a lamp (lights)", "person": "a male, human, people (characters)",
    "plant": "a palm tree, outdoor, garden (exterior)", "sofa": "a couch, sofa (living room)",
    "table": "a table (living room)", "window": "a window shutter (doors and windows)",
}  # fmt: skip


@functools.cache
def _classify_samples(path: Path, categories: tuple[str, ...]) -> list[str]:
    """The evaluation classifier's class for the base sample (seed 0, the shipped sampler) of
    each category's prompt. Prompt i uses seed i whatever else is in the batch."""
    from pointdiff.evaluation.classifier import load_classifier

    clf = load_classifier(path / "classifier")
    pipe = load_pipeline(path)
    prompts = [CATEGORY_PROMPTS[c] for c in categories]
    clouds = pipe.sample_clouds(prompts, seed=0, stop_after="base")
    x = torch.stack([torch.from_numpy(np.concatenate([c.coords, c.colors], -1)) for c in clouds])
    with torch.no_grad():
        logits = clf(x[..., : clf.cfg.in_channels])["logits"]
    return [clf.cfg.class_names[i] for i in logits.argmax(-1).tolist()]


@pytest.mark.slow  # samples the shipped models (the 11-prompt batch is cached)
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_samples_are_classified_as_the_prompted_category(path):
    got = _classify_samples(path, tuple(CATEGORY_PROMPTS))
    hits = [g == want for g, want in zip(got, CATEGORY_PROMPTS, strict=True)]
    assert np.mean(hits) >= 0.8, dict(zip(CATEGORY_PROMPTS, got, strict=True))


# The guard, for the categories the shipped model gets right: the sample of a known
# prompt with a fixed seed (the 11-prompt batch above, prompt i with seed i, base stage) is
# classified as the prompted category. Which categories: those the evaluation classifier puts in
# the prompted class with probability >= 0.5 (model card, "Guarded prompts"); a broken or
# prompt-blind model fails at least one of them.
GUARDED = ("bed", "cabinet", "chair", "door", "person", "table", "window")


@pytest.mark.slow  # samples the shipped models (the 11-prompt batch is cached)
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_samples_of_guarded_prompts_are_classified_as_their_category(path):
    got = dict(zip(CATEGORY_PROMPTS, _classify_samples(path, tuple(CATEGORY_PROMPTS)), strict=True))
    assert {c: got[c] for c in GUARDED} == {c: c for c in GUARDED}, got


# A floor that holds even for a weak model: the prompt controls the sample. What a broken or
# prompt-blind model cannot do (the session-2 shipped model: almost every sample "plant") is
# spread the 11 prompts over several classes. Today: 9 classes (session 7's model: 10).
@pytest.mark.slow  # samples the shipped models (the 11-prompt batch is cached)
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_prompts_steer_samples_to_different_classes(path):
    got = _classify_samples(path, tuple(CATEGORY_PROMPTS))
    assert len(set(got)) >= 4, dict(zip(CATEGORY_PROMPTS, got, strict=True))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_lexicon_is_wordnet_rebuilt_from_the_shipped_captions(path):
    """base/lexicon.json is what `export_pipeline.py --wordnet` builds from base/captions.json,
    and the pipeline reads a held-out name group's words ("desk", "stool") as trained ones."""
    from pointdiff.lexicon import WordNet, build_aliases, load_lexicon, vocab_counts

    pipe = load_pipeline(path)
    assert pipe.aliases == load_lexicon(path / "base") and len(pipe.aliases) > 1000
    assert pipe.read_prompt("a desk (office)") == ("a table (office)", {"desk": "table"})
    assert pipe.read_prompt("a stool (kitchen)") == ("a chair (kitchen)", {"stool": "chair"})
    assert not set(pipe.aliases) & set(vocab_counts(pipe.known_captions))  # known words stay
    if not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed (`make test` installs it)")
    rebuilt = build_aliases(WordNet.load("/usr/share/wordnet"), vocab_counts(pipe.known_captions))
    assert rebuilt == pipe.aliases
