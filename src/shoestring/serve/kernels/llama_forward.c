/* One forward step of a Llama-family decoder over a flat batch of tokens, on the CPU.
 *
 * Compiled at engine start by shoestring.serve.native (gcc -O3 -march=native -fopenmp) and
 * called through ctypes once per scheduler step: no Python between the layers, and one
 * OpenMP parallel region per step (threads meet at barriers, they are not forked per op).
 *
 * A step is a flat list of tokens, each with the cache slot (sequence) it belongs to and its
 * position. Decode steps feed one token per running sequence; a prefill chunk feeds many
 * tokens of one slot; both mix freely in one call. Every layer first writes the step's keys
 * and values into the slot cache, then each token attends to positions 0..pos of its slot,
 * so the causal mask is implicit and nothing is concatenated or padded.
 *
 * Numerics: weights are stored as float32, float16 or bfloat16 and widened to float32 in
 * registers (exactly); activations, the KV cache and every accumulation are float32. The
 * result is the float32 model whose weights are the stored values, up to summation order
 * and a polynomial exp (within 2 ulp of expf).
 *
 * Weight layout ("packed"): a (N, K) matrix is stored as N/16 blocks of (K, 16): block b,
 * row k holds W[16b .. 16b+15][k]. A block streams contiguously, and 16 outputs accumulate
 * in one vector register per input row, with no horizontal sums. The gate and up
 * projections are interleaved block by block (gate block j, then up block j), so one thread
 * has both halves of 16 MLP columns and applies silu(gate) * up at once.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));
typedef uint16_t v16u16 __attribute__((vector_size(32), aligned(2)));
typedef uint32_t v16u32 __attribute__((vector_size(64), aligned(4)));

enum { W_F32 = 0, W_F16 = 1, W_BF16 = 2 };

typedef struct {
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, inter, vocab, vocab_padded;
    int wtype;          /* W_F32, W_F16 or W_BF16 */
    int max_slots, max_len;
    int embed_packed;   /* 1: the embedding is the packed LM head (tied weights) */
    float eps;
    const void **wqkv;  /* per layer, packed (H*D + 2*Hk*D, C) */
    const void **wo;    /* per layer, packed (C, H*D) */
    const void **wgu;   /* per layer, packed (2*I, C), gate and up blocks interleaved */
    const void **wdown; /* per layer, packed (C, I) */
    const float **ln1, **ln2;
    const float *norm;
    const void *head;   /* packed (vocab_padded, C); rows past vocab are zero */
    const void *embed;  /* row-major (V, C) in wtype, or the packed head when embed_packed */
    const float *rope_cos, *rope_sin; /* (max_len, D) */
    float *kcache, *vcache;           /* (L, S, Hk, max_len, D) */
} Model;

/* ------------------------------------------------------------------ loads and exp */
static inline v16f load_f32(const void *w, size_t i) {
    v16f out;
    memcpy(&out, (const float *)w + i, 64);
    return out;
}

/* float16 -> float32 with the hardware converter: GCC scalarises __builtin_convertvector here. */
static inline v16f load_f16(const void *w, size_t i) {
    const uint16_t *p = (const uint16_t *)w + i;
#if defined(__AVX512F__)
    return (v16f)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__F16C__)
    v16f out;
    __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)));
    memcpy(&out, &lo, 32);
    memcpy((char *)&out + 32, &hi, 32);
    return out;
#else
    v16f out;
    for (int j = 0; j < 16; j++) out[j] = (float)((const _Float16 *)p)[j];
    return out;
#endif
}

/* bfloat16 -> float32 is exact: the 16 bits are the high half of the float32. */
static inline v16f load_bf16(const void *w, size_t i) {
    v16u16 h;
    memcpy(&h, (const uint16_t *)w + i, 32);
    v16u32 u = __builtin_convertvector(h, v16u32) << 16;
    v16f out;
    memcpy(&out, &u, 64);
    return out;
}

