/* Random API calls on the CPU backend for a time budget (QSDPA_FUZZ_SECONDS,
 * default 20; QSDPA_TEST_SEED replays a run, QSDPA_FUZZ_CASE one case of it).
 *
 * Each case draws an attention call (shapes, K/V formats of SPEC 2 and plain,
 * q dtype, masks of rank 1..4 with broadcasts, sinks, causal/window, strided
 * views of larger buffers, the partial API), usually valid, often with one
 * deliberate fault (attn_mutate) whose validity this file decides on its own.
 * Every call runs on the forced reference kernel, the auto-selected kernel and
 * each usable forced CPU kernel:
 *  - an error must come with a message "<function>: ..." and leave every
 *    output byte (and guard byte) as it was; an invalid call must fail and a
 *    valid one must succeed, with the same status on every context;
 *  - a success must leave inputs, guards and the bytes between output
 *    elements alone, contain no NaN, and agree with the reference within
 *    SPEC 4 (units of max|V|); partial slices merged by qsdpa_merge must give
 *    the unsplit result.
 * qsdpa_quantize / qsdpa_dequantize and qsdpa_merge get the same treatment
 * (fuzz_rows.c-style checks below). Failures are grouped by kind and printed
 * with a replay line. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fuzz_util.h"

enum { EXPECT_OK, EXPECT_ERR, EXPECT_ANY };

/* ---- contexts -------------------------------------------------------------- */
#define MAX_CTX 16
static qsdpa_context *ctx_ref, *ctx_auto;
static qsdpa_context *ctx_forced[MAX_CTX];
static const char *forced_name[MAX_CTX];
static int n_forced;

static qsdpa_context *make_ctx(const char *kernel, int threads) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = kernel;
    o.num_threads = threads;
    qsdpa_context *c = NULL;
    if (qsdpa_context_create(&o, &c) != QSDPA_OK) {
        fprintf(stderr, "cannot create context (kernel %s): %s\n", kernel ? kernel : "auto", qsdpa_last_error());
        exit(1);
    }
    return c;
}

static void make_contexts(void) {
    ctx_ref = make_ctx("cpu.reference", 1);
    ctx_auto = make_ctx(NULL, 3); /* 3 threads on 2 cores: uneven splits */
    for (int i = 0; i < qsdpa_kernel_count() && n_forced < MAX_CTX; i++) {
        qsdpa_kernel_info info;
        if (qsdpa_kernel_get(i, &info) != QSDPA_OK) continue;
        if (info.backend != QSDPA_BACKEND_CPU || !info.usable || strcmp(info.name, "cpu.reference") == 0) continue;
        forced_name[n_forced] = info.name;
        ctx_forced[n_forced++] = make_ctx(info.name, 2);
    }
}

/* ---- random choices ---------------------------------------------------------- */
static bool chance(test_rng *r, double p) { return test_rng_uniform(r) < p; }
static const qsdpa_dtype float_dtypes[3] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
static qsdpa_dtype any_float(test_rng *r) { return float_dtypes[test_rng_int(r, 0, 2)]; }

/* A valid format of SPEC 2 (or plain). */
static qsdpa_format random_format(test_rng *r) {
    static const int bits[6] = {2, 3, 4, 5, 6, 8}, groups[4] = {32, 64, 64, 128};
    qsdpa_format f;
    memset(&f, 0, sizeof f);
    switch (test_rng_int(r, 0, 9)) {
    case 0: case 1: case 2: case 3:
        f.mode = QSDPA_MODE_AFFINE, f.bits = bits[test_rng_int(r, 0, 5)], f.group = groups[test_rng_int(r, 0, 3)];
        break;
    case 4: f.mode = QSDPA_MODE_MXFP4, f.bits = 4, f.group = 32; break;
    case 5: f.mode = QSDPA_MODE_MXFP8, f.bits = 8, f.group = 32; break;
    case 6:
        f.mode = QSDPA_MODE_NVFP4, f.bits = 4, f.group = 16;
        if (chance(r, 0.4)) f.global_scale = (float)(0.5 + 500.0 * test_rng_uniform(r));
        break;
    default:
        f.mode = QSDPA_MODE_PLAIN, f.plain_dtype = any_float(r);
        f.bits = 8 * (int)qsdpa_dtype_size(f.plain_dtype);
        break;
    }
    return f;
}

/* A head dim valid for f: a multiple of its group, small most of the time. */
static int64_t random_dim(test_rng *r, const qsdpa_format *f) {
    int64_t most = chance(r, 0.03) ? 1024 : 256;
    if (f->mode == QSDPA_MODE_PLAIN) return chance(r, 0.8) ? test_rng_int(r, 1, 96) : test_rng_int(r, 1, most);
    int64_t m = most / f->group;
    return f->group * (chance(r, 0.7) ? test_rng_int(r, 1, m < 2 ? m : 2) : test_rng_int(r, 1, m));
}

/* ---- one K or V tensor ----------------------------------------------------------- */
typedef struct kvdata {
    qsdpa_format f;
    qsdpa_dtype sd;  /* element type of scales (and biases) */
    int64_t words;   /* codes per row: u32 words, or plain elements */
    int64_t groups;  /* scales per row */
    gbuf codes, scales, biases;
    qsdpa_qtensor t; /* [B, H, Lk, *] view of [B, H, cap, *] buffers (ord, padding) */
} kvdata;

static size_t code_esize(const qsdpa_format *f) {
    return f->mode == QSDPA_MODE_PLAIN ? qsdpa_dtype_size(f->plain_dtype) : 4;
}

/* Rows are quantized (qsdpa_quantize, one row at a time, into the strided
 * buffers) from sigma * N(0,1) + offset values; rows Lk..cap-1 and padding
 * keep the poison, so a kernel reading past the view produces NaN. */
static void kv_build(test_rng *r, kvdata *x, const qsdpa_format *f, qsdpa_dtype scale_dtype, int64_t B, int64_t H,
                     int64_t Lk, int64_t cap, int64_t dim, const int *ord, bool pad) {
    memset(x, 0, sizeof *x);
    x->f = *f;
    bool plain = f->mode == QSDPA_MODE_PLAIN, affine = f->mode == QSDPA_MODE_AFFINE;
    x->sd = affine ? scale_dtype : QSDPA_DTYPE_U8;
    if (plain) x->words = dim;
    else if (qsdpa_format_row_words(f, dim, &x->words) != QSDPA_OK ||
             qsdpa_format_row_scales(f, dim, &x->groups) != QSDPA_OK) {
        fprintf(stderr, "kv_build: format rejected its own dim: %s\n", qsdpa_last_error());
        exit(1);
    }
    x->t.format = *f;
    x->t.dim = dim;
    int64_t shape[4] = {B, H, cap, x->words}, ext[4], st[4];
    qsdpa_dtype cdt = plain ? f->plain_dtype : QSDPA_DTYPE_U32;
    fuzz_extents(r, 4, shape, pad, ext);
    gb_alloc(&x->codes, (size_t)fuzz_lay(4, ext, ord, st) * code_esize(f));
    x->t.codes = qsdpa_tensor_4d(x->codes.data, cdt, B, H, Lk, x->words);
    memcpy(x->t.codes.stride, st, sizeof st);
    int64_t sst[4] = {0, 0, 0, 0};
    if (!plain) {
        shape[3] = x->groups;
        fuzz_extents(r, 4, shape, pad, ext);
        int64_t n = fuzz_lay(4, ext, ord, sst);
        gb_alloc(&x->scales, (size_t)n * qsdpa_dtype_size(x->sd));
        x->t.scales = qsdpa_tensor_4d(x->scales.data, x->sd, B, H, Lk, x->groups);
        memcpy(x->t.scales.stride, sst, sizeof sst);
        if (affine) {
            gb_alloc(&x->biases, (size_t)n * qsdpa_dtype_size(x->sd));
            x->t.biases = x->t.scales;
            x->t.biases.data = x->biases.data;
        }
    }
    float *row = test_alloc((size_t)dim * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            double sigma = exp(-2.5 + 3.5 * test_rng_uniform(r)), offset = chance(r, 0.2) ? 3.0 * sigma : 0.0;
            for (int64_t l = 0; l < Lk; l++) {
                for (int64_t d = 0; d < dim; d++) row[d] = (float)(offset + sigma * test_rng_normal(r));
                if (chance(r, 0.05)) row[test_rng_int(r, 0, dim - 1)] *= 20.0f; /* an outlier */
                uint8_t *cp = x->codes.data + (size_t)(b * st[0] + h * st[1] + l * st[2]) * code_esize(f);
                if (plain) {
                    for (int64_t d = 0; d < dim; d++) qsdpa_store_float(cp, f->plain_dtype, d, row[d]);
                    continue;
                }
                size_t so = (size_t)(b * sst[0] + h * sst[1] + l * sst[2]) * qsdpa_dtype_size(x->sd);
                qsdpa_status s = qsdpa_quantize(f, row, QSDPA_DTYPE_F32, 1, dim, (uint32_t *)cp, x->scales.data + so,
                                                affine ? x->biases.data + so : NULL, x->sd);
                if (s != QSDPA_OK) {
                    fprintf(stderr, "kv_build: qsdpa_quantize failed: %s\n", qsdpa_last_error());
                    exit(1);
                }
            }
        }
    free(row);
}

static void kv_free(kvdata *x) {
    gb_free(&x->codes);
    gb_free(&x->scales);
    gb_free(&x->biases);
}

