/* kernels_bench.c: a timing loop around the kernels, for compress/bench/kernels.py only.
 *
 * Built with kernels.c into a bench-only shared library (never part of the decoder's
 * library), so that small shapes are timed without the cost of a ctypes call each time.
 */
#define _POSIX_C_SOURCE 199309L

#include <time.h>

#include "kernels.h"

enum { DENSE, DENSE_REF, CSR, CSR_REF, BSR, BSR_REF };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Seconds per call of `reps` back-to-back calls of kernel `kind` (an enum above) on w; -1
 * for an unknown kind. */
double psq_kernels_bench(int kind, const void *w, const float *x, uint32_t n, float *y, uint32_t reps) {
    const double t0 = now();
    for (uint32_t i = 0; i < reps; i++) {
        switch (kind) {
        case DENSE: psq_matmul_dense(w, x, n, y); break;
        case DENSE_REF: psq_matmul_dense_ref(w, x, n, y); break;
        case CSR: psq_matmul_csr(w, x, n, y); break;
        case CSR_REF: psq_matmul_csr_ref(w, x, n, y); break;
        case BSR: psq_matmul_bsr(w, x, n, y); break;
        case BSR_REF: psq_matmul_bsr_ref(w, x, n, y); break;
        default: return -1.0;
        }
    }
    return reps ? (now() - t0) / (double)reps : 0.0;
}
