/* Every CPU kernel on real attention tensors (SmolLM2-135M, tests/data/real/,
 * exported by tools/quality/evaluate.py --export) against the double-precision
 * reference, on the same bytes. Real keys have outlier channels (up to 4x the median
 * channel) and real attention is peaked (a few keys take most of the weight), which
 * random normal data never shows. Formats of the quality table, K and V formats mixed,
 * f32 and f16 queries, f16 affine scales (as an f16 model's cache stores them),
 * prefill (64 queries over 512 keys, causal) and decode (the last query alone). */
#include "npy.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

static const char *layers[] = {"smollm2_layer00", "smollm2_layer13", "smollm2_layer27"};
#define NLAYERS ((int)(sizeof layers / sizeof layers[0]))
/* {K format, V format}: the quality table's formats (docs/QUALITY.md). */
static const char *pairs[][2] = {
    {"affine:8:64", "affine:8:64"}, {"affine:4:64", "affine:4:64"}, {"affine:4:32", "affine:4:32"},
    {"affine:3:64", "affine:3:64"}, {"affine:2:64", "affine:2:64"}, {"mxfp4", "mxfp4"},
    {"mxfp8", "mxfp8"},             {"nvfp4", "nvfp4"},             {"affine:8:64", "affine:4:64"},
    {"affine:4:64", "affine:8:64"}, {"affine:8:32", "affine:4:32"}, {"mxfp8", "mxfp4"},
};
#define NPAIRS ((int)(sizeof pairs / sizeof pairs[0]))

static int kernel_runs;

typedef struct side {
    qsdpa_qtensor t;
    void *codes, *scales, *biases;
    float maxabs; /* max |dequantized value|: the unit of SPEC 4 */
} side;

static int load(const char *layer, const char *name, qsdpa_npy_array *a) {
    char path[512];
    snprintf(path, sizeof path, "%s/tests/data/real/%s/%s.npy", QSDPA_SOURCE_DIR, layer, name);
    qsdpa_status st = qsdpa_npy_read(path, a);
    CHECK(st == QSDPA_OK, "read %s: %s", path, qsdpa_npy_error());
    if (st != QSDPA_OK) return 0;
    CHECK(a->type == QSDPA_NPY_F4 && a->rank == 4 && a->shape[0] == 1 && a->shape[3] == 64,
          "%s: expected f32 [1, H, L, 64]", path);
    return a->type == QSDPA_NPY_F4 && a->rank == 4;
}

/* Quantize x [1, H, L, D] f32 into s with format text fmt and scale dtype sdt. */
static void quantize(const qsdpa_npy_array *x, const char *fmt, qsdpa_dtype sdt, side *s) {
    memset(s, 0, sizeof *s);
    qsdpa_format f;
    CHECK(qsdpa_format_parse(fmt, &f) == QSDPA_OK, "parse %s: %s", fmt, qsdpa_last_error());
    int64_t H = x->shape[1], L = x->shape[2], D = x->shape[3], rows = H * L, words = 0, ng = 0;
    qsdpa_format_row_words(&f, D, &words);
    qsdpa_format_row_scales(&f, D, &ng);
    if (f.mode != QSDPA_MODE_AFFINE) sdt = QSDPA_DTYPE_U8;
    s->codes = test_alloc((size_t)(rows * words) * 4);
    s->scales = test_alloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
    if (f.mode == QSDPA_MODE_AFFINE) s->biases = test_alloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
    CHECK(qsdpa_quantize(&f, x->data, QSDPA_DTYPE_F32, rows, D, s->codes, s->scales, s->biases, sdt) == QSDPA_OK,
          "quantize %s: %s", fmt, qsdpa_last_error());
    s->t.format = f;
    s->t.dim = D;
    s->t.codes = qsdpa_tensor_4d(s->codes, QSDPA_DTYPE_U32, 1, H, L, words);
    s->t.scales = qsdpa_tensor_4d(s->scales, sdt, 1, H, L, ng);
    s->t.biases = qsdpa_tensor_4d(s->biases, sdt, 1, H, L, ng);
    float *deq = test_alloc((size_t)(rows * D) * sizeof(float));
    CHECK(qsdpa_dequantize(&f, s->codes, s->scales, s->biases, sdt, rows, D, deq, QSDPA_DTYPE_F32) == QSDPA_OK,
          "dequantize %s: %s", fmt, qsdpa_last_error());
    for (int64_t i = 0; i < rows * D; i++)
        if (fabsf(deq[i]) > s->maxabs) s->maxabs = fabsf(deq[i]);
    free(deq);
}

static void free_side(side *s) {
    free(s->codes);
    free(s->scales);
    free(s->biases);
}

static int field_ok(int want, int have) { return want == QSDPA_ANY || want == have; }

/* Does kernel-table row `info` claim this problem (so forcing it must succeed)? */
static int kernel_serves(const qsdpa_kernel_info *info, qsdpa_dtype qdt, const side *k, const side *v, int64_t lq) {
    return info->backend == QSDPA_BACKEND_CPU && info->usable && strcmp(info->path, "reference") != 0 &&
           field_ok(info->q_dtype, (int)qdt) && field_ok(info->dk, 64) && field_ok(info->dv, 64) &&
           info->max_dim >= 64 && field_ok(info->k_mode, (int)k->t.format.mode) &&
           field_ok(info->k_bits, k->t.format.bits) && field_ok(info->k_group, k->t.format.group) &&
           field_ok(info->v_mode, (int)v->t.format.mode) && field_ok(info->v_bits, v->t.format.bits) &&
           field_ok(info->v_group, v->t.format.group) && (info->max_lq == QSDPA_ANY || info->max_lq >= lq);
}

/* q rows [first, first + lq) of the 64 exported ones, as qdt; causal, so row i
 * sees keys 0 .. 448 + first + i, as in the model. */