static inline float load1(const void *w, size_t i, int wtype) {
    if (wtype == W_F32) return ((const float *)w)[i];
    if (wtype == W_F16) return (float)((const _Float16 *)w)[i];
    uint32_t u = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exp on 16 lanes: Cephes' expf (range reduction by ln 2, degree-5 polynomial, 2^n by
 * exponent arithmetic). Inputs are clamped to [-87.3, 88.3], where expf is finite and normal. */
static inline v16f vselect(v16i mask, v16f a, v16f b) { /* mask ? a : b, lane by lane */
    v16i ai, bi;
    memcpy(&ai, &a, 64);
    memcpy(&bi, &b, 64);
    v16i r = (ai & mask) | (bi & ~mask);
    v16f out;
    memcpy(&out, &r, 64);
    return out;
}

static inline v16f vexp(v16f x) {
    const v16f hi = (v16f){0} + 88.3762626647949f, lo = (v16f){0} - 87.3365447504019f;
    x = vselect(x > hi, hi, x);
    x = vselect(x < lo, lo, x);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to the nearest integer */
    v16f t = x * 1.44269504088896341f + magic;
    v16f n = t - magic;
    v16f r = x - n * 0.693359375f - n * -2.12194440e-4f;
    v16f p = (v16f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    v16f y = p * r * r + r + 1.0f;
    v16i ni = __builtin_convertvector(n, v16i);
    v16i bits;
    memcpy(&bits, &y, 64);
    bits += ni << 23;
    memcpy(&y, &bits, 64);
    return y;
}

static inline void store16(float *y, v16f out, int accumulate) {
    if (accumulate) {
        v16f old;
        memcpy(&old, y, 64);
        out += old;
    }
    memcpy(y, &out, 64);
}

/* ------------------------------------------------------------------ GEMM tiles */
/* MT input rows against one packed block: y[i][0..15] (+)= x[i][:] . block. */
#define DEFINE_TILE(MT, SUF, LOAD)                                                                  \
    static inline void tile##MT##_##SUF(int K, int ldy, const float *x, const void *blk, float *y, \
                                        int accumulate) {                                          \
        v16f acc[MT];                                                                               \
        for (int i = 0; i < MT; i++) acc[i] = (v16f){0};                                           \
        for (int k = 0; k < K; k++) {                                                               \
            v16f w = LOAD(blk, (size_t)k * 16);                                                     \
            for (int i = 0; i < MT; i++) acc[i] += x[(size_t)i * K + k] * w;                        \
        }                                                                                           \
        for (int i = 0; i < MT; i++) store16(y + (size_t)i * ldy, acc[i], accumulate);              \
    }

/* One row: four accumulators over k so the FMA latency chain does not bound a GEMV. */
#define DEFINE_TILE1(SUF, LOAD)                                                                     \
    static inline void tile1_##SUF(int K, int ldy, const float *x, const void *blk, float *y,      \
                                   int accumulate) {                                               \
        (void)ldy;                                                                                  \
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                               \
        int k = 0;                                                                                  \
        for (; k + 4 <= K; k += 4) {                                                                \
            a0 += x[k] * LOAD(blk, (size_t)k * 16);                                                 \
            a1 += x[k + 1] * LOAD(blk, (size_t)(k + 1) * 16);                                       \
            a2 += x[k + 2] * LOAD(blk, (size_t)(k + 2) * 16);                                       \
            a3 += x[k + 3] * LOAD(blk, (size_t)(k + 3) * 16);                                       \
        }                                                                                           \
        for (; k < K; k++) a0 += x[k] * LOAD(blk, (size_t)k * 16);                                  \
        store16(y, (a0 + a1) + (a2 + a3), accumulate);                                              \
    }

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
/* AVX2 without AVX-512: the same tiles written with 8-lane intrinsics, two registers per 16
 * columns. GCC lowers the 16-lane generic vectors above through the stack and general
 * registers on this target (every FMA reloads and re-stores its accumulator), which made a
 * row cost the same compute whether it shared its weight block with other rows or not: the
 * batch gave no speedup. Same summation order as the generic tiles (k in order; four
 * interleaved partial sums in the one-row tile), so the results are bit-identical. Six rows
 * is the widest tile whose 12 accumulators, 2 weight halves and a broadcast fit 16 registers. */
