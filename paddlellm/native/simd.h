/* The only per-ISA part of the native kernels: a float vector `vf` of VL lanes, its few operations, and the
 * GEMM micro-kernel's shape. Every .c file is compiled once per ISA (build.py: -mavx2 -mfma -mf16c, or
 * -mavx512f -mavx512vl, or that plus -mavx512bf16) into one shared library per ISA; the loop nests, the
 * threading and the summation orders are the same source for all of them.
 *
 * GEMM shape per ISA: MR rows x NV vectors of accumulators, NR = NV * VL columns per packed panel (read by
 * Python through packed_sgemm_panel_width(), never kept equal by hand).
 * - AVX-512 (32 zmm): 8 x 2 -> 16 accumulators + 2 weight vectors + 1 broadcast, NR = 32.
 * - AVX2 (16 ymm): 4 x 3 -> 12 accumulators + 3 weight vectors + 1 broadcast, NR = 24. Measured against
 *   6 x 2 (NR 16), 3 x 4, 4 x 2 and 8 x 1 on SmolLM2's 30 layers (benchmarks/bench_gemm.py): the fastest at
 *   M = 8 and 32 and equal at M = 1 (8 rows are two full blocks, not 6 + 2; three weight vectors per k keep
 *   the FMA ports fed with fewer broadcasts per FMA than 6 x 2 needs loads).
 */
#ifndef PADDLELLM_SIMD_H
#define PADDLELLM_SIMD_H

#include <immintrin.h>
#include <stdint.h>

