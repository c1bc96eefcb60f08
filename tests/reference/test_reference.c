/* The reference kernel ("cpu.reference") against an independent naive
 * computation: K/V dequantized with the public qsdpa_dequantize into full
 * arrays, then SPEC §3 in plain long-double loops. Plus tiny hand-computed
 * cases with exact expected numbers. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kv_fixture.h"
#include "test_util.h"

enum { MASK_NONE, MASK_BOOL, MASK_ADD };

typedef struct {
    const char *name;
    int64_t B, Hq, Hkv, Lq, Lk, cap, Dk, Dv;
    const char *kfmt, *vfmt;
    qsdpa_dtype q_dtype, scale_dtype; /* scale_dtype: affine scales/biases */
    int mask;                  /* MASK_* */
    int mask_rank;             /* 1..4 */
    unsigned bcast;            /* bit t: target dim t (B, Hq, Lq, Lk) is size 1 in the mask */
    int explicit_stride0;      /* rank-4 mask: dim 1 full size but stride 0 */
    qsdpa_dtype mask_dtype;    /* additive masks */
    int all_false_rows;        /* bool mask: every third row fully false */
    int causal;
    int64_t window;
    int sinks;
} ref_case;

#define F32 QSDPA_DTYPE_F32
#define F16 QSDPA_DTYPE_F16
#define BF16 QSDPA_DTYPE_BF16

static const ref_case cases[] = {
    {"gqa1", 2, 2, 2, 3, 37, 40, 64, 64, "affine:4:64", "affine:4:64", F32, F32, 0, 0, 0, 0, F32, 0, 0, 0, 0},
    {"gqa4 bool4", 1, 8, 2, 5, 33, 64, 128, 128, "affine:8:32", "affine:4:32", F16, F16, MASK_BOOL, 4, 0, 0, F32, 0, 0, 0, 0},
    {"gqa8 hkv1 add2", 1, 8, 1, 1, 129, 200, 128, 128, "mxfp4", "mxfp4", BF16, BF16, MASK_ADD, 2, 0, 0, F32, 0, 0, 0, 0},
    {"hkv1 bool3 allfalse sinks", 1, 4, 1, 4, 64, 64, 64, 64, "mxfp8", "nvfp4", F32, F32, MASK_BOOL, 3, 2u, 0, F32, 1, 0, 0, 1},
    {"causal square", 1, 2, 1, 17, 17, 20, 96, 96, "affine:3:32", "affine:6:32", F32, F32, 0, 0, 0, 0, F32, 0, 1, 0, 0},
    {"causal Lq>Lk", 1, 2, 2, 9, 5, 8, 64, 64, "nvfp4", "mxfp8", F32, F32, 0, 0, 0, 0, F32, 0, 1, 0, 0},
    {"causal Lq>Lk sinks", 2, 4, 2, 9, 5, 5, 64, 64, "nvfp4", "mxfp8", F16, F16, 0, 0, 0, 0, F32, 0, 1, 0, 1},
    {"window sinks", 1, 4, 1, 7, 50, 64, 64, 64, "affine:5:32", "affine:2:64", F16, BF16, 0, 0, 0, 0, F32, 0, 1, 8, 1},
    {"window square 192/128", 1, 2, 1, 20, 20, 24, 192, 128, "affine:4:64", "affine:8:64", F32, F32, 0, 0, 0, 0, F32, 0, 1, 5, 0},
    {"576/512 sinks", 1, 2, 1, 2, 11, 16, 576, 512, "affine:4:64", "mxfp4", BF16, F32, 0, 0, 0, 0, F32, 0, 0, 0, 1},
    {"Lk1 causal", 1, 2, 1, 3, 1, 4, 64, 64, "f32", "f32", F32, F32, 0, 0, 0, 0, F32, 0, 1, 0, 0},
    {"Lk1 plain f16", 2, 2, 1, 2, 1, 1, 32, 32, "f16", "f16", F16, F32, 0, 0, 0, 0, F32, 0, 0, 0, 0},
    {"plain bf16/f32 add4 stride0", 2, 4, 2, 3, 19, 30, 64, 32, "bf16", "f32", F32, F32, MASK_ADD, 4, 0, 1, F16, 0, 0, 0, 0},
    {"bool2 allfalse sinks g128", 1, 2, 2, 6, 23, 23, 256, 256, "affine:8:128", "affine:6:128", F32, F16, MASK_BOOL, 2, 0, 0, F32, 1, 0, 0, 1},
    {"add3 bcast Lq bf16 mask", 1, 4, 2, 5, 31, 40, 128, 64, "affine:2:32", "nvfp4", F16, F32, MASK_ADD, 3, 4u, 0, BF16, 0, 0, 0, 0},
    {"D1024", 1, 1, 1, 1, 7, 9, 1024, 1024, "affine:4:128", "mxfp8", F32, BF16, 0, 0, 0, 0, F32, 0, 0, 0, 0},
    {"odd Lk113 bool4 bcastB", 3, 4, 4, 2, 113, 128, 64, 64, "mxfp8", "mxfp8", F16, F32, MASK_BOOL, 4, 1u, 0, F32, 0, 0, 0, 0},
    {"bool1 Lk", 1, 2, 1, 3, 40, 41, 64, 128, "affine:5:64", "affine:3:64", BF16, BF16, MASK_BOOL, 1, 0, 0, F32, 1, 0, 0, 1},
    {"window Lq>Lk", 1, 2, 1, 10, 6, 8, 64, 64, "mxfp4", "affine:4:32", F32, F32, 0, 0, 0, 0, F32, 0, 1, 3, 0},
    {"prefill causal", 1, 4, 1, 48, 80, 96, 128, 128, "affine:4:64", "affine:4:64", F32, F16, 0, 0, 0, 0, F32, 0, 1, 0, 0},
};

