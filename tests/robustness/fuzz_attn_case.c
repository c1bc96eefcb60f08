/* Drawing an attention case (fuzz_attn.h): shapes, formats, layouts, masks,
 * sinks, causal/window, partial slices, and the deliberate faults with this
 * file's own verdict on their validity (SPEC 5, qsdpa.h). */
#include "fuzz_attn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t code_esize(const qsdpa_format *f) {
    return f->mode == QSDPA_MODE_PLAIN ? qsdpa_dtype_size(f->plain_dtype) : 4;
}

/* Rows are quantized (qsdpa_quantize, one row at a time, into the strided
 * buffers) from sigma * N(0,1) + offset values; rows Lk..cap-1 and padding
 * keep the poison, so a kernel reading past the view produces NaN. channels:
 * null, or the outlier channels of K (kv_channels). */
static void kv_build(test_rng *r, kvdata *x, const qsdpa_format *f, qsdpa_dtype scale_dtype, int64_t B, int64_t H,
                     int64_t Lk, int64_t cap, int64_t dim, const int *ord, bool pad, kv_channels *channels) {
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
                if (channels) /* every key's value there: the head's level, +-10% */
                    for (int i = 0; i < channels->count; i++)
                        row[channels->dim[i] % dim] =
                            (float)(channels->level[i] * sigma * (1.0 + 0.1 * (2.0 * test_rng_uniform(&channels->rng) - 1.0)));
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

/* Row (b, h, l) of a valid view as floats, in `row` (t->dim values). With f32_affine,
 * affine codes are dequantized from f32 copies of the row's scales and biases, as the
 * attention kernels compute (qsdpa_dequantize rounds code x scale to a 16-bit scale
 * dtype first, as mx.dequantize does); `scratch` then holds 2 * groups floats. */
void kv_row(const qsdpa_qtensor *t, int64_t b, int64_t h, int64_t l, float *row, bool f32_affine, float *scratch) {
    const uint8_t *cp = (const uint8_t *)t->codes.data +
                        (size_t)(b * t->codes.stride[0] + h * t->codes.stride[1] + l * t->codes.stride[2]) * code_esize(&t->format);
    if (t->format.mode == QSDPA_MODE_PLAIN) {
        for (int64_t d = 0; d < t->dim; d++) row[d] = qsdpa_load_float(cp, t->format.plain_dtype, d);
        return;
    }
    size_t so = (size_t)(b * t->scales.stride[0] + h * t->scales.stride[1] + l * t->scales.stride[2]) *
                qsdpa_dtype_size(t->scales.dtype);
    const uint8_t *sp = (const uint8_t *)t->scales.data + so, *bp = t->biases.data ? (const uint8_t *)t->biases.data + so : NULL;
    qsdpa_dtype sdt = t->scales.dtype;
    if (f32_affine && t->format.mode == QSDPA_MODE_AFFINE) {
        const int64_t groups = t->dim / t->format.group;
        for (int64_t gi = 0; gi < groups; gi++)
            scratch[gi] = qsdpa_load_float(sp, sdt, gi), scratch[groups + gi] = qsdpa_load_float(bp, sdt, gi);
        sp = (const uint8_t *)scratch, bp = (const uint8_t *)(scratch + groups), sdt = QSDPA_DTYPE_F32;
    }
    qsdpa_dequantize(&t->format, (const uint32_t *)cp, sp, bp, sdt, 1, t->dim, row, QSDPA_DTYPE_F32);
}

/* max |V| over the rows of a valid view (SPEC 4's unit). */
double kv_max_abs(const qsdpa_qtensor *t) {
    float *row = test_alloc((size_t)t->dim * sizeof(float));
    double m = 0.0;
    for (int64_t b = 0; b < t->codes.shape[0]; b++)
        for (int64_t h = 0; h < t->codes.shape[1]; h++)
            for (int64_t l = 0; l < t->codes.shape[2]; l++) {
                kv_row(t, b, h, l, row, false, NULL);
                for (int64_t d = 0; d < t->dim; d++) m = fabs(row[d]) > m ? fabs(row[d]) : m;
            }
    free(row);
    return m;
}

/* Mask of rank 1..4 broadcastable to [B, Hq, Lq, Lk]: each aligned dim full or
 * 1, sometimes full through stride 0. Bool (p(false) varies, so fully masked
 * rows occur) or additive f32/f16/bf16 in [-8, 2]-ish. */
void gen_mask(test_rng *r, acase *c) {
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
    /* Rarely, -inf entries (SPEC 3: added as given), so that some rows are -inf on every key. */
    double pinf = dt != QSDPA_DTYPE_BOOL && chance(r, 0.05) ? 0.6 : 0.0;
    c->mask_inf = pinf > 0.0;
    int64_t idx[4] = {0, 0, 0, 0};
    do {
        int64_t o = fuzz_offset(&c->tmask, idx);
        if (dt == QSDPA_DTYPE_BOOL) c->mask.data[o] = chance(r, pfalse) ? 0 : (uint8_t)test_rng_int(r, 1, 255);
        else if (chance(r, pinf)) qsdpa_store_float(c->tmask.data, dt, o, -INFINITY);
        else qsdpa_store_float(c->tmask.data, dt, o, (float)(2.0 * test_rng_normal(r) - (chance(r, 0.2) ? 6.0 : 0.0)));
    } while (fuzz_next(&c->tmask, idx));
    c->use_mask = true;
}

bool fuzz_gpu_shapes;

/* dim rounded up to a multiple of f's group (a valid head dim for f). */
static int64_t fit_dim(const qsdpa_format *f, int64_t dim) {
    return f->group > 0 ? (dim + f->group - 1) / f->group * f->group : dim;
}

/* Shapes of real models, for the device test: the head dims and GQA ratios
 * that have fast rows (MLA's 576/512 too), K and V in one format most of the
 * time, f16/bf16 q, contexts long enough for split-K. The double-precision
 * reference's work (B Hq Lq Lk (Dk + Dv)) stays under ~6e7 multiply-adds. */
static void model_shape(test_rng *r, acase *c, qsdpa_format *kf, qsdpa_format *vf) {
    static const int64_t dims[8] = {64, 80, 96, 128, 128, 128, 192, 256}, ratios[8] = {1, 2, 4, 4, 5, 8, 8, 16};
    c->B = chance(r, 0.8) ? 1 : test_rng_int(r, 2, 4);
    c->Hkv = (int64_t)1 << test_rng_int(r, 0, 3);
    c->Hq = c->Hkv * ratios[test_rng_int(r, 0, 7)];
    *kf = random_format(r);
    *vf = chance(r, 0.7) ? *kf : random_format(r);
    if (chance(r, 0.1)) { /* MLA: one latent KV head, 576 / 512 */
        if (kf->group == 128) kf->group = 64;
        if (vf->group == 128) vf->group = 64;
        c->B = 1, c->Hkv = 1, c->Hq = chance(r, 0.5) ? 16 : 32;
        c->Dk = 576, c->Dv = 512;
    } else {
        c->Dk = fit_dim(kf, dims[test_rng_int(r, 0, 7)]);
        c->Dv = fit_dim(vf, chance(r, 0.85) ? c->Dk : dims[test_rng_int(r, 0, 7)]);
    }
    c->Lq = chance(r, 0.8) ? test_rng_int(r, 1, 16) : test_rng_int(r, 17, 300);
    double u = test_rng_uniform(r);
    c->Lk = u < 0.3 ? test_rng_int(r, 1, 64) : u < 0.8 ? test_rng_int(r, 65, 4096) : test_rng_int(r, 4097, 40000);
    while (c->Lk > 1 && (double)(c->B * c->Hq * c->Lq * c->Lk) * (double)(c->Dk + c->Dv) > 6e7) c->Lk = c->Lk * 2 / 3;
    while (c->Lq > 1 && (double)(c->B * c->Hq * c->Lq * c->Lk) * (double)(c->Dk + c->Dv) > 6e7) c->Lq = c->Lq * 2 / 3;
    /* and q plus out under ~4M elements: the checks walk them element by element, several times a context
     * (run 182: a seed spent minutes on a few cases of tens of millions). No draw: older cases replay. */
    while (c->Lq > 1 && (double)(c->B * c->Hq * c->Lq) * (double)(c->Dk + c->Dv) > 4e6) c->Lq = c->Lq * 2 / 3;
    c->cap = c->Lk + (chance(r, 0.5) ? test_rng_int(r, 1, 5) : 0);
    u = test_rng_uniform(r);
    c->qd = u < 0.45 ? QSDPA_DTYPE_F16 : u < 0.9 ? QSDPA_DTYPE_BF16 : QSDPA_DTYPE_F32;
}

void gen_case(test_rng *r, acase *c) {
    memset(c, 0, sizeof *c);
    qsdpa_format kf, vf;
    if (fuzz_gpu_shapes && chance(r, 0.6)) {
        model_shape(r, c, &kf, &vf);
    } else {
        c->B = test_rng_int(r, 1, 2);
        c->Hkv = test_rng_int(r, 1, 2);
        c->Hq = c->Hkv * (chance(r, 0.9) ? test_rng_int(r, 1, 4) : test_rng_int(r, 5, 20)); /* GQA up to 20 (prefill tiles of 64/ratio rows) */
        c->Lq = chance(r, 0.85) ? test_rng_int(r, 1, 20) : test_rng_int(r, 17, 140); /* decode / prefill tiles */
        c->Lk = chance(r, 0.9) ? test_rng_int(r, 1, 48) : test_rng_int(r, 400, 1300); /* split-K above 512 */
        if (c->Lk > 64 || c->Lq > 20) c->B = 1, c->Hkv = 1, c->Hq = test_rng_int(r, 1, 2);
        c->cap = c->Lk + (chance(r, 0.5) ? test_rng_int(r, 1, 5) : 0);
        c->qd = any_float(r);
        kf = random_format(r), vf = random_format(r);
        c->Dk = random_dim(r, &kf);
        c->Dv = random_dim(r, &vf);
        if (c->Lk > 64 || c->Lq > 20) { /* keep the big cases cheap */
            if (c->Dk > 128) c->Dk = kf.group > 0 ? kf.group : 64;
            if (c->Dv > 128) c->Dv = vf.group > 0 ? vf.group : 64;
        }
    }
    int ord[4];
    fuzz_order(r, 4, ord);
    bool pad = chance(r, 0.4);
    /* K's outlier channels (SPEC 9): drawn from a generator of their own, seeded from r's state without advancing
     * it, so every other draw of a case, and so every recorded seed:case replay, is what it was before them */
    c->k_channels = (kv_channels){.rng = {r->state ^ 0x6f75746c69657273ull}};
    if (chance(&c->k_channels.rng, 0.15)) {
        c->k_channels.count = (int)test_rng_int(&c->k_channels.rng, 1, 3);
        for (int i = 0; i < c->k_channels.count; i++) {
            c->k_channels.dim[i] = test_rng_int(&c->k_channels.rng, 0, 1023);
            c->k_channels.level[i] = (chance(&c->k_channels.rng, 0.5) ? -1.0 : 1.0) *
                                     (5.0 + 45.0 * test_rng_uniform(&c->k_channels.rng));
        }
    }
    kv_build(r, &c->k, &kf, any_float(r), c->B, c->Hkv, c->Lk, c->cap, c->Dk, ord, pad,
             c->k_channels.count ? &c->k_channels : NULL);
    if (chance(r, 0.5)) fuzz_order(r, 4, ord);
    kv_build(r, &c->v, &vf, any_float(r), c->B, c->Hkv, c->Lk, c->cap, c->Dv, ord, chance(r, 0.4), NULL);

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
        if (chance(r, 0.1)) { /* a head without a sink: logit -inf (an extra column of weight 0) */
            qsdpa_store_float(c->tsinks.data, c->tsinks.dtype, test_rng_int(r, 0, c->Hq - 1) * c->tsinks.stride[0], -INFINITY);
            c->sinks_inf = true;
        }
    }
    if (c->partial && chance(r, 0.6)) { /* a slice of a longer context */
        int64_t extra = test_rng_int(r, 1, 10);
        c->prm.key_total = c->Lk + extra;
        c->prm.key_offset = test_rng_int(r, 0, extra);
    }
    c->expect = EXPECT_OK;
}

