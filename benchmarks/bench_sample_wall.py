"""Wall-clock seconds of ``pointdiff sample`` end to end (text → cloud → mesh, files written),
the shipped teacher against ``--fast`` (its distilled stages), side by side in one run.

    .venv/bin/python benchmarks/bench_sample_wall.py                 # "a red sofa", 3 repeats
    .venv/bin/python benchmarks/bench_sample_wall.py --prompt "a floor lamp" --repeats 5

Each repeat runs every variant once, in turn, as a fresh process (interpreter start, imports,
loading the text encoder and the weights, sampling, meshing, writing: what a user waits for);
the table gives the median and the range, and names the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_fast import cpu_name  # noqa: E402

VARIANTS = {"teacher": [], "fast": ["--fast"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompt", default="a red sofa")
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "pointdiff-small"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="more arguments for pointdiff sample")
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, flags in VARIANTS.items():
                out = Path(tmp) / f"{name}-{r}"
                cmd = [
                    sys.executable,
                    "-m",
                    "pointdiff.cli",
                    "sample",
                    args.prompt,
                    "--checkpoint",
                    args.checkpoint,
                    "--out",
                    str(out),
                    *flags,
                    *args.extra,
                ]
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
                if not any(out.glob("*/mesh.glb")):
                    raise SystemExit(f"{name}: no mesh written in {out}")
    print(f"CPU: {cpu_name()}; prompt {args.prompt!r}; {args.repeats} repeats")
    print("| variant | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")


if __name__ == "__main__":
    main()
