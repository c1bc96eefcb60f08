/* The one validation of qsdpa_attention / _partial / _select arguments.
 *
 * Everything a kernel trusts is checked here, once, and copied into a
 * qsdpa_problem. Tensor data is never read: pointers may live on a device, so
 * only shapes, strides, dtypes and address ranges are looked at. */
#include "internal.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define INVALID QSDPA_ERR_INVALID_ARGUMENT

/* ---- one tensor ---------------------------------------------------------- */

/* Sort dims of size > 1 by stride, then each stride must step past everything
 * the smaller dims reach; that is enough for no two elements sharing an address. */
static bool overlaps_itself(const qsdpa_tensor *t) {
    int dims[QSDPA_MAX_RANK], n = 0;
    for (int d = 0; d < t->rank; d++)
        if (t->shape[d] > 1) dims[n++] = d;
    for (int a = 1; a < n; a++) /* insertion sort by stride */
        for (int b = a; b > 0 && t->stride[dims[b]] < t->stride[dims[b - 1]]; b--) {
            int tmp = dims[b]; dims[b] = dims[b - 1]; dims[b - 1] = tmp;
        }
    int64_t reach = 0; /* largest element offset covered by the dims so far */
    for (int a = 0; a < n; a++) {
        int d = dims[a];
        if (t->stride[d] <= reach) return true;
        reach += t->stride[d] * (t->shape[d] - 1); /* no overflow: extent was checked first */
    }
    return false;
}

qsdpa_status qsdpa_check_tensor(const char *fn, const char *name, const qsdpa_tensor *t, int rank,
                                qsdpa_tensor_role role, qsdpa_span *span) {
    if (!t->data) return qsdpa_fail(INVALID, fn, "%sdata is NULL", name);
    if (t->rank != rank)
        return qsdpa_fail(INVALID, fn, "%srank = %d but rank %d is required", name, t->rank, rank);
    size_t esize = qsdpa_dtype_size(t->dtype);
    if (esize == 0) return qsdpa_fail(INVALID, fn, "%sdtype = %d is not a dtype", name, (int)t->dtype);
    /* kernels load whole elements (a CUDA load of a misaligned u32 faults and poisons the device context) */
    if ((uintptr_t)t->data % esize != 0)
        return qsdpa_fail(INVALID, fn, "%sdata = %p is not aligned to its %zu-byte elements", name, t->data, esize);
    uint64_t last = 0; /* largest element offset, checked against overflow */
    for (int d = 0; d < rank; d++) {
        if (t->shape[d] <= 0)
            return qsdpa_fail(INVALID, fn, "%sshape[%d] = %lld is not positive", name, d, (long long)t->shape[d]);
        if (t->stride[d] < 0)
            return qsdpa_fail(INVALID, fn, "%sstride[%d] = %lld is negative", name, d, (long long)t->stride[d]);
        uint64_t steps = (uint64_t)(t->shape[d] - 1), stride = (uint64_t)t->stride[d];
        if (stride != 0 && steps > (uint64_t)INT64_MAX / stride)
            return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "%sstride[%d] = %lld times shape[%d] - 1 = %lld overflows",
                              name, d, (long long)t->stride[d], d, (long long)steps);
        last += steps * stride;
        if (last > (uint64_t)INT64_MAX)
            return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "%sextent overflows int64 (shape[%d] = %lld, stride %lld)",
                              name, d, (long long)t->shape[d], (long long)t->stride[d]);
    }
    int64_t inner = t->stride[rank - 1];
    if (t->shape[rank - 1] > 1 && inner != 1 && !(role == QSDPA_ROLE_MASK && inner == 0))
        return qsdpa_fail(INVALID, fn, "%sstride[%d] = %lld but the last dimension must be contiguous (stride 1)",
                          name, rank - 1, (long long)inner);
    /* Kernels form base + offset with signed byte offsets, so the byte extent
     * must fit ptrdiff_t, not only size_t: one element at offset INT64_MAX of a
     * one-byte dtype spans 2^63 bytes, which size_t holds but no address does. */
    size_t bytes;
    if (last >= (uint64_t)SIZE_MAX || !qsdpa_mul_size((size_t)last + 1, esize, &bytes) ||
        bytes > (size_t)PTRDIFF_MAX || (uintptr_t)t->data > UINTPTR_MAX - bytes)
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "%sbyte extent (%llu elements of %zu bytes) overflows ptrdiff_t",
                          name, (unsigned long long)last + 1, esize);
    if (role == QSDPA_ROLE_OUTPUT && overlaps_itself(t))
        return qsdpa_fail(INVALID, fn, "%sstrides [%lld, %lld, %lld, %lld] map two elements to one address", name,
                          (long long)t->stride[0], (long long)(rank > 1 ? t->stride[1] : 0),
                          (long long)(rank > 2 ? t->stride[2] : 0), (long long)(rank > 3 ? t->stride[3] : 0));
    span->begin = (uintptr_t)t->data;
    span->end = span->begin + bytes;
    return QSDPA_OK;
}