/* Lowest finite value of each q dtype, written out independently of the library. */
static long double lowest_of(qsdpa_dtype d) {
    if (d == F16) return -65504.0L;
    if (d == BF16) return -ldexpl(2.0L - ldexpl(1.0L, -7), 127);
    return -(long double)FLT_MAX;
}

/* Allocate and fill a mask of case c (shape per rank/bcast), contiguous. */
static void *make_mask(test_rng *rng, const ref_case *c, qsdpa_tensor *m) {
    const int64_t full[4] = {c->B, c->Hq, c->Lq, c->Lk};
    int64_t shape[4];
    for (int d = 0; d < c->mask_rank; d++) {
        int t = 4 - c->mask_rank + d;
        shape[d] = (c->bcast >> t) & 1u ? 1 : full[t];
    }
    qsdpa_dtype dt = c->mask == MASK_BOOL ? QSDPA_DTYPE_BOOL : c->mask_dtype;
    *m = qsdpa_tensor_make(NULL, dt, c->mask_rank, shape);
    int64_t n = 1;
    for (int d = 0; d < c->mask_rank; d++) n *= shape[d];
    void *data = test_alloc((size_t)n * qsdpa_dtype_size(dt));
    int64_t lk = shape[c->mask_rank - 1], lq = c->mask_rank >= 2 ? shape[c->mask_rank - 2] : 1;
    for (int64_t e = 0; e < n; e++) {
        int64_t j = e % lk, i = (e / lk) % lq;
        if (c->mask == MASK_BOOL) {
            bool keep = test_rng_uniform(rng) >= 0.2;
            if (c->all_false_rows && i % 3 == 1) keep = false;
            ((uint8_t *)data)[e] = keep ? (uint8_t)(1 + test_rng_int(rng, 0, 254)) : 0; /* any nonzero is true */
        } else {
            double val = test_rng_normal(rng);
            if (j > 0 && test_rng_uniform(rng) < 0.2) val = dt == F32 ? -1e9 : -60.0; /* key 0 never masked */
            qsdpa_store_float(data, dt, e, (float)val);
        }
    }
    m->data = data;
    if (c->explicit_stride0 && c->mask_rank == 4) m->stride[1] = 0; /* every head reads head 0's rows */
    return data;
}

/* Element of mask m at target (b, h, i, j) by right-aligned broadcasting. */
static long double mask_at(const qsdpa_tensor *m, const int64_t coord[4], bool *is_false) {
    int64_t off = 0;
    for (int t = 0; t < 4; t++) {
        int d = m->rank - 4 + t;
        if (d >= 0 && m->shape[d] != 1) off += coord[t] * m->stride[d];
    }
    if (m->dtype == QSDPA_DTYPE_BOOL) {
        *is_false = ((const uint8_t *)m->data)[off] == 0;
        return 0.0L;
    }
    *is_false = false;
    return qsdpa_load_float(m->data, m->dtype, off);
}

