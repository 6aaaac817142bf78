/* psqdump: decode PSQ files with psq.c and print one checksum per tensor.
 *
 *     psqdump [--max-numel N] FILE...          decode every tensor twice (whole, then row
 *                                              by row) and print, per file:
 *         FILE ok N_TENSORS
 *         FILE tensor I BYTES CRC32            CRC-32 of the decoded tensor's bytes
 *       or
 *         FILE error FIELD OFFSET              FIELD as the reference decoder names it
 *     psqdump --bench REPS FILE                time open, validate, whole-tensor decode and
 *                                              the streaming row path; weights per second
 *
 * Exit status: 0 when every file was read (valid or not), 1 on a usage or I/O error, 3 if
 * the row-by-row output ever differs from the whole-tensor output. The conformance corpus
 * (python -m compress.native.conformance DIR) comes with the expected output of this tool.
 *
 * Unlike psq.c this tool allocates and does I/O; it uses only standard C99 (and
 * clock_gettime for --bench where POSIX has it).
 */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 199309L
#endif
#include "psq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!fp)
        return NULL;
    for (;;) {
        size_t got;
        if (n == cap) {
            unsigned char *nb;
            cap = cap ? cap * 2 : 65536;
            nb = (unsigned char *)realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0)
            break;
    }
    fclose(fp);
    *len = n;
    return buf;
}

