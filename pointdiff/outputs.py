"""Writing results: sample folders (``pointdiff sample``) and mesh files (``pointdiff mesh``).

A sample folder ``OUT/<nn>_<prompt slug>/`` holds ``cloud.ply``, ``cloud.npz``, ``cloud.png``,
``prompt.txt`` and, with a mesh, ``mesh.glb``, ``mesh.ply``, ``mesh.png``. ``write_samples``
writes every folder of a run into a hidden temporary folder first; only when all are written
does it remove the sample folders of earlier runs (``overwrite``) and rename the new ones into
place, so a failed run leaves the earlier samples as they were and a folder never mixes two
runs' files.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pointdiff.meshing import MeshResult, TriMesh
from pointdiff.pipeline import PipelineError, load_pipeline
from pointdiff.pointcloud import PointCloud, normalize_bbox
from pointdiff.render import render_mesh_views, render_views

#: a folder ``write_samples`` wrote: ``<nn>_<slug>`` (it also holds a ``prompt.txt``)
_SAMPLE_DIR = re.compile(r"^\d{2,}_[a-z0-9_]+$")


@dataclass(frozen=True)
class Sample:
    """One result of a run: the prompt as the user gave it, its cloud and (maybe) its mesh."""

    prompt: str
    cloud: PointCloud
    mesh: TriMesh | None = None


def slug(text: str, n: int = 40) -> str:
    """A folder-name form of a prompt: lower-case letters, digits and single underscores."""
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(filter(None, s.split("_")))[:n] or "sample"


def _write_folder(folder: Path, sample: Sample) -> None:
    folder.mkdir(parents=True)
    sample.cloud.save(folder / "cloud.ply")
    sample.cloud.save(folder / "cloud.npz")
    render_views(sample.cloud).save(folder / "cloud.png")
    mesh = sample.mesh
    if mesh is not None:
        mesh.save(folder / "mesh.glb")
        mesh.save(folder / "mesh.ply")
        render_mesh_views(mesh.verts, mesh.faces, mesh.colors).save(folder / "mesh.png")
    (folder / "prompt.txt").write_text(sample.prompt + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_samples(
    out: str | os.PathLike, samples: list[Sample], overwrite: bool = False
) -> tuple[list[Path], list[Path]]:
    """Write sample ``i`` to ``out/<i>_<prompt slug>/`` (module docstring).

    :param overwrite: once every new folder is written, remove the earlier runs' sample folders
        (``remove_samples``) so no stale sample stays beside the new ones.
    :return: (the folders written, the earlier folders removed).
    """
    out = Path(out)
    folders = [out / f"{i:02d}_{slug(s.prompt)}" for i, s in enumerate(samples)]
    temps = [f.with_name(f".{f.name}.tmp-{os.getpid()}") for f in folders]
    try:
        for tmp, sample in zip(temps, samples, strict=True):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _write_folder(tmp, sample)
            except OSError as e:
                raise PipelineError(f"cannot write {tmp.name[1:]} in {out}: {e}") from None
        removed = remove_samples(out) if overwrite else []
        for tmp, folder in zip(temps, folders, strict=True):
            _remove(folder)
            os.replace(tmp, folder)
    finally:
        for tmp in temps:  # only left when writing failed
            shutil.rmtree(tmp, ignore_errors=True)
    return folders, removed


def remove_samples(out: str | os.PathLike) -> list[Path]:
    """Remove the sample folders ``write_samples`` wrote into ``out`` (``<nn>_<slug>/`` holding a
    ``prompt.txt``); other files and folders are kept.

    :return: the folders removed.
    """
    out = Path(out)
    if not out.is_dir():
        return []
    found = sorted(
        p
        for p in out.iterdir()
        if p.is_dir() and not p.is_symlink() and _SAMPLE_DIR.match(p.name)
        if (p / "prompt.txt").is_file()
    )
    for folder in found:
        shutil.rmtree(folder)
    return found


def mesh_cloud_file(
    cloud_path: str | os.PathLike,
    out_path: str | os.PathLike,
    method: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    grid_size: int = 128,
    device: str = "cpu",
    snap: bool = True,
    precision: str = "fp32",
) -> MeshResult:
    """Mesh a point-cloud file and save the mesh (format from the suffix: .glb, .ply, .obj).

    The cloud is meshed in the normalised frame the SDF head was trained in (bbox centred,
    largest side 1) and the mesh is mapped back to the cloud's own coordinates.

    :param method: ``auto`` (the checkpoint's SDF head, Poisson where it has none or its surface
        does not fit the cloud), ``sdf`` (the SDF head, no fallback) or ``poisson``.
    :param precision: the SDF head's: ``fp32``, ``bf16`` or ``auto`` (``pointdiff.precision``).
    :return: the saved mesh (in the cloud's frame) and how it was made.
    """
    from pointdiff.meshing import mesh_from_cloud

    out_path = Path(out_path)
    if out_path.suffix not in (".glb", ".ply", ".obj"):
        raise PipelineError(f"mesh output must end in .glb, .ply or .obj, got {out_path.name!r}")
    if method not in ("auto", "sdf", "poisson"):
        raise PipelineError(f"unknown meshing method {method!r} (auto | sdf | poisson)")
    if method == "sdf" and checkpoint is None:
        raise PipelineError("--method sdf needs a --checkpoint with an SDF head")
    cloud = PointCloud.load(cloud_path)
    coords, center, scale = normalize_bbox(cloud.coords)
    unit = PointCloud(coords, cloud.colors)
    if method == "poisson" or checkpoint is None:
        result = mesh_from_cloud(unit, method=method)
    else:
        pipe = load_pipeline(checkpoint, device=device, precision=precision)
        result = pipe.to_mesh(unit, grid_size=grid_size, method=method, snap=snap)
    m = result.mesh
    mesh = TriMesh(m.verts * scale + center, m.faces, m.colors, m.normals)
    mesh.save(out_path)
    return MeshResult(mesh, result.method, result.reason, result.fallback, result.notes)
