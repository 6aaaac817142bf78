/* kernels.c: weight-only int8 matrix products (kernels.h), C99.
 *
 * Every kernel computes each output with the operations and order written in kernels.h:
 * eight float accumulators, the i-th stored element of a row added into lane i mod 8 by one
 * fused multiply-add (fmaf: rounded once), then a fixed pairwise reduction and one multiply
 * by the row's scale. The reference kernels (*_ref) are the plain loops of that definition,
 * calling fmaf. The AVX2 kernels (taken where the CPU has AVX2 and FMA) keep the eight lanes
 * in one 8-float vector: widening eight levels with vpmovsxbd + vcvtdq2ps, one vfmadd per
 * eight stored elements, so both give the same bits.
 *
 * Because one row's lanes form a single chain of dependent multiply-adds, the AVX2 kernels
 * hide the FMA latency by running several independent chains at once, in register tiles:
 *   - one frame (n = 1): four rows at a time (dense, CSR, BSR). For BSR the four rows take
 *     one block each per step while all four have blocks left (two steps per iteration),
 *     then each row its own remaining blocks, and the four reductions run as one (reduce4);
 *     when the block width divides cols no row has a narrow last block, and the row lengths
 *     are row_ptr's differences, without a look at the last block's number;
 *   - batched (n frames): dense in tiles of DENSE_TR rows x DENSE_TF frames (2 x 8, or 2 x 6
 *     where only the 16 AVX2 registers exist), each widened weight vector serving the tile's
 *     frames and each x vector its rows; BSR one row by eight frames (its rows' blocks sit at
 *     different columns, so rows share no x), CSR one row by four frames. Frames left over
 *     take tiles of 4, 3, 2 frames, a last single frame the n = 1 path.
 * Dense (n = 1) and BSR copy an unaligned x to an aligned stack buffer first (see XCOPY).
 * The tiles change only which outputs are computed together, never the operations or the
 * order within one output, so a batched call equals n calls of one frame. Tails (a dense
 * row's last cols mod 8 columns, a CSR row's last nnz mod 8 values, the narrow last block of
 * a BSR row, block widths that are not a multiple of eight) spill the accumulator vector to
 * eight floats and continue with the reference's scalar operations on the same lanes.
 *
 * Inputs are assumed finite or infinite; NaN payloads are not guaranteed to propagate
 * identically (compilers treat + and * as commutative).
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* The multiply-adds are the explicit fmaf / vfmadd calls; nothing else is contracted (the
 * reduction's sums and the scale's product stay separate roundings). GCC ignores (and warns
 * about) the STDC pragma, but contracts nothing in ISO C mode (-std=c99, how the library is
 * built); in GNU mode it is told so explicitly. */
#if !defined(__GNUC__) || defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__GNUC__) && defined(__x86_64__) && !defined(PSQ_NO_SIMD)
#define PSQ_KERNELS_AVX2 1
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------- reference kernels */

/* s = ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)); y = s * scale (kernels.h). */
static float finish(const float a[8], float scale) {
    float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    return s * scale;
}

/* The columns row's block j covers: [k0, k0 + width), the last block narrower. */
static size_t block_width(const psq_bsr *w, size_t k0) {
    size_t rest = (size_t)w->cols - k0;
    return rest < w->block ? rest : (size_t)w->block;
}

/* Scalar continuation of a BSR row: blocks [j0, j1), the first one from element e0, with
 * `i` stored elements already summed into a. */
static void bsr_tail(const psq_bsr *w, const float *x, size_t j0, size_t e0, size_t j1, size_t i, float a[8]) {
    const size_t b = w->block;
    for (size_t j = j0; j < j1; j++, e0 = 0) {
        const size_t k0 = (size_t)w->bcol[j] * b, width = block_width(w, k0);
        const int8_t *v = w->val + j * b;
        for (size_t e = e0; e < width; e++, i++)
            a[i % 8] = fmaf((float)v[e], x[k0 + e], a[i % 8]);
    }
}

/* Scalar continuation of a CSR row starting at `start`: nonzeros [p0, p1). */
static void csr_tail(const psq_csr *w, const float *x, size_t start, size_t p0, size_t p1, float a[8]) {
    for (size_t p = p0; p < p1; p++)
        a[(p - start) % 8] = fmaf((float)w->val[p], x[w->col[p]], a[(p - start) % 8]);
}

void psq_matmul_dense_ref(const psq_dense *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows, cols = w->cols;
    for (size_t f = 0; f < n; f++) {
        const float *xf = x + f * cols;
        for (size_t r = 0; r < rows; r++) {
            const int8_t *q = w->q + r * cols;
            float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (size_t k = 0; k < cols; k++)
                a[k % 8] = fmaf((float)q[k], xf[k], a[k % 8]);
            y[f * rows + r] = finish(a, w->scale[r]);
        }
    }
}