static inline void w2_f32(const void *w, size_t i, __m256 *lo, __m256 *hi) {
    const float *p = (const float *)w + i;
    *lo = _mm256_loadu_ps(p);
    *hi = _mm256_loadu_ps(p + 8);
}
static inline void w2_f16(const void *w, size_t i, __m256 *lo, __m256 *hi) {
    const uint16_t *p = (const uint16_t *)w + i;
    *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)));
}
static inline void w2_bf16(const void *w, size_t i, __m256 *lo, __m256 *hi) {
    const uint16_t *p = (const uint16_t *)w + i;
    *lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    *hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8))), 16));
}
static inline void store2(float *y, __m256 lo, __m256 hi, int accumulate) {
    if (accumulate) {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(y));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(y + 8));
    }
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
}
/* Named accumulators (not an array), so GCC keeps them in registers without dead stores. */
#define AVX2_ROW(i)                                                                                 \
    if (MT > i) {                                                                                   \
        __m256 xb = _mm256_broadcast_ss(x + (size_t)(i) * K + k);                                   \
        l##i = _mm256_fmadd_ps(xb, w0, l##i);                                                       \
        h##i = _mm256_fmadd_ps(xb, w1, h##i);                                                       \
    }
#define AVX2_STORE(i) \
    if (MT > i) store2(y + (size_t)(i) * ldy, l##i, h##i, accumulate);
#define DEFINE_TILE_AVX2(MT_, SUF)                                                                  \
    static inline void tile##MT_##_##SUF(int K, int ldy, const float *x, const void *blk, float *y, \
                                         int accumulate) {                                         \
        enum { MT = MT_ };                                                                          \
        __m256 z = _mm256_setzero_ps(), l0 = z, h0 = z, l1 = z, h1 = z, l2 = z, h2 = z, l3 = z,    \
               h3 = z, l4 = z, h4 = z, l5 = z, h5 = z;                                              \
        for (int k = 0; k < K; k++) {                                                               \
            __m256 w0, w1;                                                                          \
            w2_##SUF(blk, (size_t)k * 16, &w0, &w1);                                                \
            AVX2_ROW(0) AVX2_ROW(1) AVX2_ROW(2) AVX2_ROW(3) AVX2_ROW(4) AVX2_ROW(5)                 \
        }                                                                                           \
        AVX2_STORE(0) AVX2_STORE(1) AVX2_STORE(2) AVX2_STORE(3) AVX2_STORE(4) AVX2_STORE(5)         \
    }
#define DEFINE_TILE1_AVX2(SUF)                                                                      \
    static inline void tile1_##SUF(int K, int ldy, const float *x, const void *blk, float *y,      \
                                   int accumulate) {                                               \
        (void)ldy;                                                                                  \
        __m256 l[4], h[4], w0, w1;                                                                  \
        for (int j = 0; j < 4; j++) l[j] = h[j] = _mm256_setzero_ps();                             \
        int k = 0;                                                                                  \
        for (; k + 4 <= K; k += 4)                                                                  \
            for (int j = 0; j < 4; j++) {                                                           \
                w2_##SUF(blk, (size_t)(k + j) * 16, &w0, &w1);                                      \
                __m256 xb = _mm256_broadcast_ss(x + k + j);                                         \
                l[j] = _mm256_fmadd_ps(xb, w0, l[j]);                                               \
                h[j] = _mm256_fmadd_ps(xb, w1, h[j]);                                               \
            }                                                                                       \
        for (; k < K; k++) {                                                                        \
            w2_##SUF(blk, (size_t)k * 16, &w0, &w1);                                                \
            __m256 xb = _mm256_broadcast_ss(x + k);                                                 \
            l[0] = _mm256_fmadd_ps(xb, w0, l[0]);                                                   \
            h[0] = _mm256_fmadd_ps(xb, w1, h[0]);                                                   \
        }                                                                                           \
        store2(y, _mm256_add_ps(_mm256_add_ps(l[0], l[1]), _mm256_add_ps(l[2], l[3])),             \
               _mm256_add_ps(_mm256_add_ps(h[0], h[1]), _mm256_add_ps(h[2], h[3])), accumulate);   \
    }
