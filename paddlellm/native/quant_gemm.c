/* Y[M, N] = X[M, K] @ W[K, N] (+ bias[N]) with quantized weights in blocks of QB = 32 consecutive k, each with
 * its own scale d and minimum m per output column: W ~ q * d + m. Activations are quantized per row and
 * block on the fly, so a block's dot product is an exact integer sum; blocks are combined in fp32.
 *
 * Why: a decode step reads every weight once, so its time is the bytes of the weights; 8 bits are a quarter
 * of fp32, 4 bits an eighth (plus two scales per 32 weights). Integer dot products do 2-4 multiply-adds per
 * 32-bit lane and instruction.
 *
 * Two formats:
 * - wint8: q u8 (0..255), activations int16 (|x| * 32767 / amax). 8 bits with a minimum hold 256 levels per
 *   block (a GGUF Q8_0 block exactly: q = q8 + 128, m = -128 d; a Q4_1 block exactly too: 17 q4 on the same
 *   range), and int16 activations keep the dot product at fp32's quality: with int8 activations (and
 *   symmetric int8 weights) SmolLM2 kept 95 % of fp32's greedy next tokens, below the 98 % asked of wint8
 *   (docs/quantization.md). vpdpwssd with AVX512-VNNI, vpmaddwd on AVX2: 2 products per lane.
 * - wint4: q nibbles (0..15, GGUF Q4_1's math), activations int8: vpdpbusd / vpmaddubsw, 4 products per lane.
 *
 * The math, which tests/unit/test_quant_gemm.py repeats in NumPy bit for bit:
 *   activations (here):   per row m and block b: amax, Xq = clip(rint(X * (QX / amax)), -QX, QX),
 *                         a[m, b] = amax / QX, s[m, b] = float(sum_{k in b} Xq) * a[m, b]    (QX 32767 or 127)
 *   acc = 0; for b ascending: acc = acc + (float(sum_{k in b} q[n, k] Xq[m, k]) * a[m, b]) * d[n, b]
 *                             acc = acc + s[m, b] * m[n, b]
 *   Y[m, n] = acc (+ bias[n])                       -- every operation rounded to fp32, in this order
 * A block's integer sum is exact (wint8: 32 * 255 * 32767 < 2^31), so neither the batch, nor the thread
 * count, nor the ISA changes a row's result. This file is compiled without FP contraction: a multiply and an
 * add must stay two roundings, as in the reference. d and m are fp32 values; a weight whose d and m are all
 * fp16 values (GGUF blocks as stored; wint4 quantized here, which rounds them to fp16 as Q4_1 does) keeps
 * them as fp16 (QGEMM_HALF_TABLES) and the kernel widens them exactly: the same math, fewer bytes.
 *
 * Layout: W is packed at load into panels of NR columns, all zero-padded (K to a multiple of QB, N to a
 * multiple of NR); a panel is KB = K / QB blocks, each its weights followed by its d row and its m row (NR
 * values each, fp16 or fp32), so a panel is one sequential stream. wint8 weights: [QB / 2][NR] u8 pairs
 * (k even, k odd); wint4: [QB / 8][NR] uint32 lanes of 8 nibbles.
 * Loop nest: quantize all M rows into a scratch buffer (rows shared among threads) > panels (a chunk at a
 * time per thread, panel_chunk) > MR-row blocks > k blocks > k pairs / octets.
 *
 * Measured (issue #24, SmolLM2-135M's shapes, benchmarks/bench_quant_step.py, docs/quantization.md): per-block
 * tables and fp16 d / m cut a batch-1 step's weight bytes from 80 + 35 MB (layers + head) to 66 + 32 MB; with
 * the int16 block sums (simd.h: 25 % fewer AVX2 instructions at 8-32 rows) the AVX2 fused step went from 7.0
 * to 4.4 ms at batch 1, 20.6 to 16.4 at 8 and 73.8 to 61.8 at 32, and the head from 2.4 to 1.6 ms at batch 1
 * (one thread, CPU time, interleaved medians).
 */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "team.h"

#define MRI QGEMM_MR
#define NVI QGEMM_NV
#define NRI QGEMM_NR
#define QB 32

/* Activations, per row and block of 32: Xq = clip(rint(X * (QX / amax)), -QX, QX) with QX = 127 (int8, the
 * wint4 kernel) or 32767 (int16, wint8), scale amax / QX, and the sum of the block's Xq. A full block runs in
 * AVX2 (every ISA has it) with the same operations as the scalar tail (x * inv rounded half to even, then
 * clipped), so both give the same values. */
