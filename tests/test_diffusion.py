"""Properties of the EDM formulation: preconditioning, loss, σ grids, samplers and guidance.

The samplers are checked against the one case with a closed-form answer: for data ~ N(μ, s²)
(independently per channel) the optimal denoiser is D*(x; σ) = (s²·x + σ²·μ) / (s² + σ²), and the
probability-flow ODE driven by it maps N(μ, s² + σ_max²) onto the data distribution exactly.
"""

import math

import pytest
import torch
from torch import nn

from pointdiff.config import DiffusionConfig
from pointdiff.diffusion import (
    SAMPLERS,
    EDMLoss,
    KarrasDenoiser,
    clamp_denoised,
    classifier_free_guidance,
    get_sigmas_karras,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_train_sigmas,
)

MU = torch.tensor([-0.5, 0.0, 0.3, 0.8, -0.2, 0.1])
STD = torch.tensor([0.1, 0.5, 1.0, 0.05, 0.3, 0.7])


def optimal_denoiser(mu: torch.Tensor, std: torch.Tensor):
    """D*(x; σ) for data ~ N(mu, std²) per channel (last dim)."""

    def model(x, sigma, **_):
        s2, sig2 = std**2, sigma.reshape(-1, 1, 1) ** 2
        return (s2 * x + sig2 * mu) / (s2 + sig2)

    return model


# ----------------------------------------------------------------------------------------------
# Samplers recover a Gaussian data distribution


@pytest.mark.parametrize(
    "name, steps, kwargs",
    [
        ("heun", 32, {}),
        ("heun", 64, {"s_churn": 3.0}),  # point-e's base-stage setting
        ("heun", 64, {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0}),
        ("euler", 128, {}),
        ("euler", 256, {"s_churn": 3.0}),
        ("dpmpp_2m", 32, {}),
    ],
)
def test_sampler_recovers_gaussian(name, steps, kwargs):
    g = torch.Generator().manual_seed(0)
    sigmas = get_sigmas_karras(steps, 0.002, 80.0)
    x = torch.randn(4, 2048, 6, generator=g) * sigmas[0]
    if "s_churn" in kwargs:
        kwargs = {**kwargs, "generator": g}
    out = SAMPLERS[name](optimal_denoiser(MU, STD), x, sigmas, disable=True, **kwargs)
    flat = out.reshape(-1, 6)
    # 8192 samples per channel: standard errors are 1.1 % (mean, in units of s) and 0.8 % (std)
    assert ((flat.mean(0) - MU).abs() / STD).max() < 0.05
    assert ((flat.std(0) / STD) - 1).abs().max() < 0.05


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_sampler_convergence_order(name, order):
    """Against the exact ODE solution x(0) = μ + x_T·s/√(s² + σ_max²), doubling the steps
    divides the worst-case error by ≈ 2^order (Euler 1st order; Heun and DPM-Solver++(2M) 2nd)."""
    x_t = torch.randn(2, 1024, 6, generator=torch.Generator().manual_seed(1)) * 80.0
    exact = MU + x_t * STD / (STD**2 + 80.0**2).sqrt()
    errs = []
    for steps in (32, 64):
        sigmas = get_sigmas_karras(steps, 0.002, 80.0)
        out = SAMPLERS[name](optimal_denoiser(MU, STD), x_t, sigmas, disable=True)
        errs.append(((out - exact).abs().amax((0, 1)) / STD).max().item())
    assert errs[0] / errs[1] > 0.8 * 2**order
    assert errs[1] < (0.3 if order == 1 else 0.05)


def test_heun_call_count_and_callback():
    """Karras Alg. 2: 2 calls per step, Euler (1 call) on the last step to σ = 0."""
    calls, seen = [], []

    def model(x, sigma, **kw):
        calls.append(sigma.clone())
        return torch.zeros_like(x)

    sigmas = get_sigmas_karras(8, 0.01, 10.0)
    sample_heun(model, torch.randn(1, 4, 6) * 10, sigmas, disable=True, callback=seen.append)
    assert len(calls) == 2 * 8 - 1
    assert [c["i"] for c in seen] == list(range(8))
    assert len(seen) == 8 and set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_churn_raises_sigma_as_pointe():
    """γ = min(S_churn/N, √2−1) on every step when S_tmin = 0 (point-e: σ̂ = 1.047σ at 64)."""
    hats = []
    sigmas = get_sigmas_karras(64, 1e-3, 120.0)
    sample_heun(lambda x, s, **k: torch.zeros_like(x), torch.zeros(1, 2, 6), sigmas,
                disable=True, s_churn=3.0, callback=lambda c: hats.append(c["sigma_hat"] / c["sigma"]))  # fmt: skip
    assert torch.allclose(torch.stack(hats), torch.tensor(1 + 3 / 64), atol=1e-6)


