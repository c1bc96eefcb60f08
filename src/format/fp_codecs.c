/* FP4 E2M1, FP8 E4M3 and E8M0 element codecs, bit-exact with MLX 0.32.4 on CPU. */
#include "format/format_internal.h"

#include <math.h>
#include <string.h>

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static const float fp4_table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float qsdpa_fp4_decode(uint8_t code) { return fp4_table[code & 15]; }

/* Nearest magnitude code for |x| <= 8: midpoints, ties to the smaller code. */
static uint8_t fp4_nearest_magnitude(float a) {
    static const float mids[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    uint8_t c = 0;
    while (c < 7 && a > mids[c]) c++;
    return c;
}

/* MLX encodes FP4 as argmin(|x - table|) with the differences computed in the
 * working dtype (the input's for mxfp4, f32 for nvfp4), first entry winning
 * ties. For |x| <= 8 every difference that decides a comparison is exact
 * (Sterbenz), so the midpoint test gives the same code (checked exhaustively
 * for f16/bf16 in tests/format/test_format_codecs.c); beyond that the argmin is
 * reproduced, because at |x| >= ~2^26 (f32) all differences round equal and
 * MLX returns code 0, not 7: nvfp4 reaches this when its E4M3 scale saturates
 * or is 0 (w/0 = inf gives code 0 as well). A NaN difference never wins. */
uint8_t qsdpa_fp4_encode(float x, qsdpa_dtype arith) {
    float a = fabsf(x);
    if (a <= 8.0f) {
        uint8_t c = fp4_nearest_magnitude(a);
        return c == 0 ? 0 : (uint8_t)(c | (signbit(x) ? 8 : 0)); /* nearest zero: +0 even when negative */
    }
    float best = fabsf(qsdpa_round_to(arith, x - fp4_table[0]));
    uint8_t code = 0;
    for (uint8_t c = 1; c < 16; c++) {
        float d = fabsf(qsdpa_round_to(arith, x - fp4_table[c]));
        if (d < best) { best = d; code = c; }
    }
    return code;
}

/* MLX's ToFP8: the bit manipulation of mlx/backend/cpu/unary_ops.h, except
 * that the 0.32.4 binary saturates every magnitude >= 448 (measured: 464..480
 * give 0x7E, not the 0x7F the header's `>= 480` test would give). */
uint8_t qsdpa_fp8_encode(float x) {
    uint32_t f = bits_of(x);
    uint8_t sign = (uint8_t)((f >> 24) & 0x80u);
    f &= 0x7fffffffu;
    if (!(float_of(f) < 448.0f)) return (uint8_t)(sign | 0x7Eu); /* >= 448, inf, NaN */
    if (f < (121u << 23)) {
        /* Below 2^-6: adding 2^14 rounds |x| to a multiple of 2^-9 (the E4M3
         * subnormal step) with the FPU's nearest-even rounding. */
        const uint32_t denorm = 141u << 23;
        return (uint8_t)(sign | (uint8_t)(bits_of(float_of(f) + float_of(denorm)) - denorm));
    }
    uint32_t mant_odd = (f >> 20) & 1u;
    f += (uint32_t)(7 - 127) * (1u << 23) + 0x7FFFFu + mant_odd; /* rebias, round to 3 bits, ties even */
    return (uint8_t)(sign | (uint8_t)(f >> 20));
}

float qsdpa_fp8_decode(uint8_t code) {
    uint32_t sign = (uint32_t)(code & 0x80u) << 24;
    uint32_t e = (code >> 3) & 15u, m = code & 7u;
    if ((code & 0x7fu) == 0x7fu) return float_of(sign | 0x7fc00000u); /* MLX: NaN */
    if (e == 0) {
        float v = (float)m * 0.001953125f; /* m * 2^-9, exact */
        return sign ? -v : v;
    }
    return float_of(sign | ((e + 120u) << 23) | (m << 20));
}

float qsdpa_e8m0_decode(uint8_t s) {
    if (s == 0) return float_of(0x00400000u); /* 2^-127, subnormal */
    return float_of((uint32_t)s << 23);       /* 255 -> +inf */
}
