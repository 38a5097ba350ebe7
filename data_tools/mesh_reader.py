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
Every unusable file raises ``MeshError`` with a ``reason``; the checks of the file before and
after trimesh parses it live in ``data_tools.mesh_files``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from trimesh.resolvers import Resolver
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from data_tools.mesh_files import (
    MeshError,
    MissingAssetError,
    check_after_parsing,
    check_before_parsing,
    gltf_material_info,
    no_surface_reason,
    parse_error_reason,
)
from pointdiff.pointcloud import y_up_to_z_up

SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
#: textures larger than this (pixels per side) are box-downsampled at load to bound memory.
MAX_TEXTURE_SIZE = 2048
#: coordinates beyond this magnitude are corrupt (FLT_MAX placeholders, overflowed exports):
#: 1e18 mm is a tenth of a light year, and squares of such values would overflow float64 sums.
MAX_COORDINATE = 1e18


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
    doc = check_before_parsing(path)
    resolver = _RecordingResolver(path.parent, Path(root or path.parent))
    try:
        scene = trimesh.load_scene(str(path), resolver=resolver, process=False)
    except Exception as e:  # trimesh raises many types on malformed input
        raise MeshError(parse_error_reason(e), f"{path.name}: {type(e).__name__}: {e}") from None
    check_after_parsing(path, scene)
    wraps, textured = gltf_material_info(doc, path.name) if doc is not None else ({}, set())
    parts, materials, index = [], [], {}
    for node in scene.graph.nodes_geometry:
        matrix, name = scene.graph[node]
        geom = scene.geometry[name]
        if not hasattr(geom, "faces") or len(geom.faces) == 0:
            continue  # lines and point primitives carry no surface
        matrix = np.asarray(matrix, dtype=np.float64)
        parts.append(_flatten(geom, matrix, materials, index, wraps, path.name))
    if not parts:
        reason = no_surface_reason(scene, doc)
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
# Asset resolution


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
