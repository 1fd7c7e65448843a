/* Y[M, N] = X[M, K] @ W[K, N] (+ bias[N]) with W pre-packed into column panels, fp32, AVX-512.
 *
 * Why: decode GEMMs have M = 1..64 rows against 0.3-110 MB weight matrices. BLAS libraries re-pack the
 * weight operand on every call and their small-M edge kernels waste most of each vector, so on this CPU
 * eager Paddle's MKL ran a [8, 576] x [576, 1536] GEMM at ~24 GFLOP/s. Packing W once at load into panels
 * of NR = 32 columns ([panels][K][32], zero-padded) lets the micro-kernel stream each panel exactly once per
 * block of up to MR = 8 rows: 16 zmm accumulators, two 64-byte weight loads and 8 broadcasts per k.
 *
 * Loop nest: M in chunks of MC rows (the chunk of X stays in L2) > panels, handed out to the threads two at a
 * time (dynamic: when another process takes a core for a while, as the serving processes beside the engine do,
 * the other thread takes over its panels instead of the whole region waiting at the barrier) > MR-row blocks
 * (the panel stays in L1/L2 across them) > k.
 * The summation order over k is fixed (k ascending, one FMA chain per output), so a row's result does not
 * depend on M, on the thread count or on which other rows are in the batch.
 */
#include <immintrin.h>
#include <stdint.h>

#define NR 32
#define MR 8
#define MC 64

/* Accumulators start at the bias (or 0); the block is stored with masks when the panel is the last, partial one. */
static inline __attribute__((always_inline)) void init_acc(const int mr, __m512 *a0, __m512 *a1, const float *bias) {
  const __m512 b0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++) {
    a0[i] = b0;
    a1[i] = b1;
  }
}

static inline __attribute__((always_inline)) void store_acc(const int mr, const __m512 *a0, const __m512 *a1,
                                                            float *y, long ldy, int ncols) {
  if (ncols >= NR) {
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      _mm512_storeu_ps(y + i * ldy, a0[i]);
      _mm512_storeu_ps(y + i * ldy + 16, a1[i]);
    }
  } else {
    const __mmask16 m0 = ncols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << ncols) - 1);
    const __mmask16 m1 = ncols <= 16 ? (__mmask16)0 : (__mmask16)((1u << (ncols - 16)) - 1);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      _mm512_mask_storeu_ps(y + i * ldy, m0, a0[i]);
      _mm512_mask_storeu_ps(y + i * ldy + 16, m1, a1[i]);
    }
  }
}

static inline __attribute__((always_inline)) void micro(
    const int mr, const float *x, long ldx, const float *wp, int K, float *y, long ldy, int ncols,
    const float *bias) {
  __m512 a0[MR], a1[MR];
  init_acc(mr, a0, a1, bias);
  for (int k = 0; k < K; k++) {
    const __m512 w0 = _mm512_loadu_ps(wp + (long)k * NR);
    const __m512 w1 = _mm512_loadu_ps(wp + (long)k * NR + 16);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const __m512 xv = _mm512_set1_ps(x[i * ldx + k]);
      a0[i] = _mm512_fmadd_ps(xv, w0, a0[i]);
      a1[i] = _mm512_fmadd_ps(xv, w1, a1[i]);
    }
  }
  store_acc(mr, a0, a1, y, ldy, ncols);
}

#define MICRO(n)                                                                                    \
  static void micro_##n(const float *x, long ldx, const float *wp, int K, float *y, long ldy,      \
                        int ncols, const float *bias) {                                            \
    micro(n, x, ldx, wp, K, y, ldy, ncols, bias);                                                  \
  }
MICRO(1)
MICRO(2)
MICRO(3)
MICRO(4)
MICRO(5)
MICRO(6)
MICRO(7)
MICRO(8)

typedef void (*micro_fn)(const float *, long, const float *, int, float *, long, int, const float *);
static const micro_fn MICROS[MR + 1] = {0,         micro_1, micro_2, micro_3, micro_4,
                                        micro_5, micro_6, micro_7, micro_8};

/* x: [M, K] rows ldx floats apart; wp: [ceil(N / 32)][K][32]; bias: NULL or ceil(N / 32) * 32 floats;
 * y: [M, N] rows ldy floats apart. */
void packed_sgemm(const float *x, long M, long K, long ldx, const float *wp, long N,
                  const float *bias, float *y, long ldy, int nthreads) {
  const long panels = (N + NR - 1) / NR;
  for (long m0 = 0; m0 < M; m0 += MC) {
    const long mc = M - m0 < MC ? M - m0 : MC;
#pragma omp parallel for schedule(monotonic : dynamic, 2) num_threads(nthreads) if (nthreads > 1 && panels > 1)
    for (long p = 0; p < panels; p++) {
      const float *panel = wp + p * K * NR;
      const float *pb = bias ? bias + p * NR : 0;
      const int ncols = N - p * NR < NR ? (int)(N - p * NR) : NR;
      for (long i = 0; i < mc; i += MR) {
        const int mr = mc - i < MR ? (int)(mc - i) : MR;
        MICROS[mr](x + (m0 + i) * ldx, ldx, panel, (int)K, y + (m0 + i) * ldy + p * NR, ldy, ncols, pb);
      }
    }
  }
}

