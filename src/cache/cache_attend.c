/* Attention of new queries over one cache layer. Without a residual window
 * (or with only one part filled) this is one qsdpa_attention call on strided
 * views of the storage. With both parts, each part gives a partial
 * (out normalised within the part, natural-log lse) and qsdpa_merge combines
 * them exactly: the KIVI split costs no accuracy beyond the window's own
 * rounding to residual_dtype. */
#include "cache/cache_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Grow-only scratch owned by the cache (the context's scratch is the kernels'
 * and is reused inside each call, so partials cannot live there). */
static qsdpa_status cache_scratch(qsdpa_cache *c, void *stream, size_t bytes, void **out) {
    if (bytes > c->scratch_bytes) {
        void *p = NULL;
        /* allocating inside a capture would break it: grown only outside one, as the context's own buffers */
        qsdpa_status st = qsdpa_cache_mem_refuse_capture(
            c, stream, "qsdpa_cache_attend",
            "the cache's partials scratch must grow, which allocates: attend once at this shape (or the largest the "
            "graph will hold) before capturing");
        /* at least twice the old size, so what is kept below stays under the live buffer's size */
        const size_t grown = c->scratch_bytes <= SIZE_MAX / 2 && bytes < 2 * c->scratch_bytes ? 2 * c->scratch_bytes : bytes;
        cache_retired *keep = NULL;
        if (st == QSDPA_OK && c->scratch && !(keep = malloc(sizeof *keep)))
            st = qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, "qsdpa_cache_attend", "cannot allocate a list node");
        if (st == QSDPA_OK) st = qsdpa_cache_mem_alloc(c, stream, "qsdpa_cache_attend", grown, &p);
        if (st != QSDPA_OK) {
            free(keep);
            return st;
        }
        /* the outgrown scratch is kept until the cache goes: a graph captured over a smaller attend still
         * reads it, and freeing it would make that graph's replays write freed memory */
        if (keep) {
            keep->ptr = c->scratch;
            keep->next = c->retired;
            c->retired = keep;
            c->retired_bytes += c->scratch_bytes;
        }
        c->scratch = p;
        c->scratch_bytes = grown;
    }
    *out = c->scratch;
    return QSDPA_OK;
}

/* Keys [first, first + count) of a mask broadcastable to [.., Lk]: a view
 * with the base moved along the last dim (a broadcast last dim stays). */
static qsdpa_tensor mask_slice(const qsdpa_tensor *m, int64_t first, int64_t count) {
    qsdpa_tensor s = *m;
    int last = m->rank - 1;
    if (m->shape[last] != 1) {
        s.data = (char *)m->data + (size_t)(first * m->stride[last]) * qsdpa_dtype_size(m->dtype);
        s.shape[last] = count;
    }
    return s;
}

