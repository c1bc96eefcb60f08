/* Sequence-parallel slices: the keys split into 1..4 slices (key_offset /
 * key_total), qsdpa_attention_partial per slice (sinks on one slice only),
 * qsdpa_merge, against the unsplit qsdpa_attention within SPEC §4 tolerances.
 * Causal (with fully masked rows, Lq > Lk), windows and bool masks with
 * all-false rows exercise slices whose keys are all masked. */
#include <math.h>
#include <string.h>

#include "../reference/kv_fixture.h"
#include "test_util.h"

#define F32 QSDPA_DTYPE_F32
#define F16 QSDPA_DTYPE_F16
#define BF16 QSDPA_DTYPE_BF16

typedef struct {
    const char *name;
    int64_t B, Hq, Hkv, Lq, Lk, Dk, Dv;
    const char *kfmt, *vfmt;
    qsdpa_dtype q_dtype;
    int causal;
    int64_t window;
    int sinks, bool_mask; /* bool_mask: [Lq, Lk], 25% false, every third row all false */
} split_case;

static const split_case cases[] = {
    {"plain", 1, 4, 2, 3, 57, 64, 64, "affine:4:64", "affine:4:64", F32, 0, 0, 0, 0},
    {"sinks", 2, 4, 1, 2, 40, 128, 128, "mxfp4", "affine:8:32", F32, 0, 0, 1, 0},
    {"causal", 1, 2, 1, 16, 16, 64, 64, "affine:4:32", "nvfp4", F32, 1, 0, 0, 0},
    {"causal Lq>Lk", 1, 2, 2, 12, 7, 64, 64, "mxfp8", "mxfp8", F32, 1, 0, 0, 0},
    {"causal Lq>Lk sinks", 1, 4, 2, 12, 7, 64, 64, "affine:6:64", "affine:3:32", F32, 1, 0, 1, 0},
    {"window", 1, 2, 1, 9, 33, 96, 96, "affine:5:32", "affine:2:32", F32, 1, 6, 0, 0},
    {"window sinks f16", 1, 4, 1, 5, 29, 64, 128, "affine:4:64", "mxfp4", F16, 1, 4, 1, 0},
    {"window Lq>Lk", 1, 2, 1, 10, 6, 64, 64, "mxfp4", "mxfp4", F32, 1, 3, 0, 0},
    {"window Lq>Lk sinks bf16", 1, 2, 1, 10, 6, 64, 64, "affine:8:32", "mxfp4", BF16, 1, 2, 1, 0},
    {"bool all-false rows", 1, 2, 1, 6, 21, 64, 64, "f32", "f16", F32, 0, 0, 0, 1},
    {"bool all-false sinks bf16", 2, 2, 2, 6, 18, 64, 64, "nvfp4", "affine:8:64", BF16, 0, 0, 1, 1},
};


typedef struct {
    qsdpa_tensor out, lse;
    float *out_data, *lse_data;
} partial;

