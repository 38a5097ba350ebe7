"""The demo's HTTP server: the standard library's threading server, a small JSON API and the
page with its vendored three.js viewer, all served from memory.

Routes (nothing else is answered; no path from a request is ever opened as a file)::

    GET  /                         the page
    GET  /static/<name>            a file of pointdiff/demo/static, read once at start-up
    GET  /api/config               examples, limits and the checkpoint's defaults
    POST /api/jobs                 {"prompt": ..., "seed": ...} -> 202 {"id"} | 400 | 503 busy
    GET  /api/jobs/<id>            state, position in the queue, stage, step, results
    GET  /api/results              this run's results, newest first (the gallery)
    GET  /api/results/<id>/<file>  cloud.ply, cloud.npz, mesh.glb, mesh.ply, cloud.bin (viewer)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pointdiff.pipeline import Stage, TextTo3D

from .generate import EXAMPLES, RequestError, generate, limits, parse_request
from .jobs import Busy, JobQueue, ResultStore

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 16_384  # bytes of a POST body: a prompt and a few numbers
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    "": "text/plain; charset=utf-8",  # LICENSE
}
_DOWNLOADS = {
    "cloud.ply": "application/octet-stream",
    "cloud.npz": "application/octet-stream",
    "mesh.ply": "application/octet-stream",
    "mesh.glb": "model/gltf-binary",
    "cloud.bin": "application/octet-stream",
}
_ID = r"[A-Za-z0-9_-]{8,32}"


def _read_static() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` by its URL name (``vendor/three/three.module.js``)."""
    files = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            name = path.relative_to(STATIC).as_posix()
            files[name] = (path.read_bytes(), _TYPES.get(path.suffix, _TYPES[""]))
    return files


def _script_hashes(html: str) -> list[str]:
    """CSP hashes of the page's inline scripts (its import map; everything else is a file)."""
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
        if s.strip()
    ]


