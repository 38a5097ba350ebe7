"""ShapeNetCore v2 source: ``<root>/<synset>/<model_id>/models/model_normalized.obj``.

Splits come from an ``all.csv``-style table (``id,synsetId,subSynsetId,modelId,split`` and
optionally ``SynsetName,SubSynsetName``; the shared subset's ``models.csv`` column names are
accepted too); models missing from it get a hashed split. Captions use the sub-synset name when
known (``a bomber, a kind of airplane``), else the synset name (``a chair``). Names come from the
table, else ``taxonomy.json`` in the root, else the 55 ShapeNetCore synsets below.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_tools.jobs import DEFAULT_SPLIT, Job, SourceError, assign_split, parse_split, with_article

LICENCE = "ShapeNet terms of use (non-commercial research and education)"

#: ShapeNetCore v2 synsets → first WordNet lemma (ShapeNet's taxonomy.json names).
# fmt: off
SYNSETS = {
    "02691156": "airplane", "02747177": "trash bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap",
    "02958343": "car", "02992529": "cellphone", "03001627": "chair", "03046257": "clock",
    "03085013": "keyboard", "03207941": "dishwasher", "03211117": "display",
    "03261776": "earphone", "03325088": "faucet", "03337140": "file cabinet", "03467517": "guitar",
    "03513137": "helmet", "03593526": "jar", "03624134": "knife", "03636649": "lamp",
    "03642806": "laptop", "03691459": "loudspeaker", "03710193": "mailbox",
    "03759954": "microphone", "03761084": "microwave", "03790512": "motorbike", "03797390": "mug",
    "03928116": "piano", "03938244": "pillow", "03948459": "pistol", "03991062": "flowerpot",
    "04004475": "printer", "04074963": "remote control", "04090263": "rifle", "04099429": "rocket",
    "04225987": "skateboard", "04256520": "sofa", "04330267": "stove", "04379243": "table",
    "04401088": "telephone", "04460130": "tower", "04468005": "train", "04530566": "watercraft",
    "04554684": "washer",
}
# fmt: on

_COLUMNS = {
    "synset": ("synsetId", "synset"),
    "sub": ("subSynsetId", "sub_synset"),
    "model": ("modelId", "model_id"),
    "split": ("split", "official_split"),
    "synset_name": ("SynsetName", "synset_name"),
    "sub_name": ("SubSynsetName", "sub_synset_name"),
}


def _first_lemma(name: str) -> str:
    return name.split(",")[0].strip().replace("_", " ")


def read_table(path: Path) -> dict[str, dict]:
    """model_id → {synset, sub, split, synset_name, sub_name} from an all.csv-style table."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {}
        for key, names in _COLUMNS.items():
            cols[key] = next((n for n in names if n in (reader.fieldnames or [])), None)
        if cols["model"] is None or cols["synset"] is None:
            raise SourceError(f"{path}: no modelId/synsetId columns (got {reader.fieldnames})")
        out = {}
        for row in reader:
            out[row[cols["model"]]] = {k: (row[c] if c else "") for k, c in cols.items()}
    return out


def _taxonomy(root: Path) -> dict[str, str]:
    path = root / "taxonomy.json"
    names = dict(SYNSETS)
    if path.is_file():
        for node in json.loads(path.read_text()):
            names[node["synsetId"]] = _first_lemma(node["name"])
    return names


def caption_for(synset_name: str, sub_name: str = "") -> str:
    """``a chair``; with a sub-synset ``a straight chair`` or ``a bomber, a kind of airplane``."""
    if not sub_name or sub_name == synset_name:
        return with_article(synset_name)
    if synset_name in sub_name:
        return with_article(sub_name)
    return f"{with_article(sub_name)}, a kind of {synset_name}"


def open_source(
    root: str | Path,
    table: str | Path | None = None,
    split: str = "official",
    seed: int = 0,
    synsets: list[str] | None = None,
) -> list[Job]:
    """Jobs for every ``model_normalized.obj`` under ``root`` (optionally some synsets only).

    :param table: all.csv-style table; default ``root/all.csv`` or ``root/models.csv`` if present.
    :param split: ``official`` (table, hashed default split for models not in it) or a
        ``parse_split`` spec applied to every model.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    if table is None:
        table = next((root / n for n in ("all.csv", "models.csv") if (root / n).is_file()), None)
    rows = read_table(Path(table)) if table else {}
    names = _taxonomy(root)
    spec = parse_split(DEFAULT_SPLIT if split == "official" else split)
    jobs = []
    for obj in sorted(root.glob("*/*/models/model_normalized.obj")):
        model_dir = obj.parent.parent
        synset, model_id = model_dir.parent.name, model_dir.name
        if synsets and synset not in synsets:
            continue
        row = rows.get(model_id, {})
        synset_name = _first_lemma(row.get("synset_name") or names.get(synset, synset))
        sub_name = _first_lemma(row.get("sub_name") or names.get(row.get("sub", ""), ""))
        object_id = f"shapenet/{synset}/{model_id}"
        official = row.get("split", "")
        if split == "official" and official in ("train", "val", "test"):
            object_split = official
        else:
            object_split = assign_split(object_id, spec, seed)
        extras = {"synset": synset, "model_id": model_id}
        if row.get("sub"):
            extras["sub_synset"] = row["sub"]
        if sub_name:
            extras["sub_synset_name"] = sub_name
        jobs.append(
            Job(
                id=object_id,
                path=str(obj),
                source="shapenet",
                caption=caption_for(synset_name, sub_name),
                licence=LICENCE,
                split=object_split,
                category=synset_name,
                up="y",
                root=str(model_dir),
                extras=extras,
            )
        )
    if not jobs:
        raise SourceError(f"{root}: no <synset>/<id>/models/model_normalized.obj files")
    return jobs
