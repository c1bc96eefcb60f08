/* qsdpa_merge: the exact merge of partial attention results.
 *
 * Partial i of a row holds out_i (normalised within its slice) and
 * lse_i = ln sum_j exp(s_j) over its slice. Then, in natural-log base,
 *     lse = ln sum_i exp(lse_i),   out = sum_i exp(lse_i - lse) * out_i,
 * computed in double around the largest lse_i. When every lse_i is -inf (a
 * row whose keys are masked in every slice) there are no weights: the slices
 * then hold sum(V)/key_total each (see src/reference/reference.c) and are
 * summed, which gives the mean of V that the unsplit call gives.
 * CUDA contexts: validated here (shapes and address ranges only), then
 * src/cuda/cuda_merge.cu runs the same arithmetic on the device. */
#include "internal.h"

#include <math.h>
#include <stdio.h>

#include "cuda/cuda_backend.h"

#define INVALID QSDPA_ERR_INVALID_ARGUMENT

static qsdpa_status expect_shape(const char *name, const qsdpa_tensor *t, const int64_t *want, int rank) {
    static const char *const dims[4] = {"B", "Hq", "Lq", "Dv"};
    for (int d = 0; d < rank; d++)
        if (t->shape[d] != want[d])
            return qsdpa_fail(INVALID, "qsdpa_merge", "%sshape[%d] = %lld but %s = %lld (from outs[0])", name, d,
                              (long long)t->shape[d], dims[d], (long long)want[d]);
    return QSDPA_OK;
}

/* All arguments; nothing is read from tensor data. */
static qsdpa_status validate(qsdpa_context *ctx, int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses,
                             const qsdpa_tensor *out, const qsdpa_tensor *lse_out) {
    const char *fn = "qsdpa_merge";
    if (!ctx) return qsdpa_fail(INVALID, fn, "ctx is NULL");
    if (n < 1) return qsdpa_fail(INVALID, fn, "n = %d but at least one partial is needed", n);
    if (!outs) return qsdpa_fail(INVALID, fn, "outs is NULL");
    if (!lses) return qsdpa_fail(INVALID, fn, "lses is NULL");
    if (!out) return qsdpa_fail(INVALID, fn, "out is NULL");

    qsdpa_span so, sl = {0, 0}, s;
    qsdpa_status st = qsdpa_check_tensor(fn, "out->", out, 4, QSDPA_ROLE_OUTPUT, &so);
    if (st != QSDPA_OK) return st;
    if (out->dtype != QSDPA_DTYPE_F32 && out->dtype != QSDPA_DTYPE_F16 && out->dtype != QSDPA_DTYPE_BF16)
        return qsdpa_fail(INVALID, fn, "out->dtype = %s but it must be f32, f16 or bf16", qsdpa_dtype_name(out->dtype));
    if (lse_out) {
        if ((st = qsdpa_check_tensor(fn, "lse_out->", lse_out, 3, QSDPA_ROLE_OUTPUT, &sl)) != QSDPA_OK) return st;
        if ((st = expect_shape("lse_out->", lse_out, out->shape, 3)) != QSDPA_OK) return st;
        if (lse_out->dtype != QSDPA_DTYPE_F32)
            return qsdpa_fail(INVALID, fn, "lse_out->dtype = %s but it must be f32", qsdpa_dtype_name(lse_out->dtype));
        if (qsdpa_spans_overlap(so, sl)) return qsdpa_fail(INVALID, fn, "out and lse_out overlap in memory");
    }
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "outs[%d].", i);
        if ((st = qsdpa_check_tensor(fn, name, &outs[i], 4, QSDPA_ROLE_INPUT, &s)) != QSDPA_OK) return st;
        if ((st = expect_shape(name, &outs[i], outs[0].shape, 4)) != QSDPA_OK) return st;
        if (outs[i].dtype != QSDPA_DTYPE_F32)
            return qsdpa_fail(INVALID, fn, "outs[%d].dtype = %s but partial outputs are f32", i,
                              qsdpa_dtype_name(outs[i].dtype));
        if (qsdpa_spans_overlap(so, s) || qsdpa_spans_overlap(sl, s))
            return qsdpa_fail(INVALID, fn, "outs[%d] overlaps %s in memory", i,
                              qsdpa_spans_overlap(so, s) ? "out" : "lse_out");
        snprintf(name, sizeof name, "lses[%d].", i);
        if ((st = qsdpa_check_tensor(fn, name, &lses[i], 3, QSDPA_ROLE_INPUT, &s)) != QSDPA_OK) return st;
        if ((st = expect_shape(name, &lses[i], outs[0].shape, 3)) != QSDPA_OK) return st;
        if (lses[i].dtype != QSDPA_DTYPE_F32)
            return qsdpa_fail(INVALID, fn, "lses[%d].dtype = %s but it must be f32", i, qsdpa_dtype_name(lses[i].dtype));
        if (qsdpa_spans_overlap(so, s) || qsdpa_spans_overlap(sl, s))
            return qsdpa_fail(INVALID, fn, "lses[%d] overlaps %s in memory", i,
                              qsdpa_spans_overlap(so, s) ? "out" : "lse_out");
    }
    return expect_shape("out->", out, outs[0].shape, 4);
}

