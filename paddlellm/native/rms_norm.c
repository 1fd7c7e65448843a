/* RMSNorm with the residual add folded in, fp32; one source for every ISA (simd.h).
 *
 * Why: Paddle's fused_rms_norm CPU kernel is compiled for AVX-512 with no runtime check (SIGILL on AVX2 CPUs),
 * and the same math in plain Paddle ops is six dispatches (~30 us) where this is one call (a few us); there
 * are two per layer per step.
 *
 * Per row r (rows are independent, so the result is batch-invariant):
 *   s = x[r] + residual[r] (stored to summed[r]; no residual: s = x[r], summed unused)
 *   out[r] = (s * 1 / sqrt(mean(s^2) + eps)) * w      (HF's order: normalise, then scale by the weight)
 * The sum of squares runs in VL lanes over the vector part, then a fixed-order horizontal sum, then the tail.
 */
#include <math.h>
#include <stdint.h>

#include "simd.h"
#include "team.h"

static void norm_row(const float *x, const float *res, const float *w, float eps, float *out, float *summed,
                     long n) {
  const long nv = n - n % VL;
  vf acc = vf_zero();
  if (res) {
    for (long i = 0; i < nv; i += VL) {
      const vf s = vf_add(vf_load(x + i), vf_load(res + i));
      vf_store(summed + i, s);
      acc = vf_fmadd(s, s, acc);
    }
  } else {
    for (long i = 0; i < nv; i += VL) {
      const vf s = vf_load(x + i);
      acc = vf_fmadd(s, s, acc);
    }
  }
  const float *src = res ? summed : x;
  float ss = vf_hsum(acc);
  for (long i = nv; i < n; i++) {
    const float s = res ? x[i] + res[i] : x[i];
    if (res) summed[i] = s;
    ss += s * s;
  }
  const float inv = 1.0f / sqrtf(ss / (float)n + eps);
  const vf iv = vf_set1(inv);
  for (long i = 0; i < nv; i += VL) vf_store(out + i, vf_mul(vf_mul(vf_load(src + i), iv), vf_load(w + i)));
  for (long i = nv; i < n; i++) out[i] = (src[i] * inv) * w[i];
}

/* x, residual (or NULL), out, summed: [rows, n] contiguous; w: [n]. summed may be residual (in place). */
void rms_norm_team(const float *x, const float *residual, const float *w, float eps, float *out, float *summed,
                   long rows, long n) {
#pragma omp for schedule(static)
  for (long r = 0; r < rows; r++)
    norm_row(x + r * n, residual ? residual + r * n : 0, w, eps, out + r * n, residual ? summed + r * n : 0, n);
}

/* Threads only for prefill-sized inputs. */
void rms_norm(const float *x, const float *residual, const float *w, float eps, float *out, float *summed,
              long rows, long n, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && rows * n >= (1L << 16))
  rms_norm_team(x, residual, w, eps, out, summed, rows, n);
}
