/* KV cache: options, lifetime, growth, append (quantize on the way in), trim,
 * views. Attention over the cache is in cache_attend.c, files in cache_io.c. */
#include "cache/cache_internal.h"
#include "cuda/cuda_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* mlx-lm's KVCache.step: capacity grows 256 tokens at a time. */
#define CACHE_DEFAULT_STEP 256

static bool is_float_dtype(qsdpa_dtype d) {
    return d == QSDPA_DTYPE_F32 || d == QSDPA_DTYPE_F16 || d == QSDPA_DTYPE_BF16;
}

qsdpa_cache_options qsdpa_cache_default_options(void) {
    qsdpa_cache_options o;
    memset(&o, 0, sizeof o);
    o.layers = 1;
    o.batch = 1;
    o.heads_kv = 1;
    o.dim_k = 128;
    o.dim_v = 128;
    o.k_format.mode = QSDPA_MODE_AFFINE;
    o.k_format.bits = 4;
    o.k_format.group = 64;
    o.v_format = o.k_format;
    o.scale_dtype = QSDPA_DTYPE_F16;
    o.step = CACHE_DEFAULT_STEP;
    o.residual = 0;
    o.residual_dtype = QSDPA_DTYPE_F16;
    return o;
}

/* Re-raise the format library's message under `function` (copied first: both
 * live in the same per-thread buffer). */
static qsdpa_status format_fail(const char *function, const char *what) {
    char why[256];
    snprintf(why, sizeof why, "%s", qsdpa_last_error());
    return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "%s: %s", what, why);
}

static qsdpa_status fill_geom(const char *function, const char *side, const qsdpa_format *f, int64_t dim,
                              const qsdpa_cache_options *o, cache_geom *g) {
    memset(g, 0, sizeof *g);
    g->format = *f;
    g->dim = dim;
    char what[64];
    snprintf(what, sizeof what, "options->%s_format", side);
    if (qsdpa_format_check(f) != QSDPA_OK) return format_fail(function, what);
    int64_t words = 0;
    if (qsdpa_format_row_words(f, dim, &words) != QSDPA_OK) {
        snprintf(what, sizeof what, "options->dim_%s = %lld does not fit the format", side, (long long)dim);
        return format_fail(function, what);
    }
    if (f->mode == QSDPA_MODE_PLAIN) {
        g->code_dtype = f->plain_dtype;
        g->code_elems = dim;
    } else {
        g->code_dtype = QSDPA_DTYPE_U32;
        g->code_elems = words;
        if (qsdpa_format_row_scales(f, dim, &g->nscales) != QSDPA_OK) return format_fail(function, what);
        g->has_biases = qsdpa_format_has_biases(f);
        g->scale_dtype = g->has_biases ? o->scale_dtype : QSDPA_DTYPE_U8;
    }
    g->code_row_bytes = (size_t)g->code_elems * qsdpa_dtype_size(g->code_dtype);
    g->scale_row_bytes = (size_t)g->nscales * qsdpa_dtype_size(g->scale_dtype);
    g->resid_row_bytes = (size_t)dim * qsdpa_dtype_size(o->residual_dtype);
    return QSDPA_OK;
}

/* Largest sizes accepted, so every byte count below fits comfortably in 64 bits. */
#define CACHE_MAX_EXTENT (INT64_C(1) << 24)

