"""The discrete-time ε adapter (point-e's released weights) and its schedules.

Golden fixtures come from point-e's own code (tests/data/pointe_fixtures, meta.json);
the rest are properties: the adapter serving the Bayes-optimal discrete ε-model must be the
closed-form optimal continuous denoiser, and point-e's floored bridge must not be.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from pointdiff.diffusion import (
    ALPHAS_CUMPROD,
    DiscreteEpsDenoiser,
    clamp_denoised,
    classifier_free_guidance,
    get_sigmas_karras,
    sample_heun,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "pointe_fixtures"


def _fixture(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def textvec_tiny():
    """point-e's tiny textvec fixture model, converted by pointdiff.compat."""
    from pointdiff.compat.pointe import load_pointe_model

    weights = FIXTURES / "textvec_tiny.weights.safetensors"
    return load_pointe_model(weights, "base40M-textvec", heads=2, num_points=64)


# ----------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedules_match_pointe(name):
    ref = _fixture("schedules")[f"{name}_alphas_cumprod"]
    ours = ALPHAS_CUMPROD[name]()
    assert ours.dtype == torch.float64 and ours.shape == (1024,)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize(
    "name, lo, hi", [("cosine", 0.0063, 2.08e4), ("linear", 0.0099, 157.3)]
)  # point-e.md §4
def test_schedule_sigma_range(name, lo, hi):
    d = DiscreteEpsDenoiser(None, ALPHAS_CUMPROD[name]())
    assert d.sigma_range[0] == pytest.approx(lo, rel=0.01)
    assert d.sigma_range[1] == pytest.approx(hi, rel=0.01)


# ----------------------------------------------------------------------------------------------
# σ -> t


def test_sigma_to_t_default_is_continuous_and_exact_is_floored():
    acp = ALPHAS_CUMPROD["cosine"]()
    cont = DiscreteEpsDenoiser(None, acp)
    floor = DiscreteEpsDenoiser(None, acp, exact_pointe=True)
    sig = torch.logspace(-3, 4.5, 2000)  # spans below σ(0) and above σ(T−1)
    t_c, t_f = cont.sigma_to_t(sig), floor.sigma_to_t(sig)
    assert t_c.min() == 0 and t_c.max() == 1023 and t_f.min() == 0 and t_f.max() == 1023
    inside = (sig > cont.sigma_range[0]) & (sig < cont.sigma_range[1])
    assert (t_c[inside].diff() > 0).all()  # strictly increasing: no plateaus
    assert torch.equal(t_f, t_f.floor())
    assert ((t_c - t_f) > -1e-3).all() and ((t_c - t_f) < 1 + 1e-3).all()
    # on the table's own σ values t is the step index
    k = torch.arange(0, 1024, 7)
    sig_k = (1 / acp[k] - 1).sqrt()
    assert torch.allclose(cont.sigma_to_t(sig_k), k.double(), atol=1e-6)


def test_pointe_grid_collapse():
    """point-e.md §5: with σ_min = 1e-3 the last 6 of 64 Karras sigmas floor to t = 0."""
    sig = get_sigmas_karras(64, 1e-3, 120.0)[:-1]
    floor = DiscreteEpsDenoiser(None, ALPHAS_CUMPROD["cosine"](), exact_pointe=True)
    cont = DiscreteEpsDenoiser(None, ALPHAS_CUMPROD["cosine"]())
    assert int((floor.sigma_to_t(sig) == 0).sum()) == 6
    assert int((cont.sigma_to_t(sig) == 0).sum()) == 5  # only those below σ(0) = 0.0063
    assert floor.sigma_to_t(sig)[0].item() == 1017  # σ_max = 120 -> t ≈ 1017.5


# ----------------------------------------------------------------------------------------------
# ε -> denoised with a stand-in net


class _OracleEps(torch.nn.Module):
    """Bayes-optimal ε for data ~ N(mu, s²) per channel on a discrete schedule, at fractional t
    (ᾱ interpolated linearly in t, the inverse of the adapter's σ -> t map), as [B,N,12]."""

    def __init__(self, acp, mu, std):
        super().__init__()
        self.acp, self.mu, self.std, self.seen_t = acp.numpy(), mu, std, []

    def forward(self, x_t, t, **cond):
        self.seen_t.append(t)
        a = np.interp(t.double().numpy(), np.arange(len(self.acp)), self.acp)
        a = torch.as_tensor(a, dtype=x_t.dtype).reshape(-1, 1, 1)
        # x_t = √a·x0 + √(1−a)·ε, x0 ~ N(mu, s²): E[x0|x_t] by Gaussian conditioning
        s2 = self.std**2
        x0 = self.mu + a.sqrt() * s2 * (x_t - a.sqrt() * self.mu) / (a * s2 + 1 - a)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.randn_like(eps)], -1)  # + 6 "variance" channels


MU = torch.tensor([-0.5, 0.0, 0.3, 0.8, -0.2, 0.1])
STD = torch.tensor([0.1, 0.5, 0.3, 0.05, 0.3, 0.2])


def _optimal(x, sigma):
    s2, sig2 = STD**2, sigma.reshape(-1, 1, 1) ** 2
    return (s2 * x + sig2 * MU) / (s2 + sig2)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_default_adapter_is_the_optimal_denoiser(schedule):
    acp = ALPHAS_CUMPROD[schedule]()
    net = _OracleEps(acp, MU, STD)
    d = DiscreteEpsDenoiser(net, acp)
    sigma = torch.tensor([0.01, 0.05, 0.3, 1.7, 9.0, 60.0])
    x = (
        MU
        + torch.randn(6, 256, 6, generator=torch.Generator().manual_seed(0))
        * (STD**2 + sigma.reshape(-1, 1, 1) ** 2).sqrt()
    )
    out = d(x, sigma)
    err = (out - _optimal(x, sigma)).abs() / (1 + sigma.reshape(-1, 1, 1))
    assert err.max().item() < 1e-5
    assert net.seen_t[0].dtype == torch.float32
    assert not torch.equal(net.seen_t[0], net.seen_t[0].floor())  # fractional t


