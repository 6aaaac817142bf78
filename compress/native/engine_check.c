/* engine_check.c: the C engine (engine.h) on one .psq file and one utterance, as a standalone
 * program, for a run under ASan/UBSan (tests/test_engine.py builds it with psq.c, kernels.c
 * and engine.c). Not part of the library: it reads files and allocates.
 *
 *     engine_check MODEL.psq FEATURES.f32 STRIDE1 STRIDE2 UPSAMPLE STORAGE BLOCK
 *
 * FEATURES.f32 holds T x n_mels float32 values (native order, row-major). Prints
 * "tokens ID ID ..." and "logits_sum S", then checks that the engine refuses a scratch one
 * byte short, a model memory one byte short, 0 frames and too many frames, and that a
 * misaligned model and scratch give the same tokens. Exit status 0 when all of it holds,
 * 1 on an engine error (printed as "error CODE TENSOR: MESSAGE"), 2 on a usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (!fp)
        return NULL;
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return NULL;
    }
    buf = (unsigned char *)malloc((size_t)n + 1u);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static int report(const psq_engine_error *err)
{
    printf("error %d %s: %s\n", err->code, err->tensor, err->message);
    return 1;
}

static int expect(int rc, int want, const char *what)
{
    if (rc != want) {
        printf("check failed: %s gave %d, expected %d\n", what, rc, want);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    psq_file f;
    psq_error pe;
    psq_engine_config cfg;
    psq_engine_sizes sizes;
    psq_engine_error err;
    psq_engine_info info;
    psq_engine *e = NULL, *e2 = NULL;
    unsigned char *file, *feat_bytes, *model, *scratch;
    float *features, *logits;
    int32_t *tokens, *first;
    uint32_t n_frames, n_tokens = 0, n_tokens2 = 0, n_out, i;
    size_t file_len, feat_len;
    double sum = 0.0;
    int bad = 0;

    if (argc != 8) {
        fprintf(stderr, "usage: %s MODEL.psq FEATURES.f32 STRIDE1 STRIDE2 UPSAMPLE STORAGE BLOCK\n", argv[0]);
        return 2;
    }
    file = read_file(argv[1], &file_len);
    feat_bytes = read_file(argv[2], &feat_len);
    if (!file || !feat_bytes) {
        fprintf(stderr, "cannot read %s or %s\n", argv[1], argv[2]);
        return 2;
    }
    if (psq_open(file, file_len, PSQ_DEFAULT_MAX_NUMEL, NULL, 0, &f, &pe)) {
        printf("error psq %d %s\n", pe.code, pe.field);
        return 1;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.stride1 = (uint32_t)strtoul(argv[3], NULL, 10);
    cfg.stride2 = (uint32_t)strtoul(argv[4], NULL, 10);
    cfg.upsample = (uint32_t)strtoul(argv[5], NULL, 10);
    cfg.storage = (uint32_t)strtoul(argv[6], NULL, 10);
    cfg.block = (uint32_t)strtoul(argv[7], NULL, 10);
    cfg.max_frames = 1u;
    if (psq_engine_query(&f, &cfg, &sizes, &err))
        return report(&err);
    /* n_mels from a first load at one frame, then size for the real input */
    model = (unsigned char *)malloc(sizes.model_bytes);
    scratch = (unsigned char *)malloc(sizes.scratch_bytes);
    if (psq_engine_load(&f, &cfg, model, sizes.model_bytes, scratch, sizes.scratch_bytes, &e, &err))
        return report(&err);
    psq_engine_get_info(e, &info);
    free(model);
    free(scratch);
    n_frames = (uint32_t)(feat_len / (sizeof(float) * info.n_mels));
    if (n_frames == 0) {
        fprintf(stderr, "no frames in %s\n", argv[2]);
        return 2;
    }
    cfg.max_frames = n_frames;
    if (psq_engine_query(&f, &cfg, &sizes, &err))
        return report(&err);
    model = (unsigned char *)malloc(sizes.model_bytes + 3u);
    scratch = (unsigned char *)malloc(sizes.scratch_bytes + 3u);
    features = (float *)malloc((size_t)n_frames * info.n_mels * sizeof(float));
    memcpy(features, feat_bytes, (size_t)n_frames * info.n_mels * sizeof(float));
    /* exactly the memory in use is enough (from a 64-byte aligned start), one byte less is
     * refused without a write past it (ASan), and so is too little scratch */
    if (psq_engine_load(&f, &cfg, model, sizes.model_bytes, scratch, sizes.scratch_bytes, &e, &err))
        return report(&err);
    psq_engine_get_info(e, &info);
    if (info.model_used > sizes.model_bytes) {
        printf("check failed: model_used %zu above the queried %zu\n", info.model_used, sizes.model_bytes);
        bad = 1;
    }
    {
        unsigned char *exact = (unsigned char *)malloc(info.model_used + 64u), *at = exact;
        while (((uintptr_t)at % 64u) != 0u)
            at++;
        bad |= expect(psq_engine_load(&f, &cfg, at, info.model_used - 1u, scratch, sizes.scratch_bytes, &e, &err),
                      PSQ_ENGINE_E_MEMORY, "model_used - 1 bytes of model memory");
        bad |= expect(psq_engine_load(&f, &cfg, at, info.model_used, scratch, sizes.scratch_bytes, &e, &err),
                      PSQ_ENGINE_OK, "model_used bytes of model memory");
        free(exact);
    }
    bad |= expect(psq_engine_load(&f, &cfg, model, sizes.model_bytes, scratch, 16, &e, &err), PSQ_ENGINE_E_MEMORY,
                  "16 bytes of scratch");
    if (psq_engine_load(&f, &cfg, model, sizes.model_bytes, scratch, sizes.scratch_bytes, &e, &err))
        return report(&err);
    n_out = psq_engine_out_frames(e, n_frames);
    tokens = (int32_t *)malloc((size_t)n_out * sizeof(int32_t));
    logits = (float *)malloc((size_t)n_out * info.vocab * sizeof(float));
    if (psq_engine_run(e, features, n_frames, scratch, sizes.scratch_bytes, tokens, n_out, &n_tokens, logits,
                       (size_t)n_out * info.vocab, &err))
        return report(&err);
    printf("tokens");
    for (i = 0; i < n_tokens; i++)
        printf(" %d", (int)tokens[i]);
    for (i = 0; i < n_out * info.vocab; i++)
        sum += (double)logits[i];
    printf("\nlogits_sum %.9g\n", sum);
    first = (int32_t *)malloc((size_t)n_out * sizeof(int32_t));
    memcpy(first, tokens, (size_t)n_tokens * sizeof(int32_t));
    bad |= expect(psq_engine_run(e, features, 0, scratch, sizes.scratch_bytes, tokens, n_out, &n_tokens2, NULL, 0,
                                 &err), PSQ_ENGINE_E_FRAMES, "0 frames");
    bad |= expect(psq_engine_run(e, features, n_frames + 1u, scratch, sizes.scratch_bytes, tokens, n_out,
                                 &n_tokens2, NULL, 0, &err), PSQ_ENGINE_E_FRAMES, "max_frames + 1");
    bad |= expect(psq_engine_run(e, features, n_frames, scratch, 64, tokens, n_out, &n_tokens2, NULL, 0, &err),
                  PSQ_ENGINE_E_MEMORY, "64 bytes of scratch");
    bad |= expect(psq_engine_run(e, features, n_frames, scratch, sizes.scratch_bytes, tokens, n_out - 1u,
                                 &n_tokens2, NULL, 0, &err), PSQ_ENGINE_E_OUTPUT, "out_frames - 1 tokens");
    /* misaligned buffers: the same tokens */
    if (psq_engine_load(&f, &cfg, model + 3, sizes.model_bytes, scratch + 3, sizes.scratch_bytes, &e2, &err))
        return report(&err);
    if (psq_engine_run(e2, features, n_frames, scratch + 3, sizes.scratch_bytes, tokens, n_out, &n_tokens2, NULL, 0,
                       &err))
        return report(&err);
    bad |= expect((int)n_tokens2, (int)n_tokens, "token count with misaligned buffers");
    if (n_tokens2 == n_tokens && memcmp(first, tokens, (size_t)n_tokens * sizeof(int32_t)) != 0) {
        printf("check failed: other tokens with misaligned buffers\n");
        bad = 1;
    }
    free(first);
    free(tokens);
    free(logits);
    free(features);
    free(model);
    free(scratch);
    free(file);
    free(feat_bytes);
    return bad;
}