/* max |V| over the rows of a valid view (SPEC 4's unit). */
static double kv_max_abs(const qsdpa_qtensor *t) {
    float *row = test_alloc((size_t)t->dim * sizeof(float));
    double m = 0.0;
    size_t ce = code_esize(&t->format), se = t->scales.data ? qsdpa_dtype_size(t->scales.dtype) : 0;
    for (int64_t b = 0; b < t->codes.shape[0]; b++)
        for (int64_t h = 0; h < t->codes.shape[1]; h++)
            for (int64_t l = 0; l < t->codes.shape[2]; l++) {
                const uint8_t *cp = (const uint8_t *)t->codes.data +
                                    (size_t)(b * t->codes.stride[0] + h * t->codes.stride[1] + l * t->codes.stride[2]) * ce;
                if (t->format.mode == QSDPA_MODE_PLAIN) {
                    for (int64_t d = 0; d < t->dim; d++) row[d] = qsdpa_load_float(cp, t->format.plain_dtype, d);
                } else {
                    size_t so = (size_t)(b * t->scales.stride[0] + h * t->scales.stride[1] + l * t->scales.stride[2]) * se;
                    const uint8_t *bp = t->biases.data ? (const uint8_t *)t->biases.data + so : NULL;
                    qsdpa_dequantize(&t->format, (const uint32_t *)cp, (const uint8_t *)t->scales.data + so, bp,
                                     t->scales.dtype, 1, t->dim, row, QSDPA_DTYPE_F32);
                }
                for (int64_t d = 0; d < t->dim; d++) m = fabs(row[d]) > m ? fabs(row[d]) : m;
            }
    free(row);
    return m;
}

/* ---- one attention case ----------------------------------------------------------- */
typedef struct acase {
    int64_t B, Hq, Hkv, Lq, Lk, cap, Dk, Dv;
    qsdpa_dtype qd;
    kvdata k, v;
    gbuf q, out, lse, mask, sinks, spare;
    qsdpa_tensor tq, tout, tlse, tmask, tsinks;
    qsdpa_attention_params prm;
    bool use_mask, use_sinks, partial, null_params, null_ctx, null_q, null_k, null_v, null_out, null_lse;
    bool v_is_k;   /* v passed as k's descriptor (aliasing inputs) */
    gbuf *out_buf; /* the buffer out points into (c->out, or an input's when aliased) */
    int expect;
    char mut[240]; /* the deliberate fault, "" when none */
} acase;

/* A tensor of `shape` in a fresh guarded buffer with a random layout. */
static qsdpa_tensor alloc_tensor(test_rng *r, gbuf *g, qsdpa_dtype dt, int rank, const int64_t *shape, bool pad) {
    int ord[4];
    int64_t ext[4], st[4];
    fuzz_order(r, rank, ord);
    fuzz_extents(r, rank, shape, pad, ext);
    gb_alloc(g, (size_t)fuzz_lay(rank, ext, ord, st) * qsdpa_dtype_size(dt));
    qsdpa_tensor t = qsdpa_tensor_make(g->data, dt, rank, shape);
    memcpy(t.stride, st, sizeof st);
    return t;
}

static void fill_tensor(test_rng *r, const qsdpa_tensor *t, double sigma) {
    int64_t idx[4] = {0, 0, 0, 0};
    do qsdpa_store_float(t->data, t->dtype, fuzz_offset(t, idx), (float)(sigma * test_rng_normal(r)));
    while (fuzz_next(t, idx));
}

/* Mask of rank 1..4 broadcastable to [B, Hq, Lq, Lk]: each aligned dim full or
 * 1, sometimes full through stride 0. Bool (p(false) varies, so fully masked
 * rows occur) or additive f32/f16/bf16 in [-8, 2]-ish. */
static void gen_mask(test_rng *r, acase *c) {
    int rank = (int)test_rng_int(r, 1, 4);
    const int64_t target[4] = {c->B, c->Hq, c->Lq, c->Lk};
    int64_t shape[4];
    bool zero[4] = {false, false, false, false};
    for (int d = 0; d < rank; d++) {
        int64_t full = target[4 - rank + d];
        shape[d] = chance(r, 0.6) ? full : 1;
        zero[d] = shape[d] > 1 && chance(r, 0.12);
    }
    qsdpa_dtype dt = chance(r, 0.55) ? QSDPA_DTYPE_BOOL : any_float(r);
    c->tmask = alloc_tensor(r, &c->mask, dt, rank, shape, chance(r, 0.3));
    for (int d = 0; d < rank; d++)
        if (zero[d]) c->tmask.stride[d] = 0;
    double pfalse = (double[]){0.1, 0.3, 0.6, 0.97}[test_rng_int(r, 0, 3)];
    int64_t idx[4] = {0, 0, 0, 0};
    do {
        int64_t o = fuzz_offset(&c->tmask, idx);
        if (dt == QSDPA_DTYPE_BOOL) c->mask.data[o] = chance(r, pfalse) ? 0 : (uint8_t)test_rng_int(r, 1, 255);
        else qsdpa_store_float(c->tmask.data, dt, o, (float)(2.0 * test_rng_normal(r) - (chance(r, 0.2) ? 6.0 : 0.0)));
    } while (fuzz_next(&c->tmask, idx));
    c->use_mask = true;
}

static void gen_case(test_rng *r, acase *c) {
    memset(c, 0, sizeof *c);
    c->B = test_rng_int(r, 1, 2);
    c->Hkv = test_rng_int(r, 1, 2);
    c->Hq = c->Hkv * test_rng_int(r, 1, 4);
    c->Lq = chance(r, 0.85) ? test_rng_int(r, 1, 20) : test_rng_int(r, 17, 140); /* decode / prefill tiles */
    c->Lk = chance(r, 0.9) ? test_rng_int(r, 1, 48) : test_rng_int(r, 400, 1300); /* split-K above 512 */
    if (c->Lk > 64 || c->Lq > 20) c->B = 1, c->Hkv = 1, c->Hq = test_rng_int(r, 1, 2);
    c->cap = c->Lk + (chance(r, 0.5) ? test_rng_int(r, 1, 5) : 0);
    c->qd = any_float(r);
    qsdpa_format kf = random_format(r), vf = random_format(r);
    c->Dk = random_dim(r, &kf);
    c->Dv = random_dim(r, &vf);
    if (c->Lk > 64 || c->Lq > 20) { /* keep the big cases cheap */
        if (c->Dk > 128) c->Dk = kf.group > 0 ? kf.group : 64;
        if (c->Dv > 128) c->Dv = vf.group > 0 ? vf.group : 64;
    }
    int ord[4];
    fuzz_order(r, 4, ord);
    bool pad = chance(r, 0.4);
    kv_build(r, &c->k, &kf, any_float(r), c->B, c->Hkv, c->Lk, c->cap, c->Dk, ord, pad);
    if (chance(r, 0.5)) fuzz_order(r, 4, ord);
    kv_build(r, &c->v, &vf, any_float(r), c->B, c->Hkv, c->Lk, c->cap, c->Dv, ord, chance(r, 0.4));

    int64_t qs[4] = {c->B, c->Hq, c->Lq, c->Dk}, os[4] = {c->B, c->Hq, c->Lq, c->Dv};
    c->tq = alloc_tensor(r, &c->q, c->qd, 4, qs, chance(r, 0.3));
    fill_tensor(r, &c->tq, 1.0);
    c->partial = chance(r, 0.25);
    c->tout = alloc_tensor(r, &c->out, c->partial ? QSDPA_DTYPE_F32 : c->qd, 4, os, chance(r, 0.3));
    c->out_buf = &c->out;
    if (c->partial) c->tlse = alloc_tensor(r, &c->lse, QSDPA_DTYPE_F32, 3, os, chance(r, 0.3));
    gb_alloc(&c->spare, 4096);

    c->prm = qsdpa_attention_default_params();
    c->prm.scale = (float)((0.3 + 1.7 * test_rng_uniform(r)) / sqrt((double)c->Dk));
    if (chance(r, 0.03)) c->prm.scale = chance(r, 0.5) ? 0.0f : -c->prm.scale;
    if (chance(r, 0.35)) {
        c->prm.causal = 1;
        if (chance(r, 0.4)) c->prm.window = test_rng_int(r, 1, c->Lk + 3);
    } else if (chance(r, 0.45)) {
        gen_mask(r, c);
    }
    if (chance(r, 0.3)) {
        int64_t hs[1] = {c->Hq};
        c->tsinks = alloc_tensor(r, &c->sinks, any_float(r), 1, hs, false);
        fill_tensor(r, &c->tsinks, 2.0);
        c->use_sinks = true;
    }
    if (c->partial && chance(r, 0.6)) { /* a slice of a longer context */
        int64_t extra = test_rng_int(r, 1, 10);
        c->prm.key_total = c->Lk + extra;
        c->prm.key_offset = test_rng_int(r, 0, extra);
    }
    c->expect = EXPECT_OK;
}

static void acase_free(acase *c) {
    kv_free(&c->k);
    kv_free(&c->v);
    gbuf *g[6] = {&c->q, &c->out, &c->lse, &c->mask, &c->sinks, &c->spare};
    for (int i = 0; i < 6; i++) gb_free(g[i]);
}

