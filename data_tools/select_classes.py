"""Select objects of named shape classes from shard directories into a new shard directory.

    .venv/bin/python -m data_tools.select_classes runs/data/sweethome3d --out runs/data/ship \
        [--holdout-groups stool desk] [--others]

A class is matched by keywords on the object's name (Sweet Home 3D), else on its caption words.
In a name the *head noun* decides: the rightmost keyword before the first preposition ("Desk
lamp" is a lamp, "Double door with panes" a door, "Glass door cabinet" a cabinet). Objects whose
name contains an ``EXCLUDE`` word are dropped: they carry a class word but are not of the class
("Table fan", "Table tennis bat", "Woman shoes"). Within a caption the first class whose keyword
matches wins, so order matters (``armchair`` is matched before ``chair``).
The record's ``category`` becomes the class; ``split`` is kept (by object), except that objects
whose name contains a ``--holdout-groups`` word go to split ``test_group`` (whole name groups held
out for generalisation checks). Output bytes are a function of the input shards only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pointdiff.data import ShardReader, write_shards

#: shape class -> keywords (word match on the lower-cased name, else on the caption).
CLASSES: dict[str, list[str]] = {
    "sofa": ["sofa", "couch", "armchair", "settee"],
    "chair": ["chair", "stool"],
    "table": ["table", "desk"],
    "bed": ["bed", "crib"],
    "lamp": ["lamp", "lantern", "chandelier", "light"],
    "cabinet": ["cabinet", "wardrobe", "bookcase", "shelves", "dresser", "cupboard", "drawers"],
    "door": ["door"],
    "window": ["window", "panes"],
    "plant": ["plant", "tree", "hedge", "bush", "flowers", "palm"],
    "bottle": ["bottle", "vase", "flacon"],
    "person": ["male", "female", "man", "woman", "girl", "boy", "person"],
}


#: the category of objects of no class, kept with ``--others``.
OTHER = "other"

#: name words that mark an object as not of the class its other words name.
EXCLUDE = {"fan", "bat", "shoes", "room"}
#: a name's head noun comes before these ("Table on trestles", "Chair with cushion").
PREPOSITIONS = {"with", "on", "under", "for", "of", "in"}
_KEYWORD_CLASS = {k: cls for cls, keys in CLASSES.items() for k in keys}


def _tokens(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def _words(text: str) -> set[str]:
    return set(_tokens(text))


def classify(entry: dict) -> str | None:
    """The shape class of an index entry, or None (no class word, or an excluded name)."""
    name = _tokens(entry.get("name", ""))
    if EXCLUDE & set(name):
        return None
    head = name[: next((i for i, w in enumerate(name) if w in PREPOSITIONS), len(name))]
    for word in reversed(head):
        if word in _KEYWORD_CLASS:
            return _KEYWORD_CLASS[word]
    words = set(name) | _words(entry.get("caption", ""))
    for cls, keys in CLASSES.items():
        if words & set(keys):
            return cls
    return None


def select(roots: list[Path], out: Path, holdout_groups: list[str], others: bool = False) -> dict:
    """Write the objects of ``CLASSES`` (and with ``others`` every other object, as category
    ``OTHER`` in split ``train``: more shapes and words to learn from, never evaluated)."""
    records, fps = [], True
    for root in roots:
        reader = ShardReader(root)
        fps = fps and reader.index.meta.get("point_order") == "fps"
        for i, e in enumerate(reader.entries):
            cls = classify(e)
            if cls is None and not others:
                continue
            rec = {k: v for k, v in e.items() if k not in ("shard", "row")}
            rec["category"] = cls or OTHER
            if cls is None:
                rec["split"] = "train"
            elif _words(e.get("name", e["caption"])) & set(holdout_groups):
                rec["split"] = "test_group"
            for key in ("coords", "colors", "sdf_points", "sdf_values"):
                rec[key] = reader.get(i, key)
            records.append(rec)
    records.sort(key=lambda r: r["id"])
    return write_shards(records, out, point_order="fps" if fps else None)  # kept when all are


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("roots", nargs="+", type=Path, help="shard directories (data_tools output)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--holdout-groups", nargs="*", default=[], help="name words held out whole")
    ap.add_argument(
        "--others",
        action="store_true",
        help=f"keep objects of no class too (category {OTHER!r}, all in split train)",
    )
    args = ap.parse_args(argv)
    meta = select(args.roots, args.out, args.holdout_groups, args.others)
    counts: dict[str, dict[str, int]] = {}
    with open(args.out / "index.jsonl") as f:
        for line in f:
            e = json.loads(line)
            counts.setdefault(e["category"], {}).setdefault(e["split"], 0)
            counts[e["category"]][e["split"]] += 1
    print(f"{meta['num_objects']} objects -> {args.out}")
    for cls in [*CLASSES, OTHER]:
        print(f"  {cls:8s} {counts.get(cls, {})}")


if __name__ == "__main__":
    main()
