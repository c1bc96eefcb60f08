/* qsdpa_quantize / qsdpa_dequantize: host rows, bit-exact with MLX 0.32.4's
 * mx.quantize / mx.dequantize on CPU.
 *
 * MLX runs each step of the fp modes in a particular dtype (measured against
 * mlx 0.32.4, tools/gen_golden.py and tests/format): we mirror every rounding.
 * Where MLX differs from SPEC §2 we follow MLX (2026-11-25):
 *  - mxfp4/mxfp8 exponent: e = ceil(log2(s)), exact, not round_half_even;
 *    s = max|w|/M is rounded to the input dtype first. The E8M0 byte is
 *    (e + 127) mod 256, unclamped (tiny groups wrap).
 *  - FP8 decode of magnitude 0x7F is NaN, not 480 (quantize never makes it).
 *  - FP4 encode of nvfp4 values so large that every table difference rounds
 *    equal (or inf/NaN, from an E4M3 scale of 0) gives code 0, not ±6.
 *  - dequantize is not "f32, rounded once": see dequantize_group below.
 *  - MLX itself rejects nvfp4 rows that are not a multiple of 32 values (a
 *    reshape in its composed ops); qsdpa takes any multiple of 16.
 * Affine quantization is exactly SPEC §2. Non-finite inputs give unspecified
 * (but defined) codes. */
#include "format/format_internal.h"

#include <math.h>
#include <stdio.h>

static bool is_float_dtype(qsdpa_dtype d) {
    return d == QSDPA_DTYPE_F32 || d == QSDPA_DTYPE_F16 || d == QSDPA_DTYPE_BF16;
}

/* ---- validation shared by both directions -------------------------------- */

typedef struct rows_shape {
    int64_t words;  /* uint32 words per packed row */
    int64_t groups; /* scales (and biases) per row; 0 for PLAIN */
} rows_shape;

static qsdpa_status check_rows(const char *fn, const qsdpa_format *format, int64_t rows, int64_t dim,
                               const void *codes, const void *scales, const void *biases,
                               qsdpa_dtype scale_dtype, const void *values, const char *values_name,
                               qsdpa_dtype values_dtype, rows_shape *shape) {
    if (!format) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "format is NULL");
    if (qsdpa_format_check(format) != QSDPA_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s", why);
    }
    if (rows <= 0) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "rows = %lld (must be > 0)", (long long)rows);
    if (qsdpa_format_row_words(format, dim, &shape->words) != QSDPA_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s", why);
    }
    shape->groups = format->group > 0 ? dim / format->group : 0;
    if (!values) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s is NULL", values_name);
    if (!is_float_dtype(values_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s dtype = %s (must be f32, f16 or bf16)",
                          values_name, qsdpa_dtype_name(values_dtype));
    if (!codes) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "codes is NULL");
    bool plain = format->mode == QSDPA_MODE_PLAIN, affine = format->mode == QSDPA_MODE_AFFINE;
    if (plain && (scales || biases))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scales/biases given for plain format %s (must be NULL)",
                          qsdpa_dtype_name(format->plain_dtype));
    if (!plain && !scales) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scales is NULL");
    if (affine && !biases) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "biases is NULL (affine needs biases)");
    if (!affine && biases)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "biases given for mode %s (affine only)",
                          qsdpa_format_table[format->mode].name);
    if (affine && !is_float_dtype(scale_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scale_dtype = %s for affine (must be f32, f16 or bf16)",
                          qsdpa_dtype_name(scale_dtype));
    if (!plain && !affine && scale_dtype != QSDPA_DTYPE_U8)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scale_dtype = %s for mode %s (must be u8)",
                          qsdpa_dtype_name(scale_dtype), qsdpa_format_table[format->mode].name);
    size_t bytes;
    if (!qsdpa_mul_size((size_t)rows, (size_t)dim, &bytes) || !qsdpa_mul_size(bytes, 4, &bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "rows = %lld x dim = %lld overflows size_t", (long long)rows,
                          (long long)dim);
    return QSDPA_OK;
}

