"""Point-cloud source: pre-extracted coloured clouds (Cap3D's Objaverse clouds) + a captions CSV.

Cap3D's layout (huggingface.co/datasets/tiange/Cap3D): ``Cap3D_automated_Objaverse_full.csv``
(rows ``uid,caption``, no header), ``PointCloud_zips/compressed_pcs_*.zip`` holding
``<uid>.ply`` (16,384 points: float ``x y z``, uchar ``red green blue``) and
``PointCloud_pt_zips/compressed_pcs_pt_*.zip`` holding ``<uid>.pt`` (one tensor ``[6, 16384]``,
xyz then rgb, what Cap3D's ``finetune_pointE.py`` reads). Unzip them anywhere under ``--points``:
files are found at any depth and named by uid.

Readers: ``.ply`` and ``.npz`` through ``pointdiff.pointcloud_io`` (``.npz``: ours, or point-e's
``coords`` + ``R, G, B``); ``.pt`` only through ``torch.load(weights_only=True)``, which refuses
any pickle that would run code (such a file fails with ``unsafe_pickle``; nothing is unpickled).
Clouds are Z-up (``--up y`` rotates Y-up ones), bbox-normalised and resampled to
``num_points`` by farthest point sampling from a seeded start, like the mesh sources; they have
no surface, so no SDF samples.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from data_tools.jobs import (
    DEFAULT_SPLIT,
    Filtered,
    Job,
    Settings,
    SourceError,
    assign_split,
    id_hash,
    parse_split,
)
from data_tools.mesh_files import MeshError
from pointdiff.pointcloud import PointCloud, farthest_point_sample, normalize_bbox, y_up_to_z_up
from pointdiff.pointcloud_io import PointCloudError, colors_to_unit, read_arrays, reading

#: cloud files, in the order preferred when one uid has several
SUFFIXES = (".ply", ".npz", ".pt")


def open_source(
    points: str | Path,
    captions: str | Path,
    name: str = "objaverse",
    up: str = "z",
    split: str = DEFAULT_SPLIT,
    test_uids: str | Path | None = None,
    seed: int = 0,
) -> list[Job]:
    """Jobs for every cloud file under ``points`` (ids ``<name>/<uid>``), captioned from the
    ``uid,caption`` CSV (or JSON map) ``captions``. Clouds without a caption are filtered
    (``no caption``) when converted; captions without a cloud are counted on stderr."""
    from data_tools.objaverse import read_captions  # the one Cap3D caption reader

    root = Path(points)
    if not root.is_dir():
        raise SourceError(f"--points {root}: not a directory")
    table = read_captions(captions)
    test = set(Path(test_uids).read_text().split()) if test_uids else set()
    spec = parse_split(split)
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if suffix in SUFFIXES and path.is_file():
            have = files.get(path.stem)
            if have is None or SUFFIXES.index(suffix) < SUFFIXES.index(have.suffix.lower()):
                files[path.stem] = path
    if not files:
        raise SourceError(f"{root}: no {'/'.join(SUFFIXES)} files")
    missing = len(set(table) - set(files))
    if missing:
        print(f"note: {missing} captioned uids have no cloud under {root}", file=sys.stderr)
    jobs = []
    for uid, path in sorted(files.items()):
        object_id = f"{name}/{uid}"
        jobs.append(
            Job(
                id=object_id,
                path=str(path),
                source="clouds",
                caption=table.get(uid, ""),
                split="test" if uid in test else assign_split(object_id, spec, seed),
                up=up,
                extras={"uid": uid},
                kind="cloud",
            )
        )
    return jobs


# ----------------------------------------------------------------------------------------------
# Reading and resampling one cloud


def read_cloud(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """(coords [N, 3], colours [N, 3] in [0, 1], coloured?) of a ``.ply``/``.npz``/``.pt`` file.

    :raises MeshError: ``unreadable``, ``unsafe_pickle`` (a ``.pt`` that is not plain tensors)
        or ``missing_file``/``empty_file``.
    """
    if not path.is_file():
        raise MeshError("missing_file", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MeshError("empty_file", f"{path}: zero bytes")
    try:
        if path.suffix.lower() == ".pt":
            coords, colors = _read_pt(path)
        else:
            with reading(path):
                coords, colors = read_arrays(path)
        cloud = PointCloud(coords, colors)  # checks shapes, NaN/inf, sizes
    except PointCloudError as e:
        raise MeshError("unreadable", str(e)) from None
    return cloud.coords, cloud.colors, colors is not None


def _read_pt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``.pt`` holding a tensor ``[6, N]`` or ``[N, 6]`` (xyz, rgb) or a dict with ``coords``
    (or ``xyz``) and ``colors`` (or ``rgb``). Colours in [-1, 1] (point-e's model space) are
    mapped to [0, 1]; 0..255 and [0, 1] are read as ``colors_to_unit`` reads them."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MeshError(
            "unsafe_pickle",
            f"{path}: refused by torch.load(weights_only=True), so not unpickled (it holds "
            f"Python objects, not just tensors): {str(e).splitlines()[0]}",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise MeshError("unreadable", f"{path}: {e}") from None
    if isinstance(obj, dict):
        xyz = next((obj[k] for k in ("coords", "xyz") if k in obj), None)
        rgb = next((obj[k] for k in ("colors", "rgb") if k in obj), None)
        if not isinstance(xyz, torch.Tensor):
            raise PointCloudError(f"a dict without a coords/xyz tensor (keys {sorted(obj)})")
        coords = xyz.float().numpy()
        colors = None if rgb is None else _unit(torch.as_tensor(rgb).float().numpy())
        return coords, colors
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or 6 not in obj.shape:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise PointCloudError(f"expected a [6, N] or [N, 6] tensor, got {shape}")
    a = obj.float().numpy()
    if a.shape[1] != 6:  # Cap3D: channels first
        a = a.T
    return a[:, :3], _unit(a[:, 3:6])


def _unit(colors: np.ndarray) -> np.ndarray:
    if colors.size and np.isfinite(colors).all() and colors.min() < 0:
        return (colors + 1) / 2  # point-e model space: rgb × 2 − 1
    return colors_to_unit(colors)


def convert_cloud(job: Job, settings: Settings) -> tuple[dict, Job]:
    """One cloud → ``convert_object``'s (arrays, job): ``num_points`` points by farthest point
    sampling from a start drawn from (settings.seed, crc32(id)); no SDF samples."""
    if not job.caption:
        raise Filtered("no caption", f"{job.extras.get('uid', job.id)} is not in the captions")
    coords, colors, colored = read_cloud(Path(job.path))
    if job.up == "y":
        coords = y_up_to_z_up(coords)
    if len(coords) < settings.num_points:
        raise MeshError("too_few_points", f"{len(coords)} points (< {settings.num_points})")
    try:
        points, center, scale = normalize_bbox(coords)
    except PointCloudError as e:
        raise MeshError("degenerate", str(e)) from None
    rng = np.random.default_rng([settings.seed, id_hash(job.id)])
    start = int(rng.integers(len(points)))
    idx = farthest_point_sample(torch.from_numpy(points), settings.num_points, start=start)
    idx = idx.numpy()
    arrays = {
        "coords": points[idx].astype(np.float32),
        "colors": np.round(np.clip(colors[idx], 0, 1) * 255).astype(np.uint8),
        "meta": {
            "center": [float(c) for c in center],
            "scale": float(scale),
            "extent": [round(float(e), 6) for e in np.ptp(coords, axis=0)],
            "up": job.up,
            "num_source_points": len(coords),
            "colored_fraction": 1.0 if colored else 0.0,
        },
    }
    return arrays, job
