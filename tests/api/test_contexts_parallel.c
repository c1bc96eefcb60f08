/* Distinct contexts are independent (qsdpa.h): threads that each own a CPU context run
 * attention at the same time, every pool polling or blocking between calls, and every
 * output equals, bit for bit, the same call made alone beforehand (a context's split of
 * the keys depends only on its thread count, so the sums are the same). */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <pthread.h>
#include <string.h>

enum { CALLERS = 4, CALLS = 12, HQ = 8, HKV = 2, LK = 3000, D = 128 };

typedef struct {
    qsdpa_tensor q;
    qsdpa_qtensor k, v;
    const uint16_t *expected; /* [HQ * D] f16 */
    int mismatches, failures;
} caller;

static qsdpa_context *cpu_context(int threads) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.num_threads = threads;
    qsdpa_context *ctx = NULL;
    return qsdpa_context_create(&o, &ctx) == QSDPA_OK ? ctx : NULL;
}

static void *run_caller(void *arg) {
    caller *c = arg;
    qsdpa_context *ctx = cpu_context(2);
    if (!ctx) {
        c->failures = CALLS;
        return NULL;
    }
    uint16_t out[HQ * D];
    qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F16, 1, HQ, 1, D);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    for (int i = 0; i < CALLS; i++) {
        memset(out, 0xFF, sizeof out); /* NaN bit patterns: a value left unwritten cannot match */
        if (qsdpa_attention(ctx, &c->q, &c->k, &c->v, &p, &ot) != QSDPA_OK) c->failures++;
        else if (memcmp(out, c->expected, sizeof out) != 0) c->mismatches++;
    }
    qsdpa_context_destroy(ctx);
    return NULL;
}

/* Quantized [1, HKV, LK, D] rows of fresh normal data in `format`. */
static qsdpa_qtensor make_kv(test_rng *rng, const char *format) {
    qsdpa_format f;
    qsdpa_format_parse(format, &f);
    int64_t rows = HKV * LK, words = 0, groups = 0;
    qsdpa_format_row_words(&f, D, &words);
    qsdpa_format_row_scales(&f, D, &groups);
    float *x = test_alloc((size_t)(rows * D) * sizeof(float));
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, rows * D, 1.0);
    uint32_t *codes = test_alloc((size_t)(rows * words) * 4);
    uint16_t *scales = test_alloc((size_t)(rows * groups) * 2), *biases = test_alloc((size_t)(rows * groups) * 2);
    CHECK(qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, rows, D, codes, scales, biases, QSDPA_DTYPE_F16) == QSDPA_OK,
          "quantize %s: %s", format, qsdpa_last_error());
    free(x);
    qsdpa_qtensor t = {.format = f, .dim = D};
    t.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, 1, HKV, LK, words);
    t.scales = qsdpa_tensor_4d(scales, QSDPA_DTYPE_F16, 1, HKV, LK, groups);
    t.biases = qsdpa_tensor_4d(biases, QSDPA_DTYPE_F16, 1, HKV, LK, groups);
    return t;
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    const char *formats[CALLERS] = {"affine:4:64", "affine:8:64", "affine:4:32", "affine:3:64"};
    caller callers[CALLERS];
    uint16_t expected[CALLERS][HQ * D];
    for (int c = 0; c < CALLERS; c++) {
        memset(&callers[c], 0, sizeof callers[c]);
        uint16_t *q = test_alloc(HQ * D * 2);
        test_fill_normal(&rng, q, QSDPA_DTYPE_F16, HQ * D, 1.0);
        callers[c].q = qsdpa_tensor_4d(q, QSDPA_DTYPE_F16, 1, HQ, 1, D);
        callers[c].k = make_kv(&rng, formats[c]);
        callers[c].v = make_kv(&rng, formats[c]);
        callers[c].expected = expected[c];
        /* the call alone, on a context of the same thread count */
        qsdpa_context *ctx = cpu_context(2);
        CHECK(ctx != NULL, "context: %s", qsdpa_last_error());
        if (!ctx) return test_finish("test_contexts_parallel");
        memset(expected[c], 0xFF, sizeof expected[c]);
        qsdpa_tensor ot = qsdpa_tensor_4d(expected[c], QSDPA_DTYPE_F16, 1, HQ, 1, D);
        qsdpa_attention_params p = qsdpa_attention_default_params();
        p.scale = 0.088f;
        CHECK(qsdpa_attention(ctx, &callers[c].q, &callers[c].k, &callers[c].v, &p, &ot) == QSDPA_OK, "alone: %s",
              qsdpa_last_error());
        qsdpa_context_destroy(ctx);
    }
    pthread_t threads[CALLERS];
    for (int c = 0; c < CALLERS; c++) CHECK(pthread_create(&threads[c], NULL, run_caller, &callers[c]) == 0, "pthread_create");
    for (int c = 0; c < CALLERS; c++) pthread_join(threads[c], NULL);
    for (int c = 0; c < CALLERS; c++) {
        CHECK(callers[c].failures == 0, "%s: %d of %d calls failed", formats[c], callers[c].failures, CALLS);
        CHECK(callers[c].mismatches == 0, "%s: %d of %d calls differ from the same call made alone", formats[c],
              callers[c].mismatches, CALLS);
        free(callers[c].q.data);
        free(callers[c].k.codes.data), free(callers[c].k.scales.data), free(callers[c].k.biases.data);
        free(callers[c].v.codes.data), free(callers[c].v.scales.data), free(callers[c].v.biases.data);
    }
    return test_finish("test_contexts_parallel");
}
