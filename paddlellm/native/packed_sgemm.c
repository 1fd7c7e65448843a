/* Y[M, N] = X[M, K] @ W[K, N] (+ bias[N]) with W pre-packed into column panels: fp32 weights, or bf16 weights
 * with fp32 accumulation. One source for every ISA; simd.h holds the vector type and the micro-kernel shape.
 *
 * Why: decode GEMMs have M = 1..64 rows against 0.3-110 MB weight matrices. BLAS libraries re-pack the
 * weight operand on every call and their small-M edge kernels waste most of each vector, so on this CPU
 * eager Paddle's MKL ran a [8, 576] x [576, 1536] GEMM at ~24 GFLOP/s. Packing W once at load into panels
 * of NR columns ([panels][K][NR], zero-padded) lets the micro-kernel stream each panel exactly once per
 * block of up to MR rows: MR x NV vector accumulators, NV weight loads and MR broadcasts per k.
 *
 * Loop nest: M in chunks of MC rows (the chunk of X stays in L2) > panels, handed out to the threads two at a
 * time (dynamic: when another process takes a core for a while, as the serving processes beside the engine do,
 * the other thread takes over its panels instead of the whole region waiting at the barrier) > MR-row blocks
 * (the panel stays in L1/L2 across them) > k.
 * The summation order over k is fixed (k ascending, one FMA chain per output, starting at the bias), so a
 * row's result does not depend on M, on the thread count, on which other rows are in the batch, nor, for
 * fp32 weights, on the ISA (AVX2 and AVX-512 give the same bits).
 */
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"
#include "team.h"

#define MR GEMM_MR
#define NV GEMM_NV
#define NR GEMM_NR
#define MC 64

/* Accumulators start at the bias (or 0); the block is stored with masks when the panel is the last, partial one. */
static inline __attribute__((always_inline)) void init_acc(const int mr, vf acc[MR][NV], const float *bias) {
  vf b[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; v++) b[v] = bias ? vf_load(bias + v * VL) : vf_zero();
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = b[v];
}

static inline __attribute__((always_inline)) void store_acc(const int mr, vf acc[MR][NV], float *y, long ldy,
                                                            int ncols) {
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      const int n = ncols - v * VL;
      if (n >= VL)
        vf_store(y + i * ldy + v * VL, acc[i][v]);
      else if (n > 0)
        vf_store_n(y + i * ldy + v * VL, acc[i][v], n);
    }
}

/* fp32 weights: wp [K][NR]. */
static inline __attribute__((always_inline)) void micro(const int mr, const float *x, long ldx, const float *wp,
                                                        int K, float *y, long ldy, int ncols, const float *bias) {
  vf acc[MR][NV];
  init_acc(mr, acc, bias);
  for (int k = 0; k < K; k++) {
    vf w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) w[v] = vf_load(wp + (long)k * NR + v * VL);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const vf xv = vf_set1(x[i * ldx + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = vf_fmadd(xv, w[v], acc[i][v]);
    }
  }
  store_acc(mr, acc, y, ldy, ncols);
}

/* The loop nest over row chunks, panels and row blocks, for one element type of W and of the prepared X, as
 * team work (team.h): `prep` (may be empty) readies a chunk of X in an `omp single`, the panels go to the
 * team's threads two at a time; `micros[mr]` handles an mr-row block, `xk` and `wk` are the elements of X per
 * row and of W per panel row (K, or ceil(K / 2) bf16 pairs). */
#define GEMM_LOOP(XT, WT, micros, has_prep, prep, xbase, ldxp, wk)                                             \
  do {                                                                                                       \
    const long panels = (N + NR - 1) / NR;                                                                   \
    for (long m0 = 0; m0 < M; m0 += MC) {                                                                    \
      const long mc = M - m0 < MC ? M - m0 : MC;                                                             \
      if (has_prep) {                                                                                        \
        _Pragma("omp single") { prep; }                                                                      \
      }                                                                                                      \
      _Pragma("omp for schedule(monotonic : dynamic, 2)")                                                    \
      for (long p = 0; p < panels; p++) {                                                                    \
        const WT *panel = wp + p * (wk) * NR;                                                                \
        const float *pb = bias ? bias + p * NR : 0;                                                          \
        const int ncols = N - p * NR < NR ? (int)(N - p * NR) : NR;                                          \
        for (long i = 0; i < mc; i += MR) {                                                                  \
          const int mr = mc - i < MR ? (int)(mc - i) : MR;                                                   \
          micros[mr]((const XT *)(xbase) + i * (ldxp), ldxp, panel, (int)(wk), y + (m0 + i) * ldy + p * NR, ldy, \
                     ncols, pb);                                                                         \
        }                                                                                                    \
      }                                                                                                      \
    }                                                                                                        \
  } while (0)