/* SPEC §3 in long double: out (B, Hq, Lq, Dv). q (B,Hq,Lq,Dk), K (B,Hkv,Lk,Dk), V (B,Hkv,Lk,Dv). */
static void naive(const ref_case *c, const float *q, const float *K, const float *V, const qsdpa_tensor *mask,
                  const float *sinks, float scale, long double *out) {
    long double *s = malloc((size_t)c->Lk * sizeof *s);
    long double ms = lowest_of(c->q_dtype);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t i = 0; i < c->Lq; i++) {
                int64_t g = h / (c->Hq / c->Hkv);
                const float *qi = q + ((b * c->Hq + h) * c->Lq + i) * c->Dk;
                long double mx = sinks ? sinks[h] : -INFINITY;
                for (int64_t j = 0; j < c->Lk; j++) {
                    const float *kj = K + ((b * c->Hkv + g) * c->Lk + j) * c->Dk;
                    long double dot = 0;
                    for (int64_t d = 0; d < c->Dk; d++) dot += (long double)qi[d] * kj[d];
                    s[j] = (long double)scale * dot;
                    int64_t last = i + c->Lk - c->Lq;
                    if (c->causal && (j > last || (c->window > 0 && j <= last - c->window))) s[j] = ms;
                    if (mask) {
                        const int64_t coord[4] = {b, h, i, j};
                        bool f;
                        long double add = mask_at(mask, coord, &f);
                        s[j] = f ? ms : s[j] + add;
                    }
                    if (s[j] > mx) mx = s[j];
                }
                long double den = sinks ? expl(sinks[h] - mx) : 0;
                for (int64_t j = 0; j < c->Lk; j++) den += expl(s[j] - mx);
                long double *o = out + ((b * c->Hq + h) * c->Lq + i) * c->Dv;
                for (int64_t d = 0; d < c->Dv; d++) {
                    long double acc = 0;
                    for (int64_t j = 0; j < c->Lk; j++) acc += expl(s[j] - mx) * V[((b * c->Hkv + g) * c->Lk + j) * c->Dv + d];
                    o[d] = acc / den;
                }
            }
    free(s);
}

static double dtype_eps(qsdpa_dtype d) { return d == F16 ? 0x1p-10 : d == BF16 ? 0x1p-7 : 0x1p-22; }

