/* qsdpa_quantize / qsdpa_dequantize with random (and faulty) arguments:
 * failing calls write nothing, successful ones keep their guards and round
 * trip within a generous per-format bound (the golden tests pin the bits). */
#include "fuzz_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void run_rows_case(test_rng *r, int64_t index, bool verbose) {
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
    /* Non-finite and huge inputs: "unspecified (but defined) codes" (quantize.c), so no
     * bound, but no crash and no undefined behaviour (the sanitizer build checks). */
    bool wild = chance(r, 0.08);
    if (wild)
        for (int i = (int)test_rng_int(r, 1, 4); i > 0; i--)
            qsdpa_store_float(c.x.data, c.xd, test_rng_int(r, 0, (int64_t)n - 1),
                              (float[]){NAN, INFINITY, -INFINITY, 3e38f, -1e-45f}[test_rng_int(r, 0, 4)]);
    float *xf = test_alloc(n * sizeof(float)), *yf = test_alloc(n * sizeof(float));
    double amax = 0.0;
    for (size_t i = 0; i < n; i++) {
        xf[i] = qsdpa_load_float(c.x.data, c.xd, (int64_t)i);
        if (isfinite(xf[i])) amax = fabs(xf[i]) > amax ? fabs(xf[i]) : amax;
    }
    if (c.f.mode == QSDPA_MODE_NVFP4 && c.f.global_scale != 0.0f) c.f.global_scale = (float)fmin(amax * (1.0 + test_rng_uniform(r)), 1e37);
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
            fuzz_stats.quantized++;
            memcpy(yf, c.out.data, n * sizeof(float));
            c.f = f32;
            if (!wild) rows_roundtrip(&c, xf, yf);
        }
    }
    free(xf);
    free(yf);
    for (int i = 0; i < 6; i++) gb_free(all[i]);
}

