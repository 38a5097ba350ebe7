"""Device and precision for the hardware (``pointdiff.precision``): CUDA when present, bf16 only
where it is fast, and a note where an explicit bf16 will be slow. Capabilities are monkeypatched;
the CUDA paths themselves are the ``gpu`` tests at the end."""

import pytest
import torch

from pointdiff import precision
from pointdiff.precision import choose_precision, cpu_flags, native_bf16_cpu, resolve_device

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse sse2 avx avx2 fma {extra}
bogomips\t: 4000

processor\t: 1
flags\t\t: fpu
"""


def _cpu(monkeypatch, flags: set[str], capability: str) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(flags))
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)


def test_cpu_flags_read_the_first_flags_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra="avx512f avx512_bf16"))
    assert {"avx2", "avx512_bf16"} <= cpu_flags(path) and "fpu" in cpu_flags(path)
    assert cpu_flags(tmp_path / "missing") == set()  # macOS, Windows: no file, no flags


@pytest.mark.parametrize(
    "flags, capability, native",
    [
        ({"avx2"}, "AVX2", None),
        ({"avx512f"}, "AVX512", None),
        ({"avx512f", "avx512_bf16"}, "AVX512", "AVX512-BF16"),
        ({"avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512", "AMX"),
        (set(), "AVX512_BF16", "AVX512_BF16"),  # a torch build that names it itself
        (set(), "DEFAULT", None),
    ],
)
def test_native_bf16_is_amx_or_avx512_bf16(monkeypatch, flags, capability, native):
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)
    assert native_bf16_cpu(flags) == native


def test_auto_device_is_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # named devices pass through


def test_auto_precision_follows_the_hardware(monkeypatch):
    _cpu(monkeypatch, {"avx2"}, "AVX2")
    assert choose_precision("auto", "cuda").bf16  # GPUs: bf16 autocast
    avx2 = choose_precision("auto", "cpu")
    assert not avx2.bf16 and avx2.note is None and "AVX2" in avx2.reason
    assert not choose_precision("fp32", "cuda").bf16  # asked for
    _cpu(monkeypatch, {"avx2", "avx512_bf16"}, "AVX512")
    native = choose_precision("auto", "cpu")
    assert native.bf16 and "AVX512-BF16" in native.note and "--precision fp32" in native.note
    assert choose_precision("bf16", "cpu").note is None  # asked for and fast: nothing to say
    _cpu(monkeypatch, {"amx_bf16", "avx512_bf16"}, "AVX512")
    assert "AMX" in choose_precision("auto", "cpu").reason
    assert not choose_precision("auto", "mps").bf16
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        choose_precision("fp16", "cpu")


def test_explicit_bf16_on_a_cpu_without_native_bf16_says_what_it_costs(monkeypatch):
    _cpu(monkeypatch, {"avx2"}, "AVX2")
    chosen = choose_precision("bf16", "cpu")
    assert chosen.bf16  # still honoured
    assert chosen.note == (
        "bf16 on this CPU (AVX2, no AMX/AVX512-BF16): ~3-6× slower than fp32 for base40M; "
        "use --precision fp32"
    )


# ----------------------------------------------------------------------------------------------
# The CUDA paths (run where a GPU is present)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_cuda_auto_is_bf16_and_autocast_runs_a_denoiser_in_bf16():
    from pointdiff.config import get_preset
    from pointdiff.models import build_model

    assert resolve_device("auto").type == "cuda"
    chosen = choose_precision("auto", "auto")
    assert chosen.bf16 and chosen.note is None
    cfg = get_preset("tiny")
    net = build_model(cfg).cuda().eval()
    x, sigma = torch.randn(2, cfg.num_points, 6, device="cuda"), torch.ones(2, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x, sigma, text_emb=torch.randn(2, cfg.cond_dim, device="cuda"))
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


def test_cpu_name_reads_the_model_name_line(tmp_path):
    from pointdiff.precision import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: avx2\n")
    assert cpu_name(info) == "Example CPU 9000"
    assert cpu_name(tmp_path / "missing")  # the platform's name, never empty
