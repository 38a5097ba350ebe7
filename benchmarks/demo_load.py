"""Load test of ``pointdiff demo`` over loopback: many clients submit at once.

Starts the real command (``python -m pointdiff.cli demo --port 0``) with the shipped
checkpoint, lets ``--clients`` threads submit one prompt each at the same moment, and follows
every answer to its end: a job is either done (its mesh downloaded) or the client was told
"busy" at once. Prints one table: how many were answered, refused, lost or crashed, p50/p95
latency from submission to the last result file, and the server's peak memory (VmHWM), with
the CPU named.

    .venv/bin/python benchmarks/demo_load.py                 # 20 clients, queue 8
    .venv/bin/python benchmarks/demo_load.py --clients 40 --queue 4 --no-mesh
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    from pointdiff.precision import cpu_name

    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores"


def _proc_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc (VmRSS, VmHWM), KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1])


def _call(url: str, data: dict | None = None, timeout: float = 60) -> tuple[int, dict | bytes]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers["Content-Type"]
    return status, json.loads(raw) if ctype == "application/json" else raw


def _client(base: str, i: int, request: dict, barrier, out: list, limit: float) -> None:
    """One user: submit, then poll to the end; ``out[i]`` gets (outcome, seconds, detail)."""
    barrier.wait()
    t0 = time.perf_counter()
    try:
        status, body = _call(f"{base}api/jobs", {**request, "seed": i})
        if status == 503:
            out[i] = ("busy", time.perf_counter() - t0, body["error"])
            return
        if status != 202:
            out[i] = ("crashed", time.perf_counter() - t0, f"HTTP {status}: {body}")
            return
        while time.perf_counter() - t0 < limit:
            status, job = _call(f"{base}api/jobs/{body['id']}")
            if status != 200:
                out[i] = ("lost", time.perf_counter() - t0, f"HTTP {status}: {job}")
                return
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.5)
        else:
            out[i] = ("lost", time.perf_counter() - t0, "no answer in time")
            return
        if job["state"] == "failed":
            out[i] = ("failed", time.perf_counter() - t0, job["error"])
            return
        result = job["results"][0]
        name = "mesh.glb" if "mesh.glb" in result["files"] else "cloud.ply"
        status, data = _call(f"{base}api/results/{result['id']}/{name}")
        ok = status == 200 and len(data) > 0
        out[i] = ("done" if ok else "lost", time.perf_counter() - t0, f"{name} {len(data)} B")
    except Exception as e:  # a client error is a finding, not a reason to stop the others
        out[i] = ("crashed", time.perf_counter() - t0, f"{type(e).__name__}: {e}")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "pointdiff-small"))
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--queue", type=int, default=8, help="the server's --queue")
    p.add_argument("--prompt", default="a red sofa")
    p.add_argument("--steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--grid-size", type=int, default=64)
    p.add_argument("--no-mesh", action="store_true")
    p.add_argument("--limit", type=float, default=7200, help="seconds a client waits at most")
    args = p.parse_args()

    cmd = [sys.executable, "-m", "pointdiff.cli", "demo", "--checkpoint", args.checkpoint]
    cmd += ["--port", "0", "--queue", str(args.queue)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    t_start = time.perf_counter()
    line = server.stdout.readline()  # "pointdiff demo: NAME at http://127.0.0.1:PORT/ ..."
    match = re.search(r"(http://\S+/)", line)
    if match is None:
        server.kill()
        print(f"the server did not start: {line!r}", file=sys.stderr)
        return 1
    base = match[1]
    started = time.perf_counter() - t_start
    rss_idle = _proc_kib(server.pid, "VmRSS")

    request = {"prompt": args.prompt, "grid_size": args.grid_size, "mesh": not args.no_mesh}
    if args.steps:
        request["steps"] = args.steps
    out: list = [None] * args.clients
    barrier = threading.Barrier(args.clients)
    threads = [
        threading.Thread(target=_client, args=(base, i, request, barrier, out, args.limit))
        for i in range(args.clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    alive = server.poll() is None and _call(f"{base}api/config")[0] == 200
    peak = _proc_kib(server.pid, "VmHWM")
    server.send_signal(signal.SIGINT)
    code = server.wait(60)

    outcomes = [o[0] for o in out]
    done = [o[1] for o in out if o[0] == "done"]
    busy = [o[1] for o in out if o[0] == "busy"]
    counts = {k: outcomes.count(k) for k in ("done", "busy", "failed", "lost", "crashed")}
    mesh = "no mesh" if args.no_mesh else f"mesh grid {args.grid_size}"
    rows = [
        ("CPU", _cpu_name()),
        ("request", f"{args.prompt!r}, steps {args.steps or 'default'}, {mesh}"),
        ("clients at once / server queue", f"{args.clients} / {args.queue} waiting + 1 running"),
        ("answered (done) / told busy", f"{counts['done']} / {counts['busy']}"),
        ("failed / lost / crashed", f"{counts['failed']} / {counts['lost']} / {counts['crashed']}"),
        (
            "latency done p50 / p95",
            f"{_percentile(done, 50):.1f} s / {_percentile(done, 95):.1f} s",
        ),
        (
            "latency busy p50 / p95",
            f"{_percentile(busy, 50):.3f} s / {_percentile(busy, 95):.3f} s",
        ),
        ("wall time, all clients", f"{wall:.1f} s"),
        ("server start (model loaded)", f"{started:.1f} s"),
        ("server memory idle / peak", f"{rss_idle / 2**20:.2f} GiB / {peak / 2**20:.2f} GiB"),
        ("server alive after / exit code", f"{alive} / {code}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'pointdiff demo load test'.ljust(width)} | |\n| {'-' * width} | --- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    for i, (outcome, secs, detail) in enumerate(out):
        if outcome not in ("done", "busy"):
            print(f"client {i}: {outcome} after {secs:.1f} s: {detail}", file=sys.stderr)
    ok = counts["done"] + counts["busy"] == args.clients and alive and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
