/* One function per format unpacks one group of codes; one table row per format. */
#include "format/format_internal.h"

/* ---- unpack one group: codes -> element values ---------------------------- */

/* Affine: integer codes. 2/4/8 bits never straddle a word; 3/5/6 may. */
static void unpack_affine(const qsdpa_group_src *src, int64_t g, int64_t n, float *out) {
    int bits = src->format->bits;
    int64_t first = g * n;
    if (bits == 4) {
        const uint32_t *w = src->codes + (first >> 3);
        for (int64_t j = 0; j < n; j++) out[j] = (float)((w[j >> 3] >> (4 * (j & 7))) & 15u);
        return;
    }
    if (bits == 8) {
        const uint32_t *w = src->codes + (first >> 2);
        for (int64_t j = 0; j < n; j++) out[j] = (float)((w[j >> 2] >> (8 * (j & 3))) & 255u);
        return;
    }
    for (int64_t j = 0; j < n; j++) out[j] = (float)qsdpa_code_at(src->codes, first + j, bits);
}

static void unpack_fp4(const qsdpa_group_src *src, int64_t g, int64_t n, float *out) {
    const uint32_t *w = src->codes + ((g * n) >> 3);
    for (int64_t j = 0; j < n; j++) out[j] = qsdpa_fp4_decode((uint8_t)((w[j >> 3] >> (4 * (j & 7))) & 15u));
}

static void unpack_fp8(const qsdpa_group_src *src, int64_t g, int64_t n, float *out) {
    const uint32_t *w = src->codes + ((g * n) >> 2);
    for (int64_t j = 0; j < n; j++) out[j] = qsdpa_fp8_decode((uint8_t)((w[j >> 2] >> (8 * (j & 3))) & 255u));
}

/* PLAIN: the "codes" are f32/f16/bf16 elements. */
static void unpack_plain(const qsdpa_group_src *src, int64_t g, int64_t n, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = qsdpa_load_float(src->codes, src->format->plain_dtype, g * n + j);
}

/* ---- scale and bias of one group ----------------------------------------- */

static void params_affine(const qsdpa_group_src *src, int64_t g, float *scale, float *bias) {
    *scale = qsdpa_load_float(src->scales, src->scale_dtype, g);
    *bias = qsdpa_load_float(src->biases, src->scale_dtype, g);
}

static void params_e8m0(const qsdpa_group_src *src, int64_t g, float *scale, float *bias) {
    *scale = qsdpa_e8m0_decode(((const uint8_t *)src->scales)[g]);
    *bias = 0.0f;
}

/* MLX (ops.cpp fp_dequantize): scale = e4m3(s) * (G / 2688), both products in f32. */
static void params_nvfp4(const qsdpa_group_src *src, int64_t g, float *scale, float *bias) {
    float s = qsdpa_fp8_decode(((const uint8_t *)src->scales)[g]);
    float G = src->format->global_scale;
    if (G != 0.0f) {
        float inv = G / 2688.0f;
        s = s * inv;
    }
    *scale = s;
    *bias = 0.0f;
}

static void params_plain(const qsdpa_group_src *src, int64_t g, float *scale, float *bias) {
    *scale = 1.0f;
    *bias = 0.0f;
}

/* ---- the table ------------------------------------------------------------ */

const qsdpa_format_ops qsdpa_format_table[] = {
    [QSDPA_MODE_PLAIN] = {"plain", unpack_plain, params_plain, false},
    [QSDPA_MODE_AFFINE] = {"affine", unpack_affine, params_affine, true},
    [QSDPA_MODE_MXFP4] = {"mxfp4", unpack_fp4, params_e8m0, false},
    [QSDPA_MODE_MXFP8] = {"mxfp8", unpack_fp8, params_e8m0, false},
    [QSDPA_MODE_NVFP4] = {"nvfp4", unpack_fp4, params_nvfp4, false},
};

const qsdpa_format_ops *qsdpa_format_ops_of(qsdpa_mode mode) {
    if ((unsigned)mode >= sizeof qsdpa_format_table / sizeof qsdpa_format_table[0]) return NULL;
    return qsdpa_format_table[mode].name ? &qsdpa_format_table[mode] : NULL;
}

void qsdpa_unpack_group(const qsdpa_group_src *src, int64_t g, int64_t n, float *out) {
    const qsdpa_format_ops *ops = &qsdpa_format_table[src->format->mode];
    ops->unpack(src, g, n, out);
    if (src->format->mode == QSDPA_MODE_PLAIN) return;
    float scale, bias;
    ops->params(src, g, &scale, &bias);
    if (ops->has_bias) {
        for (int64_t j = 0; j < n; j++) {
            float p = out[j] * scale; /* separate statement: MLX rounds the product first */
            out[j] = p + bias;
        }
    } else {
        for (int64_t j = 0; j < n; j++) out[j] *= scale; /* no +0 bias: keeps -0 as MLX does */
    }
}

/* Row base pointers -> dim floats; formats were validated by the caller. */
void qsdpa_dequantize_row(const qsdpa_format *format, const uint32_t *codes, const void *scales,
                          const void *biases, qsdpa_dtype scale_dtype, int64_t dim, float *out) {
    qsdpa_group_src src = {format, codes, scales, biases, scale_dtype};
    if (format->mode == QSDPA_MODE_PLAIN) {
        qsdpa_unpack_group(&src, 0, dim, out);
        return;
    }
    int64_t n = format->group;
    for (int64_t g = 0; g < dim / n; g++) qsdpa_unpack_group(&src, g, n, out + g * n);
}