qsdpa_status qsdpa_cache_check_options(const char *function, const qsdpa_cache_options *o, cache_geom *gk,
                                       cache_geom *gv) {
    if (!o) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "options is NULL");
    const struct { const char *name; int64_t value, lo; } sizes[] = {
        {"layers", o->layers, 1}, {"batch", o->batch, 1},   {"heads_kv", o->heads_kv, 1},
        {"dim_k", o->dim_k, 1},   {"dim_v", o->dim_v, 1},   {"step", o->step, 0},
        {"residual", o->residual, 0},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value < sizes[i].lo || sizes[i].value > CACHE_MAX_EXTENT)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "options->%s = %lld is outside [%lld, %lld]",
                              sizes[i].name, (long long)sizes[i].value, (long long)sizes[i].lo,
                              (long long)CACHE_MAX_EXTENT);
    if (o->dim_k > 1024 || o->dim_v > 1024)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "options->dim_k = %lld, dim_v = %lld: head dims above 1024",
                          (long long)o->dim_k, (long long)o->dim_v);
    if (!is_float_dtype(o->residual_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "options->residual_dtype = %s is not f32/f16/bf16",
                          qsdpa_dtype_name(o->residual_dtype));
    bool affine = o->k_format.mode == QSDPA_MODE_AFFINE || o->v_format.mode == QSDPA_MODE_AFFINE;
    if (affine && !is_float_dtype(o->scale_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "options->scale_dtype = %s is not f32/f16/bf16",
                          qsdpa_dtype_name(o->scale_dtype));
    qsdpa_status st = fill_geom(function, "k", &o->k_format, o->dim_k, o, gk);
    if (st != QSDPA_OK) return st;
    return fill_geom(function, "v", &o->v_format, o->dim_v, o, gv);
}

static void free_side(const qsdpa_cache *c, cache_side *s) {
    qsdpa_cache_mem_free(c, s->codes);
    qsdpa_cache_mem_free(c, s->scales);
    qsdpa_cache_mem_free(c, s->biases);
    qsdpa_cache_mem_free(c, s->resid);
    memset(s, 0, sizeof *s);
}

void qsdpa_cache_destroy(qsdpa_cache *cache) {
    if (!cache) return;
    if (cache->layers)
        for (int64_t l = 0; l < cache->options.layers; l++) {
            free_side(cache, &cache->layers[l].k);
            free_side(cache, &cache->layers[l].v);
        }
    free(cache->layers);
    qsdpa_cache_mem_free(cache, cache->scratch);
    for (cache_retired *r = cache->retired, *next; r; r = next) {
        next = r->next;
        qsdpa_cache_mem_free(cache, r->ptr);
        free(r);
    }
    free(cache);
}

/* Zeroed slabs * rows * row_bytes of the cache's memory, checked; a zero size gives NULL and OK. */
static qsdpa_status alloc_rows(const qsdpa_cache *c, void *stream, const char *function, int64_t slabs,
                               int64_t rows, size_t row_bytes, void **out) {
    *out = NULL;
    size_t n;
    if (!qsdpa_mul_size((size_t)slabs, (size_t)rows, &n) || !qsdpa_mul_size(n, row_bytes, &n))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, function, "%lld x %lld rows of %zu bytes overflow size_t",
                          (long long)slabs, (long long)rows, row_bytes);
    return qsdpa_cache_mem_alloc(c, stream, function, n, out);
}

/* Fresh windows of `rows` rows per (b, h) for both sides; on failure neither is kept. */
static qsdpa_status alloc_windows(qsdpa_cache *c, void *stream, const char *function, int64_t rows,
                                  void *fresh[2]) {
    const int64_t slabs = c->options.batch * c->options.heads_kv;
    qsdpa_status st = alloc_rows(c, stream, function, slabs, rows, c->gk.resid_row_bytes, &fresh[0]);
    if (st == QSDPA_OK) st = alloc_rows(c, stream, function, slabs, rows, c->gv.resid_row_bytes, &fresh[1]);
    if (st != QSDPA_OK) {
        qsdpa_cache_mem_free(c, fresh[0]);
        qsdpa_cache_mem_free(c, fresh[1]);
        fresh[0] = fresh[1] = NULL;
    }
    return st;
}

