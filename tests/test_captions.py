import numpy as np
import pytest

from data_tools.__main__ import main
from data_tools.captions import (
    MAX_CAPTIONS,
    MIN_CAPTIONS,
    build_captions,
    caption_shards,
    category_size_stats,
    material_of,
    noun_of,
    size_word,
)
from pointdiff.data import read_index, write_shards


def _row(i: int, name: str, size=(50.0, 50.0, 90.0), category="Living room", tags=()) -> dict:
    return {
        "id": f"sweethome3d/test/{i}",
        "caption": f"a {name.lower()} ({category.lower()})",
        "source": "sweethome3d",
        "licence": "CC0",
        "split": "train",
        "category": category,
        "name": name,
        "tags": list(tags),
        "size_cm": list(size),
    }


def _colours(rgb, n: int = 256) -> np.ndarray:
    return np.tile(np.array(rgb, np.uint8), (n, 1))


# Eight chairs (one tall), four tables (one low and wide), a sofa: enough for per-noun medians.
CHAIR, TALL_CHAIR = (
    _row(0, "Chair", (50, 55, 90), tags=["Seat"]),
    _row(7, "Bar chair", (50, 55, 140)),
)
LOW_TABLE, SOFA = _row(13, "Coffee table", (150, 80, 40)), _row(20, "Futon couch", (200, 90, 85))
ROWS = (
    [CHAIR]
    + [{**CHAIR, "id": f"sweethome3d/test/{i}"} for i in range(1, 7)]
    + [TALL_CHAIR]
    + [_row(10 + i, "Table", (120, 80, 75)) for i in range(3)]
    + [LOW_TABLE, SOFA]
)
STATS = category_size_stats(ROWS)


def test_first_caption_is_the_original_and_count():
    for row in ROWS:
        caps = build_captions(row, _colours((200, 30, 30)), STATS)
        assert caps[0] == row["caption"]
        assert MIN_CAPTIONS <= len(caps) <= MAX_CAPTIONS
        assert len(caps) == len(set(caps))
        assert all(c == " ".join(c.split()) for c in caps)


def test_deterministic_and_seeded_by_id():
    row, cols = LOW_TABLE, _colours((240, 240, 240))
    caps = build_captions(row, cols, STATS)
    assert build_captions(dict(row), cols.copy(), STATS) == caps
    assert build_captions(row, cols, STATS, seed=0) == caps
    others = {tuple(build_captions({**row, "id": f"x{i}"}, cols, STATS)) for i in range(20)}
    assert len(others) > 1  # the id picks the wording


def test_colour_words_follow_the_cloud():
    row = SOFA
    red = build_captions(row, _colours((200, 30, 30)), STATS)
    assert any("red" in c for c in red[1:])
    two = np.concatenate([_colours((245, 245, 245), 150), _colours((110, 70, 40), 106)])
    assert any("white and brown" in c for c in build_captions(row, two, STATS))
    # No colour information (untextured grey 128): no colour words at all.
    grey = build_captions(row, _colours((128, 128, 128)), STATS)
    colour_words = {"red", "grey", "white", "brown", "black"}
    assert not any(colour_words & set(c.split()) for c in grey[1:])
    # … unless the converter saw a colour on every face: then grey 128 is a material.
    real = build_captions({**row, "colored_fraction": 1.0}, _colours((128, 128, 128)), STATS)
    assert any("grey" in c.split() for c in real)


def test_sizes_are_relative_to_the_group():
    assert set(STATS) == {"chair", "table"}  # one sofa is no category
    np.testing.assert_allclose(STATS["chair"], [50, 55, 90, 50 * 55 * 90])
    assert size_word(CHAIR, STATS, noun_of(CHAIR)) is None  # an ordinary chair
    assert size_word(TALL_CHAIR, STATS, noun_of(TALL_CHAIR)) == "tall"
    assert size_word(LOW_TABLE, STATS, noun_of(LOW_TABLE)) == "low"
    assert size_word(SOFA, STATS, noun_of(SOFA)) is None  # not compared with chairs
    assert size_word({**CHAIR, "size_cm": None}, STATS, noun_of(CHAIR)) is None
    caps = build_captions(TALL_CHAIR, _colours((30, 30, 30)), STATS)
    assert any("tall" in c.split() for c in caps)