bool qsdpa_spans_overlap(qsdpa_span a, qsdpa_span b) { return a.begin < b.end && b.begin < a.end; }

static bool is_float_dtype(qsdpa_dtype d) {
    return d == QSDPA_DTYPE_F32 || d == QSDPA_DTYPE_F16 || d == QSDPA_DTYPE_BF16;
}

static qsdpa_status expect_dim(const char *fn, const char *name, const qsdpa_tensor *t, int d, int64_t want,
                               const char *why) {
    if (t->shape[d] == want) return QSDPA_OK;
    return qsdpa_fail(INVALID, fn, "%sshape[%d] = %lld but %s = %lld", name, d, (long long)t->shape[d], why,
                      (long long)want);
}

/* ---- one quantized K or V ------------------------------------------------ */

/* Spans of codes, scales, biases (unused ones empty), for the overlap test. */
typedef struct { qsdpa_span codes, scales, biases; } kv_spans;

/* Check x (named "k" or "v") against [B, H, L, dim]; b/h/l are those of the
 * first of k, v checked (<0: take them from this one). */
#define FMT (qsdpa_format_string(f, fmt, sizeof fmt), fmt)
static qsdpa_status check_kv(const char *fn, const char *x, const qsdpa_qtensor *t, int64_t *b, int64_t *h,
                             int64_t *l, kv_spans *sp) {
    char fmt[32]; /* the format as text, written only for an error message (FMT) */
    const bool is_k = x[0] == 'k';
    const char *dname = is_k ? "Dk" : "Dv";
    const qsdpa_format *f = &t->format;
    memset(sp, 0, sizeof *sp);
    qsdpa_status st = qsdpa_format_check(f);
    if (st != QSDPA_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return qsdpa_fail(st, fn, "%s->format (mode %d, bits %d, group %d) is invalid: %s", x, (int)f->mode,
                          f->bits, f->group, why);
    }
    if (t->dim <= 0 || t->dim > 1024)
        return qsdpa_fail(INVALID, fn, "%s->dim = %lld but %s must be in [1, 1024]", x, (long long)t->dim, dname);
    int64_t words = 0, nscales = 0;
    bool plain = f->mode == QSDPA_MODE_PLAIN, affine = qsdpa_format_has_biases(f) != 0;
    if (plain) /* plain rows are dim elements of plain_dtype, whatever their width in words */
        words = t->dim;
    else if (qsdpa_format_row_words(f, t->dim, &words) != QSDPA_OK ||
             qsdpa_format_row_scales(f, t->dim, &nscales) != QSDPA_OK)
        return qsdpa_fail(INVALID, fn, "%s->dim = %lld is not a multiple of the group of %s", x, (long long)t->dim,
                          FMT);

    const char *name = is_k ? "k->codes." : "v->codes.";
    st = qsdpa_check_tensor(fn, name, &t->codes, 4, QSDPA_ROLE_INPUT, &sp->codes);
    if (st != QSDPA_OK) return st;
    qsdpa_dtype want = plain ? f->plain_dtype : QSDPA_DTYPE_U32;
    if (t->codes.dtype != want)
        return qsdpa_fail(INVALID, fn, "%s->codes.dtype = %s but %s needs %s", x, qsdpa_dtype_name(t->codes.dtype),
                          FMT, qsdpa_dtype_name(want));
    if (t->codes.shape[3] != words)
        return qsdpa_fail(INVALID, fn, "%s->codes.shape[3] = %lld but %s=%lld at %s needs %lld %s", x,
                          (long long)t->codes.shape[3], dname, (long long)t->dim, FMT, (long long)words,
                          plain ? "elements" : "words");
    if (*b < 0) { *b = t->codes.shape[0]; *h = t->codes.shape[1]; *l = t->codes.shape[2]; }
    if ((st = expect_dim(fn, name, &t->codes, 0, *b, "the batch B")) != QSDPA_OK ||
        (st = expect_dim(fn, name, &t->codes, 1, *h, "k's KV heads Hkv")) != QSDPA_OK ||
        (st = expect_dim(fn, name, &t->codes, 2, *l, "k's key count Lk")) != QSDPA_OK)
        return st;

    if (plain) {
        if (t->scales.data || t->biases.data)
            return qsdpa_fail(INVALID, fn, "%s->%s.data is given but format %s has no scales or biases", x,
                              t->scales.data ? "scales" : "biases", FMT);
        return QSDPA_OK;
    }
    if (!affine && t->biases.data)
        return qsdpa_fail(INVALID, fn, "%s->biases.data is given but format %s has no biases", x, FMT);
    if (affine && !t->biases.data)
        return qsdpa_fail(INVALID, fn, "%s->biases.data is NULL but format %s needs biases", x, FMT);
    const qsdpa_tensor *parts[2] = {&t->scales, &t->biases};
    qsdpa_span *spans[2] = {&sp->scales, &sp->biases};
    for (int i = 0; i < (affine ? 2 : 1); i++) {
        const char *part = i ? "biases" : "scales";
        name = is_k ? (i ? "k->biases." : "k->scales.") : (i ? "v->biases." : "v->scales.");
        st = qsdpa_check_tensor(fn, name, parts[i], 4, QSDPA_ROLE_INPUT, spans[i]);
        if (st != QSDPA_OK) return st;
        if ((st = expect_dim(fn, name, parts[i], 0, *b, "the batch B")) != QSDPA_OK ||
            (st = expect_dim(fn, name, parts[i], 1, *h, "the KV heads Hkv")) != QSDPA_OK ||
            (st = expect_dim(fn, name, parts[i], 2, *l, "the key count Lk")) != QSDPA_OK)
            return st;
        if (parts[i]->shape[3] != nscales)
            return qsdpa_fail(INVALID, fn, "%s->%s.shape[3] = %lld but %s=%lld at %s needs %lld %s", x, part,
                              (long long)parts[i]->shape[3], dname, (long long)t->dim, FMT, (long long)nscales, part);
    }
    if (affine && !is_float_dtype(t->scales.dtype))
        return qsdpa_fail(INVALID, fn, "%s->scales.dtype = %s but %s needs f32, f16 or bf16 scales", x,
                          qsdpa_dtype_name(t->scales.dtype), FMT);
    if (!affine && t->scales.dtype != QSDPA_DTYPE_U8)
        return qsdpa_fail(INVALID, fn, "%s->scales.dtype = %s but %s needs u8 scales", x,
                          qsdpa_dtype_name(t->scales.dtype), FMT);
    if (affine && t->biases.dtype != t->scales.dtype)
        return qsdpa_fail(INVALID, fn, "%s->biases.dtype = %s but scales.dtype = %s (they must agree)", x,
                          qsdpa_dtype_name(t->biases.dtype), qsdpa_dtype_name(t->scales.dtype));
    return QSDPA_OK;
}