void psq_matmul_csr_ref(const psq_csr *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows, cols = w->cols;
    for (size_t f = 0; f < n; f++) {
        const float *xf = x + f * cols;
        for (size_t r = 0; r < rows; r++) {
            float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            csr_tail(w, xf, w->row_ptr[r], w->row_ptr[r], w->row_ptr[r + 1], a);
            y[f * rows + r] = finish(a, w->scale[r]);
        }
    }
}

void psq_matmul_bsr_ref(const psq_bsr *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows, cols = w->cols;
    for (size_t f = 0; f < n; f++) {
        const float *xf = x + f * cols;
        for (size_t r = 0; r < rows; r++) {
            float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            bsr_tail(w, xf, w->row_ptr[r], 0, w->row_ptr[r + 1], 0, a);
            y[f * rows + r] = finish(a, w->scale[r]);
        }
    }
}

/* ---------------------------------------------------------------- AVX2 kernels */

#ifdef PSQ_KERNELS_AVX2
#define AVX2 __attribute__((target("avx2,fma")))
/* Inlined with constant R (rows), F (frames) and V (vectors per block), so that the loops
 * over them unroll and the accumulators live in registers. */
#define AVX2_INLINE static inline __attribute__((target("avx2,fma"), always_inline))

/* Eight levels as eight floats (exact). */
AVX2_INLINE __m256 widen8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)q)));
}

/* fmaf(w, x, acc) in each lane: one fused multiply-add, rounded once. */
AVX2_INLINE __m256 madd(__m256 acc, __m256 w, __m256 x) {
    return _mm256_fmadd_ps(w, x, acc);
}

/* finish() on the vector: the same additions in the same order and operand positions. */
AVX2_INLINE float reduce(__m256 acc, float scale) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)); /* a0+a4 a1+a5 a2+a6 a3+a7 */
    __m128 u = _mm_add_ps(t, _mm_shuffle_ps(t, t, _MM_SHUFFLE(2, 3, 0, 1)));           /* t0+t1 . t2+t3 . */
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehl_ps(u, u))) * scale;
}

/* reduce() on four rows' accumulators at once, into y[0..3]: per row the same additions of the
 * same pairs (hadd adds the pair in the other operand order: the same sum), then the scales. */
AVX2_INLINE void reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3, const float *scale, float *y) {
    const __m256 t01 = _mm256_add_ps(_mm256_permute2f128_ps(a0, a1, 0x20), _mm256_permute2f128_ps(a0, a1, 0x31));
    const __m256 t23 = _mm256_add_ps(_mm256_permute2f128_ps(a2, a3, 0x20), _mm256_permute2f128_ps(a2, a3, 0x31));
    const __m256 u = _mm256_hadd_ps(t01, t23);  /* [t0+t1, t2+t3] of rows 0, 2 | of rows 1, 3 */
    const __m256 v = _mm256_hadd_ps(u, u);      /* [s0, s2, s0, s2 | s1, s3, s1, s3] */
    const __m128 s = _mm_unpacklo_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* s0 s1 s2 s3 */
    _mm_storeu_ps(y, _mm_mul_ps(s, _mm_loadu_ps(scale)));
}

/* Dense at n = 1 and BSR (block 8 V) copy x (a bit-exact copy) to a 32-byte aligned buffer on
 * the stack when it is not aligned and the frames of a call (n = 1) or of a tile (8 frames,
 * BSR) hold at most XCOPY floats: each 8-float load of x then reads one cache line, not two
 * (the caller's x is often only 16-byte aligned, and every BSR block loads x for itself). */
#define XCOPY 4096

/* ---- dense */

/* The batched tile: DENSE_TR rows x DENSE_TF frames of accumulators, plus the DENSE_TR widened
 * weight vectors and one x vector: 2 x 8 where the compiler has 32 vector registers (AVX-512VL
 * encodings allowed by -march=native), else 2 x 6, within AVX2's 16. */
#ifndef DENSE_TR
#define DENSE_TR 2
#endif
#ifndef DENSE_TF
#if defined(__AVX512VL__)
#define DENSE_TF 8
#else
#define DENSE_TF 6
#endif
#endif

/* Rows [r0, r0 + R) of one frame: R independent chains, each x vector loaded once. */
AVX2_INLINE void dense_rows(const psq_dense *w, const float *x, float *y, size_t r0, size_t R) {
    const size_t cols = w->cols, full = cols & ~(size_t)7;
    __m256 acc[4];
    const int8_t *q[4];
    for (size_t a = 0; a < R; a++) {
        acc[a] = _mm256_setzero_ps();
        q[a] = w->q + (r0 + a) * cols;
    }
    for (size_t k = 0; k < full; k += 8) {
        const __m256 xv = _mm256_loadu_ps(x + k);
        for (size_t a = 0; a < R; a++)
            acc[a] = madd(acc[a], widen8(q[a] + k), xv);
    }
    for (size_t a = 0; a < R; a++) {
        if (full == cols) {
            y[r0 + a] = reduce(acc[a], w->scale[r0 + a]);
        } else {
            float t[8];
            _mm256_storeu_ps(t, acc[a]);
            for (size_t k = full; k < cols; k++)
                t[k % 8] = fmaf((float)q[a][k], x[k], t[k % 8]);
            y[r0 + a] = finish(t, w->scale[r0 + a]);
        }
    }
}

