/* Attention straight from the paged KV cache, fp32, for decodes and prefill chunks alike; one source for every
 * ISA (simd.h).
 *
 * Why: the Paddle path gathers every request's whole K|V context into a fresh padded tensor each layer (the
 * largest non-GEMM cost of a decode step here), then runs two batched matmuls, a mask add and a softmax; for a
 * prefill chunk it also builds causal masks. This kernel reads the cache rows where they are; a prefill token
 * is a query whose context ends at its own position.
 *
 * Per (request b, query head h of KV head j), handed out to the threads one at a time (dynamic, see
 * packed_sgemm.c): h scores every context row of b (q is pre-scaled), takes a max-subtracted softmax, and
 * accumulates the V rows weighted by it, in context order, in registers. Each output depends only on its own
 * request's rows, in a fixed order: batch-invariant.
 *
 * Layouts: q [B, kvh * group, d] (head h = j * group + g); cache [2 * kvh * num_slots, d] with K head j at
 * rows j * num_slots + slot and V head j at (kvh + j) * num_slots + slot, fp32 or (kv_half) fp16; slots [rows,
 * L], query b reading row slot_row[b] up to lens[b]; out [B, kvh * group, d].
 *
 * fp16 K|V (issue #24): at 32 requests of ~160 tokens the K|V rows a decode step reads are ~236 MB in fp32
 * (30 layers x 3 KV heads x 2 x 64 x 4 bytes per token), more than half the step on both ISAs; fp16 halves them.
 * Values are widened exactly and the math stays fp32, in the same order.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <omp.h>

#include "simd.h"
#include "team.h"


/* K|V rows are fp32, or fp16 when `half` (the KV cache's float16 form: each value widened exactly on load, so
 * the arithmetic below is the same fp32 either way). Scalar tails (d not a multiple of VL) widen one by one. */
