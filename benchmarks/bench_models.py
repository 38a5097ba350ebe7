"""Forward-pass speed of point-e-shaped models: pointdiff vs point-e's attention, side by side.

    .venv/bin/python benchmarks/bench_models.py            # base40M-textvec + upsample, ~2 min
    .venv/bin/python benchmarks/bench_models.py --skip-upsampler

"point-e" rows run the same modules with every attention layer replaced by a faithful copy of
point-e's ``QKVMultiheadAttention`` (per-head interleaved ``c_qkv``, q and k each scaled by
d^-1/4, ``einsum``, softmax in fp32 on the materialised [B, H, T, T] weights, ``einsum`` with v),
with the weights re-interleaved so both compute the same function (the max-abs difference is
printed). Everything else (LayerNorm, MLP, GELU, Linear) is shared, so the comparison isolates
what pointdiff changed. point-e's always-on attention checkpointing is a no-op under
``torch.no_grad`` and is not reproduced. Random weights (speed does not depend on them).

A base "guided step" is one forward at batch 2 (the conditional row and the zero-embedding row,
as classifier-free guidance batches them). Times are seconds, best of ``--reps`` calls per
variant, the variants interleaved after one warm-up call each (see ``time_round_robin``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import time
from dataclasses import replace

import torch
from torch import nn

from pointdiff.config import PRESETS
from pointdiff.models import PointDenoiser, PointUpsampler
from pointdiff.models.layers import SelfAttention

# point-e's released base40M-textvec and upsampler: ε + variance heads, 256 (zero) grid tokens
BASE = replace(PRESETS["base40M"], out_channels=12)
UPSAMPLE = replace(PRESETS["upsample40M"], out_channels=12, grid_tokens=256)


class PointeAttention(nn.Module):
    """point-e ``MultiheadAttention`` + ``QKVMultiheadAttention`` (transformer.py), its maths
    verbatim."""

    def __init__(self, ours: SelfAttention):
        super().__init__()
        self.heads = ours.heads
        w = ours.c_proj.weight.shape[0]
        d = w // self.heads
        self.c_qkv = copy.deepcopy(ours.c_qkv)
        self.c_proj = ours.c_proj
        with torch.no_grad():  # ours [q | k | v] -> point-e per-head [q_h k_h v_h]
            for p in (self.c_qkv.weight, self.c_qkv.bias):
                p.copy_(p.reshape(3, self.heads, d, -1).transpose(0, 1).reshape(p.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.c_qkv(x)
        bs, n_ctx, width = qkv.shape
        attn_ch = width // self.heads // 3
        scale = 1 / math.sqrt(math.sqrt(attn_ch))
        qkv = qkv.view(bs, n_ctx, self.heads, -1)
        q, k, v = torch.split(qkv, attn_ch, dim=-1)
        weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale)
        wdtype = weight.dtype
        weight = torch.softmax(weight.float(), dim=-1).type(wdtype)
        out = torch.einsum("bhts,bshc->bthc", weight, v).reshape(bs, n_ctx, -1)
        return self.c_proj(out)


def pointe_copy(model: nn.Module) -> nn.Module:
    """The same model with point-e's attention in every block."""
    ref = copy.deepcopy(model)
    for block in ref.backbone.blocks:
        block.attn = PointeAttention(block.attn)
    return ref