def test_material_only_when_the_name_says_so():
    assert material_of(noun_of(_row(0, "Oak table"))) == "wooden"
    assert material_of(noun_of(_row(0, "Rattan armchair"))) == "wicker"
    assert material_of(noun_of(_row(0, "Glass table"))) == "glass"
    assert material_of(noun_of(_row(0, "Beer glass"))) is None  # glass is the object
    assert material_of(noun_of(_row(0, "Chair", tags=["Wood"]))) is None
    caps = build_captions(_row(0, "Iron bed", category="Bedroom"), _colours((40, 40, 40)), STATS)
    assert any("metal bed" in c for c in caps)
    for row in ROWS:
        caps = build_captions(row, _colours((200, 30, 30)), STATS)
        assert not any(w in c for c in caps for w in ("wooden", "metal", "glass", "plastic"))


@pytest.mark.parametrize(
    "name,tags,category,head,general",
    [
        ("Desk lamp", [], "Lights", "lamp", "lamp"),
        ("Futon couch", ["Sofa"], "Living room", "couch", "sofa"),
        ("Sofa 2 seats", [], "Living room", "sofa", "sofa"),
        ("Convertible sofa BZ", ["Bed"], "Bedroom", "sofa", "sofa"),
        ("Table with tablecloth", [], "Living room", "table", "table"),
        ("Rounded RJ45 plug", ["Computer"], "Miscellaneous", "plug", "plug"),
        ("Ford Focus", ["Car"], "Vehicles", "focus", "car"),
        ("Yucca", ["Patio", "Plant"], "Living room", "yucca", "plant"),
        ("Helmet", ["Motorbike"], "Bedroom", "helmet", "helmet"),
        ("Teddy bear", ["Toy"], "Bedroom", "teddy bear", "teddy bear"),
        ("Washing machine", [], "Kitchen", "washing machine", "washing machine"),
        ("White lily", ["Flowers"], "Living room", "lily", "flower"),
    ],
)
def test_head_nouns(name, tags, category, head, general):
    noun = noun_of(_row(0, name, category=category, tags=tags))
    assert (noun.head, noun.general) == (head, general)


def test_plural_nouns_take_no_article():
    caps = build_captions(_row(0, "Tulips", tags=["Flowers"]), _colours((220, 30, 30)), STATS)
    assert "red tulips" in caps or "red flowers" in caps
    assert not any(c.startswith(("a tulips", "a flowers", "a red")) for c in caps[1:])


def _write(tmp_path):
    g = np.random.default_rng(0)
    records = [
        {**row, "coords": g.uniform(-0.5, 0.5, (64, 3)), "colors": _colours(rgb, 64)}
        for row, rgb in zip(ROWS, [(200, 30, 30), (30, 30, 200)] * 7, strict=False)
    ]
    write_shards(records, tmp_path / "shards", objects_per_shard=5)
    return tmp_path / "shards"


def test_command_writes_captions_idempotently(tmp_path, capsys):
    root = _write(tmp_path)
    before = read_index(root)
    assert main(["captions", str(root), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert read_index(root) == before  # nothing written
    assert main(["captions", str(root)]) == 0
    first = (root / "index.jsonl").read_bytes()
    rows = read_index(root)
    assert [r["caption"] for r in rows] == [r["caption"] for r in before]
    for old, new in zip(before, rows, strict=True):
        assert new["captions"][0] == old["caption"]
        assert {k: v for k, v in new.items() if k != "captions"} == old
    assert any("red" in c for c in rows[0]["captions"])  # the first object is red
    assert any("blue" in c for c in rows[1]["captions"])
    assert main(["captions", str(root)]) == 0
    assert (root / "index.jsonl").read_bytes() == first
    assert not list(root.glob("*.tmp"))
    assert caption_shards(root, dry_run=True) == rows


def test_command_reports_a_missing_directory(tmp_path, capsys):
    assert main(["captions", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err
