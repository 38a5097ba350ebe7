"""Argument types and checks of the ``pointdiff`` command: everything that can be refused
before a file is read or a model is loaded, as argparse's ``argument --name: why``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pointdiff.precision import PRECISIONS, choose_precision, resolve_device

MAX_PROMPT_CHARS = 300  # about CLIP's 77 tokens; far longer than any training caption
MAX_NUM_SAMPLES = 1000
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_SEED = 2**63 - 1  # seed + i seeds sample i's torch.Generator (at most 2**64 - 1)


MAX_MESH_GRID = 512  # 512³ float32 samples are 0.5 GB before marching cubes' own copies


def number_parser(
    kind: type, lo: float | None = None, hi: float | None = None, finite: bool = True
):
    """An argparse ``type``: an int or float in [lo, hi] (NaN never; ±inf only if not ``finite``);
    argparse reports a failure as ``argument --name: <message>`` with exit code 2."""
    name = "an integer" if kind is int else "a number"
    lo_, hi_ = (f"{b}" if kind is int else f"{b:g}" for b in (lo or 0, hi or 0))
    bounds = (
        f"from {lo_} to {hi_}"
        if lo is not None and hi is not None
        else f">= {lo_}"
        if lo is not None
        else f"<= {hi_}"
        if hi is not None
        else ""
    )

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {name} {bounds}, got {text!r}") from None
        if math.isnan(value) or (finite and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {name} {bounds}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback message names the type
    return parse


def parse_prompt(text: str) -> str:
    """An argparse ``type``: a text prompt, non-blank and at most ``MAX_PROMPT_CHARS`` long."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"every prompt must be a non-empty string, got {text!r}")
    if len(text) > MAX_PROMPT_CHARS:
        raise argparse.ArgumentTypeError(
            f"a prompt may have at most {MAX_PROMPT_CHARS} "
            f"characters, got {len(text)} ({text[:40]!r}...)"
        )
    return text


def check_device(text: str) -> str:
    """An argparse ``type``: ``auto`` or a torch device string that names a device this machine
    has."""
    import torch

    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available on this machine "
                "(no GPU, driver or CUDA build of torch); use cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use cpu")
    return text


def add_device_args(p) -> None:
    """--device, --precision and the --bf16 alias (``pointdiff.precision`` resolves them)."""
    p.add_argument(
        "--device",
        type=check_device,
        default="auto",
        help="auto (default: cuda when present, else cpu), cpu, cuda, cuda:1, mps",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): bf16 autocast on CUDA and on CPUs that compute bf16 natively (AMX, "
        "AVX512-BF16), fp32 elsewhere",
    )
    p.add_argument("--bf16", action="store_true", help="same as --precision bf16")


def device_and_bf16(args) -> tuple[str, bool]:
    """The device and bf16 or not for this run, resolved once; the choice's note printed (an
    explicit bf16 on a CPU that emulates it; auto picking bf16 on a CPU)."""
    device = str(resolve_device(args.device))
    chosen = choose_precision("bf16" if args.bf16 else args.precision, device)
    if chosen.note:
        print(f"note: {chosen.note}", file=sys.stderr)
    return device, chosen.bf16


def _precision_error(args) -> str | None:
    if args.bf16 and args.precision == "fp32":
        return "argument --bf16: not allowed with --precision fp32 (--bf16 is --precision bf16)"
    return None


def sample_usage_error(args) -> str | None:
    """The first problem with arguments of ``sample`` that argparse cannot see alone (checked
    before any model is loaded), as ``argument --name: why``; None when there is none."""
    if problem := _precision_error(args):
        return problem
    if bool(args.prompts) == bool(args.image) or (args.image and not args.pointe_dir):
        return "give text prompts or --image FILE (with --pointe-dir), not both"
    if getattr(args, "fast", False) and args.pointe_dir:
        return (
            "argument --fast: a point-e directory has no fast variant; put distilled point-e "
            "students (train/distill.py) in it under the released names instead"
        )
    lo, hi = args.guidance_interval or (0, math.inf)
    if not lo < hi:
        return f"argument --guidance-interval: LO must be below HI, got {lo:g} {hi:g}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"argument --out: {out} exists and is not a directory"
    if out.is_dir() and not args.overwrite:
        try:
            entries = sorted(e.name for e in out.iterdir())
        except OSError as e:
            return f"argument --out: cannot read {out} ({e.strerror})"
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            n = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            return (
                f"argument --out: {out} is not empty ({n}: {shown}); "
                "choose a new folder or pass --overwrite to replace its sample folders"
            )
    return None


def mesh_usage_error(args) -> str | None:
    """The first problem with ``mesh``'s arguments that argparse cannot see alone, as
    ``argument --name: why``; None when there is none. Runs before the work, so a typo in the
    output path costs nothing."""
    from pointdiff.meshing import MeshError, check_mesh_output

    if problem := _precision_error(args):
        return problem
    try:
        out = check_mesh_output(args.out)
    except MeshError as e:
        return f"argument -o/--out: {e}"
    if out.resolve() == Path(args.cloud).resolve():
        return f"argument -o/--out: {out} is the input cloud; writing the mesh would replace it"
    if args.method != "poisson" and not Path(args.checkpoint).is_dir():
        return (
            f"argument --checkpoint: {args.checkpoint} is not a directory (the SDF head is "
            "needed unless --method poisson)"
        )
    return None
