"""Surface sampling, visibility and signed distances on a ``TriangleSoup``.

* ``sample_surface``: area-weighted points with colours (texture at the interpolated UV,
  bilinear with the material's wrap modes; material colour; vertex colours).
* ``MeshRaycaster.visible``: keep points seen from at least one of ~20 viewpoints around the
  object, as Point-E's render-based clouds had it (interior faces no longer leak colours).
* ``MeshRaycaster.signed_distance``: exact unsigned distance (open3d) with a robust sign: a
  query is outside when rays escape to infinity in at least 2 of 32 directions (the rule of
  depth-map carving; insensitive to overlapping parts and inconsistent winding). A second test,
  ray-parity voting over 9 directions (coincident hits merged, so duplicated faces and rays
  through edges do not flip the parity), checks it; where the two disagree the mesh is open or
  broken, and ``sample_sdf`` flags objects where that happens too often.

open3d is imported lazily (only the raycaster needs it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_tools.mesh_reader import TriangleSoup
from pointdiff.colours import linear_to_srgb, srgb_to_linear

#: colour given to points whose face carries no colour information (sRGB 128).
GREY = 0.5


@dataclass
class SurfaceSample:
    """Points on a mesh: ``points`` [N, 3], ``colors`` [N, 3] in [0, 1] (sRGB),
    ``faces`` [N] (triangle index), ``colored`` [N] bool (colour came from the file)."""

    points: np.ndarray
    colors: np.ndarray
    faces: np.ndarray
    colored: np.ndarray

    def select(self, mask_or_index: np.ndarray) -> SurfaceSample:
        i = mask_or_index
        return SurfaceSample(self.points[i], self.colors[i], self.faces[i], self.colored[i])


# ----------------------------------------------------------------------------------------------
# Colour helpers


def _wrap_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "clamp":
        return np.clip(i, 0, n - 1)
    if mode == "mirror":  # period 2n: 0..n-1 then n-1..0
        i = np.mod(i, 2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)
    return np.mod(i, n)  # repeat


def sample_texture(
    texture: np.ndarray, uv: np.ndarray, wrap: tuple[str, str] = ("repeat", "repeat")
) -> np.ndarray:
    """Bilinear texture lookup.

    :param texture: uint8 [H, W, C] image, row 0 at the top.
    :param uv: [N, 2] coordinates, OpenGL convention (v = 0 at the bottom row).
    :param wrap: (s, t) wrap modes, each ``repeat``, ``clamp`` or ``mirror``.
    :return: [N, C] float32 in [0, 1].
    """
    h, w = texture.shape[:2]
    # Texel centres sit at (i + 0.5) / size, so subtract half a texel before flooring.
    x = uv[:, 0].astype(np.float64) * w - 0.5
    y = (1.0 - uv[:, 1].astype(np.float64)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xa, xb = _wrap_index(x0, w, wrap[0]), _wrap_index(x0 + 1, w, wrap[0])
    ya, yb = _wrap_index(y0, h, wrap[1]), _wrap_index(y0 + 1, h, wrap[1])
    t = texture.astype(np.float32) / 255.0
    top = t[ya, xa] * (1 - fx) + t[ya, xb] * fx
    bottom = t[yb, xa] * (1 - fx) + t[yb, xb] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Sampling


def face_areas(triangles: np.ndarray) -> np.ndarray:
    """[F, 3, 3] → [F] triangle areas."""
    e1, e2 = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    return 0.5 * np.linalg.norm(np.cross(e1, e2), axis=-1)


def sample_surface(soup: TriangleSoup, n: int, rng: np.random.Generator) -> SurfaceSample:
    """``n`` points uniformly over the surface area, with their colours.

    Faces are drawn with probability ∝ area (inverse CDF on the cumulative areas) and points
    placed with uniform barycentrics (the square-root trick), so the result is a function of
    the soup and the generator's state only.
    """
    areas = face_areas(soup.triangles)
    cdf = np.cumsum(areas)
    faces = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=-1)  # [n, 3]
    tri = soup.triangles[faces]
    points = np.einsum("nk,nkd->nd", bary, tri)
    colors, colored = _colors_at(soup, faces, bary.astype(np.float32))
    return SurfaceSample(points, colors, faces, colored)


def _colors_at(
    soup: TriangleSoup, faces: np.ndarray, bary: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """sRGB colours [n, 3] and the colored flag [n] at barycentric positions on ``faces``."""
    n = len(faces)
    out = np.full((n, 3), GREY, dtype=np.float32)
    vc = np.einsum("nk,nkc->nc", bary, soup.colors[faces])[:, :3]  # interpolated vertex colours
    has_vc = soup.has_vertex_colors[faces]
    mat_ids = soup.material_ids[faces]
    colored = np.zeros(n, dtype=bool)
    for m in np.unique(mat_ids):
        mat = soup.materials[m]
        sel = np.nonzero(mat_ids == m)[0]
        if not mat.defined:
            hv = sel[has_vc[sel]]
            out[hv], colored[hv] = vc[hv], True
            continue
        base = np.broadcast_to(mat.color[:3], (len(sel), 3)).astype(np.float32)
        tex = np.ones((len(sel), 3), dtype=np.float32)
        if mat.texture is not None:
            uv = np.einsum("nk,nkc->nc", bary[sel], soup.uvs[faces[sel]])
            ok = np.isfinite(uv).all(axis=1)
            tex[ok] = sample_texture(mat.texture, uv[ok], mat.wrap)[:, :3]
        v = np.where(has_vc[sel, None], vc[sel], 1.0).astype(np.float32)
        if mat.linear:  # glTF: factor × texture × COLOR_0 in linear light, encoded back to sRGB
            out[sel] = linear_to_srgb(base * srgb_to_linear(tex) * v)
        else:
            out[sel] = np.clip(base * tex * v, 0.0, 1.0)
        colored[sel] = True
    return out, colored


def fibonacci_sphere(k: int) -> np.ndarray:
    """[k, 3] unit vectors spread evenly over the sphere (golden-angle spiral)."""
    i = np.arange(k, dtype=np.float64) + 0.5
    z = 1 - 2 * i / k
    r = np.sqrt(1 - z**2)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


# ----------------------------------------------------------------------------------------------
# Ray casting


class MeshRaycaster:
    """open3d ``RaycastingScene`` over a triangle soup [F, 3, 3] (float32 internally)."""

    def __init__(self, triangles: np.ndarray, threads: int = 0):
        import open3d as o3d  # lazy: heavy, and only the data tools need it

        self._o3d = o3d
        self.threads = threads
        verts = np.ascontiguousarray(triangles.reshape(-1, 3), dtype=np.float32)
        idx = np.arange(len(verts), dtype=np.uint32).reshape(-1, 3)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(idx))
        tri = triangles.astype(np.float64)
        self.normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F, 3]
        lo, hi = verts.min(0).astype(np.float64), verts.max(0).astype(np.float64)
        self.center, self.diag = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
        self.has_twin = _opposite_twins(tri, self.normals, 1e-6 * self.diag)

    def _tensor(self, a: np.ndarray):
        return self._o3d.core.Tensor(np.ascontiguousarray(a, dtype=np.float32))

    def visible(
        self,
        points: np.ndarray,
        views: int = 20,
        faces: np.ndarray | None = None,
        chunk: int = 1 << 19,
    ) -> np.ndarray:
        """[N] bool: points with an unobstructed line of sight to at least one of ``views``
        cameras on a sphere of radius 1.5 × bbox diagonal around the bbox centre.

        :param faces: [N] triangle of each point. When given, a point on a triangle that has an
            exact, oppositely oriented twin (the duplicated inner/outer shells common in
            ShapeNet, often with different materials) is seen only from the side its own
            triangle faces, as in a render, rather than as a speckle of both materials.
        """
        cams = self.center + 1.5 * self.diag * fibonacci_sphere(views)
        eps = 1e-3 * self.diag  # the ray hits the point's own face at t ≈ distance
        seen = np.zeros(len(points), dtype=bool)
        sided = None if faces is None else self.has_twin[faces]
        for cam in cams:
            todo = np.nonzero(~seen)[0]
            for s in range(0, len(todo), chunk):
                i = todo[s : s + chunk]
                d = points[i] - cam
                dist = np.linalg.norm(d, axis=1)
                rays = np.concatenate([np.broadcast_to(cam, d.shape), d / dist[:, None]], axis=1)
                t = self.scene.cast_rays(self._tensor(rays), nthreads=self.threads)["t_hit"]
                ok = t.numpy() >= dist - eps
                if sided is not None:  # twin faces: only the side facing the camera shows
                    tw = np.nonzero(sided[i])[0]
                    ok[tw] &= np.einsum("nk,nk->n", self.normals[faces[i[tw]]], d[tw]) < 0
                seen[i] = ok
        return seen

    def unsigned_distance(self, queries: np.ndarray) -> np.ndarray:
        """[Q] distance from each query [Q, 3] to the closest point on the surface."""
        d = self.scene.compute_distance(self._tensor(queries), nthreads=self.threads)
        return d.numpy().astype(np.float32)

    def inside_votes(self, queries: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """[Q] number of ``directions`` [K, 3] along which the ray from the query crosses the
        surface an odd number of times (hits closer than 1e-5 × diagonal merged)."""
        q, k = len(queries), len(directions)
        rays = np.concatenate(
            [np.repeat(queries, k, axis=0), np.tile(directions, (q, 1))], axis=1
        )  # ray r = query r // k, direction r % k
        hits = self.scene.list_intersections(self._tensor(rays), nthreads=self.threads)
        ray_ids = hits["ray_ids"].numpy().astype(np.int64)
        t = hits["t_hit"].numpy().astype(np.float64)
        order = np.lexsort((t, ray_ids))
        ray_ids, t = ray_ids[order], t[order]
        # A hit counts unless it repeats the previous hit of the same ray (coincident faces,
        # or a ray through a shared edge/vertex reported once per triangle).
        new = np.ones(len(t), dtype=bool)
        new[1:] = (ray_ids[1:] != ray_ids[:-1]) | (t[1:] - t[:-1] > 1e-5 * self.diag)
        crossings = np.bincount(ray_ids[new], minlength=q * k).reshape(q, k)
        return (crossings % 2 == 1).sum(axis=1)

    def escapes(self, queries: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """[Q] number of ``directions`` [K, 3] along which the ray from the query hits nothing."""
        q, k = len(queries), len(directions)
        rays = np.concatenate([np.repeat(queries, k, axis=0), np.tile(directions, (q, 1))], axis=1)
        t = self.scene.cast_rays(self._tensor(rays), nthreads=self.threads)["t_hit"].numpy()
        return np.isinf(t).reshape(q, k).sum(axis=1)

    def signed_distance(
        self,
        queries: np.ndarray,
        rng: np.random.Generator | None = None,
        escape_rays: int = 32,
        min_escapes: int = 2,
        parity_rays: int = 9,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance (negative inside) for queries [Q, 3], and where two sign tests agree.

        Sign: a query is outside when at least ``min_escapes`` of ``escape_rays`` directions
        leave the mesh without a hit (the visibility-from-infinity rule of depth-map carving;
        unaffected by overlapping parts and inconsistent winding, while a small hole lets only a
        few rays out). Check: the majority of ``parity_rays`` ray-parity votes, which holes and
        open shells disturb. On ShapeNet (93 models) the sign matches ``solid.binvox`` for
        98.9 % of the queries farther than 1.5 voxels from the surface (median 99.9 %).

        :return: (sdf [Q] float32, consistent [Q] bool: the parity majority gives the same sign).
        """
        rot = _random_rotation(rng) if rng is not None else np.eye(3)
        # A random rotation keeps axis-aligned faces and edges off exactly grazing rays.
        outside = self.escapes(queries, fibonacci_sphere(escape_rays) @ rot.T) >= min_escapes
        votes = self.inside_votes(queries, fibonacci_sphere(parity_rays) @ rot.T)
        consistent = (votes * 2 > parity_rays) != outside
        dist = self.unsigned_distance(queries)
        return np.where(outside, dist, -dist).astype(np.float32), consistent


