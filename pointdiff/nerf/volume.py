"""NeRF volume rendering in an axis-aligned box: stratified then importance samples, α-compositing.

Follows Mildenhall et al. 2020 (NeRF §4–5) as Shap-E renders its fields:

1. each ray is clipped to the box [−1, 1]³ (slab test) → [t0, t1]; rays that miss it see only
   the background;
2. coarse pass: ``n_coarse`` stratified samples, one uniform draw in each of ``n_coarse`` equal
   bins of [t0, t1];
3. quadrature: each sample owns the interval between the midpoints to its neighbours (t0 and t1
   at the ends), τ_i = σ_i·Δ_i, α_i = 1 − e^(−τ_i), T_i = e^(−Σ_{j<i} τ_j), w_i = α_i·T_i;
   colour = Σ w_i c_i, and the background is added with weight T = e^(−Σ τ);
4. fine pass: ``n_fine`` more ts drawn from the coarse weights (+1e-5, then normalised) by
   inverse-CDF, uniform inside the chosen coarse interval; all coarse + fine ts are integrated
   again with the fine outputs.

The field is ``field(points [P, 3]) -> (density [P, L], rgb [P, L, 3])``: L output levels, the
first for the coarse pass, the last for the fine one (L = 1: one network for both). One query
gives every level, so the coarse points' fine outputs are kept from the coarse pass instead of
being queried again (Shap-E queries all n_coarse + n_fine points in the fine pass: the same
numbers, a third more work at 64 + 128), and rays that miss the box are not queried at all
(their outputs are discarded anyway). Random draws come from ``generator`` in Shap-E's order
per ray chunk (coarse jitter [R, n_coarse], CDF draws [R, n_fine], jitter [R, n_fine]), so a
seeded CPU generator reproduces Shap-E's seeded renders chunk for chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pointdiff.nerf.cameras import Cameras, camera_rays

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_EPS = 1e-6  # slab test: keeps t finite for axis-parallel rays
_MIN_T_RANGE = 1e-3  # a ray must spend at least this long inside the box
_PMF_FLOOR = 1e-5  # importance sampling: every coarse interval stays reachable


def intersect_box(
    origins: torch.Tensor, dirs: torch.Tensor, lo: float = -1.0, hi: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test. :return: t0, t1 [R, 1] (0 and 1 for a miss), hit [R, 1] bool."""
    bbox = torch.tensor([[lo] * 3, [hi] * 3], dtype=origins.dtype, device=origins.device)
    d = dirs[:, None]
    ts = (bbox - origins[:, None]) / torch.where(d < 0, d - _EPS, d + _EPS)  # [R, 2, 3]
    t0 = ts.min(dim=1).values.max(dim=-1, keepdim=True).values.clamp(min=0.0)
    t1 = ts.max(dim=1).values.min(dim=-1, keepdim=True).values
    hit = t0 + _MIN_T_RANGE < t1
    return torch.where(hit, t0, 0.0), torch.where(hit, t1, 1.0), hit