qsdpa_status qsdpa_cache_window_alloc(const char *function, qsdpa_cache *c, void *stream, cache_layer *layer,
                                      int64_t rows) {
    if (rows <= 0 || layer->rcap > 0) return QSDPA_OK;
    void *fresh[2] = {NULL, NULL};
    qsdpa_status st = alloc_windows(c, stream, function, rows, fresh);
    if (st != QSDPA_OK) return st;
    layer->k.resid = fresh[0];
    layer->v.resid = fresh[1];
    layer->rcap = rows;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_create(qsdpa_context *ctx, const qsdpa_cache_options *options, qsdpa_cache **out) {
    qsdpa_clear_error();
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "ctx is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    cache_geom gk, gv;
    qsdpa_status st = qsdpa_cache_check_options(__func__, options, &gk, &gv);
    if (st != QSDPA_OK) return st;
    qsdpa_cache *c = calloc(1, sizeof *c);
    if (!c) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, __func__, "cannot allocate the cache");
    c->options = *options;
    c->device = ctx->options.backend == QSDPA_BACKEND_CUDA; /* storage in the context's device memory */
    c->cuda_device = c->device ? ctx->options.device : -1;
    if (c->options.step == 0) c->options.step = CACHE_DEFAULT_STEP;
    c->gk = gk;
    c->gv = gv;
    c->layers = calloc((size_t)c->options.layers, sizeof *c->layers);
    if (!c->layers) {
        qsdpa_cache_destroy(c);
        return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, __func__, "cannot allocate %lld layers",
                          (long long)c->options.layers);
    }
    *out = c;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_get_options(const qsdpa_cache *cache, qsdpa_cache_options *out) {
    qsdpa_clear_error();
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "cache is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    *out = cache->options;
    return QSDPA_OK;
}

/* Copy the first `rows` rows of every slab of `old` (old_cap rows per slab)
 * into `fresh` (new_cap rows per slab): one strided copy. */
static qsdpa_status copy_slabs(const qsdpa_cache *c, void *stream, void *fresh, const void *old, int64_t slabs,
                               int64_t old_cap, int64_t new_cap, int64_t rows, size_t row_bytes) {
    if (!old || rows == 0) return QSDPA_OK;
    return qsdpa_cache_mem_copy2d(c, stream, fresh, (size_t)new_cap * row_bytes, old, (size_t)old_cap * row_bytes,
                                  (size_t)rows * row_bytes, (size_t)slabs);
}

qsdpa_status qsdpa_cache_reserve(const char *function, qsdpa_cache *c, void *stream, cache_layer *layer,
                                 int64_t tokens, int64_t step) {
    if (tokens <= layer->capacity) return QSDPA_OK;
    if (tokens > INT64_MAX - step)
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, function, "%lld tokens overflow", (long long)tokens);
    int64_t cap = (tokens + step - 1) / step * step;
    int64_t slabs = c->options.batch * c->options.heads_kv;
    const cache_geom *g[2] = {&c->gk, &c->gv};
    cache_side *sides[2] = {&layer->k, &layer->v};
    void *fresh[2][3] = {{NULL}};
    qsdpa_status st = QSDPA_OK;
    for (int s = 0; s < 2 && st == QSDPA_OK; s++) {
        st = alloc_rows(c, stream, function, slabs, cap, g[s]->code_row_bytes, &fresh[s][0]);
        if (st == QSDPA_OK) st = alloc_rows(c, stream, function, slabs, cap, g[s]->scale_row_bytes, &fresh[s][1]);
        if (st == QSDPA_OK && g[s]->has_biases)
            st = alloc_rows(c, stream, function, slabs, cap, g[s]->scale_row_bytes, &fresh[s][2]);
    }
    for (int s = 0; s < 2 && st == QSDPA_OK; s++) {
        int64_t n = layer->qlen, oc = layer->capacity;
        st = copy_slabs(c, stream, fresh[s][0], sides[s]->codes, slabs, oc, cap, n, g[s]->code_row_bytes);
        if (st == QSDPA_OK)
            st = copy_slabs(c, stream, fresh[s][1], sides[s]->scales, slabs, oc, cap, n, g[s]->scale_row_bytes);
        if (st == QSDPA_OK)
            st = copy_slabs(c, stream, fresh[s][2], sides[s]->biases, slabs, oc, cap, n, g[s]->scale_row_bytes);
    }
    if (st != QSDPA_OK) {
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < 3; i++) qsdpa_cache_mem_free(c, fresh[s][i]);
        return st;
    }
    for (int s = 0; s < 2; s++) {
        qsdpa_cache_mem_free(c, sides[s]->codes);
        qsdpa_cache_mem_free(c, sides[s]->scales);
        qsdpa_cache_mem_free(c, sides[s]->biases);
        sides[s]->codes = fresh[s][0];
        sides[s]->scales = fresh[s][1];
        sides[s]->biases = fresh[s][2];
    }
    layer->capacity = cap;
    return QSDPA_OK;
}

