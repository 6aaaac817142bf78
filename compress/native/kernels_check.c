/* kernels_check.c: the dispatching kernels against the reference ones, byte for byte.
 *
 * A standalone program for the sanitizer build (ASan + UBSan; compress.native.kernels.
 * build_check): random shapes (rows and columns from 0, columns not a multiple of 8 or of
 * the block), densities from all-zero to full, block widths 1 to 33 and 256, n = 1 and
 * batched, levels in [-127, 127], x of mixed magnitudes. Every buffer is allocated at its
 * exact size, so that a read past an end is caught. For each case:
 *
 *   - the dispatching kernel == the reference (memcmp), for dense, CSR and BSR;
 *   - a batched call == n calls of one frame (memcmp);
 *   - CSR / BSR built from the levels have the counts the *_count functions give;
 *   - the build functions return -1 on block 0, block 257 and too many columns;
 *   - both paths round each multiply-add once (kernels.h's fmaf), on an input where
 *     separate roundings and a float64 sum rounded to float32 both differ.
 *
 * Usage: kernels_check [CASES [SEED]]. Prints "ok CASES cases simd S" and exits 0, or names
 * the first failing case and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint32_t next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1du) >> 32);
}

static uint32_t below(uint32_t n) {
    return n ? next() % n : 0;
}

static void *alloc(size_t bytes) { /* exact size (1 byte for an empty buffer) */
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static float random_x(void) {
    static const float mags[] = {1e-30f, 1e-6f, 1e-3f, 1.0f, 3.0f, 1e3f, 1e6f, 1e20f};
    const float m = mags[below(8)];
    const float u = (float)below(1u << 24) / (float)(1u << 24) * 2.0f - 1.0f;
    return u * m;
}

static int fail(const char *what, uint32_t c, uint32_t rows, uint32_t cols, uint32_t block, uint32_t n) {
    printf("FAIL %s: case %u rows %u cols %u block %u n %u\n", what, c, rows, cols, block, n);
    return 1;
}

typedef void (*matmul_fn)(const void *w, const float *x, uint32_t n, float *y);

/* The dispatching kernel == the reference, and batched == one frame at a time. */
static int compare(matmul_fn fast, matmul_fn ref, const void *w, const float *x, uint32_t rows, uint32_t cols,
                   uint32_t n, float *y0, float *y1) {
    const size_t ybytes = (size_t)n * rows * sizeof(float);
    ref(w, x, n, y0);
    fast(w, x, n, y1);
    if (memcmp(y0, y1, ybytes) != 0)
        return 1;
    for (uint32_t f = 0; f < n; f++)
        fast(w, x + (size_t)f * cols, 1, y1 + (size_t)f * rows);
    if (memcmp(y0, y1, ybytes) != 0)
        return 2;
    return 0;
}

static void dense_fast(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_dense(w, x, n, y); }
static void dense_ref(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_dense_ref(w, x, n, y); }
static void csr_fast(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_csr(w, x, n, y); }
static void csr_ref(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_csr_ref(w, x, n, y); }
static void bsr_fast(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_bsr(w, x, n, y); }
static void bsr_ref(const void *w, const float *x, uint32_t n, float *y) { psq_matmul_bsr_ref(w, x, n, y); }

static uint32_t pick_cols(void) {
    static const uint32_t special[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 192, 255, 256, 257, 400};
    return below(3) ? below(300) : special[below(sizeof special / sizeof special[0])];
}

static uint32_t pick_block(void) {
    static const uint32_t special[] = {1, 3, 4, 8, 16, 32, 256};
    return below(2) ? 1 + below(33) : special[below(sizeof special / sizeof special[0])];
}

