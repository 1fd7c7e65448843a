"""Build and load the project's C kernels (`packed_sgemm.c`, `paged_attention.c`) with the system C compiler,
once per machine.

The shared library is cached under `$PADDLELLM_CACHE_DIR` (default `~/.cache/paddlellm`) in a directory
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

SOURCES = tuple(Path(__file__).with_name(n) for n in ("packed_sgemm.c", "paged_attention.c"))
CFLAGS = (
    "-O3", "-mavx512f", "-mavx512vl", "-mavx512bf16", "-mfma", "-fno-math-errno", "-fopenmp", "-fPIC", "-Wall"
)
BF16_CPU_FLAG = "avx512_bf16"  # packed_sgemm_bf16 runs only where the CPU has it
LIBS = ("-lmvec", "-lm")  # libmvec: the vector expf of paged_attention.c
REQUIRED_CPU_FLAGS = ("avx512f", "avx512vl", "fma")
CACHE_ENV = "PADDLELLM_CACHE_DIR"
ABI = 3  # packed_sgemm_abi() of the sources this loader speaks to


class NativeUnavailable(RuntimeError):
    """The kernels cannot be used here; the message says why (no compiler, no AVX-512, build error)."""


@dataclass(frozen=True)
class NativeLibrary:
    path: Path
    lib: ctypes.CDLL


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


def build(cpuinfo: str = "/proc/cpuinfo") -> Path:
    """Path of the built library (building it if needed); raises NativeUnavailable."""
    try:
        return _build(cpuinfo)
    except OSError as e:  # e.g. an unwritable cache directory: fall back, do not crash the engine
        raise NativeUnavailable(f"cannot build the kernels under {cache_dir()}: {e}") from e


def _build(cpuinfo: str) -> Path:
    missing = [f for f in REQUIRED_CPU_FLAGS if f not in cpu_flags(cpuinfo)]
    if missing:
        raise NativeUnavailable(f"the CPU lacks {', '.join(missing)}")
    cc = _compiler()
    omp = _paddle_omp_dir()
    link = [f"-L{omp}", "-l:libiomp5.so", f"-Wl,-rpath,{omp}"] if omp else ["-fopenmp"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    texts = [src.read_text() for src in SOURCES]
    key = hashlib.sha256("\0".join([*texts, *CFLAGS, *link, *LIBS, version]).encode()).hexdigest()[:16]
    out_dir = cache_dir() / key
    target = out_dir / "libpaddlellm_kernels.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objs = [str(Path(tmp) / f"{src.stem}.o") for src in SOURCES]
        lib = Path(tmp) / "k.so"
        cmds = [[cc, *CFLAGS, "-c", str(src), "-o", obj] for src, obj in zip(SOURCES, objs, strict=True)]
        cmds.append([cc, "-shared", *objs, "-o", str(lib), *link, *LIBS])
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise NativeUnavailable(f"building the kernels failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        os.replace(lib, target)
    return target


def load(cpuinfo: str = "/proc/cpuinfo") -> NativeLibrary:
    """Build if needed and load; raises NativeUnavailable."""
    path = build(cpuinfo)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"cannot load {path}: {e}") from e
    if lib.packed_sgemm_abi() != ABI:
        raise NativeUnavailable(f"{path}: ABI {lib.packed_sgemm_abi()} != {ABI}")
    f = lib.packed_sgemm
    c_long, ptr = ctypes.c_long, ctypes.c_void_p
    f.argtypes = [ptr, c_long, c_long, c_long, ptr, c_long, ptr, ptr, c_long, ctypes.c_int]
    f.restype = None
    c_int = ctypes.c_int
    a = lib.paged_decode_attention
    a.argtypes = [ptr, ptr, c_long, ptr, ptr, c_long, c_long, c_int, c_int, c_int, ptr, c_int]
    a.restype = c_int
    b = lib.packed_sgemm_bf16
    b.argtypes = [ptr, c_long, c_long, c_long, ptr, c_long, ptr, ptr, c_long, c_int]
    b.restype = c_int
    return NativeLibrary(path, lib)


def main() -> int:
    """`python -m paddlellm.native.build`: build now (set-up does this, so no request pays for it)."""
    try:
        print(f"[native] {build()}")
    except NativeUnavailable as e:
        print(f"[native] not available, Paddle's matmul will be used: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
