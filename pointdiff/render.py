"""Fast point-splatting previews of coloured point clouds (numpy + Pillow, no GL).

Used by the sampling CLI (PNG previews), the data tools (contact sheets) and the evaluation suite
(CLIP R-precision renders). Views orbit the up (Z) axis; the camera is orthographic.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pointdiff.pointcloud import PointCloud


def render_cloud(
    cloud: PointCloud,
    azimuth: float = 30.0,
    elevation: float = 20.0,
    size: int = 256,
    point_radius: int | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    extent: float = 0.6,
    shade: bool = True,
) -> np.ndarray:
    """Render one view of a cloud with a depth-tested square splat per point.

    :param azimuth: degrees around +Z (0 looks along +Y from the -Y side).
    :param elevation: degrees above the horizon.
    :param extent: half-width of the square view in object units (clouds live in [-0.5, 0.5]).
    :param shade: darken farther points slightly so depth reads in a still image.
    :return: [size, size, 3] uint8 image.
    """
    a, e = math.radians(azimuth), math.radians(elevation)
    # Camera basis: right (r), up (u) and view direction (f, pointing into the scene).
    f = np.array([math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), -math.sin(e)])
    r = np.array([math.cos(a), -math.sin(a), 0.0])
    u = np.cross(r, f)
    p = cloud.coords.astype(np.float64)
    x, y, depth = p @ r, p @ u, p @ f
    px = np.round((x / extent + 1) * 0.5 * (size - 1)).astype(np.int64)
    py = np.round((1 - (y / extent + 1) * 0.5) * (size - 1)).astype(np.int64)
    rad = point_radius if point_radius is not None else max(1, round(size / 110))
    col = cloud.colors.astype(np.float64)
    if shade:
        d = (depth - depth.min()) / max(np.ptp(depth), 1e-6)
        col = col * (1.0 - 0.35 * d[:, None])
    # Every point covers a (2r+1)² square; keep the nearest point per pixel (z-buffer by sort).
    offs = np.arange(-rad, rad + 1)
    dx, dy = np.meshgrid(offs, offs)
    qx = (px[:, None] + dx.ravel()[None]).ravel()
    qy = (py[:, None] + dy.ravel()[None]).ravel()
    owner = np.repeat(np.arange(len(p)), dx.size)
    ok = (qx >= 0) & (qx < size) & (qy >= 0) & (qy < size)
    pix, owner = qy[ok] * size + qx[ok], owner[ok]
    order = np.lexsort((depth[owner], pix))  # by pixel, nearest first
    pix, owner = pix[order], owner[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    img = np.empty((size * size, 3))
    img[:] = background
    img[pix[first]] = col[owner[first]]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).reshape(size, size, 3)


def render_views(
    cloud: PointCloud, views: int = 4, size: int = 256, elevation: float = 20.0
) -> Image.Image:
    """``views`` renders at evenly spaced azimuths, side by side: one [size, views·size] image."""
    tiles = [
        render_cloud(cloud, azimuth=30.0 + 360.0 * i / views, elevation=elevation, size=size)
        for i in range(views)
    ]
    return Image.fromarray(np.concatenate(tiles, axis=1))


def render_grid(
    items: list[PointCloud | Image.Image],
    captions: list[str] | None = None,
    cols: int = 4,
    size: int = 256,
) -> Image.Image:
    """A contact sheet: clouds (rendered with one view) or ready images, with optional captions."""
    if not items:
        raise ValueError("render_grid needs at least one item")
    if captions is not None and len(captions) != len(items):
        raise ValueError(f"{len(captions)} captions for {len(items)} items")
    tiles = [
        it if isinstance(it, Image.Image) else Image.fromarray(render_cloud(it, size=size))
        for it in items
    ]
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    cap_h = 18 if captions else 0
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * (th + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, t in enumerate(tiles):
        x, y = (i % cols) * tw, (i // cols) * (th + cap_h)
        sheet.paste(t, (x, y + cap_h))
        if captions:
            text = captions[i] if len(captions[i]) <= tw // 7 else captions[i][: tw // 7 - 1] + "…"
            draw.text((x + 4, y + 3), text, fill=(0, 0, 0), font=font)
    return sheet


def shade_surface(
    verts: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None,
    samples: int,
    light: np.ndarray,
    ambient: float,
    diffuse: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted samples of a triangle mesh's surface, shaded two-sided Lambert.

    Each sample's colour is the barycentric blend of its face's vertex colours (grey when
    ``colors`` is None) times ``ambient + diffuse·|n·l|``: generated meshes need not have a
    consistent winding. :param verts: [V, 3]. :param faces: [F, 3] int, at least one.
    :param colors: [V, 3] in [0, 1]. :param light: [3], any length.
    :return: points [samples, 3] and colours [samples, 3] in [0, 1] (float64).
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    colors = np.full_like(verts, 0.7) if colors is None else np.asarray(colors, dtype=np.float64)
    tri = verts[faces]  # [F, 3, 3]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(normal, axis=1)
    normal = normal / np.maximum(area[:, None], 1e-12)
    g = np.random.default_rng(seed)
    f = g.choice(len(faces), size=samples, p=area / area.sum())
    u, v = g.random(samples), g.random(samples)
    flip = u + v > 1  # fold the unit square onto the triangle: uniform barycentric samples
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    w = np.stack([1 - u - v, u, v], axis=1)[:, :, None]
    pts = (tri[f] * w).sum(1)
    col = (colors[faces[f]] * w).sum(1)
    light = np.asarray(light, dtype=np.float64) / np.linalg.norm(light)
    col = col * (ambient + diffuse * np.abs(normal[f] @ light))[:, None]
    return pts, np.clip(col, 0.0, 1.0)


def render_mesh_views(
    verts: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None = None,
    views: int = 4,
    size: int = 256,
    samples: int = 120_000,
    seed: int = 0,
) -> Image.Image:
    """Preview a triangle mesh: dense area-weighted surface samples, Lambert-shaded, splatted.

    :param verts: [V, 3]; faces: [F, 3] int; colors: [V, 3] in [0, 1] (grey when None).
    """
    if len(faces) == 0:
        raise ValueError("mesh has no faces to render")
    light = np.array([0.4, -0.5, 0.77])
    pts, col = shade_surface(verts, faces, colors, samples, light, 0.45, 0.55, seed)
    cloud = PointCloud(pts.astype(np.float32), col.astype(np.float32))
    tiles = [
        render_cloud(
            cloud, azimuth=30.0 + 360.0 * i / views, size=size, point_radius=1, shade=False
        )
        for i in range(views)
    ]
    return Image.fromarray(np.concatenate(tiles, axis=1))
