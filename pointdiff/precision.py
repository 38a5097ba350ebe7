"""Which device and which precision to sample on: the one place that reads the hardware.

``resolve_device("auto")`` is CUDA when present, else the CPU. ``choose_precision`` turns
``auto | fp32 | bf16`` into a :class:`Precision` for that device: ``auto`` is bf16 autocast on
CUDA, and on a CPU only where bf16 runs natively (AMX or AVX512-BF16, read from
``/proc/cpuinfo``); fp32 elsewhere. Without native bf16, a CPU emulates it through fp32 and
every matmul pays for the conversions: a base40M forward (batch 2, 1024 points) measured 3.0×
slower than fp32 with torch's AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX512-BF16 machine) and 6.3× on an AVX2-only CPU, so an
explicit bf16 there comes with a note that says so.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags of x86 CPUs that compute bf16 in hardware, best first, and their names
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}
#: measured cost of bf16 autocast on a CPU without native bf16, base40M forward (module doc)
EMULATED_BF16_SLOWDOWN = "3-6×"


@dataclass(frozen=True)
class Precision:
    """The precision a run uses and why.

    :param bf16: bf16 autocast on (else fp32).
    :param reason: a short phrase for logs, e.g. ``"bf16: CUDA"``.
    :param note: a line to show the user (an explicit bf16 that will be slow), or None.
    """

    bf16: bool
    reason: str
    note: str | None = None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of ``/proc/cpuinfo``); empty where the
    file is missing (macOS, Windows) or unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``model name`` of ``/proc/cpuinfo``), for benchmark tables; the
    platform's processor string where that file is missing."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_capability() -> str:
    """torch's vector ISA for CPU kernels (``AVX2``, ``AVX512``, ``DEFAULT``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16_cpu(flags: set[str] | None = None) -> str | None:
    """The name of this CPU's native bf16 unit (``AMX``, ``AVX512-BF16``), or None: from the
    cpuinfo flags, or torch's capability where a build names it (``AVX512_BF16``, ``AMX``)."""
    flags = cpu_flags() if flags is None else flags
    found = next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags), None)
    capability = cpu_capability().upper()
    if found is None and ("AMX" in capability or "BF16" in capability):
        found = capability
    return found


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: ``cuda`` when this machine has a usable GPU, else ``cpu``; other names as is."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_precision(precision: str, device: str | torch.device) -> Precision:
    """Resolve ``auto | fp32 | bf16`` for ``device`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    kind = resolve_device(device).type
    if precision == "fp32":
        return Precision(False, "fp32: asked for")
    if kind == "cuda":
        return Precision(True, "bf16: CUDA")
    if kind != "cpu":  # MPS and others: bf16 autocast support varies, stay exact
        return Precision(precision == "bf16", f"{precision}: {kind}")
    native = native_bf16_cpu()
    if native is not None:
        note = None
        if precision == "auto":  # not what a CPU run used to give: say so, once per run
            note = (
                f"bf16 autocast: this CPU computes bf16 natively ({native}); "
                "--precision fp32 for fp32"
            )
        return Precision(True, f"bf16: this CPU computes bf16 natively ({native})", note)
    if precision == "auto":
        return Precision(False, f"fp32: this CPU ({cpu_capability()}) has no native bf16")
    note = (
        f"bf16 on this CPU ({cpu_capability()}, no AMX/AVX512-BF16): ~{EMULATED_BF16_SLOWDOWN} "
        "slower than fp32 for base40M; use --precision fp32"
    )
    return Precision(True, "bf16: asked for (emulated on this CPU)", note)


__all__ = [
    "EMULATED_BF16_SLOWDOWN",
    "NATIVE_BF16_FLAGS",
    "PRECISIONS",
    "Precision",
    "choose_precision",
    "cpu_capability",
    "cpu_flags",
    "native_bf16_cpu",
    "resolve_device",
]
