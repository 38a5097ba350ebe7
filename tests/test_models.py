"""Networks: shapes, equivariance, init, conditioning, errors (tiny configs, CPU)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pointdiff.config import DenoiserConfig, UpsamplerConfig, get_preset
from pointdiff.models import (
    MODELS,
    ModelInputError,
    PointDenoiser,
    PointUpsampler,
    build_model,
    count_params,
    layers,
)
from pointdiff.models.layers import (
    CrossAttention,
    ResidualCrossAttentionBlock,
    SelfAttention,
    attention,
    timestep_embedding,
)

TINY = DenoiserConfig(width=32, depth=2, heads=2, num_points=16, cond_dim=8, grid_dim=12)
TINY_UP = UpsamplerConfig(width=32, depth=2, heads=2, num_points=24, num_cond_points=8, grid_dim=12)


def _randomize_output(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The output projection is zero at init; give it weights so outputs depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.output_proj.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.3)
        model.output_proj.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.1)
    return model


def _denoiser(seed=0, **kw) -> PointDenoiser:
    torch.manual_seed(seed)
    return _randomize_output(PointDenoiser(dataclasses.replace(TINY, **kw)), seed).eval()


def _upsampler(seed=0, **kw) -> PointUpsampler:
    torch.manual_seed(seed)
    return _randomize_output(PointUpsampler(dataclasses.replace(TINY_UP, **kw)), seed).eval()


def _inputs(cfg, b=3, n=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = n or cfg.num_points
    kw = {}
    if cfg.cond_dim:
        kw["text_emb"] = torch.randn(b, cfg.cond_dim, generator=g)
    if cfg.grid_tokens:
        kw["grid"] = torch.randn(b, cfg.grid_tokens, cfg.grid_dim, generator=g)
    if isinstance(cfg, UpsamplerConfig):
        kw["low_res"] = torch.randn(b, cfg.num_cond_points, cfg.in_channels, generator=g)
    x = torch.randn(b, n, cfg.in_channels, generator=g)
    c_noise = torch.randn(b, generator=g) * 100
    return x, c_noise, kw


# ----------------------------------------------------------------------------------------------
# Shapes, init, backward


@pytest.mark.parametrize("cond_dim", [0, 8])
@pytest.mark.parametrize("grid_tokens", [0, 5])
@pytest.mark.parametrize("out_channels", [6, 12])
def test_denoiser_shapes_and_zero_init(cond_dim, grid_tokens, out_channels):
    cfg = dataclasses.replace(
        TINY, cond_dim=cond_dim, grid_tokens=grid_tokens, out_channels=out_channels
    )
    model = PointDenoiser(cfg)
    x, c_noise, kw = _inputs(cfg)
    out = model(x, c_noise, **kw)
    assert out.shape == (3, cfg.num_points, out_channels)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output projection
    # any number of points works (no positional embedding)
    assert model(x[:, :5], c_noise, **kw).shape == (3, 5, out_channels)


@pytest.mark.parametrize("cond_dim", [0, 8])
@pytest.mark.parametrize("grid_tokens", [0, 5])
def test_upsampler_returns_only_new_points(cond_dim, grid_tokens):
    cfg = dataclasses.replace(TINY_UP, cond_dim=cond_dim, grid_tokens=grid_tokens)
    model = PointUpsampler(cfg)
    x, c_noise, kw = _inputs(cfg)
    out = model(x, c_noise, **kw)
    assert out.shape == (3, cfg.num_points, cfg.out_channels)
    assert torch.equal(out, torch.zeros_like(out))
    # M low-res points and N new points are independent sizes
    kw["low_res"] = kw["low_res"][:, :3]
    assert model(x[:, :7], c_noise, **kw).shape == (3, 7, cfg.out_channels)


@pytest.mark.parametrize("kind", ["denoiser", "upsampler"])
def test_backward_reaches_every_parameter(kind):
    model = (_denoiser if kind == "denoiser" else _upsampler)(grid_tokens=3).train()
    x, c_noise, kw = _inputs(model.cfg)
    model(x, c_noise, **kw).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_grad_checkpointing_matches_plain_backward():
    model = _denoiser().train()
    x, c_noise, kw = _inputs(model.cfg)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(0)  # same condition-dropout draws
        model(x, c_noise, **kw).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# Properties


@pytest.mark.parametrize("kind", ["denoiser", "upsampler"])
def test_permutation_equivariance_over_points(kind):
    model = (_denoiser if kind == "denoiser" else _upsampler)(grid_tokens=3)
    x, c_noise, kw = _inputs(model.cfg)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(x, c_noise, **kw)
        out_p = model(x[:, perm], c_noise, **kw)
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-5)
    if kind == "upsampler":  # the low-res cloud is a set too: its order changes nothing
        kw["low_res"] = kw["low_res"][:, torch.randperm(kw["low_res"].shape[1])]
        with torch.no_grad():
            torch.testing.assert_close(model(x, c_noise, **kw), out, atol=1e-5, rtol=1e-5)


def test_outputs_depend_on_noise_level_text_and_low_res():
    model = _denoiser()
    x, c_noise, kw = _inputs(model.cfg)
    with torch.no_grad():
        out = model(x, c_noise, **kw)
        assert not torch.allclose(out, model(x, c_noise + 1.0, **kw))
        assert not torch.allclose(out, model(x, c_noise, text_emb=-kw["text_emb"]))
        # the text vector is L2-normalised: its scale does not matter
        torch.testing.assert_close(out, model(x, c_noise, text_emb=5 * kw["text_emb"]))
    up = _upsampler()
    x, c_noise, kw = _inputs(up.cfg)
    with torch.no_grad():
        out = up(x, c_noise, **kw)
        assert not torch.allclose(out, up(x, c_noise, low_res=kw["low_res"] + 0.5))


def test_null_condition_is_zeros():
    model = _denoiser(grid_tokens=3)
    x, c_noise, kw = _inputs(model.cfg)
    zeros = {k: torch.zeros_like(v) for k, v in kw.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(x, c_noise), model(x, c_noise, **zeros))


def test_cond_dropout():
    x, c_noise, kw = _inputs(TINY)
    # p = 1 in training mode: every sample gets the null condition
    model = _denoiser(cond_drop_prob=1.0).train()
    with torch.no_grad():
        torch.testing.assert_close(model(x, c_noise, **kw), model(x, c_noise))
    # p = 0: the condition is kept; eval mode never drops
    model = _denoiser(cond_drop_prob=0.0).train()
    with torch.no_grad():
        assert not torch.allclose(model(x, c_noise, **kw), model(x, c_noise))
    model = _denoiser(cond_drop_prob=1.0).eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, c_noise, **kw), model(x, c_noise))
    # p = 0.5 drops per sample: some rows equal the null output, the others do not
    model = _denoiser(cond_drop_prob=0.5).train()
    x, c_noise, kw = _inputs(TINY, b=64)
    torch.manual_seed(0)
    with torch.no_grad():
        null = model(x, c_noise)
        dropped = (model(x, c_noise, **kw) - null).abs().amax(dim=(1, 2)) < 1e-6
    assert 10 < dropped.sum() < 54


def test_upsampler_low_res_noise_only_in_training():
    up = _upsampler(low_res_noise=0.1)
    x, c_noise, kw = _inputs(up.cfg)
    with torch.no_grad():
        a, b = up(x, c_noise, **kw), up(x, c_noise, **kw)
        torch.testing.assert_close(a, b)
        up.train()
        assert not torch.allclose(up(x, c_noise, **kw), a)


def test_bf16_autocast_close_to_fp32():
    model = _denoiser()
    x, c_noise, kw = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(x, c_noise, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, c_noise, **kw)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


# ----------------------------------------------------------------------------------------------
# Layers


def test_timestep_embedding_is_pointe_formula():
    t = torch.tensor([0, 7, 1023])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    args = t[:, None].float() * freqs
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], dim=1))
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_self_attention_is_softmax_attention():
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, init_std=0.3)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.c_qkv(x).split(16, dim=-1)
    q, k, v = (t.view(2, 5, 4, 4).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    ref = attn.c_proj((w @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), ref)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize(
    "b, h, tq, tk, kv_batch", [(2, 3, 300, 300, 2), (2, 2, 1100, 260, 1), (1, 1, 256, 256, 1)]
)
def test_attention_head_loop_is_softmax_attention(monkeypatch, b, h, tq, tk, kv_batch):
    """bf16 inference on a CPU runs the head loop (here in equal query blocks of at most 128
    rows): softmax attention to bf16 accuracy, at most twice the fused kernel's error."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, tq, 16, generator=g)
    k, v = (torch.randn(kv_batch, h, tk, 16, generator=g) for _ in range(2))
    w = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4, dim=-1)
    ref = w @ v.double()
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fused = F.scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))

    def no_fused(*args, **kwargs):
        raise AssertionError("the fused kernel ran")

    monkeypatch.setattr(layers, "_SCORE_BLOCK", 128 * tk)
    monkeypatch.setattr(F, "scaled_dot_product_attention", no_fused)
    with torch.no_grad():
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == (b, h, tq, 16)
    assert _rel_err(out, ref) < 2 * _rel_err(fused, ref) + 1e-3, (out, fused)