#undef FMT

/* ---- mask and sinks ------------------------------------------------------ */

/* Right-aligned broadcast of a rank<=4 mask to [B,Hq,Lq,Lk]: 4-D strides with
 * 0 on every broadcast dim. */
static qsdpa_status check_mask(const char *fn, const qsdpa_tensor *m, const int64_t target[4], qsdpa_problem *p,
                               qsdpa_span *span) {
    if (m->rank < 1 || m->rank > 4)
        return qsdpa_fail(INVALID, fn, "params->mask->rank = %d but a mask has rank 1 to 4", m->rank);
    qsdpa_status st = qsdpa_check_tensor(fn, "params->mask->", m, m->rank, QSDPA_ROLE_MASK, span);
    if (st != QSDPA_OK) return st;
    if (m->dtype != QSDPA_DTYPE_BOOL && !is_float_dtype(m->dtype))
        return qsdpa_fail(INVALID, fn, "params->mask->dtype = %s but a mask is bool, f32, f16 or bf16",
                          qsdpa_dtype_name(m->dtype));
    static const char *const dims[4] = {"B", "Hq", "Lq", "Lk"};
    for (int t = 0; t < 4; t++) {
        int d = m->rank - 4 + t; /* mask dim aligned with target dim t */
        if (d < 0) { p->mask_stride[t] = 0; continue; }
        if (m->shape[d] != 1 && m->shape[d] != target[t])
            return qsdpa_fail(INVALID, fn, "params->mask->shape[%d] = %lld does not broadcast to %s = %lld", d,
                              (long long)m->shape[d], dims[t], (long long)target[t]);
        p->mask_stride[t] = m->shape[d] == 1 ? 0 : m->stride[d];
    }
    p->mask = m->data;
    p->mask_dtype = m->dtype;
    p->mask_kind = m->dtype == QSDPA_DTYPE_BOOL ? QSDPA_MASK_BOOL : QSDPA_MASK_ADDITIVE;
    return QSDPA_OK;
}

