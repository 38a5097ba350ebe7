"""More captions per object: colour words from its own surface, proportions against similar
objects, material and head noun from its name (``python -m data_tools captions SHARD_DIR``).

``build_captions`` keeps the converter's caption first and adds 4–7 short natural ones:
``a white and brown table``, ``a low coffee table``, ``a wooden chair``, ``sofa``,
``a red sofa for the living room``. Choices are seeded by the object id: same rows and
colours → same captions.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.jobs import with_article
from pointdiff.atomic import write_text_atomic
from pointdiff.colours import BASIC_COLOURS, describe_colours
from pointdiff.data import ShardReader

MIN_CAPTIONS, MAX_CAPTIONS = 5, 8  # per object, the original included
MIN_GROUP = 4  # objects sharing a noun before their own median sizes are used
TALL, WIDE, LARGE = 1.4, 1.4, 2.5  # size ratio to the group median (inverse: low, narrow, small)

# Misspelt or foreign words of the catalogs → English (whole words of the name).
WORD_FIXES = {
    "teck": "teak",
    "trunck": "trunk",
    "hashtray": "ashtray",
    "mocassin": "moccasin",
    "bank": "bench",
    "toilets": "toilet",
    "puff": "pouf",
    "gaz": "gas",
    "male": "man",
    "female": "woman",
    "lamppost": "lamp post",
}
# Names whose last word is not the object: the whole head.
COMPOUND_HEADS = {
    "hot dog": "hot dog",
    "teddy bear": "teddy bear",
    "rocking horse": "rocking horse",
    "clothes horse": "clothes horse",
    "fork lift": "forklift",
    "car model": "toy car",
    "air conditioning": "air conditioner",
    "table tennis": "ping-pong table",
    "shower head": "shower head",
    "white board": "whiteboard",
    "dog house": "doghouse",
    "toilet unit": "toilet",
    "wood logs": "logs",
    "french fries": "french fries",
    "card game": "playing cards",
    "dart game": "dartboard",
    "bell ring": "doorbell",
    "speech unit": "intercom",
    "lip stick": "lipstick",
    "tape measure": "tape measure",
    "trash can": "trash can",
    "doll house": "dollhouse",
    "living room": "shelving unit",
}
# Name words that are the head wherever they stand ("Arrow turn right").
HEAD_WORDS = {"arrow", "mannequin", "frame"}
# Heads too vague alone: the head is the last two words ("sandwich maker", "knife stand").
VAGUE_HEADS = {
    "maker",
    "unit",
    "device",
    "control",
    "stand",
    "holder",
    "station",
    "base",
    "tower",
    "rack",
    "bag",
    "detector",
    "game",
    "ring",
    "goal",
    "slot",
    "sign",
    "lock",
    "board",
    "machine",
    "press",
    "player",
    "strip",
    "stall",
    "extension",
}
# Head noun → the more common word a person would type (also used as the size group).
GENERAL = {
    "couch": "sofa",
    "armchair": "chair",
    "shelves": "shelf",
    "bookcase": "shelf",
    "cupboard": "cabinet",
    "washbasin": "sink",
    "lavatory": "sink",
    "refrigerator": "fridge",
    "television": "tv",
    "light": "lamp",
    "lights": "lamps",
    "bike": "bicycle",
    "trashcan": "trash can",
    "dustbin": "trash can",
    "sedan": "car",
    "suv": "car",
    "crib": "bed",
    "mug": "cup",
    "orchids": "flowers",
    "tulips": "flowers",
    "lily": "flower",
    "bush": "bush",
    "hedge": "hedge",
    "truck": "truck",
    "bus": "bus",
    "van": "van",
    "tablet": "tablet",
    "laptop": "laptop",
    "printer": "printer",
    "box": "box",
    "bottle": "bottle",
    "scooter": "scooter",
}
# Tags that name the kind of a brand or species name (Ford Focus → car, Yucca → plant), and
# the categories where they do (a helmet tagged Motorbike is no motorbike).
_VEHICLE, _PLANT = {"vehicles"}, {"living room", "exterior"}
KIND_TAGS = {
    "car": ("car", _VEHICLE),
    "motorbike": ("motorbike", _VEHICLE),
    "motorcycle": ("motorbike", _VEHICLE),
    "bicycle": ("bicycle", _VEHICLE),
    "plant": ("plant", _PLANT),
    "tree": ("tree", _PLANT),
    "flowers": ("flowers", _PLANT),
    "computer": ("computer", {"office"}),
}
# Name words that state a material (only before the head: "glass table", not "beer glass").
MATERIALS = {
    "wood": "wooden",
    "wooden": "wooden",
    "oak": "wooden",
    "teak": "wooden",
    "alder": "wooden",
    "metal": "metal",
    "iron": "metal",
    "steel": "metal",
    "chrome": "metal",
    "aluminium": "metal",
    "wire": "metal",
    "glass": "glass",
    "leather": "leather",
    "plastic": "plastic",
    "wicker": "wicker",
    "rattan": "wicker",
    "marble": "marble",
    "fabric": "fabric",
    "burlap": "fabric",
    "velvet": "fabric",
    "concrete": "concrete",
    "stone": "stone",
    "cardboard": "cardboard",
    "bamboo": "bamboo",
}
ROOMS = {
    "living room": "living room",
    "kitchen": "kitchen",
    "bedroom": "bedroom",
    "bathroom": "bathroom",
    "office": "office",
    "exterior": "garden",
}
_KEEP_CAPS = {"TV", "DVD", "SUV", "MP3", "CCTV", "PC"}  # upper-case name words that are words
_ARTICLES = {"a", "an", "the"}
_SINGULAR = {"bus", "gas", "cactus", "chess", "glass", "mattress", "canvas", "lens"}
_COLOUR_WORDS = {*BASIC_COLOURS, "gray", "golden", "silver", "clear"}  # dropped from the phrase
_SIZE_WORDS = {"little", "small", "large", "big", "mini", "high", "tall", "low"}


@dataclass(frozen=True)
class Noun:
    """What a row's name says the object is."""

    phrase: str  # the name without colour words and model codes: "futon couch"
    head: str  # the object word: "couch"
    general: str  # the word a person would type: "sofa"
    modifiers: tuple[str, ...]  # name words before the head: ("futon",)