/* ---- quantize one group ----------------------------------------------------
 * w: [n] values as f32 (exact copies of the input dtype). */

/* Appends `bits`-bit codes to a row's little-endian bit stream. The row's
 * words are zeroed before the first group is written. */
static void put_code(uint32_t *row, int64_t j, int bits, unsigned code) {
    int64_t bit = j * bits;
    int64_t word = bit >> 5;
    int shift = (int)(bit & 31);
    row[word] |= (uint32_t)code << shift;
    if (shift + bits > 32) row[word + 1] |= (uint32_t)code >> (32 - shift);
}

/* `n` codes of `bits` bits from element `first` of a row: whole words where the codes fill them
 * (4- and 8-bit codes from a word boundary), else code by code. */
static void put_codes(uint32_t *row, int64_t first, int bits, const uint8_t *q, int64_t n) {
    const int per = 32 / bits;
    if ((bits == 4 || bits == 8) && first % per == 0 && n % per == 0) {
        for (int64_t j = 0; j < n; j += per) {
            uint32_t word = 0;
            for (int i = 0; i < per; i++) word |= (uint32_t)q[j + i] << (i * bits);
            row[(first + j) / per] |= word;
        }
        return;
    }
    for (int64_t j = 0; j < n; j++) put_code(row, first + j, bits, q[j]);
}

/* rintf of v in [0, 2^22], round half to even (the default rounding mode), with no libm call */
static float rint_small(float v) { return (v + 0x1.8p23f) - 0x1.8p23f; }

/* SPEC §2 affine, in f32 (MLX's C++ kernel, fast::Quantize::eval_cpu). */
static void quantize_affine(const float *w, int64_t n, int bits, uint32_t *row, int64_t first, float *scale_out,
                            float *bias_out) {
    float n_bins = (float)((1 << bits) - 1);
    float w_min = INFINITY, w_max = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        w_max = w[j] > w_max ? w[j] : w_max;
        w_min = w[j] < w_min ? w[j] : w_min;
    }
    bool neg = fabsf(w_min) > fabsf(w_max);
    float scale = (w_max - w_min) / n_bins;
    scale = scale > 1e-7f ? scale : 1e-7f;
    scale = neg ? scale : -scale;
    float edge = neg ? w_min : w_max;
    float q0 = rintf(edge / scale);
    float bias = 0.0f;
    if (q0 != 0.0f) {
        scale = edge / q0;
        bias = edge;
    }
    /* clamped, then rounded: the same codes as rounding first, as the bounds are integers */
    uint8_t q[128];
    for (int64_t j = 0; j < n; j++) {
        float v = (w[j] - bias) / scale;
        v = v > 0.0f ? v : 0.0f; /* also maps NaN (non-finite input) to 0: no undefined conversion */
        v = v < n_bins ? v : n_bins;
        q[j] = (uint8_t)rint_small(v);
    }
    put_codes(row, first, bits, q, n);
    *scale_out = scale;
    *bias_out = bias;
}

/* mxfp4 / mxfp8: max|w| / M rounded to the input dtype T (as MLX), then
 * e = the exact ceil(log2(s)) (s == 0: e = 0). SPEC §2 says round_half_even;
 * MLX 0.32.4 takes the ceiling, so max|w| / 2^e never exceeds M. The stored
 * byte is (e + 127) mod 256: MLX does not clamp, so groups whose max|w| is
 * below about 2^-125 (f32/bf16 inputs only) wrap to bytes near 255. */