def test_attention_uses_the_fused_kernel_elsewhere(monkeypatch):
    """fp32, training (inputs needing gradients) and small score blocks: PyTorch's kernel,
    bit for bit."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 300, 16, generator=g) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    small = [t[:, :, :200].bfloat16() for t in (q, k, v)]  # 200² < 2^16 scores
    assert torch.equal(attention(*small), F.scaled_dot_product_attention(*small))
    qb = q.bfloat16().requires_grad_()
    out = attention(qb, k.bfloat16(), v.bfloat16())
    assert torch.equal(out, F.scaled_dot_product_attention(qb, k.bfloat16(), v.bfloat16()))
    out.float().sum().backward()
    assert qb.grad is not None and qb.grad.abs().sum() > 0


@pytest.mark.skipif(layers._FUSED_LINEAR is None, reason="this torch build has no oneDNN bf16")
def test_linear_gelu_fused_is_gelu_of_linear():
    """bf16 weights, no autograd: the fused oneDNN call is GELU(xWᵀ + b) to bf16 accuracy,
    no further from float64 than the unfused bf16 ops; 3-D inputs keep their shape."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96).bfloat16()
    x = torch.randn(2, 70, 64)
    ref = F.gelu(F.linear(x.double(), layer.weight.double(), layer.bias.double()))
    with torch.no_grad():
        fused = layers.linear_gelu(x, layer)
        plain = F.gelu(layer(x.bfloat16()))
    assert fused.shape == (2, 70, 96) and fused.dtype == torch.bfloat16
    assert (fused.double() - ref).abs().max() <= (plain.double() - ref).abs().max()
    assert _rel_err(fused, ref) < 4e-3
    fp32 = torch.nn.Linear(64, 96)
    fp32.load_state_dict(layer.float().state_dict())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # casts as for the layer
        assert torch.equal(layers.linear_gelu(x, fp32), fused)