int packed_sgemm_abi(void) { return 3; }  /* bump with any exported signature (build.ABI) */

/* ---- bf16 weights (AVX512_BF16) ---------------------------------------------------------------------
 * The same blocking with weights stored as bf16 pairs: panel p holds [K/2][32 columns][2] bf16, i.e. for each
 * pair of k (k, k+1) and column j one 32-bit lane with both values, which `vdpbf16ps` multiplies by the pair
 * (x[k], x[k+1]) and adds in fp32. X is rounded to bf16 once per call (a per-thread-free scratch buffer);
 * accumulation stays fp32. Half the weight bytes and twice the multiply-adds per instruction of fp32. */
#ifdef __AVX512BF16__
static inline __attribute__((always_inline)) void micro_bf16(
    const int mr, const uint32_t *xp, long ldxp, const uint32_t *wp, int K2, float *y, long ldy, int ncols,
    const float *bias) {
  __m512 a0[MR], a1[MR];
  init_acc(mr, a0, a1, bias);
  for (int k = 0; k < K2; k++) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp + (long)k * NR);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp + (long)k * NR + 16);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[i * ldxp + k]);
      a0[i] = _mm512_dpbf16_ps(a0[i], xv, w0);
      a1[i] = _mm512_dpbf16_ps(a1[i], xv, w1);
    }
  }
  store_acc(mr, a0, a1, y, ldy, ncols);
}

#define MICRO_BF16(n)                                                                               \
  static void micro_bf16_##n(const uint32_t *x, long ldx, const uint32_t *wp, int K2, float *y,     \
                             long ldy, int ncols, const float *bias) {                              \
    micro_bf16(n, x, ldx, wp, K2, y, ldy, ncols, bias);                                             \
  }
MICRO_BF16(1)
MICRO_BF16(2)
MICRO_BF16(3)
MICRO_BF16(4)
MICRO_BF16(5)
MICRO_BF16(6)
MICRO_BF16(7)
MICRO_BF16(8)

typedef void (*micro_bf16_fn)(const uint32_t *, long, const uint32_t *, int, float *, long, int, const float *);
static const micro_bf16_fn MICROS_BF16[MR + 1] = {0,            micro_bf16_1, micro_bf16_2, micro_bf16_3,
                                                  micro_bf16_4, micro_bf16_5, micro_bf16_6, micro_bf16_7,
                                                  micro_bf16_8};

/* Round-to-nearest-even fp32 -> bf16 bits (no NaN inputs here: activations are finite). */
static inline uint32_t bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

/* As packed_sgemm, with wp: [ceil(N / 32)][ceil(K / 2)][32] uint32 (bf16 pairs, K zero-padded to even).
 * Returns 0, or -1 when the scratch buffer for X could not be allocated. */
int packed_sgemm_bf16(const float *x, long M, long K, long ldx, const uint32_t *wp, long N,
                      const float *bias, float *y, long ldy, int nthreads) {
  const long panels = (N + NR - 1) / NR;
  const long K2 = (K + 1) / 2;
  uint32_t *xp = (uint32_t *)__builtin_malloc(sizeof(uint32_t) * (size_t)(M > MC ? MC : M) * (size_t)K2);
  if (!xp) return -1;
  for (long m0 = 0; m0 < M; m0 += MC) {
    const long mc = M - m0 < MC ? M - m0 : MC;
    for (long i = 0; i < mc; i++) {
      const float *row = x + (m0 + i) * ldx;
      for (long k = 0; k < K2; k++) {
        const uint32_t lo = bf16_bits(row[2 * k]);
        const uint32_t hi = 2 * k + 1 < K ? bf16_bits(row[2 * k + 1]) : 0u;
        xp[i * K2 + k] = lo | (hi << 16);
      }
    }
#pragma omp parallel for schedule(monotonic : dynamic, 2) num_threads(nthreads) if (nthreads > 1 && panels > 1)
    for (long p = 0; p < panels; p++) {
      const uint32_t *panel = wp + p * K2 * NR;
      const float *pb = bias ? bias + p * NR : 0;
      const int ncols = N - p * NR < NR ? (int)(N - p * NR) : NR;
      for (long i = 0; i < mc; i += MR) {
        const int mr = mc - i < MR ? (int)(mc - i) : MR;
        MICROS_BF16[mr](xp + i * K2, K2, panel, (int)K2, y + (m0 + i) * ldy + p * NR, ldy, ncols, pb);
      }
    }
  }
  __builtin_free(xp);
  return 0;
}
#endif