#if defined(__AVX512F__)
#define VL 16
#ifndef GEMM_MR /* -D overrides: for benchmarks/bench_gemm.py --shape, not for builds */
#define GEMM_MR 8
#define GEMM_NV 2
#endif
#if defined(__AVX512BF16__)
#define KERNEL_ISA "avx512_bf16"
#else
#define KERNEL_ISA "avx512"
#endif
typedef __m512 vf;
static inline __attribute__((always_inline)) vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline __attribute__((always_inline)) void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
/* Store lanes [0, n), 0 < n < VL. */
static inline __attribute__((always_inline)) void vf_store_n(float *p, vf v, int n) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
}
static inline __attribute__((always_inline)) vf vf_set1(float f) { return _mm512_set1_ps(f); }
static inline __attribute__((always_inline)) vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline __attribute__((always_inline)) vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline __attribute__((always_inline)) vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
/* bf16 pairs (low half: element 2q, high half: 2q + 1) widened to fp32: exact. */
static inline __attribute__((always_inline)) vf vf_bf16_lo(const uint32_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(p), 16));
}
static inline __attribute__((always_inline)) vf vf_bf16_hi(const uint32_t *p) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(p), _mm512_set1_epi32((int)0xFFFF0000u)));
}
static inline __attribute__((always_inline)) __m256 vf_fold(vf v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
/* VL fp16 values widened to fp32 (exact), and fp32 rounded to fp16 (to nearest, ties to even): the KV cache's
 * float16 form. */
static inline __attribute__((always_inline)) vf vf_load_half(const uint16_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline __attribute__((always_inline)) void vf_store_half(uint16_t *p, vf v) {
  _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define VL 8
#ifndef GEMM_MR
#define GEMM_MR 4
#define GEMM_NV 3
#endif
#define KERNEL_ISA "avx2"
typedef __m256 vf;
static inline __attribute__((always_inline)) vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline __attribute__((always_inline)) void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline __attribute__((always_inline)) void vf_store_n(float *p, vf v, int n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), v);
}
static inline __attribute__((always_inline)) vf vf_set1(float f) { return _mm256_set1_ps(f); }
static inline __attribute__((always_inline)) vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline __attribute__((always_inline)) vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline __attribute__((always_inline)) vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_bf16_lo(const uint32_t *p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)p), 16));
}
static inline __attribute__((always_inline)) vf vf_bf16_hi(const uint32_t *p) {
  const __m256i v = _mm256_loadu_si256((const __m256i *)p);
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}
static inline __attribute__((always_inline)) __m256 vf_fold(vf v) { return v; }
static inline __attribute__((always_inline)) vf vf_load_half(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline __attribute__((always_inline)) void vf_store_half(uint16_t *p, vf v) {
  _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
#error "paddlellm kernels: compile with -mavx2 -mfma -mf16c or -mavx512f -mavx512vl"
#endif

#define GEMM_NR (GEMM_NV * VL)

/* glibc's libmvec has VL-lane expf variants (_ZGVeN16v_expf for AVX-512, _ZGVdN8v_expf for AVX2, within 4 ulp)
 * for the `omp simd` loops of paged_attention.c and decode_step.c; math.h only announces them under
 * -ffast-math, which these files do not want, so announce them here. */
#if VL == 16
#pragma omp declare simd simdlen(16) notinbranch
#else
#pragma omp declare simd simdlen(8) notinbranch
#endif
extern float expf(float);

/* ---- integer dot products (quant_gemm.c) ---------------------------------------------------------------
 * `vi` holds VLI int32 lanes, one output column each; `vq` is the float vector of the same lanes (the
 * per-block scaling and the fp32 accumulators). Every form below gives the same exact integer sums, so the same
 * results on every ISA.
 * - wint8: vi_load_u8pairs widens a lane's two u8 weights (k even, k odd) to two int16; vi_dot2_s16 adds
 *   w[2j] x[0] + w[2j + 1] x[1] with the row's two int16 activations broadcast (vpdpwssd with AVX512-VNNI;
 *   vpmaddwd + vpaddd on AVX2: at most 2 * 255 * 32767 per pair, no overflow).
 * - wint4: unsigned nibbles (0..15), unpacked by vi_lo4 / vi_hi4, times 4 int8 activations: a block's sum
 *   starts with vi_dot4_first, adds with vi_dot4_acc and ends as int32 lanes with vi_dot4_block (vpdpbusd
 *   all along with VNNI; vpmaddubsw + vpaddw in int16 lanes and one vpmaddwd by 1 per block on AVX2, see there).
 * Shapes: AVX512-BW + VNNI 16 lanes, 4 x 2 blocks (8 int32 + 8 fp32 accumulators, 2 weights, broadcast,
 * scales); AVX2 (also the avx512 F+VL library, which has no 512-bit byte or word ops) 8 lanes, 4 x 1 blocks
 * (4 int16 block sums + 4 fp32 accumulators, 2 unpacked weights, 2 broadcasts and 2 constants: 14 of the 16
 * ymm, so nothing spills; the earlier int32 form let gcc compute a block's products first and add them as a
 * tree, ~60 ymm spilled and reloaded per block at 4 rows). */
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define VLI 16
#define QGEMM_MR 4
#define QGEMM_NV 2
typedef __m512i vi;
typedef __m512 vq;
static inline __attribute__((always_inline)) vi vi_load(const int32_t *p) { return _mm512_loadu_si512(p); }
static inline __attribute__((always_inline)) vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline __attribute__((always_inline)) vi vi_set1(int32_t x) { return _mm512_set1_epi32(x); }
static inline __attribute__((always_inline)) vi vi_load_u8pairs(const uint8_t *p) {
  return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
}
static inline __attribute__((always_inline)) vi vi_dot2_s16(vi acc, vi w, vi x2) { return _mm512_dpwssd_epi32(acc, w, x2); }
/* u8 weights (a vector) x s8 activations (broadcast): the wint4 form. The block sum is int32 all along. */
static inline __attribute__((always_inline)) vi vi_dot4_first(vi w, vi xb) {
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xb);
}
static inline __attribute__((always_inline)) vi vi_dot4_acc(vi acc, vi w, vi xb) { return _mm512_dpbusd_epi32(acc, w, xb); }
static inline __attribute__((always_inline)) vi vi_dot4_block(vi acc) { return acc; }
static inline __attribute__((always_inline)) vi vi_lo4(vi v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
static inline __attribute__((always_inline)) vi vi_hi4(vi v) {
  return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F));
}
static inline __attribute__((always_inline)) vq vq_cvt(vi a) { return _mm512_cvtepi32_ps(a); }
static inline __attribute__((always_inline)) vq vq_load(const float *p) { return _mm512_loadu_ps(p); }
/* VLI table values at p: fp16 (widened exactly) when `half`, else fp32. */
static inline __attribute__((always_inline)) vq vq_load_table(const void *p, const int half) {
  return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)) : _mm512_loadu_ps(p);
}
static inline __attribute__((always_inline)) void vq_store(float *p, vq v) { _mm512_storeu_ps(p, v); }
static inline __attribute__((always_inline)) vq vq_zero(void) { return _mm512_setzero_ps(); }
static inline __attribute__((always_inline)) vq vq_set1(float f) { return _mm512_set1_ps(f); }
static inline __attribute__((always_inline)) vq vq_mul(vq a, vq b) { return _mm512_mul_ps(a, b); }
static inline __attribute__((always_inline)) vq vq_add(vq a, vq b) { return _mm512_add_ps(a, b); }
#else
#define VLI 8
#define QGEMM_MR 4
#define QGEMM_NV 1
typedef __m256i vi;
typedef __m256 vq;
static inline __attribute__((always_inline)) vi vi_load(const int32_t *p) {
  return _mm256_loadu_si256((const __m256i *)p);
}
static inline __attribute__((always_inline)) vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline __attribute__((always_inline)) vi vi_set1(int32_t x) { return _mm256_set1_epi32(x); }
static inline __attribute__((always_inline)) vi vi_load_u8pairs(const uint8_t *p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
}
static inline __attribute__((always_inline)) vi vi_dot2_s16(vi acc, vi w, vi x2) {
  vi r = _mm256_add_epi32(acc, _mm256_madd_epi16(w, x2));
  __asm__("" : "+x"(r)); /* a chain, as vi_dot4_acc: lets quant_gemm.c unroll a block's 16 pairs unspilled */
  return r;
}
/* wint4 on AVX2: a block's products are summed in int16 lanes (vpmaddubsw, then vpaddw), widened once per
 * block (vpmaddwd by 1): an int16 lane adds 16 products of at most 15 * 127, 30480 < 2^15, so it neither
 * saturates nor wraps, and the block sum is the same exact integer as VNNI's. Two instructions per 32
 * multiply-adds instead of three (vpmaddubsw, vpmaddwd, vpaddd). */
