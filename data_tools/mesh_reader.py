"""Mesh files → one triangle soup with per-corner UVs and colours, per-face materials.

``load_mesh`` reads OBJ (+MTL + textures), GLB/glTF (scene graph transforms, every primitive),
PLY, OFF and STL through trimesh and flattens the scene into a ``TriangleSoup``: world-space
triangles [F, 3, 3], per-corner UVs [F, 3, 2] (NaN where a face has none), per-corner vertex
colours [F, 3, 4] and a material index per face. Colour composition rules (see ``Material``):

* glTF: ``baseColorFactor`` × base-colour texture × ``COLOR_0``, multiplied in **linear** space
  (the glTF spec: factors and vertex colours are linear, textures sRGB), returned as sRGB.
* OBJ/MTL: ``map_Kd`` when present (as most viewers show it), else ``Kd``; times ``v x y z r g b``
  vertex colours, all as stored (sRGB).
* PLY/OFF: vertex or face colours; STL: none (``colored`` is False, points get grey).

Missing assets (an ``mtllib`` or ``map_Kd`` that does not resolve, a glTF image that fails)
raise ``MissingAssetError`` unless ``strict=False``, where they are listed in ``soup.warnings``.
Every unusable file raises ``MeshError`` with a ``reason`` (data_tools/README.md lists them):
cheap checks before parsing (GLB/STL lengths, glTF JSON, compression, primitive modes) and after
it (header counts, indices, coordinates) keep truncated or unsupported files from passing as
smaller or empty meshes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from trimesh.resolvers import Resolver
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from pointdiff.pointcloud import y_up_to_z_up

SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
#: textures larger than this (pixels per side) are box-downsampled at load to bound memory.
MAX_TEXTURE_SIZE = 2048
_WRAP = {33071: "clamp", 33648: "mirror", 10497: "repeat"}
#: coordinates beyond this magnitude are corrupt (FLT_MAX placeholders, overflowed exports):
#: 1e18 mm is a tenth of a light year, and squares of such values would overflow float64 sums.
MAX_COORDINATE = 1e18
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


@dataclass
class Material:
    """One material. ``color`` is RGBA in [0, 1]; ``texture`` uint8 [H, W, 4] or None.

    :param linear: colours multiply in linear space (glTF) rather than as stored (OBJ).
    :param wrap: (wrap_s, wrap_t) texture wrap modes: ``repeat``, ``clamp`` or ``mirror``.
    :param defined: False for placeholder materials (no colour information in the file).
    """

    name: str
    color: np.ndarray
    texture: np.ndarray | None = None
    wrap: tuple[str, str] = ("repeat", "repeat")
    linear: bool = False
    defined: bool = True


@dataclass
class TriangleSoup:
    """A flattened, coloured triangle mesh.

    :param triangles: [F, 3, 3] float64 corner positions.
    :param uvs: [F, 3, 2] float32 corner UVs (OpenGL convention, v up), NaN where absent.
    :param colors: [F, 3, 4] float32 corner vertex colours in [0, 1] (ones where absent).
    :param material_ids: [F] int32 index into ``materials``.
    :param has_vertex_colors: [F] bool, faces whose corner colours came from the file.
    """

    triangles: np.ndarray
    uvs: np.ndarray
    colors: np.ndarray
    material_ids: np.ndarray
    has_vertex_colors: np.ndarray
    materials: list[Material]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.triangles)

    @property
    def face_colored(self) -> np.ndarray:
        """[F] bool: faces whose colour comes from the file (material, texture or vertex)."""
        defined = np.array([m.defined for m in self.materials], dtype=bool)
        return defined[self.material_ids] | self.has_vertex_colors

    def transformed(self, triangles: np.ndarray) -> TriangleSoup:
        """The same soup with new corner positions [F, 3, 3] (e.g. normalised)."""
        return TriangleSoup(
            triangles,
            self.uvs,
            self.colors,
            self.material_ids,
            self.has_vertex_colors,
            self.materials,
            list(self.warnings),
        )


# ----------------------------------------------------------------------------------------------
# Loading


def load_mesh(
    path: str | os.PathLike,
    up: str = "y",
    root: str | os.PathLike | None = None,
    texture: str | os.PathLike | None = None,
    rotation: np.ndarray | None = None,
    strict: bool = True,
    max_faces: int | None = None,
) -> TriangleSoup:
    """Load a mesh file into a ``TriangleSoup`` in the project's Z-up frame.

    :param up: the file's up axis, ``y`` (ShapeNet, glTF, most OBJ) or ``z`` (kept as is).
    :param root: directory that referenced files (MTL, textures) may come from; default the
        file's own directory (ShapeNet needs the model directory for ``../images``).
    :param texture: an image to apply to the UVs of faces without a material (e.g. Spot).
    :param rotation: optional [3, 3] matrix applied (``M @ v``) before the up-axis conversion.
    :param strict: missing assets raise ``MissingAssetError`` instead of a warning.
    :param max_faces: refuse meshes with more faces (reason ``too_many_faces``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise MeshError("unsupported_format", f"{path.name}: suffix {suffix!r} not in {SUFFIXES}")
    _check_exists(path)
    doc = read_gltf_json(path) if suffix in (".glb", ".gltf") else None
    if doc is not None:
        _check_gltf(doc, path.name)
    elif suffix == ".stl":
        _check_stl(path)
    elif suffix == ".obj":
        _check_obj_tail(path)
    resolver = _RecordingResolver(path.parent, Path(root or path.parent))
    try:
        scene = trimesh.load_scene(str(path), resolver=resolver, process=False)
    except Exception as e:  # trimesh raises many types on malformed input
        raise MeshError(_parse_reason(e), f"{path.name}: {type(e).__name__}: {e}") from None
    if suffix in (".off", ".ply"):
        _check_face_count(path, scene)
    try:
        wraps, textured = _gltf_info(doc) if doc is not None else ({}, set())
    except (AttributeError, TypeError) as e:  # e.g. "materials": 5
        raise MeshError("unreadable", f"{path.name}: malformed glTF materials ({e})") from None
    parts, materials, index = [], [], {}
    for node in scene.graph.nodes_geometry:
        matrix, name = scene.graph[node]
        geom = scene.geometry[name]
        if not hasattr(geom, "faces") or len(geom.faces) == 0:
            continue  # lines and point primitives carry no surface
        matrix = np.asarray(matrix, dtype=np.float64)
        parts.append(_flatten(geom, matrix, materials, index, wraps, path.name))
    if not parts:
        reason = _no_surface_reason(scene, doc)
        only = f", only {reason.split(':')[1]}" if ":" in reason else ""
        raise MeshError(reason, f"{path.name}: the file has no triangles{only}")
    soup = TriangleSoup(
        triangles=np.concatenate([p[0] for p in parts]),
        uvs=np.concatenate([p[1] for p in parts]),
        colors=np.concatenate([p[2] for p in parts]),
        material_ids=np.concatenate([p[3] for p in parts]).astype(np.int32),
        has_vertex_colors=np.concatenate([p[4] for p in parts]),
        materials=materials,
    )
    # Only files that carry colour count (material libraries, diffuse/base-colour images);
    # missing bump or normal maps are noted as warnings and do not fail the object.
    colour = _colour_refs(resolver) if suffix == ".obj" else set()
    missing = sorted(n for n in set(resolver.missing) if n in colour)
    missing += [
        f"base-colour image of material {m.name!r}"
        for m in materials
        if m.linear and m.texture is None and m.name in textured
    ]
    other = sorted(set(resolver.missing) - set(missing))
    if other:
        soup.warnings.append(f"{path.name}: non-colour files not found: {', '.join(other)}")
    if missing:
        message = f"{path.name}: referenced files not found: {', '.join(missing)}"
        if strict:
            raise MissingAssetError("missing_asset", message)
        soup.warnings.append(message)
    if texture is not None:
        _apply_texture(soup, Path(texture))
    if max_faces is not None and len(soup) > max_faces:
        raise MeshError("too_many_faces", f"{path.name}: {len(soup)} faces > {max_faces}")
    return _finish(soup, up, rotation, path.name)


def _finish(soup: TriangleSoup, up: str, rotation: np.ndarray | None, name: str) -> TriangleSoup:
    tri = soup.triangles
    if not np.isfinite(tri).all():
        bad = int((~np.isfinite(tri).all(axis=(1, 2))).sum())
        raise MeshError("non_finite_vertices", f"{name}: {bad} faces have NaN/inf coordinates")
    if np.abs(tri).max() > MAX_COORDINATE:
        raise MeshError(
            "bad_coordinates",
            f"{name}: coordinates up to {np.abs(tri).max():.3g} (beyond ±{MAX_COORDINATE:g})",
        )
    if rotation is not None:
        tri = tri @ np.asarray(rotation, dtype=np.float64).T
    if up == "y":
        tri = y_up_to_z_up(tri)
    elif up != "z":
        raise ValueError(f"unknown up axis {up!r} (y | z)")
    # Zero-area faces carry no surface; dropping them keeps sampling weights well defined.
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    keep = area > 1e-12 * max(float(np.ptp(tri.reshape(-1, 3), axis=0).max()) ** 2, 1e-30)
    if not keep.any():
        raise MeshError("degenerate", f"{name}: every face has zero area")
    out = soup.transformed(np.ascontiguousarray(tri[keep]))
    out.uvs, out.colors = soup.uvs[keep], soup.colors[keep]
    out.material_ids, out.has_vertex_colors = soup.material_ids[keep], soup.has_vertex_colors[keep]
    return out


def _flatten(geom, matrix: np.ndarray, materials: list, index: dict, wraps: dict, name: str):
    """One trimesh geometry under a node transform → (tri, uvs, colors, mat_ids, has_vc)."""
    faces = np.asarray(geom.faces, dtype=np.int64)
    if faces.min() < 0 or faces.max() >= len(geom.vertices):
        raise MeshError(
            "bad_index",
            f"{name}: face indices in [{faces.min()}, {faces.max()}] "
            f"but {len(geom.vertices)} vertices",
        )
    verts = np.asarray(geom.vertices, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    if np.linalg.det(matrix[:3, :3]) < 0:  # mirroring transforms flip the winding
        faces = faces[:, ::-1]
    f = len(faces)
    uvs = np.full((f, 3, 2), np.nan, dtype=np.float32)
    colors = np.ones((f, 3, 4), dtype=np.float32)
    has_vc = np.zeros(f, dtype=bool)
    visual = geom.visual
    kind = getattr(visual, "kind", None)
    material = None
    if kind == "texture":
        uv = getattr(visual, "uv", None)
        if uv is not None and len(uv) == len(geom.vertices):
            uvs = np.asarray(uv, dtype=np.float32)[faces]
        vc = getattr(visual, "vertex_attributes", {}).get("color")
        if vc is not None and len(vc) == len(geom.vertices):
            colors, has_vc = _unit_colors(vc)[faces], np.ones(f, dtype=bool)
        material = visual.material
    elif kind == "vertex":
        colors, has_vc = _unit_colors(visual.vertex_colors)[faces], np.ones(f, dtype=bool)
    elif kind == "face":
        colors = np.repeat(_unit_colors(visual.face_colors)[:, None], 3, axis=1)
        has_vc = np.ones(f, dtype=bool)
    key = id(material)
    if key not in index:
        index[key] = len(materials)
        materials.append(_convert_material(material, wraps))
    mat_ids = np.full(f, index[key], dtype=np.int32)
    return verts[faces], uvs, colors, mat_ids, has_vc


def _unit_colors(c) -> np.ndarray:
    """Colours as float32 RGBA in [0, 1] from uint8 or float arrays [N, 3|4]."""
    c = np.asarray(c)
    out = c.astype(np.float32) / 255.0 if c.dtype == np.uint8 else c.astype(np.float32)
    if out.shape[-1] == 3:
        out = np.concatenate([out, np.ones_like(out[..., :1])], axis=-1)
    # NaN colours would become arbitrary bytes: read them as "no tint" (1), inf as the bounds.
    return np.clip(np.nan_to_num(out, nan=1.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _convert_material(m, wraps: dict) -> Material:
    """A trimesh material (or None) → our ``Material``."""
    if isinstance(m, PBRMaterial):
        factor = m.baseColorFactor
        color = np.ones(4, np.float32) if factor is None else _unit_colors(factor)
        tex = _image_array(m.baseColorTexture)
        name = m.name or ""
        return Material(name, color, tex, wraps.get(name, ("repeat", "repeat")), linear=True)
    if isinstance(m, SimpleMaterial):
        tex = _image_array(m.image)
        if tex is not None and tex.shape[:2] == (2, 2) and m.name in (None, "material_0"):
            if (tex == tex[0, 0]).all():  # trimesh's placeholder for UVs without a material
                return Material("", np.ones(4, np.float32), None, defined=False)
        color = _unit_colors(m.diffuse) if m.diffuse is not None else np.ones(4, np.float32)
        if tex is not None:  # map_Kd replaces Kd (as Blender and most viewers show OBJ)
            color = np.ones(4, np.float32)
        return Material(m.name or "", color, tex)
    return Material("", np.ones(4, np.float32), None, defined=False)


def _image_array(img) -> np.ndarray | None:
    """PIL image → uint8 [H, W, 4], box-downsampled to at most ``MAX_TEXTURE_SIZE``."""
    if img is None:
        return None
    from PIL import Image

    try:
        img = img.convert("RGBA")
        if max(img.size) > MAX_TEXTURE_SIZE:
            s = MAX_TEXTURE_SIZE / max(img.size)
            size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
            img = img.resize(size, Image.Resampling.BOX)
        return np.asarray(img, dtype=np.uint8)
    except OSError as e:  # a truncated or corrupt image file
        raise MeshError("bad_texture", f"cannot decode texture: {e}") from None


def _apply_texture(soup: TriangleSoup, texture: Path) -> None:
    """Give faces with UVs but no material the image ``texture`` (OBJ files without mtllib)."""
    from PIL import Image

    if not texture.is_file():
        raise MissingAssetError("missing_asset", f"texture {texture} not found")
    with Image.open(texture) as img:
        tex = _image_array(img)
    soup.materials.append(Material(texture.name, np.ones(4, np.float32), tex))
    undefined = np.array([not m.defined for m in soup.materials], dtype=bool)[soup.material_ids]
    target = undefined & np.isfinite(soup.uvs).all(axis=(1, 2))
    soup.material_ids[target] = len(soup.materials) - 1


# ----------------------------------------------------------------------------------------------
# Asset resolution and glTF JSON


class _RecordingResolver(Resolver):
    """trimesh resolver: files under ``root`` only; remembers every name it could not find.

    Paths are normalised lexically (``..`` collapsed, symlinks not followed), so a reference
    cannot climb out of ``root``, while folders linked into ``root`` keep working.
    """

    def __init__(self, parent: Path, root: Path):
        self.parent, self.root = _lexical(parent), _lexical(root)
        self.missing: list[str] = []
        self.mtl: list[bytes] = []  # material libraries read, to tell colour maps from others

    def get(self, name: str) -> bytes:
        name = name.strip().replace("\\", "/")
        for cand in (name, name.lstrip("/"), os.path.basename(name)):
            p = _lexical(self.parent / cand)
            if p.is_relative_to(self.root) and p.is_file():
                data = p.read_bytes()
                if p.suffix.lower() == ".mtl":
                    self.mtl.append(data)
                return data
        self.missing.append(name)
        raise FileNotFoundError(name)

    def get_base(self) -> str:
        return str(self.parent)

    def namespaced(self, namespace: str) -> _RecordingResolver:
        return _RecordingResolver(self.parent / namespace, self.root)

    def keys(self):
        return []

    def write(self, name, data):
        raise PermissionError("read-only resolver")


def _colour_refs(resolver: _RecordingResolver) -> set[str]:
    """Names whose absence loses colour: every missing ``.mtl`` and each ``map_Kd`` file."""
    refs = {n for n in resolver.missing if n.lower().endswith(".mtl")}
    kd_lines = [
        line.strip().replace("\\", "/")
        for data in resolver.mtl
        for line in data.decode("utf-8", "replace").splitlines()
        if line.strip().lower().startswith("map_kd")
    ]
    refs |= {n for n in resolver.missing if any(line.endswith(n) for line in kd_lines)}
    return refs


def _lexical(path: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


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


def _parse_reason(e: Exception) -> str:
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


def _no_surface_reason(scene, doc: dict | None) -> str:
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
