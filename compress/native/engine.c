/* engine.c: the CTC-LSTM model from its PSQ file (see engine.h). C99, no allocation, no I/O,
 * no static mutable state. */
#include "engine.h"

#include <math.h>
#include <string.h>

#define ALIGN 64u
#define MAGIC 0x4c53544du /* "LSTM" */
#define MAX_NAME 96u
#define N_WIDTHS 3
static const uint32_t WIDTHS[N_WIDTHS] = {16u, 8u, 4u}; /* BSR block widths tried, widest first */

typedef struct {
    uint32_t storage, block, rows, cols;
    uint64_t nnz, stored;
    const float *scale;
    psq_dense dense;
    psq_csr csr;
    psq_bsr bsr;
} matrix;

struct psq_engine {
    uint32_t magic;
    uint32_t n_mels, channels, kernel, stride1, stride2;
    uint32_t hidden, layers, directions, vocab, upsample, max_frames;
    uint32_t n_matrices;
    matrix m[PSQ_ENGINE_MAX_MATRICES];
    /* per matrix: its bias (conv: C; W_ih: bias_ih + bias_hh, 4H; W_hh: NULL; head: rows) */
    const float *bias[PSQ_ENGINE_MAX_MATRICES];
    size_t model_used, scratch_run;
};

/* ---------------------------------------------------------------------------- errors */

static void err_clear(psq_engine_error *err)
{
    if (err) {
        memset(err, 0, sizeof *err);
    }
}

static void append(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(dst);
    while (*s && n + 1 < cap)
        dst[n++] = *s++;
    dst[n] = '\0';
}

static void append_u64(char *dst, size_t cap, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp - 1;
    tmp[i] = '\0';
    do {
        tmp[--i] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v && i > 0);
    append(dst, cap, tmp + i);
}

/* Starts an error: code, tensor (may be NULL) and the first part of the message. */
static int fail(psq_engine_error *err, int code, const char *tensor, const char *msg)
{
    if (err) {
        err_clear(err);
        err->code = code;
        if (tensor)
            append(err->tensor, sizeof err->tensor, tensor);
        append(err->message, sizeof err->message, msg);
    }
    return code;
}

static void more(psq_engine_error *err, const char *s)
{
    if (err)
        append(err->message, sizeof err->message, s);
}

static void more_u64(psq_engine_error *err, uint64_t v)
{
    if (err)
        append_u64(err->message, sizeof err->message, v);
}

static void more_dims(psq_engine_error *err, const uint32_t *dims, uint32_t rank)
{
    uint32_t i;
    more(err, "(");
    for (i = 0; i < rank; i++) {
        if (i)
            more(err, ", ");
        more_u64(err, dims[i]);
    }
    more(err, rank == 1 ? ",)" : ")");
}

static int fail_psq(psq_engine_error *err, const char *tensor, const psq_error *pe)
{
    fail(err, PSQ_ENGINE_E_FORMAT, tensor, "the decoder refused it: ");
    more(err, psq_strerror(pe->code));
    if (err)
        err->psq = *pe;
    return PSQ_ENGINE_E_FORMAT;
}

