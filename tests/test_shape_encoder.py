"""Shap-E's transmitter encoder (point cloud + RGB-D views → latent) against Shap-E's own code:
a tiny random transmitter (tests/data/shape_fixtures/shape_encoder.npz, width 32, 64 points, two
16×16 views), encoded with two seeds of its random neighbour shuffle."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pointdiff.compat.shape import (
    ShapeConversionError,
    ShapeDecoder,
    ShapeDecoderConfig,
    ShapeEncoder,
    ShapeEncoderConfig,
    convert_shape,
    load_shape,
    load_shape_encoder,
)
from pointdiff.nerf import Cameras, camera_rays

FIX = Path(__file__).parent / "data" / "shape_fixtures" / "shape_encoder.npz"
TINY = {  # the fixture's sizes (what the tensors cannot tell, and the input counts)
    "heads": 2,
    "data_ctx": 8,
    "points_ctx": 64,
    "views_ctx": 2,
    "conv_samples": 16,
    "image_size": 16,
}
CFG = ShapeEncoderConfig(
    width=32, layers=2, latent_ctx=32, channels=16, conv_hidden=(32, 32), **TINY
)


def _inputs(f, enc: ShapeEncoder):
    t = lambda k: torch.from_numpy(f[k])  # noqa: E731
    b, v, s = 2, 2, 16
    cams = Cameras(t("cam_origin"), t("cam_x"), t("cam_y"), t("cam_z"), s, s)
    o, d = (r.view(b, v, s, s, 3) for r in camera_rays(cams))
    pos = enc.backproject(o, d, t("depths")[:, :, 0], t("cam_z").view(b, v, 3))
    views = (t("views").permute(0, 1, 3, 4, 2) + 1) / 2  # the fixture holds Shap-E's [−1, 1]
    return t("points"), views, t("alphas")[:, :, 0], o, pos


def _encoder(f) -> ShapeEncoder:
    pre = "sd/encoder."
    sd = {k[len(pre) :]: torch.from_numpy(f[k]) for k in f.files if k.startswith(pre)}
    enc = ShapeEncoder(CFG)
    enc.load_state_dict({k: v for k, v in sd.items() if not k.startswith("params_proj.")})
    return enc.eval()


def _rel(mine: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(mine.numpy() - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("seed", [5, 6])
def test_encoder_matches_shape_e(seed):
    f = np.load(FIX)
    enc = _encoder(f)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)  # Shap-E: torch.manual_seed(seed)
        channels = enc.encode_to_channels(*_inputs(f, enc), generator=gen)
        latent = enc(*_inputs(f, enc), generator=torch.Generator().manual_seed(seed))
    assert _rel(channels, f[f"channels/{seed}"]) <= 1e-4
    assert _rel(latent, f[f"latent/{seed}"]) <= 1e-4
    assert latent.abs().max() < 1  # the tanh bottleneck


def test_multiview_tokens_match_shape_e():
    f = np.load(FIX)
    enc = _encoder(f)
    with torch.no_grad():
        tokens = enc._view_tokens(*_inputs(f, enc)[1:])
    assert tokens.shape == (2, 2, 4, 32)  # [B, V, (16/8)², width]
    assert _rel(tokens, f["mv_tokens"]) <= 1e-4


def test_transmitter_converts_and_encodes_to_decoder_params(tmp_path):
    """The converted transmitter: its encoder reloads bit-identically and its latent feeds the
    decoder half (``params_proj``) to Shap-E's weights."""
    f = np.load(FIX)
    src = tmp_path / "transmitter.pt"
    torch.save({k[3:]: torch.from_numpy(f[k]) for k in f.files if k.startswith("sd/")}, src)
    out = convert_shape(src, tmp_path / "tx", "transmitter", encoder_overrides=TINY)
    enc, dec = load_shape_encoder(out), load_shape(out)[0]
    assert enc.cfg == CFG and isinstance(dec, ShapeDecoder)
    assert dec.cfg == ShapeDecoderConfig(channels=16, hidden=8)
    ref = _encoder(f)
    for k, v in ref.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    with torch.no_grad():
        params = dec.latent_to_params(torch.from_numpy(f["latent/5"]))
    assert _rel(params[0], f["params/nerstf.mlp.0.weight"]) <= 1e-4


def test_decoder_dir_has_no_encoder(tmp_path):
    f = np.load(Path(FIX).with_name("shape_decoder.npz"))
    src = tmp_path / "decoder.pt"
    torch.save({k[3:]: torch.from_numpy(f[k]) for k in f.files if k.startswith("sd/")}, src)
    out = convert_shape(src, tmp_path / "dec", "decoder")
    with pytest.raises(ShapeConversionError, match="not the transmitter"):
        load_shape_encoder(out)


def test_encoder_checks_its_inputs():
    enc = ShapeEncoder(CFG)
    pts = torch.rand(1, 4, 6)
    views, alphas = torch.rand(1, 1, 16, 16, 3), torch.ones(1, 1, 16, 16)
    rays = torch.rand(1, 1, 16, 16, 3)
    with pytest.raises(ValueError, match="at least 8 points"):
        enc(pts, views, alphas, rays, rays)
    with pytest.raises(ValueError, match="16² pixels"):
        enc(torch.rand(1, 8, 6), views[:, :, :8, :8], alphas[:, :, :8, :8], rays, rays)


def test_more_points_and_views_than_released_counts_take_a_subset():
    """Shap-E attends to a random points_ctx / views_ctx subset; more inputs still encode."""
    enc = ShapeEncoder(CFG).eval()
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1, 100, 6, generator=g) * 2 - 1
    views, alphas = torch.rand(1, 3, 16, 16, 3, generator=g), torch.ones(1, 3, 16, 16)
    rays = torch.rand(1, 3, 16, 16, 3, generator=g)
    with torch.no_grad():
        z = enc(pts, views, alphas, rays, rays, generator=torch.Generator().manual_seed(1))
    assert z.shape == (1, 32 * 16) and torch.isfinite(z).all()