/* Rows [r0, r0 + R) of frames [f0, f0 + F): R x F independent chains, each widened weight
 * vector serving the F frames and each x vector the R rows. */
AVX2_INLINE void dense_tile(const psq_dense *w, const float *x, float *y, size_t r0, size_t R, size_t f0, size_t F) {
    const size_t rows = w->rows, cols = w->cols, full = cols & ~(size_t)7;
    __m256 acc[DENSE_TR][DENSE_TF];
    const int8_t *q[DENSE_TR];
    const float *xf[DENSE_TF];
    for (size_t b = 0; b < R; b++) {
        q[b] = w->q + (r0 + b) * cols;
        for (size_t a = 0; a < F; a++)
            acc[b][a] = _mm256_setzero_ps();
    }
    for (size_t a = 0; a < F; a++)
        xf[a] = x + (f0 + a) * cols;
    for (size_t k = 0; k < full; k += 8) {
        __m256 wv[DENSE_TR];
        for (size_t b = 0; b < R; b++)
            wv[b] = widen8(q[b] + k);
        for (size_t a = 0; a < F; a++) {
            const __m256 xv = _mm256_loadu_ps(xf[a] + k);
            for (size_t b = 0; b < R; b++)
                acc[b][a] = madd(acc[b][a], wv[b], xv);
        }
    }
    for (size_t b = 0; b < R; b++) {
        for (size_t a = 0; a < F; a++) {
            float t[8];
            _mm256_storeu_ps(t, acc[b][a]);
            for (size_t k = full; k < cols; k++)
                t[k % 8] = fmaf((float)q[b][k], xf[a][k], t[k % 8]);
            y[(f0 + a) * rows + r0 + b] = finish(t, w->scale[r0 + b]);
        }
    }
}

/* Frames [f0, f0 + F) over every row: tiles of DENSE_TR rows, then the last rows one by one. */
AVX2_INLINE void dense_frames(const psq_dense *w, const float *x, float *y, size_t f0, size_t F) {
    const size_t rows = w->rows;
    size_t r = 0;
    for (; r + DENSE_TR <= rows; r += DENSE_TR)
        dense_tile(w, x, y, r, DENSE_TR, f0, F);
    for (; r < rows; r++)
        dense_tile(w, x, y, r, 1, f0, F);
}

/* One frame (n = 1): four rows at a time. */
AVX2_INLINE void dense_one(const psq_dense *w, const float *x, float *y) {
    const size_t rows = w->rows;
    __m256 xa[XCOPY / 8];
    size_t r = 0;
    if (((uintptr_t)(const void *)x & 31) && w->cols <= XCOPY && rows >= 8) { /* see XCOPY */
        memcpy(xa, x, (size_t)w->cols * sizeof(float));
        x = (const float *)(const void *)xa;
    }
    for (; r + 4 <= rows; r += 4)
        dense_rows(w, x, y, r, 4);
    for (; r < rows; r++)
        dense_rows(w, x, y, r, 1);
}

/* n >= 2: tiles of DENSE_TF frames, then of 4, 3, 2, a last single frame as n = 1; a function
 * of its own, so that dense_one's loop (n = 1) has the registers to itself (inlined beside
 * the tiles, GCC spills its pointers). */
__attribute__((noinline, target("avx2,fma"))) static void dense_batched(const psq_dense *w, const float *x, uint32_t n,
                                                                     float *y) {
    const size_t rows = w->rows, cols = w->cols;
    size_t f = 0;
    for (; f + DENSE_TF <= n; f += DENSE_TF) /* frames outer: the weights stream once per tile of frames */
        dense_frames(w, x, y, f, DENSE_TF);
    for (; n - f >= 4; f += 4)
        dense_frames(w, x, y, f, 4);
    if (n - f == 3)
        dense_frames(w, x, y, f, 3);
    else if (n - f == 2)
        dense_frames(w, x, y, f, 2);
    else if (n - f == 1)
        dense_one(w, x + f * cols, y + f * rows);
}

AVX2 static void dense_avx2(const psq_dense *w, const float *x, uint32_t n, float *y) {
    if (n == 1)
        dense_one(w, x, y);
    else
        dense_batched(w, x, n, y);
}

/* ---- CSR: eight nonzeros at a time, x gathered */

AVX2_INLINE __m256 csr_x(const float *x, const uint16_t *col) {
    const __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)col));
    return _mm256_i32gather_ps(x, idx, 4);
}

AVX2_INLINE float csr_finish(const psq_csr *w, const float *x, size_t r, size_t done, __m256 acc) {
    const size_t start = w->row_ptr[r], end = w->row_ptr[r + 1];
    if (start + done == end)
        return reduce(acc, w->scale[r]);
    float t[8];
    _mm256_storeu_ps(t, acc);
    csr_tail(w, x, start, start + done, end, t);
    return finish(t, w->scale[r]);
}

