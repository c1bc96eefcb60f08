/* The double-precision reference attention (SPEC §3): the oracle every fast
 * kernel is tested against, and the last-resort kernel "cpu.reference".
 *
 * K/V rows are dequantized once per (batch, KV head) into f32 (SPEC §2
 * computes dequantization in f32), then every score, exponential and sum is a
 * double, and the output is rounded once to its dtype. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* Buffers of one (batch, KV head), carved from ctx scratch. */
typedef struct {
    float *k;       /* (Lk, Dk) dequantized keys */
    float *v;       /* (Lk, Dv) dequantized values */
    double *score;  /* (Lk,) scores of one query row */
    double *q;      /* (Dk,) one query row */
    double *acc;    /* (Dv,) weighted sum of values */
} ref_state;

/* rows [L, dim] of x at (b, g) -> out (L, dim) floats */
static void dequantize_rows(const qsdpa_qtensor *x, int64_t b, int64_t g, int64_t len, float *out) {
    for (int64_t l = 0; l < len; l++) {
        const void *scales = x->scales.data ? qsdpa_row_ptr(&x->scales, b, g, l) : NULL;
        const void *biases = x->biases.data ? qsdpa_row_ptr(&x->biases, b, g, l) : NULL;
        qsdpa_dequantize_row(&x->format, (const uint32_t *)qsdpa_row_ptr(&x->codes, b, g, l), scales, biases,
                             x->scales.dtype, x->dim, out + l * x->dim);
    }
}

/* Round x once to dtype: round-to-odd into f32 keeps the sticky bit, so the
 * second rounding to f16/bf16 (13+ bits shorter) equals a direct one. */
static void store_rounded(void *base, qsdpa_dtype dtype, int64_t index, double x) {
    float f = (float)x;
    if (dtype != QSDPA_DTYPE_F32 && isfinite(f) && (double)f != x) {
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        if ((u & 1u) == 0) u = fabs((double)f) > fabs(x) ? u - 1 : u + 1; /* odd neighbour toward x */
        memcpy(&f, &u, sizeof f);
    }
    qsdpa_store_float(base, dtype, index, f);
}

/* Score of key j after the mask and causal/window rules; *kept = false when
 * the key got the masked score. */
static double masked(const qsdpa_problem *p, int64_t b, int64_t h, int64_t i, int64_t j, double s, bool *kept) {
    *kept = true;
    if (!qsdpa_key_visible(p, i, j)) { *kept = false; return p->masked_score; }
    if (p->mask_kind == QSDPA_MASK_NONE) return s;
    const int64_t *ms = p->mask_stride;
    int64_t at = b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3];
    if (p->mask_kind == QSDPA_MASK_BOOL) {
        if (((const uint8_t *)p->mask)[at]) return s;
        *kept = false;
        return p->masked_score;
    }
    return s + qsdpa_load_float(p->mask, p->mask_dtype, at);
}

