"""Memory read bandwidth of this machine, the ceiling of a batch-1 decode step (it reads every weight once).

    python benchmarks/mem_bandwidth.py [--mib 64,256] [--threads 1,2] [--rounds 10]

Compiles a small C reader (OpenMP, 256-bit loads, AVX2 only, so it runs on every x86-64 CPU here) into a
temporary directory with the system compiler and reads a buffer of each size with each thread count; the best
of --rounds passes is kept (other processes on a shared machine only slow single passes down). Prints a
Markdown table of GB/s (10^9 bytes per second). Buffers larger than the last-level cache measure DRAM; a
decode step's weights (~85-115 MB quantized on the default model) may partly sit in a large L3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char **argv) {
  const long n = atol(argv[1]) << 20; const int threads = atoi(argv[2]), rounds = atoi(argv[3]);
  char *buf = aligned_alloc(64, (size_t)n); memset(buf, 1, (size_t)n);
  double best = 1e30; long check = 0;
  for (int r = 0; r < rounds; r++) {
    const double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : check)
    {
      __m256i acc = _mm256_setzero_si256();
#pragma omp for schedule(static)
      for (long i = 0; i < n; i += 128) {
        acc = _mm256_add_epi8(acc, _mm256_load_si256((const __m256i *)(buf + i)));
        acc = _mm256_add_epi8(acc, _mm256_load_si256((const __m256i *)(buf + i + 32)));
        acc = _mm256_add_epi8(acc, _mm256_load_si256((const __m256i *)(buf + i + 64)));
        acc = _mm256_add_epi8(acc, _mm256_load_si256((const __m256i *)(buf + i + 96)));
      }
      check += _mm256_extract_epi8(acc, 0);
    }
    const double dt = now() - t0;
    if (dt < best) best = dt;
  }
  printf("%.2f %ld\n", (double)n / best / 1e9, check);
  return 0;
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", default="64,256", help="buffer sizes in MiB")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler on PATH")
    sizes = [int(s) for s in args.mib.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "bw.c"), os.path.join(tmp, "bw")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run([cc, "-O2", "-mavx2", "-fopenmp", src, "-o", exe], check=True)
        print("| buffer (MiB) | " + " | ".join(f"{t} thread{'s' * (t > 1)} GB/s" for t in threads) + " |")
        print("|---:|" + "---:|" * len(threads))
        for mib in sizes:
            row = []
            for t in threads:
                cmd = [exe, str(mib), str(t), str(args.rounds)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                row.append(out.stdout.split()[0] if out.returncode == 0 else "error")
            print(f"| {mib} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