AVX2_INLINE void csr_rows(const psq_csr *w, const float *x, float *y, size_t r0, size_t R) {
    __m256 acc[4];
    size_t s[4], m[4], common = (size_t)-1, most = 0;
    for (size_t a = 0; a < R; a++) {
        acc[a] = _mm256_setzero_ps();
        s[a] = w->row_ptr[r0 + a];
        m[a] = ((size_t)w->row_ptr[r0 + a + 1] - s[a]) / 8; /* full chunks */
        common = m[a] < common ? m[a] : common;
        most = m[a] > most ? m[a] : most;
    }
    for (size_t j = 0; j < common; j++) {
        for (size_t a = 0; a < R; a++) {
            const size_t p = s[a] + 8 * j;
            acc[a] = madd(acc[a], widen8(w->val + p), csr_x(x, w->col + p));
        }
    }
    for (size_t j = common; j < most; j++) { /* the rows that still have chunks */
        for (size_t a = 0; a < R; a++) {
            if (j < m[a]) {
                const size_t p = s[a] + 8 * j;
                acc[a] = madd(acc[a], widen8(w->val + p), csr_x(x, w->col + p));
            }
        }
    }
    for (size_t a = 0; a < R; a++)
        y[r0 + a] = csr_finish(w, x, r0 + a, 8 * m[a], acc[a]);
}

AVX2_INLINE void csr_frames(const psq_csr *w, const float *x, float *y, size_t r, size_t f0, size_t F) {
    const size_t rows = w->rows, cols = w->cols, s = w->row_ptr[r];
    const size_t m = ((size_t)w->row_ptr[r + 1] - s) / 8;
    __m256 acc[4];
    const float *xf[4];
    for (size_t a = 0; a < F; a++) {
        acc[a] = _mm256_setzero_ps();
        xf[a] = x + (f0 + a) * cols;
    }
    for (size_t j = 0; j < m; j++) {
        const size_t p = s + 8 * j;
        const __m256 wv = widen8(w->val + p);
        const __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(w->col + p)));
        for (size_t a = 0; a < F; a++)
            acc[a] = madd(acc[a], wv, _mm256_i32gather_ps(xf[a], idx, 4));
    }
    for (size_t a = 0; a < F; a++)
        y[(f0 + a) * rows + r] = csr_finish(w, xf[a], r, 8 * m, acc[a]);
}

AVX2 static void csr_avx2(const psq_csr *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows, cols = w->cols;
    size_t f = 0;
    for (; f + 4 <= n; f += 4)
        for (size_t r = 0; r < rows; r++)
            csr_frames(w, x, y, r, f, 4);
    if (n - f >= 2) {
        for (size_t r = 0; r < rows; r++) {
            if (n - f == 3)
                csr_frames(w, x, y, r, f, 3);
            else
                csr_frames(w, x, y, r, f, 2);
        }
    } else if (n - f == 1) {
        size_t r = 0;
        for (; r + 4 <= rows; r += 4)
            csr_rows(w, x + f * cols, y + f * rows, r, 4);
        for (; r < rows; r++)
            csr_rows(w, x + f * cols, y + f * rows, r, 1);
    }
}

/* ---- BSR */

/* Row r's stored blocks that are full width: all of them, less a narrow last one. */
static size_t bsr_full(const psq_bsr *w, size_t r) {
    const size_t s = w->row_ptr[r], e = w->row_ptr[r + 1], b = w->block;
    if (e > s && (size_t)w->bcol[e - 1] * b + b > w->cols) /* (no division: this runs per row) */
        return e - s - 1;
    return e - s;
}

/* Block width a multiple of 8 (V vectors per block): the lanes restart at 0 with every block. */
AVX2_INLINE __m256 bsr8_block(__m256 acc, const int8_t *v, const float *xk, size_t V) {
    for (size_t t = 0; t < V; t++)
        acc = madd(acc, widen8(v + 8 * t), _mm256_loadu_ps(xk + 8 * t));
    return acc;
}

/* The narrow last block (if any) of row r, then the reduction. */
AVX2_INLINE float bsr8_finish(const psq_bsr *w, const float *x, size_t r, size_t nfull, __m256 acc) {
    const size_t s = w->row_ptr[r], e = w->row_ptr[r + 1], b = w->block;
    if (s + nfull == e)
        return reduce(acc, w->scale[r]);
    const size_t k0 = (size_t)w->bcol[e - 1] * b, width = block_width(w, k0), vec = width / 8;
    const int8_t *v = w->val + (e - 1) * b;
    for (size_t t = 0; t < vec; t++)
        acc = madd(acc, widen8(v + 8 * t), _mm256_loadu_ps(x + k0 + 8 * t));
    float a[8];
    _mm256_storeu_ps(a, acc);
    bsr_tail(w, x, e - 1, 8 * vec, e, 0, a); /* the lanes restart at 0 with the block */
    return finish(a, w->scale[r]);
}

/* `steps` steps of four chains over consecutive full blocks (levels v[a], block numbers
 * c[a]), two steps per iteration. */