/* One query row (b, h, i) over the dequantized K/V of its KV head. */
static void attend_row(const qsdpa_problem *p, ref_state *st, int64_t b, int64_t h, int64_t i) {
    const int64_t dk = p->dim_k, dv = p->dim_v, lk = p->len_k;
    for (int64_t d = 0; d < dk; d++)
        st->q[d] = qsdpa_load_float(p->q, p->q_dtype,
                                    b * p->q_stride[0] + h * p->q_stride[1] + i * p->q_stride[2] + d * p->q_stride[3]);
    /* scores, mask, running max (the sink is one more column) */
    double max = p->sinks ? qsdpa_load_float(p->sinks, p->sinks_dtype, h) : -INFINITY;
    bool any_kept = max > -INFINITY; /* a finite sink is a kept column; a -inf sink is none */
    for (int64_t j = 0; j < lk; j++) {
        double dot = 0.0;
        for (int64_t d = 0; d < dk; d++) dot += st->q[d] * st->k[j * dk + d];
        bool kept;
        st->score[j] = masked(p, b, h, i, j, (double)p->scale * dot, &kept);
        any_kept |= kept;
        if (st->score[j] > max) max = st->score[j];
    }
    /* softmax numerator and denominator, second pass */
    double denom = p->sinks ? exp(qsdpa_load_float(p->sinks, p->sinks_dtype, h) - max) : 0.0;
    memset(st->acc, 0, (size_t)dv * sizeof *st->acc);
    for (int64_t j = 0; j < lk; j++) {
        double w = exp(st->score[j] - max);
        denom += w;
        for (int64_t d = 0; d < dv; d++) st->acc[d] += w * st->v[j * dv + d];
    }
    double lse = max + log(denom);
    if (p->lse && (!any_kept || max == -INFINITY)) {
        /* Partial slice whose keys are all masked: in the whole row they weigh
         * nothing unless every slice is masked, where the row is the mean of V
         * over key_total keys. lse -inf drops the slice from a merge with any
         * real slice; out = sum(V)/key_total makes a merge of all-masked slices
         * (which sums them, see merge.c) that mean. */
        /* (max == -inf with a kept key: an additive -inf on every key, NaN as in
         * the unsplit softmax; the merge drops it beside any finite slice.) */
        double share = !any_kept ? 1.0 / (double)p->key_total : NAN;
        for (int64_t d = 0; d < dv; d++) {
            double sum = 0.0;
            for (int64_t j = 0; j < lk; j++) sum += st->v[j * dv + d];
            st->acc[d] = sum * share;
        }
        denom = 1.0;
        lse = -INFINITY;
    }
    const int64_t *os = p->out_stride;
    for (int64_t d = 0; d < dv; d++)
        store_rounded(p->out, p->out_dtype, b * os[0] + h * os[1] + i * os[2] + d * os[3], st->acc[d] / denom);
    if (p->lse) p->lse[b * p->lse_stride[0] + h * p->lse_stride[1] + i * p->lse_stride[2]] = (float)lse;
}

/* Carve the per-(b, kv head) buffers out of ctx scratch, sizes checked. */
static qsdpa_status make_state(qsdpa_context *ctx, const qsdpa_problem *p, ref_state *st) {
    size_t nk, nv, bytes, tail = (size_t)(p->len_k + p->dim_k + p->dim_v) * sizeof(double);
    if (!qsdpa_mul_size((size_t)p->len_k, (size_t)p->dim_k * sizeof(float), &nk) ||
        !qsdpa_mul_size((size_t)p->len_k, (size_t)p->dim_v * sizeof(float), &nv) || nk > SIZE_MAX - nv - tail - 64)
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, p->function, "reference scratch for Lk = %lld overflows size_t",
                          (long long)p->len_k);
    nk = (nk + 7) & ~(size_t)7; /* keep the doubles after the floats aligned */
    bytes = nk + nv + tail + 8;
    void *mem;
    qsdpa_status s = qsdpa_scratch(ctx, p->function, bytes, &mem);
    if (s != QSDPA_OK) return s;
    char *at = mem;
    st->k = (float *)at;
    at += nk;
    st->v = (float *)at;
    at += (nv + 7) & ~(size_t)7;
    st->score = (double *)at;
    st->q = st->score + p->len_k;
    st->acc = st->q + p->dim_k;
    return QSDPA_OK;
}

qsdpa_status qsdpa_reference_kernel(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_reference_kernel(qsdpa_context *ctx, const qsdpa_problem *p) {
    ref_state st = {NULL, NULL, NULL, NULL, NULL}; /* set by make_state; GCC cannot see that */
    qsdpa_status s = make_state(ctx, p, &st);
    if (s != QSDPA_OK) return s;
    for (int64_t b = 0; b < p->batch; b++)
        for (int64_t g = 0; g < p->heads_kv; g++) {
            dequantize_rows(&p->k, b, g, p->len_k, st.k);
            dequantize_rows(&p->v, b, g, p->len_k, st.v);
            for (int64_t h = g * p->group_ratio; h < (g + 1) * p->group_ratio; h++)
                for (int64_t i = 0; i < p->len_q; i++) attend_row(p, &st, b, h, i);
        }
    return QSDPA_OK;
}