static void run_case(qsdpa_context *ctx, test_rng *rng, const split_case *c, int nslices) {
    qsdpa_format kf, vf;
    CHECK(qsdpa_format_parse(c->kfmt, &kf) == QSDPA_OK && qsdpa_format_parse(c->vfmt, &vf) == QSDPA_OK,
          "%s: format parse: %s", c->name, qsdpa_last_error());
    kv_fixture k = kv_fixture_make(rng, &kf, F32, c->B, c->Hkv, c->Lk, c->Lk + 5, c->Dk);
    kv_fixture v = kv_fixture_make(rng, &vf, F32, c->B, c->Hkv, c->Lk, c->Lk + 5, c->Dv);
    int64_t nq = c->B * c->Hq * c->Lq * c->Dk, no = c->B * c->Hq * c->Lq * c->Dv, nl = c->B * c->Hq * c->Lq;
    size_t esz = qsdpa_dtype_size(c->q_dtype);
    void *q = test_alloc((size_t)nq * esz);
    test_fill_normal(rng, q, c->q_dtype, nq, 1.0);
    qsdpa_tensor q_t = qsdpa_tensor_4d(q, c->q_dtype, c->B, c->Hq, c->Lq, c->Dk);
    float sinks[16];
    for (int64_t h = 0; h < c->Hq; h++) sinks[h] = (float)test_rng_normal(rng);
    qsdpa_tensor sinks_t = qsdpa_tensor_make(sinks, F32, 1, &c->Hq);
    uint8_t *mask = test_alloc((size_t)(c->Lq * c->Lk));
    for (int64_t e = 0; e < c->Lq * c->Lk; e++)
        mask[e] = (e / c->Lk) % 3 == 1 ? 0 : test_rng_uniform(rng) >= 0.25;
    int64_t mshape[2] = {c->Lq, c->Lk};
    qsdpa_tensor mask_t = qsdpa_tensor_make(mask, QSDPA_DTYPE_BOOL, 2, mshape);

    qsdpa_attention_params prm = qsdpa_attention_default_params();
    prm.scale = (float)(1.0 / sqrt((double)c->Dk));
    prm.causal = c->causal;
    prm.window = c->window;
    prm.mask = c->bool_mask ? &mask_t : NULL;
    prm.sinks = c->sinks ? &sinks_t : NULL;

    /* unsplit */
    void *want = test_alloc((size_t)no * esz);
    test_poison(want, (size_t)no * esz);
    qsdpa_tensor want_t = qsdpa_tensor_4d(want, c->q_dtype, c->B, c->Hq, c->Lq, c->Dv);
    qsdpa_status st = qsdpa_attention(ctx, &q_t, &k.t, &v.t, &prm, &want_t);
    CHECK(st == QSDPA_OK, "%s: qsdpa_attention: %s", c->name, qsdpa_last_error());

    /* slices: random cut points, each slice at least one key */
    int64_t cuts[5] = {0};
    int n = nslices > c->Lk ? (int)c->Lk : nslices;
    for (int s = 1; s < n; s++) cuts[s] = test_rng_int(rng, cuts[s - 1] + 1, c->Lk - (n - s));
    cuts[n] = c->Lk;
    int sink_slice = (int)test_rng_int(rng, 0, n - 1);
    partial parts[4];
    qsdpa_tensor outs[4], lses[4];
    for (int s = 0; s < n; s++) {
        int64_t len = cuts[s + 1] - cuts[s];
        qsdpa_qtensor ks = kv_slice(&k.t, cuts[s], len), vs = kv_slice(&v.t, cuts[s], len);
        qsdpa_tensor ms = mask_t;
        ms.data = mask + cuts[s];
        ms.shape[1] = len;
        qsdpa_attention_params sp = prm;
        sp.key_offset = cuts[s];
        sp.key_total = c->Lk;
        sp.mask = c->bool_mask ? &ms : NULL;
        sp.sinks = c->sinks && s == sink_slice ? &sinks_t : NULL;
        parts[s].out_data = test_alloc((size_t)no * sizeof(float));
        parts[s].lse_data = test_alloc((size_t)nl * sizeof(float));
        test_poison(parts[s].out_data, (size_t)no * sizeof(float));
        test_poison(parts[s].lse_data, (size_t)nl * sizeof(float));
        outs[s] = qsdpa_tensor_4d(parts[s].out_data, F32, c->B, c->Hq, c->Lq, c->Dv);
        int64_t lshape[3] = {c->B, c->Hq, c->Lq};
        lses[s] = qsdpa_tensor_make(parts[s].lse_data, F32, 3, lshape);
        st = qsdpa_attention_partial(ctx, &q_t, &ks, &vs, &sp, &outs[s], &lses[s]);
        CHECK(st == QSDPA_OK, "%s: partial slice %d [%lld, %lld): %s", c->name, s, (long long)cuts[s],
              (long long)cuts[s + 1], qsdpa_last_error());
    }
    void *got = test_alloc((size_t)no * esz);
    float *got_lse = test_alloc((size_t)nl * sizeof(float));
    test_poison(got, (size_t)no * esz);
    test_poison(got_lse, (size_t)nl * sizeof(float));
    qsdpa_tensor got_t = qsdpa_tensor_4d(got, c->q_dtype, c->B, c->Hq, c->Lq, c->Dv);
    int64_t lshape[3] = {c->B, c->Hq, c->Lq};
    qsdpa_tensor got_lse_t = qsdpa_tensor_make(got_lse, F32, 3, lshape);
    st = qsdpa_merge(ctx, n, outs, lses, &got_t, &got_lse_t);
    CHECK(st == QSDPA_OK, "%s: qsdpa_merge: %s", c->name, qsdpa_last_error());

    float *V = kv_dequantize_all(&v.t);
    double tol = test_spec_tolerance(c->q_dtype) * max_abs(V, c->B * c->Hkv * c->Lk * c->Dv), worst = 0;
    int64_t bad = 0;
    for (int64_t e = 0; e < no; e++) {
        double err = fabs((double)qsdpa_load_float(got, c->q_dtype, e) - qsdpa_load_float(want, c->q_dtype, e));
        if (!(err <= tol)) bad++;
        if (!(err <= worst)) worst = err;
    }
    CHECK(bad == 0, "%s, %d slices: %lld of %lld merged outputs off the unsplit result; worst %.3g > %.3g",
          c->name, n, (long long)bad, (long long)no, worst, tol);
    for (int64_t e = 0; e < nl; e++) CHECK(!isnan(got_lse[e]), "%s: merged lse[%lld] is NaN", c->name, (long long)e);
    printf("%-28s %d slices: worst %.3g (tol %.3g)\n", c->name, n, worst, tol);

    for (int s = 0; s < n; s++) { free(parts[s].out_data); free(parts[s].lse_data); }
    free(V); free(got); free(got_lse); free(want); free(q); free(mask);
    kv_fixture_free(&k); kv_fixture_free(&v);
}