#define DEFINE_BLOCK(SUF, LOAD)                                                                     \
    DEFINE_TILE_AVX2(6, SUF)                                                                        \
    DEFINE_TILE_AVX2(4, SUF)                                                                        \
    DEFINE_TILE_AVX2(2, SUF)                                                                        \
    DEFINE_TILE1_AVX2(SUF)                                                                          \
    static void block_##SUF(int M, int K, int ldy, const float *x, const void *blk, float *y,      \
                            int accumulate) {                                                       \
        int m = 0;                                                                                  \
        for (; m + 6 <= M; m += 6) tile6_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m + 4 <= M; m += 4) tile4_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m + 2 <= M; m += 2) tile2_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m < M; m++) tile1_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
    }
#else
/* All M rows of x against one block (16 output columns at y, row stride ldy). */
#define DEFINE_BLOCK(SUF, LOAD)                                                                     \
    DEFINE_TILE(8, SUF, LOAD)                                                                       \
    DEFINE_TILE(4, SUF, LOAD)                                                                       \
    DEFINE_TILE(2, SUF, LOAD)                                                                       \
    DEFINE_TILE1(SUF, LOAD)                                                                         \
    static void block_##SUF(int M, int K, int ldy, const float *x, const void *blk, float *y,      \
                            int accumulate) {                                                       \
        int m = 0;                                                                                  \
        for (; m + 8 <= M; m += 8) tile8_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m + 4 <= M; m += 4) tile4_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m + 2 <= M; m += 2) tile2_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
        for (; m < M; m++) tile1_##SUF(K, ldy, x + (size_t)m * K, blk, y + (size_t)m * ldy, accumulate); \
    }
#endif
DEFINE_BLOCK(f32, load_f32)
DEFINE_BLOCK(f16, load_f16)
DEFINE_BLOCK(bf16, load_bf16)

static inline void block_any(int wtype, int M, int K, int ldy, const float *x, const void *blk, float *y,
                             int accumulate) {
    if (wtype == W_F16) block_f16(M, K, ldy, x, blk, y, accumulate);
    else if (wtype == W_BF16) block_bf16(M, K, ldy, x, blk, y, accumulate);
    else block_f32(M, K, ldy, x, blk, y, accumulate);
}

static inline size_t elem_size(int wtype) { return wtype == W_F32 ? 4 : 2; }

/* y (M, N) (+)= x (M, K) . W^T, W packed (N, K). Work-shared: call inside a parallel region. */
static void gemm_shared(int wtype, int M, int N, int K, const float *x, const void *w, float *y, int accumulate) {
    size_t bsz = (size_t)K * 16 * elem_size(wtype);
#pragma omp for schedule(static)
    for (int b = 0; b < N / 16; b++)
        block_any(wtype, M, K, N, x, (const char *)w + b * bsz, y + (size_t)b * 16, accumulate);
}

/* act (M, I) = silu(x . Wg^T) * (x . Wu^T), with gu (M, 2I) as scratch. Work-shared. */
static void gate_up_shared(int wtype, int M, int I, int K, const float *x, const void *w, float *gu, float *act) {
    size_t bsz = (size_t)K * 16 * elem_size(wtype);
#pragma omp for schedule(static)
    for (int j = 0; j < I / 16; j++) {
        float *g = gu + (size_t)j * 32, *u = g + 16;
        block_any(wtype, M, K, 2 * I, x, (const char *)w + (size_t)(2 * j) * bsz, g, 0);
        block_any(wtype, M, K, 2 * I, x, (const char *)w + (size_t)(2 * j + 1) * bsz, u, 0);
        for (int m = 0; m < M; m++) {
            v16f gv, uv;
            memcpy(&gv, g + (size_t)m * 2 * I, 64);
            memcpy(&uv, u + (size_t)m * 2 * I, 64);
            v16f a = gv / (1.0f + vexp(-gv)) * uv;
            memcpy(act + (size_t)m * I + (size_t)j * 16, &a, 64);
        }
    }
}