static void run_case(qsdpa_context *ctx, test_rng *rng, const ref_case *c) {
    qsdpa_format kf, vf;
    if (qsdpa_format_parse(c->kfmt, &kf) != QSDPA_OK || qsdpa_format_parse(c->vfmt, &vf) != QSDPA_OK) {
        CHECK(0, "%s: format parse failed: %s", c->name, qsdpa_last_error());
        return;
    }
    kv_fixture k = kv_fixture_make(rng, &kf, c->scale_dtype, c->B, c->Hkv, c->Lk, c->cap, c->Dk);
    kv_fixture v = kv_fixture_make(rng, &vf, c->scale_dtype, c->B, c->Hkv, c->Lk, c->cap, c->Dv);
    int64_t nq = c->B * c->Hq * c->Lq * c->Dk, no = c->B * c->Hq * c->Lq * c->Dv;
    void *q = test_alloc((size_t)nq * qsdpa_dtype_size(c->q_dtype));
    test_fill_normal(rng, q, c->q_dtype, nq, 1.0);
    float *qf = test_alloc((size_t)nq * sizeof *qf);
    for (int64_t e = 0; e < nq; e++) qf[e] = qsdpa_load_float(q, c->q_dtype, e);
    float sinks[64];
    for (int64_t h = 0; h < c->Hq; h++) sinks[h] = (float)test_rng_normal(rng);
    qsdpa_tensor mask, sinks_t = qsdpa_tensor_make(sinks, F32, 1, &c->Hq);
    void *mask_data = c->mask ? make_mask(rng, c, &mask) : NULL;

    /* out rows padded by 3 elements: the padding must stay poisoned */
    int64_t row = c->Dv + 3, nout = c->B * c->Hq * c->Lq * row;
    size_t esz = qsdpa_dtype_size(c->q_dtype);
    uint8_t *outbuf = test_alloc((size_t)nout * esz);
    test_poison(outbuf, (size_t)nout * esz);
    qsdpa_tensor q_t = qsdpa_tensor_4d(q, c->q_dtype, c->B, c->Hq, c->Lq, c->Dk);
    qsdpa_tensor out_t = qsdpa_tensor_4d(outbuf, c->q_dtype, c->B, c->Hq, c->Lq, c->Dv);
    out_t.stride[2] = row; out_t.stride[1] = row * c->Lq; out_t.stride[0] = row * c->Lq * c->Hq;

    qsdpa_attention_params prm = qsdpa_attention_default_params();
    prm.scale = (float)(1.0 / sqrt((double)c->Dk));
    prm.causal = c->causal;
    prm.window = c->window;
    prm.mask = c->mask ? &mask : NULL;
    prm.sinks = c->sinks ? &sinks_t : NULL;
    qsdpa_status st = qsdpa_attention(ctx, &q_t, &k.t, &v.t, &prm, &out_t);
    CHECK(st == QSDPA_OK, "%s: qsdpa_attention = %s: %s", c->name, qsdpa_status_string(st), qsdpa_last_error());

    float *K = kv_dequantize_all(&k.t), *V = kv_dequantize_all(&v.t);
    long double *want = test_alloc((size_t)no * sizeof *want);
    naive(c, qf, K, V, c->mask ? &mask : NULL, c->sinks ? sinks : NULL, prm.scale, want);
    double vmax = max_abs(V, c->B * c->Hkv * c->Lk * c->Dv), tol = dtype_eps(c->q_dtype) * vmax, worst = 0;
    int64_t bad = 0, pad_bad = 0;
    for (int64_t r = 0; r < no / c->Dv; r++) {
        for (int64_t d = 0; d < c->Dv; d++) {
            double got = qsdpa_load_float(outbuf, c->q_dtype, r * row + d);
            float w32 = (float)want[r * c->Dv + d];
            double w = qsdpa_load_float(&w32, F32, 0);
            if (c->q_dtype != F32) { uint16_t h16[1]; qsdpa_store_float(h16, c->q_dtype, 0, w32); w = qsdpa_load_float(h16, c->q_dtype, 0); }
            double err = fabs(got - w);
            if (!(err <= tol)) bad++;
            if (err > worst || isnan(err)) worst = err;
        }
        for (int64_t d = c->Dv; d < row; d++)
            for (size_t by = 0; by < esz; by++) pad_bad += outbuf[(size_t)(r * row + d) * esz + by] != 0xFF;
    }
    CHECK(bad == 0, "%s: %lld of %lld outputs off; worst %.3g > tol %.3g (max|V| %.3g)", c->name, (long long)bad,
          (long long)no, worst, tol, vmax);
    CHECK(pad_bad == 0, "%s: %lld padding bytes written", c->name, (long long)pad_bad);
    printf("%-30s worst err %.3g (tol %.3g)\n", c->name, worst, tol);
    free(K); free(V); free(want); free(q); free(qf); free(outbuf); free(mask_data);
    kv_fixture_free(&k); kv_fixture_free(&v);
}

/* ---- hand-computable cases ---------------------------------------------- */

/* Plain f32 K/V, D = 4, one head: returns out (Lq, 4). */
static qsdpa_status tiny(qsdpa_context *ctx, int64_t lq, int64_t lk, const float *q, const float *k,
                         const float *v, const qsdpa_attention_params *prm, float *out) {
    qsdpa_tensor q_t = qsdpa_tensor_4d((void *)q, F32, 1, 1, lq, 4), out_t = qsdpa_tensor_4d(out, F32, 1, 1, lq, 4);
    qsdpa_qtensor kt, vt;
    memset(&kt, 0, sizeof kt);
    kt.format.mode = QSDPA_MODE_PLAIN; kt.format.bits = 32; kt.format.plain_dtype = F32; kt.dim = 4;
    vt = kt;
    kt.codes = qsdpa_tensor_4d((void *)k, F32, 1, 1, lk, 4);
    vt.codes = qsdpa_tensor_4d((void *)v, F32, 1, 1, lk, 4);
    test_poison(out, (size_t)lq * 4 * sizeof(float));
    return qsdpa_attention(ctx, &q_t, &kt, &vt, prm, &out_t);
}

static void expect_row(const char *what, const float *got, const double *want, double tol) {
    for (int d = 0; d < 4; d++)
        CHECK(fabs(got[d] - want[d]) <= tol, "%s: out[%d] = %.9g, expected %.9g", what, d, got[d], want[d]);
}