@pytest.mark.parametrize("sampler", [sample_heun, sample_euler])
def test_churn_is_deterministic_with_generator(sampler):
    sigmas = get_sigmas_karras(6, 0.01, 10.0)
    x = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(0)) * 10
    model = optimal_denoiser(MU, STD)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sampler(model, x, sigmas, disable=True, s_churn=5.0, generator=g)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_extra_args_reach_the_model():
    seen = []

    def model(x, sigma, text_emb):
        seen.append(text_emb)
        return torch.zeros_like(x)

    emb = torch.randn(2, 5)
    for sampler in SAMPLERS.values():
        x, sigmas = torch.randn(2, 3, 6), get_sigmas_karras(2, 0.1, 1.0)
        sampler(model, x, sigmas, extra_args={"text_emb": emb}, disable=True)
    # 2 steps: Heun makes 3 model calls, every other sampler 2
    assert all(e is emb for e in seen) and len(seen) == 3 + 2 * (len(SAMPLERS) - 1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_generators(name):
    """One call for every sampler: a generator per batch row; churn only where it applies."""
    from pointdiff.diffusion import CHURN

    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    x = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(0)) * 10
    churn = {"s_churn": 3.0} if name in CHURN else {}
    sigmas = get_sigmas_karras(4, 0.1, 10.0)
    out = SAMPLERS[name](optimal_denoiser(MU, STD), x, sigmas, generator=gens, **churn)
    assert out.shape == x.shape and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# σ grids


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_karras_grid(n):
    s = get_sigmas_karras(n, 1e-3, 120.0, rho=7.0)
    assert s.shape == (n + 1,) and s[-1] == 0
    assert s[0].item() == pytest.approx(120.0, rel=1e-5)
    if n > 1:
        assert s[n - 1].item() == pytest.approx(1e-3, rel=1e-4)
        assert (s[1:] < s[:-1]).all()
        # the midpoint of the ramp is the ρ-mean of the ends (Karras eq. 5)
        mid = ((120.0 ** (1 / 7) + 1e-3 ** (1 / 7)) / 2) ** 7
        if n % 2 == 1:
            assert s[(n - 1) // 2].item() == pytest.approx(mid, rel=1e-4)


def test_karras_grid_bad_input():
    with pytest.raises(ValueError):
        get_sigmas_karras(0, 0.1, 1.0)
    with pytest.raises(ValueError):
        get_sigmas_karras(4, 2.0, 1.0)


def test_train_sigmas_lognormal():
    torch.manual_seed(0)
    s = sample_train_sigmas(20000, -1.2, 1.2)
    assert s.shape == (20000,) and (s > 0).all()
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.03)
    torch.manual_seed(0)
    assert torch.equal(s, sample_train_sigmas(20000, -1.2, 1.2))


# ----------------------------------------------------------------------------------------------
# EDM preconditioning and loss


class _Recorder(nn.Module):
    def __init__(self, out=None):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x_in, c_noise, **cond):
        self.calls.append((x_in, c_noise, cond))
        return torch.zeros_like(x_in) if self.out is None else self.out(x_in)


def test_edm_scalings_limits():
    d = KarrasDenoiser(_Recorder(), sigma_data=0.5)
    c_skip, c_out, c_in = d.get_scalings(torch.tensor([1e-6, 1e6], dtype=torch.float64))
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() == pytest.approx(0, abs=1e-5)
    assert c_skip[1].item() == pytest.approx(0, abs=1e-12) and c_out[1].item() == pytest.approx(0.5)
    sig = torch.logspace(-3, 3, 13, dtype=torch.float64)
    c_skip, c_out, c_in = d.get_scalings(sig)
    assert torch.allclose(c_in * (sig**2 + 0.25).sqrt(), torch.ones_like(sig))  # unit-var input
    # EDM eq. 8: effective target (x0 − c_skip·x)/c_out has unit variance for data std σ_d
    assert torch.allclose(c_skip**2 * sig**2 + (1 - c_skip) ** 2 * 0.25, c_out**2)


