/* engine.h: the CTC-LSTM speech model (compress/models/ctc_lstm.py) run from its PSQ file, C99.
 *
 * The packed file is the only weight input: every matrix is a QUANT tensor (int8 levels and
 * float32 scales, read with psq_decode_levels) and every bias a RAW float32 tensor (read with
 * psq_decode_tensor). The network, for one utterance of T log-mel frames (T x n_mels):
 *
 *     conv1: Conv1d(n_mels -> C, kernel K, stride s1, padding K / 2), then GELU (erf form)
 *     conv2: Conv1d(C -> C, kernel K, stride s2, padding K / 2), then GELU
 *     lstm:  L layers, 1 or 2 directions of H units (PyTorch's gate order i, f, g, o; the
 *            backward direction reads the utterance reversed; bias_ih + bias_hh)
 *     head:  Linear(H * directions -> vocab * upsample), each LSTM frame giving `upsample`
 *            CTC frames of vocab logits
 *     greedy CTC: argmax per CTC frame (the first maximum on ties), repeats merged, blank
 *            (token 0) dropped.
 *
 * The tensor names are those of the LightningModule's state dict: frontend.conv1.weight /
 * .bias, frontend.conv2.*, lstm.weight_ih_l{k}[_reverse], lstm.weight_hh_l{k}[_reverse],
 * lstm.bias_ih_l{k}[_reverse], lstm.bias_hh_l{k}[_reverse], head.weight, head.bias. The
 * shapes give n_mels, C, K, H, L, the directions and vocab * upsample; the strides and
 * `upsample` come from the recipe, through psq_engine_config.
 *
 * Products are the int8 kernels of kernels.h (Y = X W^T, W = diag(scale) Q), batched over
 * frames for the convolutions (im2col, PSQ_ENGINE_CHUNK output frames at a time), the LSTM
 * input projections (every frame of the utterance at once) and the head; the recurrent
 * product runs one step at a time. The gates' sigmoid and tanh come from an expf of its own
 * (engine.c: within 2 ulp of libm's, in loops a compiler vectorizes); GELU uses libm's erff.
 *
 * Storage per matrix (psq_engine_config.storage = PSQ_ENGINE_AUTO), with d = nnz / numel:
 *   1. block-sparse 1 x b, for the b in {16, 8, 4} storing the fewest levels (ties: the
 *      wider) among those whose stored blocks cover at most PSQ_ENGINE_BSR_MAX_COVER of the
 *      matrix and hold at most PSQ_ENGINE_BSR_MAX_WASTE of zero levels (the zeros come in
 *      whole blocks: the kernel skips them at no index cost);
 *   2. else dense when d >= PSQ_ENGINE_DENSE_MIN (a quarter: CSR pays an index load and a
 *      gather per nonzero, and with kernels.c that costs about what dense spends on four
 *      levels, so below a quarter CSR is the faster);
 *   3. else CSR.
 * PSQ_ENGINE_DENSE / _CSR / _BSR force one storage for every matrix (for benchmarks);
 * `block` forces the block width (0: the widest width of rule 1 that fits, else 16).
 *
 * Memory: no allocation. psq_engine_query gives the bytes of the model memory (the engine
 * itself, its scales, biases and kernel storages: an upper bound computed from the table's
 * nnz counts) and of the scratch for a config (max_frames: the longest input); both are
 * caller-owned, any alignment. The model memory must stay alive and unchanged while the
 * engine is used; after psq_engine_load the engine reads nothing else, so the file's bytes
 * may be freed. Scratch holds nothing between calls: psq_engine_run is reentrant, one
 * scratch buffer per concurrent call.
 */
#ifndef PSQ_ENGINE_H
#define PSQ_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "psq.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PSQ_ENGINE_MAX_LAYERS 8
/* conv1, conv2, then per layer and direction W_ih and W_hh, then the head */
#define PSQ_ENGINE_MAX_MATRICES (3 + 4 * PSQ_ENGINE_MAX_LAYERS)
#define PSQ_ENGINE_CHUNK 32u /* convolution output frames (im2col rows) per batched product */
#define PSQ_ENGINE_DENSE_MIN 0.25      /* rule 2 */
#define PSQ_ENGINE_BSR_MAX_COVER 0.75  /* rule 1: stored block elements / numel */
#define PSQ_ENGINE_BSR_MAX_WASTE 0.25  /* rule 1: zero levels / stored block elements */

/* storage choices (config) and storages (info) */
enum { PSQ_ENGINE_AUTO = 0, PSQ_ENGINE_DENSE = 1, PSQ_ENGINE_CSR = 2, PSQ_ENGINE_BSR = 3 };