static uint8_t quantize_mx(const float *w, int64_t n, int bits, qsdpa_dtype T, uint32_t *row, int64_t first) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) m = fabsf(w[j]) > m ? fabsf(w[j]) : m;
    float s = qsdpa_round_to(T, m / (bits == 4 ? 6.0f : 448.0f));
    int e = 0;
    if (isinf(s) || isnan(s)) {
        e = 128; /* non-finite input: unspecified codes, but no undefined conversion */
    } else if (s != 0.0f) {
        /* The exact ceiling of log2(s): ceilf(log2f(s)) is wrong just above a
         * power of two (log2f(32 * (1 + 2^-22)) rounds to 5.0; MLX gives 6). */
        int ex;
        float frac = frexpf(s, &ex); /* s = frac * 2^ex, frac in [0.5, 1) */
        e = frac == 0.5f ? ex - 1 : ex;
    }
    float p = ldexpf(1.0f, e); /* exact in T: 2^e >= s >= T's smallest subnormal */
    for (int64_t j = 0; j < n; j++) {
        float x = qsdpa_round_to(T, w[j] / p);
        if (bits == 4) put_code(row, first + j, 4, qsdpa_fp4_encode(x, T));
        else put_code(row, first + j, 8, qsdpa_fp8_encode(x));
    }
    return (uint8_t)((unsigned)(e + 127) & 255u);
}

/* nvfp4 (MLX's composed ops, ops.cpp fp_quantize): s = max|w|/6 in T; with
 * enc = 2688/G (f32, or 1 without G) the stored byte is e4m3(f32(s*enc)), and
 * each element is f32(T(w / e4m3(stored)) * enc) encoded to FP4 with the
 * argmin done in f32. An E4M3 scale of 0 (all-zero or tiny groups) makes
 * w/0 = NaN or inf, which encodes to code 0. */
static uint8_t quantize_nvfp4(const float *w, int64_t n, qsdpa_dtype T, float G, uint32_t *row, int64_t first) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) m = fabsf(w[j]) > m ? fabsf(w[j]) : m;
    float s = qsdpa_round_to(T, m / 6.0f);
    float enc = G != 0.0f ? 2688.0f / G : 1.0f;
    uint8_t byte = qsdpa_fp8_encode(s * enc);
    float dec = qsdpa_fp8_decode(byte);
    for (int64_t j = 0; j < n; j++) {
        float x = qsdpa_round_to(T, w[j] / dec) * enc;
        put_code(row, first + j, 4, qsdpa_fp4_encode(x, QSDPA_DTYPE_F32));
    }
    return byte;
}

qsdpa_status qsdpa_quantize(const qsdpa_format *format, const void *x, qsdpa_dtype x_dtype, int64_t rows,
                            int64_t dim, uint32_t *codes, void *scales, void *biases, qsdpa_dtype scale_dtype) {
    qsdpa_clear_error();
    rows_shape shape;
    qsdpa_status st = check_rows(__func__, format, rows, dim, codes, scales, biases, scale_dtype, x, "x", x_dtype,
                                 &shape);
    if (st != QSDPA_OK) return st;
    float w[128]; /* one group, converted exactly to f32 (group <= 128) */
    for (int64_t r = 0; r < rows; r++) {
        uint32_t *row = codes + r * shape.words;
        if (format->mode == QSDPA_MODE_PLAIN) {
            for (int64_t j = 0; j < dim; j++)
                qsdpa_store_float(row, format->plain_dtype, j, qsdpa_load_float(x, x_dtype, r * dim + j));
            continue;
        }
        for (int64_t k = 0; k < shape.words; k++) row[k] = 0;
        int64_t n = format->group;
        for (int64_t g = 0; g < shape.groups; g++) {
            int64_t base = r * dim + g * n, si = r * shape.groups + g;
            qsdpa_load_floats((const char *)x + (size_t)base * qsdpa_dtype_size(x_dtype), x_dtype, n, w);
            switch (format->mode) {
            case QSDPA_MODE_AFFINE: {
                float s, b;
                quantize_affine(w, n, format->bits, row, g * n, &s, &b);
                qsdpa_store_float(scales, scale_dtype, si, s);
                qsdpa_store_float(biases, scale_dtype, si, b);
                break;
            }
            case QSDPA_MODE_MXFP4:
            case QSDPA_MODE_MXFP8:
                ((uint8_t *)scales)[si] = quantize_mx(w, n, format->bits, x_dtype, row, g * n);
                break;
            case QSDPA_MODE_NVFP4:
                ((uint8_t *)scales)[si] = quantize_nvfp4(w, n, x_dtype, format->global_scale, row, g * n);
                break;
            default: break; /* PLAIN handled above; others rejected by check_rows */
            }
        }
    }
    return QSDPA_OK;
}