/* ---- description (printed with failures) ------------------------------------------ */
static int put_tensor(char *s, size_t n, const char *name, const qsdpa_tensor *t) {
    int w = snprintf(s, n, " %s{%s r%d [", name, qsdpa_dtype_name(t->dtype), t->rank);
    for (int d = 0; d < t->rank && d < 4; d++)
        w += snprintf(s + w, n > (size_t)w ? n - (size_t)w : 0, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    w += snprintf(s + w, n > (size_t)w ? n - (size_t)w : 0, "] st[");
    for (int d = 0; d < t->rank && d < 4; d++)
        w += snprintf(s + w, n > (size_t)w ? n - (size_t)w : 0, "%s%lld", d ? "," : "", (long long)t->stride[d]);
    return w + snprintf(s + w, n > (size_t)w ? n - (size_t)w : 0, "]}");
}

static void describe(const acase *c) {
    char kf[32], vf[32], *s = fuzz_case_desc;
    size_t n = sizeof fuzz_case_desc;
    qsdpa_format_string(&c->k.f, kf, sizeof kf);
    qsdpa_format_string(&c->v.f, vf, sizeof vf);
    int w = snprintf(s, n, "%s B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld(cap %lld) Dk=%lld Dv=%lld q=%s K=%s(%s%s) V=%s(%s%s) "
                     "scale=%g causal=%d window=%lld key_offset=%lld key_total=%lld",
                     c->partial ? "partial" : "attention", (long long)c->B, (long long)c->Hq, (long long)c->Hkv,
                     (long long)c->Lq, (long long)c->Lk, (long long)c->cap, (long long)c->Dk, (long long)c->Dv,
                     qsdpa_dtype_name(c->qd), kf, qsdpa_dtype_name(c->k.sd),
                     c->k.f.global_scale != 0.0f ? ",G" : "", vf, qsdpa_dtype_name(c->v.sd),
                     c->v.f.global_scale != 0.0f ? ",G" : "", (double)c->prm.scale, c->prm.causal,
                     (long long)c->prm.window, (long long)c->prm.key_offset, (long long)c->prm.key_total);
    w += put_tensor(s + w, n - (size_t)w, "q", &c->tq);
    w += put_tensor(s + w, n - (size_t)w, "out", &c->tout);
    w += put_tensor(s + w, n - (size_t)w, "kcodes", &c->k.t.codes);
    w += put_tensor(s + w, n - (size_t)w, "vcodes", &c->v.t.codes);
    if (c->use_mask) w += put_tensor(s + w, n - (size_t)w, "mask", &c->tmask);
    if (c->use_sinks) w += put_tensor(s + w, n - (size_t)w, "sinks", &c->tsinks);
    if (c->mut[0]) snprintf(s + w, n - (size_t)w, " FAULT: %s", c->mut);
}

/* ---- deliberate faults ---------------------------------------------------------------
 * Each sets c->expect from this file's own reading of SPEC 5 and qsdpa.h. */
static void mut(acase *c, int expect, const char *text) {
    c->expect = expect;
    snprintf(c->mut, sizeof c->mut, "%s", text);
}

static kvdata *pick_kv(test_rng *r, acase *c, const char **name) {
    bool k = chance(r, 0.5);
    *name = k ? "k" : "v";
    return k ? &c->k : &c->v;
}

/* A tensor of the call picked at random (name for the description). */
static qsdpa_tensor *pick_tensor(test_rng *r, acase *c, const char **name) {
    for (;;) {
        switch (test_rng_int(r, 0, 7)) {
        case 0: *name = "q"; return &c->tq;
        case 1: *name = "out"; return &c->tout;
        case 2: *name = "k->codes"; return &c->k.t.codes;
        case 3: *name = "v->codes"; return &c->v.t.codes;
        case 4: if (c->k.scales.raw) { *name = "k->scales"; return &c->k.t.scales; } break;
        case 5: if (c->v.biases.raw) { *name = "v->biases"; return &c->v.t.biases; } break;
        case 6: if (c->use_mask) { *name = "mask"; return &c->tmask; } break;
        case 7: if (c->partial) { *name = "lse"; return &c->tlse; } break;
        }
    }
}

static void attn_mutate(test_rng *r, acase *c) {
    char t[200];
    const char *nm;
    int kind = (int)test_rng_int(r, 0, 41);
    switch (kind) {
    case 0: c->null_q = true; mut(c, EXPECT_ERR, "q = NULL"); return;
    case 1: c->null_k = true; mut(c, EXPECT_ERR, "k = NULL"); return;
    case 2: c->null_v = true; mut(c, EXPECT_ERR, "v = NULL"); return;
    case 3: c->null_out = true; mut(c, EXPECT_ERR, "out = NULL"); return;
    case 4: c->null_ctx = true; mut(c, EXPECT_ERR, "ctx = NULL"); return;
    case 5:
        if (!c->partial) break;
        c->null_lse = true; mut(c, EXPECT_ERR, "lse = NULL (partial)"); return;
    case 6:
        if (c->partial && c->prm.key_total) break; /* NULL params means the whole context */
        c->null_params = true; c->use_mask = c->use_sinks = false;
        mut(c, EXPECT_OK, "params = NULL (defaults)"); return;
    case 7: c->tq.data = NULL; mut(c, EXPECT_ERR, "q->data = NULL"); return;
    case 8: { kvdata *x = pick_kv(r, c, &nm); x->t.codes.data = NULL;
        snprintf(t, sizeof t, "%s->codes.data = NULL", nm); mut(c, EXPECT_ERR, t); return; }
    case 9: { kvdata *x = pick_kv(r, c, &nm);
        if (x->f.mode == QSDPA_MODE_PLAIN) { x->t.scales.data = c->spare.data; snprintf(t, sizeof t, "%s->scales.data given for plain", nm); }
        else { x->t.scales.data = NULL; snprintf(t, sizeof t, "%s->scales.data = NULL", nm); }
        mut(c, EXPECT_ERR, t); return; }
    case 10: { kvdata *x = pick_kv(r, c, &nm);
        if (x->f.mode == QSDPA_MODE_AFFINE) { x->t.biases.data = NULL; snprintf(t, sizeof t, "%s->biases.data = NULL (affine)", nm); }
        else { x->t.biases = x->t.scales.data ? x->t.scales : x->t.codes; x->t.biases.data = c->spare.data;
               snprintf(t, sizeof t, "%s->biases.data given for non-affine", nm); }
        mut(c, EXPECT_ERR, t); return; }
    case 11: { kvdata *x = pick_kv(r, c, &nm);
        int64_t g = x->f.group > 0 ? x->f.group : 1, d[5] = {0, -g, 1024 + g, x->t.dim + 1, INT64_MIN};
        x->t.dim = d[test_rng_int(r, 0, 4)];
        snprintf(t, sizeof t, "%s->dim = %lld", nm, (long long)x->t.dim); mut(c, EXPECT_ERR, t); return; }
    case 12: { qsdpa_tensor *x = pick_tensor(r, c, &nm); int d = (int)test_rng_int(r, 0, x->rank - 1);
        x->shape[d] = chance(r, 0.5) ? 0 : -test_rng_int(r, 1, 3);
        snprintf(t, sizeof t, "%s shape[%d] = %lld", nm, d, (long long)x->shape[d]); mut(c, EXPECT_ERR, t); return; }
    case 13:
        if (c->Hkv < 2) break;
        c->tq.shape[1] += 1; c->tout.shape[1] += 1; if (c->partial) c->tlse.shape[1] += 1;
        mut(c, EXPECT_ERR, "Hq + 1 (not a multiple of Hkv) on q and out"); return;
    case 14: c->tq.shape[0] += 1; mut(c, EXPECT_ERR, "q->shape[0] (B) + 1"); return;
    case 15: { kvdata *x = pick_kv(r, c, &nm); qsdpa_tensor *p = chance(r, 0.5) || !x->scales.raw ? &x->t.codes : &x->t.scales;
        int d = (int)test_rng_int(r, 0, 2); p->shape[d] += 1;
        snprintf(t, sizeof t, "%s %s shape[%d] + 1", nm, p == &x->t.codes ? "codes" : "scales", d); mut(c, EXPECT_ERR, t); return; }
    case 16: c->tq.shape[3] += chance(r, 0.5) ? 1 : -1;
        mut(c, c->tq.shape[3] > 0 ? EXPECT_ERR : EXPECT_ERR, "q->shape[3] != Dk"); return;
    case 17: { int d = (int)test_rng_int(r, 0, 3); c->tout.shape[d] += 1;
        snprintf(t, sizeof t, "out->shape[%d] + 1", d); mut(c, EXPECT_ERR, t); return; }
    case 18: c->tout.dtype = c->partial ? QSDPA_DTYPE_F16 : (c->qd == QSDPA_DTYPE_F32 ? QSDPA_DTYPE_BF16 : QSDPA_DTYPE_F32);
        mut(c, EXPECT_ERR, "out->dtype differs from q's (f32 for partial)"); return;
    case 19: { static const int bad[5] = {QSDPA_DTYPE_U8, QSDPA_DTYPE_BOOL, QSDPA_DTYPE_U32, 99, -1};
        c->tq.dtype = (qsdpa_dtype)bad[test_rng_int(r, 0, 4)];
        snprintf(t, sizeof t, "q->dtype = %d", (int)c->tq.dtype); mut(c, EXPECT_ERR, t); return; }
    case 20: { kvdata *x = pick_kv(r, c, &nm); qsdpa_format *f = &x->t.format;
        switch (test_rng_int(r, 0, 9)) {
        case 0: f->mode = (qsdpa_mode)(chance(r, 0.5) ? 5 : -1); break;
        case 1: *f = (qsdpa_format){QSDPA_MODE_AFFINE, (int)(int64_t[]){0, 1, 7, 9, 16}[test_rng_int(r, 0, 4)], 64, QSDPA_DTYPE_F32, 0}; break;
        case 2: *f = (qsdpa_format){QSDPA_MODE_AFFINE, 4, (int)(int64_t[]){0, 16, 33, 256, -32}[test_rng_int(r, 0, 4)], QSDPA_DTYPE_F32, 0}; break;
        case 3: *f = (qsdpa_format){QSDPA_MODE_MXFP4, 8, 32, QSDPA_DTYPE_F32, 0}; break;
        case 4: *f = (qsdpa_format){QSDPA_MODE_MXFP8, 8, 16, QSDPA_DTYPE_F32, 0}; break;
        case 5: *f = (qsdpa_format){QSDPA_MODE_NVFP4, 4, 32, QSDPA_DTYPE_F32, 0}; break;
        case 6: *f = (qsdpa_format){QSDPA_MODE_PLAIN, 32, 0, QSDPA_DTYPE_F16, 0}; break;
        case 7: *f = (qsdpa_format){QSDPA_MODE_PLAIN, 8, 0, QSDPA_DTYPE_U8, 0}; break;
        case 8: if (f->mode != QSDPA_MODE_NVFP4) { f->global_scale = 2.0f; break; }
            f->global_scale = (float[]){-1.0f, NAN, INFINITY}[test_rng_int(r, 0, 2)]; break;
        default: if (f->mode == QSDPA_MODE_PLAIN) f->group = 16; else f->bits = 7; break;
        }
        snprintf(t, sizeof t, "%s->format = {mode %d, bits %d, group %d, plain %d, G %g}", nm, (int)f->mode, f->bits,
                 f->group, (int)f->plain_dtype, (double)f->global_scale);
        mut(c, EXPECT_ERR, t); return; }
    case 21: { kvdata *x = pick_kv(r, c, &nm);
        x->t.codes.dtype = x->f.mode != QSDPA_MODE_PLAIN ? QSDPA_DTYPE_F32
                         : (x->f.plain_dtype == QSDPA_DTYPE_F16 ? QSDPA_DTYPE_BF16 : QSDPA_DTYPE_F16);
        snprintf(t, sizeof t, "%s->codes.dtype = %s", nm, qsdpa_dtype_name(x->t.codes.dtype)); mut(c, EXPECT_ERR, t); return; }
    case 22: { kvdata *x = pick_kv(r, c, &nm); /* the packed-width bug of SPEC 1, both ways */
        x->t.codes.shape[3] = x->f.mode == QSDPA_MODE_PLAIN ? x->words + 1 : (chance(r, 0.5) ? x->t.dim : x->words - 1);
        snprintf(t, sizeof t, "%s->codes.shape[3] = %lld (row needs %lld)", nm, (long long)x->t.codes.shape[3], (long long)x->words);
        mut(c, x->t.codes.shape[3] == x->words ? EXPECT_OK : EXPECT_ERR, t); return; }
    case 23: { kvdata *x = pick_kv(r, c, &nm); if (!x->scales.raw) break;
        x->t.scales.shape[3] += chance(r, 0.5) ? 1 : -1; if (x->t.biases.data) x->t.biases.shape[3] = x->t.scales.shape[3];
        snprintf(t, sizeof t, "%s->scales.shape[3] = %lld", nm, (long long)x->t.scales.shape[3]); mut(c, EXPECT_ERR, t); return; }
    case 24: { kvdata *x = pick_kv(r, c, &nm); if (!x->scales.raw) break;
        x->t.scales.dtype = x->f.mode == QSDPA_MODE_AFFINE ? QSDPA_DTYPE_U8 : any_float(r);
        if (x->t.biases.data) x->t.biases.dtype = x->t.scales.dtype;
        snprintf(t, sizeof t, "%s->scales.dtype = %s", nm, qsdpa_dtype_name(x->t.scales.dtype)); mut(c, EXPECT_ERR, t); return; }
    case 25: { kvdata *x = pick_kv(r, c, &nm); if (!x->biases.raw) break;
        x->t.biases.dtype = x->sd == QSDPA_DTYPE_F32 ? QSDPA_DTYPE_F16 : QSDPA_DTYPE_F32;
        snprintf(t, sizeof t, "%s->biases.dtype != scales.dtype", nm); mut(c, EXPECT_ERR, t); return; }
    case 26: case 27: case 28:
        if (!c->use_mask) { c->prm.causal = 0; c->prm.window = 0; gen_mask(r, c); }
        if (kind == 26) { c->tmask.rank = chance(r, 0.5) ? 0 : 5; snprintf(t, sizeof t, "mask rank %d", c->tmask.rank); }
        else if (kind == 27) { int d = (int)test_rng_int(r, 0, c->tmask.rank - 1);
            const int64_t target[4] = {c->B, c->Hq, c->Lq, c->Lk};
            c->tmask.shape[d] = target[4 - c->tmask.rank + d] + 1;
            snprintf(t, sizeof t, "mask shape[%d] = %lld does not broadcast", d, (long long)c->tmask.shape[d]); }
        else { c->tmask.dtype = chance(r, 0.5) ? QSDPA_DTYPE_U8 : QSDPA_DTYPE_U32; snprintf(t, sizeof t, "mask dtype %s", qsdpa_dtype_name(c->tmask.dtype)); }
        mut(c, EXPECT_ERR, t); return;
    case 29:
        if (!c->use_mask) gen_mask(r, c);
        c->prm.causal = 1; mut(c, EXPECT_ERR, "causal together with a mask"); return;
    case 30:
        if (chance(r, 0.5)) { c->prm.causal = 0; c->prm.window = test_rng_int(r, 1, 10); mut(c, EXPECT_ERR, "window without causal"); }
        else { c->prm.window = -test_rng_int(r, 1, 10); mut(c, EXPECT_ERR, "negative window"); }
        return;
    case 31: {
        if (!c->use_sinks) { int64_t hs[1] = {c->Hq}; c->tsinks = alloc_tensor(r, &c->sinks, QSDPA_DTYPE_F32, 1, hs, false);
            fill_tensor(r, &c->tsinks, 1.0); c->use_sinks = true; }
        int w = (int)test_rng_int(r, 0, 2);
        if (w == 0) { c->tsinks.shape[0] = c->Hq > 1 && chance(r, 0.5) ? c->Hq - 1 : c->Hq + 1; mut(c, EXPECT_ERR, "sinks shape != [Hq]"); }
        else if (w == 1) { c->tsinks.rank = 2; c->tsinks.shape[1] = 1; c->tsinks.stride[1] = 1; mut(c, EXPECT_ERR, "sinks rank 2"); }
        else { c->tsinks.dtype = chance(r, 0.5) ? QSDPA_DTYPE_U8 : QSDPA_DTYPE_BOOL; mut(c, EXPECT_ERR, "sinks dtype u8/bool"); }
        return; }
    case 32: { qsdpa_tensor *x = pick_tensor(r, c, &nm); int64_t s = x == &c->tmask ? 2 : (chance(r, 0.5) ? 0 : 2);
        x->stride[x->rank - 1] = s;
        snprintf(t, sizeof t, "%s last stride = %lld (size %lld)", nm, (long long)s, (long long)x->shape[x->rank - 1]);
        mut(c, x->shape[x->rank - 1] > 1 ? EXPECT_ERR : EXPECT_ANY, t); return; }
    case 33: { qsdpa_tensor *x = pick_tensor(r, c, &nm); int d = (int)test_rng_int(r, 0, x->rank - 1);
        x->stride[d] = -x->stride[d] - 1;
        snprintf(t, sizeof t, "%s stride[%d] = %lld", nm, d, (long long)x->stride[d]);
        mut(c, x->shape[d] > 1 ? EXPECT_ERR : EXPECT_ANY, t); return; }
    case 34: { qsdpa_tensor *x = c->partial && chance(r, 0.3) ? &c->tlse : &c->tout; int d = (int)test_rng_int(r, 0, x->rank - 2);
        x->stride[d] = chance(r, 0.5) ? 0 : test_rng_int(r, 1, x->stride[d] > 1 ? x->stride[d] - 1 : 1);
        bool ov = fuzz_self_overlap(x);
        snprintf(t, sizeof t, "%s stride[%d] = %lld (overlap %d)", x == &c->tout ? "out" : "lse", d, (long long)x->stride[d], ov);
        mut(c, ov ? EXPECT_ERR : EXPECT_ANY, t); return; }
    case 35: { /* out (or lse) over an input's memory */
        int w = (int)test_rng_int(r, 0, 3);
        gbuf *g = w == 0 ? &c->q : w == 1 ? &c->k.codes : w == 2 ? &c->v.codes : &c->out;
        if (w == 3 && !c->partial) g = &c->q, w = 0;
        qsdpa_tensor *x = w == 3 ? &c->tlse : &c->tout;
        x->data = g->data;
        if (x == &c->tout) c->out_buf = g;
        snprintf(t, sizeof t, "%s placed on %s's memory", x == &c->tout ? "out" : "lse",
                 g == &c->q ? "q" : g == &c->k.codes ? "k->codes" : g == &c->v.codes ? "v->codes" : "out");
        mut(c, EXPECT_ERR, t); return; }
    case 36: c->prm.scale = (float[]){NAN, INFINITY, -INFINITY}[test_rng_int(r, 0, 2)];
        snprintf(t, sizeof t, "scale = %g", (double)c->prm.scale); mut(c, EXPECT_ERR, t); return;
    case 37:
        if (!c->partial) { c->prm.key_total = c->Lk + test_rng_int(r, 1, 4); c->prm.key_offset = chance(r, 0.5) ? 1 : 0;
            mut(c, EXPECT_ERR, "key_total/key_offset slice given to qsdpa_attention"); }
        else if (chance(r, 0.5)) { c->prm.key_total = c->Lk + 2; c->prm.key_offset = 3; mut(c, EXPECT_ERR, "key_offset + Lk > key_total"); }
        else { c->prm.key_offset = -1; mut(c, EXPECT_ERR, "key_offset = -1"); }
        return;
    case 38: c->tq.rank = chance(r, 0.5) ? 3 : 5; snprintf(t, sizeof t, "q rank %d", c->tq.rank); mut(c, EXPECT_ERR, t); return;
    case 39: { qsdpa_tensor *x = pick_tensor(r, c, &nm); int d = -1;
        for (int e = 0; e < x->rank - 1; e++) if (x->shape[e] > 1) d = e;
        if (d < 0) break;
        x->stride[d] = INT64_MAX;
        snprintf(t, sizeof t, "%s stride[%d] = INT64_MAX (extent overflows)", nm, d); mut(c, EXPECT_ERR, t); return; }
    case 40:
        c->v_is_k = true;
        mut(c, c->Dk == c->Dv ? EXPECT_OK : EXPECT_ERR, "v passed as the same descriptor as k (aliased inputs)"); return;
    case 41: { /* an input broadcast through stride 0 on an outer dim: not promised, but must be right if taken */
        int d = (int)test_rng_int(r, 0, 2);
        if (chance(r, 0.5)) { c->tq.stride[d] = 0; snprintf(t, sizeof t, "q stride[%d] = 0", d); }
        else { kvdata *x = pick_kv(r, c, &nm); x->t.codes.stride[d] = 0; x->t.scales.stride[d] = 0; x->t.biases.stride[d] = 0;
               snprintf(t, sizeof t, "%s codes/scales/biases stride[%d] = 0", nm, d); }
        mut(c, EXPECT_ANY, t); return; }
    }
    c->null_q = true;
    mut(c, EXPECT_ERR, "q = NULL (fallback)");
}

/* ---- running one attention case ------------------------------------------------------ */
static double spec_tol(qsdpa_dtype d) { return d == QSDPA_DTYPE_F32 ? 2e-5 : d == QSDPA_DTYPE_F16 ? 2e-3 : 1.6e-2; }

static const char *attn_fn(const acase *c, bool select) {
    return select ? "qsdpa_attention_select" : c->partial ? "qsdpa_attention_partial" : "qsdpa_attention";
}

static qsdpa_status call_attn(qsdpa_context *ctx, acase *c, bool select, const char **name) {
    c->prm.mask = c->use_mask ? &c->tmask : NULL;
    c->prm.sinks = c->use_sinks ? &c->tsinks : NULL;
    const qsdpa_attention_params *prm = c->null_params ? NULL : &c->prm;
    const qsdpa_tensor *q = c->null_q ? NULL : &c->tq;
    const qsdpa_qtensor *k = c->null_k ? NULL : &c->k.t, *v = c->null_v ? NULL : c->v_is_k ? &c->k.t : &c->v.t;
    qsdpa_tensor *out = c->null_out ? NULL : &c->tout, *lse = c->null_lse ? NULL : &c->tlse;
    if (c->null_ctx) ctx = NULL;
    if (select) return qsdpa_attention_select(ctx, q, k, v, prm, out, name);
    if (c->partial) return qsdpa_attention_partial(ctx, q, k, v, prm, out, lse);
    return qsdpa_attention(ctx, q, k, v, prm, out);
}

/* Every buffer of the case, for the "nothing changed" checks. */
static int case_buffers(acase *c, gbuf **g) {
    gbuf *all[] = {&c->q, &c->out, &c->lse, &c->mask, &c->sinks, &c->spare, &c->k.codes, &c->k.scales,
                   &c->k.biases, &c->v.codes, &c->v.scales, &c->v.biases};
    int n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->raw) g[n++] = all[i];
    return n;
}

