/* FP4 / FP8 / E8M0 codecs and the f16 / bf16 conversions of src/core/convert.c,
 * against reference computations written from the format definitions in
 * double precision: exhaustive decode tables, tie cases, round trips, random
 * values. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "format/format_internal.h"
#include "test_util.h"

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static bool same(float a, float b) { return bits_of(a) == bits_of(b) || (isnan(a) && isnan(b)); }

/* ---- reference values from the definitions -------------------------------- */

/* E2M1: 2 exponent bits (bias 1), 1 mantissa bit, subnormal at exponent 0. */
static double ref_fp4(int c) {
    int e = (c >> 1) & 3, m = c & 1;
    double v = e == 0 ? m * 0.5 : (1.0 + m / 2.0) * ldexp(1.0, e - 1);
    return (c & 8) ? -v : v;
}

/* E4M3 (bias 7, subnormals, no inf); MLX decodes magnitude 0x7F as NaN. */
static double ref_fp8(int c) {
    if ((c & 0x7f) == 0x7f) return NAN;
    int e = (c >> 3) & 15, m = c & 7;
    double v = e == 0 ? m / 8.0 * ldexp(1.0, -6) : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
    return (c & 0x80) ? -v : v;
}

/* Nearest E4M3 code (ties to the even code), magnitudes >= 448 saturate to 0x7E. */
static int ref_fp8_encode(double x) {
    int sign = signbit(x) ? 0x80 : 0;
    double a = fabs(x);
    if (!(a < 448.0)) return sign | 0x7E;
    int best = 0;
    for (int c = 1; c < 0x7f; c++) {
        double d = fabs(ref_fp8(c) - a), db = fabs(ref_fp8(best) - a);
        if (d < db || (d == db && (c & 1) == 0)) best = c;
    }
    return sign | best;
}

/* Nearest FP4 code, ties to the smaller magnitude, zero as +0; for |x| small
 * enough that no difference rounds (the cases tested here). */
static int ref_fp4_encode(double x) {
    double a = fabs(x);
    int best = 0;
    for (int c = 1; c < 8; c++)
        if (fabs(ref_fp4(c) - a) < fabs(ref_fp4(best) - a)) best = c;
    return best == 0 ? 0 : (x < 0 ? 8 : 0) | best;
}

/* Value of x rounded to a binary format with `man` fraction bits, smallest
 * normal exponent emin, overflow threshold (rounds to inf at or above). */
static float ref_round(double x, int man, int emin, double inf_at) {
    if (isnan(x)) return (float)x;
    if (fabs(x) >= inf_at) return x < 0 ? -INFINITY : INFINITY;
    if (x == 0) return (float)x;
    int e = ilogb(x);
    if (e < emin) e = emin;
    double quantum = ldexp(1.0, e - man);
    double r = nearbyint(x / quantum) * quantum; /* exact in double; nearest even */
    if (r == 0) return signbit(x) ? -0.0f : 0.0f;
    return (float)r;
}

/* MLX's encoder as written in ops.cpp: argmin over the table of
 * |x - entry| with the differences in `arith`, first minimum wins. */
static int argmin_fp4(float x, qsdpa_dtype arith) {
    int best = 0;
    float bd = fabsf(qsdpa_round_to(arith, x - qsdpa_fp4_decode(0)));
    for (int c = 1; c < 16; c++) {
        float d = fabsf(qsdpa_round_to(arith, x - qsdpa_fp4_decode((uint8_t)c)));
        if (d < bd) { bd = d; best = c; }
    }
    return best;
}

/* ---- FP4 -------------------------------------------------------------------- */