static inline __attribute__((always_inline)) vf kv_load(const void *row, int i, const int half) {
  return half ? vf_load_half((const uint16_t *)row + i) : vf_load((const float *)row + i);
}
static inline __attribute__((always_inline)) float kv_at(const void *row, int i, const int half) {
  return half ? _cvtsh_ss(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

static inline __attribute__((always_inline)) float dot(const float *a, const void *b, int d, const int half) {
  if ((d % VL) == 0) {
    vf acc = vf_zero();
    for (int i = 0; i < d; i += VL) acc = vf_fmadd(vf_load(a + i), kv_load(b, i, half), acc);
    return vf_hsum(acc);
  }
  float s = 0.f; /* explicit fmaf: the same rounding whatever the compiler contracts (fp32 and fp16 alike) */
  for (int i = 0; i < d; i++) s = fmaf(a[i], kv_at(b, i, half), s);
  return s;
}

/* o[0:d] = sum over l ascending of p[l] * V row l, with the d outputs held in NV vector registers (one FMA
 * chain per element, so the same bits as accumulating in memory). `vbase`: the V head's rows (fp32, or fp16
 * when `half`). */
static inline __attribute__((always_inline)) void weighted_rows_nv(const int nv, const float *p, const char *vbase,
                                                                   const int64_t *sl, long len, int d, float *o,
                                                                   const int half) {
  vf acc[8];
  const long row_bytes = (long)d * (half ? 2 : 4);
  for (int i = 0; i < nv; i++) acc[i] = vf_zero();
  for (long l = 0; l < len; l++) {
    const vf pv = vf_set1(p[l]);
    const char *vrow = vbase + sl[l] * row_bytes;
    for (int i = 0; i < nv; i++) acc[i] = vf_fmadd(pv, kv_load(vrow, i * VL, half), acc[i]);
  }
  for (int i = 0; i < nv; i++) vf_store(o + i * VL, acc[i]);
}

static inline __attribute__((always_inline)) void weighted_rows(const float *p, const char *vbase, const int64_t *sl,
                                                                long len, int d, float *o, const int half) {
  switch (d % VL ? 0 : d / VL) {
#define CASE(n) \
  case n:       \
    weighted_rows_nv(n, p, vbase, sl, len, d, o, half); return;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    default: { /* more than 8 vectors (head_dim 128 on AVX2, 256 on AVX-512): accumulate in memory */
      const long row_bytes = (long)d * (half ? 2 : 4);
      for (int i = 0; i < d; i++) o[i] = 0.f;
      for (long l = 0; l < len; l++) {
        const char *vrow = vbase + sl[l] * row_bytes;
        int i = 0;
        if (d % VL == 0) {
          const vf pv = vf_set1(p[l]);
          for (; i < d; i += VL) vf_store(o + i, vf_fmadd(pv, kv_load(vrow, i, half), vf_load(o + i)));
        }
        for (; i < d; i++) o[i] = fmaf(p[l], kv_at(vrow, i, half), o[i]);
      }
    }
  }
}

/* One work item: query head h of query row b over its `len` context rows. */
static inline __attribute__((always_inline)) void attend(const float *qh, const char *kbase, const char *vbase,
                                                         const int64_t *sl, long len, int d, float *s, float *o,
                                                         const int half) {
  const long row_bytes = (long)d * (half ? 2 : 4);
  float m = -INFINITY;
  long l = 0;
  if (d % VL == 0 && d <= 8 * VL) {
    /* Four rows at a time: four independent FMA chains (one row's dot is a chain of d / VL dependent FMAs, 8
     * on AVX2 at d = 64, latency-bound alone); each row's sum is the same chain as dot(), so the same bits. */
    for (; l + 4 <= len; l += 4) {
      const char *r0 = kbase + sl[l] * row_bytes, *r1 = kbase + sl[l + 1] * row_bytes;
      const char *r2 = kbase + sl[l + 2] * row_bytes, *r3 = kbase + sl[l + 3] * row_bytes;
      vf a0 = vf_zero(), a1 = vf_zero(), a2 = vf_zero(), a3 = vf_zero();
      for (int i = 0; i < d; i += VL) {
        const vf qv = vf_load(qh + i);
        a0 = vf_fmadd(qv, kv_load(r0, i, half), a0);
        a1 = vf_fmadd(qv, kv_load(r1, i, half), a1);
        a2 = vf_fmadd(qv, kv_load(r2, i, half), a2);
        a3 = vf_fmadd(qv, kv_load(r3, i, half), a3);
      }
      s[l] = vf_hsum(a0), s[l + 1] = vf_hsum(a1), s[l + 2] = vf_hsum(a2), s[l + 3] = vf_hsum(a3);
      for (int r = 0; r < 4; r++) m = s[l + r] > m ? s[l + r] : m;
    }
  }
  for (; l < len; l++) {
    s[l] = dot(qh, kbase + sl[l] * row_bytes, d, half);
    m = s[l] > m ? s[l] : m;
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (l = 0; l < len; l++) {
    s[l] = expf(s[l] - m);
    sum += s[l];
  }
  const float inv = 1.f / sum;
  for (l = 0; l < len; l++) s[l] *= inv;
  weighted_rows(s, vbase, sl, len, d, o, half);
}

/* Work items are (query row, query head): at batch 1 a model with 3 KV heads still has 9 items for the threads
 * (per KV head it had 3, for 2 threads). A KV head's K|V rows are read once per query head of its group, from
 * L1/L2 after the first. Query row b reads slots row slot_row[b] (NULL: row b) up to lens[b]: a prefill
 * chunk's tokens share their request's row with growing lengths (causal), decodes have a row each.
 * `scores`: L floats per thread of the team. */
void paged_decode_attention_team(const float *q, long ldq, const void *cache, long num_slots, const int64_t *slots,
                                 const int64_t *slot_row, const int64_t *lens, long B, long L, int kvh, int group,
                                 int d, float *out, float *scores, int kv_half) {
  const long heads = (long)kvh * group;
  const long work = B * heads;
  const long head_bytes = num_slots * d * (kv_half ? 2 : 4);
  float *s = scores + (long)omp_get_thread_num() * (L > 0 ? L : 1);
#pragma omp for schedule(monotonic : dynamic, 1)
  for (long w = 0; w < work; w++) {
    const long b = w / heads;
    const long h = w % heads; /* query head h = j * group + g */
    const int j = (int)(h / group);
    const int64_t *sl = slots + (slot_row ? slot_row[b] : b) * L;
    const char *kbase = (const char *)cache + (long)j * head_bytes;
    const char *vbase = (const char *)cache + ((long)kvh + j) * head_bytes;
    float *o = out + (b * heads + h) * d;
    if (kv_half)
      attend(q + b * ldq + h * d, kbase, vbase, sl, lens[b], d, s, o, 1);
    else
      attend(q + b * ldq + h * d, kbase, vbase, sl, lens[b], d, s, o, 0);
  }
}

/* q [B, heads, d] contiguous; slots [rows, L]; slot_row [B] or NULL. Returns 0, or -1 when scratch memory
 * could not be allocated. */
int paged_decode_attention(const float *q, const void *cache, long num_slots, const int64_t *slots,
                           const int64_t *slot_row, const int64_t *lens, long B, long L, int kvh, int group, int d,
                           float *out, int kv_half, int nthreads) {
  const long work = B * (long)kvh * group;
  const int team = nthreads > 1 && work > 1 ? nthreads : 1;
  float *scores = malloc(sizeof(float) * (size_t)team * (size_t)(L > 0 ? L : 1));
  if (!scores) return -1;
#pragma omp parallel num_threads(team) if (team > 1)
  paged_decode_attention_team(q, (long)kvh * group * d, cache, num_slots, slots, slot_row, lens, B, L, kvh, group,
                              d, out, scores, kv_half);
  free(scores);
  return 0;
}