static bool is_output_buf(const acase *c, const gbuf *g) { return g == c->out_buf || g == &c->lse; }

static void restore_all(acase *c) {
    gbuf *g[12];
    for (int i = 0, n = case_buffers(c, g); i < n; i++) gb_restore(g[i]);
}

/* On error: every byte of every buffer as before. On success: inputs as
 * before, guards intact, output bytes between elements as before. */
static void check_untouched(acase *c, const char *who, bool ok) {
    gbuf *g[12];
    for (int i = 0, n = case_buffers(c, g); i < n; i++) {
        if (ok && is_output_buf(c, g[i])) {
            if (!gb_guards_ok(g[i])) fuzz_fail("guard bytes around an output overwritten", "%s", who);
            continue;
        }
        if (!gb_unchanged(g[i]))
            fuzz_fail(ok ? "an input buffer was modified" : "a failing call wrote to a buffer", "%s (buffer %d)", who, i);
    }
}

/* Bytes of g outside the elements of t must equal the snapshot. */
static void check_between(const gbuf *g, const qsdpa_tensor *t, const char *who) {
    uint8_t *tmp = test_alloc(g->bytes);
    memcpy(tmp, g->data, g->bytes);
    size_t es = qsdpa_dtype_size(t->dtype), base = (size_t)((const uint8_t *)t->data - g->data);
    int64_t idx[4] = {0, 0, 0, 0};
    do memcpy(tmp + base + (size_t)fuzz_offset(t, idx) * es, g->snap + FUZZ_GUARD + base + (size_t)fuzz_offset(t, idx) * es, es);
    while (fuzz_next(t, idx));
    if (memcmp(tmp, g->snap + FUZZ_GUARD, g->bytes) != 0)
        fuzz_fail("wrote bytes between output elements (strided view)", "%s", who);
    free(tmp);
}