def test_karras_denoiser_forward():
    net = _Recorder(out=lambda x_in: torch.ones_like(x_in))
    d = KarrasDenoiser(net, sigma_data=0.5)
    x, sigma, emb = torch.randn(3, 8, 6), torch.tensor([0.1, 1.0, 10.0]), torch.randn(3, 4)
    out = d(x, sigma, text_emb=emb)
    c_skip, c_out, c_in = (c.reshape(3, 1, 1) for c in d.get_scalings(sigma))
    x_in, c_noise, cond = net.calls[0]
    assert torch.allclose(x_in, c_in * x) and torch.allclose(c_noise, 250 * sigma.log())
    assert cond["text_emb"] is emb
    assert torch.allclose(out, c_skip * x + c_out)
    assert torch.allclose(d(x, 1.0, text_emb=emb), d(x, torch.ones(3), text_emb=emb))
    with pytest.raises(ValueError):
        d(x, torch.ones(2))


def test_zero_net_is_optimal_for_standardised_data():
    """A zero-initialised output layer starts at D* for N(0, σ_d²) data (c_skip·x)."""
    d = KarrasDenoiser(_Recorder(), sigma_data=0.5)
    x, sigma = torch.randn(4, 8, 6), torch.tensor([0.01, 0.3, 2.0, 50.0])
    opt = optimal_denoiser(torch.zeros(6), torch.full((6,), 0.5))
    assert torch.allclose(d(x, sigma), opt(x, sigma), atol=1e-6)