qsdpa_status qsdpa_cache_attend(qsdpa_context *ctx, qsdpa_cache *cache, int64_t layer, const qsdpa_tensor *q,
                                const qsdpa_attention_params *params, qsdpa_tensor *out) {
    qsdpa_clear_error();
    const char *fn = __func__;
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is NULL");
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "cache is NULL");
    if (layer < 0 || layer >= cache->options.layers)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "layer = %lld is outside [0, %lld)", (long long)layer,
                          (long long)cache->options.layers);
    if (!q) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "q is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "out is NULL");
    if (q->rank != 4) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "q->rank = %d, expected 4", q->rank);
    qsdpa_status st = qsdpa_cache_check_context(fn, cache, ctx);
    if (st != QSDPA_OK) return st;
    qsdpa_attention_params p = params ? *params : qsdpa_attention_default_params();
    if (p.key_offset != 0 || p.key_total != 0)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn,
                          "params->key_offset = %lld, key_total = %lld: must be 0 (the cache sets them)",
                          (long long)p.key_offset, (long long)p.key_total);
    const cache_layer *L = &cache->layers[layer];
    int64_t total = L->qlen + L->rlen;
    if (total == 0)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "layer %lld is empty (Lk = 0): append before attending",
                          (long long)layer);
    if (p.mask) {
        const qsdpa_tensor *m = p.mask;
        if (m->rank < 1 || m->rank > QSDPA_MAX_RANK || (m->shape[m->rank - 1] != total && m->shape[m->rank - 1] != 1))
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn,
                              "mask rank %d, last dim %lld: expected rank 1..4 with last dim Lk = %lld or 1", m->rank,
                              m->rank >= 1 && m->rank <= QSDPA_MAX_RANK ? (long long)m->shape[m->rank - 1] : -1LL,
                              (long long)total);
    }
    qsdpa_qtensor kq, vq, kr, vr;
    qsdpa_cache_view(cache, layer, QSDPA_CACHE_QUANTIZED, &kq, &vq);
    qsdpa_cache_view(cache, layer, QSDPA_CACHE_RESIDUAL, &kr, &vr);
    if (L->rlen == 0) return qsdpa_attention(ctx, q, &kq, &vq, &p, out);
    if (L->qlen == 0) return qsdpa_attention(ctx, q, &kr, &vr, &p, out);

    /* Two partials over global key positions [0, qlen) and [qlen, total). */
    int64_t B = q->shape[0], Hq = q->shape[1], Lq = q->shape[2], Dv = cache->options.dim_v;
    if (B < 1 || Hq < 1 || Lq < 1)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "q shape [%lld, %lld, %lld, %lld] has an empty dim",
                          (long long)B, (long long)Hq, (long long)Lq, (long long)q->shape[3]);
    size_t rows, outs_elems, bytes;
    if (!qsdpa_mul_size((size_t)B, (size_t)Hq, &rows) || !qsdpa_mul_size(rows, (size_t)Lq, &rows) ||
        !qsdpa_mul_size(rows, (size_t)Dv + 1, &outs_elems) || !qsdpa_mul_size(outs_elems, 2 * sizeof(float), &bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "partial results of q [%lld, %lld, %lld, *] overflow size_t",
                          (long long)B, (long long)Hq, (long long)Lq);
    void *scratch = NULL;
    st = cache_scratch(cache, ctx->options.stream, bytes, &scratch);
    if (st != QSDPA_OK) return st;
    float *o0 = scratch, *o1 = o0 + rows * (size_t)Dv, *l0 = o1 + rows * (size_t)Dv, *l1 = l0 + rows;
    qsdpa_tensor outs[2] = {qsdpa_tensor_4d(o0, QSDPA_DTYPE_F32, B, Hq, Lq, Dv),
                            qsdpa_tensor_4d(o1, QSDPA_DTYPE_F32, B, Hq, Lq, Dv)};
    int64_t lshape[3] = {B, Hq, Lq};
    qsdpa_tensor lses[2] = {qsdpa_tensor_make(l0, QSDPA_DTYPE_F32, 3, lshape),
                            qsdpa_tensor_make(l1, QSDPA_DTYPE_F32, 3, lshape)};
    qsdpa_tensor m0, m1;
    qsdpa_attention_params p0 = p, p1 = p;
    p0.key_offset = 0;
    p0.key_total = total;
    p1.key_offset = L->qlen;
    p1.key_total = total;
    p1.sinks = NULL; /* the sink column belongs to exactly one slice */
    if (p.mask) {
        m0 = mask_slice(p.mask, 0, L->qlen);
        m1 = mask_slice(p.mask, L->qlen, L->rlen);
        p0.mask = &m0;
        p1.mask = &m1;
    }
    st = qsdpa_attention_partial(ctx, q, &kq, &vq, &p0, &outs[0], &lses[0]);
    if (st == QSDPA_OK) st = qsdpa_attention_partial(ctx, q, &kr, &vr, &p1, &outs[1], &lses[1]);
    if (st == QSDPA_OK) st = qsdpa_merge(ctx, 2, outs, lses, out, NULL);
    return st;
}
