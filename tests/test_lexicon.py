"""WordNet aliases for words a model never saw: parsing, the nearest known word, prompt rewriting."""

import collections
import json
from pathlib import Path

import pytest

from pointdiff.conditioning.lexicon import (
    LexiconError,
    WordNet,
    build_aliases,
    load_lexicon,
    rewrite,
    save_lexicon,
    vocab_counts,
)

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"

# offset: (words, hypernym offsets) -- a small noun tree in WordNet's own file format
SYNSETS = {
    "00000001": (["entity"], []),
    "00000002": (["furniture", "piece_of_furniture"], ["00000001"]),
    "00000003": (["table"], ["00000002"]),
    "00000004": (["desk"], ["00000003"]),
    "00000005": (["seat"], ["00000002"]),
    "00000006": (["chair"], ["00000005"]),
    "00000007": (["stool"], ["00000005"]),
    "00000008": (["sofa", "couch"], ["00000005"]),
    "00000010": (["color"], ["00000001"]),
    "00000011": (["black"], ["00000010"]),
    "00000012": (["white"], ["00000010"]),
    "00000020": (["vessel"], ["00000001"]),
    "00000021": (["bottle"], ["00000020"]),
    "00000022": (["jar"], ["00000020"]),
    "00000023": (["vase"], ["00000022"]),
    "00000030": (["shelf"], ["00000002"]),
    "00000040": (["leaf"], ["00000001"]),
    "00000050": (["ottoman"], ["00000005"]),  # a second sense of "pouf", below
    "00000051": (["pouf"], ["00000040"]),
}
SENSES = {
    w: [o for o, (ws, _) in SYNSETS.items() if w in ws] for ws, _ in SYNSETS.values() for w in ws
}
SENSES["pouf"] = ["00000051", "00000050"]  # most frequent sense first