static void hand_cases(qsdpa_context *ctx) {
    const float ln2 = 0.693147180559945f;
    const float q[3 * 4] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0};
    const float k[2 * 4] = {ln2, 5, 5, 5, 0, -7, 7, 1};
    const float v[2 * 4] = {3, 0, 6, -3, 0, 3, -3, 3};
    float out[3 * 4];
    qsdpa_attention_params prm = qsdpa_attention_default_params();

    /* scores ln2 and 0: weights 2/3 and 1/3 */
    CHECK(tiny(ctx, 1, 2, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("weights 2/3 1/3", out, (const double[]){2, 1, 3, -1}, 1e-6);

    /* one key: its value, whatever the score */
    CHECK(tiny(ctx, 1, 1, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("Lk = 1", out, (const double[]){3, 0, 6, -3}, 0);

    /* sink ln2 beside the single key of score ln2: half the value */
    float sink = ln2;
    int64_t one = 1;
    qsdpa_tensor sinks = qsdpa_tensor_make(&sink, F32, 1, &one);
    prm.sinks = &sinks;
    CHECK(tiny(ctx, 1, 1, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("sink = score", out, (const double[]){1.5, 0, 3, -1.5}, 1e-6);

    /* all-false bool mask: mean of V; with a sink: exactly 0 */
    uint8_t none[2] = {0, 0};
    int64_t ms[2] = {1, 2};
    qsdpa_tensor mask = qsdpa_tensor_make(none, QSDPA_DTYPE_BOOL, 2, ms);
    prm.mask = &mask;
    CHECK(tiny(ctx, 1, 2, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("all false + sink", out, (const double[]){0, 0, 0, 0}, 0);
    prm.sinks = NULL;
    CHECK(tiny(ctx, 1, 2, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("all false", out, (const double[]){1.5, 1.5, 1.5, 0}, 1e-6);

    /* causal, Lq 3 > Lk 2 (bottom-right): row 0 sees nothing (mean of V),
     * row 1 key 0 only, row 2 both keys */
    prm.mask = NULL;
    prm.causal = 1;
    CHECK(tiny(ctx, 3, 2, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("causal row 0", out, (const double[]){1.5, 1.5, 1.5, 0}, 1e-6);
    expect_row("causal row 1", out + 4, (const double[]){3, 0, 6, -3}, 0);
    expect_row("causal row 2", out + 8, (const double[]){2, 1, 3, -1}, 1e-6);

    /* window 1: each row sees only its diagonal key */
    prm.window = 1;
    CHECK(tiny(ctx, 3, 2, q, k, v, &prm, out) == QSDPA_OK, "tiny: %s", qsdpa_last_error());
    expect_row("window row 2", out + 8, (const double[]){0, 3, -3, 3}, 0);
}

/* Affine 8-bit, group 32: every code 3, scale 0.5, bias -1 -> every K and V
 * element is 0.5; then out = 0.5 exactly for any q. */
static void hand_affine(qsdpa_context *ctx) {
    uint32_t codes[2 * 8];
    for (int i = 0; i < 16; i++) codes[i] = 0x03030303u;
    float scales[2] = {0.5f, 0.5f}, biases[2] = {-1.0f, -1.0f}, q[32], out[32];
    for (int i = 0; i < 32; i++) q[i] = (float)(i % 5) - 2.0f;
    qsdpa_qtensor t;
    memset(&t, 0, sizeof t);
    CHECK(qsdpa_format_parse("affine:8:32", &t.format) == QSDPA_OK, "parse affine:8:32: %s", qsdpa_last_error());
    t.dim = 32;
    t.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, 1, 1, 2, 8);
    t.scales = qsdpa_tensor_4d(scales, F32, 1, 1, 2, 1);
    t.biases = qsdpa_tensor_4d(biases, F32, 1, 1, 2, 1);
    qsdpa_tensor q_t = qsdpa_tensor_4d(q, F32, 1, 1, 1, 32), out_t = qsdpa_tensor_4d(out, F32, 1, 1, 1, 32);
    test_poison(out, sizeof out);
    qsdpa_status st = qsdpa_attention(ctx, &q_t, &t, &t, NULL, &out_t);
    CHECK(st == QSDPA_OK, "affine constant: %s", qsdpa_last_error());
    for (int d = 0; d < 32; d++) CHECK(out[d] == 0.5f, "affine constant: out[%d] = %.9g, expected 0.5", d, out[d]);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *ctx = make_context("cpu.reference");
    hand_cases(ctx);
    hand_affine(ctx);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(ctx, &rng, &cases[i]);
    qsdpa_context_destroy(ctx);
    return test_finish("test_reference");
}
