"""Seconds per guided sample of the ``base40M`` preset (random weights), by sampler and steps.

    .venv/bin/python benchmarks/bench_sampling.py                  # heun 16/64, bf16 + fp32@16
    .venv/bin/python benchmarks/bench_sampling.py --steps 16 --dtypes fp32 bf16

Each row runs the full pipeline stage: Karras σ grid, classifier-free guidance (scale 3, the
conditional and null rows batched in one forward), clamped denoised, the sampler; batch = one
prompt. NFE is the number of guided forwards (Heun: 2·steps − 1). Speed does not depend on the
weights, so random ones are used; the output is printed as a table.
"""

from __future__ import annotations

import argparse
import time

import torch

from pointdiff.config import SampleConfig, get_preset
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.diffusion.samplers import CHURN, SAMPLERS
from pointdiff.diffusion.schedules import get_sigmas_karras
from pointdiff.models import build_model


class _Counter:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.model(x, sigma, **kw)


def time_sample(model, cfg, sampler: str, steps: int, bf16: bool) -> tuple[float, int]:
    g = torch.Generator().manual_seed(0)
    counter = _Counter(model)
    defaults = SampleConfig()  # the shipped defaults' guidance and churn
    fn = classifier_free_guidance(clamp_denoised(counter), defaults.guidance)
    sigmas = get_sigmas_karras(steps, 0.002, 80.0)
    x = torch.randn(1, cfg.num_points, 6, generator=g) * sigmas[0]
    emb = torch.nn.functional.normalize(torch.randn(1, cfg.cond_dim, generator=g), dim=-1)
    churn = {"s_churn": defaults.s_churn} if sampler in CHURN else {}
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        SAMPLERS[sampler](
            fn, x, sigmas, extra_args={"text_emb": emb}, disable=True, generator=g, **churn
        )
    return time.perf_counter() - t0, counter.calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="base40M")
    ap.add_argument("--samplers", nargs="+", default=["heun"])
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--fp32-max-steps", type=int, default=16, help="skip longer fp32 runs")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    model = KarrasDenoiser(build_model(cfg).eval())
    print(f"{args.preset}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| sampler | steps | dtype | NFE | s/sample | s/NFE |\n|---|---|---|---|---|---|")
    time_sample(model, cfg, "euler", 1, True)  # warm-up
    for sampler in args.samplers:
        for steps in args.steps:
            for dtype in args.dtypes:
                if dtype == "fp32" and steps > args.fp32_max_steps:
                    continue
                sec, nfe = time_sample(model, cfg, sampler, steps, dtype == "bf16")
                print(
                    f"| {sampler} | {steps} | {dtype} | {nfe} | {sec:.1f} | {sec / nfe:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