def _opposite_twins(tri: np.ndarray, normals: np.ndarray, tol: float) -> np.ndarray:
    """[F] bool: triangles whose three corners (rounded to ``tol``) are also the corners of
    another triangle of opposite orientation."""
    q = np.round(tri / max(tol, 1e-12)).astype(np.int64)  # [F, 3, 3]
    order = np.lexsort((q[..., 2], q[..., 1], q[..., 0]), axis=-1)  # corners in a fixed order
    key = np.take_along_axis(q, order[..., None], axis=1).reshape(len(q), 9)
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    first = np.full(group.max() + 1, -1, dtype=np.int64)
    first[group[::-1]] = np.arange(len(group))[::-1]  # lowest face index of each group
    same = np.einsum("fk,fk->f", normals, normals[first[group]]) > 0
    has_same = np.bincount(group, weights=same, minlength=len(first)) > 0
    has_opposite = np.bincount(group, weights=~same, minlength=len(first)) > 0
    return (has_same & has_opposite)[group]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)  # a proper rotation (det +1)


# ----------------------------------------------------------------------------------------------
# SDF supervision


@dataclass
class SDFSample:
    """Query points [Q, 3], signed distances [Q] (negative inside), per-query ``consistent``
    [Q] (both sign tests agree), and the object verdict ``reliable`` with its statistic
    ``disagree_fraction`` (share of queries where the tests disagree)."""

    points: np.ndarray
    values: np.ndarray
    consistent: np.ndarray
    reliable: bool
    disagree_fraction: float


