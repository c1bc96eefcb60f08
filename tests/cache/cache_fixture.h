/* Helpers of the cache tests: a shadow copy of every appended row, and the
 * dequantized f32 K/V of a layer as the attention oracle sees them. */
#ifndef QSDPA_CACHE_FIXTURE_H
#define QSDPA_CACHE_FIXTURE_H

#include <math.h>
#include <string.h>

#include "test_util.h"

/* Formats the tests draw from (K and V independently). */
static const char *const fixture_formats[] = {"affine:4:64", "affine:8:64", "affine:3:32", "affine:2:128",
                                              "mxfp4",       "mxfp8",       "nvfp4",       "f16"};
#define FIXTURE_NFORMATS ((int)(sizeof fixture_formats / sizeof fixture_formats[0]))

/* Dequantize the whole of one layer (quantized part then window) into
 * k [B,Hkv,L,Dk] and v [B,Hkv,L,Dv] f32, contiguous; returns L. */
static inline int64_t fixture_dequantize_side(const qsdpa_qtensor *t, int64_t L0, float *out, int64_t Lcap) {
    int64_t B = t->codes.shape[0], H = t->codes.shape[1], L = t->codes.shape[2], D = t->dim;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++) {
                float *dst = out + ((b * H + h) * Lcap + L0 + l) * D;
                const void *codes = qsdpa_row_ptr(&t->codes, b, h, l);
                if (t->format.mode == QSDPA_MODE_PLAIN) {
                    for (int64_t d = 0; d < D; d++) dst[d] = qsdpa_load_float(codes, t->codes.dtype, d);
                    continue;
                }
                const void *biases = t->biases.data ? qsdpa_row_ptr(&t->biases, b, h, l) : NULL;
                /* The kernels' own row decoder, so the oracle sees exactly their K/V. */
                qsdpa_dequantize_row(&t->format, codes, qsdpa_row_ptr(&t->scales, b, h, l), biases, t->scales.dtype,
                                     D, dst);
            }
    return L;
}

/* f32 PLAIN qtensor over a contiguous [B,H,L,D] buffer. */
static inline qsdpa_qtensor fixture_plain(float *data, int64_t B, int64_t H, int64_t L, int64_t D) {
    qsdpa_qtensor t;
    memset(&t, 0, sizeof t);
    t.format.mode = QSDPA_MODE_PLAIN;
    t.format.bits = 32;
    t.format.plain_dtype = QSDPA_DTYPE_F32;
    t.codes = qsdpa_tensor_4d(data, QSDPA_DTYPE_F32, B, H, L, D);
    t.dim = D;
    return t;
}

/* Dequantized layer: *k and *v are malloc'd [B,Hkv,L,D] f32 buffers. */
static inline int64_t fixture_layer_f32(const qsdpa_cache *c, int64_t layer, float **k, float **v) {
    qsdpa_cache_options o;
    qsdpa_cache_get_options(c, &o);
    int64_t L = 0;
    qsdpa_cache_length(c, layer, &L);
    size_t slabs = (size_t)(o.batch * o.heads_kv);
    *k = test_alloc(slabs * (size_t)L * (size_t)o.dim_k * sizeof(float) + 1);
    *v = test_alloc(slabs * (size_t)L * (size_t)o.dim_v * sizeof(float) + 1);
    qsdpa_qtensor kq, vq, kr, vr;
    CHECK(qsdpa_cache_view(c, layer, QSDPA_CACHE_QUANTIZED, &kq, &vq) == QSDPA_OK, "view: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_view(c, layer, QSDPA_CACHE_RESIDUAL, &kr, &vr) == QSDPA_OK, "view: %s", qsdpa_last_error());
    int64_t lq = fixture_dequantize_side(&kq, 0, *k, L);
    fixture_dequantize_side(&vq, 0, *v, L);
    int64_t lr = fixture_dequantize_side(&kr, lq, *k, L);
    fixture_dequantize_side(&vr, lq, *v, L);
    CHECK(lq + lr == L, "views hold %lld + %lld tokens, length %lld", (long long)lq, (long long)lr, (long long)L);
    return L;
}

static inline double fixture_max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

#endif
