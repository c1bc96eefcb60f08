/* f16 / bf16 <-> f32 conversions, round to nearest even (as MLX's CPU casts). */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <string.h>

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t qsdpa_f32_to_f16(float f) {
    uint32_t u = bits_of(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* nan */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (abs < 0x38800000u) { /* below 2^-14: subnormal half, round half even on man*2^-24 */
        float a = float_of(abs);
        float scaled = a * 16777216.0f; /* exact: power of two */
        float r = nearbyintf(scaled);   /* default rounding mode is nearest-even */
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u); /* round mantissa to 10 bits, ties even */
    return (uint16_t)(sign | (uint16_t)((rounded - 0x38000000u) >> 13));
}

float qsdpa_load_float(const void *base, qsdpa_dtype dtype, int64_t i) {
    switch (dtype) {
    case QSDPA_DTYPE_F32: return ((const float *)base)[i];
    case QSDPA_DTYPE_F16: return qsdpa_f16_to_f32(((const uint16_t *)base)[i]);
    case QSDPA_DTYPE_BF16: return qsdpa_bf16_to_f32(((const uint16_t *)base)[i]);
    case QSDPA_DTYPE_U8: return (float)((const uint8_t *)base)[i];
    case QSDPA_DTYPE_BOOL: return ((const uint8_t *)base)[i] ? 1.0f : 0.0f;
    case QSDPA_DTYPE_U32: return (float)((const uint32_t *)base)[i];
    }
    return NAN;
}

void qsdpa_store_float(void *base, qsdpa_dtype dtype, int64_t i, float value) {
    switch (dtype) {
    case QSDPA_DTYPE_F32: ((float *)base)[i] = value; break;
    case QSDPA_DTYPE_F16: ((uint16_t *)base)[i] = qsdpa_f32_to_f16(value); break;
    case QSDPA_DTYPE_BF16: ((uint16_t *)base)[i] = qsdpa_f32_to_bf16(value); break;
    default: break; /* integer dtypes are never outputs of attention */
    }
}

void qsdpa_load_floats(const void *src, qsdpa_dtype dtype, int64_t n, float *dst) {
    switch (dtype) {
    case QSDPA_DTYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case QSDPA_DTYPE_F16: for (int64_t i = 0; i < n; i++) dst[i] = qsdpa_f16_to_f32(((const uint16_t *)src)[i]); break;
    case QSDPA_DTYPE_BF16: for (int64_t i = 0; i < n; i++) dst[i] = qsdpa_bf16_to_f32(((const uint16_t *)src)[i]); break;
    default: for (int64_t i = 0; i < n; i++) dst[i] = qsdpa_load_float(src, dtype, i); break;
    }
}

void qsdpa_store_floats(void *dst, qsdpa_dtype dtype, int64_t n, const float *src) {
    switch (dtype) {
    case QSDPA_DTYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case QSDPA_DTYPE_F16: for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = qsdpa_f32_to_f16(src[i]); break;
    case QSDPA_DTYPE_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = qsdpa_f32_to_bf16(src[i]); break;
    default: break; /* integer dtypes are never outputs of attention */
    }
}

float qsdpa_dtype_lowest(qsdpa_dtype dtype) {
    switch (dtype) {
    case QSDPA_DTYPE_F16: return -65504.0f;
    case QSDPA_DTYPE_BF16: return -3.38953139e38f; /* bf16 0xff7f */
    default: return -FLT_MAX;
    }
}

size_t qsdpa_dtype_size(qsdpa_dtype dtype) {
    switch (dtype) {
    case QSDPA_DTYPE_F32: case QSDPA_DTYPE_U32: return 4;
    case QSDPA_DTYPE_F16: case QSDPA_DTYPE_BF16: return 2;
    case QSDPA_DTYPE_U8: case QSDPA_DTYPE_BOOL: return 1;
    }
    return 0;
}

static const char *const dtype_names[] = {"f32", "f16", "bf16", "u8", "bool", "u32"};

const char *qsdpa_dtype_name(qsdpa_dtype dtype) {
    if ((unsigned)dtype < sizeof dtype_names / sizeof dtype_names[0]) return dtype_names[dtype];
    return "?";
}

qsdpa_status qsdpa_dtype_parse(const char *text, qsdpa_dtype *out) {
    qsdpa_clear_error();
    if (!text) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "text is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    for (unsigned i = 0; i < sizeof dtype_names / sizeof dtype_names[0]; i++)
        if (strcmp(text, dtype_names[i]) == 0) { *out = (qsdpa_dtype)i; return QSDPA_OK; }
    return qsdpa_fail(QSDPA_ERR_PARSE, __func__, "unknown dtype '%s' (expected f32, f16, bf16, u8, bool or u32)", text);
}
