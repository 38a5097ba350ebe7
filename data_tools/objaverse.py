"""Objaverse source: a folder of ``<uid>.glb`` (any depth) plus optional captions.

Captions: a Cap3D-style CSV (``uid,caption`` rows, header optional) or a JSON map
``{uid: caption}``; objects without one take the Sketchfab title from the GLB (recorded as
``caption_source: title``) unless ``require_caption``. Licence, title and author are read from
each GLB's ``asset.extras`` inside the worker (``convert.HOOKS["gltf_extras"]``), where the
licence filter also applies (filtered objects are counted, not errors). glTF is Y-up.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_tools.jobs import DEFAULT_SPLIT, Job, SourceError, assign_split, parse_split


def read_captions(path: str | Path) -> dict[str, str]:
    """uid → caption from a CSV (``uid,caption``; a header row is detected) or a JSON map."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: captions file not found")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise SourceError(f"{path}: expected a JSON object uid → caption")
        return {str(k): str(v) for k, v in data.items()}
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2:
                continue
            if i == 0 and row[0].strip().lower() in ("uid", "id", "path", "file", "name"):
                continue  # header
            out[row[0].strip()] = row[1].strip()
    return out


def open_source(
    root: str | Path,
    captions: str | Path | None = None,
    licences: list[str] | None = None,
    require_caption: bool = False,
    split: str = DEFAULT_SPLIT,
    test_uids: str | Path | None = None,
    seed: int = 0,
) -> list[Job]:
    """Jobs for every ``*.glb`` under ``root``.

    :param licences: keep only these licences (e.g. ``CC-BY-4.0``, ``CC0-1.0``), checked per
        object from its ``asset.extras.license``.
    :param test_uids: a text file of uids (one per line) that go to the ``test`` split (e.g.
        Cap3D's test lists); the others follow ``split``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    table = read_captions(captions) if captions else {}
    test = set(Path(test_uids).read_text().split()) if test_uids else set()
    spec = parse_split(split)
    jobs = []
    for glb in sorted(root.rglob("*.glb")):
        uid = glb.stem
        object_id = f"objaverse/{uid}"
        extras: dict = {"uid": uid}
        if licences:
            extras["allowed_licences"] = sorted(licences)
        if require_caption:
            extras["require_caption"] = True
        jobs.append(
            Job(
                id=object_id,
                path=str(glb),
                source="objaverse",
                caption=table.get(uid, ""),
                split="test" if uid in test else assign_split(object_id, spec, seed),
                up="y",
                hook="gltf_extras",
                extras=extras,
            )
        )
    if not jobs:
        raise SourceError(f"{root}: no .glb files")
    return jobs
