"""Folder source: every mesh file (OBJ, GLB, glTF, PLY, OFF, STL) under a directory.

Captions: a CSV with columns ``id`` (or ``path``/``file``/``name``: the path relative to the
folder, with or without suffix, or the file stem) and ``caption`` (optional ``licence``,
``category``); otherwise, for GLB/glTF, the title in the file's ``asset.extras`` (licence too),
else words from the file name (``WaterBottle`` → ``a water bottle``; generic stems such as
``model`` use the parent folder's name). An OBJ with UVs but no ``mtllib`` gets the
texture image found next to it (``<stem>.png|jpg``, ``<name>_texture.*``, or the folder's only
image), as Spot needs. Up axis: ``auto`` = Z for STL (CAD/printing convention), Y otherwise.

Ids are ``<name>/<relative path without suffix>``; files that would share one (``a.obj`` and
``a.ply``, a model as ``.gltf`` and ``.glb``) keep their suffix instead (``<name>/a.obj``), with a
note on stderr. Dangling symlinks become jobs too, so they are reported (``missing_file``)
rather than skipped in silence.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path

from data_tools.jobs import (
    DEFAULT_SPLIT,
    Job,
    SourceError,
    assign_split,
    parse_split,
    with_article,
    words_from_name,
)
from data_tools.mesh_reader import SUFFIXES

_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".webp")
_GENERIC = {"model", "mesh", "scene", "object", "model_normalized", "untitled", "export"}


def read_caption_table(path: str | Path) -> dict[str, dict]:
    """key → row (``caption`` and optional ``licence``/``category``) from a CSV with a header."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: captions file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        key = next((k for k in ("id", "path", "file", "name", "uid") if k in fields), None)
        if key is None or "caption" not in fields:
            raise SourceError(f"{path}: need columns id (or path/file/name) and caption")
        return {row[key].strip(): row for row in reader}


def _obj_texture(obj: Path) -> str | None:
    """The image for an OBJ that has UVs but no material library, if one is unambiguous."""
    try:
        with open(obj, "rb") as f:
            head = f.read(1 << 20)
    except OSError:  # a dangling link or unreadable file: the conversion reports it
        return None
    if b"mtllib" in head or b"\nvt " not in head:
        return None
    images = sorted(p for p in obj.parent.iterdir() if p.suffix.lower() in _IMAGES)
    token = obj.stem.split("_")[0].lower()
    for img in images:
        if img.stem.lower() == obj.stem.lower():
            return str(img)
    for img in images:
        name = img.stem.lower()
        if name.startswith(token) and any(w in name for w in ("texture", "diffuse", "albedo")):
            return str(img)
    return str(images[0]) if len(images) == 1 else None


def mesh_files(root: Path) -> list[Path]:
    """Mesh files under ``root``, following symlinked folders (each real folder once).
    Dangling symlinks are kept (the conversion reports them); folders that cannot be listed
    are named on stderr."""

    def note(e: OSError) -> None:
        print(f"note: cannot list {e.filename}: {e.strerror} (skipped)", file=sys.stderr)

    seen, out = set(), []
    for folder, dirs, names in os.walk(root, onerror=note, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        out += [Path(folder) / n for n in names if Path(n).suffix.lower() in SUFFIXES]
    return sorted(p for p in out if p.is_file() or p.is_symlink())


def open_source(
    root: str | Path,
    name: str = "folder",
    captions: str | Path | None = None,
    licence: str = "unknown",
    up: str = "auto",
    split: str = DEFAULT_SPLIT,
    seed: int = 0,
) -> list[Job]:
    """Jobs for every mesh under ``root``; ids are ``<name>/<relative path without suffix>``."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    table = read_caption_table(captions) if captions else {}
    spec = parse_split(split)
    meshes = mesh_files(root)
    stems = Counter(m.relative_to(root).with_suffix("").as_posix() for m in meshes)
    for stem, n in sorted(stems.items()):
        if n > 1:
            print(f"note: {n} files are named {stem}.*: their ids keep the suffix", file=sys.stderr)
    jobs = []
    for mesh in meshes:
        rel = mesh.relative_to(root)
        stem_path = rel.with_suffix("").as_posix()
        row = table.get(rel.as_posix()) or table.get(stem_path) or table.get(mesh.stem) or {}
        label = mesh.stem if mesh.stem.lower() not in _GENERIC else mesh.parent.name
        object_id = f"{name}/{stem_path if stems[stem_path] == 1 else rel.as_posix()}"
        axis = ("z" if mesh.suffix.lower() == ".stl" else "y") if up == "auto" else up
        texture = _obj_texture(mesh) if mesh.suffix.lower() == ".obj" else None
        caption = (row.get("caption") or "").strip()
        fallback = with_article(words_from_name(label))
        gltf = mesh.suffix.lower() in (".glb", ".gltf")
        extras = {"file": rel.as_posix()}
        if gltf and not caption:  # the worker prefers the file's own title (asset.extras)
            extras["fallback_caption"] = fallback
        jobs.append(
            Job(
                id=object_id,
                path=str(mesh),
                source=name,
                caption=caption or ("" if gltf else fallback),
                licence=(row.get("licence") or "").strip() or licence,
                split=assign_split(object_id, spec, seed),
                category=(row.get("category") or "").strip(),
                up=axis,
                root=str(root),
                texture=texture,
                hook="gltf_extras" if gltf else None,
                extras=extras,
            )
        )
    if not jobs:
        raise SourceError(f"{root}: no mesh files ({', '.join(SUFFIXES)})")
    return jobs
