"""The natural-prompt suite (benchmarks/natural_prompts.tsv) and its loader and colour score."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pointdiff.colours import BASIC_COLOURS, SYNONYMS
from pointdiff.evaluation.natural import colour_scores, load_natural_prompts
from pointdiff.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "natural_prompts.tsv"
SHIPPED = REPO / "checkpoints" / "pointdiff-small"
# words that name a colour in SYNONYMS but are nouns in these prompts ("a green wine bottle")
NOT_COLOURS = {"wine", "olive"}


@pytest.fixture(scope="module")
def suite():
    return load_natural_prompts(SUITE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())


def test_suite_size_classes_and_colours(suite):
    assert len(suite) >= 100 and len({p.prompt for p in suite}) == len(suite)
    names = json.loads((SHIPPED / "classifier" / "config.json").read_text())["config"][
        "class_names"
    ]
    per_class = Counter(p.category for p in suite)
    assert set(per_class) == set(names), set(per_class) ^ set(names)
    assert min(per_class.values()) >= 8, per_class
    assert {p.colour for p in suite if p.colour} <= set(BASIC_COLOURS)
    assert 0.35 <= sum(p.colour is not None for p in suite) / len(suite) <= 0.65


def test_colour_labels_match_the_prompt_words(suite):
    for p in suite:
        words = _words(p.prompt)
        named = {SYNONYMS[w] for w in words if w in SYNONYMS and w not in NOT_COLOURS}
        if p.colour is None:
            assert not named, p
        else:
            assert named == {p.colour}, p


def test_no_prompt_is_a_training_caption(suite):
    captions = load_pipeline(SHIPPED).known_captions  # what `pointdiff prompts` lists
    assert len(captions) > 100
    # the whole caption, the caption without its room, and its first phrase ("a chair, seat
    # (living room)" -> "a chair"): a natural prompt must not be any of them
    taken = set()
    for c in captions:
        c = c.lower().strip()
        no_room = re.sub(r"\s*\([^)]*\)\s*$", "", c)
        taken |= {c, no_room, no_room.split(",")[0].strip()}
    copied = [p.prompt for p in suite if p.prompt.lower().strip() in taken]
    assert not copied, copied


def _write(tmp_path, text):
    path = tmp_path / "suite.tsv"
    path.write_text(text)
    return path


def test_loader_reads_and_rejects(tmp_path):
    ok = load_natural_prompts(
        _write(tmp_path, "prompt\tclass\tcolour\na red sofa\tsofa\tred\na lamp\tlamp\t\n\n")
    )
    assert [(p.prompt, p.category, p.colour) for p in ok] == [
        ("a red sofa", "sofa", "red"),
        ("a lamp", "lamp", None),
    ]
    bad = {
        "header": "prompt\tcategory\tcolour\na lamp\tlamp\t\n",
        "fields": "prompt\tclass\tcolour\na lamp\tlamp\n",
        "colour": "prompt\tclass\tcolour\na navy sofa\tsofa\tnavy\n",
        "repeat": "prompt\tclass\tcolour\na lamp\tlamp\t\na lamp\tlamp\t\n",
        "empty": "prompt\tclass\tcolour\n\tlamp\t\n",
        "none": "prompt\tclass\tcolour\n",
    }
    for what, text in bad.items():
        with pytest.raises(ValueError):
            load_natural_prompts(_write(tmp_path, text))
            pytest.fail(f"accepted a file with a bad {what}")


def test_colour_scores():
    g = np.random.default_rng(0)
    red = np.clip(np.array([0.8, 0.1, 0.1]) + 0.03 * g.normal(size=(500, 3)), 0, 1)
    blue = np.clip(np.array([0.1, 0.2, 0.8]) + 0.03 * g.normal(size=(500, 3)), 0, 1)
    out = colour_scores([red, blue, red], ["red", "red", None])
    assert out["count"] == 2 and out["hits"] == [True, False]
    assert out["accuracy"] == 0.5 and out["per_colour"] == {"red": 0.5}
    assert out["share"] == pytest.approx(0.5, abs=0.02)
    assert out["chance"] == 0.5  # red named twice, described once of two clouds
    assert np.isnan(colour_scores([red], [None])["accuracy"])


def test_eval_shipped_scores_a_natural_suite(monkeypatch):
    """eval_shipped.natural_seed: classifier and nearest-reference classes, colour words and
    surface spread for one seed's clouds; object_class reads raw Sweet Home 3D entries."""
    import torch

    from pointdiff.evaluation.classifier import (
        CLASSIFIER_PRESETS,
        PointNet2Classifier,
        with_classes,
    )
    from pointdiff.evaluation.natural import NaturalPrompt
    from pointdiff.pointcloud import PointCloud

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from eval_shipped import NEAREST_POINTS, natural_seed, object_class

    names = ["bed", "lamp"]
    assert object_class({"category": "lamp"}, names) == "lamp"
    assert object_class({"category": "Lights", "name": "Desk lamp", "caption": ""}, names) == "lamp"
    assert object_class({"category": "Kitchen", "name": "Sink", "caption": "a sink"}, names) is None

    torch.manual_seed(0)
    clf = PointNet2Classifier(with_classes(CLASSIFIER_PRESETS["tiny"], names)).eval()
    g = np.random.default_rng(0)
    flat = np.c_[g.uniform(-0.5, 0.5, (1536, 2)), np.zeros(1536)].astype(np.float32)
    tall = np.c_[0.05 * g.normal(size=(1536, 2)), g.uniform(-0.5, 0.5, 1536)].astype(np.float32)
    red = np.tile(np.float32([0.85, 0.1, 0.1]), (1536, 1))
    clouds = [PointCloud(flat, red), PointCloud(tall, red)]  # 1024 base + 512 "upsampled"
    suite = [NaturalPrompt("a red bed", "bed", "red"), NaturalPrompt("a tall lamp", "lamp", None)]
    refs = np.stack([flat[:NEAREST_POINTS], tall[:NEAREST_POINTS]])
    row = natural_seed(clf, names, suite, clouds, 1024, refs, ["bed", "lamp"])
    assert row["nn_accuracy"] == 1.0 and row["nn_per_category"] == {"bed": 1.0, "lamp": 1.0}
    assert row["colour_accuracy"] == 1.0 and row["colour_count"] == 1
    assert set(row["per_category"]) == {"bed", "lamp"} and 0 <= row["accuracy"] <= 1
    assert {"surface_spread_base", "surface_spread_final"} <= set(row)
    assert [p["nearest"] for p in row["predictions"]] == ["bed", "lamp"]
    assert row["predictions"][0]["described"] == ["red"]
