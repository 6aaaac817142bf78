/* psq.h: C99 decoder of PSQ v1 packed sparse quantized weights (compress/format/FORMAT.md).
 *
 * One header and one source file (psq.c), to copy into a firmware project as they are.
 * No allocation, no global or static mutable state, no I/O: the caller passes the file's
 * bytes (RAM or memory-mapped flash, any alignment) and owns every output buffer. All
 * reads of the file are explicit little-endian byte reads; the host may be big-endian.
 *
 * Use:
 *     psq_file f; psq_error e; psq_tensor t;
 *     if (psq_open(buf, len, PSQ_DEFAULT_MAX_NUMEL, NULL, 0, &f, &e)) -> error
 *     for (i = 0; i < f.n_tensors; i++) {
 *         psq_tensor_info(&f, i, &t, &e);
 *         psq_decode_tensor(&f, &t, out, psq_out_size(&t), &e);   whole tensor, or:
 *         psq_rows_begin(&f, &t, &rows, &e);                         one row at a time
 *         while (rows.row < rows.rows) psq_rows_next(&rows, row_out, psq_row_size(&t), &e);
 *     }
 *
 * Every function returns 0 (PSQ_OK) or an error code and, when `err` is not NULL, fills
 * it with the code, the name of the offending field (the same names as the reference
 * decoder's FormatError messages) and the byte offset in the file.
 *
 * Outputs are native-endian values of the tensor's dtype: float32, float16 and bfloat16
 * (IEEE binary16 / the high half of a binary32, as uint16 bit patterns), float64, int64,
 * int32, int16, int8, uint8, bool (one byte 0 or 1). A QUANT value is float32(q) *
 * float32(scale), rounded to nearest-even into float16 / bfloat16 by this code itself; a
 * scale stored in 16 bits (flag PSQ_FLAG_SCALES16) is widened exactly to float32 first.
 * psq_decode_levels gives a QUANT tensor's int8 levels and float32 scales instead.
 */
#ifndef PSQ_H
#define PSQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PSQ_HEADER_SIZE 48u
#define PSQ_RECORD_SIZE 88u
#define PSQ_MAX_META 65536u
#define PSQ_MAX_META_DEPTH 8
#define PSQ_MAX_NAME 1024u
#define PSQ_MAX_RANK 6
#define PSQ_MAX_TENSOR_NUMEL ((uint64_t)1 << 28) /* per tensor, fixed by the spec */
#define PSQ_DEFAULT_MAX_NUMEL ((uint64_t)1 << 28) /* default cap on the summed numel */
#ifndef PSQ_GOLOMB_BATCH
#define PSQ_GOLOMB_BATCH 64 /* Golomb positions decoded at a time (psq_rows holds them) */
#endif

/* kind, encoding and dtype codes (FORMAT.md, "Tensor record") */
enum { PSQ_RAW = 0, PSQ_QUANT = 1 };
enum { PSQ_DENSE = 0, PSQ_BITMASK = 1, PSQ_GOLOMB = 2, PSQ_BLOCK = 3 };

/* header flags: required features (FORMAT.md, "Header"); a file sets a bit iff a record uses it */
#define PSQ_FLAG_BLOCK 0x1u     /* some QUANT record has encoding PSQ_BLOCK */
#define PSQ_FLAG_SCALES16 0x2u  /* some QUANT record stores its scales in 16 bits (store 2 or 3) */
#ifndef PSQ_KNOWN_FLAGS
#define PSQ_KNOWN_FLAGS (PSQ_FLAG_BLOCK | PSQ_FLAG_SCALES16) /* any other set bit is refused */
#endif
#define PSQ_MAX_BLOCK 256u /* the largest BLOCK width */
enum {
    PSQ_F32 = 1, PSQ_F16 = 2, PSQ_BF16 = 3, PSQ_F64 = 4, PSQ_I64 = 5,
    PSQ_I32 = 6, PSQ_I16 = 7, PSQ_I8 = 8, PSQ_U8 = 9, PSQ_BOOL = 10
};

