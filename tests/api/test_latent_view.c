/* A DeepSeek-style MLA latent cache: one quantized buffer whose rows are [c_kv (512) | k_rope (64)]
 * serves as K (Dk 576) and, through a view of its first 512 dims, as V: the same codes, scales and
 * biases pointers, V's last dims narrower, its row strides K's. Nothing is copied.
 * For each format whose groups divide 512 and 576, and f32/f16/bf16 q (16 or 32 heads over one KV
 * head, the absorbed-attention shape; Lq 1 and 3, causal on the latter; two causal prefills):
 *   - the view equals a contiguous copy of V's dims bit for bit, on the automatic kernel and on the
 *     reference (same values in the same order, so any difference is a kernel misreading the strides);
 *   - the automatic kernel is within SPEC §4 of the reference kernel. */
#include <math.h>
#include <string.h>

#include "../reference/kv_fixture.h"
#include "test_util.h"

enum { DK = 576, DV = 512 };


/* V as the first DV dims of K's rows: K's pointers and strides, V's widths */
static qsdpa_qtensor latent_view(const qsdpa_qtensor *k) {
    qsdpa_qtensor v = *k;
    int64_t words = 0, groups = 0;
    qsdpa_format_row_words(&k->format, DV, &words);
    qsdpa_format_row_scales(&k->format, DV, &groups);
    v.dim = DV;
    v.codes.shape[3] = words;
    if (v.scales.data) v.scales.shape[3] = groups;
    if (v.biases.data) v.biases.shape[3] = groups;
    return v;
}

/* The same rows copied into contiguous tensors of their own (owned: *bufs, three pointers) */
static qsdpa_qtensor latent_copy(const qsdpa_qtensor *view, void **bufs) {
    qsdpa_qtensor c = *view;
    qsdpa_tensor *parts[3] = {&c.codes, &c.scales, &c.biases};
    const qsdpa_tensor *src[3] = {&view->codes, &view->scales, &view->biases};
    for (int i = 0; i < 3; i++) {
        bufs[i] = NULL;
        if (!src[i]->data) continue;
        const int64_t L = src[i]->shape[2], n = src[i]->shape[3];
        const size_t es = qsdpa_dtype_size(src[i]->dtype);
        bufs[i] = test_alloc((size_t)(L * n) * es);
        for (int64_t l = 0; l < L; l++)
            memcpy((char *)bufs[i] + (size_t)(l * n) * es, qsdpa_row_ptr(src[i], 0, 0, l), (size_t)n * es);
        *parts[i] = qsdpa_tensor_4d(bufs[i], src[i]->dtype, 1, 1, L, n);
    }
    return c;
}