static void run(qsdpa_context *ref_ctx, const char *layer, const qsdpa_npy_array *qa, const side *k,
                const side *v, qsdpa_dtype qdt, int64_t first, int64_t lq, const char *label) {
    int64_t Hq = qa->shape[1], D = qa->shape[3], n = Hq * lq * D;
    size_t es = qsdpa_dtype_size(qdt);
    void *q = test_alloc((size_t)n * es), *ref = test_alloc((size_t)n * es), *out = test_alloc((size_t)n * es);
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < lq * D; i++)
            qsdpa_store_float(q, qdt, h * lq * D + i, ((const float *)qa->data)[(h * qa->shape[2] + first) * D + i]);
    qsdpa_tensor qt = qsdpa_tensor_4d(q, qdt, 1, Hq, lq, D);
    qsdpa_tensor rt = qsdpa_tensor_4d(ref, qdt, 1, Hq, lq, D);
    qsdpa_tensor ot = qsdpa_tensor_4d(out, qdt, 1, Hq, lq, D);
    /* The exported queries are the newest of the keys' positions; keys after the
     * last query run here are not part of this causal problem. */
    qsdpa_qtensor kt = k->t, vt = v->t;
    int64_t lk = k->t.codes.shape[2] - qa->shape[2] + first + lq;
    kt.codes.shape[2] = kt.scales.shape[2] = kt.biases.shape[2] = lk;
    vt.codes.shape[2] = vt.scales.shape[2] = vt.biases.shape[2] = lk;
    if (!k->biases) kt.biases.data = NULL;
    if (!v->biases) vt.biases.data = NULL;
    qsdpa_attention_params prm = qsdpa_attention_default_params();
    prm.scale = 0.125f;
    prm.causal = 1;
    test_poison(ref, (size_t)n * es);
    CHECK(qsdpa_attention(ref_ctx, &qt, &kt, &vt, &prm, &rt) == QSDPA_OK, "%s %s reference: %s", layer, label,
          qsdpa_last_error());
    float tol = (float)test_spec_tolerance(qdt) * v->maxabs;
    for (int ki = -1; ki < qsdpa_kernel_count(); ki++) {
        qsdpa_context_options o = qsdpa_context_default_options();
        qsdpa_kernel_info info;
        if (ki >= 0) { /* ki == -1: automatic selection */
            if (qsdpa_kernel_get(ki, &info) != QSDPA_OK || !kernel_serves(&info, qdt, k, v, lq)) continue;
            o.kernel = info.name;
        }
        qsdpa_context *ctx = NULL;
        CHECK(qsdpa_context_create(&o, &ctx) == QSDPA_OK, "context: %s", qsdpa_last_error());
        if (!ctx) continue;
        test_poison(out, (size_t)n * es);
        qsdpa_status st = qsdpa_attention(ctx, &qt, &kt, &vt, &prm, &ot);
        const char *kname = ki >= 0 ? info.name : "auto";
        CHECK(st == QSDPA_OK, "%s %s %s: %s", layer, label, kname, qsdpa_last_error());
        double worst = 0.0;
        for (int64_t i = 0; i < n && st == QSDPA_OK; i++) {
            double e = fabs((double)qsdpa_load_float(out, qdt, i) - qsdpa_load_float(ref, qdt, i));
            if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
        }
        CHECK(worst <= tol, "%s %s %s: max error %.3g > %.3g (max|V| %.3g)", layer, label, kname, worst, tol,
              v->maxabs);
        kernel_runs++;
        qsdpa_context_destroy(ctx);
    }
    free(q), free(ref), free(out);
}

int main(void) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = "cpu.reference";
    qsdpa_context *ref_ctx = NULL;
    CHECK(qsdpa_context_create(&o, &ref_ctx) == QSDPA_OK, "reference context: %s", qsdpa_last_error());
    for (int li = 0; li < NLAYERS && ref_ctx; li++) {
        qsdpa_npy_array qa = {0}, ka = {0}, va = {0};
        if (load(layers[li], "q", &qa) && load(layers[li], "k", &ka) && load(layers[li], "v", &va)) {
            for (int pi = 0; pi < NPAIRS; pi++) {
                side k, v;
                /* Scales: f16 for even pairs, f32 for odd ones (both occur in caches). */
                qsdpa_dtype sdt = pi % 2 ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_F16;
                quantize(&ka, pairs[pi][0], sdt, &k);
                quantize(&va, pairs[pi][1], sdt, &v);
                char label[96];
                static const qsdpa_dtype qdts[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16};
                for (int qi = 0; qi < 2; qi++) {
                    snprintf(label, sizeof label, "K %s V %s q %s prefill", pairs[pi][0], pairs[pi][1],
                             qsdpa_dtype_name(qdts[qi]));
                    run(ref_ctx, layers[li], &qa, &k, &v, qdts[qi], 0, qa.shape[2], label);
                    snprintf(label, sizeof label, "K %s V %s q %s decode", pairs[pi][0], pairs[pi][1],
                             qsdpa_dtype_name(qdts[qi]));
                    run(ref_ctx, layers[li], &qa, &k, &v, qdts[qi], qa.shape[2] - 1, 1, label);
                }
                free_side(&k);
                free_side(&v);
            }
        }
        qsdpa_npy_free(&qa);
        qsdpa_npy_free(&ka);
        qsdpa_npy_free(&va);
    }
    CHECK(kernel_runs >= NLAYERS * NPAIRS * 4 * 2, "only %d kernel runs: kernels or data missing", kernel_runs);
    printf("real tensors: %d kernel runs against the reference\n", kernel_runs);
    qsdpa_context_destroy(ref_ctx);
    return test_finish("test_real_kernels");
}