/* ---- dequantize ------------------------------------------------------------
 * MLX's dequantize arithmetic, which is not "f32 then round once" (SPEC §2):
 *  - affine: out = T(T(code*scale) + bias) with T the scales' dtype;
 *  - mxfp: out = T(v * T(2^(s-127))) with T the requested dtype;
 *  - nvfp4: out = T(v * e4m3(s)); with a global scale G everything is f32,
 *    v * f32(e4m3(s) * f32(G/2688)), and MLX returns f32 whatever dtype was
 *    asked for: we round that once to out_dtype (= mx.dequantize(...).astype).
 * The result is then stored as out_dtype (affine: a second rounding only when
 * out_dtype is narrower than the scales' dtype, as .astype would). */
static void dequantize_group(const qsdpa_group_src *src, int64_t g, int64_t n, qsdpa_dtype out_dtype, float *v) {
    const qsdpa_format *f = src->format;
    const qsdpa_format_ops *ops = &qsdpa_format_table[f->mode];
    float scale, bias;
    ops->unpack(src, g, n, v);
    ops->params(src, g, &scale, &bias);
    qsdpa_dtype T = out_dtype;
    if (f->mode == QSDPA_MODE_AFFINE) {
        T = src->scale_dtype;
        for (int64_t j = 0; j < n; j++) v[j] = qsdpa_round_to(T, qsdpa_round_to(T, v[j] * scale) + bias);
    } else if (f->mode == QSDPA_MODE_NVFP4 && f->global_scale != 0.0f) {
        for (int64_t j = 0; j < n; j++) v[j] = v[j] * scale;
    } else {
        scale = qsdpa_round_to(T, scale); /* E8M0 powers of two may flush or overflow in f16 */
        for (int64_t j = 0; j < n; j++) v[j] = qsdpa_round_to(T, v[j] * scale);
    }
}

qsdpa_status qsdpa_dequantize(const qsdpa_format *format, const uint32_t *codes, const void *scales,
                              const void *biases, qsdpa_dtype scale_dtype, int64_t rows, int64_t dim, void *out,
                              qsdpa_dtype out_dtype) {
    qsdpa_clear_error();
    rows_shape shape;
    qsdpa_status st = check_rows(__func__, format, rows, dim, codes, scales, biases, scale_dtype, out, "out",
                                 out_dtype, &shape);
    if (st != QSDPA_OK) return st;
    float v[128];
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *row = codes + r * shape.words;
        if (format->mode == QSDPA_MODE_PLAIN) {
            for (int64_t j = 0; j < dim; j++)
                qsdpa_store_float(out, out_dtype, r * dim + j, qsdpa_load_float(row, format->plain_dtype, j));
            continue;
        }
        size_t ssize = qsdpa_dtype_size(scale_dtype);
        qsdpa_group_src src = {format, row, (const char *)scales + (size_t)(r * shape.groups) * ssize,
                               biases ? (const char *)biases + (size_t)(r * shape.groups) * ssize : NULL,
                               scale_dtype};
        int64_t n = format->group;
        for (int64_t g = 0; g < shape.groups; g++) {
            dequantize_group(&src, g, n, out_dtype, v);
            for (int64_t j = 0; j < n; j++) qsdpa_store_float(out, out_dtype, r * dim + g * n + j, v[j]);
        }
    }
    return QSDPA_OK;
}
