"""How long a checkpoint stalls training: synchronous saves vs the background writer.

    .venv/bin/python benchmarks/bench_checkpoint.py                  # CPU, base40M
    .venv/bin/python benchmarks/bench_checkpoint.py --preset small --steps 12 --every 2

Runs of the real loop (``pointdiff.training.loop.train``) on random in-memory clouds
(``bench_train.RandomClouds``) with a checkpoint every ``--every`` steps, written either
synchronously (every save waits for its write, ``RunDir.save(..., wait=True)``: the behaviour
before the background writer) or by the background writer (the default; the run's last save
waits in both). The runs alternate, ``--repeats`` of each, so a machine whose load changes
(a shared CPU) affects both alike. Reported per mode, medians over its runs:

* stall: the time the loop spends inside ``RunDir.save`` per checkpoint (the last one excluded);
  synchronous: copy + write, background: the copy (and any wait for the previous write);
* step: the time of a step without its save (the background write competes with training for
  the CPU cores, which this includes);
* write: how long ``save_checkpoint`` took, in whichever thread ran it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train, beside this file
from bench_train import RandomClouds  # noqa: E402

from pointdiff.checkpoint import save_checkpoint  # noqa: E402
from pointdiff.config import DiffusionConfig, TrainConfig, apply_overrides, get_preset  # noqa: E402
from pointdiff.models import count_params  # noqa: E402
from pointdiff.training import loop, run_dir  # noqa: E402
from pointdiff.training.objectives import BaseLoss, build_diffusion_model  # noqa: E402


def run_one(args, sync: bool) -> dict:
    """One run; its saves' stalls, its step times without saves and its write times (s)."""
    cfg = apply_overrides(get_preset(args.preset), [f"--num_points={args.num_points}"])
    torch.manual_seed(0)
    model = build_diffusion_model(cfg, DiffusionConfig())
    data = RandomClouds(4 * args.batch, cfg.num_points, cfg.cond_dim)
    steps = args.steps + 1  # step 1 (warm-up) is not timed
    tc = TrainConfig(
        batch_size=args.batch,
        max_steps=steps,
        warmup_steps=1,
        log_every=steps,
        ckpt_every=args.every,
        keep_checkpoints=2,
    )
    ticks, stalls, writes = [], {}, []

    class TimedRunDir(run_dir.RunDir):
        def save(self, step, root, optimizer, scheduler, wait=False):
            t0 = time.perf_counter()
            super().save(step, root, optimizer, scheduler, wait=wait or sync)
            stalls[step] = time.perf_counter() - t0

    def timed_write(path, step, **kwargs):
        t0 = time.perf_counter()
        out = save_checkpoint(path, step, **kwargs)
        writes.append(time.perf_counter() - t0)
        return out

    loop.RunDir, run_dir.save_checkpoint = TimedRunDir, timed_write
    try:
        with tempfile.TemporaryDirectory(dir=args.tmp) as run:
            loss_fn = BaseLoss(DiffusionConfig(), "text_emb")
            clock = lambda step, info: ticks.append((step, time.perf_counter()))  # noqa: E731
            loop.train(model, loss_fn, data, tc, run, {"model": cfg}, callback=clock)
            size = sum(f.stat().st_size for f in sorted(Path(run).glob("ckpt-*"))[-1].iterdir())
    finally:
        loop.RunDir, run_dir.save_checkpoint = run_dir.RunDir, save_checkpoint
    # a step's time: from the previous callback to its own, less the previous step's save
    pairs = zip(ticks, ticks[1:], strict=False)
    step_s = [t - t_prev - stalls.get(s_prev, 0.0) for (s_prev, t_prev), (_, t) in pairs]
    return {
        "params_M": count_params(model) / 1e6,
        "ckpt_MB": size / 1e6,
        "stall": [v for s, v in stalls.items() if s != steps],  # the last save always waits
        "step": step_s,
        "write": writes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="base40M")
    p.add_argument("--num-points", type=int, default=64, help="points per cloud (step time)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--every", type=int, default=2, help="checkpoint every this many steps")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--tmp", default=None, help="where the run directories go (default: $TMPDIR)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"sync": [], "background": []}
    for _ in range(args.repeats):
        for mode in results:
            results[mode].append(run_one(args, sync=mode == "sync"))
    first = results["sync"][0]
    print(
        f"{args.preset} ({first['params_M']:.1f} M params, checkpoint {first['ckpt_MB']:.0f} MB), "
        f"batch {args.batch} × {args.num_points} points, {args.steps} steps, checkpoint every "
        f"{args.every}, {args.repeats} runs per mode, {torch.get_num_threads()} threads"
    )
    print(f"{'saves':12s} {'stall s / checkpoint':>21s} {'step s':>8s} {'write s':>8s}")
    for mode, runs in results.items():
        med = {
            k: statistics.median(v for r in runs for v in r[k]) for k in ("stall", "step", "write")
        }
        print(f"{mode:12s} {med['stall']:21.3f} {med['step']:8.3f} {med['write']:8.3f}")


if __name__ == "__main__":
    main()