static qsdpa_status check_sinks(const char *fn, const qsdpa_tensor *s, int64_t hq, qsdpa_span *span) {
    qsdpa_status st = qsdpa_check_tensor(fn, "params->sinks->", s, 1, QSDPA_ROLE_INPUT, span);
    if (st != QSDPA_OK) return st;
    if (s->shape[0] != hq)
        return qsdpa_fail(INVALID, fn, "params->sinks->shape[0] = %lld but Hq = %lld", (long long)s->shape[0],
                          (long long)hq);
    if (!is_float_dtype(s->dtype))
        return qsdpa_fail(INVALID, fn, "params->sinks->dtype = %s but sinks are f32, f16 or bf16",
                          qsdpa_dtype_name(s->dtype));
    return QSDPA_OK;
}

/* ---- scalar parameters ---------------------------------------------------- */

static qsdpa_status check_params(const char *fn, const qsdpa_attention_params *a, bool partial, qsdpa_problem *p) {
    if (!isfinite(a->scale)) return qsdpa_fail(INVALID, fn, "params->scale = %g is not finite", (double)a->scale);
    if (a->causal && a->mask)
        return qsdpa_fail(INVALID, fn, "params->causal = %d together with params->mask: give one or the other",
                          a->causal);
    if (a->window < 0)
        return qsdpa_fail(INVALID, fn, "params->window = %lld is negative", (long long)a->window);
    if (a->window > 0 && !a->causal)
        return qsdpa_fail(INVALID, fn, "params->window = %lld needs params->causal", (long long)a->window);
    if (a->key_total < 0)
        return qsdpa_fail(INVALID, fn, "params->key_total = %lld is negative", (long long)a->key_total);
    if (a->key_offset < 0)
        return qsdpa_fail(INVALID, fn, "params->key_offset = %lld is negative", (long long)a->key_offset);
    int64_t total = a->key_total ? a->key_total : p->len_k;
    if (!partial && (a->key_offset != 0 || total != p->len_k))
        return qsdpa_fail(INVALID, fn,
                          "params->key_offset = %lld, key_total = %lld describe a slice of Lk = %lld keys; "
                          "slices are for qsdpa_attention_partial",
                          (long long)a->key_offset, (long long)a->key_total, (long long)p->len_k);
    if (a->key_offset > total - p->len_k)
        return qsdpa_fail(INVALID, fn, "params->key_offset = %lld + Lk = %lld exceeds key_total = %lld",
                          (long long)a->key_offset, (long long)p->len_k, (long long)total);
    p->scale = a->scale;
    p->causal = a->causal != 0;
    p->window = a->window;
    p->key_offset = a->key_offset;
    p->key_total = total;
    return QSDPA_OK;
}

/* ---- the entry ------------------------------------------------------------ */

static qsdpa_status check_out(const char *fn, const qsdpa_tensor *out, const int64_t want[4], qsdpa_dtype dtype,
                              qsdpa_span *span) {
    static const char *const dims[4] = {"B", "Hq", "Lq", "Dv"};
    qsdpa_status st = qsdpa_check_tensor(fn, "out->", out, 4, QSDPA_ROLE_OUTPUT, span);
    for (int d = 0; d < 4 && st == QSDPA_OK; d++) st = expect_dim(fn, "out->", out, d, want[d], dims[d]);
    if (st == QSDPA_OK && out->dtype != dtype)
        return qsdpa_fail(INVALID, fn, "out->dtype = %s but it must be %s", qsdpa_dtype_name(out->dtype),
                          qsdpa_dtype_name(dtype));
    return st;
}