static void test_fp4(test_rng *rng) {
    for (int c = 0; c < 16; c++) {
        CHECK(qsdpa_fp4_decode((uint8_t)c) == (float)ref_fp4(c) && (signbit(qsdpa_fp4_decode((uint8_t)c)) != 0) == ((c & 8) != 0),
              "fp4 decode 0x%x: %g vs %g", c, (double)qsdpa_fp4_decode((uint8_t)c), ref_fp4(c));
        for (int d = QSDPA_DTYPE_F32; d <= QSDPA_DTYPE_BF16; d++) {
            int want = c == 8 ? 0 : c; /* -0 encodes as +0 */
            CHECK(qsdpa_fp4_encode(qsdpa_fp4_decode((uint8_t)c), (qsdpa_dtype)d) == want, "fp4 round trip 0x%x (%s)",
                  c, qsdpa_dtype_name((qsdpa_dtype)d));
        }
    }
    /* ties go to the smaller magnitude; negative values nearest zero give +0 */
    static const struct { float x; int code; } ties[] = {
        {0.25f, 0},  {0.75f, 1},  {1.25f, 2},  {1.75f, 3},  {2.5f, 4},   {3.5f, 5},   {5.0f, 6},
        {-0.25f, 0}, {-0.75f, 9}, {-1.25f, 10}, {-1.75f, 11}, {-2.5f, 12}, {-3.5f, 13}, {-5.0f, 14},
        {-0.1f, 0},  {-0.0f, 0},  {6.5f, 7},   {-100.0f, 15}, {0.2500001f, 1}, {4.9999995f, 6}};
    for (size_t i = 0; i < sizeof ties / sizeof ties[0]; i++)
        CHECK(qsdpa_fp4_encode(ties[i].x, QSDPA_DTYPE_F32) == ties[i].code, "fp4 encode %.9g: %d, want %d",
              (double)ties[i].x, qsdpa_fp4_encode(ties[i].x, QSDPA_DTYPE_F32), ties[i].code);
    /* MLX's argmin: non-finite values and magnitudes whose differences all round equal give code 0 */
    CHECK(qsdpa_fp4_encode(NAN, QSDPA_DTYPE_F32) == 0, "fp4 encode NaN");
    CHECK(qsdpa_fp4_encode(INFINITY, QSDPA_DTYPE_F32) == 0, "fp4 encode inf");
    CHECK(qsdpa_fp4_encode(-1e30f, QSDPA_DTYPE_F32) == 0, "fp4 encode -1e30");
    /* the midpoint fast path equals MLX's argmin over every f16 and bf16 value
     * (differences rounded to that dtype) and over random f32 values */
    for (uint32_t h = 0; h < 65536; h++) {
        float xh = qsdpa_f16_to_f32((uint16_t)h), xb = qsdpa_bf16_to_f32((uint16_t)h);
        CHECK(qsdpa_fp4_encode(xh, QSDPA_DTYPE_F16) == argmin_fp4(xh, QSDPA_DTYPE_F16), "fp4 f16 0x%04x", h);
        CHECK(qsdpa_fp4_encode(xb, QSDPA_DTYPE_BF16) == argmin_fp4(xb, QSDPA_DTYPE_BF16), "fp4 bf16 0x%04x", h);
        float x32 = float_of((uint32_t)test_rng_next(rng));
        CHECK(qsdpa_fp4_encode(x32, QSDPA_DTYPE_F32) == argmin_fp4(x32, QSDPA_DTYPE_F32), "fp4 f32 %a", (double)x32);
        x32 = (float)(20.0 * test_rng_uniform(rng) - 10.0);
        CHECK(qsdpa_fp4_encode(x32, QSDPA_DTYPE_F32) == argmin_fp4(x32, QSDPA_DTYPE_F32), "fp4 f32 %a", (double)x32);
    }
    for (int i = 0; i < 20000; i++) {
        float x = (float)(16.0 * test_rng_uniform(rng) - 8.0);
        int want = ref_fp4_encode(x);
        CHECK(qsdpa_fp4_encode(x, QSDPA_DTYPE_F32) == want, "fp4 encode %.9g: %d, want %d", (double)x,
              qsdpa_fp4_encode(x, QSDPA_DTYPE_F32), want);
        float h = qsdpa_round_to(QSDPA_DTYPE_F16, x), b = qsdpa_round_to(QSDPA_DTYPE_BF16, x);
        CHECK(qsdpa_fp4_encode(h, QSDPA_DTYPE_F16) == ref_fp4_encode(h), "fp4 encode (f16) %.9g", (double)h);
        CHECK(qsdpa_fp4_encode(b, QSDPA_DTYPE_BF16) == ref_fp4_encode(b), "fp4 encode (bf16) %.9g", (double)b);
    }
}

/* ---- FP8 E4M3 and E8M0 ------------------------------------------------------ */

