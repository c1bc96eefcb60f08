/* Running one attention case on the reference, select, the auto kernel and
 * every forced CPU kernel, with the checks listed in test_random_api.c. */
#include "fuzz_attn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char *attn_fn(const acase *c, bool select) {
    return select ? "qsdpa_attention_select" : c->partial ? "qsdpa_attention_partial" : "qsdpa_attention";
}

const fuzz_device_ops *fuzz_device;
bool fuzz_check_slices = true;
bool fuzz_16bit_contexts;

/* Every buffer of the case, for the "nothing changed" checks. */
static int case_buffers(acase *c, gbuf **g) {
    gbuf *all[] = {&c->q, &c->out, &c->lse, &c->mask, &c->sinks, &c->spare, &c->k.codes, &c->k.scales,
                   &c->k.biases, &c->v.codes, &c->v.scales, &c->v.biases};
    int n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->raw) g[n++] = all[i];
    return n;
}

static void move_tensor(qsdpa_tensor *t) { t->data = fuzz_device->at(t->data); }
static void move_qtensor(qsdpa_qtensor *t) {
    move_tensor(&t->codes);
    move_tensor(&t->scales);
    move_tensor(&t->biases);
}

/* On a device context (fuzz_device set, any context but the reference) the
 * case's buffers are copied there whole, guards included, the descriptors
 * point at the copies, and every buffer comes back after the call, so the
 * checks below read what the device wrote exactly as they read a CPU
 * kernel's output. */