/* Max |a - b| over t's elements, a in `ref` (a copy of g's body), b live.
 * NaN anywhere counts as infinite; lse may hold equal infinities. */
static double tensor_diff(const gbuf *g, const uint8_t *ref, const qsdpa_tensor *t, bool *nan) {
    size_t base = (size_t)((const uint8_t *)t->data - g->data);
    double worst = 0.0;
    int64_t idx[4] = {0, 0, 0, 0};
    *nan = false;
    do {
        int64_t o = fuzz_offset(t, idx);
        double a = qsdpa_load_float(ref + base, t->dtype, o), b = qsdpa_load_float(t->data, t->dtype, o);
        if (isnan(a) || isnan(b)) { *nan = true; worst = INFINITY; continue; }
        if (a == b) continue;
        double d = fabs(a - b);
        if (d > worst) worst = d;
    } while (fuzz_next(t, idx));
    return worst;
}

static void check_lse(const acase *c, const uint8_t *ref, const char *who) {
    size_t base = (size_t)((const uint8_t *)c->tlse.data - c->lse.data);
    int64_t idx[4] = {0, 0, 0, 0};
    do {
        int64_t o = fuzz_offset(&c->tlse, idx);
        double a = ((const float *)(ref + base))[o], b = ((const float *)c->tlse.data)[o];
        bool bad = isnan(b) || (isinf(a) || isinf(b) ? a != b : fabs(a - b) > 1e-4 + 2e-5 * fabs(a));
        if (bad) {
            fuzz_fail("partial lse differs from the reference", "%s: lse[%lld,%lld,%lld] = %.9g, reference %.9g", who,
                      (long long)idx[0], (long long)idx[1], (long long)idx[2], b, a);
            return;
        }
    } while (fuzz_next(&c->tlse, idx));
}

/* Partial slices of the keys (auto kernel) merged by qsdpa_merge must equal
 * the unsplit reference output in `ref` (q's dtype, SPEC 4 tolerance). */
static void check_slices(test_rng *r, acase *c, const uint8_t *ref, double vmax) {
    int n = (int)test_rng_int(r, 2, 3);
    if (c->Lk < n) return;
    int64_t cut[4] = {0, 0, 0, c->Lk};
    cut[1] = test_rng_int(r, 1, c->Lk - n + 1);
    cut[2] = n == 3 ? test_rng_int(r, cut[1] + 1, c->Lk - 1) : c->Lk;
    qsdpa_tensor outs[3], lses[3];
    float *mem[6];
    qsdpa_status st = QSDPA_OK;
    for (int s = 0; s < n && st == QSDPA_OK; s++) {
        int64_t o = cut[s], len = cut[s + 1] - cut[s];
        qsdpa_qtensor k = c->k.t, v = c->v.t;
        qsdpa_qtensor *kv[2] = {&k, &v};
        for (int i = 0; i < 2; i++) {
            qsdpa_tensor *p[3] = {&kv[i]->codes, &kv[i]->scales, &kv[i]->biases};
            for (int j = 0; j < 3; j++) {
                if (p[j]->data) p[j]->data = (char *)p[j]->data + (size_t)(o * p[j]->stride[2]) * qsdpa_dtype_size(p[j]->dtype);
                p[j]->shape[2] = len;
            }
        }
        qsdpa_tensor m = c->tmask;
        qsdpa_attention_params prm = c->prm;
        prm.mask = NULL;
        if (c->use_mask) {
            if (m.shape[m.rank - 1] == c->Lk && c->Lk > 1) {
                m.data = (char *)m.data + (size_t)(o * m.stride[m.rank - 1]) * qsdpa_dtype_size(m.dtype);
                m.shape[m.rank - 1] = len;
            }
            prm.mask = &m;
        }
        prm.sinks = s == 0 && c->use_sinks ? &c->tsinks : NULL;
        prm.key_offset = o;
        prm.key_total = c->Lk;
        mem[2 * s] = test_alloc((size_t)(c->B * c->Hq * c->Lq * c->Dv) * 4);
        mem[2 * s + 1] = test_alloc((size_t)(c->B * c->Hq * c->Lq) * 4);
        test_poison(mem[2 * s], (size_t)(c->B * c->Hq * c->Lq * c->Dv) * 4);
        outs[s] = qsdpa_tensor_4d(mem[2 * s], QSDPA_DTYPE_F32, c->B, c->Hq, c->Lq, c->Dv);
        int64_t ls[3] = {c->B, c->Hq, c->Lq};
        lses[s] = qsdpa_tensor_make(mem[2 * s + 1], QSDPA_DTYPE_F32, 3, ls);
        st = qsdpa_attention_partial(ctx_auto, &c->tq, &k, &v, &prm, &outs[s], &lses[s]);
        if (st != QSDPA_OK)
            fuzz_fail("partial slice of a valid call rejected", "slice [%lld, %lld): %s", (long long)o,
                      (long long)(o + len), qsdpa_last_error());
    }
    if (st == QSDPA_OK) {
        size_t bytes = (size_t)(c->B * c->Hq * c->Lq * c->Dv) * qsdpa_dtype_size(c->qd);
        uint8_t *merged = test_alloc(bytes);
        test_poison(merged, bytes);
        qsdpa_tensor mo = qsdpa_tensor_4d(merged, c->qd, c->B, c->Hq, c->Lq, c->Dv);
        if (qsdpa_merge(ctx_auto, n, outs, lses, &mo, NULL) != QSDPA_OK) {
            fuzz_fail("merge of valid partials rejected", "%s", qsdpa_last_error());
        } else {
            double worst = 0.0;
            int64_t idx[4] = {0, 0, 0, 0};
            size_t base = (size_t)((const uint8_t *)c->tout.data - c->out_buf->data);
            do {
                double a = qsdpa_load_float(ref + base, c->qd, fuzz_offset(&c->tout, idx));
                double b = qsdpa_load_float(merged, c->qd, fuzz_offset(&mo, idx));
                double d = isnan(a) || isnan(b) ? INFINITY : fabs(a - b);
                worst = d > worst ? d : worst;
            } while (fuzz_next(&mo, idx));
            /* two roundings to q's dtype (merge output, reference) and the f32 partials */
            double tol = 2.0 * spec_tol(c->qd) * vmax + 1e-30;
            if (!(worst <= tol))
                fuzz_fail("partial slices + merge differ from the unsplit call", "%d slices at %lld,%lld: max err %.3g > %.3g (max|V| %.3g)",
                          n, (long long)cut[1], (long long)cut[2], worst, tol, vmax);
        }
        free(merged);
    }
    for (int s = 0; s < 2 * n; s++) free(mem[s]);
}