static int one_case(uint32_t c) {
    const uint32_t rows = below(4) ? 1 + below(40) : below(3); /* 0, 1 and 2 rows too */
    const uint32_t cols = pick_cols(), block = pick_block();
    static const uint32_t ns[] = {1, 1, 2, 3, 4, 5, 7, 8, 9, 13};
    const uint32_t n = ns[below(10)];
    const uint32_t density = below(5) == 0 ? 0 : below(5) == 0 ? 1024 : below(1025); /* of 1024 */
    const int blocky = (int)below(2);                                                 /* zero whole blocks */
    const size_t numel = (size_t)rows * cols;
    int8_t *q = alloc(numel);
    float *scale = alloc(rows * sizeof(float)), *x = alloc((size_t)n * cols * sizeof(float));
    float *y0 = alloc((size_t)n * rows * sizeof(float)), *y1 = alloc((size_t)n * rows * sizeof(float));
    int bad = 0;

    for (size_t i = 0; i < numel; i++) {
        const int keep = blocky ? below(8) != 0 : below(1024) < density; /* zeros inside blocks too */
        q[i] = keep ? (int8_t)((int)below(255) - 127) : 0;
    }
    if (blocky) /* zero blocks as a whole: a random block mask */
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t k0 = 0; k0 < cols; k0 += block)
                if (below(1024) >= density)
                    for (uint32_t k = k0; k < k0 + block && k < cols; k++)
                        q[(size_t)r * cols + k] = 0;
    for (uint32_t r = 0; r < rows; r++)
        scale[r] = (float)(1 + below(1000)) * 1e-4f;
    for (size_t i = 0; i < (size_t)n * cols; i++)
        x[i] = random_x();

    {
        psq_dense w;
        w.rows = rows;
        w.cols = cols;
        w.q = q;
        w.scale = scale;
        int rc = compare(dense_fast, dense_ref, &w, x, rows, cols, n, y0, y1);
        if (rc)
            bad = fail(rc == 1 ? "dense fast != ref" : "dense batched != single", c, rows, cols, block, n);
    }
    if (!bad) {
        const uint64_t nnz = psq_csr_count(q, rows, cols);
        uint32_t *row_ptr = alloc((rows + 1u) * sizeof(uint32_t));
        uint16_t *col = alloc((size_t)nnz * sizeof(uint16_t));
        int8_t *val = alloc((size_t)nnz);
        psq_csr w;
        if (psq_csr_build(q, rows, cols, row_ptr, col, val) != 0 || row_ptr[rows] != nnz) {
            bad = fail("csr build", c, rows, cols, block, n);
        } else {
            w.rows = rows;
            w.cols = cols;
            w.row_ptr = row_ptr;
            w.col = col;
            w.val = val;
            w.scale = scale;
            int rc = compare(csr_fast, csr_ref, &w, x, rows, cols, n, y0, y1);
            if (rc)
                bad = fail(rc == 1 ? "csr fast != ref" : "csr batched != single", c, rows, cols, block, n);
        }
        free(row_ptr);
        free(col);
        free(val);
    }
    if (!bad && ((uint64_t)cols + block - 1) / block <= 65536u) {
        const uint64_t nb = psq_bsr_count(q, rows, cols, block);
        uint32_t *row_ptr = alloc((rows + 1u) * sizeof(uint32_t));
        uint16_t *bcol = alloc((size_t)nb * sizeof(uint16_t));
        int8_t *val = alloc((size_t)nb * block);
        psq_bsr w;
        if (psq_bsr_build(q, rows, cols, block, row_ptr, bcol, val) != 0 || row_ptr[rows] != nb) {
            bad = fail("bsr build", c, rows, cols, block, n);
        } else {
            w.rows = rows;
            w.cols = cols;
            w.block = block;
            w.row_ptr = row_ptr;
            w.bcol = bcol;
            w.val = val;
            w.scale = scale;
            int rc = compare(bsr_fast, bsr_ref, &w, x, rows, cols, n, y0, y1);
            if (rc)
                bad = fail(rc == 1 ? "bsr fast != ref" : "bsr batched != single", c, rows, cols, block, n);
        }
        free(row_ptr);
        free(bcol);
        free(val);
    }
    free(q);
    free(scale);
    free(x);
    free(y0);
    free(y1);
    return bad;
}

static int build_errors(void) {
    int8_t q[4] = {1, 0, 0, 2};
    uint32_t row_ptr[2];
    uint16_t idx[4];
    int8_t val[1024];
    if (psq_bsr_build(q, 1, 4, 0, row_ptr, idx, val) != -1)
        return fail("bsr block 0 accepted", 0, 1, 4, 0, 1);
    if (psq_bsr_build(q, 1, 4, 257, row_ptr, idx, val) != -1)
        return fail("bsr block 257 accepted", 0, 1, 4, 257, 1);
    /* rows = 0: nothing is read, only the limits are checked */
    if (psq_bsr_build(q, 0, 65537u, 1, row_ptr, idx, val) != -1)
        return fail("bsr 65537 blocks accepted", 0, 0, 65537u, 1, 1);
    if (psq_csr_build(q, 0, 65537u, row_ptr, idx, val) != -1)
        return fail("csr 65537 columns accepted", 0, 0, 65537u, 1, 1);
    if (psq_bsr_build(q, 0, 65536u * 2u, 2, row_ptr, idx, val) != 0)
        return fail("bsr 65536 blocks of 2 refused", 0, 0, 65536u * 2u, 2, 1);
    if (psq_bsr_count(q, 1, 4, 0) != 0)
        return fail("bsr count with block 0", 0, 1, 4, 0, 1);
    return 0;
}

/* Lane 0: 1, then fmaf(65, 16519105 * 2^-54, 1) = 1 + 2^-24 + 2^-54 rounded once: 1 + 2^-23
 * (a float64 sum would round to 1 + 2^-24 first, then tie to even: 1). Frame 2: lane 0 holds
 * 3, then fmaf(-3, 1 + 2^-23, 3) = -3 * 2^-23 exactly (a rounded product loses it). */
static int fused_order(void) {
    int8_t q[9] = {1, 0, 0, 0, 0, 0, 0, 0, 65};
    int8_t q2[9] = {3, 0, 0, 0, 0, 0, 0, 0, -3};
    float x[18] = {0.0f}, scale = 1.0f, y[2];
    psq_dense w;
    x[0] = 1.0f;
    x[8] = 16519105.0f * 0x1p-54f;
    x[9] = 1.0f;
    x[17] = 1.0f + 0x1p-23f;
    w.rows = 1;
    w.cols = 9;
    w.q = q;
    w.scale = &scale;
    psq_matmul_dense_ref(&w, x, 1, y);
    psq_matmul_dense(&w, x, 1, y + 1);
    if (y[0] != 1.0f + 0x1p-23f || y[1] != y[0])
        return fail("dense fmaf rounding", 0, 1, 9, 0, 1);
    w.q = q2;
    psq_matmul_dense_ref(&w, x + 9, 1, y);
    psq_matmul_dense(&w, x + 9, 1, y + 1);
    if (y[0] != -3.0f * 0x1p-23f || y[1] != y[0])
        return fail("dense fmaf exact product", 0, 1, 9, 0, 1);
    return 0;
}

int main(int argc, char **argv) {
    const uint32_t cases = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 3000u;
    if (argc > 2)
        rng_state = (uint64_t)strtoull(argv[2], NULL, 10) * 2u + 1u;
    if (build_errors() || fused_order())
        return 1;
    for (uint32_t c = 0; c < cases; c++)
        if (one_case(c))
            return 1;
    printf("ok %u cases simd %d\n", cases, psq_kernels_simd());
    return 0;
}