void acase_free(acase *c) {
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

void describe(const acase *c) {
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
    if (c->use_mask) w += put_tensor(s + w, n - (size_t)w, c->mask_inf ? "mask(with -inf)" : "mask", &c->tmask);
    if (c->use_sinks) w += put_tensor(s + w, n - (size_t)w, c->sinks_inf ? "sinks(with -inf)" : "sinks", &c->tsinks);
    for (int i = 0; i < c->k_channels.count && (size_t)w < n; i++)
        w += snprintf(s + w, n - (size_t)w, " K-outlier-channel(dim %lld, %g sigma)",
                      (long long)(c->Dk > 0 ? c->k_channels.dim[i] % c->Dk : c->k_channels.dim[i]), c->k_channels.level[i]);
    if (c->mut[0] && (size_t)w < n) w += snprintf(s + w, n - (size_t)w, " FAULT: %s", c->mut);
    /* The rules for the two -inf families this test found (2026-11-25; now
     * settled, as MLX does), so a failure points at the code that owns them. */
    if (c->sinks_inf && (size_t)w < n)
        w += snprintf(s + w, n - (size_t)w, "\n  hint: a -inf sink is no column at all: a row with no visible key is "
                      "the mean of V (src/cpu/cpu_driver.c finish_row, src/reference/reference.c any_kept)");
    if (c->mask_inf && (size_t)w < n)
        snprintf(s + w, n - (size_t)w, "\n  hint: a row with additive -inf on every key is NaN (as MLX); partial: out "
                 "NaN, lse -inf, dropped by qsdpa_merge beside finite slices");
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

void attn_mutate(test_rng *r, acase *c) {
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