static qsdpa_status check_layer(const char *function, const qsdpa_cache *cache, int64_t layer) {
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "cache is NULL");
    if (layer < 0 || layer >= cache->options.layers)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "layer = %lld is outside [0, %lld)", (long long)layer,
                          (long long)cache->options.layers);
    return QSDPA_OK;
}

/* k or v of an append: [B,Hkv,T,dim] float rows, last dim contiguous. */
static qsdpa_status check_rows(const char *name, const qsdpa_cache *c, const qsdpa_tensor *t, int64_t dim) {
    const char *fn = "qsdpa_cache_append";
    if (!t) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s is NULL", name);
    if (!t->data) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s->data is NULL", name);
    if (t->rank != 4) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s->rank = %d, expected 4", name, t->rank);
    if (!is_float_dtype(t->dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s->dtype = %s is not f32/f16/bf16", name,
                          qsdpa_dtype_name(t->dtype));
    int64_t want[4] = {c->options.batch, c->options.heads_kv, t->shape[2], dim};
    for (int d = 0; d < 4; d++) {
        if (t->shape[d] != want[d] || (d == 2 && t->shape[d] < 1))
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn,
                              "%s shape = [%lld, %lld, %lld, %lld], expected [B=%lld, Hkv=%lld, T>=1, D=%lld]", name,
                              (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                              (long long)t->shape[3], (long long)c->options.batch, (long long)c->options.heads_kv,
                              (long long)dim);
        if (t->stride[d] < 0)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s->stride[%d] = %lld is negative", name, d,
                              (long long)t->stride[d]);
    }
    if (t->stride[3] != 1 && dim != 1)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s->stride[3] = %lld: the last dim must be contiguous", name,
                          (long long)t->stride[3]);
    return QSDPA_OK;
}

/* Convert n elements between float dtypes (memcpy when equal). */
static void convert_elems(void *dst, qsdpa_dtype dd, const void *src, qsdpa_dtype sd, int64_t n) {
    if (dd == sd) {
        memcpy(dst, src, (size_t)n * qsdpa_dtype_size(sd));
        return;
    }
    for (int64_t i = 0; i < n; i++) qsdpa_store_float(dst, dd, i, qsdpa_load_float(src, sd, i));
}

/* Quantize `rows` source rows (row r at src + r * src_stride bytes, x_dtype)
 * into rows [dst, dst + rows) of slab `slab` of the quantized part. */
static qsdpa_status quantize_rows(qsdpa_context *ctx, const qsdpa_cache *c, const cache_geom *g, cache_side *s,
                                  int64_t capacity, int64_t slab, int64_t dst, const char *src, size_t src_stride,
                                  qsdpa_dtype x_dtype, int64_t rows) {
    size_t row0 = (size_t)(slab * capacity + dst);
    char *codes = (char *)s->codes + row0 * g->code_row_bytes;
    char *scales = s->scales ? (char *)s->scales + row0 * g->scale_row_bytes : NULL;
    char *biases = s->biases ? (char *)s->biases + row0 * g->scale_row_bytes : NULL;
    size_t packed = (size_t)g->dim * qsdpa_dtype_size(x_dtype);
    if (c->device && g->format.mode == QSDPA_MODE_PLAIN) /* same dtype: checked by the caller */
        return qsdpa_cache_mem_copy2d(c, ctx->options.stream, codes, g->code_row_bytes, src, src_stride,
                                      g->code_row_bytes, (size_t)rows);
    /* Contiguous source rows go in one call; strided ones one row at a time. */
    int64_t chunk = src_stride == packed ? rows : 1;
    for (int64_t r = 0; r < rows; r += chunk) {
        const char *x = src + (size_t)r * src_stride;
        if (g->format.mode == QSDPA_MODE_PLAIN) {
            convert_elems(codes + (size_t)r * g->code_row_bytes, g->code_dtype, x, x_dtype, chunk * g->dim);
            continue;
        }
        uint32_t *rc = (uint32_t *)(void *)(codes + (size_t)r * g->code_row_bytes);
        char *rs = scales + (size_t)r * g->scale_row_bytes;
        char *rb = biases ? biases + (size_t)r * g->scale_row_bytes : NULL;
#ifdef QSDPA_HAVE_CUDA
        qsdpa_status st = c->device ? qsdpa_quantize_device(ctx, &g->format, x, x_dtype, chunk, g->dim, rc, rs, rb,
                                                            g->scale_dtype)
                                    : qsdpa_quantize(&g->format, x, x_dtype, chunk, g->dim, rc, rs, rb, g->scale_dtype);
#else
        qsdpa_status st = qsdpa_quantize(&g->format, x, x_dtype, chunk, g->dim, rc, rs, rb, g->scale_dtype);
#endif
        if (st != QSDPA_OK) return st;
    }
    return QSDPA_OK;
}

