/* kernels.h: weight-only int8 matrix products, C99 (compress/native/kernels.c).
 *
 * Y = X · Wᵀ with W = diag(scale) · Q: Q holds one tensor's int8 levels (rows × cols, the
 * levels a PSQ file stores), scale one float32 per row (a per-tensor scale repeated), and
 * X (n × cols) float32 rows, n frames at once (n = 1: a matrix-vector product). This is
 * exactly what the decoded file computes: element (r, k) of W is float32(q) * scale[r].
 *
 * Three storages of Q, each with a plain reference kernel (*_ref) and a dispatching one
 * that takes an AVX2 + FMA path where the CPU has both. Both compute every output with the
 * same operations in the same order (written below), so their results are bit-identical:
 *
 *     acc[l] = 0 for the 8 lanes l
 *     for each stored element (k, q) of row r, the i-th one (i = 0, 1, ...):
 *         acc[i mod 8] = fmaf((float)q, x[k], acc[i mod 8])
 *                         (a fused multiply-add: the exact q * x[k] + acc, rounded once)
 *     s = ((acc0 + acc4) + (acc1 + acc5)) + ((acc2 + acc6) + (acc3 + acc7))
 *     y[r] = s * scale[r]
 *
 * The reference kernels call C99's fmaf (math.h), which is exact everywhere: one FMA
 * instruction where the compiler may use it (-march=native on a CPU with FMA), else the C
 * library's correctly rounded fmaf (slower, the same bits); the AVX2 path uses vfmadd.
 * The reduction and the final multiply are separate roundings (never contracted).
 *
 * "Stored elements" are, in increasing k: every element (dense); the nonzeros (CSR);
 * every element of every stored block, zeros inside a block included (block-sparse).
 * Bit-identity holds for every finite or infinite input; which NaN payload a NaN result
 * carries is not specified.
 *
 * No allocation: the caller owns every buffer; *_size functions say how big they must be.
 */
#ifndef PSQ_KERNELS_H
#define PSQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Dense: q is rows × cols, row-major. */
typedef struct {
    uint32_t rows, cols;
    const int8_t *q;     /* rows * cols levels */
    const float *scale;  /* rows */
} psq_dense;

/* CSR: the nonzero levels of each row, in increasing column. */
typedef struct {
    uint32_t rows, cols;    /* cols <= 65536 */
    const uint32_t *row_ptr; /* rows + 1: row r's nonzeros are [row_ptr[r], row_ptr[r + 1]) */
    const uint16_t *col;    /* nnz column indices */
    const int8_t *val;      /* nnz levels */
    const float *scale;     /* rows */
} psq_csr;

/* Block-sparse (BSR, 1 × block): each row is cut into ceil(cols / block) blocks of `block`
 * consecutive columns (the last one narrower when block does not divide cols); only blocks
 * with a nonzero level are stored, every element of a stored block is (block levels each,
 * the last block padded with zero levels to `block`, which the kernels never multiply). */
typedef struct {
    uint32_t rows, cols, block; /* block in [1, 256]; ceil(cols / block) <= 65536 */
    const uint32_t *row_ptr;    /* rows + 1: row r's stored blocks are [row_ptr[r], row_ptr[r + 1]) */
    const uint16_t *bcol;       /* per stored block: its block number (first column / block),
                                 * increasing within a row (so a narrower last block is its row's last) */
    const int8_t *val;          /* block levels per stored block */
    const float *scale;         /* rows */
} psq_bsr;

/* Y (n × rows) = X (n × cols) · Wᵀ, row-major, n >= 1. X and Y must not overlap. */
void psq_matmul_dense_ref(const psq_dense *w, const float *x, uint32_t n, float *y);
void psq_matmul_dense(const psq_dense *w, const float *x, uint32_t n, float *y);
void psq_matmul_csr_ref(const psq_csr *w, const float *x, uint32_t n, float *y);
void psq_matmul_csr(const psq_csr *w, const float *x, uint32_t n, float *y);
void psq_matmul_bsr_ref(const psq_bsr *w, const float *x, uint32_t n, float *y);
void psq_matmul_bsr(const psq_bsr *w, const float *x, uint32_t n, float *y);

/* Building CSR / BSR from dense levels into caller buffers. *_count gives the number of
 * nonzeros / stored blocks (the sizes of col / bcol; val holds that many levels, times
 * block for BSR; psq_bsr_count gives 0 for block 0). The build functions return 0, or -1
 * when an argument is out of range (cols or the block count over 65536, block 0 or over 256)
 * or when the count does not fit row_ptr's 32 bits; they write the last block's padding. */
uint64_t psq_csr_count(const int8_t *q, uint32_t rows, uint32_t cols);
int psq_csr_build(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t *row_ptr, uint16_t *col, int8_t *val);
uint64_t psq_bsr_count(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t block);
int psq_bsr_build(const int8_t *q, uint32_t rows, uint32_t cols, uint32_t block, uint32_t *row_ptr,
                  uint16_t *bcol, int8_t *val);

/* 1 when the dispatching kernels take the AVX2 + FMA path on this CPU (it has both), else 0. */
int psq_kernels_simd(void);

#ifdef __cplusplus
}
#endif
#endif /* PSQ_KERNELS_H */
