/* Decode attention straight from the paged KV cache, fp32; one source for every ISA (simd.h).
 *
 * Why: the Paddle path gathers every decode request's whole K|V context into a fresh padded tensor each
 * layer (the largest non-GEMM cost of a decode step here), then runs two batched matmuls, a mask add and a
 * softmax. This kernel reads the cache rows where they are.
 *
 * Per (request b, KV head j), handed out to the threads one at a time (dynamic, see packed_sgemm.c): the group's query heads score every context row of b
 * (q is pre-scaled), take a max-subtracted softmax, and accumulate the V rows weighted by it, in context
 * order. Each output depends only on its own request's rows, in a fixed order: batch-invariant.
 *
 * Layouts: q [B, kvh * group, d] (head h = j * group + g); cache [2 * kvh * num_slots, d] with K head j at
 * rows j * num_slots + slot and V head j at (kvh + j) * num_slots + slot; slots [B, L] (row b valid up to
 * lens[b]); out [B, kvh * group, d].
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

/* glibc's libmvec has VL-lane expf variants (_ZGVeN16v_expf for AVX-512, _ZGVdN8v_expf for AVX2, within
 * 4 ulp); math.h only announces them under -ffast-math, which this file does not want, so announce them here. */
#if VL == 16
#pragma omp declare simd simdlen(16) notinbranch
#else
#pragma omp declare simd simdlen(8) notinbranch
#endif
extern float expf(float);

static inline float dot(const float *a, const float *b, int d) {
  if ((d % VL) == 0) {
    vf acc = vf_zero();
    for (int i = 0; i < d; i += VL) acc = vf_fmadd(vf_load(a + i), vf_load(b + i), acc);
    return vf_hsum(acc);
  }
  float s = 0.f;
  for (int i = 0; i < d; i++) s += a[i] * b[i];
  return s;
}

static inline void axpy(float p, const float *x, float *y, int d) {
  if ((d % VL) == 0) {
    const vf pv = vf_set1(p);
    for (int i = 0; i < d; i += VL) vf_store(y + i, vf_fmadd(pv, vf_load(x + i), vf_load(y + i)));
    return;
  }
  for (int i = 0; i < d; i++) y[i] += p * x[i];
}

/* Returns 0, or -1 when scratch memory could not be allocated. */
int paged_decode_attention(const float *q, const float *cache, long num_slots, const int64_t *slots,
                           const int64_t *lens, long B, long L, int kvh, int group, int d, float *out,
                           int nthreads) {
  const long work = B * kvh;
  int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && work > 1)
  {
    float *scores = malloc(sizeof(float) * (size_t)group * (size_t)(L > 0 ? L : 1));
    if (!scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(monotonic : dynamic, 1)
    for (long w = 0; w < work; w++) {
      if (!scores) continue;
      const long b = w / kvh;
      const int j = (int)(w % kvh);
      const long len = lens[b];
      const int64_t *sl = slots + b * L;
      const float *kbase = cache + (long)j * num_slots * d;
      const float *vbase = cache + ((long)kvh + j) * num_slots * d;
      const long head0 = (b * kvh + j) * (long)group;
      const float *qb = q + head0 * d;
      float *ob = out + head0 * d;
      for (long l = 0; l < len; l++) {
        const float *krow = kbase + sl[l] * d;
        for (int g = 0; g < group; g++) scores[g * L + l] = dot(qb + (long)g * d, krow, d);
      }
      for (int g = 0; g < group; g++) {
        float *s = scores + (long)g * L;
        float m = -INFINITY;
        for (long l = 0; l < len; l++) m = s[l] > m ? s[l] : m;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (long l = 0; l < len; l++) {
          s[l] = expf(s[l] - m);
          sum += s[l];
        }
        const float inv = 1.f / sum;
        for (long l = 0; l < len; l++) s[l] *= inv;
        for (int i = 0; i < d; i++) ob[(long)g * d + i] = 0.f;
      }
      for (long l = 0; l < len; l++) {
        const float *vrow = vbase + sl[l] * d;
        for (int g = 0; g < group; g++) axpy(scores[g * L + l], vrow, ob + (long)g * d, d);
      }
    }
    free(scores);
  }
  return failed ? -1 : 0;
}