/* error codes; the field name says where, the code says what */
enum {
    PSQ_OK = 0,
    PSQ_E_TRUNCATED = 1,  /* a section runs past the end of the file */
    PSQ_E_MAGIC = 2,      /* not a PSQ file */
    PSQ_E_CHECKSUM = 3,   /* a CRC-32 does not match */
    PSQ_E_VERSION = 4,    /* unknown major version */
    PSQ_E_FLAGS = 5,      /* unknown required feature */
    PSQ_E_SIZE = 6,       /* a length does not match the layout */
    PSQ_E_LIMIT = 7,      /* a count exceeds its cap (meta_len, numel, name length) */
    PSQ_E_PADDING = 8,    /* a padding byte is not zero */
    PSQ_E_NAME = 9,       /* name not contiguous, not UTF-8, or duplicate */
    PSQ_E_FIELD = 10,     /* a record field has an invalid value */
    PSQ_E_METADATA = 11,  /* metadata fails the checks done in C (see FORMAT.md) */
    PSQ_E_VALUE = 12,     /* a stored value is invalid (non-finite, bad bool, bad level) */
    PSQ_E_SCALE = 13,     /* a scale is not finite and positive, or qmax * scale overflows */
    PSQ_E_INDEX = 14,     /* the bitmask or Golomb index is inconsistent */
    PSQ_E_COUNT = 15,     /* nnz does not match the values */
    PSQ_E_DUPLICATE = 16, /* two tensors have the same name */
    PSQ_E_ARGUMENT = 17,  /* caller error: output too small, bad tensor index, ... */
    PSQ_E_PADBITS = 18    /* nonzero pad bits at the end of a bit stream */
};

typedef struct {
    int code;          /* PSQ_E_* */
    const char *field; /* e.g. "header_crc", "dims", "values"; a string literal */
    uint64_t offset;   /* byte offset in the file */
    int64_t detail;    /* the offending value where there is one (a level, a count), else 0 */
} psq_error;

/* A validated file (filled by psq_open / psq_read_header + psq_read_table). */
typedef struct {
    const uint8_t *buf;
    size_t len;
    uint16_t major, minor;
    uint32_t n_tensors, meta_len, names_len, meta_crc, table_crc;
    uint64_t table_off;  /* first record: 48 + meta_len */
    uint64_t names_off;  /* the name pool */
    uint64_t table_end;  /* end of the name pool */
    uint64_t total_numel;
    int table_ok;        /* 1 once psq_read_table has succeeded */
    uint32_t flags;      /* the header's required features (PSQ_FLAG_*) */
} psq_file;

/* One tensor's record (filled by psq_tensor_info). */
typedef struct {
    uint32_t index;
    uint64_t record_off;      /* offset of the 88-byte record */
    uint64_t name_off;        /* absolute offset of the name (UTF-8, not NUL-terminated) */
    uint32_t name_len;
    uint32_t rank, kind, dtype, store, bits, encoding;
    uint32_t scale_count, golomb_m, unary_bits;
    uint32_t dims[PSQ_MAX_RANK];
    uint64_t numel, nnz, data_off, data_len, index_len;
    uint32_t data_crc;
    uint32_t block;           /* BLOCK: the block width b; otherwise 0 */
} psq_tensor;

/* Streaming state (caller-owned, 480 bytes on a 64-bit target; no other scratch). */
typedef struct {
    const uint8_t *buf;
    uint64_t data_off, scales_off, index_off, values_off, index_len, values_len;
    uint64_t numel, nnz, rows, row, row_elems;
    uint64_t elem;           /* next element (flat index) */
    uint64_t vk;             /* next stored value field */
    uint64_t ucur, ub, ecur, gap; /* Golomb cursors: unary bit, unary length, extra bit, gap number */
    uint64_t after_pos;      /* Golomb: the last decoded position + 1 (0 at the start) */
    uint32_t m, w, u;        /* Golomb parameter, low-field width, truncated-binary cutoff */
    uint32_t kind, dtype, store, bits, encoding, scale_count;
    uint32_t npos, ipos;     /* Golomb: decoded positions pos[ipos..npos) not yet written */
    uint32_t bad_index;      /* Golomb: 1 once the index was found malformed (decoding stopped) */
    uint64_t bad_level;      /* Golomb: the first stored level found invalid, or UINT64_MAX */
    uint32_t pos[PSQ_GOLOMB_BATCH];
    uint64_t nb;             /* BLOCK: blocks per row */
    uint32_t block;          /* BLOCK: the block width */
    uint32_t scale_size;     /* bytes per stored scale: 4, or 2 for 16-bit scales */
} psq_rows;