/* Row t of slab (b, h) of an append input, as bytes. */
static const char *input_row(const qsdpa_tensor *t, int64_t b, int64_t h, int64_t row) {
    return (const char *)t->data +
           (size_t)(b * t->stride[0] + h * t->stride[1] + row * t->stride[2]) * qsdpa_dtype_size(t->dtype);
}

/* An append runs in two phases so that a failure changes nothing visible:
 * first both sides quantize into rows past qlen (ignored until qlen moves),
 * then both windows slide and take the new rows. */

/* Phase 1 for one side: window rows leaving the window, then the oldest new
 * rows, into quantized rows [qlen, qlen + from_resid + from_new). */
static qsdpa_status quantize_side(qsdpa_context *ctx, qsdpa_cache *c, const cache_layer *L, const cache_geom *g,
                                  cache_side *s, const qsdpa_tensor *x, int64_t from_resid, int64_t from_new) {
    int64_t H = c->options.heads_kv, rcap = L->rcap;
    size_t xstride = (size_t)x->stride[2] * qsdpa_dtype_size(x->dtype);
    qsdpa_status st = QSDPA_OK;
    for (int64_t b = 0; b < c->options.batch; b++)
        for (int64_t h = 0; h < H && st == QSDPA_OK; h++) {
            int64_t slab = b * H + h;
            if (from_resid > 0) {
                const char *win = (char *)s->resid + (size_t)(slab * rcap + L->rstart) * g->resid_row_bytes;
                st = quantize_rows(ctx, c, g, s, L->capacity, slab, L->qlen, win, g->resid_row_bytes,
                                   c->options.residual_dtype, from_resid);
            }
            if (st == QSDPA_OK && from_new > 0)
                st = quantize_rows(ctx, c, g, s, L->capacity, slab, L->qlen + from_resid, input_row(x, b, h, 0),
                                   xstride, x->dtype, from_new);
        }
    return st;
}

/* Phase 2 for one side: the kept window rows move to new_rstart (when the
 * buffer's end is reached), into `fresh` (new_rcap rows a slab) when the window
 * grows, and the newest input rows follow them. */
static qsdpa_status window_side(qsdpa_context *ctx, qsdpa_cache *c, const cache_layer *L, const cache_geom *g,
                                const cache_side *s, const qsdpa_tensor *x, int64_t from_resid, int64_t from_new,
                                int64_t new_rstart, void *fresh, int64_t new_rcap) {
    char *dst_base = fresh ? (char *)fresh : (char *)s->resid;
    if (!dst_base) return QSDPA_OK;
    int64_t H = c->options.heads_kv, T = x->shape[2], rcap = fresh ? new_rcap : L->rcap;
    int64_t kept = L->rlen - from_resid, first = L->rstart + from_resid;
    size_t rrb = g->resid_row_bytes, xstride = (size_t)x->stride[2] * qsdpa_dtype_size(x->dtype);
    qsdpa_status st = QSDPA_OK;
    for (int64_t b = 0; b < c->options.batch; b++)
        for (int64_t h = 0; h < H && st == QSDPA_OK; h++) {
            char *win = dst_base + (size_t)((b * H + h) * rcap) * rrb;
            if (kept > 0 && fresh) /* another buffer: no overlap */
                st = qsdpa_cache_mem_copy2d(c, ctx->options.stream, win + (size_t)new_rstart * rrb, rrb,
                                            (const char *)s->resid + (size_t)((b * H + h) * L->rcap + first) * rrb,
                                            rrb, rrb, (size_t)kept);
            else if (kept > 0 && new_rstart != first)
                st = qsdpa_cache_mem_move(c, ctx->options.stream, win + (size_t)new_rstart * rrb,
                                          win + (size_t)first * rrb, (size_t)kept * rrb);
            char *dst = win + (size_t)(new_rstart + kept) * rrb;
            if (st != QSDPA_OK) break;
            if (c->device) /* same dtype: checked by the caller */
                st = qsdpa_cache_mem_copy2d(c, ctx->options.stream, dst, rrb, input_row(x, b, h, from_new), xstride,
                                            rrb, (size_t)(T - from_new));
            else
                for (int64_t t = from_new; t < T; t++)
                    convert_elems(dst + (size_t)(t - from_new) * rrb, c->options.residual_dtype, input_row(x, b, h, t),
                                  x->dtype, g->dim);
        }
    return st;
}