/* Threads for a GEMM of N columns: the team's work-sharing needs more than one panel to share. */
#define PANEL_THREADS(N, nthreads) ((nthreads) > 1 && ((N) + NR - 1) / NR > 1)

#define DEFINE_MICROS(name, body, XT, WT)                                                                       \
  static void name##_1(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(1 < MR ? 1 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_2(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(2 < MR ? 2 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_3(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(3 < MR ? 3 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_4(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(4 < MR ? 4 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_5(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(5 < MR ? 5 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_6(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(6 < MR ? 6 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_7(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(7 < MR ? 7 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  static void name##_8(const XT *x, long ldx, const WT *w, int K, float *y, long ldy, int nc, const float *b) { body(8 < MR ? 8 : MR, x, ldx, w, K, y, ldy, nc, b); } \
  typedef void (*name##_fn)(const XT *, long, const WT *, int, float *, long, int, const float *);      \
  static const name##_fn name##s[9] = {0, name##_1, name##_2, name##_3, name##_4, name##_5, name##_6, name##_7, name##_8};

DEFINE_MICROS(micro_f32, micro, float, float)

/* x: [M, K] rows ldx floats apart; wp: [ceil(N / NR)][K][NR]; bias: NULL or ceil(N / NR) * NR floats;
 * y: [M, N] rows ldy floats apart. */
void packed_sgemm_team(const float *x, long M, long K, long ldx, const float *wp, long N, const float *bias, float *y,
                       long ldy) {
  GEMM_LOOP(float, float, micro_f32s, 0, (void)0, x + m0 * ldx, ldx, K);
}

void packed_sgemm(const float *x, long M, long K, long ldx, const float *wp, long N, const float *bias, float *y,
                  long ldy, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (PANEL_THREADS(N, nthreads))
  packed_sgemm_team(x, M, K, ldx, wp, N, bias, y, ldy);
}

int packed_sgemm_panel_width(void) { return NR; }
int packed_sgemm_abi(void) { return 7; } /* bump with any exported signature or layout (build.ABI) */
const char *paddlellm_kernel_isa(void) { return KERNEL_ISA; }

/* ---- bf16 weights ---------------------------------------------------------------------------------------
 * Panel p holds [ceil(K/2)][NR] uint32: for each pair of k (2q, 2q+1) and column j one 32-bit lane with both
 * bf16 values (2q in the low half). X is rounded to bf16 once per call into a scratch buffer; accumulation
 * stays fp32, so every ISA computes the same math: sum over k of bf16(x) * bf16(w) (exact products), in fp32.
 * - AVX512_BF16: `vdpbf16ps` multiplies a lane's pair by the pair (x[2q], x[2q+1]) and adds both, i.e. twice
 *   the multiply-adds per instruction of fp32.
 * - AVX2 / AVX-512 without it: the pair is widened in registers (a shift and an and give k = 2q and 2q+1 as
 *   fp32, exactly) and fed to two fp32 FMA chains; half the weight bytes of fp32, which is what a decode step
 *   is bound by. */

/* Round-to-nearest-even fp32 -> bf16 bits (no NaN inputs here: activations are finite). */
static inline uint32_t bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

#if defined(__AVX512BF16__)
typedef uint32_t bf16x_t; /* X as bf16 pairs, as the weights */
static inline __attribute__((always_inline)) void micro_bf16(const int mr, const uint32_t *xp, long ldxp,
                                                             const uint32_t *wp, int K2, float *y, long ldy,
                                                             int ncols, const float *bias) {
  vf acc[MR][NV];
  init_acc(mr, acc, bias);
  for (int k = 0; k < K2; k++) {

    __m512bh w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) w[v] = (__m512bh)_mm512_loadu_si512(wp + (long)k * NR + v * VL);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[i * ldxp + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], xv, w[v]);
    }
  }
  store_acc(mr, acc, y, ldy, ncols);
}