def _write_wordnet(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    index = [HEADER]
    for word, offsets in sorted(SENSES.items()):
        index.append(f"{word} n {len(offsets)} 1 @ {len(offsets)} 0 {' '.join(offsets)}  \n")
    (root / "index.noun").write_text("".join(index))
    data = [HEADER]
    for offset, (words, hyper) in SYNSETS.items():
        lemmas = " ".join(f"{w} 0" for w in words)
        ptrs = " ".join(f"@ {h} n 0000" for h in hyper) + " ~ 00000001 n 0000"
        data.append(
            f"{offset} 06 n {len(words):02x} {lemmas} {len(hyper) + 1:03d} {ptrs} | gloss\n"
        )
    (root / "data.noun").write_text("".join(data))
    (root / "noun.exc").write_text("leaves leaf\n")
    (root / "index.adj").write_text(HEADER + "black a 1 0 1 0 00099999\nwhite a 1 0 1 0 00099998\n")
    return root


@pytest.fixture()
def wordnet(tmp_path) -> WordNet:
    return WordNet.load(_write_wordnet(tmp_path / "wn"))


def test_wordnet_files_parse_into_senses_hypernyms_and_base_forms(wordnet):
    assert wordnet.senses["desk"] == ["00000004"]
    assert wordnet.senses["pouf"] == ["00000051", "00000050"]
    assert "piece_of_furniture" in wordnet.senses and "color" in wordnet.senses
    assert wordnet.hypernyms["00000004"] == ["00000003"]  # '~' (hyponym) pointers are not kept
    assert wordnet.lemmas["00000002"] == ["furniture", "piece_of_furniture"]
    assert wordnet.base_forms("desks") == ["desk"]
    assert wordnet.base_forms("shelves") == []  # no regular rule gives "shelf"...
    assert wordnet.base_forms("leaves") == ["leaf"]  # ...but noun.exc lists irregular plurals
    assert wordnet.synsets("chairs") == ["00000006"]
    assert wordnet.ancestors("00000004", 2) == {"00000004": 0, "00000003": 1, "00000002": 2}
    assert "black" in wordnet.adjectives and "desk" not in wordnet.adjectives


def test_aliases_are_the_nearest_known_word_in_the_hypernym_tree(wordnet):
    vocab = collections.Counter({"table": 5, "chair": 9, "sofa": 2, "bottle": 1, "white": 3})
    aliases = build_aliases(wordnet, vocab, min_depth=1)
    assert aliases["desk"] == "table"  # a desk is a kind of table (distance 1)
    assert aliases["stool"] == "chair"  # siblings under seat (2); chair is used more than sofa
    assert aliases["couch"] == "sofa"  # a synonym (0) beats the more frequent sibling
    assert aliases["jar"] == "bottle" and aliases["vase"] == "bottle"  # vase-jar-vessel-bottle: 3
    assert "vase" not in build_aliases(wordnet, vocab, max_distance=2, min_depth=1)
    assert "pouf" not in aliases  # only a word's most frequent sense counts, not its ottoman one
    assert "black" not in aliases  # also an adjective: a colour is not swapped for another
    assert not set(aliases) & set(vocab)  # known words are never rewritten
    assert "entity" not in aliases and "leaf" not in aliases  # nothing known within reach
    # a common synset too near the root says nothing: vessel (depth 1) no longer joins jar and
    # bottle, while table (depth 2) still joins desk and table
    deep = build_aliases(wordnet, vocab, min_depth=2)
    assert "jar" not in deep and deep["desk"] == "table" and deep["stool"] == "chair"
    assert [wordnet.depth(o) for o in ("00000001", "00000020", "00000003", "00000023")] == [
        0,
        1,
        2,
        3,
    ]
    only = build_aliases(wordnet, vocab, min_depth=1, words=["desk", "a", "xyzzy"])
    assert only == {"desk": "table"}
    assert vocab_counts(["a chair, seat", "a chair"]) == {"chair": 2, "seat": 1}


@pytest.mark.parametrize(
    "prompt, expected, swapped",
    [
        ("a desk (office)", "a table (office)", {"desk": "table"}),
        ("a desk, table (office)", "a table (office)", {"desk": "table"}),  # no doubled word
        ("a wooden desk, table (office)", "a wooden table (office)", {"desk": "table"}),
        ("a table, desk", "a table", {"desk": "table"}),
        ("a Table (desk)", "a Table", {"desk": "table"}),
        ("desk, stool", "table, chair", {"desk": "table", "stool": "chair"}),
        ("a bar stool, chair, seat", "a bar chair, seat", {"stool": "chair"}),
        ("a desk with drawers", "a table with drawers", {"desk": "table"}),
        # an unknown word before another word modifies it: dropped, the head noun stays
        ("a desk lamp (lights)", "a lamp (lights)", {"desk": ""}),
        ("a desk table (office)", "a table (office)", {"desk": ""}),
        ("a desk stool", "a chair", {"desk": "", "stool": "chair"}),
        # two words WordNet knows as one noun are read together
        ("a coffee table (living room)", "a table (living room)", {"coffee table": "table"}),
        ("a Coffee Table, table", "a table", {"coffee table": "table"}),
        ("a wine bottle", "a wine bottle", {}),  # both known: kept as trained
        ("a chair (kitchen)", "a chair (kitchen)", {}),  # known words stay
        ("a xyzzy chair, qux", "a chair", {"xyzzy": "", "qux": ""}),  # no alias: noise, dropped
        ("a xyzzy", "a xyzzy", {}),
        (
            "a captain's desk",
            "a table",
            {"captain": "", "desk": "table"},
        ),  # nothing known would remain: unchanged (the pipeline warns)
        ("a desk xyzzy", "a table", {"desk": "table", "xyzzy": ""}),  # desk is the head here
    ],
)
def test_rewrite_swaps_unknown_words_for_their_alias(prompt, expected, swapped):
    aliases = {
        "desk": "table",
        "stool": "chair",
        "chair": "seat",
        "coffee": "drink",
        "coffee_table": "table",
        "wine_bottle": "bottle",
    }
    vocab = {
        "table",
        "chair",
        "seat",
        "office",
        "kitchen",
        "bar",
        "wooden",
        "lamp",
        "lights",
        "living",
        "room",
        "wine",
        "bottle",
        "drawers",
    }
    assert rewrite(prompt, aliases, vocab) == (expected, swapped)


def test_lexicon_file_round_trip_and_bad_files(tmp_path):
    assert load_lexicon(tmp_path) == {}  # a checkpoint without a lexicon: no aliases
    save_lexicon(tmp_path, {"stool": "chair", "desk": "table"})
    assert load_lexicon(tmp_path) == {"desk": "table", "stool": "chair"}
    assert (
        "Copyright 2006 by Princeton"
        in json.loads((tmp_path / "lexicon.json").read_text())["notice"]
    )
    (tmp_path / "lexicon.json").write_text("{not json")
    with pytest.raises(LexiconError, match="not a lexicon file"):
        load_lexicon(tmp_path)
    (tmp_path / "lexicon.json").write_text(json.dumps({"aliases": {"desk": 3}}))
    with pytest.raises(LexiconError, match="map words to words"):
        load_lexicon(tmp_path)
    with pytest.raises(LexiconError, match="apt-get install -y wordnet-base"):
        WordNet.load(tmp_path / "nowhere")


REAL_WORDNET = Path("/usr/share/wordnet")


@pytest.mark.skipif(
    not (REAL_WORDNET / "data.noun").is_file(),
    reason="Debian's wordnet-base is not installed (`make test` installs it)",
)
def test_real_wordnet_reads_furniture_words_as_known_ones():
    wn = WordNet.load(REAL_WORDNET)
    vocab = vocab_counts(
        [
            "a table (office)",
            "a chair, seat (kitchen)",
            "a bottle",
            "a lamp",
            "a sofa, couch (living room)",
            "a white cabinet",
        ]
    )
    aliases = build_aliases(
        wn,
        vocab,
        words=[
            "desk",
            "stool",
            "flask",
            "loveseat",
            "black",
            "bookcases",
            "armoire",
            "dog",
            "xyzzy",
        ],
    )
    # sofa and couch are one synset, used once each: the tie goes to the first in order
    assert aliases == {
        "desk": "table",
        "stool": "chair",
        "flask": "bottle",
        "loveseat": "couch",
        "bookcases": "cabinet",
        "armoire": "cabinet",
    }
