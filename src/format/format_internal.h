/* Format internals: FP element codecs and the per-format unpacking table.
 *
 * Every format is one row of qsdpa_format_table (indexed by qsdpa_mode): a
 * function that unpacks ONE GROUP of codes to their element values, and one
 * that gives the group's scale and bias. A new format (rotated, codebook,
 * per-channel scales) is one new pair of functions plus one table row; the
 * kernels and qsdpa_dequantize_row are written once over the table.
 *
 * Byte order: a row of codes is a little-endian bit stream (SPEC §2), element j
 * in bits [j*bits, (j+1)*bits). It is read word by word with shifts, so the
 * code is independent of the host's byte order. */
#ifndef QSDPA_FORMAT_INTERNAL_H
#define QSDPA_FORMAT_INTERNAL_H

#include "internal.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- element codecs (src/format/fp_codecs.c) ----------------------------- */

/* FP4 E2M1: code c (4 bits) -> value [0,.5,1,1.5,2,3,4,6][c & 7], negative if c & 8. */
float qsdpa_fp4_decode(uint8_t code);
/* Nearest FP4 code of x as MLX's CPU quantizer picks it: argmin over the
 * table (+0, .5, ... 6, -0, -.5, ... -6) of |x - entry|, the differences
 * rounded to `arith` (F32, F16 or BF16), first entry winning ties. So ties go
 * to the smaller magnitude, a negative value nearest zero gives +0 (code 0),
 * moderate magnitudes above 6 give ±6, and NaN, ±inf and magnitudes so large
 * that every difference rounds equal give code 0. */
uint8_t qsdpa_fp4_encode(float x, qsdpa_dtype arith);

/* FP8 E4M3 as MLX's CPU ToFP8: round to nearest even (subnormals below 2^-6
 * included); magnitudes >= 448, inf and NaN saturate to 0x7E / 0xFE. */
uint8_t qsdpa_fp8_encode(float x);
/* FP8 E4M3 as MLX's CPU FromFP8: exact value; magnitude byte 0x7F is NaN. */
float qsdpa_fp8_decode(uint8_t code);

/* E8M0 scale byte s -> 2^(s-127) in f32: s = 0 gives 2^-127 (subnormal),
 * s = 255 gives +inf (MLX computes pow(2, 128) in f32). */
float qsdpa_e8m0_decode(uint8_t s);

/* f32 value rounded to dtype (F32: unchanged; F16/BF16: nearest even), as f32. */
static inline float qsdpa_round_to(qsdpa_dtype dtype, float v) {
    if (dtype == QSDPA_DTYPE_F16) return qsdpa_f16_to_f32(qsdpa_f32_to_f16(v));
    if (dtype == QSDPA_DTYPE_BF16) return qsdpa_bf16_to_f32(qsdpa_f32_to_bf16(v));
    return v;
}

/* Code j (bits <= 8) of a row's little-endian bit stream of uint32 words. */
static inline unsigned qsdpa_code_at(const uint32_t *row, int64_t j, int bits) {
    int64_t bit = j * bits;
    int64_t word = bit >> 5;
    int shift = (int)(bit & 31);
    uint64_t v = row[word];
    if (shift + bits > 32) v |= (uint64_t)row[word + 1] << 32; /* 3/5/6-bit code spanning two words */
    return (unsigned)(v >> shift) & ((1u << bits) - 1u);
}

/* ---- per-format unpacking (src/format/unpack.c) -------------------------- */

/* Where one row's group data lives. codes: the row's packed words;
 * scales/biases: the row's dim/group scale (and bias) elements. */
typedef struct qsdpa_group_src {
    const qsdpa_format *format;
    const uint32_t *codes;   /* [row_words] */
    const void *scales;      /* [dim/group] of scale_dtype; NULL for PLAIN */
    const void *biases;      /* [dim/group] of scale_dtype, affine only, else NULL */
    qsdpa_dtype scale_dtype; /* affine: F32/F16/BF16; fp modes: U8 */
} qsdpa_group_src;

/* Unpack the n element values of group g (elements g*n .. g*n+n-1) before
 * scaling: affine the integer code, FP4/FP8 the element value, PLAIN the
 * stored element (n is then any element count, g counts blocks of n). */
typedef void (*qsdpa_unpack_group_fn)(const qsdpa_group_src *src, int64_t g, int64_t n, float *out);
/* Scale and bias of group g in f32 (bias 0 where the format has none):
 * affine the stored values; mxfp 2^(s-127); nvfp4 e4m3(s), times G/2688 as
 * an f32 product when a global scale G is set (MLX's order). */
typedef void (*qsdpa_group_params_fn)(const qsdpa_group_src *src, int64_t g, float *scale, float *bias);

typedef struct qsdpa_format_ops {
    const char *name;                 /* mode name in format strings */
    qsdpa_unpack_group_fn unpack;     /* codes of one group -> element values */
    qsdpa_group_params_fn params;     /* scale (and bias) of one group */
    bool has_bias;                    /* w = v*scale + bias (affine), else w = v*scale */
} qsdpa_format_ops;

/* Indexed by qsdpa_mode (designated initializers); NULL name = no such mode. */
extern const qsdpa_format_ops qsdpa_format_table[];
/* The table row of a mode, or NULL for an unknown mode. */
const qsdpa_format_ops *qsdpa_format_ops_of(qsdpa_mode mode);

/* Dequantize group g (group_size = format->group values) into out in f32:
 * v*scale + bias (affine) or v*scale, two f32 roundings, no fused multiply-add.
 * Bit-exact with mx.dequantize when the stored scales are F32 (and for every
 * fp mode in F32). PLAIN: g counts blocks of `n`, values converted exactly. */
void qsdpa_unpack_group(const qsdpa_group_src *src, int64_t g, int64_t n, float *out);

#endif /* QSDPA_FORMAT_INTERNAL_H */