static qsdpa_status call_attn(qsdpa_context *ctx, acase *c, bool select, const char **name) {
    qsdpa_tensor tq = c->tq, tout = c->tout, tlse = c->tlse, tmask = c->tmask, tsinks = c->tsinks;
    qsdpa_qtensor kt = c->k.t, vt = c->v.t;
    bool device = fuzz_device && ctx != fuzz_ctx_ref;
    gbuf *g[12];
    int n = case_buffers(c, g);
    if (device) {
        fuzz_device->upload(g, n);
        move_tensor(&tq), move_tensor(&tout), move_tensor(&tlse), move_tensor(&tmask), move_tensor(&tsinks);
        move_qtensor(&kt), move_qtensor(&vt);
    }
    qsdpa_attention_params prm_v = c->prm;
    prm_v.mask = c->use_mask ? &tmask : NULL;
    prm_v.sinks = c->use_sinks ? &tsinks : NULL;
    const qsdpa_attention_params *prm = c->null_params ? NULL : &prm_v;
    const qsdpa_tensor *q = c->null_q ? NULL : &tq;
    const qsdpa_qtensor *k = c->null_k ? NULL : &kt, *v = c->null_v ? NULL : c->v_is_k ? &kt : &vt;
    qsdpa_tensor *out = c->null_out ? NULL : &tout, *lse = c->null_lse ? NULL : &tlse;
    if (c->null_ctx) ctx = NULL;
    qsdpa_status st = select ? qsdpa_attention_select(ctx, q, k, v, prm, out, name)
                      : c->partial ? qsdpa_attention_partial(ctx, q, k, v, prm, out, lse)
                                   : qsdpa_attention(ctx, q, k, v, prm, out);
    if (device) fuzz_device->download(g, n); /* plain CUDA runtime copies: qsdpa_last_error() stays the call's */
    return st;
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
static char worst_at[160]; /* where tensor_diff found its largest difference */
static double tensor_diff(const gbuf *g, const uint8_t *ref, const qsdpa_tensor *t, bool *nan) {
    size_t base = (size_t)((const uint8_t *)t->data - g->data);
    double worst = 0.0;
    int64_t idx[4] = {0, 0, 0, 0};
    *nan = false;
    worst_at[0] = '\0';
    do {
        int64_t o = fuzz_offset(t, idx);
        double a = qsdpa_load_float(ref + base, t->dtype, o), b = qsdpa_load_float(t->data, t->dtype, o);
        if (isnan(b)) *nan = true;
        if (isnan(a) != isnan(b)) worst = INFINITY;
        if (isnan(a) || isnan(b)) continue;
        if (a == b) continue;
        double d = fabs(a - b);
        if (d > worst) {
            worst = d;
            snprintf(worst_at, sizeof worst_at, "[%lld,%lld,%lld,%lld] %.7g, reference %.7g", (long long)idx[0],
                     (long long)idx[1], (long long)idx[2], (long long)idx[3], b, a);
        }
    } while (fuzz_next(t, idx));
    return worst;
}

/* max |x| over the elements of a float tensor. */
static double tensor_max_abs(const qsdpa_tensor *t) {
    double m = 0.0;
    int64_t idx[4] = {0, 0, 0, 0};
    do m = fmax(m, fabs(qsdpa_load_float(t->data, t->dtype, fuzz_offset(t, idx))));
    while (fuzz_next(t, idx));
    return m;
}

/* SPEC 4 says nothing of lse: f32 scores carry an absolute error of about
 * eps * scale * sum|q_d k_d| (large K magnitudes, outliers), so the bound
 * scales with scale * Dk * max|q| * max|K|. A call of 16-bit precision
 * (prec: see run_attention_case) gets its dtype's relative bound instead of
 * 1e-5, and 2^-11 of that scale: the GPU's tensor-core rows round dequantized
 * K to f16 (run 179: a K outlier of ~300 is rounded in steps of 0.25, and one
 * lse was 0.028 off at scale 0.1). */
static void check_lse(const acase *c, const uint8_t *ref, const char *who, qsdpa_dtype prec) {
    size_t base = (size_t)((const uint8_t *)c->tlse.data - c->lse.data);
    double mag = fabs(c->prm.scale) * (double)c->Dk * tensor_max_abs(&c->tq) * kv_max_abs(&c->k.t);
    int64_t idx[4] = {0, 0, 0, 0};
    do {
        int64_t o = fuzz_offset(&c->tlse, idx);
        double a = ((const float *)(ref + base))[o], b = ((const float *)c->tlse.data)[o];
        double tol = prec == QSDPA_DTYPE_F32 ? 1e-5 * (1.0 + fabs(a)) + 1e-6 * mag
                                             : test_spec_tolerance(prec) * (1.0 + fabs(a)) + 0x1p-11 * mag;
        bool bad = isnan(b) || (isinf(a) || isinf(b) ? a != b : fabs(a - b) > tol);
        if (bad) {
            fuzz_fail("partial lse differs from the reference", "%s: lse[%lld,%lld,%lld] = %.9g, reference %.9g (tol %.3g)",
                      who, (long long)idx[0], (long long)idx[1], (long long)idx[2], b, a, tol);
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
        st = qsdpa_attention_partial(fuzz_ctx_auto, &c->tq, &k, &v, &prm, &outs[s], &lses[s]);
        if (st != QSDPA_OK)
            fuzz_fail("partial slice of a valid call rejected", "slice [%lld, %lld): %s", (long long)o,
                      (long long)(o + len), qsdpa_last_error());
    }
    if (st == QSDPA_OK) {
        size_t bytes = (size_t)(c->B * c->Hq * c->Lq * c->Dv) * qsdpa_dtype_size(c->qd);
        uint8_t *merged = test_alloc(bytes);
        test_poison(merged, bytes);
        qsdpa_tensor mo = qsdpa_tensor_4d(merged, c->qd, c->B, c->Hq, c->Lq, c->Dv);
        if (qsdpa_merge(fuzz_ctx_auto, n, outs, lses, &mo, NULL) != QSDPA_OK) {
            fuzz_fail("merge of valid partials rejected", "%s", qsdpa_last_error());
        } else {
            double worst = 0.0;
            int64_t idx[4] = {0, 0, 0, 0};
            size_t base = (size_t)((const uint8_t *)c->tout.data - c->out_buf->data);
            do {
                double a = qsdpa_load_float(ref + base, c->qd, fuzz_offset(&c->tout, idx));
                double b = qsdpa_load_float(merged, c->qd, fuzz_offset(&mo, idx));
                /* NaN only in rows that are -inf on every key, in both results */
                double d = isnan(a) && isnan(b) ? 0.0 : isnan(a) || isnan(b) ? INFINITY : fabs(a - b);
                worst = d > worst ? d : worst;
            } while (fuzz_next(&mo, idx));
            /* two roundings to q's dtype (merge output, reference) and the f32 partials */
            double tol = 2.0 * test_spec_tolerance(c->qd) * vmax + 1e-30;
            if (!(worst <= tol))
                fuzz_fail("partial slices + merge differ from the unsplit call", "%d slices at %lld,%lld: max err %.3g > %.3g (max|V| %.3g)",
                          n, (long long)cut[1], (long long)cut[2], worst, tol, vmax);
        }
        free(merged);
    }
    for (int s = 0; s < 2 * n; s++) free(mem[s]);
}

/* Whether the output now in c->out_buf (a device's) is within tol of the reference computed with K
 * rounded to `k16_dtype` (f16 or bf16) before Q K^T, as the CUDA tensor-core rows do by design (docs/SPEC.md
 * 8): a failure that this explains is that known departure, one this does not is something else. Leaves
 * out_buf as it found it. */
static bool explained_by_16bit_k(acase *c, double tol, qsdpa_dtype k16_dtype) {
    const qsdpa_qtensor *kt = &c->k.t;
    int64_t B = kt->codes.shape[0], H = kt->codes.shape[1], L = kt->codes.shape[2], D = kt->dim;
    uint16_t *k16 = test_alloc((size_t)(B * H * L * D) * 2);
    float *row = test_alloc((size_t)D * sizeof(float)), *scratch = test_alloc((size_t)(2 * D) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++) {
                kv_row(kt, b, h, l, row, true, scratch); /* in f32, as the kernels dequantize */
                for (int64_t d = 0; d < D; d++) qsdpa_store_float(k16, k16_dtype, ((b * H + h) * L + l) * D + d, row[d]);
            }
    qsdpa_qtensor k = {0};
    k.format.mode = QSDPA_MODE_PLAIN, k.format.plain_dtype = k16_dtype, k.format.bits = 16;
    k.codes = qsdpa_tensor_4d(k16, k16_dtype, B, H, L, D);
    k.dim = D;
    gbuf *g = c->out_buf;
    uint8_t *device_out = test_alloc(g->bytes), *ref16 = test_alloc(g->bytes);
    memcpy(device_out, g->data, g->bytes);
    uint8_t *device_lse = c->partial ? test_alloc(c->lse.bytes) : NULL;
    if (device_lse) memcpy(device_lse, c->lse.data, c->lse.bytes);
    qsdpa_attention_params prm = c->prm;
    prm.mask = c->use_mask ? &c->tmask : NULL;
    prm.sinks = c->use_sinks ? &c->tsinks : NULL;
    const qsdpa_qtensor *v = c->v_is_k ? &c->k.t : &c->v.t;
    const qsdpa_attention_params *pp = c->null_params ? NULL : &prm; /* NULL: the defaults (scale 1) */
    qsdpa_status st = c->partial ? qsdpa_attention_partial(fuzz_ctx_ref, &c->tq, &k, v, pp, &c->tout, &c->tlse)
                                 : qsdpa_attention(fuzz_ctx_ref, &c->tq, &k, v, pp, &c->tout);
    memcpy(ref16, g->data, g->bytes);
    memcpy(g->data, device_out, g->bytes);
    if (device_lse) memcpy(c->lse.data, device_lse, c->lse.bytes), free(device_lse);
    bool nan;
    bool explained = st == QSDPA_OK && tensor_diff(g, ref16, &c->tout, &nan) <= tol;
    free(k16), free(row), free(scratch), free(device_out), free(ref16);
    return explained;
}

void run_attention_case(test_rng *r, int64_t index, bool verbose) {
    acase c;
    gen_case(r, &c);
    if (chance(r, 0.45)) attn_mutate(r, &c);
    describe(&c);
    if (verbose) fprintf(stderr, "case %lld: %s\n", (long long)index, fuzz_case_desc);
    gbuf *g[12];
    for (int i = 0, n = case_buffers(&c, g); i < n; i++) gb_snapshot(g[i]);

    /* 1. the reference */
    qsdpa_status st_ref = call_attn(fuzz_ctx_ref, &c, false, NULL);
    char msg_ref[512];
    snprintf(msg_ref, sizeof msg_ref, "%s", qsdpa_last_error());
    if (st_ref != QSDPA_OK) fuzz_check_message(attn_fn(&c, false), st_ref);
    check_untouched(&c, "reference kernel", st_ref == QSDPA_OK);
    if (c.expect == EXPECT_ERR && st_ref == QSDPA_OK)
        fuzz_fail("invalid call accepted", "%s returned QSDPA_OK for: %s", attn_fn(&c, false), c.mut);
    if (c.expect == EXPECT_OK && st_ref != QSDPA_OK)
        fuzz_fail("valid call rejected", "%s: %s", qsdpa_status_string(st_ref), msg_ref);

    if (st_ref == QSDPA_OK) fuzz_stats.ok++;
    else fuzz_stats.rejected++;
    uint8_t *ref_out = NULL, *ref_lse = NULL;
    double vmax = 0.0;
    bool ref_nan = false;
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
        ref_nan = nan;
        /* NaN is the right answer only for a row whose additive mask is -inf on
         * every key (softmax of all -inf, as MLX gives); every kernel must then
         * give NaN in exactly those rows (tensor_diff compares the NaN pattern). */
        if (nan && !c.mask_inf) fuzz_fail("reference output has NaN on valid input", "max|V| %.3g", vmax);
    }
    restore_all(&c);

    /* 2. select (auto), then the auto kernel and every forced CPU kernel */
    if (!c.partial) {
        const char *name = NULL;
        qsdpa_status s = call_attn(fuzz_ctx_auto, &c, true, &name);
        if (s != QSDPA_OK) fuzz_check_message("qsdpa_attention_select", s);
        if (s != st_ref)
            fuzz_fail("select and the reference disagree on validity", "select %s (%s), reference %s",
                      qsdpa_status_string(s), qsdpa_last_error(), qsdpa_status_string(st_ref));
        if (s == QSDPA_OK && !name) fuzz_fail("select returned OK without a name", "-");
        check_untouched(&c, "select", false);
        restore_all(&c);
    }
    /* SPEC 4's class of the output: q's dtype. A partial call's f32 output is held to f32's bound on the
     * CPU, which computes every partial in f32, and to q's on CUDA (fuzz_16bit_contexts), where f16/bf16 q
     * run in 16-bit tensor-core arithmetic (qsdpa_attention_partial in qsdpa.h says so). */
    const qsdpa_dtype prec = c.partial && !fuzz_16bit_contexts ? QSDPA_DTYPE_F32 : c.qd;
    double tol = test_spec_tolerance(prec) * vmax;
    for (int kx = -1; kx < fuzz_n_forced; kx++) {
        qsdpa_context *ctx = kx < 0 ? fuzz_ctx_auto : fuzz_ctx_forced[kx];
        char who[96];
        snprintf(who, sizeof who, "kernel %s", kx < 0 ? "auto" : fuzz_forced_name[kx]);
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
        fuzz_stats.kernel_runs++;
        bool nan;
        double err = tensor_diff(c.out_buf, ref_out, &c.tout, &nan);
        if (nan && !ref_nan) fuzz_fail("NaN in the output of a valid call", "%s (reference has none)", who);
        else if (ref_nan && err == INFINITY)
            fuzz_fail("NaN pattern differs from the reference", "%s (rows with -inf on every key must be NaN, others finite)", who);
        else if (!(err <= tol)) {
            char at[sizeof worst_at];
            snprintf(at, sizeof at, "%s", worst_at); /* explained_by_16bit_k runs tensor_diff again */
            /* K rounded to f16 (most rows), or to bf16 for bf16 q (the wide kernel computes in q's dtype) */
            const bool by_f16 = fuzz_16bit_contexts && prec != QSDPA_DTYPE_F32 && explained_by_16bit_k(&c, tol, QSDPA_DTYPE_F16);
            const bool by_bf16 = !by_f16 && fuzz_16bit_contexts && prec == QSDPA_DTYPE_BF16 &&
                                 explained_by_16bit_k(&c, tol, QSDPA_DTYPE_BF16);
            /* the departure SPEC 8.1 documents (the device's output within tol of a reference that rounds K as
             * the tensor-core rows do) is reported, not failed: a seed meeting it is not a regression (runs
             * 206-207); anything else fails */
            void (*report)(const char *, const char *, ...) = by_f16 || by_bf16 ? fuzz_known : fuzz_fail;
            report(by_f16    ? "beyond SPEC 4 as K rounded to f16 explains (known: docs/SPEC.md 8.1)"
                   : by_bf16 ? "beyond SPEC 4 as K rounded to bf16 explains (known: docs/SPEC.md 8.1)"
                             : "kernel differs from the reference beyond SPEC 4",
                   "%s [%s]: max err %.3g > tol %.3g (max|V| %.3g, %.3g units) at %s", who,
                   ctx ? qsdpa_context_last_route(ctx) : "-", err, tol, vmax, vmax > 0 ? err / vmax : err, at);
        }
        if (c.partial) {
            check_between(&c.lse, &c.tlse, who);
            check_lse(&c, ref_lse, who, prec);
        }
        restore_all(&c);
    }
    if (fuzz_check_slices && st_ref == QSDPA_OK && !c.partial && !c.v_is_k && !c.null_params && c.mut[0] == '\0' &&
        chance(r, 0.3))
        check_slices(r, &c, ref_out, vmax), fuzz_stats.slices++;
    free(ref_out);
    free(ref_lse);
    acase_free(&c);
}