static inline __attribute__((always_inline)) vi vi_dot4_first(vi w, vi xb) { return _mm256_maddubs_epi16(w, xb); }
static inline __attribute__((always_inline)) vi vi_dot4_acc(vi acc, vi w, vi xb) {
  vi r = _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, xb));
  __asm__("" : "+x"(r)); /* keeps the sum a chain: without it gcc computes every product of the block first and
                            adds them as a tree, which needs more ymm than AVX2 has (spills) */
  return r;
}
static inline __attribute__((always_inline)) vi vi_dot4_block(vi acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
static inline __attribute__((always_inline)) vi vi_lo4(vi v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
static inline __attribute__((always_inline)) vi vi_hi4(vi v) {
  return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
}
static inline __attribute__((always_inline)) vq vq_cvt(vi a) { return _mm256_cvtepi32_ps(a); }
static inline __attribute__((always_inline)) vq vq_load(const float *p) { return _mm256_loadu_ps(p); }
static inline __attribute__((always_inline)) vq vq_load_table(const void *p, const int half) {
  return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)) : _mm256_loadu_ps(p);
}
static inline __attribute__((always_inline)) void vq_store(float *p, vq v) { _mm256_storeu_ps(p, v); }
static inline __attribute__((always_inline)) vq vq_zero(void) { return _mm256_setzero_ps(); }
static inline __attribute__((always_inline)) vq vq_set1(float f) { return _mm256_set1_ps(f); }
static inline __attribute__((always_inline)) vq vq_mul(vq a, vq b) { return _mm256_mul_ps(a, b); }
static inline __attribute__((always_inline)) vq vq_add(vq a, vq b) { return _mm256_add_ps(a, b); }
#endif
#define QGEMM_NR (QGEMM_NV * VLI)

/* Horizontal sum in a fixed order: fold to 8 lanes, then 4, 2, 1. */
static inline __attribute__((always_inline)) float vf_hsum(vf v) {
  const __m256 v8 = vf_fold(v);
  __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
  v4 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
  v4 = _mm_add_ss(v4, _mm_movehdup_ps(v4));
  return _mm_cvtss_f32(v4);
}

#endif
