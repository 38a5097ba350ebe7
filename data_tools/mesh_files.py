"""Mesh files before and around parsing: the errors of a mesh, cheap checks, glTF JSON.

Every unusable file raises ``MeshError`` with a ``reason`` (data_tools/README.md lists them).
``check_before_parsing`` (GLB/STL lengths, glTF JSON, compression, primitive modes) and
``check_after_parsing`` (header counts) keep truncated or unsupported files from passing as
smaller or empty meshes; ``data_tools.mesh_reader`` parses the files (through trimesh) between
the two. ``read_gltf_json`` reads a glTF document without its buffers (also for the titles and
licences Objaverse puts in ``asset.extras``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from pathlib import Path

#: glTF sampler wrap codes and primitive modes, by name
_WRAP = {33071: "clamp", 33648: "mirror", 10497: "repeat"}
_MODES = {0: "points", 1: "lines", 2: "line_loop", 3: "line_strip", 5: "triangle_strip"}
_MODES.update({4: "triangles", 6: "triangle_fan"})
#: glTF extensions that compress geometry: (decoder name, Python module trimesh needs for it).
_DECODERS = {"KHR_draco_mesh_compression": ("draco", "DracoPy")}
_DECODERS["EXT_meshopt_compression"] = ("meshopt", None)  # trimesh has no meshopt decoder


class MeshError(ValueError):
    """A mesh file that cannot be used; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class MissingAssetError(MeshError):
    """An OBJ material library, texture or glTF buffer/image referenced but not found."""


def check_before_parsing(path: Path) -> dict | None:
    """Check a mesh file before trimesh reads it; return its glTF document (None for other
    formats)."""
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        doc = read_gltf_json(path)
        _check_gltf(doc, path.name)
        return doc
    if suffix == ".stl":
        _check_stl(path)
    elif suffix == ".obj":
        _check_obj_tail(path)
    return None


def check_after_parsing(path: Path, scene) -> None:
    """Check what trimesh read against what the file's header declares (OFF, ASCII PLY)."""
    if path.suffix.lower() in (".off", ".ply"):
        _check_face_count(path, scene)


# ----------------------------------------------------------------------------------------------
# glTF JSON


def read_gltf_json(path: str | os.PathLike) -> dict:
    """The JSON document of a ``.gltf`` file or the JSON chunk of a ``.glb`` (no buffers).

    :raises MeshError: ``missing_file``, ``empty_file``, ``truncated`` (a GLB shorter than its
        header says) or ``unreadable`` (not glTF JSON).
    """
    path = Path(path)
    _check_exists(path)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if head[:4] == b"glTF":
                if len(head) < 20:
                    raise MeshError("truncated", f"{path.name}: truncated GLB header")
                total = struct.unpack("<I", head[8:12])[0]
                size = path.stat().st_size
                if size < total:
                    raise MeshError(
                        "truncated", f"{path.name}: {size} bytes, the GLB header says {total}"
                    )
                length, ctype = struct.unpack("<II", head[12:20])
                if ctype != 0x4E4F534A:  # "JSON"
                    raise MeshError("unreadable", f"{path.name}: first GLB chunk is not JSON")
                data = f.read(length)
                if len(data) < length:
                    raise MeshError("truncated", f"{path.name}: truncated GLB JSON chunk")
            elif path.suffix.lower() == ".glb":
                raise MeshError("unreadable", f"{path.name}: no GLB header (magic 'glTF')")
            else:
                data = head + f.read()
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshError("unreadable", f"{path.name}: bad glTF JSON ({e})") from None
    except OSError as e:
        raise MeshError("unreadable", f"{path.name}: {e.strerror or e}") from None
    if not isinstance(doc, dict):
        raise MeshError("unreadable", f"{path.name}: glTF JSON is not an object")
    return doc