static double now(void)
{
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

/* psq_decode_levels against the whole-tensor output of a float32 QUANT tensor: 1 if some
 * float32(level) * scale is not the decoded value bit for bit (or memory ran out). */
static int levels_differ(const psq_file *f, const psq_tensor *t, const unsigned char *out, psq_error *e, int *rc)
{
    int8_t *levels = (int8_t *)malloc((size_t)t->numel);
    float *scales = (float *)malloc((size_t)t->scale_count * sizeof *scales);
    uint64_t i, per = t->scale_count > 1 ? t->numel / t->scale_count : t->numel;
    int differ = 0;
    if (!levels || !scales) {
        differ = 1;
    } else {
        *rc = psq_decode_levels(f, t, levels, (size_t)t->numel, scales, t->scale_count, e);
        for (i = 0; !*rc && i < t->numel && !differ; i++) {
            float v = (float)levels[i] * scales[i / per];
            differ = memcmp(&v, out + 4 * i, 4) != 0;
        }
    }
    free(levels);
    free(scales);
    return differ;
}

static int dump(const char *path, uint64_t max_numel)
{
    size_t len = 0;
    unsigned char *buf = read_all(path, &len);
    psq_file f;
    psq_error e;
    uint32_t *work, i;
    size_t nwork = 0;
    int rc, status = 0;
    if (!buf) {
        fprintf(stderr, "psqdump: cannot read %s\n", path);
        return 1;
    }
    if (len < 20) {
        work = NULL;
    } else { /* n_tensors from the header, for the O(n log n) duplicate-name check */
        size_t n = (size_t)buf[16] | ((size_t)buf[17] << 8) | ((size_t)buf[18] << 16) | ((size_t)buf[19] << 24);
        nwork = n < len / PSQ_RECORD_SIZE ? n : len / PSQ_RECORD_SIZE; /* more cannot fit the file */
        work = (uint32_t *)malloc((nwork ? nwork : 1) * sizeof *work);
        if (!work) {
            free(buf);
            return 1;
        }
    }
    { /* decode from an odd address: psq.c must not assume any alignment of the file */
        unsigned char *odd = (unsigned char *)malloc(len + 1);
        if (!odd) {
            free(work);
            free(buf);
            return 1;
        }
        if (len)
            memcpy(odd + 1, buf, len);
        free(buf);
        buf = odd;
    }
    rc = psq_open(len ? buf + 1 : NULL, len, max_numel, work, nwork, &f, &e);
    if (!rc)
        rc = psq_validate(&f, &e); /* every data block, before any output */
    if (!rc) {
        for (i = 0; i < f.n_tensors && !rc; i++) {
            psq_tensor t;
            psq_rows s;
            size_t size, row;
            unsigned char *out;
            uint32_t crc_whole, crc_rows = 0;
            psq_tensor_info(&f, i, &t, &e);
            size = psq_out_size(&t);
            row = psq_row_size(&t);
            out = (unsigned char *)malloc(size ? size : 1);
            if (!out) {
                status = 1;
                break;
            }
            rc = psq_decode_tensor(&f, &t, out, size, &e);
            if (!rc && t.kind == PSQ_QUANT && t.dtype == PSQ_F32 && levels_differ(&f, &t, out, &e, &rc)) {
                fprintf(stderr, "psqdump: %s tensor %u: levels * scales differ from the decoded tensor\n", path, i);
                status = 3;
            }
            if (!rc) {
                crc_whole = psq_crc32(0, out, size);
                memset(out, 0xA5, size ? size : 1);
                rc = psq_rows_begin(&f, &t, &s, &e);
                while (!rc && s.row < s.rows) {
                    rc = psq_rows_next(&s, out, row, &e);
                    crc_rows = psq_crc32(crc_rows, out, row);
                }
                if (!rc && crc_rows != crc_whole) {
                    fprintf(stderr, "psqdump: %s tensor %u: row-by-row output differs\n", path, i);
                    status = 3;
                }
                if (!rc)
                    printf("%s tensor %u %lu %08lx\n", path, i, (unsigned long)size, (unsigned long)crc_whole);
            }
            free(out);
        }
    }
    if (rc)
        printf("%s error %s %llu\n", path, e.field, (unsigned long long)e.offset);
    else if (status == 0)
        printf("%s ok %u\n", path, f.n_tensors);
    free(work);
    free(buf);
    return status;
}

static int bench(const char *path, int reps)
{
    size_t len = 0, total = 0, maxrow = 0, maxout = 0;
    unsigned char *buf = read_all(path, &len), *out, *rowbuf;
    psq_file f;
    psq_error e;
    uint64_t weights = 0, qweights = 0;
    uint32_t i;
    double best[4] = {1e30, 1e30, 1e30, 1e30};
    int r;
    if (!buf || psq_open(buf, len, PSQ_DEFAULT_MAX_NUMEL, NULL, 0, &f, &e)) {
        fprintf(stderr, "psqdump: cannot open %s\n", path);
        return 1;
    }
    for (i = 0; i < f.n_tensors; i++) {
        psq_tensor t;
        psq_tensor_info(&f, i, &t, &e);
        total += psq_out_size(&t);
        if (psq_out_size(&t) > maxout)
            maxout = psq_out_size(&t);
        if (psq_row_size(&t) > maxrow)
            maxrow = psq_row_size(&t);
        weights += t.numel;
        if (t.kind == PSQ_QUANT)
            qweights += t.numel;
    }
    out = (unsigned char *)malloc(total ? total : 1);
    rowbuf = (unsigned char *)malloc(maxrow ? maxrow : 1);
    if (!out || !rowbuf)
        return 1;
    memset(out, 0, total ? total : 1);
    for (r = 0; r < reps; r++) {
        double t0 = now(), t1, t2, t3, t4;
        unsigned char *o = out;
        psq_open(buf, len, PSQ_DEFAULT_MAX_NUMEL, NULL, 0, &f, &e);
        t1 = now();
        psq_validate(&f, &e);
        t2 = now();
        for (i = 0; i < f.n_tensors; i++) { /* whole tensors, into one contiguous buffer */
            psq_tensor t;
            psq_tensor_info(&f, i, &t, &e);
            psq_decode_tensor(&f, &t, o, psq_out_size(&t), &e);
            o += psq_out_size(&t);
        }
        t3 = now();
        for (i = 0; i < f.n_tensors; i++) { /* rows, each into the same row buffer */
            psq_tensor t;
            psq_rows s;
            psq_tensor_info(&f, i, &t, &e);
            if (psq_rows_begin(&f, &t, &s, &e) == 0)
                while (s.row < s.rows)
                    psq_rows_next(&s, rowbuf, maxrow, &e);
        }
        t4 = now();
        if (t1 - t0 < best[0]) best[0] = t1 - t0;
        if (t2 - t1 < best[1]) best[1] = t2 - t1;
        if (t3 - t2 < best[2]) best[2] = t3 - t2;
        if (t4 - t3 < best[3]) best[3] = t4 - t3;
    }
    printf("file %s bytes %lu weights %llu quant_weights %llu reps %d\n", path, (unsigned long)len,
           (unsigned long long)weights, (unsigned long long)qweights, reps);
    printf("open_s %.9f validate_s %.9f decode_s %.9f rows_s %.9f\n", best[0], best[1], best[2], best[3]);
    printf("decode_weights_per_s %.0f rows_weights_per_s %.0f\n", (double)weights / best[2], (double)weights / best[3]);
    free(out);
    free(rowbuf);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t max_numel = PSQ_DEFAULT_MAX_NUMEL;
    int i = 1, status = 0;
    if (argc >= 4 && strcmp(argv[1], "--bench") == 0)
        return bench(argv[3], atoi(argv[2]));
    if (argc >= 3 && strcmp(argv[1], "--max-numel") == 0) {
        max_numel = strtoull(argv[2], NULL, 10);
        i = 3;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: psqdump [--max-numel N] FILE... | psqdump --bench REPS FILE\n");
        return 1;
    }
    for (; i < argc; i++) {
        int s = dump(argv[i], max_numel);
        if (s > status)
            status = s;
    }
    return status;
}