qsdpa_status qsdpa_cache_check_context(const char *function, const qsdpa_cache *c, const qsdpa_context *ctx) {
    int device = ctx->options.backend == QSDPA_BACKEND_CUDA;
    if (device != c->device)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "ctx is a %s context but the cache is in %s memory",
                          device ? "CUDA" : "CPU", c->device ? "device" : "host");
    if (device && ctx->options.device != c->cuda_device)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "ctx is on CUDA device %d but the cache is on device %d",
                          ctx->options.device, c->cuda_device);
    return QSDPA_OK;
}

/* A device cache copies window rows and plain rows without converting them
 * (no conversion kernel yet), and reads only device memory. */
static qsdpa_status check_device_rows(qsdpa_context *ctx, const qsdpa_cache *c, const qsdpa_tensor *x,
                                      const char *name) {
    const char *fn = "qsdpa_cache_append";
    if (!c->device) return QSDPA_OK;
    if (c->options.residual > 0 && x->dtype != c->options.residual_dtype)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "%s->dtype = %s: a CUDA cache's window needs rows of residual_dtype %s",
                          name, qsdpa_dtype_name(x->dtype), qsdpa_dtype_name(c->options.residual_dtype));
    const cache_geom *g = name[0] == 'k' ? &c->gk : &c->gv;
    if (g->format.mode == QSDPA_MODE_PLAIN && x->dtype != g->format.plain_dtype)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "%s->dtype = %s: a CUDA cache stores plain %s rows as given",
                          name, qsdpa_dtype_name(x->dtype), qsdpa_dtype_name(g->format.plain_dtype));
    /* ctx is on the cache's device (qsdpa_cache_check_context), so its check is the cache's */
    return qsdpa_cuda_check_device_ptr(ctx, x->data, fn, name);
}