static void run_attention_case(test_rng *r, int64_t index, bool verbose) {
    acase c;
    gen_case(r, &c);
    if (chance(r, 0.45)) attn_mutate(r, &c);
    describe(&c);
    if (verbose) fprintf(stderr, "case %lld: %s\n", (long long)index, fuzz_case_desc);
    gbuf *g[12];
    for (int i = 0, n = case_buffers(&c, g); i < n; i++) gb_snapshot(g[i]);

    /* 1. the reference */
    qsdpa_status st_ref = call_attn(ctx_ref, &c, false, NULL);
    char msg_ref[512];
    snprintf(msg_ref, sizeof msg_ref, "%s", qsdpa_last_error());
    if (st_ref != QSDPA_OK) fuzz_check_message(attn_fn(&c, false), st_ref);
    check_untouched(&c, "reference kernel", st_ref == QSDPA_OK);
    if (c.expect == EXPECT_ERR && st_ref == QSDPA_OK)
        fuzz_fail("invalid call accepted", "%s returned QSDPA_OK for: %s", attn_fn(&c, false), c.mut);
    if (c.expect == EXPECT_OK && st_ref != QSDPA_OK)
        fuzz_fail("valid call rejected", "%s: %s", qsdpa_status_string(st_ref), msg_ref);

    uint8_t *ref_out = NULL, *ref_lse = NULL;
    double vmax = 0.0;
    if (st_ref == QSDPA_OK) {
        check_between(c.out_buf, &c.tout, "reference kernel");
        ref_out = test_alloc(c.out_buf->bytes);
        memcpy(ref_out, c.out_buf->data, c.out_buf->bytes);
        if (c.partial) {
            check_between(&c.lse, &c.tlse, "reference kernel (lse)");
            ref_lse = test_alloc(c.lse.bytes);
            memcpy(ref_lse, c.lse.data, c.lse.bytes);
        }
        vmax = kv_max_abs(c.v_is_k ? &c.k.t : &c.v.t);
        bool nan;
        tensor_diff(c.out_buf, ref_out, &c.tout, &nan);
        if (nan) fuzz_fail("reference output has NaN on valid input", "max|V| %.3g", vmax);
    }
    restore_all(&c);

    /* 2. select (auto), then the auto kernel and every forced CPU kernel */
    if (!c.partial) {
        const char *name = NULL;
        qsdpa_status s = call_attn(ctx_auto, &c, true, &name);
        if (s != QSDPA_OK) fuzz_check_message("qsdpa_attention_select", s);
        if (s != st_ref)
            fuzz_fail("select and the reference disagree on validity", "select %s (%s), reference %s",
                      qsdpa_status_string(s), qsdpa_last_error(), qsdpa_status_string(st_ref));
        if (s == QSDPA_OK && !name) fuzz_fail("select returned OK without a name", "-");
        check_untouched(&c, "select", false);
        restore_all(&c);
    }
    double tol = spec_tol(c.partial ? QSDPA_DTYPE_F32 : c.qd) * vmax;
    for (int kx = -1; kx < n_forced; kx++) {
        qsdpa_context *ctx = kx < 0 ? ctx_auto : ctx_forced[kx];
        char who[96];
        snprintf(who, sizeof who, "kernel %s", kx < 0 ? "auto" : forced_name[kx]);
        qsdpa_status s = call_attn(ctx, &c, false, NULL);
        if (s != QSDPA_OK) fuzz_check_message(attn_fn(&c, false), s);
        check_untouched(&c, who, s == QSDPA_OK);
        if (s != QSDPA_OK && s == st_ref) { restore_all(&c); continue; }
        if (s != QSDPA_OK && kx >= 0 && st_ref == QSDPA_OK && s == QSDPA_ERR_UNSUPPORTED) {
            restore_all(&c); /* a forced kernel may not serve the request (decode: Lq <= 16) */
            continue;
        }
        if (s != st_ref) {
            fuzz_fail("kernel and reference disagree on the status", "%s: %s (%s), reference %s (%s)", who,
                      qsdpa_status_string(s), qsdpa_last_error(), qsdpa_status_string(st_ref), msg_ref);
            restore_all(&c);
            continue;
        }
        check_between(c.out_buf, &c.tout, who);
        bool nan;
        double err = tensor_diff(c.out_buf, ref_out, &c.tout, &nan);
        if (nan) fuzz_fail("NaN in the output of a valid call", "%s (reference has none)", who);
        else if (!(err <= tol))
            fuzz_fail("kernel differs from the reference beyond SPEC 4", "%s: max err %.3g > tol %.3g (max|V| %.3g, %.3g units)",
                      who, err, tol, vmax, vmax > 0 ? err / vmax : err);
        if (c.partial) {
            check_between(&c.lse, &c.tlse, who);
            check_lse(&c, ref_lse, who);
        }
        restore_all(&c);
    }
    if (st_ref == QSDPA_OK && !c.partial && !c.v_is_k && !c.null_params && c.mut[0] == '\0' && chance(r, 0.3))
        check_slices(r, &c, ref_out, vmax);
    free(ref_out);
    free(ref_lse);
    acase_free(&c);
}

/* ---- qsdpa_quantize / qsdpa_dequantize -------------------------------------------------- */

/* One of the invalid formats of SPEC 5. */
static qsdpa_format bad_format(test_rng *r) {
    switch (test_rng_int(r, 0, 8)) {
    case 0: return (qsdpa_format){(qsdpa_mode)(chance(r, 0.5) ? 5 : -1), 4, 64, QSDPA_DTYPE_F32, 0};
    case 1: return (qsdpa_format){QSDPA_MODE_AFFINE, (int)test_rng_int(r, 0, 1) * 6 + 1, 64, QSDPA_DTYPE_F32, 0}; /* 1, 7 */
    case 2: return (qsdpa_format){QSDPA_MODE_AFFINE, 4, chance(r, 0.5) ? 16 : 0, QSDPA_DTYPE_F32, 0};
    case 3: return (qsdpa_format){QSDPA_MODE_MXFP4, 4, 16, QSDPA_DTYPE_F32, 0};
    case 4: return (qsdpa_format){QSDPA_MODE_MXFP8, 4, 32, QSDPA_DTYPE_F32, 0};
    case 5: return (qsdpa_format){QSDPA_MODE_NVFP4, 4, 16, QSDPA_DTYPE_F32, -1.0f};
    case 6: return (qsdpa_format){QSDPA_MODE_PLAIN, 16, 0, QSDPA_DTYPE_F32, 0};
    case 7: return (qsdpa_format){QSDPA_MODE_AFFINE, 4, 32, QSDPA_DTYPE_F32, 1.0f};
    default: return (qsdpa_format){QSDPA_MODE_PLAIN, 8, 0, QSDPA_DTYPE_BOOL, 0};
    }
}

typedef struct rcase {
    qsdpa_format f;
    qsdpa_dtype xd, sd, od;
    int64_t rows, dim, words, groups;
    gbuf x, codes, scales, biases, out, spare;
    const void *px, *pscales, *pbiases; /* what is passed (NULL or spare allowed) */
    uint32_t *pcodes;
    void *pout;
    bool null_format;
    int expect;
    char mut[160];
} rcase;

static int64_t plain_dim(test_rng *r, const qsdpa_format *f) {
    int64_t d = test_rng_int(r, 1, 96);
    return f->plain_dtype == QSDPA_DTYPE_F32 ? d : 2 * ((d + 1) / 2); /* rows fill whole words */
}

static void rows_mutate(test_rng *r, rcase *c, bool deq) {
    const char *m = NULL;
    c->expect = EXPECT_ERR;
    switch (test_rng_int(r, 0, 13)) {
    case 0: c->f = bad_format(r); m = "invalid format"; break;
    case 1: c->null_format = true; m = "format = NULL"; break;
    case 2: if (deq) c->pout = NULL; else c->px = NULL; m = deq ? "out = NULL" : "x = NULL"; break;
    case 3: c->pcodes = NULL; m = "codes = NULL"; break;
    case 4:
        if (c->f.mode == QSDPA_MODE_PLAIN) { c->pscales = c->spare.data; m = "scales given for plain"; }
        else { c->pscales = NULL; m = "scales = NULL"; }
        break;
    case 5:
        if (c->f.mode == QSDPA_MODE_AFFINE) { c->pbiases = NULL; m = "biases = NULL (affine)"; }
        else { c->pbiases = c->spare.data; m = "biases given (not affine)"; }
        break;
    case 6: if (deq) c->od = (qsdpa_dtype)(chance(r, 0.5) ? QSDPA_DTYPE_U8 : 77); else c->xd = (qsdpa_dtype)(chance(r, 0.5) ? QSDPA_DTYPE_U32 : 77);
        m = deq ? "out_dtype invalid" : "x_dtype invalid"; break;
    case 7:
        if (c->f.mode == QSDPA_MODE_PLAIN) { c->expect = EXPECT_ANY; m = "scale_dtype ignored for plain"; c->sd = QSDPA_DTYPE_U32; }
        else { c->sd = c->f.mode == QSDPA_MODE_AFFINE ? QSDPA_DTYPE_U8 : QSDPA_DTYPE_F16; m = "scale_dtype wrong for mode"; }
        break;
    case 8: c->rows = chance(r, 0.5) ? 0 : -3; m = "rows <= 0"; break;
    case 9: c->dim = chance(r, 0.5) ? 0 : -c->dim; m = "dim <= 0"; break;
    case 10:
        if (c->f.group > 0) { c->dim += c->f.group / 2; m = "dim not a multiple of the group"; }
        else if (c->f.plain_dtype != QSDPA_DTYPE_F32) { c->dim += 1; m = "plain 16-bit dim odd (not whole words)"; }
        else { c->dim = INT64_MAX; m = "dim = INT64_MAX"; }
        break;
    case 11: c->rows = INT64_MAX; m = "rows * dim * 4 overflows size_t"; break;
    case 12: c->dim = (INT64_MAX / 2) & ~(int64_t)127; m = "dim huge (row bits overflow)"; break;
    default: c->f.mode = QSDPA_MODE_NVFP4; c->f.bits = 4; c->f.group = 16; c->f.global_scale = NAN; m = "nvfp4 global_scale NaN"; break;
    }
    snprintf(c->mut, sizeof c->mut, "%s", m);
}

