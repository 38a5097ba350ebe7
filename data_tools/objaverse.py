"""Objaverse source: a folder of ``<uid>.glb`` (any depth) plus optional captions.

Captions: a Cap3D-style CSV (``uid,caption`` rows, header optional) or a JSON map
``{uid: caption}``; objects without one take the Sketchfab title from the GLB (recorded as
``caption_source: title``) unless ``require_caption``. Licence, title and author are read from
each GLB's ``asset.extras`` inside the worker (``convert.HOOKS["gltf_extras"]``), where the
licence filter also applies: filtered objects are not errors; each is listed with its reason in
``OUT/filtered.jsonl`` and counted in the summary. GLBs without a licence (``unknown``) fail
any ``--licences`` filter unless ``include_unknown``. glTF is Y-up.

``download_source`` fetches GLBs and annotations through the ``objaverse`` package
(``pip install 'pointdiff[objaverse]'``; imported only then), whose licence, name and author
stand in for what a GLB does not carry.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from data_tools.jobs import DEFAULT_SPLIT, Job, SourceError, assign_split, in_part, parse_split


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


#: Objaverse annotation licences (Sketchfab slugs) → the names GLBs carry in asset.extras
ANNOTATION_LICENCES = {
    "by": "CC-BY-4.0",
    "by-sa": "CC-BY-SA-4.0",
    "by-nd": "CC-BY-ND-4.0",
    "by-nc": "CC-BY-NC-4.0",
    "by-nc-sa": "CC-BY-NC-SA-4.0",
    "by-nc-nd": "CC-BY-NC-ND-4.0",
    "cc0": "CC0-1.0",
}


@dataclass(frozen=True)
class Options:
    """What every Objaverse job shares.

    :param captions: Cap3D-style CSV (``uid,caption``) or JSON map.
    :param licences: keep only these licences (e.g. ``CC-BY-4.0``, ``CC0-1.0``), checked per
        object from its ``asset.extras.license`` (else its annotation).
    :param include_unknown: with ``licences``, keep objects that name no licence too (research
        use; their index rows say ``licence: unknown``).
    :param require_caption: filter objects without a caption (default: the GLB title).
    :param test_uids: a text file of uids (one per line) that go to the ``test`` split (e.g.
        Cap3D's test lists); the others follow ``split`` (hashed with ``seed``).
    """

    captions: str | Path | None = None
    licences: list[str] | None = None
    include_unknown: bool = False
    require_caption: bool = False
    split: str = DEFAULT_SPLIT
    test_uids: str | Path | None = None
    seed: int = 0


class _JobMaker:
    """Options read once (caption table, test uids), then one ``Job`` per uid."""

    def __init__(self, o: Options):
        self.table = read_captions(o.captions) if o.captions else {}
        self.test = set(Path(o.test_uids).read_text().split()) if o.test_uids else set()
        self.spec, self.seed = parse_split(o.split), o.seed
        self.extras: dict = {}
        if o.licences:
            self.extras["allowed_licences"] = sorted(o.licences)
            if o.include_unknown:
                self.extras["allow_unknown_licence"] = True
        if o.require_caption:
            self.extras["require_caption"] = True

    def job(self, uid: str, path: str, annotation: dict | None = None) -> Job:
        object_id = f"objaverse/{uid}"
        extras, licence = {"uid": uid, **self.extras}, "unknown"
        if annotation:  # what the GLB lacks, its asset.extras override (convert's hook)
            raw = str(annotation.get("license") or "")
            licence = ANNOTATION_LICENCES.get(raw, raw) or "unknown"
            user = annotation.get("user")
            for key, value in (("title", annotation.get("name")), ("author", user)):
                value = value.get("username") if isinstance(value, dict) else value
                if value:
                    extras[key] = str(value)
        return Job(
            id=object_id,
            path=path,
            source="objaverse",
            caption=self.table.get(uid, ""),
            licence=licence,
            split="test" if uid in self.test else assign_split(object_id, self.spec, self.seed),
            up="y",
            hook="gltf_extras",
            extras=extras,
        )


def open_source(root: str | Path, options: Options = Options()) -> list[Job]:
    """Jobs for every ``*.glb`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    maker = _JobMaker(options)
    jobs = [maker.job(glb.stem, str(glb)) for glb in sorted(root.rglob("*.glb"))]
    if not jobs:
        raise SourceError(f"{root}: no .glb files")
    return jobs


def download_source(
    uids_file: str | Path,
    options: Options = Options(),
    part_index: int = 0,
    num_parts: int = 1,
    processes: int = 1,
) -> list[Job]:
    """Download this part's uids of ``uids_file`` (one per line, or a Cap3D CSV: first column)
    with ``objaverse.load_objects`` (into its cache, ``~/.objaverse``) and their annotations;
    return their jobs. A uid that does not download fails as ``missing_file``."""
    path = Path(uids_file)
    if not path.is_file():
        raise SourceError(f"--download {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    uids = sorted({ln.split(",")[0].strip() for ln in lines if ln.strip()} - {"uid"})
    uids = [u for u in uids if in_part(f"objaverse/{u}", part_index, num_parts)]
    if not uids:
        raise SourceError(f"--download {path}: no uids in this part")
    objaverse = _import_objaverse()
    try:
        annotations = objaverse.load_annotations(uids)
        paths = objaverse.load_objects(uids=uids, download_processes=processes)
    except Exception as e:  # requests, urllib, fsspec, huggingface_hub: each has its errors
        missing = path.with_name(path.stem + ".not-downloaded.txt")
        missing.write_text("".join(u + "\n" for u in uids))
        raise SourceError(
            f"could not download {len(uids)} Objaverse objects ({type(e).__name__}: {e}). "
            'Offline? On a machine with network run: python -c "import objaverse; '
            f"objaverse.load_annotations(); objaverse.load_objects(open('{missing}')"
            '.read().split())", then copy its ~/.objaverse (hf-objaverse-v1/) here, or '
            "convert a folder of <uid>.glb with: python -m data_tools objaverse DIR"
        ) from None
    maker, jobs = _JobMaker(options), []
    for uid in uids:
        where = paths.get(uid) or f"objaverse:{uid} (not downloaded)"
        jobs.append(maker.job(uid, str(where), (annotations or {}).get(uid)))
    lost = len(uids) - len(paths)
    if lost:
        print(f"note: {lost} of {len(uids)} uids were not downloaded", file=sys.stderr)
    return jobs


def _import_objaverse():
    try:
        import objaverse
    except ImportError:
        raise SourceError(
            "--download needs the objaverse package: pip install 'pointdiff[objaverse]' "
            "(or pip install 'objaverse>=0.1')"
        ) from None
    return objaverse
