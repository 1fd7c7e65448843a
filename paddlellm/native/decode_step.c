/* A decoder's elementwise steps (rotary + KV-cache write, SwiGLU) and a whole forward pass as one call.
 *
 * Why: at batch 1 with 4-bit weights a step reads ~85 MB, ~5 ms of memory time here, but the layer-by-layer
 * path issues ~25 Paddle ops and 7 kernel calls per layer from Python: ~7 ms of dispatch and ~150 OpenMP
 * forks per step, and its GEMMs ran at half the bandwidth the machine has (each kernel call forks its own
 * threads). `decode_layers` runs every layer of a step (decodes and prefill chunks alike: each token is a query
 * over its request's cached rows) inside one parallel region, calling the kernels' team forms (team.h)
 * separated by the barriers their work-sharing ends with.
 *
 * Same bits as the layer-by-layer native path: it calls the very same kernels (the layer path uses
 * `rotary_cache_write` and `swiglu` below too), in the same order, on the same rows; the test
 * tests/unit/test_decode_step.py compares the two bit for bit. Compiled without FP contraction, so
 * x * cos + rot(x) * sin rounds as Paddle's elementwise ops did.
 *
 * Per layer (x: the previous layer's output, res: the residual stream):
 *   hid, res = rms_norm(x + res)            (layer 0: hid = rms_norm(x), res = x)
 *   qkv = hid @ Wqkv; rotate q and k heads; write k|v rows to the cache at the tokens' slots
 *   att = paged decode attention of the q heads over each request's cached rows (its new token included)
 *   hid, res = rms_norm(att @ Wo + res); x = (silu(hid @ Wg) * (hid @ Wu)) @ Wd
 * and at the end out = rms_norm(x + res) with the final norm's weight (the LM head stays a separate call).
 */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "team.h"


/* ---- rotary + cache write -------------------------------------------------------------------------------
 * qkv [T, qk_heads + kv_heads2 - qk_heads.., d]: per token, `qk_heads` rotated heads (q, then k) followed by the
 * v heads; the last `kv_heads2` heads (k then v) are written to the cache rows j * num_slots + new_slots[t].
 * Half-split rotation with signed sin: out[i] = x[i] * cos[i] + x[(i + d / 2) % d] * sin[i] (cos, sin [T, d]). */
static void rotate_token(float *row, long qk_heads, long d, const float *c, const float *s) {
  float tmp[512];
  const long half = d / 2;
  for (long h = 0; h < qk_heads; h++) {
    float *x = row + h * d;
    memcpy(tmp, x, sizeof(float) * (size_t)d);
    for (long i = 0; i < d; i++) {
      const float a = tmp[i] * c[i];
      const float b = tmp[i < half ? i + half : i - half] * s[i];
      x[i] = a + b;
    }
  }
}

/* One K or V row into the cache: as is (fp32), or rounded to fp16 (to nearest, ties to even; the scalar tail
 * rounds the same way as the vector part). */