def _intervals(ts: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
    """Each sample's interval between the neighbouring midpoints. :param ts: [R, S]."""
    mids = (ts[:, 1:] + ts[:, :-1]) * 0.5
    return torch.cat([t0, mids], dim=1), torch.cat([mids, t1], dim=1)


def _integrate(density, rgb, ts, t0, t1):
    """Quadrature weights and composited colour. :return: (rgb [R, 3], weights [R, S], T [R, 1])."""
    lower, upper = _intervals(ts, t0, t1)
    tau = density * (upper - lower)
    mass = torch.cumsum(tau, dim=1)
    alphas = 1.0 - torch.exp(-tau)
    # transmittance before each sample, from the running sum (not a product of (1 − α))
    trans = torch.exp(torch.cat([torch.zeros_like(mass[:, :1]), -mass[:, :-1]], dim=1))
    weights = alphas * trans
    return (weights[..., None] * rgb).sum(dim=1), weights, torch.exp(-mass[:, -1:])


def _query(field: Field, points: torch.Tensor, hit: torch.Tensor):
    """The field at the points of rays that hit the box (zeros elsewhere).

    :param points: [R, S, 3]. :param hit: [R] bool. :return: density [R, S, L], rgb [R, S, L, 3].
    """
    r, s = points.shape[:2]
    density, rgb = field(points[hit].reshape(-1, 3))
    lv = density.shape[-1]
    d_all = density.new_zeros(r, s, lv)
    c_all = rgb.new_zeros(r, s, lv, 3)
    d_all[hit], c_all[hit] = density.view(-1, s, lv), rgb.view(-1, s, lv, 3)
    return d_all, c_all


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def render_rays(
    field: Field,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    n_coarse: int = 64,
    n_fine: int = 128,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Render R rays. :param origins: [R, 3]. :param dirs: [R, 3] unit.

    :return: ``rgb`` [R, 3] in [0, 1] (fine pass, background added), ``transmittance`` [R, 1],
        ``rgb_coarse`` [R, 3] (coarse pass, no background), ``depth`` [R, 1] (expected t)."""
    t0, t1, hit = intersect_box(origins, dirs)
    u = torch.linspace(0, 1, n_coarse, dtype=origins.dtype, device=origins.device)[None]
    grid = t0 * (1.0 - u) + t1 * u
    lower, upper = _intervals(grid, t0, t1)
    ts = lower + (upper - lower) * _rand(grid.shape, grid, generator)

    def points(ts: torch.Tensor) -> torch.Tensor:
        return origins[:, None] + ts[..., None] * dirs[:, None]

    density, rgb = _query(field, points(ts), hit[:, 0])  # [R, n_coarse, L(, 3)]
    rgb_c, w_c, _ = _integrate(density[..., 0], rgb[..., 0, :], ts, t0, t1)

    # importance sampling from the coarse weights (inverse CDF over the coarse intervals)
    lower, upper = _intervals(ts, t0, t1)
    pmf = w_c + _PMF_FLOOR
    cdf = torch.cumsum(pmf / pmf.sum(dim=1, keepdim=True), dim=1)
    idx = torch.searchsorted(cdf, _rand((len(ts), n_fine), cdf, generator)).clamp(0, n_coarse - 1)
    lo, up = lower.gather(1, idx), upper.gather(1, idx)
    fine = torch.sort(lo + (up - lo) * _rand(idx.shape, lo, generator), dim=1).values

    # the fine level at the new ts, merged in t order with the coarse points' fine outputs
    density_f, rgb_f = _query(field, points(fine), hit[:, 0])
    ts_all, order = torch.sort(torch.cat([fine, ts], dim=1), dim=1)
    d_all = torch.cat([density_f[..., -1], density[..., -1]], dim=1).gather(1, order)
    c_all = torch.cat([rgb_f[..., -1, :], rgb[..., -1, :]], dim=1)
    c_all = c_all.gather(1, order[..., None].expand(-1, -1, 3))
    rgb_f, w_f, trans = _integrate(d_all, c_all, ts_all, t0, t1)
    depth = (w_f * ts_all).sum(dim=1, keepdim=True)
    zero = torch.zeros_like
    rgb_f, rgb_c, depth = (torch.where(hit, v, zero(v)) for v in (rgb_f, rgb_c, depth))
    trans = torch.where(hit, trans, torch.ones_like(trans))
    bg = torch.tensor(background, dtype=rgb_f.dtype, device=rgb_f.device)
    return {"rgb": rgb_f + trans * bg, "transmittance": trans, "rgb_coarse": rgb_c, "depth": depth}


def render_views(
    field: Field,
    cams: Cameras,
    n_coarse: int = 64,
    n_fine: int = 128,
    chunk: int = 4096,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render every camera. :return: [V, H, W, 3] colours in [0, 1] (float)."""
    origins, dirs = camera_rays(cams)
    out = [
        render_rays(field, o, d, n_coarse, n_fine, background, generator)["rgb"]
        for o, d in zip(origins.split(chunk), dirs.split(chunk), strict=True)
    ]
    return torch.cat(out).view(len(cams.origin), cams.height, cams.width, 3)