def noun_of(row: dict) -> Noun:
    """Head noun of a row from its ``name`` (else its caption's first phrase) and ``tags``."""
    name = row.get("name") or re.split(r"[,(]", row["caption"])[0]
    name = re.split(r",| - | with | and | on | under | for | in | small panes", name.strip())[0]
    words = [w for w in name.replace("-", " - ").split() if w != "-"]
    while len(words) > 1 and (
        re.search(r"\d", words[-1]) or (words[-1].isupper() and words[-1] not in _KEEP_CAPS)
    ):
        words.pop()  # model codes: "Sofa 2 seats", "Peugeot 308 CC", "Convertible sofa BZ"
    if any(re.match(r"\d", w) for w in words[1:]):  # "Sedan 02 Sport", not "RJ45 plug"
        words = words[: next(i for i, w in enumerate(words) if i and re.match(r"\d", w))]
    words = [WORD_FIXES.get(w.lower(), w.lower()) for w in words]
    words = words[1:] if len(words) > 1 and words[0] in _ARTICLES else words
    # The head's span in the name: a compound, a head word anywhere, or the last word(s).
    compound = next((c for c in COMPOUND_HEADS if f" {' '.join(words)}".endswith(f" {c}")), None)
    if compound:
        start, head = len(words) - len(compound.split()), COMPOUND_HEADS[compound]
    elif any(w in HEAD_WORDS for w in words):
        start = next(i for i, w in enumerate(words) if w in HEAD_WORDS)
        head = words[start]
    else:
        start = len(words) - (2 if words[-1] in VAGUE_HEADS and len(words) > 1 else 1)
        head = " ".join(words[start:])
    modifiers = tuple(w for w in words[:start] if w not in _COLOUR_WORDS)
    phrase = " ".join((*modifiers, *([head] if compound else words[start:])))
    tags = [t.lower() for t in row.get("tags", [])]
    category = row.get("category", "").lower()
    kinds = [KIND_TAGS[t][0] for t in tags if category in KIND_TAGS.get(t, ("", ()))[1]]
    general = GENERAL.get(head) or (kinds[0] if kinds and kinds[0] not in phrase else head)
    return Noun(phrase, head, general, modifiers)


def material_of(noun: Noun) -> str | None:
    """A material adjective stated by the name before its head noun, e.g. ``wooden``."""
    return next((MATERIALS[w] for w in noun.modifiers if w in MATERIALS), None)


# ----------------------------------------------------------------------------------------------
# Sizes


def category_size_stats(rows: list[dict]) -> dict[str, np.ndarray]:
    """Median ``size_cm`` [width, depth, height, volume] per object category of the dataset.

    The category is the general head noun (chairs with armchairs, tables with desks' tables),
    kept when at least ``MIN_GROUP`` objects share it. Sweet Home 3D's own categories (rooms)
    are not used: a pencil is not "low" next to the office's desks. Rows without a full
    ``size_cm`` are left out.
    """
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        size = row.get("size_cm")
        if size and all(v and v > 0 for v in size):
            w, d, h = size
            groups[noun_of(row).general].append((w, d, h, w * d * h))
    return {
        k: np.median(np.array(v), axis=0) for k, v in sorted(groups.items()) if len(v) >= MIN_GROUP
    }


