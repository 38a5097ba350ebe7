"""How fast CAN a point-e-shaped forward be on this CPU? Measured peaks → lower bounds vs targets.

    .venv/bin/python benchmarks/bench_roofline.py            # ~3 min on 2 idle cores
    .venv/bin/python benchmarks/bench_roofline.py --no-measure   # peaks and bounds only, ~30 s

Issues 2 and 4 set speed targets relative to point-e's own implementation on "this machine kind":
the ``base40M`` guided step (batch 2) ≥ 1.5× faster in fp32 and ≥ 5× with bf16, the
``upsample40M`` forward (batch 1) ≥ 2× fp32 and ≥ 6× bf16. This script measures what the
hardware allows, in one run:

1. **Peaks**: the best GEMM throughput (the shapes of the models' Linear layers) and the
   attention throughput of pointdiff's kernel at the models' sequence lengths
   (``models.layers.attention``: PyTorch's fused ``scaled_dot_product_attention`` in fp32, the
   head loop in bf16), in fp32 and bf16.
2. **FLOPs** of one forward (2·params·tokens for the Linear layers, 4·T²·width per layer for
   attention), and the **lower bound** time = Linear FLOPs / GEMM peak + attention FLOPs /
   attention peak — what these kernels allow, with nothing else in the forward costing time.
3. **Measured** pointdiff forwards (``--no-measure`` skips them), and the speed-up targets next to
   the best speed-up the bound allows.

On a CPU with AMX (the machine kind point-e.md measured) the bf16 peaks are several times the fp32
ones; with AVX512-BF16 only, bf16 GEMM is ~2.8× fp32 and PyTorch's fused attention kernel gains
nothing from bf16 (the head loop does).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pointdiff.config import DenoiserConfig, UpsamplerConfig
from pointdiff.models import PointDenoiser, PointUpsampler
from pointdiff.models.layers import attention

# point-e.md §11: point-e's own modules on this project's 2-core VM (fp32); the issues quote
# ≈1.5 s and ≈8.5 s for the same figures.
REF = {"base40M guided step (B=2)": 1.58, "upsample40M forward (B=1)": 8.83}
TARGETS = {"base40M guided step (B=2)": (1.5, 5.0), "upsample40M forward (B=1)": (2.0, 6.0)}
BASE = DenoiserConfig(width=512, depth=12, heads=8, num_points=1024, cond_dim=768, out_channels=12)
UPSAMPLE = UpsamplerConfig(
    width=512, depth=12, heads=8, num_points=3072, num_cond_points=1024, out_channels=12
)


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(tokens: int, width: int, dtype: torch.dtype, reps: int) -> float:
    """Best FLOP/s over the Linear shapes of a transformer block ([T, w]·[w, 3w | 4w | w])."""
    x = torch.randn(tokens, width, dtype=dtype)
    rates = []
    for out in (3 * width, 4 * width, width):
        w = torch.randn(width, out, dtype=dtype)
        rates.append(2 * tokens * width * out / _best(lambda w=w: x @ w, reps))
    x4 = torch.randn(tokens, 4 * width, dtype=dtype)
    w4 = torch.randn(4 * width, width, dtype=dtype)
    rates.append(2 * tokens * 4 * width * width / _best(lambda: x4 @ w4, reps))
    return max(rates)


def attention_peak(batch: int, tokens: int, width: int, heads: int, dtype, reps: int) -> float:
    """FLOP/s of pointdiff's attention (inference) at this sequence length ([B, H, T, w/H])."""
    q, k, v = (torch.randn(batch, heads, tokens, width // heads, dtype=dtype) for _ in range(3))
    with torch.no_grad():
        t = _best(lambda: attention(q, k, v), reps)
    return 4 * batch * tokens * tokens * width / t


def flops(model: torch.nn.Module, batch: int, tokens: int, width: int, depth: int) -> tuple:
    """(Linear FLOPs, attention FLOPs) of one forward: 2·(block params)·B·T and 4·B·T²·w per
    layer."""
    block_params = sum(p.numel() for p in model.backbone.blocks.parameters() if p.dim() == 2)
    return 2 * block_params * batch * tokens, 4 * batch * tokens * tokens * width * depth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="best-of reps per measurement")
    p.add_argument("--no-measure", action="store_true", help="skip timing the pointdiff forwards")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, ISA {' '.join(isa) or '?'}, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )

    torch.manual_seed(0)
    cases = {  # name -> (model, batch, tokens, inputs)
        "base40M guided step (B=2)": (PointDenoiser(BASE), 2, 1024 + 2),
        "upsample40M forward (B=1)": (PointUpsampler(UPSAMPLE), 1, 1 + 1024 + 3072),
    }
    rows = []
    print("\n## 1. peaks (GFLOP/s, best of", args.reps, ")")
    print(f"{'case':<28} {'dtype':<6} {'GEMM':>7} {'attention':>10}")
    for name, (model, batch, tokens) in cases.items():
        model.eval()
        lin, att = flops(model, batch, tokens, 512, 12)
        for dtype in (torch.float32, torch.bfloat16):
            g = gemm_peak(batch * tokens, 512, dtype, args.reps)
            a = attention_peak(batch, tokens, 512, 8, dtype, args.reps)
            tag = "fp32" if dtype == torch.float32 else "bf16"
            print(f"{name:<28} {tag:<6} {g / 1e9:7.0f} {a / 1e9:10.0f}")
            rows.append((name, tag, lin, att, lin / g + att / a))

    measured = {}
    if not args.no_measure:
        for name, (model, batch, _tokens) in cases.items():
            n = model.cfg.num_points
            x = torch.randn(batch, n, 6)
            sigma = torch.full((batch,), 100.0)  # the c_noise input
            kw = (
                {"text_emb": torch.randn(batch, 768)}
                if name.startswith("base")
                else {"low_res": torch.randn(batch, 1024, 6)}
            )
            for bf16 in (False, True):
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    t = _best(lambda m=model, x=x, s=sigma, kw=kw: m(x, s, **kw), args.reps)
                measured[(name, "bf16" if bf16 else "fp32")] = t

    print("\n## 2. lower bound of one forward vs point-e (point-e.md §11) and the targets")
    print(
        f"{'case':<28} {'dtype':<5} {'GFLOP':>6} {'attn%':>5} {'bound s':>8} {'max x':>6} "
        f"{'target':>6} {'ours s':>7} {'ours x':>6}"
    )
    for name, tag, lin, att, bound in rows:
        ref = REF[name]
        target = TARGETS[name][0 if tag == "fp32" else 1]
        ours = measured.get((name, tag))
        ours_s = f"{ours:7.2f} {ref / ours:5.2f}x" if ours else f"{'-':>7} {'-':>6}"
        print(
            f"{name:<28} {tag:<5} {(lin + att) / 1e9:6.0f} {100 * att / (lin + att):5.0f} "
            f"{bound:8.2f} {ref / bound:5.2f}x {target:5.1f}x {ours_s}"
        )
    print("\nmax x = point-e's time / lower bound: a target above it cannot be met on this CPU.")


if __name__ == "__main__":
    main()
