"""Build and load the project's C kernels (`packed_sgemm.c`, `quant_gemm.c`, `paged_attention.c`,
`rms_norm.c`, `decode_step.c`) with the system C compiler, once per machine: one shared library per kernel ISA
(`avx2`, `avx512`, `avx512_bf16`), the same sources compiled with that ISA's flags (`simd.h` is the only
per-ISA code; `team.h` declares the kernels' work-sharing forms the fused decode pass calls). Set-up builds
them all (an image built on one CPU must run on another); `load` refuses an ISA the CPU description lacks.

Each library is cached under `$PADDLELLM_CACHE_DIR` (default `~/.cache/paddlellm`) in a directory
named by a hash of the source, the flags and the compiler, so a changed source rebuilds and a second process
(a TP rank, the Triton stub) reuses the first one's build. Concurrent builders write to private temporary
names and `os.replace` the result, so nobody loads a half-written file.

OpenMP: the kernel links Paddle's own `libiomp5.so` when the wheel ships one, so the kernel and Paddle's MKL
share one thread pool (two runtimes on 2 cores would spin against each other); elsewhere it uses gcc's
libgomp. No paddle import here: the library directory is found from the installed package's location.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from paddlellm.cpu import KERNEL_ISA_FLAGS, CpuInfo, read_cpu

_C_FILES = ("packed_sgemm.c", "quant_gemm.c", "paged_attention.c", "rms_norm.c", "decode_step.c")
SOURCES = tuple(Path(__file__).with_name(n) for n in _C_FILES)
HEADERS = (Path(__file__).with_name("simd.h"), Path(__file__).with_name("team.h"))
COMMON_CFLAGS = ("-O3", "-fno-math-errno", "-fopenmp", "-fPIC", "-Wall")
# Per kernel ISA (paddlellm/cpu.py says which CPU flags each needs): the instructions the compiler may use.
ISA_CFLAGS: dict[str, tuple[str, ...]] = {
    "avx512_bf16": (
        "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512bf16", "-mavx512vnni"
    ),
    "avx512": ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512vl"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
}
LIBS = ("-lmvec", "-lm")  # libmvec: the vector expf of paged_attention.c
CACHE_ENV = "PADDLELLM_CACHE_DIR"
ABI = 7  # packed_sgemm_abi() of the sources this loader speaks to


class NativeUnavailable(RuntimeError):
    """The kernels cannot be used here; the message says why (no compiler, CPU lacks the ISA, build error)."""


@dataclass(frozen=True)
class NativeLibrary:
    path: Path
    lib: ctypes.CDLL
    isa: str  # the kernel ISA the library was compiled for (read from it)
    panel_width: int  # NR: output columns per packed weight panel (read from it)
    int8_panel_width: int  # the same for the int8 weights of quant_gemm.c


def _paddle_omp_dir() -> Path | None:
    spec = importlib.util.find_spec("paddle")
    bases = list(spec.submodule_search_locations or []) if spec is not None else []
    for base in bases:
        libs = Path(base) / "libs"
        if (libs / "libiomp5.so").exists():
            return libs
    return None


def _compiler() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise NativeUnavailable("no C compiler (cc/gcc) on PATH; install gcc (scripts/setup.sh does)")


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "paddlellm")
    return Path(root) / "native"


def build(isa: str) -> Path:
    """Path of the library for kernel ISA `isa` (building it if needed); raises NativeUnavailable.

    Building needs only the compiler, not a CPU with the ISA: set-up builds every ISA, so an image built on
    one CPU runs on another."""
    if isa not in ISA_CFLAGS:
        raise NativeUnavailable(f"unknown kernel ISA {isa!r} (known: {', '.join(ISA_CFLAGS)})")
    try:
        return _build(isa)
    except OSError as e:  # e.g. an unwritable cache directory: fall back, do not crash the engine
        raise NativeUnavailable(f"cannot build the kernels under {cache_dir()}: {e}") from e


def _build(isa: str) -> Path:
    cc = _compiler()
    omp = _paddle_omp_dir()
    link = [f"-L{omp}", "-l:libiomp5.so", f"-Wl,-rpath,{omp}"] if omp else ["-fopenmp"]
    cflags = [*COMMON_CFLAGS, *ISA_CFLAGS[isa], f"-I{SOURCES[0].parent}"]
    # utf-8 whatever the locale: the Triton stub's interpreter may run with an ASCII one, and gcc quotes with
    # non-ASCII characters in its messages
    run = {"capture_output": True, "encoding": "utf-8", "errors": "replace", "check": False}
    version = subprocess.run([cc, "--version"], **run).stdout
    digest = hashlib.sha256()
    for src in (*SOURCES, *HEADERS):  # bytes: the Triton stub's interpreter may run with an ASCII locale
        digest.update(src.read_bytes() + b"\0")
    digest.update("\0".join([*cflags, *link, *LIBS, version]).encode())
    key = digest.hexdigest()[:16]
    out_dir = cache_dir() / key
    target = out_dir / f"libpaddlellm_{isa}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objs = [str(Path(tmp) / f"{src.stem}.o") for src in SOURCES]
        lib = Path(tmp) / "k.so"
        cmds = [[cc, *cflags, "-c", str(src), "-o", obj] for src, obj in zip(SOURCES, objs, strict=True)]
        cmds.append([cc, "-shared", *objs, "-o", str(lib), *link, *LIBS])
        for cmd in cmds:
            r = subprocess.run(cmd, **run)
            if r.returncode != 0:
                raise NativeUnavailable(f"building the kernels failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        os.replace(lib, target)
    return target


def load(isa: str, cpu: CpuInfo) -> NativeLibrary:
    """Build if needed and load the `isa` library; raises NativeUnavailable, also when `cpu` lacks the ISA
    (loading it would be harmless, calling it would not)."""
    if isa not in KERNEL_ISA_FLAGS:
        raise NativeUnavailable(f"unknown kernel ISA {isa!r} (known: {', '.join(KERNEL_ISA_FLAGS)})")
    missing = cpu.missing(isa)
    if missing:
        raise NativeUnavailable(f"the CPU lacks {', '.join(missing)} for the {isa} kernels")
    path = build(isa)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"cannot load {path}: {e}") from e
    if lib.packed_sgemm_abi() != ABI:
        raise NativeUnavailable(f"{path}: ABI {lib.packed_sgemm_abi()} != {ABI}")
    lib.paddlellm_kernel_isa.restype = ctypes.c_char_p
    built_for = lib.paddlellm_kernel_isa().decode()
    if built_for != isa:
        raise NativeUnavailable(f"{path} was built for {built_for}, not {isa}")
    c_long, c_int, ptr = ctypes.c_long, ctypes.c_int, ctypes.c_void_p
    f = lib.packed_sgemm
    f.argtypes = [ptr, c_long, c_long, c_long, ptr, c_long, ptr, ptr, c_long, c_int]
    f.restype = None
    b = lib.packed_sgemm_bf16
    b.argtypes = [ptr, c_long, c_long, c_long, ptr, c_long, ptr, ptr, c_long, c_int]
    b.restype = c_int
    for q in (lib.quant_gemm_w8, lib.quant_gemm_w4):
        q.argtypes = [ptr, c_long, c_long, c_long, ptr, c_int, c_long, ptr, ptr, c_long, c_int]
        q.restype = c_int
    a = lib.paged_decode_attention
    a.argtypes = [ptr, ptr, c_long, ptr, ptr, ptr, c_long, c_long, c_int, c_int, c_int, ptr, c_int, c_int]
    a.restype = c_int
    n = lib.rms_norm
    n.argtypes = [ptr, ptr, ptr, ctypes.c_float, ptr, ptr, c_long, c_long, c_int]
    n.restype = None
    r = lib.rotary_cache_write
    r.argtypes = [ptr, c_long, c_long, c_long, c_long, ptr, ptr, ptr, c_long, ptr, c_int, c_int]
    r.restype = c_int
    s = lib.swiglu
    s.argtypes = [ptr, ptr, ptr, c_long, c_long, c_int]
    s.restype = None
    d = lib.decode_layers
    d.argtypes = [ptr, c_long, ptr, c_long, c_long, ptr, ptr, ptr, ptr, ptr, ptr, c_long, c_long, c_long,
                  c_long, c_long, ctypes.c_float, ptr, ptr, c_int, c_int]
    d.restype = c_int
    return NativeLibrary(
        path, lib, built_for, int(lib.packed_sgemm_panel_width()), int(lib.quant_gemm_w8_panel_width())
    )


def build_all() -> dict[str, Path | NativeUnavailable]:
    """Every ISA's library, or why it could not be built (e.g. a compiler too old for -mavx512bf16)."""
    out: dict[str, Path | NativeUnavailable] = {}
    for isa in ISA_CFLAGS:
        try:
            out[isa] = build(isa)
        except NativeUnavailable as e:
            out[isa] = e
    return out


def main() -> int:
    """`python -m paddlellm.native.build`: build every ISA's library now (set-up does this, so no request pays
    for it, and an image built on one CPU has the libraries another CPU needs)."""
    cpu = read_cpu()
    for isa, result in build_all().items():
        runs = "runs here" if isa in cpu.kernel_isas else "this CPU lacks it"
        print(f"[native] {isa}: {result} ({runs})")
    best = cpu.best_kernel_isa
    print(f"[native] {cpu.describe()}; auto selects {best or 'Paddle ops (no native ISA)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