AVX2_INLINE void bsr8_steps(__m256 acc[4], const int8_t *const v0[4], const uint16_t *const c0[4], const float *x,
                            size_t steps, size_t V) {
    const size_t b = 8 * V;
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const int8_t *v[4] = {v0[0], v0[1], v0[2], v0[3]};
    const uint16_t *c[4] = {c0[0], c0[1], c0[2], c0[3]};
    size_t j = 0;
    for (; j + 2 <= steps; j += 2) { /* two steps per iteration: less loop overhead per block */
        a0 = bsr8_block(a0, v[0] + j * b, x + (size_t)c[0][j] * b, V);
        a1 = bsr8_block(a1, v[1] + j * b, x + (size_t)c[1][j] * b, V);
        a2 = bsr8_block(a2, v[2] + j * b, x + (size_t)c[2][j] * b, V);
        a3 = bsr8_block(a3, v[3] + j * b, x + (size_t)c[3][j] * b, V);
        a0 = bsr8_block(a0, v[0] + (j + 1) * b, x + (size_t)c[0][j + 1] * b, V);
        a1 = bsr8_block(a1, v[1] + (j + 1) * b, x + (size_t)c[1][j + 1] * b, V);
        a2 = bsr8_block(a2, v[2] + (j + 1) * b, x + (size_t)c[2][j + 1] * b, V);
        a3 = bsr8_block(a3, v[3] + (j + 1) * b, x + (size_t)c[3][j + 1] * b, V);
    }
    if (j < steps) {
        a0 = bsr8_block(a0, v[0] + j * b, x + (size_t)c[0][j] * b, V);
        a1 = bsr8_block(a1, v[1] + j * b, x + (size_t)c[1][j] * b, V);
        a2 = bsr8_block(a2, v[2] + j * b, x + (size_t)c[2][j] * b, V);
        a3 = bsr8_block(a3, v[3] + j * b, x + (size_t)c[3][j] * b, V);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* Rows [r0, r0 + 4) of one frame (n = 1), block width 8 V: four independent chains, one
 * block of each per step while all have blocks left (a loop of its own), then each row's
 * blocks past those, then the four reductions at once. `whole`: b divides cols, so that no
 * row has a narrow last block (its blocks are then row_ptr's differences). */
AVX2_INLINE void bsr8_rows4(const psq_bsr *w, const float *x, float *y, size_t r0, size_t V, int whole) {
    const size_t b = 8 * V;
    __m256 acc[4];
    size_t s[5], left[4], common;
    for (size_t a = 0; a < 5; a++)
        s[a] = w->row_ptr[r0 + a];
    for (size_t a = 0; a < 4; a++) {
        acc[a] = _mm256_setzero_ps();
        left[a] = whole ? s[a + 1] - s[a] : bsr_full(w, r0 + a);
    }
    common = left[0] < left[1] ? left[0] : left[1];
    common = left[2] < common ? left[2] : common;
    common = left[3] < common ? left[3] : common;
    if (common) {
        const int8_t *v[4];
        const uint16_t *c[4];
        for (size_t a = 0; a < 4; a++) {
            v[a] = w->val + s[a] * b;
            c[a] = w->bcol + s[a];
        }
        bsr8_steps(acc, v, c, x, common, V);
    }
    for (size_t a = 0; a < 4; a++) /* each row's blocks past the common ones */
        for (size_t p = s[a] + common; p < s[a] + left[a]; p++)
            acc[a] = bsr8_block(acc[a], w->val + p * b, x + (size_t)w->bcol[p] * b, V);
    if (whole || (s[0] + left[0] == s[1] && s[1] + left[1] == s[2] && s[2] + left[2] == s[3] &&
                  s[3] + left[3] == s[4])) { /* no narrow last block */
        reduce4(acc[0], acc[1], acc[2], acc[3], w->scale + r0, y + r0);
        return;
    }
    for (size_t a = 0; a < 4; a++)
        y[r0 + a] = bsr8_finish(w, x, r0 + a, left[a], acc[a]);
}

/* One row of one frame. */
AVX2_INLINE void bsr8_row(const psq_bsr *w, const float *x, float *y, size_t r, size_t V) {
    const size_t b = 8 * V, s = w->row_ptr[r], m = bsr_full(w, r);
    __m256 acc = _mm256_setzero_ps();
    for (size_t p = s; p < s + m; p++)
        acc = bsr8_block(acc, w->val + p * b, x + (size_t)w->bcol[p] * b, V);
    y[r] = bsr8_finish(w, x, r, m, acc);
}

AVX2_INLINE void bsr8_frames(const psq_bsr *w, const float *x, float *y, size_t r, size_t f0, size_t F, size_t V) {
    const size_t rows = w->rows, cols = w->cols, b = 8 * V, s = w->row_ptr[r], m = bsr_full(w, r);
    __m256 acc[8];
    const float *xf[8];
    for (size_t a = 0; a < F; a++) {
        acc[a] = _mm256_setzero_ps();
        xf[a] = x + (f0 + a) * cols;
    }
    for (size_t p = s; p < s + m; p++) {
        const int8_t *v = w->val + p * b;
        const size_t k0 = (size_t)w->bcol[p] * b;
        for (size_t t = 0; t < V; t++) {
            const __m256 wv = widen8(v + 8 * t);
            for (size_t a = 0; a < F; a++)
                acc[a] = madd(acc[a], wv, _mm256_loadu_ps(xf[a] + k0 + 8 * t));
        }
    }
    for (size_t a = 0; a < F; a++)
        y[(f0 + a) * rows + r] = bsr8_finish(w, xf[a], r, m, acc[a]);
}

/* One frame (n = 1): groups of four rows, then the last rows one by one. */
AVX2_INLINE void bsr8_one(const psq_bsr *w, const float *x, float *y, size_t V) {
    const size_t rows = w->rows;
    __m256 xa[XCOPY / 8];
    size_t r = 0;
    if (((uintptr_t)(const void *)x & 31) && w->cols <= XCOPY && rows >= 8) {
        memcpy(xa, x, (size_t)w->cols * sizeof(float));
        x = (const float *)(const void *)xa;
    }
    if (w->cols % (8 * V) == 0)
        for (; r + 4 <= rows; r += 4)
            bsr8_rows4(w, x, y, r, V, 1);
    else
        for (; r + 4 <= rows; r += 4)
            bsr8_rows4(w, x, y, r, V, 0);
    for (; r < rows; r++)
        bsr8_row(w, x, y, r, V);
}

/* bsr8_one for V = 1, 2 and any V, each a function of its own (registers, as dense_batched). */
__attribute__((noinline, target("avx2,fma"))) static void bsr8_one1(const psq_bsr *w, const float *x, float *y) {
    bsr8_one(w, x, y, 1);
}

__attribute__((noinline, target("avx2,fma"))) static void bsr8_one2(const psq_bsr *w, const float *x, float *y) {
    bsr8_one(w, x, y, 2);
}

__attribute__((noinline, target("avx2,fma"))) static void bsr8_onev(const psq_bsr *w, const float *x, float *y,
                                                                 size_t V) {
    bsr8_one(w, x, y, V);
}

AVX2_INLINE void bsr8_avx2(const psq_bsr *w, const float *x, uint32_t n, float *y, size_t V) {
    const size_t rows = w->rows, cols = w->cols;
    size_t f = 0;
    for (; f + 8 <= n; f += 8) { /* each widened weight vector serves eight frames */
        const float *xt = x + f * cols;
        __m256 xa[XCOPY / 8];
        if (((uintptr_t)(const void *)xt & 31) && 8 * cols <= XCOPY) { /* see XCOPY */
            memcpy(xa, xt, 8 * cols * sizeof(float));
            xt = (const float *)(const void *)xa;
        }
        for (size_t r = 0; r < rows; r++)
            bsr8_frames(w, xt, y + f * rows, r, 0, 8, V);
    }
    for (; f + 4 <= n; f += 4)
        for (size_t r = 0; r < rows; r++)
            bsr8_frames(w, x, y, r, f, 4, V);
    if (n - f >= 2) {
        for (size_t r = 0; r < rows; r++) {
            if (n - f == 3)
                bsr8_frames(w, x, y, r, f, 3, V);
            else
                bsr8_frames(w, x, y, r, f, 2, V);
        }
    } else if (n - f == 1) {
        if (V == 1)
            bsr8_one1(w, x + f * cols, y + f * rows);
        else if (V == 2)
            bsr8_one2(w, x + f * cols, y + f * rows);
        else
            bsr8_onev(w, x + f * cols, y + f * rows, V);
    }
}

/* Block width 4: two consecutive stored blocks of a row fill one vector (lanes 0-3, 4-7). */
AVX2_INLINE __m256 bsr4_x(const float *x, const uint16_t *bcol) {
    const __m128 lo = _mm_loadu_ps(x + (size_t)bcol[0] * 4), hi = _mm_loadu_ps(x + (size_t)bcol[1] * 4);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

/* Row r after its first 2 * pairs blocks: the rest in scalar, then the reduction. */
AVX2_INLINE float bsr4_finish(const psq_bsr *w, const float *x, size_t r, size_t pairs, __m256 acc) {
    const size_t s = w->row_ptr[r], e = w->row_ptr[r + 1];
    if (s + 2 * pairs == e)
        return reduce(acc, w->scale[r]);
    float a[8];
    _mm256_storeu_ps(a, acc);
    bsr_tail(w, x, s + 2 * pairs, 0, e, 8 * pairs, a);
    return finish(a, w->scale[r]);
}

AVX2_INLINE void bsr4_rows(const psq_bsr *w, const float *x, float *y, size_t r0, size_t R) {
    __m256 acc[4];
    size_t s[4], m[4], common = (size_t)-1, most = 0;
    for (size_t a = 0; a < R; a++) {
        acc[a] = _mm256_setzero_ps();
        s[a] = w->row_ptr[r0 + a];
        m[a] = bsr_full(w, r0 + a) / 2;
        common = m[a] < common ? m[a] : common;
        most = m[a] > most ? m[a] : most;
    }
    for (size_t j = 0; j < common; j++) {
        for (size_t a = 0; a < R; a++) {
            const size_t p = s[a] + 2 * j;
            acc[a] = madd(acc[a], widen8(w->val + p * 4), bsr4_x(x, w->bcol + p));
        }
    }
    for (size_t j = common; j < most; j++) { /* the rows that still have pairs */
        for (size_t a = 0; a < R; a++) {
            if (j < m[a]) {
                const size_t p = s[a] + 2 * j;
                acc[a] = madd(acc[a], widen8(w->val + p * 4), bsr4_x(x, w->bcol + p));
            }
        }
    }
    for (size_t a = 0; a < R; a++)
        y[r0 + a] = bsr4_finish(w, x, r0 + a, m[a], acc[a]);
}

AVX2_INLINE void bsr4_frames(const psq_bsr *w, const float *x, float *y, size_t r, size_t f0, size_t F) {
    const size_t rows = w->rows, cols = w->cols, s = w->row_ptr[r], m = bsr_full(w, r) / 2;
    __m256 acc[4];
    const float *xf[4];
    for (size_t a = 0; a < F; a++) {
        acc[a] = _mm256_setzero_ps();
        xf[a] = x + (f0 + a) * cols;
    }
    for (size_t j = 0; j < m; j++) {
        const size_t p = s + 2 * j, k0 = (size_t)w->bcol[p] * 4, k1 = (size_t)w->bcol[p + 1] * 4;
        const __m256 wv = widen8(w->val + p * 4);
        for (size_t a = 0; a < F; a++) {
            const __m256 xv =
                _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(xf[a] + k0)), _mm_loadu_ps(xf[a] + k1), 1);
            acc[a] = madd(acc[a], wv, xv);
        }
    }
    for (size_t a = 0; a < F; a++)
        y[(f0 + a) * rows + r] = bsr4_finish(w, xf[a], r, m, acc[a]);
}

AVX2 static void bsr4_avx2(const psq_bsr *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows, cols = w->cols;
    size_t f = 0;
    for (; f + 4 <= n; f += 4)
        for (size_t r = 0; r < rows; r++)
            bsr4_frames(w, x, y, r, f, 4);
    if (n - f >= 2) {
        for (size_t r = 0; r < rows; r++) {
            if (n - f == 3)
                bsr4_frames(w, x, y, r, f, 3);
            else
                bsr4_frames(w, x, y, r, f, 2);
        }
    } else if (n - f == 1) {
        size_t r = 0;
        for (; r + 4 <= rows; r += 4)
            bsr4_rows(w, x + f * cols, y + f * rows, r, 4);
        for (; r < rows; r++)
            bsr4_rows(w, x + f * cols, y + f * rows, r, 1);
    }
}

/* Any other block width: the row's stored elements as one stream, eight at a time, their
 * columns collected and x gathered (the levels of a row's blocks are contiguous in val, and
 * the padding of a narrow last block lies beyond the last element). */
AVX2_INLINE void bsrg_frames(const psq_bsr *w, const float *x, float *y, size_t r, size_t f0, size_t F) {
    const size_t rows = w->rows, cols = w->cols, b = w->block;
    const size_t s = w->row_ptr[r], e = w->row_ptr[r + 1];
    const int8_t *v = w->val + s * b;
    int32_t idx[8];
    size_t i = 0, p = 0; /* elements summed; columns collected */
    __m256 acc[4];
    const float *xf[4];
    for (size_t a = 0; a < F; a++) {
        acc[a] = _mm256_setzero_ps();
        xf[a] = x + (f0 + a) * cols;
    }
    for (size_t j = s; j < e; j++) {
        const size_t k0 = (size_t)w->bcol[j] * b, width = block_width(w, k0);
        for (size_t t = 0; t < width; t++) {
            idx[p++] = (int32_t)(k0 + t);
            if (p == 8) {
                const __m256i iv = _mm256_loadu_si256((const __m256i *)(const void *)idx);
                const __m256 wv = widen8(v + i);
                for (size_t a = 0; a < F; a++)
                    acc[a] = madd(acc[a], wv, _mm256_i32gather_ps(xf[a], iv, 4));
                i += 8;
                p = 0;
            }
        }
    }
    for (size_t a = 0; a < F; a++) {
        if (p == 0) {
            y[(f0 + a) * rows + r] = reduce(acc[a], w->scale[r]);
        } else {
            float t[8];
            _mm256_storeu_ps(t, acc[a]);
            for (size_t u = 0; u < p; u++) /* i is a multiple of 8: lane u */
                t[u] = fmaf((float)v[i + u], xf[a][idx[u]], t[u]);
            y[(f0 + a) * rows + r] = finish(t, w->scale[r]);
        }
    }
}

AVX2 static void bsrg_avx2(const psq_bsr *w, const float *x, uint32_t n, float *y) {
    const size_t rows = w->rows;
    size_t f = 0;
    for (; f + 4 <= n; f += 4)
        for (size_t r = 0; r < rows; r++)
            bsrg_frames(w, x, y, r, f, 4);
    for (size_t r = 0; r < rows; r++) {
        if (n - f == 3)
            bsrg_frames(w, x, y, r, f, 3);
        else if (n - f == 2)
            bsrg_frames(w, x, y, r, f, 2);
        else if (n - f == 1)
            bsrg_frames(w, x, y, r, f, 1);
    }
}

AVX2 static void bsr_avx2(const psq_bsr *w, const float *x, uint32_t n, float *y) {
    if (w->block == 8)
        bsr8_avx2(w, x, n, y, 1);
    else if (w->block == 16)
        bsr8_avx2(w, x, n, y, 2);
    else if (w->block % 8 == 0)
        bsr8_avx2(w, x, n, y, w->block / 8);
    else if (w->block == 4)
        bsr4_avx2(w, x, n, y);
    else
        bsrg_avx2(w, x, n, y);
}

/* The AVX2 kernels need both AVX2 and FMA (a few CPUs have one without the other). */
static int has_simd(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}
#endif /* PSQ_KERNELS_AVX2 */

/* ---------------------------------------------------------------- dispatch */

int psq_kernels_simd(void) {
#ifdef PSQ_KERNELS_AVX2
    return has_simd();
#else
    return 0;
#endif
}

void psq_matmul_dense(const psq_dense *w, const float *x, uint32_t n, float *y) {
#ifdef PSQ_KERNELS_AVX2
    if (has_simd()) {
        dense_avx2(w, x, n, y);
        return;
    }
#endif
    psq_matmul_dense_ref(w, x, n, y);
}

void psq_matmul_csr(const psq_csr *w, const float *x, uint32_t n, float *y) {
#ifdef PSQ_KERNELS_AVX2
    if (has_simd()) {
        csr_avx2(w, x, n, y);
        return;
    }
#endif
    psq_matmul_csr_ref(w, x, n, y);
}

void psq_matmul_bsr(const psq_bsr *w, const float *x, uint32_t n, float *y) {
#ifdef PSQ_KERNELS_AVX2
    if (has_simd() && w->block >= 1) {
        bsr_avx2(w, x, n, y);
        return;
    }
#endif
    psq_matmul_bsr_ref(w, x, n, y);
}

/* ---------------------------------------------------------------- building CSR / BSR */

#define PSQ_MAX_INDEX 65536u /* uint16 column / block numbers */
#define PSQ_MAX_BLOCK 256u

uint64_t psq_csr_count(const int8_t *q, uint32_t rows, uint32_t cols) {
    const size_t total = (size_t)rows * cols;
    uint64_t count = 0;
    for (size_t i = 0; i < total; i++)
        count += q[i] != 0;
    return count;
}

int psq_csr_build(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t *row_ptr, uint16_t *col, int8_t *val) {
    if (cols > PSQ_MAX_INDEX)
        return -1;
    if ((uint64_t)rows * cols > UINT32_MAX && psq_csr_count(q, rows, cols) > UINT32_MAX)
        return -1; /* row_ptr is 32-bit */
    size_t nnz = 0;
    row_ptr[0] = 0;
    for (size_t r = 0; r < rows; r++) {
        const int8_t *qr = q + r * cols;
        for (size_t k = 0; k < cols; k++) {
            if (qr[k] != 0) {
                col[nnz] = (uint16_t)k;
                val[nnz] = qr[k];
                nnz++;
            }
        }
        row_ptr[r + 1] = (uint32_t)nnz;
    }
    return 0;
}

static int block_nonzero(const int8_t *q, size_t width) {
    for (size_t e = 0; e < width; e++)
        if (q[e] != 0)
            return 1;
    return 0;
}

uint64_t psq_bsr_count(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t block) {
    uint64_t count = 0;
    if (block == 0)
        return 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t k0 = 0; k0 < cols; k0 += block) {
            const size_t rest = cols - k0;
            count += (uint64_t)block_nonzero(q + r * cols + k0, rest < block ? rest : block);
        }
    return count;
}

int psq_bsr_build(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t block, uint32_t *row_ptr, uint16_t *bcol,
                  int8_t *val) {
    if (block == 0 || block > PSQ_MAX_BLOCK || ((uint64_t)cols + block - 1) / block > PSQ_MAX_INDEX)
        return -1;
    if ((uint64_t)rows * cols > UINT32_MAX && psq_bsr_count(q, rows, cols, block) > UINT32_MAX)
        return -1; /* row_ptr is 32-bit */
    size_t nb = 0;
    row_ptr[0] = 0;
    for (size_t r = 0; r < rows; r++) {
        const int8_t *qr = q + r * cols;
        for (size_t k0 = 0; k0 < cols; k0 += block) {
            const size_t rest = cols - k0, width = rest < block ? rest : block;
            if (!block_nonzero(qr + k0, width))
                continue;
            bcol[nb] = (uint16_t)(k0 / block);
            memcpy(val + nb * block, qr + k0, width);
            if (width < block)
                memset(val + nb * block + width, 0, block - width);
            nb++;
        }
        row_ptr[r + 1] = (uint32_t)nb;
    }
    return 0;
}
