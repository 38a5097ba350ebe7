"""Shap-E on a CPU: pointdiff vs Shap-E's own code, side by side in one run, same inputs.

    .venv/bin/python benchmarks/bench_shape.py --shape-src /path/to/shap-e   # ~10 min, 1 thread

Three jobs at the released sizes with random weights (speed does not depend on them):

* **text300M guided step**: one Heun step of Shap-E's sampler (2 guided calls of the 24-block,
  width-1024 denoiser on [cond; null], 1026 tokens each) from x_T at σ = 160. Shap-E: its
  ``karras_sample_progressive`` (what ``sample_latents`` runs) on the first two σ of its 64-step
  grid (its ``get_sigmas_karras`` truncated), so it stops after that step; fp32, and under
  ``torch.autocast`` bf16 as its notebooks run it (``use_fp16=True`` is bf16 on a CPU).
* **STF decode**: one latent → mesh with vertex colours on Shap-E's 128³ grid. Shap-E:
  ``decode_latent_mesh`` (its 20 throw-away 2×2 renders included; without PyTorch3D they use its
  ray caster). pointdiff: ``latent_to_params`` + ``extract_mesh`` (SDF grid, marching cubes,
  texture at the vertices).
* **NeRF render 128×128**: one pan-camera view, 64 + 128 samples per ray, 4096-ray chunks,
  seeded (both draw the same random numbers). Shap-E: ``renderer.render_views`` in ``nerf`` mode.

"match" compares each output with Shap-E's fp32 output: the max difference relative to the
output's largest value (latents, pixels), or for meshes the farthest Shap-E vertex from ours and
the largest vertex-colour difference there. The decoder's fields are made non-trivial as the
parity fixtures are (LayerNorm gains 0.5–1, the SDF bias shifted to cross zero). Without
``--shape-src`` only pointdiff runs. Shap-E's ``blobfile`` and ``clip`` imports are stubbed
when absent (configs are passed as dicts; text features are given, not computed).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types

import numpy as np
import torch

from pointdiff.compat.shape import (
    LatentDenoiser,
    LatentDenoiserConfig,
    ShapeDecoder,
    ShapeDecoderConfig,
)
from pointdiff.compat.shape.sample import guided_denoiser
from pointdiff.diffusion import get_sigmas_karras, sample_heun
from pointdiff.nerf import Cameras, extract_mesh, pan_cameras, render_views

RENDERER = dict(
    name="NeRSTFRenderer",
    grid_size=128,
    n_coarse_samples=64,
    n_fine_samples=128,
    separate_shared_samples=True,
    nerstf=dict(
        name="MLPNeRSTFModel",
        activation="swish",
        d_hidden=256,
        n_hidden_layers=6,
        insert_direction_at=4,
        posenc_version="nerf",
        meta_parameters=True,
        n_meta_layers=4,
        meta_bias=False,
        trainable_meta=False,
        density_activation="relu",
        separate_coarse_channels=True,
        separate_nerf_channels=True,
        init_scale=0.25,
        initial_density_bias=0.1,
    ),
    void=dict(name="VoidNeRFModel", background=[0.0, 0.0, 0.0]),
    volume=dict(name="BoundingBoxVolume", bbox_min=[-1.0] * 3, bbox_max=[1.0] * 3),
)
TEXT = dict(
    name="SplitVectorDiffusion",
    d_latent=1024 * 1024,
    latent_ctx=1024,
    inner=dict(
        name="CLIPImagePointDiffusionTransformer",
        width=1024,
        layers=24,
        heads=16,
        time_token_cond=True,
        token_cond=True,
        use_pos_emb=True,
    ),
)
BF16 = lambda: torch.autocast("cpu", torch.bfloat16)  # noqa: E731


def _cpu_name() -> str:
    from pointdiff.precision import cpu_name

    return cpu_name()


def _timed(fn):
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - t, out


def _rel(a, b) -> float:
    a, b = (np.asarray(x.detach().float() if isinstance(x, torch.Tensor) else x) for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _import_shape_e(src: str):
    sys.path.insert(0, src)
    for missing in ("blobfile", "clip"):
        try:
            __import__(missing)
        except ImportError:
            sys.modules[missing] = types.ModuleType(missing)
    import shap_e.models.generation.transformer as tr

    class _GivenTextFeatures:  # Shap-E's CLIP wrapper, for given embeddings only
        feature_dim, grid_size, grid_feature_dim = 768, 16, 1024

        def __init__(self, device):
            pass

        def __call__(self, batch_size, images=None, texts=None, embeddings=None):
            return torch.stack([e for e in embeddings])

    tr.FrozenImageCLIP = _GivenTextFeatures
    return sys.modules["shap_e"]


def _decoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random decoder weights whose field has a surface and visible density."""
    torch.manual_seed(seed)
    dec = ShapeDecoder(ShapeDecoderConfig())
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "norm.weight" in name:
                p.uniform_(0.5, 1.0)
            elif "norm.bias" in name or name.endswith("proj.bias"):
                p.normal_(0, 0.1)
        latent = torch.rand(1, 1024 * 1024) * 2 - 1
        params = dec.latent_to_params(latent)
        grid = torch.rand(1, 32768, 3) * 2 - 1
        raw = dec.query(grid, params)[..., 0]
        dec.renderer.nerstf.mlp[6].bias[0] -= raw.median()  # the SDF crosses zero
        dec.renderer.nerstf.mlp[6].bias[1:3] += 3.0  # visible density
    return dec.state_dict() | {"latent": latent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape-src", default=None, help="a checkout of openai/shap-e (its parent)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["text", "stf", "nerf"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape_e = _import_shape_e(args.shape_src) if args.shape_src else None
    print(f"CPU: {_cpu_name()} (torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}), {args.threads} thread(s)")  # fmt: skip
    if not shape_e:
        print("note: no --shape-src: Shap-E's code was not run (pointdiff rows only)")
    rows = _Rows()
    cpu = torch.device("cpu")

    # ------------------------------------------------------------------------------ text300M
    if "text" not in args.skip:
        cfg = LatentDenoiserConfig()
        torch.manual_seed(0)
        ours = LatentDenoiser(cfg).eval()
        with torch.no_grad():
            ours.output_proj.weight.normal_(0, 0.02)  # x̂0 ≠ 0
        cond = torch.nn.functional.normalize(torch.randn(1, 768), dim=1)
        sigmas = get_sigmas_karras(64, 1e-3, 160.0)[:2]  # the first Heun step

        def ours_step():
            x = torch.randn(1, 1024, 1024, generator=torch.Generator().manual_seed(1)) * 160
            return sample_heun(guided_denoiser(ours), x, sigmas, {"cond": cond}, disable=True)

        ref = None
        if shape_e:
            import shap_e.diffusion.k_diffusion as kd
            from shap_e.diffusion.gaussian_diffusion import diffusion_from_config
            from shap_e.models.configs import model_from_config

            model = model_from_config(TEXT, cpu).eval()
            model.load_state_dict({"wrapped." + k: v for k, v in ours.state_dict().items()})
            diffusion = diffusion_from_config(
                dict(schedule="exp", timesteps=1024, mean_type="x_start")
            )
            kwargs = {"embeddings": torch.cat([cond, torch.zeros_like(cond)])}
            full_grid = kd.get_sigmas_karras
            kd.get_sigmas_karras = lambda *a, **k: full_grid(*a, **k)[:2]  # one step: 160 → σ1

            def shape_step():
                torch.manual_seed(1)
                steps = kd.karras_sample_progressive(
                    diffusion, model, (1, 1024 * 1024), 64, True, False, kwargs, cpu,
                    1e-3, 160.0, guidance_scale=15.0,
                )  # fmt: skip
                return list(steps)[-1]["x"]  # the state after the step (2 guided calls)

            t, ref = _timed(shape_step)
            rows.append(("text300M guided step", "Shap-E fp32", t, "reference"))
            with BF16():
                t, out = _timed(shape_step)
            rows.append(("", "Shap-E bf16 autocast (its default)", t, f"{_rel(out, ref):.1e}"))
            del model
        for label, ctx in (("pointdiff fp32", contextlib.nullcontext), ("pointdiff bf16", BF16)):
            with ctx():
                t, out = _timed(ours_step)
            match = f"{_rel(out.flatten(1), ref):.1e}" if ref is not None else "-"
            rows.append(("text300M guided step" if not shape_e else "", label, t, match))
        del ours

    # ------------------------------------------------------------------------------ decoder
    if {"stf", "nerf"} - set(args.skip):
        state = _decoder_state()
        latent = state.pop("latent")
        dec = ShapeDecoder(ShapeDecoderConfig()).eval()
        dec.load_state_dict(state)
        xm = None
        if shape_e:
            from shap_e.models.configs import model_from_config

            xm = model_from_config(
                dict(
                    name="ChannelsDecoder",
                    latent_ctx=1024,
                    d_latent=1024,
                    params_proj=dict(name="channels", use_ln=True, learned_scale=0.0625),
                    renderer=RENDERER,
                ),
                cpu,
            ).eval()
            xm.load_state_dict(state)

    if "stf" not in args.skip:

        def ours_mesh():
            fields = dec.fields(dec.latent_to_params(latent))
            return extract_mesh(fields.sdf, fields.texture, grid_size=128)

        ref = None
        if xm is not None:
            from scipy.spatial import cKDTree
            from shap_e.util.notebooks import decode_latent_mesh

            t, ref = _timed(lambda: decode_latent_mesh(xm, latent[0]))
            n = len(ref.verts)
            rows.append(("STF decode 128³", f"Shap-E fp32 ({n} verts)", t, "reference"))
        for label, ctx in (("pointdiff fp32", contextlib.nullcontext), ("pointdiff bf16", BF16)):
            with ctx():
                t, mesh = _timed(ours_mesh)
            match = "-"
            if ref is not None:
                dist, idx = cKDTree(mesh.verts).query(ref.verts.numpy())
                # Shap-E's vertex colours are linear; ours sRGB
                lin = np.where(
                    mesh.colors <= 0.04045,
                    mesh.colors / 12.92,
                    ((mesh.colors + 0.055) / 1.055) ** 2.4,
                )
                ch = ref.vertex_channels
                col = np.stack([np.asarray(ch[c]) for c in "RGB"], 1)
                match = f"vert {dist.max():.1e}, colour {np.abs(lin[idx] - col).max():.1e}"
            name = "STF decode 128³" if ref is None and "pointdiff fp32" in label else ""
            rows.append((name, f"{label} ({len(mesh.verts)} verts)", t, match))

    # ------------------------------------------------------------------------------ NeRF
    if "nerf" not in args.skip:
        pan = pan_cameras(128)
        cams = Cameras(pan.origin[:1], pan.x[:1], pan.y[:1], pan.z[:1], 128, 128)

        def ours_nerf():
            fields = dec.fields(dec.latent_to_params(latent))
            gen = torch.Generator().manual_seed(7)
            return render_views(fields.nerf, cams, chunk=4096, generator=gen)[0]

        ref = None
        if xm is not None:
            from shap_e.util.collections import AttrDict
            from shap_e.util.notebooks import create_pan_cameras

            sc = create_pan_cameras(128, cpu)
            fc = sc.flat_camera
            fc.origin, fc.x, fc.y, fc.z = fc.origin[:1], fc.x[:1], fc.y[:1], fc.z[:1]
            sc.shape = (1, 1)

            def shape_nerf():
                torch.manual_seed(7)
                params = xm.bottleneck_to_params(latent)
                out = xm.renderer.render_views(
                    AttrDict(cameras=sc, ray_batch_size=4096),
                    params=params,
                    options=AttrDict(rendering_mode="nerf", render_with_direction=False),
                )
                return out.channels[0, 0] / 255.0

            t, ref = _timed(shape_nerf)
            rows.append(("NeRF render 128×128", "Shap-E fp32", t, "reference"))
        for label, ctx in (("pointdiff fp32", contextlib.nullcontext), ("pointdiff bf16", BF16)):
            with ctx():
                t, img = _timed(ours_nerf)
            match = f"{_rel(img, ref):.1e}" if ref is not None else "-"
            rows.append(
                ("NeRF render 128×128" if ref is None and "fp32" in label else "", label, t, match)
            )


class _Rows(list):
    """Table rows, printed as they come (a long run shows what it has)."""

    def append(self, row) -> None:
        if not self:
            print("\n| job | implementation | seconds | match (vs Shap-E fp32) |")
            print("| --- | --- | ---: | --- |")
        job, impl, t, match = row
        print(f"| {job} | {impl} | {t:.1f} | {match} |", flush=True)
        super().append(row)


if __name__ == "__main__":
    main()