def test_linear_gelu_unfused_elsewhere(monkeypatch):
    """fp32 weights, autograd, or no oneDNN: exactly ``F.gelu(layer(x))``."""
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 12), torch.randn(3, 8)
    assert torch.equal(layers.linear_gelu(x, layer), F.gelu(layer(x)))
    bf = torch.nn.Linear(8, 12).bfloat16()
    out = layers.linear_gelu(x.bfloat16(), bf)  # weights need gradients: autograd path
    assert torch.equal(out, F.gelu(bf(x.bfloat16())))
    out.float().sum().backward()
    assert bf.weight.grad is not None
    monkeypatch.setattr(layers, "_FUSED_LINEAR", None)
    with torch.no_grad():
        assert torch.equal(layers.linear_gelu(x.bfloat16(), bf), F.gelu(bf(x.bfloat16())))


def test_cross_attention_cached_kv_matches_and_broadcasts():
    torch.manual_seed(0)
    block = ResidualCrossAttentionBlock(16, 2, init_std=0.3, data_width=8)
    x, data = torch.randn(3, 5, 16), torch.randn(1, 7, 8)
    ref = block(x, data.expand(3, -1, -1))
    torch.testing.assert_close(block(x, kv=block.project_kv(data)), ref)
    with pytest.raises(ValueError):
        CrossAttention(16, 3)


