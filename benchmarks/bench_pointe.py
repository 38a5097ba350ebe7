"""Point-E's released text pipeline run by pointdiff: time per NFE and per sample, fp32 vs bf16.

    .venv/bin/python benchmarks/bench_pointe.py            # ~5 min on 2 idle cores
    .venv/bin/python benchmarks/bench_pointe.py --quick    # no point-e-attention rows, 1 rep

Point-e-shaped ``base40M-textvec`` (40.3 M) and ``upsample`` (40.5 M) with random weights are
written as point-e-named ``.pt`` files and loaded by ``load_pointe_pipeline`` exactly as the
released files would be (the CLIP text tower is replaced by a stub returning a random unit
768-d vector: the embedding is computed once per prompt and is not part of any timing).

1. **Per NFE**: one call of each stage's model as the sampler sees it (adapter + clamp, and for
   the base classifier-free guidance, i.e. one forward at batch 2; the upsampler at batch 1),
   best of ``--reps`` calls, variants interleaved. ``point-e attn`` rows run the same modules
   with point-e's einsum attention swapped in (``bench_models.pointe_copy``): point-e's cost on
   THIS machine, for a same-run comparison with point-e.md §11's reference figures.
2. **Full text sample at point-e's settings** (64 Heun steps per stage = 127 NFE per stage):
   too slow to run here, so a short run (``--short-steps`` Heun steps per stage through the real
   pipeline) is timed and 127 + 127 NFE are EXTRAPOLATED from its time per NFE.
3. **Our faster setting**, measured end to end: ``FAST`` (DPM-Solver++(2M), 32 steps per stage)
   under bf16 autocast.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import BASE, UPSAMPLE, pointe_copy, time_round_robin  # noqa: E402

from pointdiff.compat.pointe_pipeline import BASE_SAMPLE, FAST, load_pointe_pipeline  # noqa: E402
from pointdiff.diffusion import clamp_denoised, classifier_free_guidance  # noqa: E402
from pointdiff.models import build_model  # noqa: E402

POINTE_NFE = 127  # 64 Heun steps: 2·64 − 1 model calls per stage
# point-e.md §11 (point-e's own modules, fp32 einsum attention, 2-core VM of this project)
REF_BASE_NFE, REF_UP_NFE = 1.58, 8.83  # s: base40M-textvec batch 2, upsample batch 1


class _StubText(nn.Module):
    """Stands in for CLIP ViT-L/14's text tower: a fixed random unit vector per prompt."""

    def embed(self, prompts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return F.normalize(torch.randn(len(prompts), 768, generator=g), dim=-1)


def _write_pointe_files(root: Path) -> None:
    """Random-weight point-e-named state dicts (plain tensors) for the two text-path models."""
    for name, cfg in (("base40M-textvec", BASE), ("upsample", UPSAMPLE)):
        torch.manual_seed(0)
        sd = {}
        for k, v in build_model(cfg).state_dict().items():
            k = re.sub(r"^backbone\.blocks\.", "backbone.resblocks.", k)
            k = re.sub(r"^(text_proj|grid_embed)\.", "clip_embed.", k)
            sd[k] = v if not k.startswith("output_proj") else torch.randn_like(v) * 0.02
        if name == "upsample":
            sd["channel_scales"] = torch.tensor([2.0, 2.0, 2.0] + [1 / 127.5] * 3)
            sd["channel_biases"] = torch.tensor([0.0, 0.0, 0.0, -1.0, -1.0, -1.0])
        torch.save(sd, root / f"{name}.pt")


def _nfe_calls(pipe, pointe_attn: bool) -> dict:
    """One model call per stage as the sampler makes it, fp32 / bf16 (/ point-e attention)."""
    base, up = pipe.stages
    emb = pipe.text_encoder.embed(["a corgi"])
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(1, base.num_points, 6, generator=g) * 10
    xu = torch.randn(1, up.num_points, 6, generator=g) * 10
    low = torch.rand(1, base.num_points, 6, generator=g) * 2 - 1
    sig = torch.full((1,), 10.0)

    def guided(den):
        return classifier_free_guidance(clamp_denoised(den), BASE_SAMPLE.guidance)

    def run(model, x, bf16, **cond):
        def fn():
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(x, sig, **cond)

        return fn

    calls = {
        ("base b2 (guided)", "pointdiff fp32"): run(guided(base.denoiser), xb, False, text_emb=emb),
        ("base b2 (guided)", "pointdiff bf16"): run(guided(base.denoiser), xb, True, text_emb=emb),
        ("upsample b1", "pointdiff fp32"): run(clamp_denoised(up.denoiser), xu, False, low_res=low),
        ("upsample b1", "pointdiff bf16"): run(clamp_denoised(up.denoiser), xu, True, low_res=low),
    }
    if pointe_attn:
        for stage, key, cond, x in (
            (base, "base b2 (guided)", {"text_emb": emb}, xb),
            (up, "upsample b1", {"low_res": low}, xu),
        ):
            den = type(stage.denoiser)(
                pointe_copy(stage.denoiser.net), stage.denoiser.alphas_cumprod
            )
            model = guided(den) if stage.cond_key else clamp_denoised(den)
            calls[(key, "point-e attn fp32")] = run(model, x, False, **cond)
    return calls


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="best-of reps per NFE variant")
    p.add_argument("--short-steps", type=int, default=2, help="Heun steps of the short run")
    p.add_argument("--quick", action="store_true", help="no point-e-attention rows, 1 rep")
    p.add_argument(
        "--full",
        action="store_true",
        help="run section 2 end to end at 64+64 Heun steps (~25 min on 2 cores)",
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.reps
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        _write_pointe_files(Path(tmp))
        t0 = time.perf_counter()
        pipe = load_pointe_pipeline(tmp, text_encoder=_StubText(), sdf=False)
        print(
            f"# load base40M-textvec.pt + upsample.pt (convert, weights_only): "
            f"{time.perf_counter() - t0:.1f} s"
        )

    # 1. per NFE
    calls = _nfe_calls(pipe, pointe_attn=not args.quick)
    times = dict(zip(calls, time_round_robin(list(calls.values()), reps), strict=True))
    print("\n## 1. one model call (NFE), seconds, best of", reps)
    print(f"{'model call':<18} {'variant':<18} {'s/NFE':>7}  {'vs point-e.md §11 ref':>22}")
    for (key, variant), t in times.items():
        ref = REF_BASE_NFE if key.startswith("base") else REF_UP_NFE
        print(f"{key:<18} {variant:<18} {t:7.2f}  {ref / t:6.1f}x faster than {ref:.2f}")

    # 2. point-e's settings: measured end to end with --full, else a short run extrapolated
    s = 64 if args.full else args.short_steps
    nfe = 2 * s - 1
    how = "MEASURED end to end" if args.full else f"EXTRAPOLATED from a {s}+{s}-step run"
    print(
        f"\n## 2. full text sample at point-e's settings (64+64 Heun steps = {POINTE_NFE}+"
        f"{POINTE_NFE} NFE): {how} ({nfe}+{nfe} NFE)"
    )
    print(f"{'precision':<10} {'base s/NFE':>10} {'ups s/NFE':>10} {'127+127 NFE':>19}")
    totals = {}
    for bf16 in (False, True):
        kw = dict(seed=0, overrides=None if args.full else {"steps": s}, bf16=bf16)
        if args.full:  # one whole text sample, base then upsampler
            t_full = _timed(lambda kw=kw: pipe.sample_clouds(["a corgi"], **kw))
            print(
                f"{'bf16' if bf16 else 'fp32':<10} {'':>10} {'':>10} {t_full:9.0f} s measured "
                f"= {t_full / 60:.1f} min"
            )
            totals[bf16] = t_full
            continue
        t_base = _timed(lambda kw=kw: pipe.sample_clouds(["a corgi"], stop_after="base", **kw))
        t_up = max(_timed(lambda kw=kw: pipe.sample_clouds(["a corgi"], **kw)) - t_base, 0.0)
        pb, pu = t_base / nfe, t_up / nfe
        totals[bf16] = POINTE_NFE * (pb + pu)
        name = "bf16" if bf16 else "fp32"
        print(
            f"{name:<10} {pb:10.2f} {pu:10.2f} {totals[bf16]:9.0f} s est. = "
            f"{totals[bf16] / 60:.1f} min"
        )
    pe = [times.get((k, "point-e attn fp32")) for k in ("base b2 (guided)", "upsample b1")]
    if None not in pe:
        pe_total = POINTE_NFE * sum(pe)
        print(
            f"{'point-e*':<10} {pe[0]:10.2f} {pe[1]:10.2f} {pe_total:12.0f} s = "
            f"{pe_total / 60:.1f} min  (*point-e attention, this run's best-of NFE x 127)"
        )
    ref_total = POINTE_NFE * (REF_BASE_NFE + REF_UP_NFE)
    print(
        f"{'point-e':<10} {REF_BASE_NFE:10.2f} {REF_UP_NFE:10.2f} {ref_total:12.0f} s = "
        f"{ref_total / 60:.1f} min  (point-e.md §11 per-NFE figures x 127)"
    )
    for bf16, t in totals.items():
        vs_run = "" if None in pe else f", {pe_total / t:.2f}x vs point-e* of this run"
        print(
            f"pointdiff {'bf16' if bf16 else 'fp32'}: {ref_total / t:.2f}x faster than "
            f"point-e (ref.){vs_run}"
        )

    # 3. our faster setting, measured end to end
    print(
        f"\n## 3. FAST {FAST} + bf16 autocast, measured end to end ({FAST['steps']}+"
        f"{FAST['steps']} NFE)"
    )
    t_fast = _timed(lambda: pipe.sample_clouds(["a corgi"], seed=0, overrides=FAST, bf16=True))
    same_run = "" if None in pe else f", vs point-e attn this run (est.) {pe_total / t_fast:.1f}x"
    print(
        f"text sample (1024 + 3072 points): {t_fast:.1f} s; vs point-e's settings in "
        f"pointdiff fp32 ({'measured' if args.full else 'est.'}) {totals[False] / t_fast:.1f}x, "
        "vs point-e (ref. est.) "
        f"{ref_total / t_fast:.1f}x{same_run}"
    )


if __name__ == "__main__":
    main()