const char *psq_engine_strerror(int code)
{
    switch (code) {
    case PSQ_ENGINE_OK: return "ok";
    case PSQ_ENGINE_E_FORMAT: return "the PSQ decoder refused a tensor";
    case PSQ_ENGINE_E_FAMILY: return "not a ctc_lstm file";
    case PSQ_ENGINE_E_MISSING: return "missing tensor";
    case PSQ_ENGINE_E_SHAPE: return "wrong tensor shape";
    case PSQ_ENGINE_E_KIND: return "wrong tensor kind or dtype";
    case PSQ_ENGINE_E_CONFIG: return "invalid engine config";
    case PSQ_ENGINE_E_MEMORY: return "model memory or scratch too small";
    case PSQ_ENGINE_E_FRAMES: return "frame count out of range";
    case PSQ_ENGINE_E_OUTPUT: return "output buffer too small";
    case PSQ_ENGINE_E_KERNEL: return "kernel storage could not be built";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------------------- the file's tensors */

/* The tensor names of a ctc_lstm: role r of matrix/bias slot i. */
typedef struct {
    psq_tensor w[PSQ_ENGINE_MAX_MATRICES];
    psq_tensor b[PSQ_ENGINE_MAX_MATRICES];  /* conv, ih (bias_ih), head; hh slot: bias_hh */
    char name[PSQ_ENGINE_MAX_MATRICES][2][MAX_NAME];
    uint32_t n_mels, channels, kernel, hidden, layers, directions, rows_head, vocab;
    uint32_t n_matrices, n_tensors;
} plan;

static int name_is(const psq_file *f, const psq_tensor *t, const char *name)
{
    size_t n = strlen(name);
    return t->name_len == n && memcmp(f->buf + t->name_off, name, n) == 0;
}

static int find(const psq_file *f, const char *name, psq_tensor *out)
{
    uint32_t i;
    for (i = 0; i < f->n_tensors; i++) {
        if (psq_tensor_info(f, i, out, NULL) == PSQ_OK && name_is(f, out, name))
            return 1;
    }
    return 0;
}

static void lstm_name(char *dst, const char *what, uint32_t layer, uint32_t dir)
{
    dst[0] = '\0';
    append(dst, MAX_NAME, "lstm.");
    append(dst, MAX_NAME, what);
    append(dst, MAX_NAME, "_l");
    append_u64(dst, MAX_NAME, layer);
    if (dir)
        append(dst, MAX_NAME, "_reverse");
}

/* Matrix slot of layer l, direction d, and ih (0) or hh (1). */
static uint32_t slot(uint32_t directions, uint32_t l, uint32_t d, uint32_t hh)
{
    return 2u + 2u * (l * directions + d) + hh;
}

static int check_shape(const psq_tensor *t, const char *name, uint32_t rank, const uint32_t *want,
                       psq_engine_error *err)
{
    uint32_t i;
    int ok = t->rank == rank;
    for (i = 0; ok && i < rank; i++)
        ok = t->dims[i] == want[i];
    if (ok)
        return 0;
    fail(err, PSQ_ENGINE_E_SHAPE, name, "expected shape ");
    more_dims(err, want, rank);
    more(err, ", got ");
    more_dims(err, t->dims, t->rank);
    return PSQ_ENGINE_E_SHAPE;
}

static int check_matrix_kind(const psq_tensor *t, const char *name, psq_engine_error *err)
{
    if (t->kind != PSQ_QUANT)
        return fail(err, PSQ_ENGINE_E_KIND, name,
                    "is a RAW tensor; the engine needs its matrices quantized (QUANT: int8 levels and scales)");
    if (t->dtype != PSQ_F32)
        return fail(err, PSQ_ENGINE_E_KIND, name, "is a QUANT tensor of a dtype other than float32");
    if (t->bits > 8)
        return fail(err, PSQ_ENGINE_E_KIND, name, "has levels wider than 8 bits");
    return 0;
}

static int check_bias_kind(const psq_tensor *t, const char *name, psq_engine_error *err)
{
    if (t->kind != PSQ_RAW || t->dtype != PSQ_F32)
        return fail(err, PSQ_ENGINE_E_KIND, name, "must be a RAW float32 tensor (a bias)");
    return 0;
}

static int need(const psq_file *f, const char *name, psq_tensor *t, psq_engine_error *err)
{
    if (find(f, name, t))
        return 0;
    return fail(err, PSQ_ENGINE_E_MISSING, name, "missing tensor (the other tensors' shapes call for it)");
}

static int check_config(const psq_engine_config *cfg, psq_engine_error *err)
{
    if (!cfg)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "config must not be NULL");
    if (cfg->stride1 < 1 || cfg->stride1 > 8 || cfg->stride2 < 1 || cfg->stride2 > 8)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "stride1 and stride2 must be in [1, 8]");
    if (cfg->upsample < 1)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "upsample must be >= 1");
    if (cfg->storage > PSQ_ENGINE_BSR)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "storage must be AUTO, DENSE, CSR or BSR");
    if (cfg->block > 256)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "block must be 0 or in [1, 256]");
    if (cfg->max_frames < 1 || cfg->max_frames > (1u << 24))
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "max_frames must be in [1, 2^24]");
    return 0;
}