qsdpa_status qsdpa_cache_append(qsdpa_context *ctx, qsdpa_cache *cache, int64_t layer, const qsdpa_tensor *k,
                                const qsdpa_tensor *v) {
    qsdpa_clear_error();
    const char *fn = __func__;
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is NULL");
    qsdpa_status st = check_layer(fn, cache, layer);
    if (st == QSDPA_OK) st = check_rows("k", cache, k, cache->options.dim_k);
    if (st == QSDPA_OK) st = check_rows("v", cache, v, cache->options.dim_v);
    if (st != QSDPA_OK) return st;
    st = qsdpa_cache_check_context(fn, cache, ctx);
    if (st == QSDPA_OK)
        st = qsdpa_cache_mem_refuse_capture(cache, ctx->options.stream, fn,
                                            "an append updates the cache's lengths on the host (and may allocate), so "
                                            "a replay would not append; call it outside the capture");
    if (st == QSDPA_OK) st = check_device_rows(ctx, cache, k, "k");
    if (st == QSDPA_OK) st = check_device_rows(ctx, cache, v, "v");
    if (st != QSDPA_OK) return st;
    if (k->shape[2] != v->shape[2])
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "k has T = %lld tokens but v has %lld",
                          (long long)k->shape[2], (long long)v->shape[2]);
    cache_layer *L = &cache->layers[layer];
    int64_t T = k->shape[2], R = cache->options.residual;
    if (T > CACHE_MAX_EXTENT || L->qlen + L->rlen > INT64_MAX / 4 - T)
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "T = %lld tokens on top of %lld overflow", (long long)T,
                          (long long)(L->qlen + L->rlen));
    /* Plan: the oldest tokens beyond the window are quantized, window rows first. */
    int64_t overflow = L->rlen + T - R > 0 ? L->rlen + T - R : 0;
    int64_t from_resid = overflow < L->rlen ? overflow : L->rlen;
    int64_t from_new = overflow - from_resid;
    int64_t kept = L->rlen - from_resid, added = T - from_new;
    int64_t new_rstart = L->rstart + from_resid, need = kept + added, new_rcap = L->rcap;
    /* Past the buffer's end the window slides to its start, which costs one move per rcap - need appended
     * tokens; a buffer under twice the rows kept is first doubled (up to 2R), so moves and growth both stay
     * amortized and a window allocates what it holds */
    if (new_rstart + need > L->rcap) {
        new_rstart = 0;
        if (L->rcap < 2 * need) new_rcap = 2 * need > 2 * L->rcap ? 2 * need : 2 * L->rcap;
        if (new_rcap > 2 * R) new_rcap = 2 * R;
    }
    void *fresh[2] = {NULL, NULL};
    st = qsdpa_cache_reserve(fn, cache, ctx->options.stream, L, L->qlen + overflow, cache->options.step);
    if (st == QSDPA_OK && new_rcap != L->rcap) st = alloc_windows(cache, ctx->options.stream, fn, new_rcap, fresh);
    if (st == QSDPA_OK) st = quantize_side(ctx, cache, L, &cache->gk, &L->k, k, from_resid, from_new);
    if (st == QSDPA_OK) st = quantize_side(ctx, cache, L, &cache->gv, &L->v, v, from_resid, from_new);
    if (st == QSDPA_OK)
        st = window_side(ctx, cache, L, &cache->gk, &L->k, k, from_resid, from_new, new_rstart, fresh[0], new_rcap);
    if (st == QSDPA_OK)
        st = window_side(ctx, cache, L, &cache->gv, &L->v, v, from_resid, from_new, new_rstart, fresh[1], new_rcap);
    if (st != QSDPA_OK) {
        qsdpa_cache_mem_free(cache, fresh[0]);
        qsdpa_cache_mem_free(cache, fresh[1]);
        return st;
    }
    if (fresh[0]) { /* the grown window replaces the old one (freeing waits for the copies out of it) */
        qsdpa_cache_mem_free(cache, L->k.resid);
        qsdpa_cache_mem_free(cache, L->v.resid);
        L->k.resid = fresh[0];
        L->v.resid = fresh[1];
        L->rcap = new_rcap;
    }
    L->qlen += overflow;
    L->rstart = new_rstart;
    L->rlen = kept + added;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_trim(qsdpa_cache *cache, int64_t tokens) {
    qsdpa_clear_error();
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "cache is NULL");
    if (tokens < 0) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "tokens = %lld is negative", (long long)tokens);
    for (int64_t l = 0; l < cache->options.layers; l++) {
        const cache_layer *L = &cache->layers[l];
        if (tokens > L->qlen + L->rlen)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "tokens = %lld but layer %lld holds %lld",
                              (long long)tokens, (long long)l, (long long)(L->qlen + L->rlen));
    }
    for (int64_t l = 0; l < cache->options.layers; l++) {
        cache_layer *L = &cache->layers[l];
        int64_t from_window = tokens < L->rlen ? tokens : L->rlen;
        L->rlen -= from_window;
        L->qlen -= tokens - from_window;
        if (L->rlen == 0) L->rstart = 0;
    }
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_length(const qsdpa_cache *cache, int64_t layer, int64_t *length) {
    qsdpa_clear_error();
    qsdpa_status st = check_layer(__func__, cache, layer);
    if (st != QSDPA_OK) return st;
    if (!length) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "length is NULL");
    *length = cache->layers[layer].qlen + cache->layers[layer].rlen;
    return QSDPA_OK;
}

