"""Turntable images: a mesh seen from pan cameras (a z-buffered splat of its shaded surface) and
writing a view sequence as one PNG sheet and an animated GIF.

Images are [V, H, W, 3] floats in [0, 1] (sRGB), views in camera order, as ``render_views``
returns them. Shap-E's pan cameras repeat the first view at the end (θ from 0 to 2π inclusive);
the GIF drops that last frame so the loop does not stutter.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pointdiff.atomic import write_bytes_atomic
from pointdiff.meshing import TriMesh
from pointdiff.nerf.cameras import Cameras
from pointdiff.render import shade_surface

_LIGHT = np.array([0.0939, -0.6395, -0.7630])  # Shap-E's STF light direction (world, z-up)
_AMBIENT, _DIFFUSE = 0.3, 0.7  # Shap-E's STF shading


def render_mesh_views(
    mesh: TriMesh,
    cams: Cameras,
    samples_per_pixel: float = 4.0,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    seed: int = 0,
) -> np.ndarray:
    """Render a vertex-coloured mesh from every camera.

    The surface is sampled area-weighted (``samples_per_pixel`` × H·W samples), each sample
    shaded ambient + diffuse·|n·l| (two-sided: marching-cubes meshes need no consistent winding)
    and splatted to its nearest pixel behind a z-buffer. Fast and dependency-free; small holes
    appear where a surface is seen at grazing angles. :return: [V, H, W, 3] in [0, 1].
    """
    h, w = cams.height, cams.width
    out = np.empty((len(cams.origin), h, w, 3))
    out[:] = background
    if len(mesh.faces) == 0:
        return out
    n = int(samples_per_pixel * h * w)
    pts, col = shade_surface(
        mesh.verts, mesh.faces, mesh.colors, n, _LIGHT, _AMBIENT, _DIFFUSE, seed
    )

    axes = [t.detach().cpu().double().numpy() for t in (cams.origin, cams.x, cams.y, cams.z)]
    scale = np.array([math.tan(cams.x_fov / 2), math.tan(cams.y_fov / 2)])
    for i, (o, x, y, z) in enumerate(zip(*axes, strict=True)):
        rel = pts - o
        depth = rel @ z
        # the inverse of camera_rays: frac = (x·p, y·p)/(z·p)/tan(fov/2), corner-aligned pixels
        frac = np.stack([rel @ x, rel @ y], axis=1) / depth[:, None] / scale
        pix = np.round((frac + 1) / 2 * (np.array([w, h]) - 1)).astype(np.int64)
        ok = (depth > 0) & (pix >= 0).all(1) & (pix[:, 0] < w) & (pix[:, 1] < h)
        flat = pix[ok, 1] * w + pix[ok, 0]
        order = np.lexsort((depth[ok], flat))  # by pixel, nearest first
        flat, first = flat[order], np.ones(len(order), dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        img = out[i].reshape(-1, 3)
        img[flat[first]] = col[ok][order][first]
    return out


def _frames(images: np.ndarray | torch.Tensor) -> list[Image.Image]:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def save_turntable(
    images: np.ndarray | torch.Tensor,
    png: str | Path,
    gif: str | Path | None = None,
    cols: int = 5,
    duration_ms: int = 100,
) -> None:
    """Write the views as a PNG sheet (``cols`` per row) and, if ``gif``, an endless GIF loop.

    :param images: [V, H, W, 3] in [0, 1]."""
    frames = _frames(images)
    h, w = frames[0].height, frames[0].width
    cols = min(cols, len(frames))
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (cols * w, rows * h))
    for i, frame in enumerate(frames):
        sheet.paste(frame, ((i % cols) * w, (i // cols) * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes_atomic(png, buf.getvalue())
    if gif is not None:
        loop = frames[:-1] if len(frames) > 2 else frames  # pan cameras end where they start
        buf = io.BytesIO()
        loop[0].save(
            buf, format="GIF", save_all=True, append_images=loop[1:], duration=duration_ms, loop=0
        )
        write_bytes_atomic(gif, buf.getvalue())
