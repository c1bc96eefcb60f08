/* Portable decoding of K/V rows: slice resolution, group scales, one row to floats. */
#include "cpu/cpu_attention.h"
#include "format/format_internal.h"

#include <math.h>
#include <string.h>

void qsdpa_cpu_rows(const qsdpa_qtensor *t, int64_t b, int64_t h, cpu_rows *out) {
    memset(out, 0, sizeof *out);
    out->format = t->format;
    out->dim = t->dim;
    out->codes = qsdpa_row_ptr(&t->codes, b, h, 0);
    out->code_stride = t->codes.stride[2] * (int64_t)qsdpa_dtype_size(t->codes.dtype);
    out->global = 1.0f;
    if (t->format.mode == QSDPA_MODE_PLAIN) {
        out->group = t->dim;
        return;
    }
    out->group = t->format.group;
    out->scale_dtype = t->scales.dtype;
    out->scales = qsdpa_row_ptr(&t->scales, b, h, 0);
    out->scale_stride = t->scales.stride[2] * (int64_t)qsdpa_dtype_size(t->scales.dtype);
    if (t->format.mode == QSDPA_MODE_AFFINE) {
        out->biases = qsdpa_row_ptr(&t->biases, b, h, 0);
        out->bias_stride = t->biases.stride[2] * (int64_t)qsdpa_dtype_size(t->biases.dtype);
    }
    if (t->format.mode == QSDPA_MODE_NVFP4 && t->format.global_scale != 0.0f)
        out->global = t->format.global_scale / 2688.0f;
}

static float e8m0(uint8_t s) { return s == 0 ? ldexpf(1.0f, -127) : ldexpf(1.0f, (int)s - 127); }

float qsdpa_cpu_group_scale(const cpu_rows *t, const char *scale_row, int64_t g) {
    switch (t->format.mode) {
    case QSDPA_MODE_AFFINE: return qsdpa_load_float(scale_row, t->scale_dtype, g);
    case QSDPA_MODE_MXFP4:
    case QSDPA_MODE_MXFP8: return e8m0((uint8_t)scale_row[g]);
    case QSDPA_MODE_NVFP4: return qsdpa_fp8_decode((uint8_t)scale_row[g]) * t->global;
    default: return 1.0f;
    }
}

float qsdpa_cpu_group_bias(const cpu_rows *t, const char *bias_row, int64_t g) {
    return t->format.mode == QSDPA_MODE_AFFINE ? qsdpa_load_float(bias_row, t->scale_dtype, g) : 0.0f;
}

/* Code e of a little-endian bit stream of `bits`-bit codes (bits <= 8). */
static unsigned code_at(const unsigned char *row, int64_t e, int bits) {
    int64_t bit = e * bits;
    int64_t byte = bit >> 3;
    int shift = (int)(bit & 7);
    unsigned v = row[byte];
    if (shift + bits > 8) v |= (unsigned)row[byte + 1] << 8; /* only when the code spans two bytes */
    return (v >> shift) & ((1u << bits) - 1u);
}

static const float fp4_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

void qsdpa_cpu_unpack_row(const cpu_rows *t, int64_t j, float *dst) {
    const unsigned char *row = (const unsigned char *)(t->codes + j * t->code_stride);
    int64_t dim = t->dim;
    if (t->format.mode == QSDPA_MODE_PLAIN) {
        if (t->format.plain_dtype == QSDPA_DTYPE_F32) memcpy(dst, row, (size_t)dim * sizeof(float));
        else
            for (int64_t e = 0; e < dim; e++) dst[e] = qsdpa_load_float(row, t->format.plain_dtype, e);
        return;
    }
    const char *srow = t->scales + j * t->scale_stride;
    const char *brow = t->biases ? t->biases + j * t->bias_stride : NULL;
    const int64_t G = t->group;
    const int bits = t->format.bits;
    for (int64_t g = 0; g < dim / G; g++) {
        float s = qsdpa_cpu_group_scale(t, srow, g);
        float bias = brow ? qsdpa_cpu_group_bias(t, brow, g) : 0.0f;
        float *o = dst + g * G;
        const unsigned char *c = row + g * G * bits / 8; /* groups hold whole bytes (G * bits % 8 == 0) */
        switch (t->format.mode) {
        case QSDPA_MODE_AFFINE:
            if (bits == 4) /* byte-aligned widths by plain loops the compiler vectorises */
                for (int64_t e = 0; e < G; e += 2) {
                    o[e] = s * (float)(c[e / 2] & 15) + bias;
                    o[e + 1] = s * (float)(c[e / 2] >> 4) + bias;
                }
            else if (bits == 8)
                for (int64_t e = 0; e < G; e++) o[e] = s * (float)c[e] + bias;
            else
                for (int64_t e = 0; e < G; e++) o[e] = s * (float)code_at(c, e, bits) + bias;
            break;
        case QSDPA_MODE_MXFP8:
            for (int64_t e = 0; e < G; e++) o[e] = s * qsdpa_fp8_decode(c[e]);
            break;
        default: /* mxfp4, nvfp4 */
            for (int64_t e = 0; e < G; e += 2) {
                o[e] = s * fp4_values[c[e / 2] & 15];
                o[e + 1] = s * fp4_values[c[e / 2] >> 4];
            }
            break;
        }
    }
}
