"""The ``pointdiff demo`` subcommand: its arguments and its run (``pointdiff.cli`` lists it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pointdiff.cli_checks import add_device_args, device_and_bf16, number_parser
from pointdiff.release import DEFAULT_CHECKPOINT

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="local web app: prompt -> interactive 3D cloud and mesh, with downloads",
        description="Serve a web page where prompts become coloured point clouds and meshes, "
        "shown in an interactive 3D view (three.js, served by the app: no network needed) "
        "with PLY/GLB/NPZ downloads. One model in memory; requests run one at a time from a "
        "bounded queue, and a full queue answers 'busy'.",
    )
    p.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="pipeline or model directory (default: the shipped checkpoint)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 lets "
        "anyone who can reach this machine use it)",
    )
    p.add_argument("--port", type=number_parser(int, 0, 65535), default=7860)
    p.add_argument(
        "--pointe-dir",
        default=None,
        help="serve OpenAI's Point-E text pipeline from this directory of point-e .pt files "
        "(or converted directories) instead of --checkpoint",
    )
    p.add_argument(
        "--clip-weights",
        default=None,
        metavar="FILE",
        help="local CLIP ViT-L/14 weights for --pointe-dir (default: open_clip's local cache)",
    )
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch frozen CLIP weights missing locally (--no-download: fail, naming the file "
        "to fetch and where to put it)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="serve the checkpoint's distilled stages (pointdiff sample --fast)",
    )
    p.add_argument(
        "--queue",
        type=number_parser(int, 1, 1000),
        default=8,
        help="requests that may wait behind the running one; more are told 'busy' (default 8)",
    )
    add_device_args(p)


def run_demo(args) -> int:
    from pointdiff.compat.pointe_pipeline import load_pointe_pipeline
    from pointdiff.pipeline import load_pipeline

    from .server import DemoApp, make_server

    try:
        server = make_server(None, args.host, args.port)
    except OSError as e:
        print(
            f"pointdiff demo: error: cannot listen on {args.host}:{args.port} ({e.strerror}); "
            "choose another --port",
            file=sys.stderr,
        )
        return 2
    with server:
        device, bf16 = device_and_bf16(args)
        if args.pointe_dir:
            pipe = load_pointe_pipeline(
                args.pointe_dir,
                clip_weights=args.clip_weights,
                device=device,
                download=args.download,
            )
            name = f"Point-E ({args.pointe_dir})"
        else:
            pipe = load_pipeline(args.checkpoint, device, download=args.download, fast=args.fast)
            name = Path(args.checkpoint).name
        app = DemoApp(pipe, bf16=bf16, max_waiting=args.queue, name=name)
        server.RequestHandlerClass.app = app
        host, port = server.server_address[:2]
        if args.host not in LOOPBACK:
            print(
                f"note: listening on {args.host}: anyone who can reach this machine can use "
                "the demo (default: 127.0.0.1, this machine only)",
                file=sys.stderr,
            )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"pointdiff demo: {name} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    return 0