static void prep_bf16(const float *x, long ldx, long rows, long K, bf16x_t *xp) {
  const long K2 = (K + 1) / 2;
  for (long i = 0; i < rows; i++) {
    const float *row = x + i * ldx;
    for (long k = 0; k < K2; k++) {
      const uint32_t lo = bf16_bits(row[2 * k]);
      const uint32_t hi = 2 * k + 1 < K ? bf16_bits(row[2 * k + 1]) : 0u;
      xp[i * K2 + k] = lo | (hi << 16);
    }
  }
}
#define XP_PER_ROW(K) (((K) + 1) / 2)
#else
typedef float bf16x_t; /* X rounded to bf16 values, kept as fp32 (zero-padded to even K) */
static inline __attribute__((always_inline)) void micro_bf16(const int mr, const float *xp, long ldxp,
                                                             const uint32_t *wp, int K2, float *y, long ldy,
                                                             int ncols, const float *bias) {
  vf acc[MR][NV];
  init_acc(mr, acc, bias);
  for (int k = 0; k < K2; k++) {

    const uint32_t *wk = wp + (long)k * NR;
    vf w[NV];
    /* k = 2q for every row, then k = 2q + 1: per output still one FMA chain in k order. */
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) w[v] = vf_bf16_lo(wk + v * VL);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const vf xv = vf_set1(xp[i * ldxp + 2 * k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = vf_fmadd(xv, w[v], acc[i][v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) w[v] = vf_bf16_hi(wk + v * VL);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const vf xv = vf_set1(xp[i * ldxp + 2 * k + 1]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = vf_fmadd(xv, w[v], acc[i][v]);
    }
  }
  store_acc(mr, acc, y, ldy, ncols);
}

static void prep_bf16(const float *x, long ldx, long rows, long K, bf16x_t *xp) {
  const long Kp = K + (K & 1);
  for (long i = 0; i < rows; i++) {
    const float *row = x + i * ldx;
    for (long k = 0; k < Kp; k++) {
      const uint32_t b = k < K ? bf16_bits(row[k]) << 16 : 0u;
      __builtin_memcpy(xp + i * Kp + k, &b, 4);
    }
  }
}
#define XP_PER_ROW(K) ((K) + ((K) & 1))
#endif

DEFINE_MICROS(micro_bf16v, micro_bf16, bf16x_t, uint32_t)

long packed_sgemm_bf16_scratch(long M, long K) {
  return (long)sizeof(bf16x_t) * (M > MC ? MC : M) * XP_PER_ROW(K);
}

void packed_sgemm_bf16_team(const float *x, long M, long K, long ldx, const uint32_t *wp, long N, const float *bias,
                            float *y, long ldy, void *scratch) {
  bf16x_t *xp = (bf16x_t *)scratch;
  const long xk = XP_PER_ROW(K);
  GEMM_LOOP(bf16x_t, uint32_t, micro_bf16vs, 1, prep_bf16(x + m0 * ldx, ldx, mc, K, xp), xp, xk, (K + 1) / 2);
}

/* As packed_sgemm, with wp: [ceil(N / NR)][ceil(K / 2)][NR] uint32 (bf16 pairs, K zero-padded to even).
 * Returns 0, or -1 when the scratch buffer for X could not be allocated. */
int packed_sgemm_bf16(const float *x, long M, long K, long ldx, const uint32_t *wp, long N, const float *bias,
                      float *y, long ldy, int nthreads) {
  void *xp = malloc((size_t)packed_sgemm_bf16_scratch(M, K));
  if (!xp) return -1;
#pragma omp parallel num_threads(nthreads) if (PANEL_THREADS(N, nthreads))
  packed_sgemm_bf16_team(x, M, K, ldx, wp, N, bias, y, ldy, xp);
  free(xp);
  return 0;
}