/* Stand-alone GEMM (its own parallel region), for measuring the kernel by itself. */
void ss_gemm(int M, int N, int K, const float *x, const void *w, int wtype, float *y, int accumulate, int nt) {
#pragma omp parallel num_threads(nt)
    gemm_shared(wtype, M, N, K, x, w, y, accumulate);
}

/* ------------------------------------------------------------------ the other ops */
/* x . y over n floats: 16 lanes at a time, then the lanes summed. */
static inline float dot(const float *x, const float *y, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps(); /* lanes 0-7 and 8-15, as below */
    for (; i + 16 <= n; i += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), hi);
    }
    float acc[16];
    _mm256_storeu_ps(acc, lo);
    _mm256_storeu_ps(acc + 8, hi);
#else
    v16f acc = {0};
    for (; i + 16 <= n; i += 16) {
        v16f a, b;
        memcpy(&a, x + i, 64);
        memcpy(&b, y + i, 64);
        acc += a * b;
    }
#endif
    float s = 0.f;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

/* out = w * (x * rsqrt(mean(x^2) + eps)), one row (as transformers' LlamaRMSNorm in float32). */
static void rms_norm_row(int C, const float *x, const float *w, float eps, float *out) {
    float r = 1.0f / sqrtf(dot(x, x, C) / (float)C + eps);
    for (int c = 0; c < C; c++) out[c] = w[c] * (x[c] * r);
}

/* v = v * cos + rotate_half(v) * sin, rotate_half(v) = cat(-v[D/2:], v[:D/2]). */
static void rope(float *v, int D, const float *cos_row, const float *sin_row) {
    int h = D / 2;
    float tmp[512];
    memcpy(tmp, v, (size_t)D * 4);
    for (int d = 0; d < h; d++) v[d] = tmp[d] * cos_row[d] - tmp[d + h] * sin_row[d];
    for (int d = h; d < D; d++) v[d] = tmp[d] * cos_row[d] + tmp[d - h] * sin_row[d];
}

static void embed_row(const Model *m, int32_t token, float *row) {
    int C = m->hidden;
    size_t v = (size_t)token;
    if (m->embed_packed) { /* element (v, c) of the packed head: block v/16, row c, column v%16 */
        size_t base = (v / 16) * (size_t)C * 16 + v % 16;
        for (int c = 0; c < C; c++) row[c] = load1(m->embed, base + (size_t)c * 16, m->wtype);
    } else {
        for (int c = 0; c < C; c++) row[c] = load1(m->embed, v * C + c, m->wtype);
    }
}

/* softmax(q . K[0..P) * scale) . V[0..P) for one query head; s is P floats of scratch. */
static void attend(const float *q, const float *K, const float *V, int P, int D, float scale, float *s, float *o) {
    float mx = -INFINITY;
    for (int p = 0; p < P; p++) {
        s[p] = dot(q, K + (size_t)p * D, D) * scale;
        mx = s[p] > mx ? s[p] : mx;
    }
    float sum = 0.f;
    int p = 0;
    for (; p + 16 <= P; p += 16) {
        v16f e;
        memcpy(&e, s + p, 64);
        e = vexp(e - mx);
        memcpy(s + p, &e, 64);
        for (int j = 0; j < 16; j++) sum += e[j];
    }
    for (; p < P; p++) {
        s[p] = expf(s[p] - mx);
        sum += s[p];
    }
    for (int d = 0; d < D; d++) o[d] = 0.f;
    float inv = 1.0f / sum;
    for (p = 0; p < P; p++) {
        const float *v = V + (size_t)p * D;
        float a = s[p] * inv;
        for (int d = 0; d < D; d++) o[d] += a * v[d];
    }
}

/* ------------------------------------------------------------------ the step */
/* Floats of workspace ss_forward needs for n tokens with nt threads. */
long ss_workspace_floats(const Model *m, int n, int nt) {
    long C = m->hidden, W = (long)(m->n_heads + 2 * m->n_kv_heads) * m->head_dim;
    long A = (long)m->n_heads * m->head_dim, I = m->inter;
    long per_token = C /* x */ + C /* h */ + W /* qkv */ + A /* attn */ + 2 * I /* gate|up */ + I /* act */;
    return per_token * n + (long)nt * m->max_len /* scores */ + C * n /* normed rows for the head */;
}