/* Element (b, h, i, d) offset of a rank-4 tensor, (b, h, i) of a rank-3 one. */
static int64_t at4(const qsdpa_tensor *t, int64_t b, int64_t h, int64_t i, int64_t d) {
    return b * t->stride[0] + h * t->stride[1] + i * t->stride[2] + d * t->stride[3];
}
static int64_t at3(const qsdpa_tensor *t, int64_t b, int64_t h, int64_t i) {
    return b * t->stride[0] + h * t->stride[1] + i * t->stride[2];
}

/* One row (b, h, i): weights from the lses, then the weighted sum per d. */
static void merge_row(int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses, const qsdpa_tensor *out,
                      const qsdpa_tensor *lse_out, int64_t b, int64_t h, int64_t i) {
    double max = -INFINITY, total = 0.0;
    for (int k = 0; k < n; k++) {
        double l = ((const float *)lses[k].data)[at3(&lses[k], b, h, i)];
        if (l > max || isnan(l)) max = l;
    }
    for (int k = 0; k < n; k++)
        total += max == -INFINITY ? 1.0 : exp(((const float *)lses[k].data)[at3(&lses[k], b, h, i)] - max);
    double lse = max == -INFINITY ? -INFINITY : max + log(total);
    /* a slice's weight once per run of dims, not per dim (the per-dim exp was most of a merge's time:
     * a residual-window cache attend at 2K keys spent 15% of its time here); each dim still sums
     * its slices in order, so the result is the same */
    enum { RUN = 256 };
    double sum[RUN];
    for (int64_t d0 = 0; d0 < out->shape[3]; d0 += RUN) {
        const int64_t nd = out->shape[3] - d0 < RUN ? out->shape[3] - d0 : RUN;
        for (int64_t d = 0; d < nd; d++) sum[d] = 0.0;
        for (int k = 0; k < n; k++) {
            double l = ((const float *)lses[k].data)[at3(&lses[k], b, h, i)];
            double w = max == -INFINITY ? 1.0 : exp(l - max) / total;
            if (w == 0.0) continue; /* a slice of weight 0 may hold NaN (all -inf additive mask) */
            for (int64_t d = 0; d < nd; d++) sum[d] += w * ((const float *)outs[k].data)[at4(&outs[k], b, h, i, d0 + d)];
        }
        for (int64_t d = 0; d < nd; d++) qsdpa_store_float(out->data, out->dtype, at4(out, b, h, i, d0 + d), (float)sum[d]);
    }
    if (lse_out) ((float *)lse_out->data)[at3(lse_out, b, h, i)] = (float)lse;
}

qsdpa_status qsdpa_merge(qsdpa_context *ctx, int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses,
                         qsdpa_tensor *out, qsdpa_tensor *lse_out) {
    qsdpa_clear_error();
    qsdpa_status st = validate(ctx, n, outs, lses, out, lse_out);
    if (st != QSDPA_OK) return st;
    if (ctx->options.backend == QSDPA_BACKEND_CUDA) /* device pointers: same arithmetic on the device */
        return qsdpa_cuda_merge(ctx, n, outs, lses, out, lse_out);
    for (int64_t b = 0; b < out->shape[0]; b++)
        for (int64_t h = 0; h < out->shape[1]; h++)
            for (int64_t i = 0; i < out->shape[2]; i++) merge_row(n, outs, lses, out, lse_out, b, h, i);
    return QSDPA_OK;
}