static void rows_describe(const rcase *c, const char *fn) {
    char f[32];
    qsdpa_format_string(&c->f, f, sizeof f);
    snprintf(fuzz_case_desc, sizeof fuzz_case_desc,
             "%s format %s (mode %d bits %d group %d G %g) x %s scales %s out %s rows %lld dim %lld%s%s", fn, f,
             (int)c->f.mode, c->f.bits, c->f.group, (double)c->f.global_scale, qsdpa_dtype_name(c->xd),
             qsdpa_dtype_name(c->sd), qsdpa_dtype_name(c->od), (long long)c->rows, (long long)c->dim,
             c->mut[0] ? " FAULT: " : "", c->mut);
}

static void rows_check(rcase *c, const char *fn, qsdpa_status st, gbuf **outs, int nout) {
    if (st != QSDPA_OK) fuzz_check_message(fn, st);
    if (c->expect == EXPECT_ERR && st == QSDPA_OK) fuzz_fail("invalid call accepted", "%s returned QSDPA_OK for: %s", fn, c->mut);
    if (c->expect == EXPECT_OK && st != QSDPA_OK) fuzz_fail("valid call rejected", "%s: %s", fn, qsdpa_last_error());
    gbuf *all[6] = {&c->x, &c->codes, &c->scales, &c->biases, &c->out, &c->spare};
    for (int i = 0; i < 6; i++) {
        bool is_out = false;
        for (int j = 0; j < nout; j++) is_out |= outs[j] == all[i];
        if (st == QSDPA_OK && is_out) {
            if (!gb_guards_ok(all[i])) fuzz_fail("guard bytes around an output overwritten", "%s buffer %d", fn, i);
        } else if (!gb_unchanged(all[i])) {
            fuzz_fail(st == QSDPA_OK ? "an input buffer was modified" : "a failing call wrote to a buffer", "%s buffer %d", fn, i);
        }
    }
}

/* Round-trip error bound per group (generous; the golden tests pin the bits). */
static void rows_roundtrip(const rcase *c, const float *x, const float *y) {
    const qsdpa_format *f = &c->f;
    int64_t g = f->group > 0 ? f->group : c->dim;
    double eps = c->sd == QSDPA_DTYPE_F16 ? 0x1p-11 : c->sd == QSDPA_DTYPE_BF16 ? 0x1p-8 : 0x1p-24;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t s = 0; s < c->dim; s += g) {
            double lo = INFINITY, hi = -INFINITY, amax = 0.0, err = 0.0;
            for (int64_t j = s; j < s + g; j++) {
                double v = x[r * c->dim + j];
                lo = v < lo ? v : lo, hi = v > hi ? v : hi, amax = fabs(v) > amax ? fabs(v) : amax;
                double e = isnan(y[r * c->dim + j]) ? INFINITY : fabs(y[r * c->dim + j] - v);
                err = e > err ? e : err;
            }
            double bound;
            if (f->mode == QSDPA_MODE_PLAIN) bound = amax * (f->plain_dtype == QSDPA_DTYPE_F32 ? 0 : f->plain_dtype == QSDPA_DTYPE_F16 ? 0x1p-11 : 0x1p-8);
            else if (f->mode == QSDPA_MODE_AFFINE) {
                double step = (hi - lo) / ((1 << f->bits) - 1);
                bound = 1.5 * step + (1 << f->bits) * step * eps + 4.0 * eps * amax + 1e-6 * amax;
            } else if (f->mode == QSDPA_MODE_MXFP8) bound = 0.07 * amax;
            else bound = 0.5 * amax;
            if (!(err <= bound + 1e-30)) {
                fuzz_fail("quantize/dequantize round trip error too large", "row %lld group at %lld: err %.3g > bound %.3g (range [%.3g, %.3g])",
                          (long long)r, (long long)s, err, bound, lo, hi);
                return;
            }
        }
}

static void run_rows_case(test_rng *r, int64_t index, bool verbose) {
    rcase c;
    memset(&c, 0, sizeof c);
    c.f = random_format(r);
    c.xd = any_float(r);
    c.od = any_float(r);
    c.sd = c.f.mode == QSDPA_MODE_AFFINE ? any_float(r) : QSDPA_DTYPE_U8;
    c.rows = test_rng_int(r, 1, 5);
    c.dim = c.f.mode == QSDPA_MODE_PLAIN ? plain_dim(r, &c.f) : random_dim(r, &c.f);
    c.words = c.f.mode == QSDPA_MODE_PLAIN ? c.dim * c.f.bits / 32 : 0;
    if (c.f.mode != QSDPA_MODE_PLAIN) {
        qsdpa_format_row_words(&c.f, c.dim, &c.words);
        qsdpa_format_row_scales(&c.f, c.dim, &c.groups);
    }
    size_t n = (size_t)(c.rows * c.dim);
    gb_alloc(&c.x, n * qsdpa_dtype_size(c.xd));
    gb_alloc(&c.codes, (size_t)(c.rows * c.words) * 4);
    gb_alloc(&c.out, n * 4);
    gb_alloc(&c.spare, 4096);
    if (c.groups) gb_alloc(&c.scales, (size_t)(c.rows * c.groups) * qsdpa_dtype_size(c.sd));
    if (c.f.mode == QSDPA_MODE_AFFINE) gb_alloc(&c.biases, (size_t)(c.rows * c.groups) * qsdpa_dtype_size(c.sd));
    double sigma = exp(-2.0 + 3.0 * test_rng_uniform(r));
    test_fill_normal(r, c.x.data, c.xd, (int64_t)n, sigma);
    if (chance(r, 0.1)) /* a constant group */
        for (int64_t j = 0; j < (c.f.group > 0 ? c.f.group : c.dim); j++) qsdpa_store_float(c.x.data, c.xd, j, (float)sigma);
    float *xf = test_alloc(n * sizeof(float)), *yf = test_alloc(n * sizeof(float));
    double amax = 0.0;
    for (size_t i = 0; i < n; i++) {
        xf[i] = qsdpa_load_float(c.x.data, c.xd, (int64_t)i);
        amax = fabs(xf[i]) > amax ? fabs(xf[i]) : amax;
    }
    if (c.f.mode == QSDPA_MODE_NVFP4 && c.f.global_scale != 0.0f) c.f.global_scale = (float)(amax * (1.0 + test_rng_uniform(r)));
    c.px = c.x.data, c.pcodes = (uint32_t *)c.codes.data, c.pscales = c.scales.data, c.pbiases = c.biases.data;
    c.pout = c.out.data;
    c.expect = EXPECT_OK;
    bool deq_only = chance(r, 0.3);
    if (!deq_only && chance(r, 0.45)) rows_mutate(r, &c, false);
    rows_describe(&c, "qsdpa_quantize");
    if (verbose) fprintf(stderr, "case %lld: %s\n", (long long)index, fuzz_case_desc);
    gbuf *all[6] = {&c.x, &c.codes, &c.scales, &c.biases, &c.out, &c.spare};
    for (int i = 0; i < 6; i++) gb_snapshot(all[i]);
    gbuf *qouts[3] = {&c.codes, &c.scales, &c.biases};
    qsdpa_status st = qsdpa_quantize(c.null_format ? NULL : &c.f, c.px, c.xd, c.rows, c.dim, c.pcodes, (void *)c.pscales,
                                     (void *)c.pbiases, c.sd);
    rows_check(&c, "qsdpa_quantize", st, qouts, 3);
    if (st == QSDPA_OK && !c.mut[0]) {
        for (int i = 0; i < 6; i++) gb_snapshot(all[i]);
        if (chance(r, 0.45)) rows_mutate(r, &c, true);
        rows_describe(&c, "qsdpa_dequantize");
        gbuf *douts[1] = {&c.out};
        qsdpa_format f32 = c.f;
        st = qsdpa_dequantize(c.null_format ? NULL : &c.f, c.pcodes, c.pscales, c.pbiases, c.sd, c.rows, c.dim, c.pout,
                              c.od == QSDPA_DTYPE_F32 || c.mut[0] ? c.od : QSDPA_DTYPE_F32);
        rows_check(&c, "qsdpa_dequantize", st, douts, 1);
        if (st == QSDPA_OK && !c.mut[0]) {
            memcpy(yf, c.out.data, n * sizeof(float));
            c.f = f32;
            rows_roundtrip(&c, xf, yf);
        }
    }
    free(xf);
    free(yf);
    for (int i = 0; i < 6; i++) gb_free(all[i]);
}