static void run_case(qsdpa_context *const ctx[2], test_rng *rng, const char *fmt_text, qsdpa_dtype q_dtype,
                     int64_t hq, int64_t lq, int64_t lk) {
    qsdpa_format f;
    CHECK(qsdpa_format_parse(fmt_text, &f) == QSDPA_OK, "%s: %s", fmt_text, qsdpa_last_error());
    kv_fixture k = kv_fixture_make(rng, &f, QSDPA_DTYPE_F16, 1, 1, lk, lk + 3, DK);
    const qsdpa_qtensor v_view = latent_view(&k.t);
    void *bufs[3];
    const qsdpa_qtensor v_copy = latent_copy(&v_view, bufs);

    const int64_t nq = hq * lq * DK, no = hq * lq * DV;
    const size_t es = qsdpa_dtype_size(q_dtype);
    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = 1.0f / sqrtf(192.0f); /* DeepSeek's: the head dim before absorption */
    /* q scaled so the scores have a standard deviation of about 3 whatever the fixture's K magnitude (its
     * random mxfp8 codes reach |K| ~ 900): with scores in the hundreds, f32 rounding of the scores alone
     * (~|s| 2^-24 sqrt(Dk)) moves the softmax weights by more than SPEC's 2e-5, in any f32 kernel */
    float *kd = kv_dequantize_all(&k.t);
    double k2 = 0.0;
    for (int64_t i = 0; i < lk * DK; i++) k2 += (double)kd[i] * kd[i];
    free(kd);
    const double k_rms = sqrt(k2 / (double)(lk * DK)) + 1e-30;
    void *q = test_alloc((size_t)nq * es);
    test_fill_normal(rng, q, q_dtype, nq, 3.0 / (k_rms * sqrt((double)DK) * params.scale));
    qsdpa_tensor q_t = qsdpa_tensor_4d(q, q_dtype, 1, hq, lq, DK);
    params.causal = lq > 1;

    void *out[2][2]; /* [kernel: auto, reference][V: view, copy] */
    for (int kx = 0; kx < 2; kx++)
        for (int vx = 0; vx < 2; vx++) {
            out[kx][vx] = test_alloc((size_t)no * es);
            test_poison(out[kx][vx], (size_t)no * es);
            qsdpa_tensor o_t = qsdpa_tensor_4d(out[kx][vx], q_dtype, 1, hq, lq, DV);
            const qsdpa_status st = qsdpa_attention(ctx[kx], &q_t, &k.t, vx ? &v_copy : &v_view, &params, &o_t);
            CHECK(st == QSDPA_OK, "%s %s Hq%lld Lq%lld: %s", fmt_text, qsdpa_dtype_name(q_dtype), (long long)hq,
                  (long long)lq, qsdpa_last_error());
        }
    for (int kx = 0; kx < 2; kx++)
        CHECK(memcmp(out[kx][0], out[kx][1], (size_t)no * es) == 0,
              "%s %s Hq%lld Lq%lld (%s): the V view differs from its copy", fmt_text, qsdpa_dtype_name(q_dtype),
              (long long)hq, (long long)lq, kx ? "reference" : qsdpa_context_last_route(ctx[0]));

    /* the automatic kernel against the reference, in units of max|V| (V's dequantized values) */
    float *vd = kv_dequantize_all(&v_copy);
    double vmax = 0.0, err = 0.0;
    for (int64_t i = 0; i < lk * DV; i++) vmax = fmax(vmax, fabs(vd[i]));
    for (int64_t i = 0; i < no; i++) {
        const double a = qsdpa_load_float(out[0][0], q_dtype, i), r = qsdpa_load_float(out[1][0], q_dtype, i);
        err = fmax(err, isnan(a) || isnan(r) ? INFINITY : fabs(a - r));
    }
    CHECK(err <= test_spec_tolerance(q_dtype) * vmax, "%s %s Hq%lld Lq%lld on %s: max error %.3g x max|V| (tolerance %.3g)",
          fmt_text, qsdpa_dtype_name(q_dtype), (long long)hq, (long long)lq, qsdpa_context_last_route(ctx[0]),
          err / vmax, test_spec_tolerance(q_dtype));
    printf("%-12s %-4s Hq%-3lld Lq%lld Lk%lld  %-22s max error %.3g x max|V|\n", fmt_text, qsdpa_dtype_name(q_dtype),
           (long long)hq, (long long)lq, (long long)lk, qsdpa_context_last_route(ctx[0]), err / vmax);
    free(vd);
    for (int kx = 0; kx < 2; kx++) free(out[kx][0]), free(out[kx][1]);
    free(q);
    for (int i = 0; i < 3; i++) free(bufs[i]);
    kv_fixture_free(&k);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *ctx[2] = {make_context(NULL), make_context("cpu.reference")};
    static const char *const formats[] = {"affine:4:64", "affine:8:64", "affine:4:32", "mxfp4", "mxfp8", "nvfp4"};
    static const qsdpa_dtype dtypes[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
    for (size_t fi = 0; fi < sizeof formats / sizeof formats[0]; fi++)
        for (int di = 0; di < 3; di++) {
            const int64_t hq = (fi + di) % 2 ? 32 : 16;
            run_case(ctx, &rng, formats[fi], dtypes[di], hq, 1, 300 + 37 * (int64_t)fi);
            run_case(ctx, &rng, formats[fi], dtypes[di], hq, 3, 131 + 11 * (int64_t)di);
        }
    /* a prefill over the latent cache (causal, more rows than the decode kernels take) */
    run_case(ctx, &rng, "affine:4:64", QSDPA_DTYPE_F16, 16, 40, 200);
    run_case(ctx, &rng, "mxfp4", QSDPA_DTYPE_BF16, 16, 24, 150);
    qsdpa_context_destroy(ctx[0]);
    qsdpa_context_destroy(ctx[1]);
    return test_finish("test_latent_view");
}