/* error codes */
enum {
    PSQ_ENGINE_OK = 0,
    PSQ_ENGINE_E_FORMAT = 1,  /* the PSQ decoder refused a tensor (see psq_error) */
    PSQ_ENGINE_E_FAMILY = 2,  /* not a ctc_lstm file: a tensor of the family is missing, or one is extra */
    PSQ_ENGINE_E_MISSING = 3, /* a tensor the shapes call for is missing */
    PSQ_ENGINE_E_SHAPE = 4,   /* a tensor has the wrong rank or dims */
    PSQ_ENGINE_E_KIND = 5,    /* a matrix is not QUANT, or a bias is not RAW float32 */
    PSQ_ENGINE_E_CONFIG = 6,  /* a config field is out of range */
    PSQ_ENGINE_E_MEMORY = 7,  /* model memory or scratch too small */
    PSQ_ENGINE_E_FRAMES = 8,  /* n_frames is 0 or above max_frames */
    PSQ_ENGINE_E_OUTPUT = 9,  /* an output buffer is too small */
    PSQ_ENGINE_E_KERNEL = 10  /* a kernel storage could not be built (dims out of its range) */
};

typedef struct {
    uint32_t stride1, stride2; /* convolution strides, each 1..8 (subsample 8: 2 and 4) */
    uint32_t upsample;         /* CTC frames per LSTM frame, >= 1; divides head rows */
    uint32_t storage;          /* PSQ_ENGINE_AUTO / _DENSE / _CSR / _BSR */
    uint32_t block;            /* BSR block width: 0 (chosen) or 1..256 */
    uint32_t max_frames;       /* the longest input in feature frames, >= 1 */
} psq_engine_config;

typedef struct {
    size_t model_bytes;   /* model memory for psq_engine_load (upper bound) */
    size_t scratch_bytes; /* scratch for psq_engine_load and psq_engine_run */
    uint32_t max_out_frames; /* CTC frames of a max_frames input (logits rows, token bound) */
} psq_engine_sizes;

typedef struct {
    int code;             /* PSQ_ENGINE_E_* */
    char tensor[96];      /* the tensor at fault, NUL-terminated ("" when none) */
    char message[160];    /* what is wrong, NUL-terminated */
    psq_error psq;        /* the decoder's error for PSQ_ENGINE_E_FORMAT */
} psq_engine_error;

typedef struct {
    uint32_t n_mels, channels, kernel, stride1, stride2;
    uint32_t hidden, layers, directions, vocab, upsample;
    uint32_t n_matrices;                          /* conv1, conv2, (ih, hh) per layer and direction, head */
    uint32_t storage[PSQ_ENGINE_MAX_MATRICES];    /* PSQ_ENGINE_DENSE / _CSR / _BSR */
    uint32_t block[PSQ_ENGINE_MAX_MATRICES];      /* BSR block width, else 0 */
    uint64_t nnz[PSQ_ENGINE_MAX_MATRICES];        /* nonzero levels */
    uint64_t numel[PSQ_ENGINE_MAX_MATRICES];
    uint64_t stored[PSQ_ENGINE_MAX_MATRICES];     /* levels the kernel multiplies */
    size_t model_used;                            /* bytes of the model memory in use */
} psq_engine_info;

typedef struct psq_engine psq_engine; /* opaque; lives in the model memory */

/* The sizes for file f (opened with psq_open) and cfg; checks the file's tensors and cfg. */
int psq_engine_query(const psq_file *f, const psq_engine_config *cfg, psq_engine_sizes *sizes,
                     psq_engine_error *err);

/* Decode every tensor of f and build the engine into `model` (model_size bytes; scratch:
 * scratch_size bytes, reused for the decoded levels). *out points into `model`. */
int psq_engine_load(const psq_file *f, const psq_engine_config *cfg, void *model, size_t model_size,
                    void *scratch, size_t scratch_size, psq_engine **out, psq_engine_error *err);

int psq_engine_get_info(const psq_engine *e, psq_engine_info *info);

/* CTC frames for an input of n_frames feature frames. */
uint32_t psq_engine_out_frames(const psq_engine *e, uint32_t n_frames);

/* Run one utterance: features is n_frames x n_mels float32, row-major. Writes the greedy
 * CTC tokens (at most out_frames of them) to tokens[0 .. *n_tokens) and, when logits is not
 * NULL, the logits (out_frames x vocab, row-major: CTC frame t * upsample + u holds the
 * head's outputs [u * vocab, (u + 1) * vocab) of LSTM frame t) to logits. */
int psq_engine_run(const psq_engine *e, const float *features, uint32_t n_frames, void *scratch,
                   size_t scratch_size, int32_t *tokens, size_t tokens_count, uint32_t *n_tokens,
                   float *logits, size_t logits_count, psq_engine_error *err);

/* A short English description of an engine error code (a string literal). */
const char *psq_engine_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif /* PSQ_ENGINE_H */