/* A [B,H,rows,cols] view of `base` whose slabs are `cap` rows apart. */
static qsdpa_tensor slab_view(void *base, qsdpa_dtype dtype, int64_t B, int64_t H, int64_t rows, int64_t cols,
                              int64_t cap) {
    qsdpa_tensor t;
    memset(&t, 0, sizeof t);
    t.data = base;
    t.dtype = dtype;
    t.rank = 4;
    t.shape[0] = B;
    t.shape[1] = H;
    t.shape[2] = rows;
    t.shape[3] = cols;
    t.stride[3] = 1;
    t.stride[2] = cols;
    t.stride[1] = cap * cols;
    t.stride[0] = H * cap * cols;
    return t;
}

static void side_view(const qsdpa_cache *c, const cache_layer *L, const cache_geom *g, const cache_side *s,
                      qsdpa_cache_part part, qsdpa_qtensor *out) {
    int64_t B = c->options.batch, H = c->options.heads_kv;
    memset(out, 0, sizeof *out);
    out->dim = g->dim;
    if (part == QSDPA_CACHE_RESIDUAL) {
        qsdpa_dtype rd = c->options.residual_dtype;
        out->format.mode = QSDPA_MODE_PLAIN;
        out->format.bits = (int)(8 * qsdpa_dtype_size(rd));
        out->format.plain_dtype = rd;
        char *base = s->resid ? (char *)s->resid + (size_t)L->rstart * g->resid_row_bytes : NULL;
        out->codes = slab_view(base, rd, B, H, L->rlen, g->dim, L->rcap);
        return;
    }
    out->format = g->format;
    out->codes = slab_view(s->codes, g->code_dtype, B, H, L->qlen, g->code_elems, L->capacity);
    if (g->format.mode == QSDPA_MODE_PLAIN) return;
    out->scales = slab_view(s->scales, g->scale_dtype, B, H, L->qlen, g->nscales, L->capacity);
    if (g->has_biases) out->biases = slab_view(s->biases, g->scale_dtype, B, H, L->qlen, g->nscales, L->capacity);
}

qsdpa_status qsdpa_cache_view(const qsdpa_cache *cache, int64_t layer, qsdpa_cache_part part, qsdpa_qtensor *k,
                              qsdpa_qtensor *v) {
    qsdpa_clear_error();
    qsdpa_status st = check_layer(__func__, cache, layer);
    if (st != QSDPA_OK) return st;
    if (part != QSDPA_CACHE_QUANTIZED && part != QSDPA_CACHE_RESIDUAL)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "part = %d is not a qsdpa_cache_part", (int)part);
    if (!k || !v) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "%s is NULL", k ? "v" : "k");
    const cache_layer *L = &cache->layers[layer];
    side_view(cache, L, &cache->gk, &L->k, part, k);
    side_view(cache, L, &cache->gv, &L->v, part, v);
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_memory(const qsdpa_cache *cache, size_t *allocated_bytes, size_t *used_bytes) {
    qsdpa_clear_error();
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "cache is NULL");
    size_t slabs = (size_t)(cache->options.batch * cache->options.heads_kv), alloc = 0, used = 0;
    const cache_geom *gk = &cache->gk, *gv = &cache->gv;
    size_t qrow = gk->code_row_bytes + gv->code_row_bytes + (size_t)(1 + gk->has_biases) * gk->scale_row_bytes +
                  (size_t)(1 + gv->has_biases) * gv->scale_row_bytes;
    size_t rrow = gk->resid_row_bytes + gv->resid_row_bytes;
    for (int64_t l = 0; l < cache->options.layers; l++) {
        const cache_layer *L = &cache->layers[l];
        alloc += slabs * ((size_t)L->capacity * qrow + (size_t)L->rcap * rrow);
        used += slabs * ((size_t)L->qlen * qrow + (size_t)L->rlen * rrow);
    }
    if (allocated_bytes) *allocated_bytes = alloc + cache->scratch_bytes + cache->retired_bytes;
    if (used_bytes) *used_bytes = used;
    return QSDPA_OK;
}
