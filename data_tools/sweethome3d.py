"""Sweet Home 3D furniture catalogs (``.sh3f``: zip files with OBJ models and a
``PluginFurnitureCatalog.properties``), e.g. Debian's ``sweethome3d-furniture`` package.

Each ``model#N`` entry becomes one object. Caption: name, descriptive tags and category
(``a futon couch, sofa, seat (living room)``). Licence: the catalog's ``license``; the model's
``creator``, and the title/author/licence lines of a per-model licence file when the catalog has
one (Blend Swap). ``modelRotation#N`` (row-major 3×3) turns a model Y-up, as Sweet Home 3D does;
real sizes ``width/depth/height#N`` (cm, along x/z/y of that Y-up frame) are recorded as
``size_cm = [width, depth, height]``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath

from data_tools.jobs import DEFAULT_SPLIT, Job, SourceError, assign_split, parse_split, with_article

DEFAULT_DIR = Path("/usr/share/sweethome3d/furniture")
CATALOG = "PluginFurnitureCatalog.properties"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def parse_properties(text: str) -> dict[str, str]:
    """Java ``.properties`` text → dict (continuation lines, ``\\uXXXX`` and other escapes)."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        line = line.lstrip()
        if not line or line[0] in "#!":
            continue
        while _odd_backslashes(line):  # a trailing backslash continues the logical line
            line = line[:-1] + next(lines, "").lstrip()
        m = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]?\s*(.*)$", line)
        if m:
            out[_unescape(m.group(1))] = _unescape(m.group(2))
    return out


def _odd_backslashes(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _unescape(s: str) -> str:
    def sub(m: re.Match) -> str:
        c = m.group(1)
        if c.startswith("u"):
            return chr(int(c[1:], 16))
        return _ESCAPES.get(c, c)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", sub, s)


def read_catalog(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(catalog-level keys, one dict per piece ``N`` with its ``key#N`` values, sorted by N)."""
    try:
        with zipfile.ZipFile(path) as zf:
            text = zf.read(CATALOG).decode("latin-1")
            names = set(zf.namelist())
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise SourceError(f"{path}: not a furniture catalog ({e})") from None
    props = parse_properties(text)
    head, pieces = {}, {}
    for key, value in props.items():
        base, _, num = key.partition("#")
        if num.isdigit():
            pieces.setdefault(int(num), {})[base] = value
        else:
            head[key] = value
    out = []
    for n in sorted(pieces):
        piece = pieces[n]
        piece["_index"] = str(n)
        piece["_licence_file"] = _licence_file(piece.get("model", ""), names)
        out.append(piece)
    return head, out


def _licence_file(model: str, names: set[str]) -> str:
    folder = str(PurePosixPath(model.lstrip("/")).parent)
    found = sorted(n for n in names if n.startswith(folder + "/") and "licen" in n.lower())
    return found[0] if found else ""


def _licence_details(archive: Path, member: str) -> dict[str, str]:
    """Title/author/licence from a Blend Swap licence file (``Thank you for downloading "T"
    by A`` / ``Released under`` / ``<licence>``)."""
    with zipfile.ZipFile(archive) as zf:
        text = zf.read(member).decode("utf-8", "replace")
    out = {}
    m = re.search(r'downloading "(.*)" by (.*)', text)
    if m:
        out["title"], out["author"] = m.group(1).strip(), m.group(2).strip()
    m = re.search(r"Released under\s*\n\s*(.+)", text)
    if m:
        out["model_licence"] = m.group(1).strip()
    return out


def caption_for(name: str, tags: list[str], category: str) -> str:
    """``a futon couch, sofa, seat (living room)``."""
    phrase = with_article(name.strip().lower())
    extra = [t for t in tags if t.lower() not in phrase]
    if extra:
        phrase += ", " + ", ".join(t.lower() for t in extra)
    if category:
        phrase += f" ({category.lower()})"
    return phrase


def _tags(piece: dict, catalog_name: str) -> list[str]:
    """Descriptive tags: those naming the provider (``Blend Swap``) or creator are dropped."""
    tags = [t.strip() for t in piece.get("tags", "").split(",") if t.strip()]
    creator = piece.get("creator", "").lower()
    return [t for t in tags if t.lower() not in catalog_name.lower() and t.lower() != creator]


def open_source(
    catalogs: list[str | Path] | None = None, split: str = DEFAULT_SPLIT, seed: int = 0
) -> list[Job]:
    """Jobs for every model of the given ``.sh3f`` files (default: all in ``DEFAULT_DIR``)."""
    paths = [Path(c) for c in catalogs] if catalogs else sorted(DEFAULT_DIR.glob("*.sh3f"))
    if not paths:
        raise SourceError("no .sh3f catalogs (install sweethome3d-furniture or pass paths)")
    spec = parse_split(split)
    jobs = []
    for path in paths:
        if not path.is_file():
            raise SourceError(f"{path}: no such catalog")
        head, pieces = read_catalog(path)
        for piece in pieces:
            model = piece.get("model", "")
            if not model:
                continue
            key = piece.get("id") or f"{path.stem}#{piece['_index']}"
            object_id = f"sweethome3d/{path.stem}/{key.split('#')[-1]}"
            name = piece.get("name") or key.split("#")[-1]
            extras = {
                "catalog": path.name,
                "name": name,
                "tags": _tags(piece, head.get("name", "")),
                "creator": piece.get("creator", ""),
                "size_cm": [_float(piece.get(k)) for k in ("width", "depth", "height")],
            }
            if piece["_licence_file"]:
                extras["licence_file"] = piece["_licence_file"]
                extras.update(_licence_details(path, piece["_licence_file"]))
            rotation = None
            if piece.get("modelRotation"):
                rotation = tuple(float(v) for v in piece["modelRotation"].split())
                if len(rotation) != 9:
                    rotation = None
            member = model.lstrip("/")
            multi = piece.get("multiPartModel", "false").lower() == "true"
            jobs.append(
                Job(
                    id=object_id,
                    path=member,
                    source="sweethome3d",
                    caption=caption_for(name, extras["tags"], piece.get("category", "")),
                    licence=head.get("license", "unknown"),
                    split=assign_split(object_id, spec, seed),
                    category=piece.get("category", ""),
                    up="y",
                    root=str(PurePosixPath(member).parent) if multi else None,
                    archive=str(path),
                    rotation=rotation,
                    extras=extras,
                )
            )
    return jobs


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
