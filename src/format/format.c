/* Format descriptors: parse, print, check, and the sizes of one packed row. */
#include "format/format_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FORMATS_ALLOWED "affine:BITS[:GROUP] (bits 2,3,4,5,6,8; group 32,64,128), mxfp4, mxfp8, nvfp4, f32, f16, bf16"

/* The fixed (bits, group) of the fp modes. */
static bool fp_mode_shape(qsdpa_mode mode, int *bits, int *group) {
    switch (mode) {
    case QSDPA_MODE_MXFP4: *bits = 4; *group = 32; return true;
    case QSDPA_MODE_MXFP8: *bits = 8; *group = 32; return true;
    case QSDPA_MODE_NVFP4: *bits = 4; *group = 16; return true;
    default: return false;
    }
}

static bool affine_bits_ok(int bits) { return bits >= 2 && bits <= 8 && bits != 7; }
static bool affine_group_ok(int group) { return group == 32 || group == 64 || group == 128; }

/* Parse a decimal int field of `text` starting at *p, up to ':' or the end. */
static bool parse_int_field(const char **p, int *out) {
    const char *s = *p;
    if (*s < '0' || *s > '9') return false;
    long v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s - '0');
        if (v > 1000000) return false;
        s++;
    }
    if (*s != '\0' && *s != ':') return false;
    *out = (int)v;
    *p = s;
    return true;
}

static qsdpa_status check_format(const char *function, const qsdpa_format *f) {
    int bits, group;
    switch (f->mode) {
    case QSDPA_MODE_PLAIN:
        if (f->plain_dtype != QSDPA_DTYPE_F32 && f->plain_dtype != QSDPA_DTYPE_F16 &&
            f->plain_dtype != QSDPA_DTYPE_BF16)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format plain_dtype = %d (%s) is not allowed (f32, f16 or bf16)",
                              (int)f->plain_dtype, qsdpa_dtype_name(f->plain_dtype));
        if (f->bits != 8 * (int)qsdpa_dtype_size(f->plain_dtype))
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format bits = %d does not match plain dtype %s (needs %d)", f->bits,
                              qsdpa_dtype_name(f->plain_dtype), 8 * (int)qsdpa_dtype_size(f->plain_dtype));
        if (f->group != 0)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format group = %d for plain %s (must be 0)", f->group, qsdpa_dtype_name(f->plain_dtype));
        break;
    case QSDPA_MODE_AFFINE:
        if (!affine_bits_ok(f->bits))
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format bits = %d not allowed for affine (2, 3, 4, 5, 6 or 8)", f->bits);
        if (!affine_group_ok(f->group))
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format group = %d not allowed for affine (32, 64 or 128)", f->group);
        break;
    case QSDPA_MODE_MXFP4:
    case QSDPA_MODE_MXFP8:
    case QSDPA_MODE_NVFP4:
        fp_mode_shape(f->mode, &bits, &group);
        if (f->bits != bits || f->group != group)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format %s needs bits %d and group %d, got bits = %d, group = %d",
                              qsdpa_format_table[f->mode].name, bits, group, f->bits, f->group);
        break;
    default:
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                          "format mode = %d is unknown (affine, mxfp4, mxfp8, nvfp4 or plain)", (int)f->mode);
    }
    if (f->mode == QSDPA_MODE_NVFP4) {
        if (!isfinite(f->global_scale) || f->global_scale < 0.0f)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                              "format global_scale = %g (must be finite and > 0, or 0 for none)",
                              (double)f->global_scale);
    } else if (f->global_scale != 0.0f) {
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                          "format global_scale = %g given for mode %s (nvfp4 only)", (double)f->global_scale,
                          f->mode == QSDPA_MODE_PLAIN ? "plain" : qsdpa_format_table[f->mode].name);
    }
    return QSDPA_OK;
}

qsdpa_status qsdpa_format_check(const qsdpa_format *format) {
    qsdpa_clear_error();
    if (!format) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "format is NULL");
    return check_format(__func__, format);
}