def time_round_robin(calls: list, reps: int) -> list[float]:
    """Best-of-``reps`` seconds per call, the calls interleaved round-robin after one warm-up
    each, so a load change on a shared machine hits every variant alike; the minimum is the
    least disturbed measurement."""
    for fn in calls:
        fn()  # warm-up (allocator, oneDNN primitive cache)
    times = [[] for _ in calls]
    for _ in range(reps):
        for fn, ts in zip(calls, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def _ctx(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _bf16(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    cast = lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t  # noqa: E731
    return tuple(cast(a) for a in args[:1]) + args[1:], {k: cast(v) for k, v in kwargs.items()}


def bench(label: str, models: dict, make_inputs, batches, reps: int, rows: list) -> None:
    """Time every (model, batch, precision); print one table block with speed-ups vs point-e.

    Precisions: fp32; bf16 autocast (fp32 weights cast on the fly); bf16 weights (the model
    converted once with ``.to(torch.bfloat16)``, inputs cast; c_noise stays fp32).
    """
    ours_bf16 = copy.deepcopy(models["pointdiff"]).to(torch.bfloat16)
    for b in batches:
        args, kwargs = make_inputs(b)
        with torch.no_grad():
            ref_out = models["point-e"](*args, **kwargs)
            ours_out = models["pointdiff"](*args, **kwargs)
            with _ctx(True):
                ac_out = models["pointdiff"](*args, **kwargs).float()
        diff = (ref_out - ours_out).abs().max().item()
        diff_bf16 = (ref_out - ac_out).abs().max().item()
        runs = (
            ("point-e", "fp32", models["point-e"], False, (args, kwargs)),
            ("pointdiff", "fp32", models["pointdiff"], False, (args, kwargs)),
            ("pointdiff", "bf16 autocast", models["pointdiff"], True, (args, kwargs)),
            ("pointdiff", "bf16 weights", ours_bf16, False, _bf16(args, kwargs)),
        )
        calls = []
        for _, _, model, autocast, (a, kw) in runs:

            def call(model=model, autocast=autocast, a=a, kw=kw):
                with torch.no_grad(), _ctx(autocast):
                    model(*a, **kw)

            calls.append(call)
        times = time_round_robin(calls, reps)
        for (impl, prec, *_), t in zip(runs, times, strict=True):
            rows.append((label, b, impl, prec, t, times[0] / t))
            print(f"{label:18s} B={b}  {impl:9s} {prec:13s} {t:7.3f} s  {times[0] / t:5.2f}x")
        print(
            f"{label:18s} B={b}  max |pointdiff - point-e|: fp32 {diff:.2e}, "
            f"bf16 autocast {diff_bf16:.2e} (output std {ref_out.std().item():.2e})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed calls per row (best of)")
    ap.add_argument("--up-reps", type=int, default=2, help="timed calls per upsampler row")
    ap.add_argument("--skip-upsampler", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    opts = ap.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    torch.manual_seed(0)
    rows: list = []

    base = PointDenoiser(BASE).eval()
    nn.init.normal_(base.output_proj.weight, std=0.02)  # non-zero outputs for the diff check
    models = {"pointdiff": base, "point-e": pointe_copy(base)}

    def base_inputs(b):  # a guided step duplicates one row: cond + zero (null) embedding
        g = torch.Generator().manual_seed(b)
        x = torch.randn(1, BASE.num_points, 6, generator=g).expand(b, -1, -1)
        emb = torch.nn.functional.normalize(torch.randn(1, 768, generator=g), dim=-1)
        text = torch.cat([emb, torch.zeros(b - 1, 768)]) if b > 1 else emb
        return (x, torch.full((b,), 500.0)), {"text_emb": text}

    bench("base40M-textvec", models, base_inputs, (1, 2), opts.reps, rows)
    del models, base

    if not opts.skip_upsampler:
        up = PointUpsampler(UPSAMPLE).eval()
        nn.init.normal_(up.output_proj.weight, std=0.02)
        models = {"pointdiff": up, "point-e": pointe_copy(up)}

        def up_inputs(b):
            g = torch.Generator().manual_seed(b)
            x = torch.randn(b, UPSAMPLE.num_points, 6, generator=g)
            low_res = torch.rand(b, UPSAMPLE.num_cond_points, 6, generator=g) * 2 - 1
            return (x, torch.full((b,), 500.0)), {"low_res": low_res}

        bench("upsample", models, up_inputs, (1,), opts.up_reps, rows)

    print("\n| model | batch | implementation | precision | s / forward | speed-up vs point-e |")
    print("|---|---|---|---|---|---|")
    for label, b, impl, prec, t, s in rows:
        print(f"| {label} | {b} | {impl} | {prec} | {t:.3f} | {s:.2f}x |")


if __name__ == "__main__":
    main()