static void test_fp8(test_rng *rng) {
    for (int c = 0; c < 256; c++) {
        float got = qsdpa_fp8_decode((uint8_t)c);
        CHECK(same(got, (float)ref_fp8(c)) && (isnan(got) || (signbit(got) != 0) == ((c & 0x80) != 0)),
              "fp8 decode 0x%02x: %g vs %g", c, (double)got, ref_fp8(c));
        if ((c & 0x7f) != 0x7f)
            CHECK(qsdpa_fp8_encode(got) == c, "fp8 round trip 0x%02x -> 0x%02x", c, qsdpa_fp8_encode(got));
    }
    /* midpoints between neighbours (ties to even), and just beside them */
    for (int c = 0; c < 0x7e; c++) {
        double mid = (ref_fp8(c) + ref_fp8(c + 1)) / 2;
        float m = (float)mid;
        CHECK(qsdpa_fp8_encode(m) == ref_fp8_encode(m), "fp8 tie %.9g: 0x%02x, want 0x%02x", mid,
              qsdpa_fp8_encode(m), ref_fp8_encode(m));
        float lo = nextafterf(m, 0.0f), hi = nextafterf(m, 1e9f);
        CHECK(qsdpa_fp8_encode(lo) == c, "fp8 below tie %.9g", (double)lo);
        CHECK(qsdpa_fp8_encode(hi) == c + 1, "fp8 above tie %.9g", (double)hi);
    }
    static const float sat[] = {448.0f, 449.0f, 464.0f, 470.0f, 479.9f, 480.0f, 1e30f, INFINITY};
    for (size_t i = 0; i < sizeof sat / sizeof sat[0]; i++) {
        CHECK(qsdpa_fp8_encode(sat[i]) == 0x7E, "fp8 saturate %g", (double)sat[i]);
        CHECK(qsdpa_fp8_encode(-sat[i]) == 0xFE, "fp8 saturate -%g", (double)sat[i]);
    }
    for (int i = 0; i < 20000; i++) {
        float x = (float)(test_rng_normal(rng) * ldexp(1.0, (int)test_rng_int(rng, -12, 9)));
        CHECK(qsdpa_fp8_encode(x) == ref_fp8_encode(x), "fp8 encode %.9g: 0x%02x, want 0x%02x", (double)x,
              qsdpa_fp8_encode(x), ref_fp8_encode(x));
    }
    for (int s = 0; s < 256; s++) {
        float want = s == 255 ? INFINITY : (float)ldexp(1.0, s - 127);
        CHECK(same(qsdpa_e8m0_decode((uint8_t)s), want), "e8m0 decode %d", s);
    }
}

/* ---- f16 / bf16 conversions (src/core/convert.c) --------------------------- */

static void check_f16(float x) {
    float want = ref_round(x, 10, -14, 65520.0);
    float got = qsdpa_f16_to_f32(qsdpa_f32_to_f16(x));
    CHECK(same(got, want), "f32 -> f16 of %a: %a, want %a", (double)x, (double)got, (double)want);
}

static void check_bf16(float x) {
    float want = ref_round(x, 7, -126, ldexp(255.0 / 128.0 + 1.0 / 256.0, 127) /* (2 - 2^-8) 2^127 */);
    float got = qsdpa_bf16_to_f32(qsdpa_f32_to_bf16(x));
    CHECK(same(got, want), "f32 -> bf16 of %a: %a, want %a", (double)x, (double)got, (double)want);
}

static void test_conversions(test_rng *rng) {
    for (uint32_t h = 0; h < 65536; h++) {
        int e = (h >> 10) & 31, m = h & 1023;
        double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? m * ldexp(1.0, -24) : (1 + m / 1024.0) * ldexp(1.0, e - 15);
        if (h & 0x8000) v = -v;
        float f = qsdpa_f16_to_f32((uint16_t)h);
        CHECK(same(f, (float)v), "f16 0x%04x -> %a, want %a", h, (double)f, v);
        if (!isnan(f)) CHECK(qsdpa_f32_to_f16(f) == h, "f16 round trip 0x%04x", h);
        if (e < 30) { /* the midpoint to the next f16 value, and the floats beside it */
            float next = qsdpa_f16_to_f32((uint16_t)(h + 1));
            float mid = (float)(((double)f + next) / 2);
            check_f16(mid);
            check_f16(nextafterf(mid, 0.0f));
            check_f16(nextafterf(mid, 1e30f));
        }
        float b = qsdpa_bf16_to_f32((uint16_t)h);
        CHECK(bits_of(b) == (uint32_t)h << 16, "bf16 0x%04x", h);
        if (!isnan(b)) {
            CHECK(qsdpa_f32_to_bf16(b) == h, "bf16 round trip 0x%04x", h);
            check_bf16(float_of(bits_of(b) + 0x8000u)); /* the tie above b */
            check_bf16(float_of(bits_of(b) + 0x7fffu));
            check_bf16(float_of(bits_of(b) + 0x8001u));
        }
    }
    static const float edges[] = {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e-8f, 2.9802322e-8f, 2.9802326e-8f,
                                  5.9604645e-8f, 6.1035156e-5f, 6.1e-5f, FLT_MAX, FLT_MIN, 1e-45f, INFINITY};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        check_f16(edges[i]);
        check_f16(-edges[i]);
        check_bf16(edges[i]);
        check_bf16(-edges[i]);
    }
    CHECK(isnan(qsdpa_f16_to_f32(qsdpa_f32_to_f16(NAN))), "f16 NaN");
    CHECK(isnan(qsdpa_bf16_to_f32(qsdpa_f32_to_bf16(NAN))), "bf16 NaN");
    for (int i = 0; i < 200000; i++) {
        float x = float_of((uint32_t)test_rng_next(rng));
        if (isnan(x)) continue;
        check_f16(x);
        check_bf16(x);
    }
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    test_fp4(&rng);
    test_fp8(&rng);
    test_conversions(&rng);
    return test_finish("format.codecs");
}