static inline void quantize_block32(const float *src, float qx, int wide, float *scale, void *q, int32_t *sum) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 v[4], am = _mm256_setzero_ps();
  for (int i = 0; i < 4; i++) {
    v[i] = _mm256_loadu_ps(src + 8 * i);
    am = _mm256_max_ps(am, _mm256_and_ps(v[i], absmask));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1)); /* max: order-free */
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float inv = amax > 0.0f ? qx / amax : 0.0f;
  *scale = amax / qx;
  const __m256 iv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(qx), lo = _mm256_set1_ps(-qx);
  __m256i r[4], acc = _mm256_setzero_si256();
  for (int i = 0; i < 4; i++) {
    const __m256 x = _mm256_round_ps(_mm256_mul_ps(v[i], iv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(x, lo), hi));
    acc = _mm256_add_epi32(acc, r[i]);
  }
  /* packs work per 128-bit lane: the permutes put k back in order */
  if (wide) {
    for (int h = 0; h < 2; h++)
      _mm256_storeu_si256((__m256i *)((int16_t *)q + 16 * h),
                          _mm256_permute4x64_epi64(_mm256_packs_epi32(r[2 * h], r[2 * h + 1]), 0xD8));
  } else {
    const __m256i b16 = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(b16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  *sum = _mm_cvtsi128_si32(s4);
}

/* Row i of X -> blocks of int8 (or int16 when `wide`) in xq[i * KB * QB ...], scales in xs[i * KB ...], and
 * xsa[i * KB + b] = float(sum of the block's values) * scale. Rows are shared among the team's threads (each
 * row's result is the same whoever computes it). */
static void quantize_rows(const float *x, long M, long K, long ldx, long KB, void *xq, int wide, float *xs,
                          float *xsa) {
  const float qx = wide ? 32767.0f : 127.0f;
#pragma omp for schedule(static)
  for (long i = 0; i < M; i++) {
    const float *row = x + i * ldx;
    int8_t *q8 = (int8_t *)xq + i * KB * QB;
    int16_t *q16 = (int16_t *)xq + i * KB * QB;
    for (long b = 0; b < KB; b++) {
      const long k0 = b * QB, k1 = k0 + QB < K ? k0 + QB : K;
      int32_t sum = 0;
      if (k1 - k0 == QB) {
        quantize_block32(row + k0, qx, wide, xs + i * KB + b, wide ? (void *)(q16 + k0) : (void *)(q8 + k0), &sum);
      } else {
        float amax = 0.0f;
        for (long k = k0; k < k1; k++) {
          const float a = fabsf(row[k]);
          amax = a > amax ? a : amax;
        }
        const float inv = amax > 0.0f ? qx / amax : 0.0f;
        xs[i * KB + b] = amax / qx;
        for (long k = k0; k < k0 + QB; k++) { /* past K: zero (the weights are zero there too) */
          float r = k < k1 ? nearbyintf(row[k] * inv) : 0.0f; /* round half to even, as numpy.rint */
          r = r > qx ? qx : (r < -qx ? -qx : r);
          sum += (int)r;
          if (wide)
            q16[k] = (int16_t)(int)r;
          else
            q8[k] = (int8_t)(int)r;
        }
      }
      xsa[i * KB + b] = (float)sum * xs[i * KB + b];
    }
  }
}

static inline __attribute__((always_inline)) void zero_vq(const int mr, vq acc[MRI][NVI]) {
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NVI; v++) acc[i][v] = vq_zero();
}

static inline __attribute__((always_inline)) void zero_vi(const int mr, vi acc[MRI][NVI]) {
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NVI; v++) acc[i][v] = vi_zero();
}

static inline __attribute__((always_inline)) void store_vq(const int mr, vq acc[MRI][NVI], float *out) {
#pragma GCC unroll 8
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NVI; v++) vq_store(out + i * NRI + v * VLI, acc[i][v]);
}

/* Bytes of one (panel, k block): the block's weights, then its d and m rows of NR fp16 (`half`) or fp32. */
#define W8_BLOCK_BYTES(half) ((QB / 2) * NRI * 2 + 2 * NRI * ((half) ? 2 : 4))
#define W4_BLOCK_BYTES(half) ((QB / 8) * NRI * 4 + 2 * NRI * ((half) ? 2 : 4))

/* Per k block: the integer sums of the block, then the two fp32 terms in the reference's order; `tab` points
 * at the block's d row (NR values), its m row follows. */
