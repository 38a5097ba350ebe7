"""Distances and set metrics: brute-force references, hand-built cases and properties."""

import itertools

import numpy as np
import pytest
import torch

from pointdiff.metrics import (
    MetricInputError,
    chamfer_distance,
    chamfer_l1,
    compute_set_metrics,
    emd_approx,
    emd_exact,
    f_score,
    jsd,
    mmd_cov,
    normalize_clouds,
    one_nn_accuracy,
    pairwise_matrix,
)

# Documented tolerance of the approxmatch EMD against the exact EMD (squared cost), measured on
# surface clouds (benchmarks/bench_metrics.py): it never undercuts the optimum and overshoots
# by a bounded factor. See the module docstring of pointdiff/metrics/distances.py.
EMD_APPROX_MAX_RATIO = {"squared": 3.5, "euclidean": 1.5}


def _surface_clouds(n, k, seed, squash=1.0):
    """n clouds of k points on random ellipsoids (a family of shapes, like a category)."""
    g = np.random.default_rng(seed)
    d = g.normal(size=(n, k, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    axes = g.uniform(0.15, 0.45, size=(n, 1, 3)) * np.array([1.0, 1.0, squash])
    return (d * axes).astype(np.float32)


def _brute_nn(x, y):
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return d.min(1), d.min(0)


# ----------------------------------------------------------------------------------------------
# Distances


def test_chamfer_matches_numpy_bruteforce():
    g = np.random.default_rng(0)
    x, y = g.uniform(-0.5, 0.5, (3, 200, 3)), g.uniform(-0.5, 0.5, (3, 150, 3))
    cd, l1, fs = chamfer_distance(x, y), chamfer_l1(x, y), f_score(x, y, 0.05)
    for b in range(3):
        dxy, dyx = _brute_nn(x[b], y[b])
        assert cd[b].item() == pytest.approx(dxy.mean() + dyx.mean(), rel=1e-4)
        assert l1[b].item() == pytest.approx(
            0.5 * (np.sqrt(dxy).mean() + np.sqrt(dyx).mean()), rel=1e-4
        )
        p, r = (dxy <= 0.05**2).mean(), (dyx <= 0.05**2).mean()
        assert fs[b].item() == pytest.approx(2 * p * r / (p + r), rel=1e-5)


def test_chamfer_of_identical_clouds_is_zero_and_symmetric():
    x = _surface_clouds(2, 300, 1)
    y = _surface_clouds(2, 300, 2)
    assert chamfer_distance(x, x).abs().max() < 1e-6
    assert torch.allclose(chamfer_distance(x, y), chamfer_distance(y, x), rtol=1e-5)


def test_emd_exact_matches_permutation_bruteforce():
    g = np.random.default_rng(3)
    x, y = g.normal(size=(1, 6, 3)), g.normal(size=(1, 6, 3))
    d2 = ((x[0][:, None] - y[0][None]) ** 2).sum(-1)
    best_sq = min(d2[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
    best_eu = min(np.sqrt(d2)[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert emd_exact(x, y).item() == pytest.approx(best_sq, rel=1e-5)
    assert emd_exact(x, y, "euclidean").item() == pytest.approx(best_eu, rel=1e-5)


@pytest.mark.parametrize("cost", ["squared", "euclidean"])
def test_emd_approx_within_documented_tolerance(cost):
    x, y = _surface_clouds(6, 256, 4), _surface_clouds(6, 256, 5)
    exact = emd_exact(x, y, cost).float()
    approx = emd_approx(x, y, cost)
    ratio = approx / exact
    assert (ratio >= 1 - 1e-4).all(), ratio  # a feasible plan never beats the optimum
    assert (ratio <= EMD_APPROX_MAX_RATIO[cost]).all(), ratio


def test_pairwise_matrix_chunking_and_symmetry():
    a, b = _surface_clouds(7, 64, 6), _surface_clouds(5, 64, 7)
    full = pairwise_matrix(a, b, "cd")
    tiny_chunks = pairwise_matrix(a, b, "cd", memory_mb=1e-6)  # one pair per chunk
    direct = torch.stack([chamfer_distance(np.repeat(a[i : i + 1], 5, 0), b) for i in range(7)])
    assert torch.allclose(full, tiny_chunks) and torch.allclose(full, direct, rtol=1e-5)
    sym = pairwise_matrix(a, None, "emd")
    assert torch.allclose(sym, sym.T) and (sym.diagonal() == 0).all()
    # approxmatch is not exactly symmetric: within-set matrices mirror d(a_i, a_j), i < j.
    full = pairwise_matrix(a, a, "emd").fill_diagonal_(0)
    assert torch.allclose(sym.triu(), full.triu(), rtol=1e-4)
    assert torch.allclose(sym, full, rtol=0.1)


# ----------------------------------------------------------------------------------------------
# Set metrics


def test_mmd_cov_hand_built():
    # 3 references; samples = two copies of ref 0 and one of ref 1: COV = 2/3, and MMD is the mean
    # over references of the distance to the nearest sample: (0 + 0 + d(r2, nearest)) / 3.
    refs = _surface_clouds(3, 128, 8)
    samples = refs[[0, 0, 1]]
    m_sr = pairwise_matrix(samples, refs, "cd")
    out = mmd_cov(m_sr)
    assert out["cov"] == pytest.approx(2 / 3)
    d_r2 = min(m_sr[0, 2], m_sr[2, 2])
    assert out["mmd"] == pytest.approx(float(d_r2) / 3, rel=1e-5)
    assert mmd_cov(pairwise_matrix(refs, refs, "cd"))["cov"] == 1.0


def test_1nna_of_a_set_against_its_copy_is_zero():
    # Each cloud's unique nearest neighbour (distance 0) is its copy in the other set, which has
    # the other label: every leave-one-out prediction is wrong. (Well posed when the clouds of
    # the set are pairwise distinct; see test_1nna_ties_are_scored_by_expectation.)
    s = _surface_clouds(20, 128, 9)
    res = compute_set_metrics(s, s.copy(), metrics=("cd", "emd"), with_jsd=False)
    assert res["1nna_cd"] == 0.0 and res["1nna_emd"] == 0.0
    assert res["cov_cd"] == 1.0 and res["mmd_cd"] == pytest.approx(0.0, abs=1e-6)


def test_1nna_ties_are_scored_by_expectation():
    # All 2n clouds identical: every point has 2n-1 tied neighbours, n-1 with its own label.
    n = 5
    same = np.repeat(_surface_clouds(1, 64, 10), n, axis=0)
    res = compute_set_metrics(same, same.copy(), metrics=("cd",), with_jsd=False)
    assert res["1nna_cd"] == pytest.approx((n - 1) / (2 * n - 1))


def test_1nna_near_half_for_iid_sets_and_one_for_separated_sets():
    a, b = _surface_clouds(120, 128, 11), _surface_clouds(120, 128, 12)
    assert abs(compute_set_metrics(a, b, metrics=("cd",), with_jsd=False)["1nna_cd"] - 0.5) < 0.1
    flat = _surface_clouds(30, 128, 13, squash=0.05)  # a different distribution: flat discs
    res = compute_set_metrics(flat, a[:30], metrics=("cd",), with_jsd=False)
    assert res["1nna_cd"] == 1.0


def test_one_nn_accuracy_hand_built():
    # refs at 0 and 10, samples at 1 and 11 (1-D "distances"): nearest of each is across sets.
    pos_r, pos_s = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 11.0])
    d = lambda u, v: (u[:, None] - v[None]).abs()  # noqa: E731
    out = one_nn_accuracy(d(pos_r, pos_r), d(pos_r, pos_s), d(pos_s, pos_s))
    assert out["acc"] == 0.0
    # refs at 0, 2; samples at 3, 10: 0 -> 2 right, 2 -> 3 wrong, 3 -> 2 wrong, 10 -> 3 right.
    pos_r, pos_s = torch.tensor([0.0, 2.0]), torch.tensor([3.0, 10.0])
    out = one_nn_accuracy(d(pos_r, pos_r), d(pos_r, pos_s), d(pos_s, pos_s))
    assert (out["acc"], out["acc_ref"], out["acc_sample"]) == (0.5, 0.5, 0.5)


def test_jsd_properties():
    a, b = _surface_clouds(40, 1024, 14), _surface_clouds(40, 1024, 15)
    flat = _surface_clouds(40, 1024, 16, squash=0.05)
    assert jsd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert jsd(a, b) == pytest.approx(jsd(b, a))
    assert 0 < jsd(a, b) < 0.5 * jsd(a, flat)  # same family << different family
    far = np.full((2, 50, 3), 0.3, np.float32), np.full((2, 50, 3), -0.3, np.float32)
    assert jsd(*far) == pytest.approx(1.0)  # disjoint occupancy: the base-2 maximum


def test_protocols():
    s = _surface_clouds(8, 128, 16)
    r = _surface_clouds(8, 128, 17)
    moved = s * 3.0 + np.float32([0.2, -0.1, 0.4])
    box = normalize_clouds(moved, "bbox")
    side = (box.amax(1) - box.amin(1)).amax(-1)
    assert torch.allclose(side, torch.full_like(side, 2.0))  # largest side spans [-1, 1]
    assert torch.allclose((box.amax(1) + box.amin(1)) / 2, torch.zeros(8, 3), atol=1e-6)
    assert torch.allclose(normalize_clouds(moved, "lion_box"), box * 0.5)
    # bbox makes the metrics invariant to per-shape placement and scale; global does not.
    kw = dict(metrics=("cd",), with_jsd=False)
    a = compute_set_metrics(s, r, "bbox", **kw)
    b = compute_set_metrics(moved, r, "bbox", **kw)
    assert a["mmd_cd"] == pytest.approx(b["mmd_cd"], rel=1e-4) and a["protocol"] == "bbox"
    g1 = compute_set_metrics(s, r, "global", **kw)
    g2 = compute_set_metrics(s * 2, r * 2, "global", **kw)
    assert g2["mmd_cd"] == pytest.approx(4 * g1["mmd_cd"], rel=1e-4)  # CD is squared: scale²
    assert g2["1nna_cd"] == g1["1nna_cd"] and g1["protocol"] == "global"


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda s: s[:, :0], "empty"),
        (lambda s: s[:0], "empty"),
        (lambda s: np.where(np.arange(s.shape[1])[None, :, None] == 3, np.nan, s), "NaN"),
        (lambda s: s[0, :, :2], "expected"),
    ],
)
def test_bad_inputs_give_clear_errors(bad, match):
    s = _surface_clouds(4, 32, 18)
    with pytest.raises(MetricInputError, match=match):
        compute_set_metrics(bad(s), s, metrics=("cd",))


def test_mismatched_point_counts():
    a, b = _surface_clouds(3, 32, 19), _surface_clouds(3, 48, 20)
    assert chamfer_distance(a, b).shape == (3,)  # CD handles different counts
    with pytest.raises(MetricInputError, match="equal point counts"):
        compute_set_metrics(a, b, metrics=("emd",))
    with pytest.raises(MetricInputError, match="protocol"):
        compute_set_metrics(a, a, protocol="unit")
    with pytest.raises(MetricInputError, match="at least 2"):
        compute_set_metrics(a[:1], a, metrics=("cd",))


def test_occupancy_counts_match_bruteforce_nearest_grid_point():
    from pointdiff.metrics.sets import _sphere_grid, occupancy_counts

    g = np.random.default_rng(21)
    pts = g.uniform(-0.8, 0.8, (2, 500, 3)).astype(np.float32)  # many outside the sphere/cube
    grid = _sphere_grid(28)
    d = ((pts.reshape(-1, 1, 3).astype(np.float64) - grid[None]) ** 2).sum(-1)
    expected = np.bincount(d.argmin(1), minlength=len(grid))
    assert (occupancy_counts(pts) == expected).all()