/* Finds and checks every tensor; fills p. */
static int make_plan(const psq_file *f, const psq_engine_config *cfg, plan *p, psq_engine_error *err)
{
    static const char *const family[3] = {"frontend.conv1.weight", "lstm.weight_ih_l0", "head.weight"};
    psq_tensor t;
    uint32_t i, l, d, want[3];
    int rc;

    memset(p, 0, sizeof *p);
    if ((rc = check_config(cfg, err)) != 0)
        return rc;
    if (!f || !f->table_ok)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "the file must be opened with psq_open first");
    for (i = 0; i < 3; i++) {
        if (!find(f, family[i], &t)) {
            fail(err, PSQ_ENGINE_E_FAMILY, family[i], "not a ctc_lstm file: it has no tensor ");
            more(err, family[i]);
            more(err, " (a ctc_lstm holds frontend.conv1/conv2, lstm.* and head tensors)");
            return PSQ_ENGINE_E_FAMILY;
        }
    }
    /* the shapes: conv1 (C, n_mels, K), weight_hh_l0 (4H, H), head (rows, H * dirs) */
    strcpy(p->name[0][0], "frontend.conv1.weight");
    strcpy(p->name[0][1], "frontend.conv1.bias");
    strcpy(p->name[1][0], "frontend.conv2.weight");
    strcpy(p->name[1][1], "frontend.conv2.bias");
    find(f, p->name[0][0], &p->w[0]);
    if ((rc = check_matrix_kind(&p->w[0], p->name[0][0], err)) != 0)
        return rc;
    if (p->w[0].rank != 3 || p->w[0].dims[2] % 2u == 0u || p->w[0].dims[0] == 0 || p->w[0].dims[1] == 0) {
        fail(err, PSQ_ENGINE_E_SHAPE, p->name[0][0], "expected shape (channels, n_mels, kernel) with an odd kernel, got ");
        more_dims(err, p->w[0].dims, p->w[0].rank);
        return PSQ_ENGINE_E_SHAPE;
    }
    p->channels = p->w[0].dims[0];
    p->n_mels = p->w[0].dims[1];
    p->kernel = p->w[0].dims[2];
    for (l = 0; l < PSQ_ENGINE_MAX_LAYERS; l++) {
        char nm[MAX_NAME];
        lstm_name(nm, "weight_ih", l, 0);
        if (!find(f, nm, &t))
            break;
    }
    p->layers = l;
    {
        char nm[MAX_NAME];
        lstm_name(nm, "weight_ih", PSQ_ENGINE_MAX_LAYERS, 0);
        if (find(f, nm, &t))
            return fail(err, PSQ_ENGINE_E_SHAPE, nm, "more LSTM layers than PSQ_ENGINE_MAX_LAYERS");
        lstm_name(nm, "weight_ih", 0, 1);
        p->directions = find(f, nm, &t) ? 2u : 1u;
    }
    p->n_matrices = 3u + 2u * p->layers * p->directions;
    for (l = 0; l < p->layers; l++) {
        for (d = 0; d < p->directions; d++) {
            uint32_t s = slot(p->directions, l, d, 0);
            lstm_name(p->name[s][0], "weight_ih", l, d);
            lstm_name(p->name[s][1], "bias_ih", l, d);
            lstm_name(p->name[s + 1][0], "weight_hh", l, d);
            lstm_name(p->name[s + 1][1], "bias_hh", l, d);
        }
    }
    strcpy(p->name[p->n_matrices - 1][0], "head.weight");
    strcpy(p->name[p->n_matrices - 1][1], "head.bias");
    for (i = 0; i < p->n_matrices; i++) {
        if ((rc = need(f, p->name[i][0], &p->w[i], err)) != 0 || (rc = need(f, p->name[i][1], &p->b[i], err)) != 0)
            return rc;
        if ((rc = check_matrix_kind(&p->w[i], p->name[i][0], err)) != 0 ||
            (rc = check_bias_kind(&p->b[i], p->name[i][1], err)) != 0)
            return rc;
    }
    /* hidden size from weight_hh_l0 */
    {
        const psq_tensor *hh = &p->w[slot(p->directions, 0, 0, 1)];
        if (hh->rank != 2 || hh->dims[1] == 0 || hh->dims[0] != 4u * hh->dims[1]) {
            fail(err, PSQ_ENGINE_E_SHAPE, p->name[slot(p->directions, 0, 0, 1)][0],
                 "expected shape (4 * hidden, hidden), got ");
            more_dims(err, hh->dims, hh->rank);
            return PSQ_ENGINE_E_SHAPE;
        }
        p->hidden = hh->dims[1];
    }
    {
        const psq_tensor *hw = &p->w[p->n_matrices - 1];
        if (hw->rank != 2 || hw->dims[0] == 0 || hw->dims[0] % cfg->upsample != 0) {
            fail(err, PSQ_ENGINE_E_SHAPE, p->name[p->n_matrices - 1][0],
                 "expected shape (vocab * upsample, hidden * directions) with upsample ");
            more_u64(err, cfg->upsample);
            more(err, ", got ");
            more_dims(err, hw->dims, hw->rank);
            return PSQ_ENGINE_E_SHAPE;
        }
        p->rows_head = hw->dims[0];
        p->vocab = hw->dims[0] / cfg->upsample;
    }
    /* every shape against the ones found */
    want[0] = p->channels; want[1] = p->n_mels; want[2] = p->kernel;
    if ((rc = check_shape(&p->w[0], p->name[0][0], 3, want, err)) != 0)
        return rc;
    want[1] = p->channels;
    if ((rc = check_shape(&p->w[1], p->name[1][0], 3, want, err)) != 0)
        return rc;
    for (i = 0; i < 2; i++)
        if ((rc = check_shape(&p->b[i], p->name[i][1], 1, want, err)) != 0)
            return rc;
    for (l = 0; l < p->layers; l++) {
        for (d = 0; d < p->directions; d++) {
            uint32_t s = slot(p->directions, l, d, 0);
            want[0] = 4u * p->hidden;
            want[1] = l == 0 ? p->channels : p->hidden * p->directions;
            if ((rc = check_shape(&p->w[s], p->name[s][0], 2, want, err)) != 0)
                return rc;
            want[1] = p->hidden;
            if ((rc = check_shape(&p->w[s + 1], p->name[s + 1][0], 2, want, err)) != 0)
                return rc;
            if ((rc = check_shape(&p->b[s], p->name[s][1], 1, want, err)) != 0 ||
                (rc = check_shape(&p->b[s + 1], p->name[s + 1][1], 1, want, err)) != 0)
                return rc;
        }
    }
    want[0] = p->rows_head;
    want[1] = p->hidden * p->directions;
    if ((rc = check_shape(&p->w[p->n_matrices - 1], p->name[p->n_matrices - 1][0], 2, want, err)) != 0 ||
        (rc = check_shape(&p->b[p->n_matrices - 1], p->name[p->n_matrices - 1][1], 1, want, err)) != 0)
        return rc;
    /* nothing else in the file */
    p->n_tensors = 2u * p->n_matrices;
    if (f->n_tensors != p->n_tensors) {
        for (i = 0; i < f->n_tensors; i++) {
            uint32_t j, known = 0;
            if (psq_tensor_info(f, i, &t, NULL) != PSQ_OK)
                continue;
            for (j = 0; j < p->n_matrices && !known; j++)
                known = name_is(f, &t, p->name[j][0]) || name_is(f, &t, p->name[j][1]);
            if (!known) {
                char nm[MAX_NAME];
                uint32_t n = t.name_len < MAX_NAME - 1u ? t.name_len : MAX_NAME - 1u;
                memcpy(nm, f->buf + t.name_off, n);
                nm[n] = '\0';
                return fail(err, PSQ_ENGINE_E_FAMILY, nm,
                            "not a ctc_lstm file: it holds a tensor a ctc_lstm does not have");
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------- sizes */

static size_t up(size_t n)
{
    return (n + (ALIGN - 1u)) & ~(size_t)(ALIGN - 1u);
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return (a + b - 1u) / b;
}

static size_t csr_bytes(uint64_t rows, uint64_t nnz)
{
    return up((size_t)(rows + 1u) * 4u) + up((size_t)nnz * 2u) + up((size_t)nnz);
}

static size_t bsr_bytes(uint64_t rows, uint64_t blocks, uint64_t width)
{
    return up((size_t)(rows + 1u) * 4u) + up((size_t)blocks * 2u) + up((size_t)(blocks * width));
}

/* Upper bound of the storage of a rows x cols matrix with nnz nonzeros. */
static size_t storage_bound(const psq_engine_config *cfg, uint64_t rows, uint64_t cols, uint64_t nnz)
{
    size_t best = 0, s;
    uint32_t i;
    if (cfg->storage == PSQ_ENGINE_AUTO || cfg->storage == PSQ_ENGINE_DENSE)
        best = up((size_t)(rows * cols));
    if (cfg->storage == PSQ_ENGINE_AUTO || cfg->storage == PSQ_ENGINE_CSR) {
        s = csr_bytes(rows, nnz);
        best = s > best ? s : best;
    }
    if (cfg->storage == PSQ_ENGINE_AUTO || cfg->storage == PSQ_ENGINE_BSR) {
        for (i = 0; i < (cfg->block ? 1u : (uint32_t)N_WIDTHS); i++) {
            uint64_t b = cfg->block ? cfg->block : WIDTHS[i];
            uint64_t all = rows * ceil_div(cols, b);
            s = bsr_bytes(rows, nnz < all ? nnz : all, b);
            best = s > best ? s : best;
        }
    }
    return best;
}

typedef struct {
    uint32_t t1, t2, out_frames;
    size_t col, y1, y2, gates, io0, io1, step, h, c, head, total;
} layout;

static void run_layout(const plan *p, const psq_engine_config *cfg, uint32_t frames, layout *L)
{
    size_t at = 0, colw = (size_t)p->kernel * (p->n_mels > p->channels ? p->n_mels : p->channels);
    size_t hd = (size_t)p->hidden * p->directions;
    L->t1 = (frames - 1u) / cfg->stride1 + 1u;
    L->t2 = (L->t1 - 1u) / cfg->stride2 + 1u;
    L->out_frames = L->t2 * cfg->upsample;
    L->col = at; at += up(PSQ_ENGINE_CHUNK * colw * 4u);
    L->y1 = at; at += up((size_t)L->t1 * p->channels * 4u);
    L->y2 = at; at += up((size_t)L->t2 * p->channels * 4u);
    L->gates = at; at += up((size_t)L->t2 * 4u * p->hidden * 4u);
    L->io0 = at; at += up((size_t)L->t2 * hd * 4u);
    L->io1 = at; at += up((size_t)L->t2 * hd * 4u);
    L->step = at; at += up((size_t)4u * p->hidden * 4u);
    L->h = at; at += up((size_t)p->hidden * 4u);
    L->c = at; at += up((size_t)p->hidden * 4u);
    L->head = at; at += up((size_t)PSQ_ENGINE_CHUNK * p->rows_head * 4u);
    L->total = at;
}

static size_t load_scratch(const plan *p)
{
    size_t most = 0;
    uint32_t i;
    for (i = 0; i < p->n_matrices; i++)
        most = p->w[i].numel > most ? (size_t)p->w[i].numel : most;
    return up(most);
}

static size_t model_bound(const plan *p, const psq_engine_config *cfg)
{
    size_t total = up(sizeof(struct psq_engine));
    uint32_t i;
    for (i = 0; i < p->n_matrices; i++) {
        uint64_t rows = p->w[i].dims[0], cols = p->w[i].numel / rows;
        total += up((size_t)rows * 4u) + storage_bound(cfg, rows, cols, p->w[i].nnz);
        total += up((size_t)p->b[i].numel * 4u); /* the bias (the hh slot holds a spare) */
    }
    return total;
}

int psq_engine_query(const psq_file *f, const psq_engine_config *cfg, psq_engine_sizes *sizes,
                     psq_engine_error *err)
{
    plan p;
    layout L;
    size_t ls;
    int rc;
    err_clear(err);
    if (!sizes)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "sizes must not be NULL");
    if ((rc = make_plan(f, cfg, &p, err)) != 0)
        return rc;
    run_layout(&p, cfg, cfg->max_frames, &L);
    ls = load_scratch(&p);
    sizes->model_bytes = model_bound(&p, cfg) + ALIGN; /* ALIGN: for any alignment of the buffer */
    sizes->scratch_bytes = (L.total > ls ? L.total : ls) + ALIGN;
    sizes->max_out_frames = L.out_frames;
    return 0;
}

/* ------------------------------------------------------------------------------- load */

typedef struct {
    uint8_t *base;
    size_t at, cap;
} arena;

static void *take(arena *a, size_t n)
{
    void *p;
    if (a->at + up(n) > a->cap)
        return NULL;
    p = a->base + a->at;
    a->at += up(n);
    return p;
}

static uint8_t *aligned(void *mem, size_t *size)
{
    uintptr_t p = (uintptr_t)mem, q = (p + (ALIGN - 1u)) & ~(uintptr_t)(ALIGN - 1u);
    size_t skip = (size_t)(q - p);
    if (*size < skip) {
        *size = 0;
        return (uint8_t *)mem;
    }
    *size -= skip;
    return (uint8_t *)mem + skip;
}

static int no_room(psq_engine_error *err, const char *name)
{
    return fail(err, PSQ_ENGINE_E_MEMORY, name, "model memory too small (use psq_engine_query's model_bytes)");
}

/* The storage rule of engine.h for levels q (rows x cols, nnz nonzeros). */
static void choose(const psq_engine_config *cfg, const int8_t *q, uint32_t rows, uint32_t cols, uint64_t nnz,
                   uint32_t *storage, uint32_t *block)
{
    uint64_t numel = (uint64_t)rows * cols;
    uint32_t i, n = cfg->block ? 1u : (uint32_t)N_WIDTHS;
    *block = 0;
    if (cfg->storage == PSQ_ENGINE_DENSE || cfg->storage == PSQ_ENGINE_CSR) {
        *storage = cfg->storage;
        return;
    }
    {
        uint64_t best = 0;
        /* of the widths that qualify, the one storing the fewest levels (the kernel's work);
         * ties go to the wider one (fewer blocks), which comes first in WIDTHS */
        for (i = 0; i < n; i++) {
            uint32_t b = cfg->block ? cfg->block : WIDTHS[i];
            uint64_t stored;
            if (ceil_div(cols, b) > 65536u)
                continue;
            stored = psq_bsr_count(q, rows, cols, b) * b;
            if ((double)stored <= PSQ_ENGINE_BSR_MAX_COVER * (double)numel &&
                (double)(stored - nnz) <= PSQ_ENGINE_BSR_MAX_WASTE * (double)stored && (!*block || stored < best)) {
                *block = b;
                best = stored;
            }
        }
        if (*block) {
            *storage = PSQ_ENGINE_BSR;
            return;
        }
    }
    if (cfg->storage == PSQ_ENGINE_BSR) {
        *storage = PSQ_ENGINE_BSR;
        *block = cfg->block ? cfg->block : WIDTHS[0];
        return;
    }
    *storage = numel && (double)nnz >= PSQ_ENGINE_DENSE_MIN * (double)numel ? PSQ_ENGINE_DENSE : PSQ_ENGINE_CSR;
}

static int build_matrix(const psq_file *f, const psq_engine_config *cfg, const psq_tensor *t, const char *name,
                        arena *a, int8_t *levels, matrix *m, psq_engine_error *err)
{
    psq_error pe;
    uint32_t rows = t->dims[0], cols = (uint32_t)(t->numel / rows), r;
    float *scale = (float *)take(a, (size_t)rows * 4u);
    if (!scale)
        return no_room(err, name);
    if (psq_decode_levels(f, t, levels, (size_t)t->numel, scale, rows, &pe))
        return fail_psq(err, name, &pe);
    if (t->scale_count == 1u)
        for (r = 1; r < rows; r++)
            scale[r] = scale[0];
    memset(m, 0, sizeof *m);
    m->rows = rows;
    m->cols = cols;
    m->nnz = t->nnz;
    m->scale = scale;
    choose(cfg, levels, rows, cols, t->nnz, &m->storage, &m->block);
    if (m->storage == PSQ_ENGINE_DENSE) {
        int8_t *q = (int8_t *)take(a, (size_t)rows * cols);
        if (!q)
            return no_room(err, name);
        memcpy(q, levels, (size_t)rows * cols);
        m->dense.rows = rows;
        m->dense.cols = cols;
        m->dense.q = q;
        m->dense.scale = scale;
        m->stored = (uint64_t)rows * cols;
    } else if (m->storage == PSQ_ENGINE_CSR) {
        uint64_t nnz = psq_csr_count(levels, rows, cols);
        uint32_t *row_ptr = (uint32_t *)take(a, ((size_t)rows + 1u) * 4u);
        uint16_t *col = (uint16_t *)take(a, (size_t)nnz * 2u);
        int8_t *val = (int8_t *)take(a, (size_t)nnz);
        if (!row_ptr || !col || !val)
            return no_room(err, name);
        if (cols > 65536u || psq_csr_build(levels, rows, cols, row_ptr, col, val))
            return fail(err, PSQ_ENGINE_E_KERNEL, name, "CSR needs at most 65536 columns");
        m->csr.rows = rows;
        m->csr.cols = cols;
        m->csr.row_ptr = row_ptr;
        m->csr.col = col;
        m->csr.val = val;
        m->csr.scale = scale;
        m->stored = nnz;
    } else {
        uint32_t b = m->block;
        uint64_t blocks = psq_bsr_count(levels, rows, cols, b);
        uint32_t *row_ptr = (uint32_t *)take(a, ((size_t)rows + 1u) * 4u);
        uint16_t *bcol = (uint16_t *)take(a, (size_t)blocks * 2u);
        int8_t *val = (int8_t *)take(a, (size_t)(blocks * b));
        if (!row_ptr || !bcol || !val)
            return no_room(err, name);
        if (ceil_div(cols, b) > 65536u || psq_bsr_build(levels, rows, cols, b, row_ptr, bcol, val))
            return fail(err, PSQ_ENGINE_E_KERNEL, name, "BSR needs at most 65536 blocks per row");
        m->bsr.rows = rows;
        m->bsr.cols = cols;
        m->bsr.block = b;
        m->bsr.row_ptr = row_ptr;
        m->bsr.bcol = bcol;
        m->bsr.val = val;
        m->bsr.scale = scale;
        m->stored = blocks * b;
    }
    return 0;
}

static int load_bias(const psq_file *f, const psq_tensor *t, const char *name, float *out, psq_engine_error *err)
{
    psq_error pe;
    if (psq_decode_tensor(f, t, out, (size_t)t->numel * 4u, &pe))
        return fail_psq(err, name, &pe);
    return 0;
}

int psq_engine_load(const psq_file *f, const psq_engine_config *cfg, void *model, size_t model_size,
                    void *scratch, size_t scratch_size, psq_engine **out, psq_engine_error *err)
{
    plan p;
    layout L;
    arena a;
    struct psq_engine *e;
    int8_t *levels;
    uint32_t i;
    int rc;

    err_clear(err);
    if (out)
        *out = NULL;
    if (!model || !scratch || !out)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "model, scratch and out must not be NULL");
    if ((rc = make_plan(f, cfg, &p, err)) != 0)
        return rc;
    run_layout(&p, cfg, cfg->max_frames, &L);
    a.base = aligned(model, &model_size);
    a.at = 0;
    a.cap = model_size;
    levels = (int8_t *)aligned(scratch, &scratch_size);
    if (scratch_size < load_scratch(&p) || scratch_size < L.total)
        return fail(err, PSQ_ENGINE_E_MEMORY, NULL, "scratch too small (use psq_engine_query's scratch_bytes)");
    e = (struct psq_engine *)take(&a, sizeof *e);
    if (!e)
        return no_room(err, NULL);
    memset(e, 0, sizeof *e);
    e->n_mels = p.n_mels;
    e->channels = p.channels;
    e->kernel = p.kernel;
    e->stride1 = cfg->stride1;
    e->stride2 = cfg->stride2;
    e->hidden = p.hidden;
    e->layers = p.layers;
    e->directions = p.directions;
    e->vocab = p.vocab;
    e->upsample = cfg->upsample;
    e->max_frames = cfg->max_frames;
    e->n_matrices = p.n_matrices;
    e->scratch_run = L.total;
    for (i = 0; i < p.n_matrices; i++) {
        float *bias;
        if ((rc = build_matrix(f, cfg, &p.w[i], p.name[i][0], &a, levels, &e->m[i], err)) != 0)
            return rc;
        bias = (float *)take(&a, (size_t)p.b[i].numel * 4u);
        if (!bias)
            return no_room(err, p.name[i][1]);
        if ((rc = load_bias(f, &p.b[i], p.name[i][1], bias, err)) != 0)
            return rc;
        e->bias[i] = bias;
    }
    /* LSTM: bias_ih + bias_hh, added once to the batched input projection */
    for (i = 2; i + 1 < p.n_matrices; i += 2) {
        uint32_t k;
        float *b = (float *)e->bias[i];
        for (k = 0; k < 4u * p.hidden; k++)
            b[k] += e->bias[i + 1][k];
        e->bias[i + 1] = NULL;
    }
    e->model_used = a.at;
    e->magic = MAGIC;
    *out = e;
    return 0;
}

int psq_engine_get_info(const psq_engine *e, psq_engine_info *info)
{
    uint32_t i;
    if (!e || !info || e->magic != MAGIC)
        return PSQ_ENGINE_E_CONFIG;
    memset(info, 0, sizeof *info);
    info->n_mels = e->n_mels;
    info->channels = e->channels;
    info->kernel = e->kernel;
    info->stride1 = e->stride1;
    info->stride2 = e->stride2;
    info->hidden = e->hidden;
    info->layers = e->layers;
    info->directions = e->directions;
    info->vocab = e->vocab;
    info->upsample = e->upsample;
    info->n_matrices = e->n_matrices;
    for (i = 0; i < e->n_matrices; i++) {
        info->storage[i] = e->m[i].storage;
        info->block[i] = e->m[i].block;
        info->nnz[i] = e->m[i].nnz;
        info->numel[i] = (uint64_t)e->m[i].rows * e->m[i].cols;
        info->stored[i] = e->m[i].stored;
    }
    info->model_used = e->model_used;
    return 0;
}

uint32_t psq_engine_out_frames(const psq_engine *e, uint32_t n_frames)
{
    uint32_t t1, t2;
    if (!e || e->magic != MAGIC || n_frames == 0)
        return 0;
    t1 = (n_frames - 1u) / e->stride1 + 1u;
    t2 = (t1 - 1u) / e->stride2 + 1u;
    return t2 * e->upsample;
}

/* -------------------------------------------------------------------------------- run */

static void matmul(const matrix *m, const float *x, uint32_t n, float *y)
{
    switch (m->storage) {
    case PSQ_ENGINE_DENSE: psq_matmul_dense(&m->dense, x, n, y); break;
    case PSQ_ENGINE_CSR: psq_matmul_csr(&m->csr, x, n, y); break;
    default: psq_matmul_bsr(&m->bsr, x, n, y); break;
    }
}

static float gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* v[i] = exp(v[i]) on whole arrays, in straight-line float arithmetic a compiler vectorizes
 * (libm's expf and tanhf are scalar calls, and the gates take n * 4H of them per step):
 * Cephes' expf, n = round(x log2 e), r = x - n ln 2 in two parts, a degree-7 polynomial, and
 * 2^n from the exponent bits; within 2 ulp of expf on [-87, 88], clamped outside. */
static void exp_inplace(float *v, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++) /* its own loop: together with the rest, GCC would not if-convert it */
        v[i] = v[i] > -87.0f ? (v[i] < 88.0f ? v[i] : 88.0f) : -87.0f;
    for (i = 0; i < n; i++) {
        uint32_t bits;
        float x = v[i], t, k, r, p, two;
        int32_t ki;
        t = x * 1.44269504088896341f;
        ki = (int32_t)(t + 128.5f) - 128; /* round(t): truncation of a positive value, no floorf call */
        k = (float)ki;
        r = x - k * 0.693359375f;
        r = r - k * -2.12194440e-4f;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        bits = (uint32_t)(ki + 127) << 23;
        memcpy(&two, &bits, sizeof two);
        v[i] = p * two;
    }
}

/* v = sigmoid(v) = 1 / (1 + exp(-v)) */
static void sigmoid_inplace(float *v, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        v[i] = -v[i];
    exp_inplace(v, n);
    for (i = 0; i < n; i++)
        v[i] = 1.0f / (1.0f + v[i]);
}

/* v = tanh(v) = 2 sigmoid(2 v) - 1 (absolute error a few 1e-8 near 0, where it cancels) */
static void tanh_inplace(float *v, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        v[i] = -2.0f * v[i];
    exp_inplace(v, n);
    for (i = 0; i < n; i++)
        v[i] = 2.0f / (1.0f + v[i]) - 1.0f;
}

/* Conv1d (kernel K, padding K / 2, stride s) + bias + GELU: x (t_in x cin) -> y (t_out x cout),
 * through im2col rows of cin * K in the weight's (cin, K) order, PSQ_ENGINE_CHUNK at a time. */
static void conv(const struct psq_engine *e, uint32_t which, const float *x, uint32_t t_in, uint32_t cin,
                 uint32_t stride, float *col, float *y, uint32_t t_out)
{
    const matrix *m = &e->m[which];
    const float *bias = e->bias[which];
    uint32_t K = e->kernel, pad = K / 2u, cout = m->rows, t0, j, c, k;
    for (t0 = 0; t0 < t_out; t0 += PSQ_ENGINE_CHUNK) {
        uint32_t n = t_out - t0 < PSQ_ENGINE_CHUNK ? t_out - t0 : PSQ_ENGINE_CHUNK;
        float *yc = y + (size_t)t0 * cout;
        for (j = 0; j < n; j++) {
            float *row = col + (size_t)j * cin * K;
            int64_t start = (int64_t)(t0 + j) * stride - (int64_t)pad;
            for (k = 0; k < K; k++) {
                int64_t t = start + (int64_t)k;
                if (t < 0 || t >= (int64_t)t_in) {
                    for (c = 0; c < cin; c++)
                        row[(size_t)c * K + k] = 0.0f;
                } else {
                    const float *xt = x + (size_t)t * cin;
                    for (c = 0; c < cin; c++)
                        row[(size_t)c * K + k] = xt[c];
                }
            }
        }
        matmul(m, col, n, yc);
        for (j = 0; j < n; j++)
            for (c = 0; c < cout; c++)
                yc[(size_t)j * cout + c] = gelu(yc[(size_t)j * cout + c] + bias[c]);
    }
}

/* One direction of one LSTM layer: x (T x in) -> columns [d H, (d + 1) H) of y (T x H * dirs). */
static void lstm_direction(const struct psq_engine *e, uint32_t layer, uint32_t d, const float *x, uint32_t T,
                           float *gates, float *step, float *h, float *c, float *y)
{
    uint32_t s = slot(e->directions, layer, d, 0), H = e->hidden, G = 4u * H, hd = H * e->directions;
    const float *bias = e->bias[s];
    uint32_t t, k, i;
    matmul(&e->m[s], x, T, gates); /* every frame's input projection at once */
    for (t = 0; t < T; t++)
        for (k = 0; k < G; k++)
            gates[(size_t)t * G + k] += bias[k];
    for (k = 0; k < H; k++)
        h[k] = c[k] = 0.0f;
    for (i = 0; i < T; i++) {
        uint32_t tt = d ? T - 1u - i : i; /* the backward direction reads the utterance reversed */
        const float *gx = gates + (size_t)tt * G;
        float *out = y + (size_t)tt * hd + (size_t)d * H;
        matmul(&e->m[s + 1], h, 1, step);
        for (k = 0; k < G; k++)
            step[k] += gx[k];
        sigmoid_inplace(step, 2u * H);            /* i, f */
        tanh_inplace(step + 2u * H, H);           /* g */
        sigmoid_inplace(step + 3u * H, H);        /* o */
        for (k = 0; k < H; k++) {
            c[k] = step[H + k] * c[k] + step[k] * step[2u * H + k];
            h[k] = c[k];
        }
        tanh_inplace(h, H);
        for (k = 0; k < H; k++) {
            h[k] *= step[3u * H + k];
            out[k] = h[k];
        }
    }
}

int psq_engine_run(const psq_engine *e, const float *features, uint32_t n_frames, void *scratch,
                   size_t scratch_size, int32_t *tokens, size_t tokens_count, uint32_t *n_tokens,
                   float *logits, size_t logits_count, psq_engine_error *err)
{
    uint8_t *s;
    uint32_t t1, t2, T, l, d, t0, j, u, V, R, n_out, count = 0;
    int32_t prev = -1;
    float *col, *y1, *y2, *gates, *io[2], *step, *h, *c, *head;
    const float *in;

    err_clear(err);
    if (n_tokens)
        *n_tokens = 0;
    if (!e || e->magic != MAGIC)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "the engine must come from psq_engine_load");
    if (!features || !scratch || !tokens || !n_tokens)
        return fail(err, PSQ_ENGINE_E_CONFIG, NULL, "features, scratch, tokens and n_tokens must not be NULL");
    if (n_frames == 0 || n_frames > e->max_frames) {
        fail(err, PSQ_ENGINE_E_FRAMES, NULL, "n_frames must be in [1, max_frames = ");
        more_u64(err, e->max_frames);
        more(err, "], got ");
        more_u64(err, n_frames);
        return PSQ_ENGINE_E_FRAMES;
    }
    s = aligned(scratch, &scratch_size);
    if (scratch_size < e->scratch_run)
        return fail(err, PSQ_ENGINE_E_MEMORY, NULL, "scratch too small (use psq_engine_query's scratch_bytes)");
    n_out = psq_engine_out_frames(e, n_frames);
    V = e->vocab;
    R = V * e->upsample;
    if (tokens_count < n_out || (logits && logits_count < (size_t)n_out * V))
        return fail(err, PSQ_ENGINE_E_OUTPUT, NULL, "tokens must hold out_frames ids and logits out_frames * vocab");
    /* the scratch layout of run_layout for max_frames (the frame counts here are smaller) */
    {
        size_t colw = (size_t)e->kernel * (e->n_mels > e->channels ? e->n_mels : e->channels), at = 0;
        uint32_t mt1 = (e->max_frames - 1u) / e->stride1 + 1u, mt2 = (mt1 - 1u) / e->stride2 + 1u;
        size_t H = e->hidden, mhd = H * e->directions;
        col = (float *)(s + at); at += up(PSQ_ENGINE_CHUNK * colw * 4u);
        y1 = (float *)(s + at); at += up((size_t)mt1 * e->channels * 4u);
        y2 = (float *)(s + at); at += up((size_t)mt2 * e->channels * 4u);
        gates = (float *)(s + at); at += up((size_t)mt2 * 4u * H * 4u);
        io[0] = (float *)(s + at); at += up((size_t)mt2 * mhd * 4u);
        io[1] = (float *)(s + at); at += up((size_t)mt2 * mhd * 4u);
        step = (float *)(s + at); at += up(4u * H * 4u);
        h = (float *)(s + at); at += up(H * 4u);
        c = (float *)(s + at); at += up(H * 4u);
        head = (float *)(s + at);
    }
    t1 = (n_frames - 1u) / e->stride1 + 1u;
    t2 = (t1 - 1u) / e->stride2 + 1u;
    T = t2;
    conv(e, 0, features, n_frames, e->n_mels, e->stride1, col, y1, t1);
    conv(e, 1, y1, t1, e->channels, e->stride2, col, y2, t2);
    in = y2;
    for (l = 0; l < e->layers; l++) {
        float *outl = io[l % 2u];
        for (d = 0; d < e->directions; d++)
            lstm_direction(e, l, d, in, T, gates, step, h, c, outl);
        in = outl;
    }
    for (t0 = 0; t0 < T; t0 += PSQ_ENGINE_CHUNK) {
        uint32_t n = T - t0 < PSQ_ENGINE_CHUNK ? T - t0 : PSQ_ENGINE_CHUNK;
        const float *bias = e->bias[e->n_matrices - 1u];
        matmul(&e->m[e->n_matrices - 1u], in + (size_t)t0 * e->hidden * e->directions, n, head);
        for (j = 0; j < n; j++) {
            float *row = head + (size_t)j * R;
            for (u = 0; u < R; u++)
                row[u] += bias[u];
            for (u = 0; u < e->upsample; u++) {
                const float *z = row + (size_t)u * V;
                uint32_t v, best = 0;
                for (v = 1; v < V; v++)
                    if (z[v] > z[best])
                        best = v; /* strict: the first maximum, as torch.argmax */
                if ((int32_t)best != prev && best != 0u)
                    tokens[count++] = (int32_t)best;
                prev = (int32_t)best;
            }
            if (logits)
                memcpy(logits + ((size_t)(t0 + j) * e->upsample) * V, row, (size_t)R * 4u);
        }
    }
    *n_tokens = count;
    return 0;
}
