"""The web demo's API without a browser: request checks, the bounded queue, progress, the HTTP
routes and the result files (with the shipped checkpoint, few steps)."""

import http.client
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pointdiff.cli_checks import MAX_PROMPT_CHARS
from pointdiff.demo.generate import MAX_SAMPLES, RequestError, generate, parse_request
from pointdiff.demo.jobs import Busy, JobQueue, ResultStore
from pointdiff.demo.server import DemoApp, make_server
from pointdiff.pipeline import load_pipeline

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "pointdiff-small"


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(SHIPPED)  # seconds to load; a request of 4 steps samples in seconds


@pytest.fixture
def served(pipe):
    """(app, port): the demo on a free loopback port, stopped after the test."""
    app = DemoApp(pipe, max_waiting=2)
    server = make_server(app, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_address[1]
    server.shutdown()
    server.server_close()
    app.close()


def _call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, json.loads(raw) if is_json else raw


# ----------------------------------------------------------------------------------------------
# Request checks: the CLI's messages and limits, naming the field


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", f"at most {MAX_PROMPT_CHARS}"),
        ({"prompt": 3}, "prompt", "give a text prompt"),
        ({}, "prompt", "give a text prompt"),
        ({"prompt": "a chair", "num_samples": 0}, "num_samples", f"from 1 to {MAX_SAMPLES}"),
        ({"prompt": "a chair", "num_samples": MAX_SAMPLES + 1}, "num_samples", "from 1 to"),
        ({"prompt": "a chair", "num_samples": 2.5}, "num_samples", "an integer"),
        ({"prompt": "a chair", "num_samples": True}, "num_samples", "a number"),
        ({"prompt": "a chair", "seed": -1}, "seed", "from 0 to"),
        ({"prompt": "a chair", "steps": 10_000}, "steps", "from 1 to"),
        ({"prompt": "a chair", "guidance": "nan"}, "guidance", "finite"),
        ({"prompt": "a chair", "guidance": -1}, "guidance", "from 0 to 100"),
        ({"prompt": "a chair", "grid_size": 4096}, "grid_size", "from 16 to"),
        ({"prompt": "a chair", "sampler": "ddim"}, "sampler", "one of"),
        ({"prompt": "a chair", "mesh": "yes"}, "mesh", "true or false"),
        ({"prompt": "a chair", "path": "/etc/passwd"}, "path", "unknown field"),
        (["a chair"], "request", "JSON object"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(data, field, words):
    with pytest.raises(RequestError) as e:
        parse_request(data)
    assert e.value.field == field and words in e.value.message


def test_a_good_request_keeps_its_values_and_defaults_the_rest():
    r = parse_request({"prompt": "  a red chair ", "seed": "7", "num_samples": 2, "steps": ""})
    assert (r.prompt, r.seed, r.num_samples, r.steps, r.guidance) == (
        "a red chair",
        7,
        2,
        None,
        None,
    )
    assert r.mesh is True and r.grid_size == 64


# ----------------------------------------------------------------------------------------------
# The queue: bounded, FIFO, one at a time, nothing lost


class _Gate:
    """A fake job runner that blocks until released and records what it ran."""

    def __init__(self):
        self.release = threading.Event()
        self.ran, self.running = [], 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, request, report):
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        report("base", 1, 2)
        self.release.wait(30)
        if request == "boom":
            raise RuntimeError("exploded")
        with self._lock:
            self.running -= 1
            self.ran.append(request)
        return [request]


def _wait_running(queue, job, timeout=10):
    deadline = time.monotonic() + timeout
    while queue.status(job.id)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_full_queue_says_busy_and_loses_nothing():
    gate = _Gate()
    queue = JobQueue(gate, max_waiting=2)
    first = queue.submit("a")
    _wait_running(queue, first)
    assert queue.status(first.id)["stage"] == "base"  # progress of the running job
    waiting = [queue.submit("b"), queue.submit("c")]
    assert [queue.status(j.id)["position"] for j in waiting] == [0, 1]
    with pytest.raises(Busy, match="busy: 2 requests are already waiting"):
        queue.submit("d")
    gate.release.set()
    for job in [first, *waiting]:
        assert queue.wait(job.id, timeout=30).state == "done"
    assert gate.ran == ["a", "b", "c"] and gate.max_running == 1  # FIFO, one at a time
    assert queue.submit("e")  # room again
    queue.close()


def test_concurrent_submissions_are_each_answered_or_told_busy():
    gate = _Gate()
    queue = JobQueue(gate, max_waiting=3)
    accepted, busy, barrier = [], [], threading.Barrier(12)

    def client(i):
        barrier.wait()
        try:
            accepted.append(queue.submit(i))
        except Busy:
            busy.append(i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) + len(busy) == 12 and 3 <= len(accepted) <= 4
    gate.release.set()
    assert all(queue.wait(j.id, timeout=30).state == "done" for j in accepted)
    assert sorted(gate.ran) == sorted(j.request for j in accepted)
    queue.close()


def test_a_failing_job_fails_alone():
    gate = _Gate()
    gate.release.set()
    queue = JobQueue(gate, max_waiting=4)
    bad, good = queue.submit("boom"), queue.submit("fine")
    assert queue.wait(bad.id, 30).state == "failed"
    assert "RuntimeError: exploded" in queue.status(bad.id)["error"]
    assert queue.wait(good.id, 30).state == "done"
    queue.close()


def test_the_result_store_keeps_the_newest():
    store = ResultStore(max_results=2)
    ids = [store.add({"n": i}, {"cloud.ply": b"x"})["id"] for i in range(3)]
    assert [r["n"] for r in store.gallery()] == [2, 1]
    assert store.get(ids[0]) == (None, {}) and store.get(ids[2])[1] == {"cloud.ply": b"x"}


# ----------------------------------------------------------------------------------------------
# The work and the HTTP routes, on the shipped checkpoint


def test_generate_reports_every_stage_and_step(pipe):
    seen = []
    store = ResultStore()
    request = parse_request(
        {"prompt": "a chair", "num_samples": 2, "steps": 4, "seed": 5, "grid_size": 32}
    )
    results = generate(pipe, request, lambda *a: seen.append(a), store)
    assert [r["seed"] for r in results] == [5, 6]
    base = [s for s in seen if s[0] == "base"]
    assert base[0] == ("base", 0, 4) and base[-1] == ("base", 4, 4)
    assert [b[1] for b in base] == sorted(b[1] for b in base)  # steps only go forward
    stages = [s[0] for s in seen]
    assert stages.index("base") < stages.index("upsampler") < stages.index("mesh")
    info, files = store.get(results[0]["id"])
    n = info["points"]
    assert len(files["cloud.bin"]) == 15 * n  # viewer data: float32 xyz + sRGB bytes
    # the viewer's Y-up xyz are the cloud's Z-up ones turned, as meshing.export does
    xyz = np.frombuffer(files["cloud.bin"][: 12 * n], np.float32).reshape(n, 3)
    coords = np.load(io.BytesIO(files["cloud.npz"]))["coords"]
    np.testing.assert_allclose(xyz, np.stack([coords[:, 0], coords[:, 2], -coords[:, 1]], 1))


def test_http_round_trip_and_downloads(served):
    app, port = served
    status, cfg = _call(port, "GET", "/api/config")
    assert status == 200 and cfg["limits"]["num_samples"] == [1, MAX_SAMPLES]
    sample = app.pipe.stages[0].sample  # the checkpoint's defaults fill the form
    assert (cfg["defaults"]["steps"], cfg["defaults"]["sampler"]) == (sample.steps, sample.sampler)
    job = {"prompt": "a chair", "seed": 1, "steps": 4, "grid_size": 32}
    status, body = _call(port, "POST", "/api/jobs", job)
    assert status == 202
    job = app.queue.wait(body["id"], timeout=120)
    status, done = _call(port, "GET", f"/api/jobs/{job.id}")
    assert status == 200 and done["state"] == "done", done
    result = done["results"][0]
    assert set(result["files"]) >= {"cloud.ply", "cloud.npz", "mesh.glb", "mesh.ply"}
    base = f"/api/results/{result['id']}"
    status, glb = _call(port, "GET", f"{base}/mesh.glb")
    assert status == 200
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert len(mesh.faces) == result["faces"] > 0
    status, npz = _call(port, "GET", f"{base}/cloud.npz")
    assert status == 200 and len(np.load(io.BytesIO(npz))["coords"]) == result["points"]
    _, gallery = _call(port, "GET", "/api/results")
    assert gallery["results"][0]["id"] == result["id"]


def test_http_refusals(served):
    app, port = served
    status, body = _call(port, "POST", "/api/jobs", {"prompt": " ", "seed": 1})
    assert status == 400 and body["field"] == "prompt" and "non-empty" in body["error"]
    status, body = _call(port, "POST", "/api/jobs", b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    status, body = _call(port, "POST", "/api/jobs", b"x" * 20_000)
    assert status == 413
    assert _call(port, "GET", "/api/jobs/AAAAAAAAAAAAAAAA")[0] == 404
    # no path from the browser is opened: only the names read at start-up are served
    for path in ["/static/../generate.py", "/static/%2e%2e/server.py", "/api/results/x/../../"]:
        assert _call(port, "GET", path)[0] == 404
    status, _ = _call(port, "GET", "/api/config", headers={"Host": "evil.example:80"})
    assert status == 421  # DNS rebinding: only loopback Host names
    status, page = _call(port, "GET", "/")
    assert status == 200 and b'type="importmap"' in page


def test_http_busy_when_the_queue_is_full(served):
    app, port = served
    gate = _Gate()
    app.queue.close()
    app.queue = JobQueue(gate, max_waiting=2)
    first = _call(port, "POST", "/api/jobs", {"prompt": "a chair"})
    _wait_running(app.queue, app.queue.get(first[1]["id"]))
    answers = [first] + [
        _call(port, "POST", "/api/jobs", {"prompt": f"a chair {i}"}) for i in range(4)
    ]
    assert [a[0] for a in answers] == [202, 202, 202, 503, 503]  # one running, two waiting
    busy = [body for code, body in answers if code == 503]
    assert all(b["busy"] and "try again" in b["error"] for b in busy)
    gate.release.set()
    for code, body in answers:
        if code == 202:
            assert app.queue.wait(body["id"], 30).state == "done"


def test_the_command_names_a_port_in_use_before_loading_a_model(capsys, tmp_path):
    import socket

    from pointdiff.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # the checkpoint does not exist: the port is checked first, so it is never read
        assert main(["demo", "--port", str(port), "--checkpoint", str(tmp_path / "no")]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_command_serves_fast_stages_only_where_the_checkpoint_has_them(capsys, tmp_path):
    from pointdiff.cli import main

    (tmp_path / "pipeline.json").write_text('{"stages": {"base": "base"}}')
    argv = ["demo", "--port", "0", "--checkpoint", str(tmp_path), "--fast", "--no-download"]
    assert main(argv) == 2
    assert "has no distilled stages" in capsys.readouterr().err