static void store_kv_row(void *dst, const float *src, long d, int kv_half) {
  if (!kv_half) {
    memcpy(dst, src, sizeof(float) * (size_t)d);
    return;
  }
  uint16_t *h = dst;
  long i = 0;
  for (; i + VL <= d; i += VL) vf_store_half(h + i, vf_load(src + i));
  for (; i < d; i++) h[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void rotary_cache_write_team(float *qkv, long T, long qk_heads, long kv_heads2, long d, const float *cos,
                             const float *sin, void *cache, long num_slots, const int64_t *new_slots, int kv_half) {
  const long heads_total = qk_heads + kv_heads2 / 2; /* q + k rotated, then v */
  const long first_kv = heads_total - kv_heads2;
  const long esize = kv_half ? 2 : 4;
#pragma omp for schedule(static)
  for (long t = 0; t < T; t++) {
    float *row = qkv + t * heads_total * d;
    rotate_token(row, qk_heads, d, cos + t * d, sin + t * d);
    for (long j = 0; j < kv_heads2; j++)
      store_kv_row((char *)cache + (j * num_slots + new_slots[t]) * d * esize, row + (first_kv + j) * d, d,
                   kv_half);
  }
}

/* qkv rotated in place; kv_heads2 = 2 * KV heads; head_dim at most 512; the cache fp32, or fp16 when kv_half.
 * Threads for prefill-sized inputs. */
int rotary_cache_write(float *qkv, long T, long qk_heads, long kv_heads2, long d, const float *cos, const float *sin,
                       void *cache, long num_slots, const int64_t *new_slots, int kv_half, int nthreads) {
  if (d > 512 || d % 2) return -1;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && T > 16)
  rotary_cache_write_team(qkv, T, qk_heads, kv_heads2, d, cos, sin, cache, num_slots, new_slots, kv_half);
  return 0;
}

/* ---- SwiGLU: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (libmvec's vector expf, per row, so a row's
 * result depends only on the row). */
static void swiglu_row(const float *g, const float *u, float *o, long n) {
#pragma omp simd
  for (long i = 0; i < n; i++) o[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

void swiglu_team(const float *gate, const float *up, float *out, long rows, long n) {
#pragma omp for schedule(static)
  for (long r = 0; r < rows; r++) swiglu_row(gate + r * n, up + r * n, out + r * n, n);
}

void swiglu(const float *gate, const float *up, float *out, long rows, long n, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && rows * n >= (1L << 16))
  swiglu_team(gate, up, out, rows, n);
}

/* ---- the fused decode pass ------------------------------------------------------------------------------ */

#ifdef PL_PROFILE
#include <time.h>
static double prof_seconds[PROF_PHASES], prof_last;
static double prof_now(void) { /* thread 0's CPU time: what other processes take of the core is left out */
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
void pl_prof_mark(int phase) {
  if (omp_get_thread_num() != 0) return;
  const double t = prof_now();
  prof_seconds[phase] += t - prof_last;
  prof_last = t;
}
/* Seconds per phase since the last call (PROF_PHASES doubles), then reset. */
void decode_profile_read(double *out) {
  for (int i = 0; i < PROF_PHASES; i++) out[i] = prof_seconds[i], prof_seconds[i] = 0.0;
}
#define PROF_START() (prof_last = prof_now())
#else
#define PROF_START() ((void)0)
#endif

/* One linear layer as Python packed it (layers/gemm.py, layers/quant_gemm.py). */
typedef struct {
  int32_t kind;  /* LINEAR_* */
  int32_t flags; /* wint8 / wint4: QGEMM_* (team.h) */
  int64_t k, n;
  const void *w, *t1, *t2; /* packed weights (wint8 / wint4: with their per-block tables); t1, t2 unused */
  const float *bias;       /* NULL or padded to whole panels */
} pl_linear;

enum { LINEAR_F32 = 0, LINEAR_BF16 = 1, LINEAR_W8 = 2, LINEAR_W4 = 3 };

typedef struct {
  pl_linear qkv, o, gate, up, down;
  const float *in_norm, *post_norm;
  void *cache; /* [2 * kv_heads * num_slots, d]: fp32, or fp16 when decode_layers' kv_half */
} pl_layer;

int decode_layer_struct_size(void) { return (int)sizeof(pl_layer); }

static long linear_scratch(const pl_linear *l, long M) {
  switch (l->kind) {
    case LINEAR_BF16: return packed_sgemm_bf16_scratch(M, l->k);
    case LINEAR_W8:
    case LINEAR_W4: return quant_gemm_scratch(M, l->k);
    default: return 0;
  }
}

static void linear_team(const pl_linear *l, const float *x, long M, float *y, void *scratch) {
  const long k = l->k, n = l->n;
  switch (l->kind) {
    case LINEAR_F32: packed_sgemm_team(x, M, k, k, l->w, n, l->bias, y, n); break;
    case LINEAR_BF16: packed_sgemm_bf16_team(x, M, k, k, l->w, n, l->bias, y, n, scratch); break;
    case LINEAR_W8: quant_gemm_w8_team(x, M, k, k, l->w, l->flags, n, l->bias, y, n, scratch); break;
    default: quant_gemm_w4_team(x, M, k, k, l->w, l->flags, n, l->bias, y, n, scratch); break;
  }
}

/* x0: [B, H] the tokens' embeddings; cos, sin: [B, d] for each token's position; new_slots [B]: the cache slot
 * of each token; slots [rows, L], slot_row [B] (NULL: token b reads row b), lens [B]: each token's context
 * (itself included; a prefill chunk's tokens share their request's row, as the layer path's
 * AttentionMetadata); out: [B, H] the final norm's output; kv_half: the layers' caches hold fp16. Returns 0, -1
 * when memory could not be allocated, -2 for a layer shape it cannot run. */
int decode_layers(const pl_layer *layers, long nlayers, const float *x0, long B, long H, const float *cos,
                  const float *sin, const int64_t *new_slots, const int64_t *slots, const int64_t *slot_row,
                  const int64_t *lens, long L, long heads, long kv_heads, long d, long num_slots, float eps,
                  const float *final_norm, float *out, int kv_half, int nthreads) {
  if (nlayers < 1 || B < 1 || d > 512 || d % 2) return -2;
  const long qkv_n = (heads + 2 * kv_heads) * d, inter = layers[0].gate.n;
  for (long l = 0; l < nlayers; l++) {
    const pl_layer *ly = layers + l;
    if (ly->qkv.n != qkv_n || ly->qkv.k != H || ly->o.k != heads * d || ly->o.n != H || ly->gate.k != H ||
        ly->up.k != H || ly->up.n != inter || ly->gate.n != inter || ly->down.k != inter || ly->down.n != H)
      return -2;
  }
  long scratch_bytes = 0;
  for (long l = 0; l < nlayers; l++) {
    const pl_linear *ls[5] = {&layers[l].qkv, &layers[l].o, &layers[l].gate, &layers[l].up, &layers[l].down};
    for (int i = 0; i < 5; i++) {
      const long need = linear_scratch(ls[i], B);
      scratch_bytes = need > scratch_bytes ? need : scratch_bytes;
    }
  }
  const int team = nthreads > 1 ? nthreads : 1;
  const long floats = B * (4 * H + qkv_n + heads * d + 3 * inter) + (long)team * (L > 0 ? L : 1);
  float *buf = malloc(sizeof(float) * (size_t)floats + (size_t)scratch_bytes + 64);
  if (!buf) return -1;
  float *x = buf, *res = x + B * H, *hid = res + B * H, *tmp = hid + B * H, *qkv = tmp + B * H;
  float *att = qkv + B * qkv_n, *g = att + B * heads * d, *u = g + B * inter, *act = u + B * inter;
  float *scores = act + B * inter;
  void *scratch = (void *)(((uintptr_t)(scores + (long)team * (L > 0 ? L : 1)) + 63) & ~(uintptr_t)63);
  const long group = heads / kv_heads;

  PROF_START();
#pragma omp parallel num_threads(team) if (team > 1)
  {
    for (long l = 0; l < nlayers; l++) {
      const pl_layer *ly = layers + l;
      if (l == 0) {
        rms_norm_team(x0, 0, ly->in_norm, eps, hid, 0, B, H);
#pragma omp single
        memcpy(res, x0, sizeof(float) * (size_t)(B * H));
      } else {
        rms_norm_team(x, res, ly->in_norm, eps, hid, res, B, H);
      }
      PL_PROF(PROF_NORM);
      linear_team(&ly->qkv, hid, B, qkv, scratch);
      PL_PROF(PROF_QKV);
      rotary_cache_write_team(qkv, B, heads + kv_heads, 2 * kv_heads, d, cos, sin, ly->cache, num_slots, new_slots,
                              kv_half);
      PL_PROF(PROF_ROPE);
      paged_decode_attention_team(qkv, qkv_n, ly->cache, num_slots, slots, slot_row, lens, B, L, (int)kv_heads,
                                  (int)group, (int)d, att, scores, kv_half);
      PL_PROF(PROF_ATTN);
      linear_team(&ly->o, att, B, tmp, scratch);
      PL_PROF(PROF_O);
      rms_norm_team(tmp, res, ly->post_norm, eps, hid, res, B, H);
      PL_PROF(PROF_NORM);
      linear_team(&ly->gate, hid, B, g, scratch);
      PL_PROF(PROF_GATE);
      linear_team(&ly->up, hid, B, u, scratch);
      PL_PROF(PROF_UP);
      swiglu_team(g, u, act, B, inter);
      PL_PROF(PROF_SWIGLU);
      linear_team(&ly->down, act, B, x, scratch);
      PL_PROF(PROF_DOWN);
    }
    rms_norm_team(x, res, final_norm, eps, out, res, B, H);
    PL_PROF(PROF_NORM);
  }
  free(buf);
  return 0;
}