def gltf_material_info(doc: dict, name: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """``_gltf_info`` of the document of file ``name``, a malformed one as a ``MeshError``."""
    try:
        return _gltf_info(doc)
    except (AttributeError, TypeError) as e:  # e.g. "materials": 5
        raise MeshError("unreadable", f"{name}: malformed glTF materials ({e})") from None


def _gltf_info(doc: dict) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """(material name → base-colour wrap modes where the name is unambiguous, names of
    materials that reference a base-colour texture)."""
    textures, samplers = doc.get("textures", []), doc.get("samplers", [])
    out: dict[str, list] = {}
    for mat in doc.get("materials", []):
        ref = mat.get("pbrMetallicRoughness", {}).get("baseColorTexture")
        wrap = ("repeat", "repeat")
        if ref is not None and ref.get("index", -1) < len(textures):
            s = textures[ref["index"]].get("sampler")
            if s is not None and s < len(samplers):
                sampler = samplers[s]
                wrap = (
                    _WRAP.get(sampler.get("wrapS", 10497), "repeat"),
                    _WRAP.get(sampler.get("wrapT", 10497), "repeat"),
                )
        out.setdefault(mat.get("name", ""), []).append(wrap)
    textured = {
        m.get("name", "")
        for m in doc.get("materials", [])
        if "baseColorTexture" in m.get("pbrMetallicRoughness", {})
    }
    # Names shared by materials with different samplers are ambiguous: fall back to repeat.
    return {k: v[0] for k, v in out.items() if len(set(v)) == 1}, textured


def gltf_asset_extras(path: str | os.PathLike) -> dict:
    """``asset.extras`` of a glTF/GLB (Objaverse/Sketchfab put title, author, license there)."""
    extras = read_gltf_json(path).get("asset", {}).get("extras", {})
    return extras if isinstance(extras, dict) else {}


# ----------------------------------------------------------------------------------------------
# Checks: files that trimesh would read as a smaller mesh, an empty one, or not at all


def _check_exists(path: Path) -> None:
    if path.is_file():
        if path.stat().st_size == 0:
            raise MeshError("empty_file", f"{path}: file is empty")
        return
    if path.is_symlink():
        raise MeshError("missing_file", f"{path}: dangling symlink to {os.readlink(path)}")
    if path.is_dir():
        raise MeshError("missing_file", f"{path}: a directory, not a mesh file")
    raise MeshError("missing_file", f"{path}: no such file")


def parse_error_reason(e: Exception) -> str:
    """The reason for an exception from trimesh's parsers (their messages are the only clue)."""
    text = str(e)
    if isinstance(e, IndexError) and "out of bounds" in text:
        return "bad_index"  # numpy fancy indexing with a face index past the vertices
    if "unexpected length" in text or "not expected length" in text:
        return "truncated"
    return "unreadable"


def _gltf_primitives(doc: dict, name: str) -> list[dict]:
    """Every mesh primitive of a glTF document, checked to be objects with a known mode."""
    try:
        prims = [p for m in doc.get("meshes") or [] for p in m.get("primitives") or []]
        bad = [p.get("mode") for p in prims if p.get("mode", 4) not in _MODES]
    except (AttributeError, TypeError) as e:  # e.g. "meshes": 5
        raise MeshError("unreadable", f"{name}: malformed glTF meshes ({e})") from None
    if bad:
        raise MeshError("unreadable", f"{name}: invalid primitive mode {bad[0]!r}")
    return prims


def _check_gltf(doc: dict, name: str) -> None:
    """Compressed geometry without its decoder, and triangle fans (trimesh drops both
    silently: Draco meshes load as all-zero vertices, fans not at all)."""
    prims = _gltf_primitives(doc, name)
    for ext, (decoder, module) in _DECODERS.items():
        if module is not None and importlib.util.find_spec(module):
            continue  # trimesh decodes it
        if _compressed(doc, prims, ext):
            need = f"install {module}" if module else "no decoder is available"
            raise MeshError(
                f"missing_decoder:{decoder}", f"{name}: geometry compressed with {ext} ({need})"
            )
    fans = sum(p.get("mode", 4) == 6 for p in prims)
    if fans:
        raise MeshError(
            "unsupported_primitive:triangle_fan",
            f"{name}: {fans} of {len(prims)} primitives are triangle fans (mode 6)",
        )


def _compressed(doc: dict, prims: list[dict], ext: str) -> bool:
    """Whether ``ext`` is required, or compresses a primitive without a plain fallback (its
    attribute accessors then have no bufferView)."""
    if ext in (doc.get("extensionsRequired") or []):
        return True
    accessors = doc.get("accessors") or []
    try:
        for p in prims:
            if ext in (p.get("extensions") or {}):
                for i in (p.get("attributes") or {}).values():
                    if not (isinstance(i, int) and 0 <= i < len(accessors)):
                        return True
                    if "bufferView" not in accessors[i]:
                        return True
    except (AttributeError, TypeError):  # malformed: no plain data to fall back on either
        return True
    return False


def no_surface_reason(scene, doc: dict | None) -> str:
    """Why a parsed file has no triangles: only points or lines, or nothing at all."""
    kinds = []
    if doc is not None:
        kinds = [_MODES[p.get("mode", 4)] for p in _gltf_primitives(doc, "")]
    for geom in scene.geometry.values():
        kinds.append("points" if type(geom).__name__ == "PointCloud" else "lines")
    kinds = [k for k in kinds if k not in ("triangles", "triangle_strip")]
    return f"unsupported_primitive:{kinds[0]}" if kinds else "no_faces"


def _check_stl(path: Path) -> None:
    """A binary STL must be as long as its triangle count says; an ASCII one ends with
    ``endsolid`` (trimesh reads either kind, cut short, as an empty mesh)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(84)
        f.seek(max(0, size - 1024))
        tail = f.read()
    count = struct.unpack("<I", head[80:84])[0] if len(head) == 84 else -1
    if size == 84 + 50 * count:
        return  # binary (some binary headers start with "solid" too)
    if head.lstrip()[:5].lower() == b"solid":
        if b"endsolid" not in tail.lower():
            raise MeshError("truncated", f"{path.name}: ASCII STL without 'endsolid'")
        return
    if count < 0:
        raise MeshError("unreadable", f"{path.name}: {size} bytes, shorter than an STL header")
    raise MeshError(
        "truncated",
        f"{path.name}: binary STL header says {count} triangles ({84 + 50 * count} bytes), "
        f"the file has {size} (cut short, or not an STL file)",
    )


def _check_obj_tail(path: Path) -> None:
    """An OBJ cut mid-line (an interrupted download) ends in an incomplete record."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 256))
        last = f.read().rsplit(b"\n", 1)[-1].split()
    if last and ((last[0] == b"v" and len(last) < 4) or (last[0] == b"f" and len(last) < 4)):
        raise MeshError(
            "truncated", f"{path.name}: ends in an incomplete {last[0].decode()!r} line"
        )


def _check_face_count(path: Path, scene) -> None:
    """OFF and ASCII PLY headers give the face count; fewer faces read means a cut file
    (triangulated polygons only add faces)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    declared = None
    if path.suffix.lower() == ".ply" and b"format ascii" in head:
        m = re.search(rb"element face (\d+)", head)
        declared = int(m.group(1)) if m else None
    elif path.suffix.lower() == ".off":
        lines = [ln for ln in head.split(b"\n") if ln.strip() and not ln.startswith(b"#")]
        tokens = b" ".join(lines[:2]).split()  # "OFF" (or COFF, NOFF...) then nv nf ne
        if tokens and tokens[0].endswith(b"OFF") and len(tokens) > 2 and tokens[2].isdigit():
            declared = int(tokens[2])
    read = sum(len(getattr(g, "faces", [])) for g in scene.geometry.values())
    if declared is not None and read < declared:
        raise MeshError("truncated", f"{path.name}: header says {declared} faces, {read} read")
