"""Shap-E on a CPU: pointdiff vs Shap-E's own code, side by side in one run, same inputs.

    .venv/bin/python benchmarks/bench_shape.py --shape-src /path/to/shap-e   # ~40 min, 1 thread

Three jobs at the released sizes with random weights (speed does not depend on them, except the
coarse-to-fine mesh's on how much of the grid the surface crosses):

* **text300M guided step**: one Heun step of Shap-E's sampler (2 guided calls of the 24-block,
  width-1024 denoiser on [cond; null], 1026 tokens each) from x_T at σ = 160. Shap-E: its
  ``karras_sample_progressive`` (what ``sample_latents`` runs) on the first two σ of its 64-step
  grid (its ``get_sigmas_karras`` truncated), so it stops after that step; fp32, and under
  ``torch.autocast`` bf16 as its notebooks run it (``use_fp16=True`` is bf16 on a CPU).
  pointdiff bf16: the same autocast, the linear weights cast once (``cast_linears``).
* **STF decode**: one latent → mesh with vertex colours on Shap-E's 128³ grid. Shap-E:
  ``decode_latent_mesh`` (its 20 throw-away 2×2 renders included; without PyTorch3D they use its
  ray caster). pointdiff: ``latent_to_params`` + ``extract_mesh`` (SDF grid dense or
  coarse-to-fine, marching cubes, texture at the vertices).
* **NeRF render 128×128**: one pan-camera view, 64 + 128 samples per ray, 4096-ray chunks,
  seeded (both draw the same random numbers). Shap-E: ``renderer.render_views`` in ``nerf`` mode.

``--breakdown`` profiles pointdiff's bf16 text step: the seconds in its linear layers (GEMMs),
in attention (the head loop's GEMMs and softmax, or PyTorch's fused kernel), GELU, LayerNorm and
everything else, i.e. how far the step is from this CPU's GEMM rate.

"match" compares each output with Shap-E's fp32 output: the max difference relative to the
output's largest value (latents, pixels), or for meshes the farthest Shap-E vertex from ours and
the largest vertex-colour difference there; a coarse-to-fine fp32 mesh is also compared with the
dense one (vertices, faces and colours identical or not). The decoder's fields are made
object-like (``_decoder_state``; ``--rough-field`` for a noise field). Without ``--shape-src``
only pointdiff runs. Shap-E's ``blobfile`` and ``clip`` imports are stubbed when absent (configs
are passed as dicts; text features are given, not computed).
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
from pointdiff.compat.shape.transformer import cast_linears
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
    """(wall seconds, this process's CPU seconds), fn's output. On a machine other jobs load,
    the CPU seconds of a 1-thread run are what it costs; the wall time depends on the load."""
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = fn()
    return (time.perf_counter() - t, time.process_time() - c), out


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


def _decoder_state(rough: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random decoder weights whose field has a surface and visible density.

    The released initialisation gives a nearly constant field. Here the LayerNorm gains of the
    latent-made weights are raised (layers 1-3 to unit gain) and, as in a trained field, the
    first layer's columns for encoding frequency 2^k are scaled by 4^-k: an object-like field
    (the SDF row scaled to std 0.3, about 20 % of the box inside, a surface in about 4 % of the
    grid's cells). ``rough``: every frequency at full gain (the earlier benchmark field): a noise
    field with a surface in about every cell, whose colours change by ~0.5 over 1e-6."""
    torch.manual_seed(seed)
    dec = ShapeDecoder(ShapeDecoderConfig())
    # frequency index k of each of the 93 encoding features (x, y, z count as k = 0)
    k = (torch.arange(93) - 3).clamp(min=0).remainder(45).div(3, rounding_mode="floor")
    decay = torch.ones(93) if rough else 0.25 ** k.float()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            first = "mlp__0__" in name
            if "norm.weight" in name:
                p.uniform_(0.5, 1.0)
                p.mul_(decay if first else 1.0 if rough else 1 / 16)
            elif "norm.bias" in name or name.endswith("proj.bias"):
                p.normal_(0, 0.1)
                if first:
                    p.view(-1, 93).mul_(decay)
        latent = torch.rand(1, 1024 * 1024) * 2 - 1
        params = dec.latent_to_params(latent)
        grid = torch.rand(1, 32768, 3) * 2 - 1
        raw = dec.query(grid, params)[..., 0]
        last = dec.renderer.nerstf.mlp[6]
        if rough:
            last.bias[0] -= raw.median()  # the SDF crosses zero
        else:
            level = raw.quantile(0.8)  # about 20 % inside
            scale = 0.3 / (raw - level).std()
            last.weight[0] *= scale
            last.bias[0] = (last.bias[0] - level) * scale
        last.bias[1:3] += 3.0  # visible density
    return dec.state_dict() | {"latent": latent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape-src", default=None, help="a checkout of openai/shap-e (its parent)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["text", "stf", "nerf"])
    ap.add_argument(
        "--rough-field", action="store_true", help="decode a noise field (see _decoder_state)"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="profile pointdiff's bf16 text step: seconds in linear layers, attention, the rest",
    )
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
            if "bf16" in label:
                cast_linears(ours)  # what autocast casts on every call, once
            with ctx():
                t, out = _timed(ours_step)
            match = f"{_rel(out.flatten(1), ref):.1e}" if ref is not None else "-"
            rows.append(("text300M guided step" if not shape_e else "", label, t, match))
        if args.breakdown:
            _print_breakdown(ours_step)
        del ours

    # ------------------------------------------------------------------------------ decoder
    if {"stf", "nerf"} - set(args.skip):
        state = _decoder_state(args.rough_field)
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

        def ours_mesh(stride: int):
            fields = dec.fields(dec.latent_to_params(latent))
            return extract_mesh(fields.sdf, fields.texture, grid_size=128, coarse_stride=stride)

        ref = None
        if xm is not None:
            from shap_e.util.notebooks import decode_latent_mesh

            t, ref = _timed(lambda: decode_latent_mesh(xm, latent[0]))
            n = len(ref.verts)
            rows.append(("STF decode 128³", f"Shap-E fp32 ({n} verts)", t, "reference"))
        dense = None
        for label, ctx, stride in (
            ("pointdiff fp32, dense grid", contextlib.nullcontext, 1),
            ("pointdiff fp32, coarse-to-fine", contextlib.nullcontext, 8),
            ("pointdiff bf16, coarse-to-fine", BF16, 8),
        ):
            with ctx():
                t, mesh = _timed(lambda stride=stride: ours_mesh(stride))
            match = _mesh_match(mesh, ref) if ref is not None else []
            if dense is None:
                dense = mesh
            elif "fp32" in label:
                same = all(
                    np.array_equal(getattr(mesh, a), getattr(dense, a))
                    for a in ("verts", "faces", "colors")
                )
                match.append("= dense mesh" if same else "differs from the dense mesh")
            name = "STF decode 128³" if ref is None and stride == 1 else ""
            rows.append((name, f"{label} ({len(mesh.verts)} verts)", t, ", ".join(match) or "-"))

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


def _mesh_match(mesh, ref) -> list[str]:
    """The farthest Shap-E vertex from ours, and the largest vertex-colour difference there."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(mesh.verts).query(ref.verts.numpy())
    # Shap-E's vertex colours are linear; ours sRGB
    c = mesh.colors[idx]
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    col = np.stack([np.asarray(ref.vertex_channels[ch]) for ch in "RGB"], 1)
    return [f"vert {dist.max():.1e}", f"colour {np.abs(lin - col).max():.1e}"]


#: profiler op names → where a text step's time goes (the rest: norms, GELU, copies, adds)
_OP_GROUPS = {
    "linear layers (GEMM; the MLP's input layer fused with its GELU)": (
        "aten::addmm",
        "mkldnn::_linear_pointwise",
    ),
    "attention: score and value GEMMs (head loop)": ("aten::mm", "aten::bmm"),
    "attention: softmax (head loop)": ("aten::_softmax",),
    "attention: fused kernel (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "GELU": ("aten::gelu",),
    "LayerNorm": ("aten::native_layer_norm",),
}


def _print_breakdown(step) -> None:
    """Self CPU seconds of one bf16 ``step`` by op group, as torch's profiler counts them, and
    the GEMMs' rates beside a bare bf16 GEMM of the MLP's shape (this core's rate)."""
    with BF16(), torch.no_grad(), torch.profiler.profile(with_flops=True) as prof:
        step()
    events = prof.key_averages()
    total = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    flops = {e.key: e.flops for e in events}
    a, w = torch.randn(2052, 1024).bfloat16(), torch.randn(4096, 1024).bfloat16()
    torch.nn.functional.linear(a, w)
    (_, bare), _ = _timed(lambda: [torch.nn.functional.linear(a, w) for _ in range(5)])
    print("\n| pointdiff bf16 text step | self CPU s |\n| --- | ---: |")
    rest = sum(total.values())
    for group, ops in _OP_GROUPS.items():
        sec = sum(total.get(op, 0.0) for op in ops)
        rest -= sec
        counted = [op for op in ops if flops.get(op)]  # the profiler counts aten GEMMs only
        gemm_sec = sum(total[op] for op in counted)
        gemm = "GEMM" in group and gemm_sec > 0
        rate = sum(flops[op] for op in counted) / gemm_sec / 1e9 if gemm else 0
        rate = f" ({', '.join(counted)}: {rate:.0f} GFLOP/s)" if rate else ""
        print(f"| {group}{rate} | {sec:.2f} |")
    print(f"| everything else | {rest:.2f} |\n| total | {sum(total.values()):.2f} |")
    print(
        f"bare bf16 GEMM [2052, 1024] × [1024, 4096]: {5 * 2 * a.shape[0] * 1024 * 4096 / bare / 1e9:.0f} GFLOP/s"
    )


class _Rows(list):
    """Table rows, printed as they come (a long run shows what it has)."""

    def append(self, row) -> None:
        if not self:
            print("\n| job | implementation | CPU s | wall s | match (vs Shap-E fp32) |")
            print("| --- | --- | ---: | ---: | --- |")
        job, impl, (wall, cpu), match = row
        print(f"| {job} | {impl} | {cpu:.1f} | {wall:.1f} | {match} |", flush=True)
        super().append(row)


if __name__ == "__main__":
    main()