def _gaussian_data(b, mu, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mu + std * torch.randn(b, 64, 6, generator=g)


def test_edm_loss_is_one_at_the_optimum():
    """λ(σ)·E‖D* − x0‖² = 1 per element at every σ when the data std is σ_d (EDM's weighting),
    and anything but the optimal denoiser scores higher."""
    sd = 0.5
    mu, std = MU, torch.full((6,), sd)
    x0 = _gaussian_data(2048, mu, std)
    loss_fn = EDMLoss(DiffusionConfig(p_mean=-1.2, p_std=1.2, sigma_data=sd))
    torch.manual_seed(1)
    loss = loss_fn(optimal_denoiser(mu, std), x0)
    assert loss.shape == (2048,)
    assert loss.mean().item() == pytest.approx(1.0, abs=0.03)
    # the same at low and high σ: redraw σ from the same RNG state and split
    torch.manual_seed(1)
    sig = sample_train_sigmas(2048, -1.2, 1.2)
    lo, hi = sig < sig.median(), sig >= sig.median()
    assert loss[lo].mean().item() == pytest.approx(1.0, abs=0.05)
    assert loss[hi].mean().item() == pytest.approx(1.0, abs=0.05)
    for wrong in (optimal_denoiser(mu + 0.2, std), optimal_denoiser(mu, std * 1.5)):
        torch.manual_seed(1)
        bad = loss_fn(wrong, x0)
        assert bad.mean() > loss.mean() + 0.05


def test_edm_loss_deterministic_and_trains():
    x0 = _gaussian_data(8, MU, STD)
    net = nn.Linear(6, 6)
    d = KarrasDenoiser(lambda x_in, c_noise, **k: net(x_in), sigma_data=0.5)
    loss_fn = EDMLoss()
    torch.manual_seed(0)
    a = loss_fn(d, x0)
    torch.manual_seed(0)
    assert torch.equal(a, loss_fn(d, x0))
    a.mean().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Guidance


class _CountingModel:
    """denoised = x·0.5 + mean(text_emb) + mean(low_res); counts calls and batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, text_emb, low_res=None):
        self.batches.append((x.shape[0], sigma.shape, text_emb.clone(), low_res))
        out = 0.5 * x + text_emb.mean(1).reshape(-1, 1, 1)
        return out if low_res is None else out + low_res.mean((1, 2)).reshape(-1, 1, 1)


def test_guidance_scale_one_is_conditional():
    m = _CountingModel()
    x, sigma, emb = torch.randn(3, 8, 6), torch.rand(3) + 0.1, torch.randn(3, 4)
    guided = classifier_free_guidance(m, 1.0)(x, sigma, text_emb=emb)
    assert torch.equal(guided, _CountingModel()(x, sigma, text_emb=emb))


@pytest.mark.parametrize("scale", [0.0, 3.0, 7.5])
def test_guidance_mixes_in_one_batched_call(scale):
    m = _CountingModel()
    x, sigma = torch.randn(3, 8, 6), torch.rand(3) + 0.1
    emb, low_res = torch.randn(3, 4) + 1.0, torch.randn(3, 5, 6)
    out = classifier_free_guidance(m, scale)(x, sigma, text_emb=emb, low_res=low_res)
    cond = _CountingModel()(x, sigma, text_emb=emb, low_res=low_res)
    null = _CountingModel()(x, sigma, text_emb=torch.zeros_like(emb), low_res=low_res)
    assert torch.allclose(out, null + scale * (cond - null), atol=1e-6)
    assert len(m.batches) == 1  # one model call per NFE
    if scale != 0:
        b, sig_shape, seen_emb, seen_low = m.batches[0]
        assert b == 6 and sig_shape == (6,)
        assert torch.equal(seen_emb[3:], torch.zeros(3, 4))  # null = zeros …
        assert torch.equal(seen_low, torch.cat([low_res, low_res]))  # … other kwargs kept


def test_guided_sampling_nfe_count():
    m = _CountingModel()
    sigmas = get_sigmas_karras(4, 0.01, 10.0)
    x, emb = torch.randn(2, 8, 6) * 10, torch.randn(2, 4)
    sample_dpmpp_2m(classifier_free_guidance(m, 3.0), x, sigmas, {"text_emb": emb}, disable=True)
    assert [b[0] for b in m.batches] == [4] * 4


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_guidance_interval(scale):
    """Inside (lo, hi] the guided mix, outside exactly the conditional model in one call of
    size B; a batch straddling the interval is mixed per example."""
    x, emb = torch.randn(3, 8, 6), torch.randn(3, 4) + 1.0
    cond = lambda s: _CountingModel()(x, s, text_emb=emb)  # noqa: E731
    null = lambda s: _CountingModel()(x, s, text_emb=torch.zeros_like(emb))  # noqa: E731
    m = _CountingModel()
    fn = classifier_free_guidance(m, scale, sigma_range=(0.5, 2.0))
    outside = torch.full((3,), 0.5)  # lo itself is outside
    assert torch.equal(fn(x, outside, text_emb=emb), cond(outside))
    assert [b[0] for b in m.batches] == [3]
    inside = torch.full((3,), 2.0)
    assert torch.allclose(
        fn(x, inside, text_emb=emb), null(inside) + scale * (cond(inside) - null(inside)), atol=1e-6
    )
    mixed = torch.tensor([0.1, 1.0, 5.0])
    out = fn(x, mixed, text_emb=emb)
    assert torch.equal(out[[0, 2]], cond(mixed)[[0, 2]])
    want = null(mixed) + scale * (cond(mixed) - null(mixed))
    assert torch.allclose(out[1], want[1], atol=1e-6)
    with pytest.raises(ValueError, match="sigma_range"):
        classifier_free_guidance(m, 3.0, sigma_range=(2.0, 1.0))


def test_guided_sampling_interval_saves_calls():
    """dpmpp_2m over a 4-step grid with guidance only for σ ≤ 1: the first steps run unguided
    (batch B), the later ones guided (batch 2B)."""
    m = _CountingModel()
    sigmas = get_sigmas_karras(4, 0.01, 10.0)
    x, emb = torch.randn(2, 8, 6) * 10, torch.randn(2, 4)
    fn = classifier_free_guidance(m, 3.0, sigma_range=(0.0, 1.0))
    sample_dpmpp_2m(fn, x, sigmas, {"text_emb": emb}, disable=True)
    want = [4 if s <= 1.0 else 2 for s in sigmas[:-1].tolist()]
    assert [b[0] for b in m.batches] == want and 2 in want and 4 in want


def test_guidance_bad_condition():
    with pytest.raises(ValueError, match="text_emb"):
        classifier_free_guidance(_CountingModel(), 3.0)(torch.randn(2, 4, 6), torch.ones(2))
    with pytest.raises(ValueError, match="batched"):
        fn = classifier_free_guidance(_CountingModel(), 3.0)
        fn(torch.randn(2, 4, 6), torch.ones(2), text_emb=torch.randn(3, 4))


def test_clamp_denoised():
    model = clamp_denoised(lambda x, sigma, **k: x * 10)
    out = model(torch.randn(2, 50, 6), torch.ones(2))
    assert out.min() >= -1 and out.max() <= 1 and (out.abs() == 1).any()
    assert math.isclose(clamp_denoised(lambda x, s: x, -0.5, 0.5)(torch.ones(1), None).item(), 0.5)
