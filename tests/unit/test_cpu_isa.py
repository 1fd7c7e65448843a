"""The one CPU description and what is chosen from it: no code path may need an instruction the CPU lacks.

A faked AVX2-only description (an AMD Zen 3's flags) must select the avx2 kernels, plain-op RMSNorm on the
Paddle path (Paddle's fused_rms_norm is built for AVX-512), and no MKL switch on Intel; the avx2 library must
hold no AVX-512 instruction at all (read from its disassembly, so it holds whatever the compiler emitted).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from paddlellm.config import CPU_KERNEL_CHOICES, EngineConfig
from paddlellm.cpu import KERNEL_ISA_FLAGS, KERNEL_ISAS, CpuInfo, parse_cpuinfo, read_cpu
from paddlellm.errors import ConfigError
from paddlellm.layers.kernels import paddle_kernels, select_kernels
from paddlellm.layers.norm import FusedRMSNorm, NativeNorms, PaddleRMSNorm
from paddlellm.native import build
from paddlellm.worker.cpu_tuning import apply_mkl_env

# A 2-core AMD EPYC (Zen 3) as /proc/cpuinfo shows it: AVX2 + FMA + F16C, no AVX-512. The whole suite runs
# against it with PADDLELLM_CPUINFO=tests/fakes/cpuinfo_avx2_zen3 (docs/engine-perf.md). A third processor
# block here claims avx512f: only the first processor is read.
ZEN3 = (Path(__file__).parents[1] / "fakes" / "cpuinfo_avx2_zen3").read_text()
ZEN3 += "\nprocessor\t: 2\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f\n"
SKYLAKE = "vendor_id: GenuineIntel\nmodel name: Xeon\nflags: avx avx2 fma f16c avx512f avx512vl avx512bw\n"
OLD = "vendor_id: GenuineIntel\nflags: sse2 avx\n"


def test_parse_reads_the_first_processor() -> None:
    cpu = parse_cpuinfo(ZEN3, "fake")
    assert (cpu.vendor, cpu.model_name, cpu.is_amd) == ("AuthenticAMD", "AMD EPYC 7B13", True)
    assert "avx512f" not in cpu.flags  # the second processor's line is not read
    assert cpu.kernel_isas == ("avx2",) and cpu.best_kernel_isa == "avx2"
    assert not cpu.paddle_fused_ops_ok
    assert cpu.missing("avx512") == ["avx512f", "avx512vl"]
    assert parse_cpuinfo(SKYLAKE).kernel_isas == ("avx512", "avx2")
    assert parse_cpuinfo(OLD).best_kernel_isa is None


def test_read_cpu_follows_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN3)
    monkeypatch.setenv("PADDLELLM_CPUINFO", str(fake))
    cpu = read_cpu()
    assert cpu.kernel_isas == ("avx2",) and cpu.source == str(fake)
    assert "description from" in cpu.describe()
    assert read_cpu(str(tmp_path / "missing")).kernel_isas == ()  # unreadable: nothing native


def test_every_isa_has_compiler_flags_and_a_choice() -> None:
    assert tuple(build.ISA_CFLAGS) == KERNEL_ISAS
    assert set(KERNEL_ISAS) <= set(CPU_KERNEL_CHOICES)
    for isa in KERNEL_ISAS:  # the compiler may use nothing beyond what the CPU flags promise
        implied = {
            f.removeprefix("-m").replace("avx512bf16", "avx512_bf16").replace("avx512vnni", "avx512_vnni")
            for f in build.ISA_CFLAGS[isa]
        }
        assert implied == set(KERNEL_ISA_FLAGS[isa]), isa


def test_a_faked_avx2_only_cpu_selects_nothing_that_needs_avx512() -> None:
    cpu = parse_cpuinfo(ZEN3, "fake")
    for mode in ("auto", "native", "avx2"):
        k = select_kernels(EngineConfig(quantization="none", cpu_kernels=mode), cpu)
        assert k.isa == "avx2" and isinstance(k.norm, NativeNorms)
        assert k.required_cpu_flags <= cpu.flags
        assert k.gemm.native.isa == "avx2"  # type: ignore[attr-defined]
    # bf16 weights widened on AVX2
    bf16 = select_kernels(EngineConfig(quantization="none", dtype="bfloat16"), cpu)
    assert bf16.isa == "avx2" and bf16.gemm.name == "packed-bf16-avx2"
    for quant in ("wint8", "wint4"):  # vpmaddubsw, no VNNI needed
        q = select_kernels(EngineConfig(quantization=quant), cpu)
        assert q.isa == "avx2" and q.gemm.name == f"packed-{quant}-avx2"
        assert q.required_cpu_flags <= cpu.flags
    paddle = select_kernels(EngineConfig(quantization="none", cpu_kernels="paddle"), cpu)
    assert paddle.norm is PaddleRMSNorm and paddle.required_cpu_flags <= cpu.flags
    for isa in ("avx512", "avx512_bf16"):
        with pytest.raises(ConfigError, match="lacks avx512"):
            select_kernels(EngineConfig(quantization="none", cpu_kernels=isa), cpu)
    with pytest.raises(build.NativeUnavailable, match="lacks"):
        build.load("avx512", cpu)


def test_no_native_isa_falls_back_to_plain_paddle_ops() -> None:
    cpu = parse_cpuinfo(OLD)
    k = select_kernels(EngineConfig(quantization="none"), cpu)
    assert k.isa == "paddle" and k.norm is PaddleRMSNorm and k.decode_attention is None
    with pytest.raises(ConfigError, match="no native kernel ISA"):
        select_kernels(EngineConfig(quantization="none", cpu_kernels="native"), cpu)
    with pytest.raises(ConfigError, match="bfloat16"):
        select_kernels(EngineConfig(quantization="none", dtype="bfloat16"), cpu)


def test_paddle_fused_ops_only_where_they_were_built_to_run() -> None:
    assert paddle_kernels("cpu", parse_cpuinfo(SKYLAKE)).norm is FusedRMSNorm
    assert paddle_kernels("cpu", parse_cpuinfo(ZEN3)).norm is PaddleRMSNorm
    assert paddle_kernels("gpu", parse_cpuinfo(ZEN3)).norm is FusedRMSNorm  # GPU kernels, no CPU ISA


def test_mkl_switch_only_on_amd(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    assert apply_mkl_env(parse_cpuinfo(SKYLAKE)) == {}
    assert apply_mkl_env(parse_cpuinfo(ZEN3)) == {"MKL_DEBUG_CPU_TYPE": "5"}
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "4")
    assert apply_mkl_env(parse_cpuinfo(ZEN3)) == {}  # an explicit setting is left alone
    assert CpuInfo("GenuineIntel", "", frozenset()).mkl_env() == {}


# Registers and mnemonics that exist only with AVX-512 (EVEX encoding): zmm, ymm/xmm 16-31, mask registers,
# and AVX-512-only instructions that can also be written on ymm0-15.
_AVX512_ONLY = re.compile(
    r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b|\{1to\d+\}|\b(vpternlog|vperm[it]2|vpro[lr]|vrndscale|vscalef|"
    r"vgetexp|vgetmant|vfixupimm|vrange|vreduce|vcompress|vexpand|vpmov[dqw][bwd]|vpbroadcastm|vdpbf16|vcvtne2ps|"
    r"vpconflict|vplzcnt|vpabsq|vp(max|min)[su]q|vpsraq|vcvt[tu]?p[sd]2u?qq|vcvtu|vextract[fi]64x|"
    r"vinsert[fi]64x|vshuf[fi](32|64)x|valign[dq]|vpmullq|vrcp14|vrsqrt14|kmov|kor|kand)"
)


def _disassembly(path: str) -> str:
    cmd = ["objdump", "-d", "--no-show-raw-insn", path]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_avx2_library_holds_no_avx512_instruction() -> None:
    asm = _disassembly(str(build.build("avx2")))
    bad = [line for line in asm.splitlines() if _AVX512_ONLY.search(line)]
    assert not bad, bad[:10]
    assert "vfmadd" in asm and "%ymm" in asm  # it is vector code, not a scalar fallback
    # The check can fail: the AVX-512 libraries trip it.
    assert _AVX512_ONLY.search(_disassembly(str(build.build("avx512"))))
    assert "vdpbf16ps" in _disassembly(str(build.build("avx512_bf16")))


def test_kernel_sources_are_ascii() -> None:
    """The Triton stub's embedded interpreter may run with an ASCII locale; the sources stay plain ASCII
    (the builder hashes bytes anyway)."""
    for src in (*build.SOURCES, *build.HEADERS):
        src.read_bytes().decode("ascii")