/* ---- qsdpa_merge ------------------------------------------------------------------------ */
static void run_merge_case(test_rng *r, int64_t index, bool verbose) {
    int n = (int)test_rng_int(r, 1, 4);
    int64_t sh[4] = {test_rng_int(r, 1, 2), test_rng_int(r, 1, 3), test_rng_int(r, 1, 5), test_rng_int(r, 1, 40)};
    gbuf go[4], gl[4], gout, glse, spare;
    memset(go, 0, sizeof go), memset(gl, 0, sizeof gl), memset(&glse, 0, sizeof glse);
    qsdpa_tensor outs[4], lses[4], out, lse;
    for (int i = 0; i < n; i++) {
        outs[i] = alloc_tensor(r, &go[i], QSDPA_DTYPE_F32, 4, sh, chance(r, 0.3));
        fill_tensor(r, &outs[i], 1.0);
        lses[i] = alloc_tensor(r, &gl[i], QSDPA_DTYPE_F32, 3, sh, chance(r, 0.3));
        int64_t idx[4] = {0, 0, 0, 0};
        do ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)] = chance(r, 0.2) ? -INFINITY : (float)(3.0 * test_rng_normal(r));
        while (fuzz_next(&lses[i], idx));
    }
    qsdpa_dtype od = any_float(r);
    out = alloc_tensor(r, &gout, od, 4, sh, chance(r, 0.3));
    bool with_lse = chance(r, 0.5);
    if (with_lse) lse = alloc_tensor(r, &glse, QSDPA_DTYPE_F32, 3, sh, chance(r, 0.3));
    gb_alloc(&spare, 64);
    int expect = EXPECT_OK, nn = n;
    bool null_ctx = false, null_outs = false, null_lses = false, null_out = false;
    char m[120] = "";
    if (chance(r, 0.45)) {
        expect = EXPECT_ERR;
        int i = (int)test_rng_int(r, 0, n - 1), d = (int)test_rng_int(r, 0, 2);
        switch (test_rng_int(r, 0, 13)) {
        case 0: nn = chance(r, 0.5) ? 0 : -1; snprintf(m, sizeof m, "n = %d", nn); break;
        case 1: null_ctx = true; snprintf(m, sizeof m, "ctx = NULL"); break;
        case 2: null_outs = true; snprintf(m, sizeof m, "outs = NULL"); break;
        case 3: null_lses = true; snprintf(m, sizeof m, "lses = NULL"); break;
        case 4: null_out = true; snprintf(m, sizeof m, "out = NULL"); break;
        case 5: outs[i].shape[d] += 1; snprintf(m, sizeof m, "outs[%d].shape[%d] + 1", i, d); break;
        case 6: lses[i].shape[d] += 1; snprintf(m, sizeof m, "lses[%d].shape[%d] + 1", i, d); break;
        case 7: outs[i].dtype = QSDPA_DTYPE_F16; snprintf(m, sizeof m, "outs[%d].dtype f16", i); break;
        case 8: lses[i].dtype = QSDPA_DTYPE_BF16; snprintf(m, sizeof m, "lses[%d].dtype bf16", i); break;
        case 9: out.dtype = QSDPA_DTYPE_U8; snprintf(m, sizeof m, "out.dtype u8"); break;
        case 10: out.data = outs[i].data; out.dtype = QSDPA_DTYPE_F32; memcpy(out.stride, outs[i].stride, sizeof out.stride);
            snprintf(m, sizeof m, "out on outs[%d]'s memory", i); break;
        case 11:
            if (!with_lse) { lse = alloc_tensor(r, &glse, QSDPA_DTYPE_F32, 3, sh, false); with_lse = true; }
            if (chance(r, 0.5)) { lse.data = out.data; snprintf(m, sizeof m, "lse_out on out's memory"); }
            else { lse.data = lses[i].data; snprintf(m, sizeof m, "lse_out on lses[%d]'s memory", i); }
            break;
        case 12: { qsdpa_tensor *t = chance(r, 0.5) ? &outs[i] : &out; t->stride[3] = 2;
            expect = sh[3] > 1 ? EXPECT_ERR : EXPECT_ANY; snprintf(m, sizeof m, "inner stride 2"); break; }
        default: out.stride[d] = 0; expect = fuzz_self_overlap(&out) ? EXPECT_ERR : EXPECT_ANY;
            snprintf(m, sizeof m, "out.stride[%d] = 0", d); break;
        }
    }
    snprintf(fuzz_case_desc, sizeof fuzz_case_desc, "qsdpa_merge n=%d shape [%lld,%lld,%lld,%lld] out %s lse_out %d%s%s", n,
             (long long)sh[0], (long long)sh[1], (long long)sh[2], (long long)sh[3], qsdpa_dtype_name(od), with_lse,
             m[0] ? " FAULT: " : "", m);
    if (verbose) fprintf(stderr, "case %lld: %s\n", (long long)index, fuzz_case_desc);
    gbuf *all[11] = {&gout, &glse, &spare, &go[0], &go[1], &go[2], &go[3], &gl[0], &gl[1], &gl[2], &gl[3]};
    for (int i = 0; i < 11; i++) gb_snapshot(all[i]);
    qsdpa_status st = qsdpa_merge(null_ctx ? NULL : ctx_auto, nn, null_outs ? NULL : outs, null_lses ? NULL : lses,
                                  null_out ? NULL : &out, with_lse ? &lse : NULL);
    if (st != QSDPA_OK) fuzz_check_message("qsdpa_merge", st);
    if (expect == EXPECT_ERR && st == QSDPA_OK) fuzz_fail("invalid call accepted", "qsdpa_merge returned QSDPA_OK for: %s", m);
    if (expect == EXPECT_OK && st != QSDPA_OK) fuzz_fail("valid call rejected", "qsdpa_merge: %s", qsdpa_last_error());
    for (int i = 0; i < 11; i++) {
        bool is_out = st == QSDPA_OK && (all[i] == &gout || all[i] == &glse);
        if (is_out ? !gb_guards_ok(all[i]) : !gb_unchanged(all[i]))
            fuzz_fail(is_out ? "guard bytes around an output overwritten"
                             : st == QSDPA_OK ? "an input buffer was modified" : "a failing call wrote to a buffer",
                      "qsdpa_merge buffer %d", i);
    }
    if (st == QSDPA_OK && expect != EXPECT_ERR) { /* the double-precision oracle */
        double rel = od == QSDPA_DTYPE_F32 ? 0x1p-23 : od == QSDPA_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
        int64_t idx[4] = {0, 0, 0, 0};
        bool reported = false;
        do {
            double mx = -INFINITY, tot = 0.0, acc = 0.0;
            for (int i = 0; i < n; i++) mx = fmax(mx, ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)]);
            for (int i = 0; i < n; i++) {
                double l = ((float *)lses[i].data)[fuzz_offset(&lses[i], idx)];
                double w = mx == -INFINITY ? 1.0 : exp(l - mx);
                tot += w;
                acc += w * ((float *)outs[i].data)[fuzz_offset(&outs[i], idx)];
            }
            double want = mx == -INFINITY ? acc : acc / tot, got = qsdpa_load_float(out.data, od, fuzz_offset(&out, idx));
            if (!(fabs(got - want) <= rel * fabs(want) + 1e-6) && !reported) {
                fuzz_fail("merge differs from the double-precision oracle", "at [%lld,%lld,%lld,%lld]: %.9g, want %.9g",
                          (long long)idx[0], (long long)idx[1], (long long)idx[2], (long long)idx[3], got, want);
                reported = true;
            }
            if (with_lse && idx[3] == 0) {
                double wl = mx == -INFINITY ? -INFINITY : mx + log(tot);
                double gl2 = ((float *)lse.data)[fuzz_offset(&lse, idx)];
                if (!(gl2 == wl || fabs(gl2 - wl) <= 1e-6 * (1.0 + fabs(wl))) && !reported) {
                    fuzz_fail("merge lse differs from the oracle", "lse %.9g, want %.9g", gl2, wl);
                    reported = true;
                }
            }
        } while (fuzz_next(&out, idx));
    }
    for (int i = 0; i < 11; i++) gb_free(all[i]);
}

/* ---- main ---------------------------------------------------------------------------------- */
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void) {
    fuzz_seed = test_seed();
    const char *env = getenv("QSDPA_FUZZ_SECONDS"), *one = getenv("QSDPA_FUZZ_CASE");
    double budget = env ? atof(env) : 20.0;
    int64_t only = one ? (int64_t)strtoll(one, NULL, 0) : -1;
    make_contexts();
    fprintf(stderr, "test_random_api: budget %.0f s (QSDPA_FUZZ_SECONDS), kernels: cpu.reference, auto", budget);
    for (int i = 0; i < n_forced; i++) fprintf(stderr, ", %s", forced_name[i]);
    fprintf(stderr, "\n");
    double t0 = now_seconds();
    int64_t counts[3] = {0, 0, 0};
    for (int64_t i = only >= 0 ? only : 0;; i++) {
        fuzz_case_index = i;
        test_rng r;
        test_rng_init(&r, fuzz_seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
        test_rng_next(&r);
        int64_t kind = test_rng_int(&r, 0, 99);
        if (kind < 70) run_attention_case(&r, i, only >= 0), counts[0]++;
        else if (kind < 85) run_rows_case(&r, i, only >= 0), counts[1]++;
        else run_merge_case(&r, i, only >= 0), counts[2]++;
        if (only >= 0 || now_seconds() - t0 > budget) break;
    }
    fprintf(stderr, "test_random_api: %lld attention, %lld quantize/dequantize, %lld merge cases in %.1f s\n",
            (long long)counts[0], (long long)counts[1], (long long)counts[2], now_seconds() - t0);
    fuzz_report();
    qsdpa_context_destroy(ctx_ref);
    qsdpa_context_destroy(ctx_auto);
    for (int i = 0; i < n_forced; i++) qsdpa_context_destroy(ctx_forced[i]);
    return test_finish("test_random_api");
}
