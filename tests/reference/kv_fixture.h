/* Random quantized K/V tensors for the reference and API tests: codes and
 * scales drawn at random (every code value reachable), stored in a cache of
 * capacity >= L rows and passed as a strided view of its first L rows.
 * Header-only (static) so tests/reference and tests/api share it. */
#ifndef QSDPA_KV_FIXTURE_H
#define QSDPA_KV_FIXTURE_H

#include <math.h>
#include <string.h>

#include "test_util.h"

typedef struct {
    qsdpa_qtensor t;   /* the view handed to qsdpa: [B, H, L, *] of a [B, H, cap, *] cache */
    void *codes, *scales, *biases; /* owned buffers */
    int64_t cap;
} kv_fixture;

/* One random E4M3 byte that is a finite, normal-range scale (no 0x7F/0xFF). */
static uint8_t fixture_e4m3_scale(test_rng *rng) { return (uint8_t)test_rng_int(rng, 0x28, 0x48); }

/* A random [B, H, L, dim] tensor of format f, scales of scale_dtype (affine). */
static inline kv_fixture kv_fixture_make(test_rng *rng, const qsdpa_format *f, qsdpa_dtype scale_dtype, int64_t B,
                                  int64_t H, int64_t L, int64_t cap, int64_t dim) {
    kv_fixture x;
    memset(&x, 0, sizeof x);
    x.cap = cap;
    x.t.format = *f;
    x.t.dim = dim;
    int64_t words = 0, ns = 0;
    if (f->mode == QSDPA_MODE_PLAIN) words = dim; /* plain rows: dim elements */
    else qsdpa_format_row_words(f, dim, &words);
    int64_t rows = B * H * cap;
    if (f->mode == QSDPA_MODE_PLAIN) {
        x.codes = test_alloc((size_t)(rows * words) * qsdpa_dtype_size(f->plain_dtype));
        test_fill_normal(rng, x.codes, f->plain_dtype, rows * words, 1.0);
        x.t.codes = qsdpa_tensor_4d(x.codes, f->plain_dtype, B, H, cap, words);
    } else {
        qsdpa_format_row_scales(f, dim, &ns);
        uint32_t *c = test_alloc((size_t)(rows * words) * 4);
        for (int64_t i = 0; i < rows * words; i++) {
            uint32_t w = (uint32_t)test_rng_next(rng);
            if (f->mode == QSDPA_MODE_MXFP8) /* E4M3 bytes 0x7F / 0xFF are NaN, never produced by quantize */
                for (int s = 0; s < 32; s += 8)
                    if (((w >> s) & 0x7Fu) == 0x7Fu) w ^= 1u << s;
            c[i] = w;
        }
        x.codes = c;
        x.t.codes = qsdpa_tensor_4d(c, QSDPA_DTYPE_U32, B, H, cap, words);
        bool affine = f->mode == QSDPA_MODE_AFFINE;
        qsdpa_dtype sd = affine ? scale_dtype : QSDPA_DTYPE_U8;
        x.scales = test_alloc((size_t)(rows * ns) * qsdpa_dtype_size(sd));
        for (int64_t i = 0; i < rows * ns; i++) {
            if (affine) qsdpa_store_float(x.scales, sd, i, (float)(0.02 + 0.05 * test_rng_uniform(rng)));
            else if (f->mode == QSDPA_MODE_NVFP4) ((uint8_t *)x.scales)[i] = fixture_e4m3_scale(rng);
            else ((uint8_t *)x.scales)[i] = (uint8_t)test_rng_int(rng, 120, 128);
        }
        x.t.scales = qsdpa_tensor_4d(x.scales, sd, B, H, cap, ns);
        if (affine) {
            x.biases = test_alloc((size_t)(rows * ns) * qsdpa_dtype_size(sd));
            test_fill_normal(rng, x.biases, sd, rows * ns, 0.5);
            x.t.biases = qsdpa_tensor_4d(x.biases, sd, B, H, cap, ns);
        }
    }
    /* the view: first L rows of the cache; strides stay those of the cache */
    x.t.codes.shape[2] = L;
    if (x.t.scales.data) x.t.scales.shape[2] = L;
    if (x.t.biases.data) x.t.biases.shape[2] = L;
    return x;
}

static inline void kv_fixture_free(kv_fixture *x) {
    free(x->codes);
    free(x->scales);
    free(x->biases);
    memset(x, 0, sizeof *x);
}

/* Rows [start, start+len) of a view, as a view (for key slices). */
static inline qsdpa_qtensor kv_slice(const qsdpa_qtensor *t, int64_t start, int64_t len) {
    qsdpa_qtensor s = *t;
    qsdpa_tensor *parts[3] = {&s.codes, &s.scales, &s.biases};
    for (int i = 0; i < 3; i++) {
        if (!parts[i]->data) continue;
        parts[i]->data = (char *)parts[i]->data +
                         (size_t)(start * parts[i]->stride[2]) * qsdpa_dtype_size(parts[i]->dtype);
        parts[i]->shape[2] = len;
    }
    return s;
}

/* Dequantize the whole view through the public qsdpa_dequantize, one row at a
 * time (rows of a strided view are not adjacent): out (B, H, L, dim) floats.
 * f16/bf16 affine scales and biases are widened to f32 first (exact), because
 * SPEC §2 computes w = scale*code + bias in f32, while qsdpa_dequantize with
 * narrow scales rounds in their dtype as mx.dequantize does. */
static inline float *kv_dequantize_all(const qsdpa_qtensor *t) {
    int64_t B = t->codes.shape[0], H = t->codes.shape[1], L = t->codes.shape[2], D = t->dim;
    float *out = test_alloc((size_t)(B * H * L * D) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++) {
                const void *sc = t->scales.data ? qsdpa_row_ptr(&t->scales, b, h, l) : NULL;
                const void *bi = t->biases.data ? qsdpa_row_ptr(&t->biases, b, h, l) : NULL;
                qsdpa_dtype sd = t->scales.dtype;
                float wide_s[1024], wide_b[1024];
                if (t->format.mode == QSDPA_MODE_AFFINE && sd != QSDPA_DTYPE_F32) {
                    for (int64_t g = 0; g < t->scales.shape[3]; g++) {
                        wide_s[g] = qsdpa_load_float(sc, sd, g);
                        wide_b[g] = qsdpa_load_float(bi, sd, g);
                    }
                    sc = wide_s;
                    bi = wide_b;
                    sd = QSDPA_DTYPE_F32;
                }
                qsdpa_status st = qsdpa_dequantize(&t->format, (const uint32_t *)qsdpa_row_ptr(&t->codes, b, h, l), sc,
                                                   bi, sd, 1, D, out + ((b * H + h) * L + l) * D, QSDPA_DTYPE_F32);
                if (st != QSDPA_OK) {
                    fprintf(stderr, "qsdpa_dequantize failed: %s\n", qsdpa_last_error());
                    exit(2);
                }
            }
    return out;
}

static inline double max_abs(const float *x, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
    return m;
}

static inline qsdpa_context *make_context(const char *kernel) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = kernel;
    o.num_threads = 2;
    qsdpa_context *ctx = NULL;
    if (qsdpa_context_create(&o, &ctx) != QSDPA_OK) {
        fprintf(stderr, "qsdpa_context_create(%s): %s\n", kernel ? kernel : "auto", qsdpa_last_error());
        exit(2);
    }
    return ctx;
}

#endif