# ----------------------------------------------------------------------------------------------
# Registry and errors


def test_build_model_registry():
    assert set(MODELS) >= {"denoiser", "upsampler", "sdf"}
    assert isinstance(build_model(get_preset("tiny")), PointDenoiser)
    assert isinstance(build_model(get_preset("upsample_tiny")), PointUpsampler)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model(dataclasses.replace(TINY, kind="nope"))
    with torch.device("meta"):
        assert count_params(build_model(get_preset("base40M"))) == 40_333_836 - 6 * 513


def test_bad_inputs_raise_clear_errors():
    model = _denoiser()
    x, c_noise, kw = _inputs(model.cfg)
    with pytest.raises(ModelInputError, match="x must be"):
        model(x[..., :3], c_noise, **kw)
    with pytest.raises(ModelInputError, match="c_noise"):
        model(x, c_noise[:2], **kw)
    with pytest.raises(ModelInputError, match="text_emb"):
        model(x, c_noise, text_emb=kw["text_emb"][:, :4])
    with pytest.raises(ModelInputError, match="grid"):
        model(x, c_noise, grid=torch.zeros(3, 4, 12))
    with pytest.raises(ModelInputError, match="unconditional"):
        _denoiser(cond_dim=0)(x, c_noise, **kw)
    up = _upsampler()
    x, c_noise, kw = _inputs(up.cfg)
    with pytest.raises(ModelInputError, match="low_res"):
        up(x, c_noise)
    with pytest.raises(ModelInputError, match="low_res"):
        up(x, c_noise, low_res=kw["low_res"][:1])
    with pytest.raises(ValueError, match="heads"):
        PointDenoiser(dataclasses.replace(TINY, heads=3))


@pytest.mark.parametrize("kind", ["denoiser", "upsampler"])
def test_bf16_weights_take_fp32_inputs(kind):
    model = (_denoiser if kind == "denoiser" else _upsampler)(grid_tokens=3)
    x, c_noise, kw = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(x, c_noise, **kw)
        out = model.to(torch.bfloat16)(x, c_noise, **kw)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_cond_bias_starts_as_the_pointe_design_and_learns_from_the_first_step():
    plain = _denoiser()
    biased = PointDenoiser(dataclasses.replace(TINY, cond_bias=True)).eval()
    missing = biased.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["text_bias.weight", "text_bias.bias"]  # the only new parameters
    x, c_noise, kw = _inputs(plain.cfg)
    with torch.no_grad():  # zero-init: the same function as the model without it
        torch.testing.assert_close(biased(x, c_noise, **kw), plain(x, c_noise, **kw))
    biased(x, c_noise, **kw).square().mean().backward()
    assert biased.text_bias.weight.grad.abs().sum() > 0  # a direct path to the condition
    with torch.no_grad():
        biased.text_bias.weight.normal_()
        out = biased(x, c_noise, **kw)
        assert not torch.allclose(out, plain(x, c_noise, **kw))
        zeros = {"text_emb": torch.zeros_like(kw["text_emb"])}  # null condition: bias term only
        torch.testing.assert_close(biased(x, c_noise), biased(x, c_noise, **zeros))