/* One step. Returns 0, or -1 (token id out of range), -2 (slot), -3 (position), -4 (output row). */
int ss_forward(const Model *m, int n, const int32_t *tokens, const int32_t *slots, const int32_t *pos,
               int n_out, const int32_t *out_rows, float *logits, float *ws, int nt) {
    const int C = m->hidden, H = m->n_heads, Hk = m->n_kv_heads, D = m->head_dim, I = m->inter, T = m->max_len;
    const int W = (H + 2 * Hk) * D, group = H / Hk;
    for (int t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->vocab) return -1;
        if (slots[t] < 0 || slots[t] >= m->max_slots) return -2;
        if (pos[t] < 0 || pos[t] >= T) return -3;
    }
    for (int i = 0; i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n) return -4;
    float *x = ws, *h = x + (size_t)n * C, *qkv = h + (size_t)n * C, *att = qkv + (size_t)n * W;
    float *gu = att + (size_t)n * H * D, *act = gu + (size_t)n * 2 * I, *scores = act + (size_t)n * I;
    float *head_in = scores + (size_t)nt * T;
    const size_t slot_stride = (size_t)Hk * T * D, layer_stride = (size_t)m->max_slots * slot_stride;
    const float scale = 1.0f / sqrtf((float)D);

#pragma omp parallel num_threads(nt)
    {
        float *s = scores + (size_t)omp_get_thread_num() * T;
#pragma omp for schedule(static)
        for (int t = 0; t < n; t++) embed_row(m, tokens[t], x + (size_t)t * C);
        for (int l = 0; l < m->n_layers; l++) {
            float *kc = m->kcache + (size_t)l * layer_stride, *vc = m->vcache + (size_t)l * layer_stride;
#pragma omp for schedule(static)
            for (int t = 0; t < n; t++) rms_norm_row(C, x + (size_t)t * C, m->ln1[l], m->eps, h + (size_t)t * C);
            gemm_shared(m->wtype, n, W, C, h, m->wqkv[l], qkv, 0);
#pragma omp for schedule(static)
            for (int t = 0; t < n; t++) {
                const float *cr = m->rope_cos + (size_t)pos[t] * D, *sr = m->rope_sin + (size_t)pos[t] * D;
                float *row = qkv + (size_t)t * W;
                for (int hh = 0; hh < H + Hk; hh++) rope(row + (size_t)hh * D, D, cr, sr);
                for (int g = 0; g < Hk; g++) {
                    size_t at = (size_t)slots[t] * slot_stride + ((size_t)g * T + pos[t]) * D;
                    memcpy(kc + at, row + (size_t)(H + g) * D, (size_t)D * 4);
                    memcpy(vc + at, row + (size_t)(H + Hk + g) * D, (size_t)D * 4);
                }
            }
#pragma omp for collapse(2) schedule(static)
            for (int t = 0; t < n; t++)
                for (int hh = 0; hh < H; hh++) {
                    size_t kv = (size_t)slots[t] * slot_stride + (size_t)(hh / group) * T * D;
                    attend(qkv + (size_t)t * W + (size_t)hh * D, kc + kv, vc + kv, pos[t] + 1, D, scale, s,
                           att + (size_t)t * H * D + (size_t)hh * D);
                }
            gemm_shared(m->wtype, n, C, H * D, att, m->wo[l], x, 1);
#pragma omp for schedule(static)
            for (int t = 0; t < n; t++) rms_norm_row(C, x + (size_t)t * C, m->ln2[l], m->eps, h + (size_t)t * C);
            gate_up_shared(m->wtype, n, I, C, h, m->wgu[l], gu, act);
            gemm_shared(m->wtype, n, C, I, act, m->wdown[l], x, 1);
        }
#pragma omp for schedule(static)
        for (int i = 0; i < n_out; i++)
            rms_norm_row(C, x + (size_t)out_rows[i] * C, m->norm, m->eps, head_in + (size_t)i * C);
        gemm_shared(m->wtype, n_out, m->vocab_padded, C, head_in, m->head, logits, 0);
    }
    return 0;
}