/* CRC-32 (zlib's): crc = psq_crc32(0, p, n); chains as zlib's crc32() does. */
uint32_t psq_crc32(uint32_t crc, const uint8_t *p, size_t n);

/* Rounding used for QUANT tensors of dtype float16 / bfloat16: float32 bits in,
 * binary16 / bfloat16 bits out, round to nearest, ties to even, overflow to infinity. */
uint16_t psq_f32_to_f16(uint32_t f32_bits);
uint16_t psq_f32_to_bf16(uint32_t f32_bits);
/* float16 bits -> float32 bits (exact), used for RAW float32 tensors stored as float16. */
uint32_t psq_f16_to_f32(uint16_t f16_bits);

/* Step 1: the 48-byte header. Fills f (table not yet validated). */
int psq_read_header(const uint8_t *buf, size_t len, psq_file *f, psq_error *err);
/* Step 2: metadata CRC, then length, ASCII, no whitespace outside strings, object braces,
 * nesting depth <= 8. Full JSON parsing and the canonical-form check are the host's job. */
int psq_check_metadata(const psq_file *f, psq_error *err);
/* Step 3: table CRC, every record, names (contiguous, UTF-8, unique), layout, padding, and
 * the summed numel against max_numel. `work` (may be NULL) holds n_tensors uint32 for an
 * O(n log n) duplicate-name check; without it the check is O(n^2) comparisons. */
int psq_read_table(psq_file *f, uint64_t max_numel, uint32_t *work, size_t work_count, psq_error *err);
/* Steps 1 to 3. After success every tensor's record is valid; its data is checked when decoded. */
int psq_open(const uint8_t *buf, size_t len, uint64_t max_numel, uint32_t *work, size_t work_count,
             psq_file *f, psq_error *err);

/* Record i of an opened file. */
int psq_tensor_info(const psq_file *f, uint32_t i, psq_tensor *t, psq_error *err);
/* Bytes of the decoded tensor (numel * itemsize of dtype) and of one row of it. */
size_t psq_out_size(const psq_tensor *t);
size_t psq_row_size(const psq_tensor *t);
size_t psq_dtype_size(uint32_t dtype);

/* Every check of the tensor's data block (CRC, scales, index, levels, RAW values), in the
 * reference decoder's order, without writing anything. */
int psq_check_tensor(const psq_file *f, const psq_tensor *t, psq_error *err);
/* psq_check_tensor, then decode the whole tensor into out (out_size >= psq_out_size(t)).
 * On error the content of out is unspecified. */
int psq_decode_tensor(const psq_file *f, const psq_tensor *t, void *out, size_t out_size, psq_error *err);
/* psq_check_tensor, then set up s to yield the tensor one row (dims[0] rows of
 * numel / dims[0] elements; a scalar is one row) at a time. */
int psq_rows_begin(const psq_file *f, const psq_tensor *t, psq_rows *s, psq_error *err);
/* Decode row s->row into out (out_size >= psq_row_size(t)) and advance. */
int psq_rows_next(psq_rows *s, void *out, size_t out_size, psq_error *err);

/* QUANT tensors: psq_check_tensor, then the numel int8 levels (row-major, zeros filled in)
 * and the scale_count float32 scales (widened exactly when stored in 16 bits). Element i is
 * float32(levels[i]) * scales[c] with c as in FORMAT.md (i / (numel / dims[0]) when
 * scale_count > 1, else 0). PSQ_E_ARGUMENT for a RAW tensor or buffers that are too small. */
int psq_decode_levels(const psq_file *f, const psq_tensor *t, int8_t *levels, size_t levels_count,
                      float *scales, size_t scales_count, psq_error *err);

/* Checks all the data blocks in table order (psq_check_tensor on each). */
int psq_validate(const psq_file *f, psq_error *err);

/* A short English description of an error code (a string literal). */
const char *psq_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif /* PSQ_H */
