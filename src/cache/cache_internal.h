/* The KV cache object: storage layout shared by cache.c (lifetime, append,
 * trim), cache_attend.c and cache_io.c (save/load). Not installed. */
#ifndef QSDPA_CACHE_INTERNAL_H
#define QSDPA_CACHE_INTERNAL_H

#include "internal.h"

/* One of K or V of one layer. Rows of one (b, h) are contiguous, so a view is
 * [B,Hkv,L,*] with stride[2] = row size and stride[1] = capacity * row size. */
typedef struct cache_side {
    void *codes;  /* [B,Hkv,capacity,row_words] u32; PLAIN: [B,Hkv,capacity,dim] plain_dtype */
    void *scales; /* [B,Hkv,capacity,nscales] scale dtype, NULL for PLAIN */
    void *biases; /* [B,Hkv,capacity,nscales] affine only, else NULL */
    void *resid;  /* [B,Hkv,rcap,dim] residual_dtype, NULL until the window first holds rows */
} cache_side;

typedef struct cache_layer {
    int64_t qlen;     /* tokens in the quantized part: global positions [0, qlen) */
    int64_t capacity; /* rows allocated per (b, h) for the quantized part */
    int64_t rstart;   /* the window occupies rows [rstart, rstart + rlen) of resid */
    int64_t rlen;     /* tokens in the window: global positions [qlen, qlen + rlen) */
    int64_t rcap;     /* window rows allocated per (b, h): grows by doubling up to 2R as the window fills, so a
                       * cache (or a file) asks for the window it uses, not the one R allows */
    cache_side k, v;
} cache_layer;

/* Row geometry of one side (K or V), derived from its format and dim. */
typedef struct cache_geom {
    qsdpa_format format;
    int64_t dim;          /* logical head dim */
    qsdpa_dtype code_dtype;  /* U32, or plain_dtype for PLAIN */
    int64_t code_elems;   /* elements of code_dtype per row */
    qsdpa_dtype scale_dtype; /* U8 (fp modes) or options.scale_dtype (affine) */
    int64_t nscales;      /* scales per row (0 for PLAIN) */
    int has_biases;
    size_t code_row_bytes, scale_row_bytes; /* bytes per row (biases: scale_row_bytes) */
    size_t resid_row_bytes;                 /* dim * sizeof(residual_dtype) */
} cache_geom;

/* An outgrown attend scratch, kept until the cache is destroyed (CUDA graphs may still read it). */
typedef struct cache_retired {
    void *ptr;
    struct cache_retired *next;
} cache_retired;

struct qsdpa_cache {
    qsdpa_cache_options options; /* step resolved */
    int device;                  /* 1: storage is CUDA device memory (created on a CUDA context) */
    int cuda_device;             /* that context's device ordinal (device caches) */
    cache_geom gk, gv;
    cache_layer *layers;         /* [options.layers] */
    void *scratch;               /* attend: two partial outs + lses, grow-only */
    size_t scratch_bytes;
    cache_retired *retired;      /* outgrown scratch buffers */
    size_t retired_bytes;
};

/* ---- storage (cache_mem.c): host heap or CUDA device memory ------------
 * stream: the calling context's CUDA stream (ignored for host caches). */
/* zeroed, device memory on `stream` (the calling context's) */
qsdpa_status qsdpa_cache_mem_alloc(const qsdpa_cache *c, void *stream, const char *function, size_t bytes, void **out);
void qsdpa_cache_mem_free(const qsdpa_cache *c, void *p);
/* rows rows of width bytes, from src (spitch apart) to dst (dpitch apart); src may be the caller's memory. */
qsdpa_status qsdpa_cache_mem_copy2d(const qsdpa_cache *c, void *stream, void *dst, size_t dpitch, const void *src,
                                    size_t spitch, size_t width, size_t rows);
/* memmove within the cache's storage (dst <= src when the regions overlap). */
qsdpa_status qsdpa_cache_mem_move(const qsdpa_cache *c, void *stream, void *dst, const void *src, size_t bytes);
qsdpa_status qsdpa_cache_mem_to_host(const qsdpa_cache *c, void *dst, const void *src, size_t bytes);
qsdpa_status qsdpa_cache_mem_from_host(const qsdpa_cache *c, void *dst, const void *src, size_t bytes);

/* Device caches: UNSUPPORTED while `stream` is being captured into a CUDA graph, the message ending in `why`. */
qsdpa_status qsdpa_cache_mem_refuse_capture(const qsdpa_cache *c, void *stream, const char *function,
                                            const char *why);

/* Validate options (messages name `function`) and fill the two geometries. */
qsdpa_status qsdpa_cache_check_options(const char *function, const qsdpa_cache_options *o,
                                       cache_geom *gk, cache_geom *gv);
/* Grow one layer's quantized part to hold at least `tokens` rows per (b, h),
 * rounded up to a multiple of `step` (appends pass the cache's step; a load passes 1,
 * so a file reserves what it stores). On failure the layer is unchanged. */
qsdpa_status qsdpa_cache_reserve(const char *function, qsdpa_cache *c, void *stream, cache_layer *layer,
                                 int64_t tokens, int64_t step);
/* Give a layer without window storage (rcap 0) a window of `rows` rows per (b, h) on both sides (a load). */
qsdpa_status qsdpa_cache_window_alloc(const char *function, qsdpa_cache *c, void *stream, cache_layer *layer,
                                      int64_t rows);
/* The context must match the cache's memory: CUDA on the cache's device for a device cache, CPU otherwise. */
qsdpa_status qsdpa_cache_check_context(const char *function, const qsdpa_cache *c, const qsdpa_context *ctx);

#endif