/* Merge alone, hand-computed: lse 0 and ln 3 weigh 1/4 and 3/4; a -inf
 * partial weighs nothing; all -inf sums the partials (see merge.c). */
static void hand_merge(qsdpa_context *ctx) {
    float o[3][2] = {{4, 8}, {0, -4}, {100, 100}}, l[3] = {0.0f, logf(3.0f), -INFINITY}, out[2], lse;
    qsdpa_tensor outs[3], lses[3];
    int64_t one[3] = {1, 1, 1};
    for (int i = 0; i < 3; i++) {
        outs[i] = qsdpa_tensor_4d(o[i], F32, 1, 1, 1, 2);
        lses[i] = qsdpa_tensor_make(&l[i], F32, 3, one);
    }
    qsdpa_tensor out_t = qsdpa_tensor_4d(out, F32, 1, 1, 1, 2), lse_t = qsdpa_tensor_make(&lse, F32, 3, one);
    test_poison(out, sizeof out);
    CHECK(qsdpa_merge(ctx, 3, outs, lses, &out_t, &lse_t) == QSDPA_OK, "hand merge: %s", qsdpa_last_error());
    CHECK(fabsf(out[0] - 1.0f) < 1e-6f && fabsf(out[1] + 1.0f) < 1e-6f, "hand merge: out = %g %g, expected 1 -1",
          out[0], out[1]);
    CHECK(fabsf(lse - logf(4.0f)) < 1e-6f, "hand merge: lse = %g, expected ln 4", lse);
    l[0] = l[1] = -INFINITY;
    CHECK(qsdpa_merge(ctx, 3, outs, lses, &out_t, &lse_t) == QSDPA_OK, "hand merge: %s", qsdpa_last_error());
    CHECK(out[0] == 104.0f && out[1] == 104.0f && lse == -INFINITY, "all -inf: out = %g %g lse %g, expected 104 104 -inf",
          out[0], out[1], lse);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    const char *kernels[2] = {"cpu.reference", NULL};
    for (int kx = 0; kx < 2; kx++) {
        qsdpa_context *ctx = make_context(kernels[kx]);
        printf("kernel: %s\n", kernels[kx] ? kernels[kx] : "auto");
        if (kx == 0) hand_merge(ctx);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            for (int n = 1; n <= 4; n++) run_case(ctx, &rng, &cases[i], n);
        qsdpa_context_destroy(ctx);
    }
    return test_finish("test_partial_merge");
}
