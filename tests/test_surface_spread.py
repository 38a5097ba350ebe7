"""Surface spread (pointdiff.metrics.surface): reference values of the definition, and the
benchmark table (benchmarks/surface_spread.py)."""

from pathlib import Path

import numpy as np
import pytest

from pointdiff.metrics.surface import cloud_spread, point_spread, surface_spread


def _sphere(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cube(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3))


def test_plane_is_flat():
    g = np.random.default_rng(0)
    uv = g.uniform(-1, 1, (2048, 2))
    # a tilted plane, so no coordinate is constant
    basis = np.linalg.qr(g.normal(size=(3, 3)))[0][:, :2]
    assert cloud_spread(uv @ basis.T + 0.3) < 1e-6


@pytest.mark.parametrize("seed", [0, 1])
def test_sphere_surface(seed):
    # curvature only: RMS sagitta of a k-neighbourhood over the spacing, ~ k / sqrt(N)
    assert cloud_spread(_sphere(1024, seed)) == pytest.approx(0.16, abs=0.02)
    assert cloud_spread(_sphere(4096, seed)) == pytest.approx(0.08, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_cube(seed):
    assert cloud_spread(_cube(4096, seed)) == pytest.approx(0.87, abs=0.06)


def test_scale_and_translation_free():
    x = _sphere(1024, 3)
    assert cloud_spread(5.0 * x + 2.0) == pytest.approx(cloud_spread(x), rel=1e-9)


def test_set_median_and_shapes():
    clouds = np.stack([_sphere(1024, 0), _cube(1024, 0), _cube(1024, 1)])
    out = surface_spread(clouds)
    assert out["count"] == 3 and len(out["per_cloud"]) == 3
    assert out["surface_spread"] == pytest.approx(np.median(out["per_cloud"]))
    assert out["surface_spread"] > 0.5  # two volumes of three
    # a list of clouds of different sizes; extra channels (colour) are ignored
    rgb = np.concatenate([_sphere(512, 0), np.zeros((512, 3))], axis=1)
    assert surface_spread([rgb, _sphere(700, 1)])["count"] == 2
    assert point_spread(_sphere(100, 0)).shape == (100,)


def test_degenerate_inputs():
    dup = np.repeat(_sphere(100, 0), 3, axis=0)  # every point thrice: no spacing
    assert np.isnan(cloud_spread(dup))
    assert np.isnan(surface_spread([dup])["surface_spread"])
    with pytest.raises(ValueError):
        point_spread(_sphere(16, 0))
    with pytest.raises(ValueError):
        point_spread(np.zeros((100, 2)))


def test_benchmark_compares_saved_clouds_with_real_ones(tmp_path, monkeypatch):
    """benchmarks/surface_spread.py --clouds: real held-out spheres vs saved base (spheres) and
    final (cube volumes) clouds, each at its own point count."""
    from pointdiff.data import write_shards

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from surface_spread import main

    records = [
        {
            "id": f"s{i}",
            "caption": "a ball",
            "source": "test",
            "licence": "CC0",
            "split": "test" if i < 3 else "train",
            "coords": _sphere(4096, i),
            "colors": np.zeros((4096, 3), np.uint8),
        }
        for i in range(4)
    ]
    write_shards(records, tmp_path / "shards")
    saved = tmp_path / "clouds-seed0.npz"
    np.savez(
        saved,
        coords=np.stack([_sphere(1024, 10 + i) for i in range(3)]),
        final_coords=np.stack([_cube(4096, i) for i in range(3)]),
    )
    rows = main(["--data", str(tmp_path / "shards"), "--clouds", str(saved)])
    by = {(r["clouds"].split()[0], r["points"]): r for r in rows}
    assert by["real", 4096]["count"] == 3  # the train object is not held out
    # FPS subsets are evener than random samples: a wider spacing, so a smaller spread (0.10 vs
    # 0.16 for random points on a sphere at 1024)
    assert by["real", 1024]["surface_spread"] == pytest.approx(0.10, abs=0.02)
    assert 1.3 < by["clouds-seed0.npz", 1024]["ratio_to_real"] < 2.1  # random vs FPS spheres
    assert by["clouds-seed0.npz", 4096]["ratio_to_real"] > 5  # volumes vs spheres