class DemoApp:
    """One pipeline, one job queue, one result store, and the page's files.

    :param pipe: the loaded pipeline (the only model in memory).
    :param max_waiting: requests that may wait behind the running one; more are told "busy".
    :param max_results: results kept for the gallery and downloads (the oldest go first).
    :param name: what the page calls the model.
    """

    def __init__(
        self,
        pipe: TextTo3D,
        bf16: bool = False,
        max_waiting: int = 8,
        max_results: int = 48,
        name: str = "pointdiff",
    ):
        self.pipe = pipe
        self.name = name
        self.store = ResultStore(max_results)
        self.queue = JobQueue(
            partial(_work, pipe, store=self.store, bf16=bf16), max_waiting=max_waiting
        )
        self.static = _read_static()
        page = self.static["index.html"][0].decode()
        self.csp = (
            "default-src 'self'; script-src 'self' "
            + " ".join(_script_hashes(page))
            + "; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )

    def config(self) -> dict:
        """What the page needs before the first request."""
        first = next((s for s in self.pipe.stages if isinstance(s, Stage)), None)
        sample = first.sample if first is not None else None
        return {
            "name": self.name,
            "examples": list(EXAMPLES),
            "limits": limits(),
            "defaults": {
                "seed": 0,
                "num_samples": 1,
                "steps": None if sample is None else sample.steps,
                "guidance": None if sample is None else sample.guidance,
                "sampler": None if sample is None else sample.sampler,
                "stray_ratio": None if sample is None else sample.stray_ratio,
                "grid_size": 64,
                "mesh": True,
            },
            "stages": [s.name for s in self.pipe.stages] + (["sdf"] if self.pipe.sdf_model else []),
            "queue": self.queue.counts(),
        }

    def close(self) -> None:
        self.queue.close()


def _work(pipe, request, report, store, bf16):
    return generate(pipe, request, report, store, bf16=bf16)


class _Handler(BaseHTTPRequestHandler):
    app: DemoApp  # set on the subclass ``make_server`` builds
    allowed_hosts: frozenset[str] | None = None  # None: any Host header (bound to all)
    quiet: bool = False
    server_version = "pointdiff-demo"
    protocol_version = "HTTP/1.1"

    # -------------------------------------------------------------------------------------------
    # Plumbing

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(status, body, "application/json", headers)

    def _error(self, status: int, message: str, headers: dict | None = None, **extra) -> None:
        self._json(status, {"error": message, **extra}, headers)

    def _host_ok(self) -> bool:
        """Refuse Host headers other than the loopback names when bound to loopback: a page
        on another site cannot reach this server through DNS rebinding."""
        if self.allowed_hosts is None:
            return True
        return self.headers.get("Host", "") in self.allowed_hosts

    def log_message(self, format, *args) -> None:
        if not self.quiet:
            sys.stderr.write(f"demo: {self.address_string()} {format % args}\n")

    def log_request(self, code="-", size="-") -> None:
        # polling the job status would flood the log: only POSTs and errors are written
        if self.command == "POST" or (str(code).isdigit() and int(code) >= 400):
            super().log_request(code, size)

    # -------------------------------------------------------------------------------------------
    # Routes

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host header")
        path = self.path.split("?", 1)[0]
        app = self.app
        if path in ("/", "/index.html"):
            body, ctype = app.static["index.html"]
            return self._send(200, body, ctype, {"Content-Security-Policy": app.csp})
        if path.startswith("/static/") and path[8:] in app.static:
            body, ctype = app.static[path[8:]]
            return self._send(200, body, ctype)
        if path == "/api/config":
            return self._json(200, app.config())
        if path == "/api/results":
            return self._json(200, {"results": app.store.gallery()})
        if m := re.fullmatch(rf"/api/jobs/({_ID})", path):
            status = app.queue.status(m[1])
            if status is None:
                return self._error(404, "no such job (finished jobs are forgotten after a while)")
            return self._json(200, status)
        if m := re.fullmatch(rf"/api/results/({_ID})/([a-z]+\.[a-z]+)", path):
            info, files = app.store.get(m[1])
            if m[2] not in files or m[2] not in _DOWNLOADS:
                return self._error(404, "no such result file (old results are dropped)")
            name = f"{info['name']}_{m[2]}"  # slug and seed: letters, digits, '_'
            disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
            return self._send(200, files[m[2]], _DOWNLOADS[m[2]], disposition)
        return self._error(404, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host header")
        if self.path != "/api/jobs":
            return self._error(404, "not found")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "a Content-Length header is required")
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            return self._error(413, f"the request body must be 1 to {MAX_BODY} bytes")
        try:
            data = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self._error(400, "the request body is not JSON", field="request")
        try:
            request = parse_request(data)
        except RequestError as e:
            return self._error(400, e.message, field=e.field)
        try:
            job = self.app.queue.submit(request)
        except Busy as e:
            return self._error(503, str(e), {"Retry-After": "30"}, busy=True)
        return self._json(202, {"id": job.id, **self.app.queue.counts()})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog: the default 5 resets connections when a crowd arrives at once
    # (benchmarks/demo_load.py: 6 of 20 simultaneous clients); every client must get an answer,
    # if only "busy"
    request_queue_size = 128


def make_server(
    app: DemoApp | None, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False
) -> ThreadingHTTPServer:
    """A threading HTTP server for ``app`` (port 0: any free port; ``server_address`` says).
    ``app`` may be set later on ``server.RequestHandlerClass``: the command binds the port
    first, so a port in use fails before the model is loaded."""
    server = _Server((host, port), _Handler)
    bound = server.server_address[1]
    loopback = host in ("127.0.0.1", "localhost", "::1")
    names = ("127.0.0.1", "localhost", "[::1]")
    allowed = frozenset(f"{n}:{bound}" for n in names) if loopback else None
    server.RequestHandlerClass = type(
        "DemoHandler", (_Handler,), {"app": app, "allowed_hosts": allowed, "quiet": quiet}
    )
    return server