def sample_sdf_queries(
    surface_points: np.ndarray,
    n: int,
    rng: np.random.Generator,
    scales: tuple[float, ...] = (0.005, 0.02, 0.05),
    uniform_fraction: float = 0.2,
    bound: float = 0.55,
) -> np.ndarray:
    """Query points [n, 3] for a normalised object (xyz ∈ [-0.5, 0.5]).

    ``1 - uniform_fraction`` of them are surface points jittered by isotropic Gaussians with the
    standard deviations ``scales`` (equal shares), the rest uniform in [-bound, bound]³.
    """
    n_uniform = int(round(n * uniform_fraction))
    n_near = n - n_uniform
    parts = []
    for j, sigma in enumerate(scales):
        m = n_near // len(scales) + (1 if j < n_near % len(scales) else 0)
        base = surface_points[rng.integers(0, len(surface_points), m)]
        parts.append(base + rng.normal(0.0, sigma, (m, 3)))
    parts.append(rng.uniform(-bound, bound, (n_uniform, 3)))
    return np.concatenate(parts).astype(np.float32)


def sample_sdf(
    raycaster: MeshRaycaster,
    surface_points: np.ndarray,
    n: int,
    rng: np.random.Generator,
    max_disagree: float = 0.05,
) -> SDFSample:
    """Queries (``sample_sdf_queries``) with signed distances. The object is ``reliable`` when
    the escape and parity sign tests disagree on at most ``max_disagree`` of the queries
    (calibrated on ShapeNet against ``solid.binvox``: see data_tools/README.md)."""
    queries = sample_sdf_queries(surface_points, n, rng)
    values, consistent = raycaster.signed_distance(queries, rng=rng)
    disagree = float(1.0 - consistent.mean())
    return SDFSample(queries, values, consistent, disagree <= max_disagree, disagree)
