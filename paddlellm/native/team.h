/* The kernels' "team" forms: the same loops as the exported entry points, written with orphaned OpenMP
 * work-sharing (`omp for`, `omp single`) instead of their own `omp parallel`. Called inside a parallel region,
 * the team's threads share the work and meet at the construct's barrier; called outside one, the calling
 * thread does it all. Each exported kernel is `omp parallel` around its team form, and decode_step.c runs a
 * whole decode forward pass (every layer) as one parallel region of team calls: one fork per step instead of
 * ~10 per layer, and no Python between them.
 *
 * Scratch memory is the caller's (sizes from the *_scratch functions), so nothing inside a region allocates.
 * Internal to the library: not part of the ABI Python speaks to.
 */
#ifndef PADDLELLM_TEAM_H
#define PADDLELLM_TEAM_H

#include <stdint.h>

#define TEAM_HIDDEN __attribute__((visibility("hidden")))

/* Phase timers of the fused decode pass, compiled in only with -DPL_PROFILE (benchmarks/bench_quant_step.py
 * builds such a library; the engine's never has them): PL_PROF(phase) adds thread 0's CPU time since its
 * previous mark to that phase. Called right after a work-sharing construct's barrier, so a phase's time is its slowest
 * thread's. */
#ifdef PL_PROFILE
enum {
  PROF_NORM, PROF_QUANT_X, PROF_QKV, PROF_ROPE, PROF_ATTN, PROF_O, PROF_GATE, PROF_UP, PROF_SWIGLU, PROF_DOWN,
  PROF_PHASES
};
TEAM_HIDDEN void pl_prof_mark(int phase);
#define PL_PROF(phase) pl_prof_mark(phase)
#else
#define PL_PROF(phase) ((void)0)
#endif

/* packed_sgemm.c */
TEAM_HIDDEN void packed_sgemm_team(const float *x, long M, long K, long ldx, const float *wp, long N,
                                   const float *bias, float *y, long ldy);
TEAM_HIDDEN long packed_sgemm_bf16_scratch(long M, long K); /* bytes */
TEAM_HIDDEN void packed_sgemm_bf16_team(const float *x, long M, long K, long ldx, const uint32_t *wp, long N,
                                        const float *bias, float *y, long ldy, void *scratch);

/* quant_gemm.c: `scratch` holds the quantized activations; `flags`: QGEMM_* */
#define QGEMM_HALF_TABLES 1 /* the per-block d and m are fp16, else fp32 */
TEAM_HIDDEN long quant_gemm_scratch(long M, long K); /* bytes */
TEAM_HIDDEN void quant_gemm_w8_team(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N,
                                    const float *bias, float *y, long ldy, void *scratch);
TEAM_HIDDEN void quant_gemm_w4_team(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N,
                                    const float *bias, float *y, long ldy, void *scratch);

/* rms_norm.c */
TEAM_HIDDEN void rms_norm_team(const float *x, const float *residual, const float *w, float eps, float *out,
                               float *summed, long rows, long n);

/* paged_attention.c: q rows of query b start at q + b * ldq; `scores` holds L floats per thread; the cache is
 * fp32, or fp16 when kv_half. */
TEAM_HIDDEN void paged_decode_attention_team(const float *q, long ldq, const void *cache, long num_slots,
                                             const int64_t *slots, const int64_t *slot_row, const int64_t *lens,
                                             long B, long L, int kvh, int group, int d, float *out, float *scores,
                                             int kv_half);

/* decode_step.c */
TEAM_HIDDEN void rotary_cache_write_team(float *qkv, long T, long qk_heads, long kv_heads2, long d,
                                         const float *cos, const float *sin, void *cache, long num_slots,
                                         const int64_t *new_slots, int kv_half);
TEAM_HIDDEN void swiglu_team(const float *gate, const float *up, float *out, long rows, long n);

#endif