static inline __attribute__((always_inline)) void scale_block(const int mr, vq acc[MRI][NVI], vi isum[MRI][NVI],
                                                              const float *xs, const float *xsa, long KB, long b,
                                                              const uint8_t *tab, const int half) {
  const int tsize = half ? 2 : 4;
#pragma GCC unroll 4
  for (int v = 0; v < NVI; v++) {
    const vq d = vq_load_table(tab + v * VLI * tsize, half), mn = vq_load_table(tab + (NRI + v * VLI) * tsize, half);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
      const vq t = vq_mul(vq_cvt(isum[i][v]), vq_set1(xs[i * KB + b]));
      acc[i][v] = vq_add(acc[i][v], vq_mul(t, d));
      acc[i][v] = vq_add(acc[i][v], vq_mul(vq_set1(xsa[i * KB + b]), mn));
    }
  }
}

/* wint8: one MR x NR block of Y over every k block; wp: the panel. The 16 pairs of a block are unrolled whole
 * (unrolled by 4, gcc counted the trip at run time on every block at M = 1): 27 % fewer instructions for the
 * LM head at M = 1, 10 % at 8 and 32 (callgrind, AVX2). */
static inline __attribute__((always_inline)) void q8micro(const int mr, const int half, const int16_t *xq,
                                                          const float *xs, const float *xsa, long KB,
                                                          const uint8_t *wp, float *out) {
  vq acc[MRI][NVI];
  zero_vq(mr, acc);
  for (long b = 0; b < KB; b++) {
    vi isum[MRI][NVI];
    zero_vi(mr, isum);
    const uint8_t *wb = wp + b * W8_BLOCK_BYTES(half);
#pragma GCC unroll 16
    for (int p = 0; p < QB / 2; p++) {
      vi w[NVI];
#pragma GCC unroll 4
      for (int v = 0; v < NVI; v++) w[v] = vi_load_u8pairs(wb + (p * NRI + v * VLI) * 2);
#pragma GCC unroll 8
      for (int i = 0; i < mr; i++) {
        int32_t x2;
        memcpy(&x2, xq + (i * KB + b) * QB + 2 * p, 4);
        const vi xb = vi_set1(x2);
#pragma GCC unroll 4
        for (int v = 0; v < NVI; v++) isum[i][v] = vi_dot2_s16(isum[i][v], w[v], xb);
      }
    }
    scale_block(mr, acc, isum, xs, xsa, KB, b, wb + (QB / 2) * NRI * 2, half);
  }
  store_vq(mr, acc, out);
}

/* ---- wint4: 4-bit weights, GGUF Q4_1's math ------------------------------------------------------------
 * Per (column n, block b of QB k): a scale d and minimum mn, nibbles q in 0..15, W ~ q * d + mn.
 * With the activations as above (int8 Xq, scale a, and the block's sum of Xq):
 *   acc = 0; for b ascending: acc = acc + (float(sum_{k in b} q[n, k] * Xq[m, k]) * a[m, b]) * d[n, b]
 *                             acc = acc + (float(sum_{k in b} Xq[m, k]) * a[m, b]) * mn[n, b]
 *   Y = acc (+ bias)
 * Layout per (panel, block): [QB / 8][NR] uint32 lanes: byte i of lane j of octet o holds column j's nibbles
 * for k = 8o + i (low half) and 8o + 4 + i (high half); then d and mn, NR each (fp16 as GGUF stores them, or
 * fp32). Half the bytes of wint8, and the nibbles go straight into vpdpbusd / vpmaddubsw as the unsigned
 * operand.
 * AVX2 sums a block in int16 lanes (simd.h, vi_dot4_acc): instructions in the GEMMs of one SmolLM2 layer, 1
 * thread, callgrind: 0.96 -> 0.86 M at M = 1, 6.3 -> 4.7 M at 8, 25.1 -> 18.7 M at 32, and no spills. */
