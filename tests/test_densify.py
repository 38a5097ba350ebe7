"""Surface projection and the surface upsampler (``pointdiff.densify``); as a pipeline stage
in ``test_pipeline.py``."""

import pytest
import torch

from pointdiff.densify import project_to_surface, upsample_on_surface


def _noisy_plane(n=512, noise=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 2 - 1
    z = noise * torch.randn(n, 1, generator=g)
    rgb = torch.rand(n, 3, generator=g) * 2 - 1
    return torch.cat([xy, z, rgb], 1)[None]  # [1, N, 6]


def test_projection_removes_the_normal_noise_and_keeps_the_layout():
    x = _noisy_plane()
    assert project_to_surface(x, 0.0) is x
    full = project_to_surface(x, 1.0)
    half = project_to_surface(x, 0.5)
    twice = project_to_surface(x, 2.0)
    thick = lambda c: c[0, :, 2].std().item()  # noqa: E731
    assert thick(full) < 0.5 * thick(x) and thick(full) < thick(half) < thick(x)
    assert thick(twice) < thick(full)
    assert torch.allclose(project_to_surface(full, 1.0), twice)  # a pass refits the planes
    # tangential coordinates barely move; colours are untouched
    assert (full[0, :, :2] - x[0, :, :2]).abs().max() < 0.02
    assert torch.equal(full[..., 3:], x[..., 3:])
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            project_to_surface(x, bad)


def test_projection_is_rotation_equivariant():
    x = _noisy_plane(seed=1)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)))
    rot = x.clone()
    rot[0, :, :3] = x[0, :, :3] @ q.T
    a = project_to_surface(rot, 0.7)[0, :, :3]
    b = project_to_surface(x, 0.7)[0, :, :3] @ q.T
    assert torch.allclose(a, b, atol=1e-4)


def test_upsampled_points_lie_on_the_surface_between_neighbours():
    x = _noisy_plane(noise=0.0)
    g = [torch.Generator().manual_seed(0)]
    new = upsample_on_surface(x, 3 * 512, g)
    assert new.shape == (1, 1536, 6)
    assert new[0, :, 2].abs().max() < 1e-5  # on the plane
    assert new[0, :, :2].abs().max() <= 1.0  # between points of the cloud
    assert new[0, :, 3:].min() >= -1 and new[0, :, 3:].max() <= 1  # colours interpolated
    # every new point is close to the cloud: no strays
    d = torch.cdist(new[0, :, :3], x[0, :, :3]).min(1).values
    nn = torch.cdist(x[0, :, :3], x[0, :, :3]).topk(2, largest=False).values[:, 1]
    assert d.max() < 4 * nn.median()


def test_upsampling_is_per_cloud_deterministic():
    a, b = _noisy_plane(seed=3), _noisy_plane(seed=4)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    pair = upsample_on_surface(torch.cat([a, b]), 100, gens)
    alone = upsample_on_surface(b, 100, [torch.Generator().manual_seed(8)])
    assert torch.equal(pair[1], alone[0])
    with pytest.raises(ValueError, match="one generator per cloud"):
        upsample_on_surface(torch.cat([a, b]), 10, [torch.Generator()])
    with pytest.raises(ValueError, match="too small"):
        upsample_on_surface(a[:, :4], 10, [torch.Generator()])