@pytest.mark.parametrize("schedule, sigma_max", [("cosine", 120.0), ("linear", 160.0)])
def test_default_adapter_beats_pointe_floor(schedule, sigma_max):
    """Over point-e's 64-step grid (σ down to 1e-3, below σ(0)) the default is closer to the
    optimal denoiser than point-e's floored bridge, and tends to x as σ → 0."""
    acp = ALPHAS_CUMPROD[schedule]()
    net = _OracleEps(acp, MU, STD)
    sig = get_sigmas_karras(64, 1e-3, sigma_max)[:-1]
    x = (
        MU
        + torch.randn(64, 256, 6, generator=torch.Generator().manual_seed(0))
        * (STD**2 + sig.reshape(-1, 1, 1) ** 2).sqrt()
    )
    errs = {}
    for exact in (False, True):
        out = DiscreteEpsDenoiser(net, acp, exact_pointe=exact)(x, sig)
        errs[exact] = ((out - _optimal(x, sig)).abs() / STD).amax((1, 2))
    assert errs[False].max() < errs[True].max() / 3  # measured: ÷4 for both schedules
    assert errs[False].median() < errs[True].median() / 10  # measured: ÷40 (cosine), ÷19
    tiny = DiscreteEpsDenoiser(net, acp)(x[-1:], torch.tensor([1e-5]))
    assert (tiny - x[-1:]).abs().max() < 1e-3


@pytest.mark.parametrize("schedule, sigma_max", [("cosine", 120.0), ("linear", 160.0)])
def test_adapter_samples_gaussian_with_heun(schedule, sigma_max):
    """64 Heun steps on point-e's grid through the adapter recover the data distribution."""
    acp = ALPHAS_CUMPROD[schedule]()
    d = DiscreteEpsDenoiser(_OracleEps(acp, MU, STD), acp)
    sigmas = get_sigmas_karras(64, 1e-3, sigma_max)
    x = torch.randn(4, 1024, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = sample_heun(d, x, sigmas, disable=True).reshape(-1, 6)
    assert ((out.mean(0) - MU).abs() / STD).max() < 0.06
    assert ((out.std(0) / STD) - 1).abs().max() < 0.04  # point-e's floor: 6.5 % off (linear)


def test_adapter_bad_channels():
    d = DiscreteEpsDenoiser(lambda x, t: x[..., :3], ALPHAS_CUMPROD["cosine"]())
    with pytest.raises(ValueError, match="channels"):
        d(torch.zeros(1, 4, 6), torch.ones(1))
    with pytest.raises(ValueError, match="channels"):
        d(torch.zeros(1, 4, 3), torch.ones(1))
    with pytest.raises(ValueError, match="decreasing"):
        DiscreteEpsDenoiser(None, ALPHAS_CUMPROD["cosine"]().flip(0))


# ----------------------------------------------------------------------------------------------
# Golden fixtures from point-e's own code (need pointdiff.compat.pointe)


def _to_last(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).contiguous()  # point-e [B,C,N] -> ours [B,N,C]


def test_bridge_matches_pointe(textvec_tiny):
    """GaussianToKarrasDenoiser.denoise(x, σ, clip_denoised=True) at σ = 0.002, 0.5, 3, 80."""
    fx = _fixture("textvec_tiny.bridge")
    d = DiscreteEpsDenoiser(textvec_tiny, ALPHAS_CUMPROD["cosine"](), exact_pointe=True)
    with torch.no_grad():
        out = clamp_denoised(d)(_to_last(fx["x_t"]), fx["sigmas"], text_emb=fx["embeddings"])
    assert (out - _to_last(fx["denoised"])).abs().max().item() <= 1e-4


def test_guided_heun_matches_pointe(textvec_tiny):
    """8-step guided (scale 3) Heun from the fixture's x_T, s_churn = 0, σ ∈ [1e-3, 120], with
    point-e's exact σ → t bridge; point-e's sample is the last step's denoised (pred_xstart)."""
    fx = _fixture("textvec_tiny.karras")
    d = DiscreteEpsDenoiser(textvec_tiny, ALPHAS_CUMPROD["cosine"](), exact_pointe=True)
    # point-e clamps each half, then mixes (clip_denoised inside the guided denoiser)
    model = classifier_free_guidance(clamp_denoised(d), 3.0)
    sigmas = get_sigmas_karras(8, 1e-3, 120.0, 7.0)
    last = {}
    out = sample_heun(
        model,
        _to_last(fx["x_T"]),
        sigmas,
        {"text_emb": fx["embeddings"]},
        callback=last.update,
        disable=True,
    )
    ref = _to_last(fx["sample"])  # unscaled: xyz/2, (rgb+1)·127.5
    ref = torch.cat([ref[..., :3] * 2, ref[..., 3:] / 127.5 - 1], -1)
    # float32 ε error ~1e-7 is multiplied by σ = 120 at the first step: ≈ 2.5e-5 measured
    assert (out - ref).abs().max().item() <= 1e-4
    assert (last["denoised"] - ref).abs().max().item() <= 1e-4