static inline __attribute__((always_inline)) void q4micro(const int mr, const int half, const uint8_t *xq,
                                                          const float *xs, const float *xsa, long KB,
                                                          const uint8_t *wp, float *out) {
  vq acc[MRI][NVI];
  zero_vq(mr, acc);
  for (long b = 0; b < KB; b++) {
    vi isum[MRI][NVI];
    const uint8_t *wb = wp + b * W4_BLOCK_BYTES(half);
#pragma GCC unroll 4
    for (int o = 0; o < QB / 8; o++) {
      vi lo[NVI], hi[NVI];
#pragma GCC unroll 4
      for (int v = 0; v < NVI; v++) {
        const vi raw = vi_load((const int32_t *)(wb + (o * NRI + v * VLI) * 4));
        lo[v] = vi_lo4(raw);
        hi[v] = vi_hi4(raw);
      }
#pragma GCC unroll 8
      for (int i = 0; i < mr; i++) {
        int32_t x4lo, x4hi;
        memcpy(&x4lo, xq + (i * KB + b) * QB + 8 * o, 4);
        memcpy(&x4hi, xq + (i * KB + b) * QB + 8 * o + 4, 4);
        const vi xl = vi_set1(x4lo), xh = vi_set1(x4hi);
#pragma GCC unroll 4
        for (int v = 0; v < NVI; v++) {
          isum[i][v] = o == 0 ? vi_dot4_first(lo[v], xl) : vi_dot4_acc(isum[i][v], lo[v], xl);
          isum[i][v] = vi_dot4_acc(isum[i][v], hi[v], xh);
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NVI; v++) isum[i][v] = vi_dot4_block(isum[i][v]);
    scale_block(mr, acc, isum, xs, xsa, KB, b, wb + (QB / 8) * NRI * 4, half);
  }
  store_vq(mr, acc, out);
}

/* Every micro-kernel behind one signature, per format, table type and row count:
 * (quantized rows, their scales, their scaled sums, KB, panel, out). */
typedef void (*block_fn)(const uint8_t *, const float *, const float *, long, const uint8_t *, float *);
#define MICRO(fmt, half, n)                                                                                     \
  static void fmt##_##half##_##n(const uint8_t *xq, const float *xs, const float *xsa, long KB,               \
                                 const uint8_t *wp, float *out) {                                             \
    fmt##micro(n < MRI ? n : MRI, half, (const void *)xq, xs, xsa, KB, wp, out);                              \
  }
#define MICROS(fmt, half) \
  MICRO(fmt, half, 1)     \
  MICRO(fmt, half, 2)     \
  MICRO(fmt, half, 3)     \
  MICRO(fmt, half, 4)     \
  static const block_fn fmt##_##half##_micros[5] = {0, fmt##_##half##_1, fmt##_##half##_2, fmt##_##half##_3, fmt##_##half##_4};
MICROS(q8, 0)
MICROS(q8, 1)
MICROS(q4, 0)
MICROS(q4, 1)

/* Scratch for the quantized activations of M rows of K: xq (M * KB * QB int16 or int8), then xs and xsa (M * KB
 * floats each), 64-byte aligned. */
static long xq_bytes(long M, long K) { return (M * ((K + QB - 1) / QB) * QB * 2 + 63) / 64 * 64; }
long quant_gemm_scratch(long M, long K) { return xq_bytes(M, K) + 2 * M * ((K + QB - 1) / QB) * (long)sizeof(float) + 64; }

/* Panels per work item: enough for ~CHUNK_BYTES of weights per row block, at least 2; one when a panel's several
 * row blocks alone are that much work (a ~44-token prefill is 11 row blocks per panel, and a 2-panel tail kept the
 * other thread waiting at each GEMM's barrier; docs/serving-perf.md, sitting 7). A single row block keeps 2 (with
 * 1 per grab of its 20-31 KB panels, one A/B had the AVX-512 batch-1 step at 4.27 against 3.70 ms). Handing panels
 * out a chunk at a time (dynamic) keeps a preempted thread from holding up the region (see packed_sgemm.c), but
 * each grab is an atomic on a cache line both cores write (a transfer between the cores when they contend): an
 * AVX2 wint4 panel of K = 576 is 2.9 KB, ~0.3 us of streaming for one thread, so at M = 1 two-panel grabs (96 for
 * a gate projection) hand out little work per transfer. Larger chunks leave more for one thread at the end (up to
 * a chunk); 16 KB is between the two. The AVX-512 panels (NR = 32) of these shapes are 11-31 KB: 2 per grab, as
 * before. Measured on a loaded machine only (another job kept both cores busy; AVX2, two threads, 6 interleaved
 * rounds of 100 batch-1 steps): step median 31.8 -> 23.9 ms, fastest 12.5 -> 10.5 ms; batch 8 unchanged. */
#define CHUNK_BYTES 16384L
static long panel_chunk(long panel_bytes, long M) {
  const long work = panel_bytes * ((M + MRI - 1) / MRI);
  if (M > MRI && work >= CHUNK_BYTES) return 1;
  const long c = (CHUNK_BYTES + work - 1) / work;
  return c > 2 ? c : 2;
}

/* The loop nest both formats share, as team work (team.h): quantize X once (rows shared; int16 when `wide`),
 * then the panels go to the team's threads a chunk at a time (panel_chunk) > MR-row blocks, bias in the
 * epilogue. A panel is KB blocks of `block_bytes`. */
static void panels_team(const block_fn *micros, const float *x, long M, long K, long ldx, const uint8_t *wp,
                        long block_bytes, long N, const float *bias, float *y, long ldy, void *scratch, int wide) {
  const long KB = (K + QB - 1) / QB, panels = (N + NRI - 1) / NRI;
  const long row_bytes = KB * QB * (wide ? 2 : 1);
  const long chunk = panel_chunk(KB * block_bytes, M);
  uint8_t *xq = scratch;
  float *xs = (float *)((char *)scratch + xq_bytes(M, K));
  float *xsa = xs + M * KB;
  quantize_rows(x, M, K, ldx, KB, xq, wide, xs, xsa);
  PL_PROF(PROF_QUANT_X);
#pragma omp for schedule(monotonic : dynamic, chunk)
  for (long p = 0; p < panels; p++) {
    float out[MRI * NRI];
    const uint8_t *panel = wp + p * KB * block_bytes;
    const float *pb = bias ? bias + p * NRI : 0;
    const int ncols = N - p * NRI < NRI ? (int)(N - p * NRI) : NRI;
    for (long i = 0; i < M; i += MRI) {
      const int mr = M - i < MRI ? (int)(M - i) : MRI;
      micros[mr](xq + i * row_bytes, xs + i * KB, xsa + i * KB, KB, panel, out);
      for (int r = 0; r < mr; r++) {
        float *yr = y + (i + r) * ldy + p * NRI;
        for (int j = 0; j < ncols; j++) yr[j] = pb ? out[r * NRI + j] + pb[j] : out[r * NRI + j];
      }
    }
  }
}

#define PANEL_THREADS(N, nthreads) ((nthreads) > 1 && ((N) + NRI - 1) / NRI > 1)

/* x: [M, K] rows ldx floats apart; wp: ceil(N / NR) panels of KB = ceil(K / QB) blocks, each QB / 2 * NR u8
 * pairs then NR d and NR m (fp16 when flags has QGEMM_HALF_TABLES, else fp32); bias: NULL or ceil(N / NR) * NR
 * floats; y: [M, N] rows ldy floats apart. */
void quant_gemm_w8_team(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N,
                        const float *bias, float *y, long ldy, void *scratch) {
  const int half = flags & QGEMM_HALF_TABLES;
  panels_team(half ? q8_1_micros : q8_0_micros, x, M, K, ldx, wp, W8_BLOCK_BYTES(half), N, bias, y, ldy, scratch,
              1);
}

/* Returns 0, or -1 when the scratch buffer for the quantized rows cannot be allocated. */
int quant_gemm_w8(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N, const float *bias,
                  float *y, long ldy, int nthreads) {
  void *scratch = malloc((size_t)quant_gemm_scratch(M, K));
  if (!scratch) return -1;
#pragma omp parallel num_threads(nthreads) if (PANEL_THREADS(N, nthreads))
  quant_gemm_w8_team(x, M, K, ldx, wp, flags, N, bias, y, ldy, scratch);
  free(scratch);
  return 0;
}

/* As quant_gemm_w8, with blocks of QB / 8 * NR uint32 nibble lanes, then NR d and NR m. */
void quant_gemm_w4_team(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N,
                        const float *bias, float *y, long ldy, void *scratch) {
  const int half = flags & QGEMM_HALF_TABLES;
  panels_team(half ? q4_1_micros : q4_0_micros, x, M, K, ldx, wp, W4_BLOCK_BYTES(half), N, bias, y, ldy, scratch,
              0);
}

int quant_gemm_w4(const float *x, long M, long K, long ldx, const uint8_t *wp, int flags, long N, const float *bias,
                  float *y, long ldy, int nthreads) {
  void *scratch = malloc((size_t)quant_gemm_scratch(M, K));
  if (!scratch) return -1;
#pragma omp parallel num_threads(nthreads) if (PANEL_THREADS(N, nthreads))
  quant_gemm_w4_team(x, M, K, ldx, wp, flags, N, bias, y, ldy, scratch);
  free(scratch);
  return 0;
}

int quant_gemm_w8_panel_width(void) { return NRI; }
int quant_gemm_w8_block(void) { return QB; }