def size_word(row: dict, stats: dict[str, np.ndarray], noun: Noun) -> str | None:
    """``tall``/``low``/``wide``/``narrow``/``large``/``small`` against the medians of the
    object's category (the most pronounced one), or None: an ordinary size, no category
    statistics or no ``size_cm``."""
    size, med = row.get("size_cm"), stats.get(noun.general)
    if med is None or not size or any(not v or v <= 0 for v in size):
        return None
    w, d, h = size
    ratios = {
        "wide": (w / med[0], WIDE),
        "tall": (h / med[2], TALL),
        "large": (w * d * h / med[3], LARGE),
    }
    opposite = {"wide": "narrow", "tall": "low", "large": "small"}
    best, score = None, 1.0
    for word, (r, limit) in ratios.items():
        s = abs(np.log(r)) / np.log(limit)  # >= 1: beyond the threshold either way
        if s >= score:
            best, score = (word if r > 1 else opposite[word]), s
    return best


# ----------------------------------------------------------------------------------------------
# Captions


def _a(*words: str | None) -> str:
    """Words joined, with ``a``/``an`` unless the last is plural (``white tulips``)."""
    phrase = " ".join(w for w in words if w)
    last = phrase.split()[-1]
    plural = last.endswith("s") and not last.endswith(("ss", "us", "is")) and last not in _SINGULAR
    return phrase if plural else with_article(phrase)


def build_captions(
    row: dict, colors: np.ndarray, size_stats: dict[str, np.ndarray], seed: int = 0
) -> list[str]:
    """Captions of one object: ``row["caption"]`` first, then natural ones, no duplicates.

    :param row: index row (``id``, ``caption``, ``category``; Sweet Home 3D ``name, tags,
        size_cm``).
    :param colors: [P, 3] uint8 sRGB colours of its points.
    :param size_stats: ``category_size_stats`` of the dataset.
    :param seed: added to the per-object seed (crc32 of the id).
    :return: ``MIN_CAPTIONS`` to ``MAX_CAPTIONS`` strings (fewer when little is known).
    """
    g = np.random.default_rng([seed, zlib.crc32(row["id"].encode())])
    noun = noun_of(row)
    category = row.get("category", "").lower()
    people = category == "characters"  # "a woman in blue", not "a blue woman"
    room = ROOMS.get(category)
    # Grey 128 is the converter's "no colour" unless every face had one (then it is a material).
    untextured = row.get("colored_fraction", 0.0) < 1.0
    rgb = np.asarray(colors, np.float64) / 255.0
    colour = " and ".join(describe_colours(rgb, ignore_default_grey=untextured))
    # No size word where the name has one ("Little lamp") or for people ("a low woman": a pose).
    sized = bool(_SIZE_WORDS & set(noun.modifiers))
    size = None if sized or people else size_word(row, size_stats, noun)
    material = material_of(noun)
    nouns = list(dict.fromkeys([noun.general, noun.head, noun.phrase]))
    short = list(dict.fromkeys([noun.general, noun.head]))  # one word, no adjectives of the name
    families = [
        (
            [f"{_a(n)} in {colour}" for n in nouns]
            if people
            else [_a(colour, n) for n in (short if sized else nouns)]
            + [f"{colour} {n}" for n in short]
        )
        if colour
        else [],
        [_a(size, n) for n in short] if size else [],
        [_a(material, n) for n in short] if material else [],
        [_a(size, colour, n) for n in short] if size and colour and not people else [],
        [_a(colour, material, n) for n in short] if colour and material else [],
        (
            [f"{_a(n)} for the {room}" for n in nouns]
            + [f"{_a(n)} in {_a(room)}" for n in nouns]
            + ([f"{_a(colour, n)} for the {room}" for n in short] if colour and not people else [])
        )
        if room
        else [],
        [_a(n) for n in nouns] + short,
    ]
    picks = [row["caption"]] + [o[g.integers(len(o))] for o in families if o]  # one per family
    rest = [c for options in families for c in options]
    g.shuffle(rest)
    out = list(dict.fromkeys(" ".join(c.split()) for c in picks))
    for c in rest:  # … then others until MIN_CAPTIONS
        if len(out) >= MIN_CAPTIONS:
            break
        if c not in out:
            out.append(c)
    return out[:MAX_CAPTIONS]


def caption_shards(root: str | os.PathLike, seed: int = 0, dry_run: bool = False) -> list[dict]:
    """Add ``captions`` to every row of ``root/index.jsonl`` (atomic rewrite; ``caption`` kept).

    :return: the rows with their captions (also when ``dry_run`` writes nothing).
    """
    reader = ShardReader(root)
    rows = [dict(e) for e in reader.entries]
    stats = category_size_stats(rows)
    for i, row in enumerate(rows):
        row["captions"] = build_captions(row, reader.get(i, "colors"), stats, seed)
    if not dry_run:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        write_text_atomic(Path(root) / "index.jsonl", lines)
    return rows


def print_sample(rows: list[dict], count: int = 20, seed: int = 0) -> None:
    """Captions of ``count`` seeded-random rows, for reading."""
    pick = np.random.default_rng(seed).permutation(len(rows))[:count]
    for i in sorted(pick):
        print(rows[i]["id"])
        for c in rows[i]["captions"]:
            print(f"    {c}")
    words = Counter(len(r["captions"]) for r in rows)
    print(f"{len(rows)} objects; captions per object: {dict(sorted(words.items()))}")
