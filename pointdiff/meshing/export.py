"""Mesh file writers on plain arrays (``TriMesh.save`` dispatches here by suffix).

Axes and colours per format, chosen so common viewers show the object upright and coloured:

* **PLY** (binary little-endian): object space as is (Z-up, like our ``cloud.ply``), float
  ``x y z nx ny nz`` + ``uchar red green blue`` (sRGB) per vertex. MeshLab, CloudCompare, open3d
  and trimesh read the colours; Blender shows them as a colour attribute.
* **OBJ + MTL**: Y-up (the OBJ convention Blender's and three.js' importers assume), vertex colours
  as the widely supported extension ``v x y z r g b`` (sRGB floats in [0, 1]; read by MeshLab,
  Blender ≥ 3.x's new importer, trimesh, open3d), ``vn`` normals, and a plain white material in the
  ``.mtl`` so viewers that ignore vertex colours still load it. No texture is baked.
* **GLB** (glTF 2.0 binary, written here with numpy + json): Y-up (+Z front) as the spec requires,
  ``POSITION``/``NORMAL``/``COLOR_0`` (float32 VEC3, **linear** RGB as the spec requires; converted
  from sRGB) and uint32 indices, one white, non-metallic, double-sided material so the vertex
  colours show unmodified in Blender, three.js, model-viewer and Windows 3D Viewer.

Every writer goes through ``pointdiff.atomic``, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from pointdiff.atomic import write_bytes_atomic
from pointdiff.colours import srgb_to_linear


def _z_up_to_y_up(v: np.ndarray) -> np.ndarray:
    """(x, y, z) Z-up -> (x, z, -y) Y-up: the inverse of ``pointcloud.y_up_to_z_up``."""
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def _color_bytes(colors: np.ndarray) -> np.ndarray:
    return np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# PLY


def write_ply(path, verts, faces, colors=None, normals=None) -> None:
    """Binary PLY: verts [V, 3], faces [F, 3], colors [V, 3] in [0, 1] | None, normals | None."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(verts), dtype=fields)
    v["x"], v["y"], v["z"] = verts.T
    if normals is not None:
        v["nx"], v["ny"], v["nz"] = normals.T
    if colors is not None:
        v["red"], v["green"], v["blue"] = _color_bytes(colors).T
    f = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    f["n"], f["i"] = 3, faces
    props = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by pointdiff"]
    header += [f"element vertex {len(verts)}"]
    header += [f"property {props[t]} {name}" for name, t in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header += ["end_header", ""]
    write_bytes_atomic(Path(path), ["\n".join(header).encode("ascii"), v.tobytes(), f.tobytes()])


# ----------------------------------------------------------------------------------------------
# OBJ + MTL


def write_obj(path, verts, faces, colors=None, normals=None) -> None:
    """OBJ (Y-up) with ``v x y z r g b`` vertex colours, ``vn`` normals and a sibling ``.mtl``."""
    path = Path(path)
    mtl = path.with_suffix(".mtl")
    v = _z_up_to_y_up(np.asarray(verts, dtype=np.float64))
    lines = [
        "# written by pointdiff: Y-up; 'v x y z r g b' carries sRGB vertex colours",
        f"mtllib {mtl.name}",
    ]
    rows = v if colors is None else np.concatenate([v, np.clip(colors, 0, 1)], axis=1)
    lines += ["v " + " ".join(r) for r in np.char.mod("%.6g", rows).tolist()]
    has_n = normals is not None
    if has_n:
        n = _z_up_to_y_up(np.asarray(normals, dtype=np.float64))
        lines += ["vn " + " ".join(r) for r in np.char.mod("%.5g", n).tolist()]
    lines += ["usemtl vertex_colors"]
    idx = (np.asarray(faces) + 1).astype(str)
    if has_n:  # "f a//a b//b c//c": vertex and normal indices coincide
        idx = np.char.add(np.char.add(idx, "//"), idx)
    lines += ["f " + " ".join(r) for r in idx.tolist()]
    write_bytes_atomic(path, [("\n".join(lines) + "\n").encode("ascii")])
    mat = "newmtl vertex_colors\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
    write_bytes_atomic(mtl, [mat.encode("ascii")])


# ----------------------------------------------------------------------------------------------
# GLB (glTF 2.0 binary)

_FLOAT, _UINT = 5126, 5125  # glTF componentType codes
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def write_glb(path, verts, faces, colors=None, normals=None) -> None:
    """glTF 2.0 binary with POSITION, NORMAL, COLOR_0 (linear RGB) and uint32 indices."""
    attributes = {"POSITION": _z_up_to_y_up(np.asarray(verts, dtype=np.float32))}
    if normals is not None:
        attributes["NORMAL"] = _z_up_to_y_up(np.asarray(normals, dtype=np.float32))
    if colors is not None:
        attributes["COLOR_0"] = srgb_to_linear(np.asarray(colors, dtype=np.float32))
    blobs, views, accessors = [], [], []
    offset = 0

    def add(array: np.ndarray, type_: str, component: int, target: int, minmax: bool = False):
        nonlocal offset
        data = np.ascontiguousarray(array).tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        acc = {"bufferView": len(views) - 1, "componentType": component, "type": type_}
        acc["count"] = int(array.shape[0] if type_ != "SCALAR" else array.size)
        if minmax:  # required for POSITION
            acc["min"], acc["max"] = array.min(0).tolist(), array.max(0).tolist()
        accessors.append(acc)
        blobs.append(data + b"\0" * (-len(data) % 4))  # every view starts 4-byte aligned
        offset += len(blobs[-1])
        return len(accessors) - 1

    attr_idx = {
        name: add(a.astype(np.float32), "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=name == "POSITION")
        for name, a in attributes.items()
    }
    indices = add(
        np.asarray(faces, dtype=np.uint32).ravel(), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER
    )
    gltf = {
        "asset": {"version": "2.0", "generator": "pointdiff"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "pointdiff_mesh"}],
        "meshes": [
            {"primitives": [{"attributes": attr_idx, "indices": indices, "material": 0, "mode": 4}]}
        ],
        "materials": [
            {
                "name": "vertex_colors",
                "pbrMetallicRoughness": {
                    "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                    "metallicFactor": 0.0,
                    "roughnessFactor": 1.0,
                },
                "doubleSided": True,
            }
        ],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)  # JSON chunk padded with spaces, BIN chunk with zeros (spec 4.4)
    binary = b"".join(blobs)
    total = 12 + 8 + len(js) + 8 + len(binary)
    write_bytes_atomic(
        Path(path),
        [
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(js), b"JSON"),
            js,
            struct.pack("<I4s", len(binary), b"BIN\0"),
            binary,
        ],
    )