qsdpa_status qsdpa_validate_attention(const char *fn, const qsdpa_tensor *q, const qsdpa_qtensor *k,
                                      const qsdpa_qtensor *v, const qsdpa_attention_params *params,
                                      const qsdpa_tensor *out, const qsdpa_tensor *lse, qsdpa_problem *p) {
    if (!q) return qsdpa_fail(INVALID, fn, "q is NULL");
    if (!k) return qsdpa_fail(INVALID, fn, "k is NULL");
    if (!v) return qsdpa_fail(INVALID, fn, "v is NULL");
    if (!out) return qsdpa_fail(INVALID, fn, "out is NULL");
    qsdpa_attention_params defaults = qsdpa_attention_default_params();
    const qsdpa_attention_params *a = params ? params : &defaults;
    memset(p, 0, sizeof *p);
    p->function = fn;

    qsdpa_span sq, sout, slse = {0, 0}, smask = {0, 0}, ssinks = {0, 0};
    qsdpa_status st = qsdpa_check_tensor(fn, "q->", q, 4, QSDPA_ROLE_INPUT, &sq);
    if (st != QSDPA_OK) return st;
    if (!is_float_dtype(q->dtype))
        return qsdpa_fail(INVALID, fn, "q->dtype = %s but q must be f32, f16 or bf16", qsdpa_dtype_name(q->dtype));

    int64_t b = -1, hkv = -1, lk = -1;
    kv_spans sk, sv;
    if ((st = check_kv(fn, "k", k, &b, &hkv, &lk, &sk)) != QSDPA_OK) return st;
    if ((st = check_kv(fn, "v", v, &b, &hkv, &lk, &sv)) != QSDPA_OK) return st;
    if ((st = expect_dim(fn, "q->", q, 0, b, "k's batch B")) != QSDPA_OK) return st;
    if (q->shape[3] != k->dim)
        return qsdpa_fail(INVALID, fn, "q->shape[3] = %lld but k->dim (Dk) = %lld", (long long)q->shape[3],
                          (long long)k->dim);
    if (q->shape[1] % hkv != 0)
        return qsdpa_fail(INVALID, fn, "q->shape[1] (Hq) = %lld is not a multiple of Hkv = %lld",
                          (long long)q->shape[1], (long long)hkv);

    p->batch = b; p->heads_q = q->shape[1]; p->heads_kv = hkv; p->len_q = q->shape[2]; p->len_k = lk;
    p->dim_k = k->dim; p->dim_v = v->dim; p->group_ratio = p->heads_q / hkv;

    if ((st = check_params(fn, a, lse != NULL, p)) != QSDPA_OK) return st;
    const int64_t scores[4] = {b, p->heads_q, p->len_q, lk};
    if (a->mask && (st = check_mask(fn, a->mask, scores, p, &smask)) != QSDPA_OK) return st;
    if (a->sinks && (st = check_sinks(fn, a->sinks, p->heads_q, &ssinks)) != QSDPA_OK) return st;

    const int64_t oshape[4] = {b, p->heads_q, p->len_q, v->dim};
    if ((st = check_out(fn, out, oshape, lse ? QSDPA_DTYPE_F32 : q->dtype, &sout)) != QSDPA_OK) return st;
    if (lse) {
        static const char *const dims[3] = {"B", "Hq", "Lq"};
        if ((st = qsdpa_check_tensor(fn, "lse->", lse, 3, QSDPA_ROLE_OUTPUT, &slse)) != QSDPA_OK) return st;
        for (int d = 0; d < 3; d++)
            if ((st = expect_dim(fn, "lse->", lse, d, oshape[d], dims[d])) != QSDPA_OK) return st;
        if (lse->dtype != QSDPA_DTYPE_F32)
            return qsdpa_fail(INVALID, fn, "lse->dtype = %s but it must be f32", qsdpa_dtype_name(lse->dtype));
        if (qsdpa_spans_overlap(sout, slse)) return qsdpa_fail(INVALID, fn, "out and lse overlap in memory");
    }

    const struct { const char *name; qsdpa_span span; } inputs[] = {
        {"q", sq},           {"k->codes", sk.codes},   {"k->scales", sk.scales}, {"k->biases", sk.biases},
        {"v->codes", sv.codes}, {"v->scales", sv.scales}, {"v->biases", sv.biases}, {"params->mask", smask},
        {"params->sinks", ssinks},
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        if (qsdpa_spans_overlap(sout, inputs[i].span))
            return qsdpa_fail(INVALID, fn, "out overlaps %s in memory", inputs[i].name);
        if (lse && qsdpa_spans_overlap(slse, inputs[i].span))
            return qsdpa_fail(INVALID, fn, "lse overlaps %s in memory", inputs[i].name);
    }

    p->q = q->data;
    p->q_dtype = q->dtype;
    memcpy(p->q_stride, q->stride, sizeof p->q_stride);
    p->k = *k;
    p->v = *v;
    p->masked_score = qsdpa_dtype_lowest(q->dtype);
    if (a->sinks) { p->sinks = a->sinks->data; p->sinks_dtype = a->sinks->dtype; }
    p->out = out->data;
    p->out_dtype = out->dtype;
    memcpy(p->out_stride, out->stride, sizeof p->out_stride);
    if (lse) { p->lse = lse->data; memcpy(p->lse_stride, lse->stride, sizeof p->lse_stride); }
    return QSDPA_OK;
}