qsdpa_status qsdpa_format_parse(const char *text, qsdpa_format *out) {
    qsdpa_clear_error();
    if (!text) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "text is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    qsdpa_format f = {QSDPA_MODE_AFFINE, 4, 64, QSDPA_DTYPE_F32, 0.0f};
    qsdpa_dtype plain;
    if (strcmp(text, "f32") == 0 || strcmp(text, "f16") == 0 || strcmp(text, "bf16") == 0) {
        qsdpa_dtype_parse(text, &plain);
        f = (qsdpa_format){QSDPA_MODE_PLAIN, 8 * (int)qsdpa_dtype_size(plain), 0, plain, 0.0f};
        *out = f;
        return QSDPA_OK;
    }
    size_t name_len = strcspn(text, ":");
    bool found = false;
    for (int m = QSDPA_MODE_AFFINE; m <= QSDPA_MODE_NVFP4; m++) {
        const char *name = qsdpa_format_table[m].name;
        if (strlen(name) == name_len && strncmp(text, name, name_len) == 0) {
            f.mode = (qsdpa_mode)m;
            found = true;
        }
    }
    if (!found)
        return qsdpa_fail(QSDPA_ERR_PARSE, __func__, "format '%s': unknown mode (expected %s)", text, FORMATS_ALLOWED);
    /* affine defaults to MLX's bits 4, group 64; the fp modes have fixed shapes
     * but may spell them out ("mxfp4:4:32"). */
    fp_mode_shape(f.mode, &f.bits, &f.group);
    const char *p = text + name_len;
    if (*p == ':') {
        p++;
        if (!parse_int_field(&p, &f.bits))
            return qsdpa_fail(QSDPA_ERR_PARSE, __func__, "format '%s': bits is not a number (expected %s)", text,
                              FORMATS_ALLOWED);
        if (*p == ':') {
            p++;
            if (!parse_int_field(&p, &f.group) || *p != '\0')
                return qsdpa_fail(QSDPA_ERR_PARSE, __func__, "format '%s': group is not a number (expected %s)",
                                  text, FORMATS_ALLOWED);
        }
    }
    qsdpa_status st = check_format(__func__, &f);
    if (st != QSDPA_OK)
        return qsdpa_fail(st, __func__, "format '%s': bits %d, group %d not allowed for %s (allowed: %s)", text,
                          f.bits, f.group, qsdpa_format_table[f.mode].name, FORMATS_ALLOWED);
    *out = f;
    return QSDPA_OK;
}

size_t qsdpa_format_string(const qsdpa_format *format, char *buf, size_t capacity) {
    char tmp[64];
    int n;
    if (!format) {
        n = snprintf(tmp, sizeof tmp, "?");
    } else if (format->mode == QSDPA_MODE_PLAIN) {
        n = snprintf(tmp, sizeof tmp, "%s", qsdpa_dtype_name(format->plain_dtype));
    } else if (format->mode == QSDPA_MODE_AFFINE) {
        n = snprintf(tmp, sizeof tmp, "affine:%d:%d", format->bits, format->group);
    } else if (qsdpa_format_ops_of(format->mode)) {
        /* The global scale is a per-tensor number, not part of the text. */
        n = snprintf(tmp, sizeof tmp, "%s", qsdpa_format_table[format->mode].name);
    } else {
        n = snprintf(tmp, sizeof tmp, "?");
    }
    size_t need = n > 0 ? (size_t)n : 0;
    if (buf && capacity > 0) {
        size_t copy = need < capacity - 1 ? need : capacity - 1;
        memcpy(buf, tmp, copy);
        buf[copy] = '\0';
    }
    return need;
}

qsdpa_status qsdpa_format_row_words(const qsdpa_format *format, int64_t dim, int64_t *words) {
    qsdpa_clear_error();
    if (!format) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "format is NULL");
    if (!words) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "words is NULL");
    qsdpa_status st = check_format(__func__, format);
    if (st != QSDPA_OK) return st;
    if (dim <= 0 || dim > INT64_MAX / 32)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "dim = %lld (must be > 0)", (long long)dim);
    if (format->group > 0 && dim % format->group != 0)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "dim = %lld is not a multiple of group %d",
                          (long long)dim, format->group);
    if ((dim * format->bits) % 32 != 0)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__,
                          "dim = %lld times %d bits does not fill whole 32-bit words", (long long)dim, format->bits);
    /* PLAIN: the row's dim elements occupy dim*bits/32 words of the codes buffer. */
    *words = dim * format->bits / 32;
    return QSDPA_OK;
}

qsdpa_status qsdpa_format_row_scales(const qsdpa_format *format, int64_t dim, int64_t *count) {
    qsdpa_clear_error();
    if (!count) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "count is NULL");
    int64_t words;
    qsdpa_status st = qsdpa_format_row_words(format, dim, &words);
    if (st != QSDPA_OK) {
        char why[256]; /* the message names row_words; restate it under this function's name */
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return qsdpa_fail(st, __func__, "%s", why);
    }
    *count = format->group > 0 ? dim / format->group : 0;
    return QSDPA_OK;
}

int qsdpa_format_has_biases(const qsdpa_format *format) {
    return format && format->mode == QSDPA_MODE_AFFINE;
}
