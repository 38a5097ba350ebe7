"""One object: mesh file (or a point cloud: ``data_tools.clouds``) → normalised coloured
4096-point cloud + SDF samples (a record).

Steps: load (``data_tools.mesh_reader``, Z-up) → normalise on the mesh bbox → area-weighted surface
sample (``oversample`` points) → keep points visible from ``views`` viewpoints → farthest point
sampling to ``num_points`` → SDF queries with robust signs. Every random draw comes from a
generator seeded by (settings.seed, crc32(id)), so a record depends only on its inputs.
"""

from __future__ import annotations

import dataclasses
import errno
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from data_tools.clouds import convert_cloud
from data_tools.jobs import Filtered, Job, Settings, id_hash
from data_tools.mesh_files import MeshError, gltf_asset_extras
from data_tools.mesh_reader import load_mesh
from data_tools.surface_sampling import MeshRaycaster, sample_sdf, sample_surface
from pointdiff.pointcloud import farthest_point_sample, normalize_bbox

# ----------------------------------------------------------------------------------------------
# Metadata hooks (run in the worker, where the file is opened anyway)


def _gltf_extras_hook(job: Job) -> Job:
    """glTF/GLB: licence, title and author from ``asset.extras`` (Objaverse/Sketchfab put them
    there, else the source's, e.g. Objaverse's annotations); the licence filter
    (``allowed_licences``; ``unknown`` passes only with ``allow_unknown_licence``); the title as
    caption when none is given (else ``fallback_caption``; objects left without a caption are
    filtered)."""
    extras = gltf_asset_extras(job.path)
    raw = str(extras.get("license", ""))
    licence = raw.split(" (")[0].strip() or job.licence
    meta = dict(job.extras)
    for key in ("title", "author", "source"):
        if extras.get(key):
            meta[key] = str(extras[key])
    if raw:
        meta["licence_full"] = raw
    allowed = meta.pop("allowed_licences", None)
    unknown_ok = meta.pop("allow_unknown_licence", False) and licence == "unknown"
    if allowed and licence not in allowed and not unknown_ok:
        why = f"licence {licence} is not one of --licences {' '.join(allowed)}"
        if licence == "unknown":
            why = (
                "no licence in the GLB's asset.extras (nor in annotations); "
                "--include-unknown-licences keeps such objects (research use)"
            )
        raise Filtered(f"licence {licence}", why)
    caption, fallback = job.caption, meta.pop("fallback_caption", "")
    if not caption:
        if meta.pop("require_caption", False):
            raise Filtered("no caption")
        caption, meta["caption_source"] = meta.get("title", ""), "title"
        if not caption:
            caption, meta["caption_source"] = fallback, "file name"
        if not caption:
            raise Filtered("no caption")
    return dataclasses.replace(job, licence=licence, caption=caption, extras=meta)


HOOKS: dict[str, Callable[[Job], Job]] = {"gltf_extras": _gltf_extras_hook}


# ----------------------------------------------------------------------------------------------
# Conversion


def convert_object(job: Job, settings: Settings, threads: int = 0) -> tuple[dict, Job]:
    """Convert one object.

    :return: (arrays, job) with arrays ``coords`` [P, 3] float32, ``colors`` [P, 3] uint8 and,
        when ``settings.sdf_queries`` > 0, ``sdf_points`` [Q, 3] and ``sdf_values`` [Q] float32,
        plus the geometry-derived metadata under key ``meta``; ``job`` as completed by its hook.
    :raises MeshError: unusable input (``reason`` names why); ``Filtered`` for filtered objects.
    """
    if job.kind == "cloud":
        return convert_cloud(job, settings)
    if job.archive:
        with tempfile.TemporaryDirectory(prefix="pointdiff-") as tmp:
            path, root = _extract(job, Path(tmp))
            return _convert(
                dataclasses.replace(job, path=str(path), root=str(root)), settings, threads, job
            )
    return _convert(job, settings, threads, job)


def _extract(job: Job, tmp: Path) -> tuple[Path, Path]:
    """Unpack the model's folder (``job.root`` inside the zip) into ``tmp``."""
    member = PurePosixPath(job.path.lstrip("/"))
    prefix = str(PurePosixPath(job.root.lstrip("/"))) if job.root else str(member.parent)
    try:
        with zipfile.ZipFile(job.archive) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or ".." in name.parts or name.is_absolute():
                    continue
                if str(name) == str(member) or str(name).startswith(prefix + "/"):
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(info))
    except (zipfile.BadZipFile, OSError) as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk is not the archive's fault: the runner stops the run
        raise MeshError("unreadable", f"{job.archive}: {e}") from None
    return tmp / member, tmp / prefix


def _convert(job: Job, settings: Settings, threads: int, original: Job) -> tuple[dict, Job]:
    if job.hook:
        job = HOOKS[job.hook](job)
    rng = np.random.default_rng([settings.seed, id_hash(job.id)])
    soup = load_mesh(
        job.path,
        up=job.up,
        root=job.root,
        texture=job.texture,
        strict=settings.strict_assets,
        rotation=None if job.rotation is None else np.reshape(job.rotation, (3, 3)),
        max_faces=settings.max_faces,
    )
    # Normalise on the bbox of the triangles (the same map for points and SDF queries).
    _, center, scale = normalize_bbox(soup.triangles.reshape(-1, 3))
    extent = np.ptp(soup.triangles.reshape(-1, 3), axis=0)
    soup = soup.transformed((soup.triangles - center) / scale)
    raycaster = MeshRaycaster(soup.triangles, threads=threads)

    dense = sample_surface(soup, settings.oversample, rng)
    surface, visible_fraction = dense, 1.0
    if settings.views > 0:
        mask = raycaster.visible(dense.points, settings.views, dense.faces)
        visible_fraction = float(mask.mean())
        surface = dense.select(mask)
        if len(surface.points) < settings.num_points:  # mostly hidden surface: sample harder
            more = sample_surface(soup, 8 * settings.oversample, rng)
            surface = more.select(raycaster.visible(more.points, settings.views, more.faces))
        if len(surface.points) < settings.num_points:
            raise MeshError(
                "too_few_visible_points",
                f"only {len(surface.points)} visible points (< {settings.num_points})",
            )
    start = int(rng.integers(len(surface.points)))
    idx = farthest_point_sample(
        torch.from_numpy(surface.points.astype(np.float32)), settings.num_points, start=start
    ).numpy()
    arrays = {
        "coords": surface.points[idx].astype(np.float32),
        "colors": np.round(surface.colors[idx] * 255).astype(np.uint8),
    }
    meta = {
        "center": [float(c) for c in center],
        "scale": float(scale),
        "extent": [round(float(e), 6) for e in extent],
        "up": job.up,
        "num_faces": len(soup),
        "visible_fraction": round(visible_fraction, 4),
        "colored_fraction": round(float(surface.colored[idx].mean()), 4),
    }
    if soup.warnings:
        meta["warnings"] = soup.warnings
    if settings.sdf_queries > 0:
        sdf = sample_sdf(raycaster, dense.points, settings.sdf_queries, rng, settings.max_disagree)
        arrays["sdf_points"], arrays["sdf_values"] = sdf.points, sdf.values
        meta["sdf_reliable"] = bool(sdf.reliable)
        meta["sdf_disagree"] = round(sdf.disagree_fraction, 4)
        meta["sdf_inside_fraction"] = round(float((sdf.values < 0).mean()), 4)
    arrays["meta"] = meta
    # Report the job with the caller's paths (not the temporary extraction folder).
    done = dataclasses.replace(job, path=original.path, root=original.root)
    return arrays, done
