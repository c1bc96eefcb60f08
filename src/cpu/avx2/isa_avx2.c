/* AVX2 + FMA + F16C kernels of the per-format interface (cpu_attention.h).
 *
 * Each format contributes one inline decoder, decode8(): eight codes to eight floats
 * in the *code domain* (affine: the integer code; fp4/fp8: the unscaled value;
 * plain: the element). The three kernels are written once over it:
 *  - score: q.k = sum_g scale_g * (q_g . (c_g - z_g)) + sum_g (bias_g + scale_g z_g) * sum(q_g),
 *    so the dequantization FMA disappears; sum(q_g) comes precomputed per query row, and
 *    the shift z_g (affine_k_params) keeps the two terms from cancelling.
 *  - accum: the group scale is folded into the softmax weight (w * scale_g) and the
 *    bias enters once per group as sum_j w_j * bias_jg.
 *  - unpack: scale * code + bias to floats (prefill tiles).
 * Up to four query rows share each decoded vector (NR, compile time), which is
 * where GQA pays: one pass over a K/V row serves the group's query heads.
 * Affine 2/3/5/6 bits decode eight codes from one 64-bit load (decode8_bits) into the
 * same kernels; formats without a decoder here would unpack rows to floats and use the
 * f32 kernels (generic_ops).
 */
#include "cpu/cpu_attention.h"
#include "format/format_internal.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

enum fmt { F_AFF4, F_AFF8, F_MXFP4, F_NVFP4, F_FP8, F_F32, F_F16, F_BF16, F_AFF2, F_AFF3, F_AFF5, F_AFF6 };

#define INLINE static inline __attribute__((always_inline))

INLINE float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE bool is_plain(int F) { return F == F_F32 || F == F_F16 || F == F_BF16; }
/* Affine widths that are not 4 or 8 bits: their width, else 0. */
INLINE int odd_bits(int F) { return F == F_AFF2 ? 2 : F == F_AFF3 ? 3 : F == F_AFF5 ? 5 : F == F_AFF6 ? 6 : 0; }
/* Bits per element of a row: the byte offset of element e is e * codebytes / 8. */
INLINE size_t codebytes(int F) {
    return odd_bits(F)                                  ? (size_t)odd_bits(F)
           : F == F_AFF4 || F == F_MXFP4 || F == F_NVFP4 ? 4
           : F == F_AFF8 || F == F_FP8                   ? 8
           : F == F_F32                                  ? 32
                                                         : 16;
}

/* Eight b-bit codes from element e (a multiple of 8) of a run that starts at `row` (a row or
 * a group: always >= 32 elements, so >= 4b bytes): they are b whole bytes from byte
 * at = e * b / 8. One 64-bit load that never leaves the run: the 8 bytes ending on the
 * step's last byte where they start inside it, else (the first steps) the run's first
 * 8 bytes or, where those would cover the step, from the step on; then shifted down to the
 * step. A variable 64-bit shift per code and the low dwords gathered in order follow. */
INLINE __m256 decode8_bits(const int b, const char *row, size_t e) {
    const size_t at = e * (size_t)b / 8;
    const size_t off = at + (size_t)b >= 8 ? at + (size_t)b - 8 : (at < (size_t)(4 * b - 8) ? at : (size_t)(4 * b - 8));
    unsigned long long w;
    memcpy(&w, row + off, 8);
    w >>= 8 * (at - off);
    const __m256i v = _mm256_set1_epi64x((long long)w);
    const __m256i lo = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, b, 2 * b, 3 * b));
    const __m256i hi = _mm256_srlv_epi64(v, _mm256_setr_epi64x(4 * b, 5 * b, 6 * b, 7 * b));
    __m256i c = _mm256_blend_epi32(lo, _mm256_slli_epi64(hi, 32), 0xAA); /* dwords 0 4 1 5 2 6 3 7 */
    c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    return _mm256_cvtepi32_ps(_mm256_and_si256(c, _mm256_set1_epi32((1 << b) - 1)));
}

/* Eight values starting at element e (a multiple of 8) of a row. */
INLINE __m256 decode8(int F, const char *row, size_t e) {
    if (odd_bits(F)) return decode8_bits(odd_bits(F), row, e);
    switch (F) {
    case F_AFF4: {
        uint32_t w;
        memcpy(&w, row + e * 4 / 8, 4);
        __m256i c = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        return _mm256_cvtepi32_ps(_mm256_and_si256(c, _mm256_set1_epi32(15)));
    }
    case F_AFF8:
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + e))));
    case F_MXFP4:
    case F_NVFP4: { /* E2M1: magnitude by an 8-entry table lookup (vpermps uses the low 3 bits), sign from bit 3 */
        uint32_t w;
        memcpy(&w, row + e * 4 / 8, 4);
        __m256i v = _mm256_set1_epi32((int)w);
        __m256i idx = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        __m256 mag = _mm256_permutevar8x32_ps(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f), idx);
        __m256i sign = _mm256_sllv_epi32(v, _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0));
        sign = _mm256_and_si256(sign, _mm256_set1_epi32((int)0x80000000u));
        return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
    }
    case F_FP8: { /* E4M3 by moving its bits into an f32 (subnormals included) and rescaling by 2^120.
                   * Magnitude 0x7F, which quantize never makes, reads 480 here where the reference
                   * decodes NaN: the check cost 31% of an mxfp8 decode (bench/NOTES.md, session 7) */
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + e)));
        __m256i x = _mm256_srai_epi32(_mm256_slli_epi32(b, 24), 4);
        x = _mm256_and_si256(x, _mm256_set1_epi32((int)0x87FFFFFFu));
        return _mm256_mul_ps(_mm256_castsi256_ps(x), _mm256_set1_ps(0x1p120f));
    }
    case F_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * e)));
    case F_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * e))), 16));
    default:
        return _mm256_loadu_ps((const float *)(row + 4 * e));
    }
}

/* Sixteen values from element e (a multiple of 16) as two vectors. For 4-bit affine
 * the codes come out *permuted and scaled* (lane l of the first vector holds element
 * e + l/2 + 8*(l%2) times 16^(l/2); the second the same from e + 4): one 64-bit
 * broadcast and a per-lane mask replace the variable shift, saving a third of the
 * decode work. The query (prep_q) and the accumulator (fix_acc) use the same layout.
 * `last`: the chunk ends its row, so the second broadcast would read 2 bytes past it. `unscaled`
 * (aff4_unscaled_lanes): the 4-bit lanes taken back to the codes' values, one exact multiply each. */
INLINE void decode16(int F, const char *row, size_t e, bool last, bool unscaled, __m256 *c0, __m256 *c1) {
    if (F == F_AFF4) {
        const __m256i mask = _mm256_setr_epi32(0xF, 0xF, 0xF0, 0xF0, 0xF00, 0xF00, 0xF000, 0xF000);
        long long w;
        memcpy(&w, row + e / 2, 8);
        __m256i lo = _mm256_set1_epi64x(w), hi;
        if (last) {
            hi = _mm256_srli_epi32(lo, 16);
        } else {
            memcpy(&w, row + e / 2 + 2, 8);
            hi = _mm256_set1_epi64x(w);
        }
        *c0 = _mm256_cvtepi32_ps(_mm256_and_si256(lo, mask));
        *c1 = _mm256_cvtepi32_ps(_mm256_and_si256(hi, mask));
        if (unscaled) { /* the lane factors 16^(l/2), undone */
            const __m256 unscale = _mm256_setr_ps(1, 1, 0x1p-4f, 0x1p-4f, 0x1p-8f, 0x1p-8f, 0x1p-12f, 0x1p-12f);
            *c0 = _mm256_mul_ps(*c0, unscale), *c1 = _mm256_mul_ps(*c1, unscale);
        }
        return;
    }
    *c0 = decode8(F, row, e);
    *c1 = decode8(F, row, e + 8);
}

/* Natural element of permuted slot i (within a 16-chunk) and its scale 16^(l/2). */
INLINE size_t perm_elem(size_t i) { size_t l = i & 7; return (i & 8 ? 4 : 0) + (l >> 1) + 8 * (l & 1); }
INLINE float perm_scale(size_t i) { return (float)(1u << (4 * ((i & 7) >> 1))); }

/* A natural row to the permuted lane order (slot i holds element perm_elem(i)), divided by
 * the slots' scales where the decoder scales them, and back. */
INLINE void to_perm_lanes(const float *q, int64_t dim, float *dst, bool scaled) {
    for (int64_t c = 0; c < dim; c += 16)
        for (size_t i = 0; i < 16; i++)
            dst[c + (int64_t)i] = q[c + (int64_t)perm_elem(i)] / (scaled ? perm_scale(i) : 1.0f);
}
INLINE void from_perm_lanes(float *acc, int64_t dim, bool scaled) {
    float tmp[16];
    for (int64_t c = 0; c < dim; c += 16) {
        for (size_t i = 0; i < 16; i++) tmp[perm_elem(i)] = acc[c + (int64_t)i] / (scaled ? perm_scale(i) : 1.0f);
        memcpy(acc + c, tmp, sizeof tmp);
    }
}

#ifndef QSDPA_ISA_VNNI /* the 256-bit affine 4-bit decoder's order; the VNNI build's is its own */
static void aff4_prep_q(const float *q, int64_t dim, float *dst) { to_perm_lanes(q, dim, dst, true); }
static void aff4_fix_acc(float *acc, int64_t dim) { from_perm_lanes(acc, dim, true); }
/* 4-bit rows whose scales can be large (f32 or bf16; f16 stops at 65504): their decoded lanes are taken back to
 * the codes' values (one exact multiply a decoded vector), so neither K's scaled codes (times 16^(l/2), up to 4096x:
 * overflowed for K scales past ~5e33) nor V's accumulator (overflowed for outputs past ~8e34) meet the 4096 factor
 * (session 30); their tables (affine4_wide_ops) take q and give the accumulator in the permuted order unscaled */
static bool aff4_wide(const cpu_rows *t) { return t->scale_dtype != QSDPA_DTYPE_F16; }
static void aff4_wide_prep_q(const float *q, int64_t dim, float *dst) { to_perm_lanes(q, dim, dst, false); }
static void aff4_wide_fix_acc(float *acc, int64_t dim) { from_perm_lanes(acc, dim, false); }
#endif
/* Whether rows of format F take decode16's lanes unscaled (aff4_wide; the VNNI build's 4-bit lanes are not scaled) */
INLINE bool aff4_unscaled_lanes(int F, const cpu_rows *t) {
#ifdef QSDPA_ISA_VNNI
    (void)F, (void)t;
    return false;
#else
    return F == F_AFF4 && aff4_wide(t);
#endif
}

INLINE float load_scalar(qsdpa_dtype dt, const char *base, int64_t g) {
    uint16_t h;
    switch (dt) {
    case QSDPA_DTYPE_F16: memcpy(&h, base + 2 * g, 2); return _cvtsh_ss(h);
    case QSDPA_DTYPE_BF16: memcpy(&h, base + 2 * g, 2); return as_float((uint32_t)h << 16);
    default: { float f; memcpy(&f, base + 4 * g, 4); return f; }
    }
}

/* FP8 E4M3 byte -> value (magnitude 0x7F is NaN, as qsdpa_fp8_decode and MLX 0.32.4; the
 * quantizer never makes it): the NVFP4 group scale
 * by one load instead of six bit operations per group. */
static const float e4m3_table[256] = {
    0.0f, 0.001953125f, 0.00390625f, 0.005859375f, 0.0078125f, 0.009765625f, 0.01171875f, 0.013671875f,
    0.015625f, 0.017578125f, 0.01953125f, 0.021484375f, 0.0234375f, 0.025390625f, 0.02734375f, 0.029296875f,
    0.03125f, 0.03515625f, 0.0390625f, 0.04296875f, 0.046875f, 0.05078125f, 0.0546875f, 0.05859375f,
    0.0625f, 0.0703125f, 0.078125f, 0.0859375f, 0.09375f, 0.1015625f, 0.109375f, 0.1171875f,
    0.125f, 0.140625f, 0.15625f, 0.171875f, 0.1875f, 0.203125f, 0.21875f, 0.234375f,
    0.25f, 0.28125f, 0.3125f, 0.34375f, 0.375f, 0.40625f, 0.4375f, 0.46875f,
    0.5f, 0.5625f, 0.625f, 0.6875f, 0.75f, 0.8125f, 0.875f, 0.9375f,
    1.0f, 1.125f, 1.25f, 1.375f, 1.5f, 1.625f, 1.75f, 1.875f,
    2.0f, 2.25f, 2.5f, 2.75f, 3.0f, 3.25f, 3.5f, 3.75f,
    4.0f, 4.5f, 5.0f, 5.5f, 6.0f, 6.5f, 7.0f, 7.5f,
    8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f,
    16.0f, 18.0f, 20.0f, 22.0f, 24.0f, 26.0f, 28.0f, 30.0f,
    32.0f, 36.0f, 40.0f, 44.0f, 48.0f, 52.0f, 56.0f, 60.0f,
    64.0f, 72.0f, 80.0f, 88.0f, 96.0f, 104.0f, 112.0f, 120.0f,
    128.0f, 144.0f, 160.0f, 176.0f, 192.0f, 208.0f, 224.0f, 240.0f,
    256.0f, 288.0f, 320.0f, 352.0f, 384.0f, 416.0f, 448.0f, NAN,
    -0.0f, -0.001953125f, -0.00390625f, -0.005859375f, -0.0078125f, -0.009765625f, -0.01171875f, -0.013671875f,
    -0.015625f, -0.017578125f, -0.01953125f, -0.021484375f, -0.0234375f, -0.025390625f, -0.02734375f, -0.029296875f,
    -0.03125f, -0.03515625f, -0.0390625f, -0.04296875f, -0.046875f, -0.05078125f, -0.0546875f, -0.05859375f,
    -0.0625f, -0.0703125f, -0.078125f, -0.0859375f, -0.09375f, -0.1015625f, -0.109375f, -0.1171875f,
    -0.125f, -0.140625f, -0.15625f, -0.171875f, -0.1875f, -0.203125f, -0.21875f, -0.234375f,
    -0.25f, -0.28125f, -0.3125f, -0.34375f, -0.375f, -0.40625f, -0.4375f, -0.46875f,
    -0.5f, -0.5625f, -0.625f, -0.6875f, -0.75f, -0.8125f, -0.875f, -0.9375f,
    -1.0f, -1.125f, -1.25f, -1.375f, -1.5f, -1.625f, -1.75f, -1.875f,
    -2.0f, -2.25f, -2.5f, -2.75f, -3.0f, -3.25f, -3.5f, -3.75f,
    -4.0f, -4.5f, -5.0f, -5.5f, -6.0f, -6.5f, -7.0f, -7.5f,
    -8.0f, -9.0f, -10.0f, -11.0f, -12.0f, -13.0f, -14.0f, -15.0f,
    -16.0f, -18.0f, -20.0f, -22.0f, -24.0f, -26.0f, -28.0f, -30.0f,
    -32.0f, -36.0f, -40.0f, -44.0f, -48.0f, -52.0f, -56.0f, -60.0f,
    -64.0f, -72.0f, -80.0f, -88.0f, -96.0f, -104.0f, -112.0f, -120.0f,
    -128.0f, -144.0f, -160.0f, -176.0f, -192.0f, -208.0f, -224.0f, -240.0f,
    -256.0f, -288.0f, -320.0f, -352.0f, -384.0f, -416.0f, -448.0f, -NAN,
};

/* Scale of group g (affine: as stored; mx: E8M0; nv: E4M3 times the global factor). */
INLINE float group_scale(int F, const cpu_rows *t, const char *srow, int64_t g) {
    uint8_t s;
    switch (F) {
    case F_AFF4:
    case F_AFF8:
    case F_AFF2:
    case F_AFF3:
    case F_AFF5:
    case F_AFF6: return load_scalar(t->scale_dtype, srow, g);
    case F_MXFP4:
    case F_FP8:
        s = (uint8_t)srow[g];
        return s == 0 ? 0x1p-127f : as_float((uint32_t)s << 23);
    case F_NVFP4:
        return e4m3_table[(uint8_t)srow[g]] * t->global;
    default: return 1.0f;
    }
}

INLINE bool has_bias(int F) { return F == F_AFF4 || F == F_AFF8 || odd_bits(F); }

/* Affine K's score over shifted codes. s (q . c) + b sum(q) cancels in f32 where a group's bias nearly cancels
 * its codes (an outlier channel: b near the outlier, the other codes near the top), erring by 2^-24 of
 * |s q . c| rather than of the score: up to 3x SPEC 4's f32 bound (test_cpu_kernels 5f, session 34). So each
 * (key, group) takes z = round(-b / s) within the codes' range and scores
 *   s (q . (c - z)) + (b + z s) sum(q),
 * the same value, with s c - z s one FMA (fl(z s) in place of z s is exact: the bias term takes the same fl(z s))
 * and b + z s small. kp planes, [n][ng] each: the scale, -fl(z s) and b + fl(z s); z = 0 (shift 0, bias b) where
 * -b / s is under 1/2, NaN, or z s is not finite. */
typedef struct k_params {
    const float *scale, *shift, *bias; /* key j, group g at [j * ng + g] */
} k_params;
static k_params affine_k_params(const cpu_rows *k, int64_t j0, int64_t n, float *kp) {
    const int64_t ng = k->dim / k->group, count = n * ng, plane = (count + 7) / 8 * 8;
    const float top = (float)((1 << k->format.bits) - 1);
    float *sc = kp, *sh = kp + plane, *bi = kp + 2 * plane;
    for (int64_t j = 0; j < n; j++) /* as floats first: scale and bias rows may be f16, bf16 or strided */
        for (int64_t g = 0; g < ng; g++) {
            sc[j * ng + g] = load_scalar(k->scale_dtype, k->scales + (j0 + j) * k->scale_stride, g);
            bi[j * ng + g] = load_scalar(k->scale_dtype, k->biases + (j0 + j) * k->bias_stride, g);
        }
    for (int64_t i = count; i < plane; i++) sc[i] = 1.0f, bi[i] = 0.0f;
    const __m256 half = _mm256_set1_ps(0.5f), vtop = _mm256_set1_ps(top), fmax = _mm256_set1_ps(FLT_MAX);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < plane; i += 8) {
        const __m256 sv = _mm256_loadu_ps(sc + i), bv = _mm256_loadu_ps(bi + i);
        const __m256 t = _mm256_xor_ps(_mm256_div_ps(bv, sv), sign);
        const __m256 z = _mm256_min_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vtop);
        __m256 zs = _mm256_mul_ps(z, sv);
        const __m256 use = _mm256_and_ps(_mm256_cmp_ps(t, half, _CMP_GE_OQ),
                                         _mm256_cmp_ps(_mm256_andnot_ps(sign, zs), fmax, _CMP_LE_OQ));
        zs = _mm256_and_ps(use, zs);
        _mm256_storeu_ps(sh + i, _mm256_xor_ps(zs, sign));
        _mm256_storeu_ps(bi + i, _mm256_add_ps(bv, zs));
    }
    return (k_params){sc, sh, bi};
}

/* out[r] = lane r of v, for r < NR (the rest of out is another row chunk's). */
INLINE void store_rows(const int NR, __m128 v, float *out) {
    if (NR == 4) {
        _mm_storeu_ps(out, v);
    } else {
        float lanes[4];
        _mm_storeu_ps(lanes, v);
        for (int r = 0; r < NR; r++) out[r] = lanes[r];
    }
}

/* out[r] = sum of acc[r]'s 8 lanes + bias lane r, for r < NR (acc[NR..3] are zero). */
INLINE void store_row_sums(const int NR, const __m256 acc[4], __m128 bias, float *out) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    store_rows(NR, _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)), bias), out);
}

/* Affine K's shift of group g of key j (kp: affine_k_params, keys counted from the kernel's j0) as the lanes of
 * decode16's codes carry it: times 16^(l/2) where 4-bit lanes are scaled, exact (powers of two) */
INLINE __m256 k_shift(int F, bool unscaled, const k_params *kp, size_t i) {
    const __m256 v = _mm256_set1_ps(kp->shift[i]);
    if (F != F_AFF4 || unscaled) return v;
    return _mm256_mul_ps(v, _mm256_setr_ps(1, 1, 16, 16, 256, 256, 4096, 4096));
}

/* scores[j][r0 + r] = q[r0 + r] . K[j0 + j] for r < NR. The group scale multiplies
 * the decoded codes (one mul per 8 codes, shared by the NR rows; affine: an FMA with the shift) so the
 * accumulators run across groups without spilling; the bias enters as bias_g * sum(q_g). kp: affine K's
 * parameters from key j0 on (affine_k_params), else unused. */
INLINE void score_nr(int F, const int NR, const int GC, const cpu_rows *k, int64_t j0, int64_t n, const float *q,
                     const float *qsum, int nq, int r0, float *scores, const k_params *kp) {
    const size_t dim = (size_t)k->dim, G = GC ? (size_t)GC : is_plain(F) ? dim : (size_t)k->group, ng = dim / G;
    const bool unscaled = aff4_unscaled_lanes(F, k);
    for (int64_t j = 0; j < n; j++) {
        const char *row = k->codes + (j0 + j) * k->code_stride;
        const char *srow = is_plain(F) ? NULL : k->scales + (j0 + j) * k->scale_stride;
        __m256 a0[4], a1[4]; /* two chains per row hide the FMA latency */
        for (int r = 0; r < NR; r++) a0[r] = _mm256_setzero_ps(), a1[r] = _mm256_setzero_ps();
        __m128 bias = _mm_setzero_ps(); /* lanes r < NR: sum_g bias_g * sum(q_g) */
        for (size_t g = 0; g < ng; g++) {
            const char *rg = row + g * G * codebytes(F) / 8;
            const float *qg = q + (size_t)r0 * dim + g * G;
            const size_t kg = (size_t)j * ng + g;
            __m256 sv = _mm256_set1_ps(is_plain(F) ? 1.0f : has_bias(F) ? kp->scale[kg] : group_scale(F, k, srow, g));
            const __m256 zv = has_bias(F) ? k_shift(F, unscaled, kp, kg) : _mm256_setzero_ps();
            for (size_t e = 0; e < G; e += 16) {
                __m256 c0, c1;
                decode16(F, rg, e, g == ng - 1 && e + 16 == G, unscaled, &c0, &c1);
                if (has_bias(F)) c0 = _mm256_fmadd_ps(c0, sv, zv), c1 = _mm256_fmadd_ps(c1, sv, zv);
                else if (!is_plain(F)) c0 = _mm256_mul_ps(c0, sv), c1 = _mm256_mul_ps(c1, sv);
                for (int r = 0; r < NR; r++) {
                    const float *qr = qg + (size_t)r * dim + e;
                    a0[r] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(qr), a0[r]);
                    a1[r] = _mm256_fmadd_ps(c1, _mm256_loadu_ps(qr + 8), a1[r]);
                }
            }
            if (has_bias(F))
                bias = _mm_fmadd_ps(_mm_set1_ps(kp->bias[kg]), _mm_loadu_ps(qsum + g * (size_t)nq + (size_t)r0), bias);
        }
        for (int r = NR; r < 4; r++) a0[r] = a1[r] = _mm256_setzero_ps();
        for (int r = 0; r < 4; r++) a0[r] = _mm256_add_ps(a0[r], a1[r]);
        store_row_sums(NR, a0, bias, scores + j * nq + r0);
    }
}

/* The same for two keys at a time (n even): each q vector loaded once serves both
 * keys, which halves the q loads that otherwise bound this loop (measured at 2K:
 * 1-key form 0.57 ms, see bench/NOTES.md). */
INLINE void score2_nr(int F, const int NR, const int GC, const cpu_rows *k, int64_t j0, int64_t n, const float *q,
                      const float *qsum, int nq, int r0, float *scores, const k_params *kp) {
    const size_t dim = (size_t)k->dim, G = GC ? (size_t)GC : is_plain(F) ? dim : (size_t)k->group, ng = dim / G;
    const bool unscaled = aff4_unscaled_lanes(F, k);
    for (int64_t j = 0; j + 2 <= n; j += 2) {
        const char *row[2], *srow[2] = {NULL, NULL};
        __m256 a[2][4], b[2][4]; /* b: the second half-chunk for NR == 1, so 4+ FMA chains stay in flight */
        __m128 bias[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
        for (int u = 0; u < 2; u++) {
            row[u] = k->codes + (j0 + j + u) * k->code_stride;
            if (!is_plain(F)) srow[u] = k->scales + (j0 + j + u) * k->scale_stride;
            for (int r = 0; r < 4; r++) a[u][r] = b[u][r] = _mm256_setzero_ps();
        }
        for (size_t g = 0; g < ng; g++) {
            const float *qg = q + (size_t)r0 * dim + g * G;
            const size_t kg0 = (size_t)j * ng + g, kg1 = kg0 + ng;
            __m256 sv0 = _mm256_set1_ps(is_plain(F) ? 1.0f : has_bias(F) ? kp->scale[kg0] : group_scale(F, k, srow[0], g));
            __m256 sv1 = _mm256_set1_ps(is_plain(F) ? 1.0f : has_bias(F) ? kp->scale[kg1] : group_scale(F, k, srow[1], g));
            const __m256 zv0 = has_bias(F) ? k_shift(F, unscaled, kp, kg0) : _mm256_setzero_ps();
            const __m256 zv1 = has_bias(F) ? k_shift(F, unscaled, kp, kg1) : _mm256_setzero_ps();
            const char *rg0 = row[0] + g * G * codebytes(F) / 8, *rg1 = row[1] + g * G * codebytes(F) / 8;
            for (size_t e = 0; e < G; e += 16) {
                bool last = g == ng - 1 && e + 16 == G;
                __m256 c0, c1, d0, d1; /* key 0: c0 c1, key 1: d0 d1 */
                decode16(F, rg0, e, last, unscaled, &c0, &c1);
                decode16(F, rg1, e, last, unscaled, &d0, &d1);
                if (has_bias(F)) {
                    c0 = _mm256_fmadd_ps(c0, sv0, zv0), c1 = _mm256_fmadd_ps(c1, sv0, zv0);
                    d0 = _mm256_fmadd_ps(d0, sv1, zv1), d1 = _mm256_fmadd_ps(d1, sv1, zv1);
                } else if (!is_plain(F)) {
                    c0 = _mm256_mul_ps(c0, sv0), c1 = _mm256_mul_ps(c1, sv0);
                    d0 = _mm256_mul_ps(d0, sv1), d1 = _mm256_mul_ps(d1, sv1);
                }
                for (int r = 0; r < NR; r++) {
                    __m256 qv = _mm256_loadu_ps(qg + (size_t)r * dim + e);
                    a[0][r] = _mm256_fmadd_ps(c0, qv, a[0][r]);
                    a[1][r] = _mm256_fmadd_ps(d0, qv, a[1][r]);
                }
                for (int r = 0; r < NR; r++) {
                    __m256 qv = _mm256_loadu_ps(qg + (size_t)r * dim + e + 8);
                    if (NR == 1) {
                        b[0][r] = _mm256_fmadd_ps(c1, qv, b[0][r]);
                        b[1][r] = _mm256_fmadd_ps(d1, qv, b[1][r]);
                    } else {
                        a[0][r] = _mm256_fmadd_ps(c1, qv, a[0][r]);
                        a[1][r] = _mm256_fmadd_ps(d1, qv, a[1][r]);
                    }
                }
            }
            if (has_bias(F)) {
                __m128 qs = _mm_loadu_ps(qsum + g * (size_t)nq + (size_t)r0);
                bias[0] = _mm_fmadd_ps(_mm_set1_ps(kp->bias[kg0]), qs, bias[0]);
                bias[1] = _mm_fmadd_ps(_mm_set1_ps(kp->bias[kg1]), qs, bias[1]);
            }
        }
        for (int u = 0; u < 2; u++) {
            if (NR == 1)
                for (int r = 0; r < NR; r++) a[u][r] = _mm256_add_ps(a[u][r], b[u][r]);
            store_row_sums(NR, a[u], bias[u], scores + (j + u) * nq + r0);
        }
    }
}

/* The VNNI build (src/cpu/vnni/isa_vnni.c) compiles this file with the same AVX2 flags
 * and gives the integer K path and the 512-bit kernels (Z_TARGET: every format's score and
 * accum entry, so also the 256-bit kernels of affine 2/3/5/6 bits that they call) their
 * AVX-512 targets by attribute; unpack and the softmax row maximum are the AVX2 build's
 * code. */
#ifdef QSDPA_ISA_VNNI
#define Q16_TARGET __attribute__((target("avx512f,avx512vl,avx512vnni")))
#else
#define Q16_TARGET
#endif

/* The integer K path (cpu_kv_ops.score_q16: f16/bf16 q only). Codes become int16 and
 * meet q as int16 in vpmaddwd: 16 multiply-adds per instruction where an f32 FMA does 8,
 * no int-to-float conversion and no per-vector scale multiply; the group scale enters
 * once per group on the int32 sums. Codes per step: 16 for NVFP4 (its group), else 32. */
INLINE size_t q16_step(int F) { return F == F_NVFP4 ? 16 : 32; }

/* E2M1 times 2 as int8 (0, 1, 2, 3, 4, 6, 8, 12 and their negatives): exact integers, so
 * the group scale carries the factor 1/2. */
INLINE __m128i fp4_x2(__m128i nibbles) {
    return _mm_shuffle_epi8(_mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12), nibbles);
}

/* One step of codes from element e of a row as int16 vectors. 4-bit formats come out
 * with the even elements of the step first, then the odd ones (the nibble order of
 * each byte); order_q16 below puts q in the same order. */
INLINE void decode_q16(int F, const char *row, size_t e, __m256i *c0, __m256i *c1) {
    const __m128i low4 = _mm_set1_epi8(0x0F);
    switch (F) {
    case F_AFF8:
        *c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + e)));
        *c1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + e + 16)));
        return;
    case F_AFF4: { /* each byte zero-extended to a word: its low nibble and, shifted, its high one */
        __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + e / 2)));
        *c0 = _mm256_and_si256(w, _mm256_set1_epi16(0x0F));
        *c1 = _mm256_srli_epi16(w, 4);
        return;
    }
    case F_MXFP4: {
        __m128i x = _mm_loadu_si128((const __m128i *)(row + e / 2));
        *c0 = _mm256_cvtepi8_epi16(fp4_x2(_mm_and_si128(x, low4)));
        *c1 = _mm256_cvtepi8_epi16(fp4_x2(_mm_and_si128(_mm_srli_epi16(x, 4), low4)));
        return;
    }
    default: { /* NVFP4: 16 codes, one vector */
        __m128i x = _mm_loadl_epi64((const __m128i *)(row + e / 2));
        __m128i v = _mm_unpacklo_epi64(_mm_and_si128(x, low4), _mm_and_si128(_mm_srli_epi16(x, 4), low4));
        *c0 = _mm256_cvtepi8_epi16(fp4_x2(v));
        *c1 = _mm256_setzero_si256();
        return;
    }
    }
}

/* Natural q row -> the kernel's order: per step of `step` elements, even then odd. */
INLINE void order_nibbles(const int16_t *q, int64_t dim, int64_t step, int16_t *dst) {
    for (int64_t c = 0; c < dim; c += step)
        for (int64_t i = 0; i < step / 2; i++) {
            dst[c + i] = q[c + 2 * i];
            dst[c + step / 2 + i] = q[c + 2 * i + 1];
        }
}
static void order_q16_step32(const int16_t *q, int64_t dim, int16_t *dst) { order_nibbles(q, dim, 32, dst); }
static void order_q16_step16(const int16_t *q, int64_t dim, int16_t *dst) { order_nibbles(q, dim, 16, dst); }

/* scores[j][r0 + r] = qscale[r0 + r] * (q16[r0 + r] . codes[j0 + j] scaled per group)
 * + sum_g bias_g * sum(q_g), for r < NR. The int32 sums of a group are reduced across
 * lanes at once (lane r: row r), so the group scale, the bias and the row scale are
 * one 4-lane FMA each and a key ends with no horizontal sum. */
INLINE Q16_TARGET void score_q16_nr(int F, const int NR, const int GC, const cpu_rows *k, int64_t j0, int64_t n,
                                    const int16_t *q, const float *qscale, const float *qsum, int nq, int r0,
                                    float *scores) {
    const size_t dim = (size_t)k->dim, G = GC ? (size_t)GC : (size_t)k->group, ng = dim / G, step = q16_step(F);
    const float code_unit = F == F_MXFP4 || F == F_NVFP4 ? 0.5f : 1.0f; /* fp4_x2's factor 2 */
    const __m128 row_scale = _mm_loadu_ps(qscale + r0); /* lanes >= NR are never stored */
    for (int64_t j = 0; j < n; j++) {
        const char *row = k->codes + (j0 + j) * k->code_stride;
        const char *srow = k->scales + (j0 + j) * k->scale_stride;
        const char *brow = has_bias(F) ? k->biases + (j0 + j) * k->bias_stride : NULL;
        __m128 dot = _mm_setzero_ps(), bias = _mm_setzero_ps();
        for (size_t g = 0; g < ng; g++) {
            __m256i s[4];
            for (int r = 0; r < 4; r++) s[r] = _mm256_setzero_si256();
            const int16_t *qg = q + (size_t)r0 * dim + g * G;
            for (size_t e = 0; e < G; e += step) {
                __m256i c0, c1;
                decode_q16(F, row, g * G + e, &c0, &c1);
                for (int r = 0; r < NR; r++) {
                    const int16_t *qr = qg + (size_t)r * dim + e;
#ifdef QSDPA_ISA_VNNI /* vpdpwssd: madd and add in one, the same exact int32 sums */
                    s[r] = _mm256_dpwssd_epi32(s[r], c0, _mm256_loadu_si256((const __m256i *)qr));
                    if (step == 32) s[r] = _mm256_dpwssd_epi32(s[r], c1, _mm256_loadu_si256((const __m256i *)(qr + 16)));
#else
                    __m256i p = _mm256_madd_epi16(c0, _mm256_loadu_si256((const __m256i *)qr));
                    if (step == 32) p = _mm256_add_epi32(p, _mm256_madd_epi16(c1, _mm256_loadu_si256((const __m256i *)(qr + 16))));
                    s[r] = _mm256_add_epi32(s[r], p);
#endif
                }
            }
            __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
            __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            /* the row's q scale before the group's: an integer sum (up to ~2^25) times a K scale past ~1e31 would
             * overflow where the score does not (K scales of 1e35 against bf16 q of 1e-22 gave inf, session 30) */
            dot = _mm_fmadd_ps(_mm_mul_ps(_mm_cvtepi32_ps(sum), row_scale),
                               _mm_set1_ps(group_scale(F, k, srow, g) * code_unit), dot);
            if (has_bias(F))
                bias = _mm_fmadd_ps(_mm_set1_ps(load_scalar(k->scale_dtype, brow, g)),
                                    _mm_loadu_ps(qsum + g * (size_t)nq + (size_t)r0), bias);
        }
        store_rows(NR, _mm_add_ps(dot, bias), scores + j * nq + r0);
    }
}

/* For HALVES (1 or 2) sets of 4 rows from r0: ws[h][j][r] = w[j][r0 + 4h + r] times key j's
 * scale of group g (lanes >= NR are never used), and bsum[h] lanes r: sum_j w[j][r0 + 4h + r]
 * * bias_jg (affine; else 0). A key's scale and bias are read once for both halves. */
INLINE void group_weights(int F, const int HALVES, const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq,
                          int r0, size_t g, float (*ws)[CPU_BLOCK * 4], __m128 *bsum) {
    for (int h = 0; h < HALVES; h++) bsum[h] = _mm_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
        __m128 sv = _mm_set1_ps(1.0f), bv = _mm_setzero_ps();
        if (!is_plain(F)) sv = _mm_set1_ps(group_scale(F, v, v->scales + (j0 + j) * v->scale_stride, (int64_t)g));
        if (has_bias(F)) bv = _mm_set1_ps(load_scalar(v->scale_dtype, v->biases + (j0 + j) * v->bias_stride, (int64_t)g));
        for (int h = 0; h < HALVES; h++) {
            __m128 wv = _mm_loadu_ps(w + j * nq + r0 + 4 * h);
            _mm_store_ps(ws[h] + 4 * j, is_plain(F) ? wv : _mm_mul_ps(wv, sv));
            if (has_bias(F)) bsum[h] = _mm_fmadd_ps(wv, bv, bsum[h]);
        }
    }
}

/* acc[r0 + r] += sum_j w[j][r0 + r] * V[j0 + j] for r < NR. The group scale is folded
 * into the weights (w * scale), the bias added once per group (sum_j w * bias). */
INLINE void accum_nr(int F, const int NR, const int GC, const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq,
                     int r0, float *acc) {
    const size_t dim = (size_t)v->dim, G = GC ? (size_t)GC : is_plain(F) ? dim : (size_t)v->group, ng = dim / G;
    float wsb[1][CPU_BLOCK * 4] __attribute__((aligned(16))), *ws = wsb[0]; /* [j][4]: weight times the group scale */
    const bool unscaled = aff4_unscaled_lanes(F, v);
    for (size_t g = 0; g < ng; g++) {
        __m128 bsum;
        group_weights(F, 1, v, j0, n, w, nq, r0, g, wsb, &bsum);
        for (size_t e = g * G; e < (g + 1) * G; e += 16) {
            __m256 a0[4], a1[4];
            for (int r = 0; r < NR; r++) {
                a0[r] = _mm256_loadu_ps(acc + (size_t)(r0 + r) * dim + e);
                a1[r] = _mm256_loadu_ps(acc + (size_t)(r0 + r) * dim + e + 8);
            }
            /* the odd widths decode from the row's start (decode8_bits keeps its loads inside a run
             * that starts there) */
            const char *row = v->codes + j0 * v->code_stride + (odd_bits(F) ? 0 : e * codebytes(F) / 8);
            const size_t re = odd_bits(F) ? e : 0; /* element of `row` the step starts at */
            bool last = e + 16 == dim;
            int64_t j = 0;
            if (NR == 1) { /* two keys per step into separate sums: 4+ FMA chains in flight */
                __m256 x0[2], x1[2];
                for (int r = 0; r < NR; r++) x0[r] = x1[r] = _mm256_setzero_ps();
                for (; j + 2 <= n; j += 2, row += 2 * v->code_stride) {
                    __m256 c0, c1, d0, d1;
                    decode16(F, row, re, last, unscaled, &c0, &c1);
                    decode16(F, row + v->code_stride, re, last, unscaled, &d0, &d1);
                    for (int r = 0; r < NR; r++) {
                        __m256 wv = _mm256_broadcast_ss(ws + 4 * j + r), wu = _mm256_broadcast_ss(ws + 4 * j + 4 + r);
                        a0[r] = _mm256_fmadd_ps(c0, wv, a0[r]);
                        a1[r] = _mm256_fmadd_ps(c1, wv, a1[r]);
                        x0[r] = _mm256_fmadd_ps(d0, wu, x0[r]);
                        x1[r] = _mm256_fmadd_ps(d1, wu, x1[r]);
                    }
                }
                for (int r = 0; r < NR; r++) a0[r] = _mm256_add_ps(a0[r], x0[r]), a1[r] = _mm256_add_ps(a1[r], x1[r]);
            }
            for (; j < n; j++, row += v->code_stride) {
                __m256 c0, c1;
                decode16(F, row, re, last, unscaled, &c0, &c1);
                for (int r = 0; r < NR; r++) {
                    __m256 wv = _mm256_broadcast_ss(ws + 4 * j + r);
                    a0[r] = _mm256_fmadd_ps(c0, wv, a0[r]);
                    a1[r] = _mm256_fmadd_ps(c1, wv, a1[r]);
                }
            }
            for (int r = 0; r < NR; r++) {
                _mm256_storeu_ps(acc + (size_t)(r0 + r) * dim + e, a0[r]);
                _mm256_storeu_ps(acc + (size_t)(r0 + r) * dim + e + 8, a1[r]);
            }
        }
        if (has_bias(F)) {
            float bl[4];
            _mm_storeu_ps(bl, bsum);
            for (int r = 0; r < NR; r++) {
                float *a = acc + (size_t)(r0 + r) * dim + g * G;
                __m256 bv = _mm256_set1_ps(bl[r]);
                if (F == F_AFF4 && !unscaled) bv = _mm256_mul_ps(bv, _mm256_setr_ps(1, 1, 16, 16, 256, 256, 4096, 4096));
                for (size_t e = 0; e < G; e += 8) _mm256_storeu_ps(a + e, _mm256_add_ps(_mm256_loadu_ps(a + e), bv));
            }
        }
    }
}

#ifdef QSDPA_ISA_VNNI
/* 512-bit kernels (VNNI build). The 256-bit loops were bound by instructions issued, not by
 * the FMA pipes (callgrind, bench/NOTES.md session 13: ~4.7 per cycle), and a zmm instruction
 * does twice a ymm one's work for one issue slot. These run at about twice their pipe bound
 * (session 14), for reasons not yet measured. */
#define Z_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni")))

/* Lane orders of the decoded codes (q rows and acc rows follow them):
 * - pair lanes (affine 4-bit, mxfp4): 32 values per step from one 16-byte load, the even
 *   elements of the 32 in one vector and the odd ones in the next (slot i of a 32-block holds
 *   element 2i for i < 16, else 2(i - 16) + 1): 5 ops per 32 values, not 8 (bench/NOTES.md
 *   session 15);
 * - nvfp4 (group 16, so a step stays in one group): 16 values per step in the order of
 *   perm_elem (lane l: element l/2 + 8 (l%2) of the 16);
 * - the others: natural order. All unscaled. */
#define PAIR_LANES(F) ((F) == F_AFF4 || (F) == F_MXFP4)
#define NIBBLE_LANES(F) ((F) == F_NVFP4)
/* Formats with a 512-bit decoder: all but the odd affine widths. */
#define HAS_Z(F) (!((F) == F_AFF2 || (F) == F_AFF3 || (F) == F_AFF5 || (F) == F_AFF6))

/* Sixteen values from element e (a multiple of 16) of a row. 4-bit: one 64-bit broadcast, a
 * shift per lane (lanes 2i and 2i+1 both by 4i: element i of the low and of the high
 * dword); E2M1 by one 16-entry table lookup (vpermps reads the low 4 bits, sign included). */
INLINE Z_TARGET __m512 decode16z(int F, const char *row, size_t e) {
    switch (F) {
    case F_AFF4:
    case F_MXFP4:
    case F_NVFP4: {
        long long w;
        memcpy(&w, row + e / 2, 8);
        __m512i c = _mm512_srlv_epi32(_mm512_set1_epi64(w),
                                      _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28));
        if (F == F_AFF4) return _mm512_cvtepi32_ps(_mm512_and_si512(c, _mm512_set1_epi32(15)));
        return _mm512_permutexvar_ps(c, _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f,
                                                       -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f));
    }
    case F_AFF8:
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + e))));
    case F_FP8: { /* as decode8 */
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + e)));
        __m512i x = _mm512_srai_epi32(_mm512_slli_epi32(b, 24), 4);
        x = _mm512_and_si512(x, _mm512_set1_epi32((int)0x87FFFFFFu));
        return _mm512_mul_ps(_mm512_castsi512_ps(x), _mm512_set1_ps(0x1p120f));
    }
    case F_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * e)));
    case F_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * e))), 16));
    default:
        return _mm512_loadu_ps((const float *)(row + 4 * e));
    }
}

/* Pair lanes (affine 4-bit, mxfp4): 32 values from element e (a multiple of 32), the 16 bytes of
 * codes widened to dwords; a byte's low nibble is the even element, its high nibble the odd one
 * (E2M1 by the table lookup, which reads 4 bits). */
INLINE Z_TARGET void decode32z(int F, const char *row, size_t e, __m512 out[2]) {
    __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + e / 2)));
    __m512i hi = _mm512_srli_epi32(x, 4);
    if (F == F_AFF4) {
        out[0] = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(15)));
        out[1] = _mm512_cvtepi32_ps(hi);
        return;
    }
    const __m512 e2m1 = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f,
                                       -2.0f, -3.0f, -4.0f, -6.0f);
    out[0] = _mm512_permutexvar_ps(x, e2m1);
    out[1] = _mm512_permutexvar_ps(hi, e2m1);
}

/* q rows and acc rows in the decoders' lane orders (unscaled). */
static void perm16_prep_q(const float *q, int64_t dim, float *dst) { to_perm_lanes(q, dim, dst, false); }
static void perm16_fix_acc(float *acc, int64_t dim) { from_perm_lanes(acc, dim, false); }
static void pair_prep_q(const float *q, int64_t dim, float *dst) {
    for (int64_t b = 0; b < dim; b += 32)
        for (int i = 0; i < 16; i++) dst[b + i] = q[b + 2 * i], dst[b + 16 + i] = q[b + 2 * i + 1];
}
static void pair_fix_acc(float *acc, int64_t dim) {
    float tmp[32];
    for (int64_t b = 0; b < dim; b += 32) {
        for (int i = 0; i < 16; i++) tmp[2 * i] = acc[b + i], tmp[2 * i + 1] = acc[b + 16 + i];
        memcpy(acc + b, tmp, sizeof tmp);
    }
}

/* One decode step from element e, VECS (1 or 2) vectors of 16 values: pair lanes decode both at
 * once, the other formats two consecutive 16-value runs. */
INLINE Z_TARGET void decodez(int F, const int VECS, const char *row, size_t e, __m512 out[2]) {
    if (PAIR_LANES(F)) {
        decode32z(F, row, e, out);
        return;
    }
    for (int h = 0; h < VECS; h++) out[h] = decode16z(F, row, e + 16 * (size_t)h);
}

/* accum_nr on decodez steps: up to 4 rows two keys per step into separate sums (8 chains per
 * vector of the step), 8 rows one key per step (8 chains per vector already). */
INLINE Z_TARGET void accum_z_nr(int F, const int NR, const int GC, const cpu_rows *v, int64_t j0, int64_t n,
                                const float *w, int nq, int r0, float *acc) {
    const size_t dim = (size_t)v->dim, G = GC ? (size_t)GC : is_plain(F) ? dim : (size_t)v->group, ng = dim / G;
    float ws[2][CPU_BLOCK * 4] __attribute__((aligned(16))); /* rows r0..r0+3, then r0+4..r0+7 */
    /* two vectors per step (32 values): pair lanes always; natural-order formats where a compile-time group
     * holds whole 32-value steps, since two keys x one vector x 4 rows are 8 FMA chains, latency-bound on
     * this core (bench/NOTES.md session 15) */
    const int VECS = PAIR_LANES(F) || (GC && GC % 32 == 0 && !NIBBLE_LANES(F)) ? 2 : 1;
#define WS(j, r) ws[(r) >> 2][4 * (j) + ((r) & 3)]
    for (size_t g = 0; g < ng; g++) {
        __m128 bsum[2];
        group_weights(F, NR > 4 ? 2 : 1, v, j0, n, w, nq, r0, g, ws, bsum);
        for (size_t e = g * G; e < (g + 1) * G; e += 16 * (size_t)VECS) {
            __m512 a[2][8], b[2][8]; /* [vector of the step][row] */
            for (int h = 0; h < VECS; h++)
                for (int r = 0; r < NR; r++)
                    a[h][r] = _mm512_loadu_ps(acc + (size_t)(r0 + r) * dim + e + 16 * h), b[h][r] = _mm512_setzero_ps();
            const char *row = v->codes + j0 * v->code_stride;
            int64_t j = 0;
            for (; NR <= 4 && j + 2 <= n; j += 2, row += 2 * v->code_stride) { /* 8 rows alone give 8 chains */
                __m512 c[2], d[2];
                decodez(F, VECS, row, e, c);
                decodez(F, VECS, row + v->code_stride, e, d);
                for (int r = 0; r < NR; r++) {
                    __m512 wc = _mm512_set1_ps(WS(j, r)), wd = _mm512_set1_ps(WS(j + 1, r));
                    for (int h = 0; h < VECS; h++) {
                        a[h][r] = _mm512_fmadd_ps(c[h], wc, a[h][r]);
                        b[h][r] = _mm512_fmadd_ps(d[h], wd, b[h][r]);
                    }
                }
            }
            for (; j < n; j++, row += v->code_stride) {
                __m512 c[2];
                decodez(F, VECS, row, e, c);
                for (int r = 0; r < NR; r++) {
                    __m512 wc = _mm512_set1_ps(WS(j, r));
                    for (int h = 0; h < VECS; h++) a[h][r] = _mm512_fmadd_ps(c[h], wc, a[h][r]);
                }
            }
            for (int h = 0; h < VECS; h++)
                for (int r = 0; r < NR; r++)
                    _mm512_storeu_ps(acc + (size_t)(r0 + r) * dim + e + 16 * h, _mm512_add_ps(a[h][r], b[h][r]));
        }
        if (has_bias(F)) { /* the same for every element of the group, so the lane order does not matter */
            float bl[8];
            _mm_storeu_ps(bl, bsum[0]);
            if (NR > 4) _mm_storeu_ps(bl + 4, bsum[1]);
            for (int r = 0; r < NR; r++) {
                float *a = acc + (size_t)(r0 + r) * dim + g * G;
                for (size_t e = 0; e < G; e += 16) _mm512_storeu_ps(a + e, _mm512_add_ps(_mm512_loadu_ps(a + e), _mm512_set1_ps(bl[r])));
            }
        }
    }
#undef WS
}

/* Lanes 0..3 of the result: the 16-lane sums of x[0..3]. */
INLINE Z_TARGET __m128 sum16x4(const __m512 x[4]) {
    __m256 h[4];
    for (int r = 0; r < 4; r++)
        h[r] = _mm256_add_ps(_mm512_castps512_ps256(x[r]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x[r]), 1)));
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* score2_nr / score_nr on 16- or 32-value steps (decode16z, decode32z) for KEYS (1, 2 or 4) keys from
 * key j: q in the decoder's lane order (PREP_Q). One row alone alternates two sums per key (by vector), so at least
 * two FMA chains per key stay in flight. */
INLINE Z_TARGET void score_z_keys(int F, const int NR, const int GC, const int KEYS, const cpu_rows *k, int64_t j,
                                  const float *q, const float *qsum, int nq, int r0, float *scores, const k_params *kp,
                                  size_t kj) {
    const size_t dim = (size_t)k->dim, G = GC ? (size_t)GC : is_plain(F) ? dim : (size_t)k->group, ng = dim / G;
    const char *row[4], *srow[4] = {NULL, NULL, NULL, NULL};
    __m512 a[4][8], b[4][8];
    __m128 bias[4][2]; /* [key][rows 0..3, 4..7] */
    for (int u = 0; u < KEYS; u++) {
        row[u] = k->codes + (j + u) * k->code_stride;
        if (!is_plain(F)) srow[u] = k->scales + (j + u) * k->scale_stride;
        for (int r = 0; r < 8; r++) a[u][r] = b[u][r] = _mm512_setzero_ps();
        bias[u][0] = bias[u][1] = _mm_setzero_ps();
    }
    size_t step = 0;
    for (size_t g = 0; g < ng; g++) {
        const float *qg = q + (size_t)r0 * dim + g * G;
        __m512 sv[4], zv[4]; /* affine: scale and shift (affine_k_params; the 512-bit lanes are unscaled) */
        for (int u = 0; u < KEYS; u++) {
            const size_t kg = (kj + (size_t)u) * ng + g;
            sv[u] = _mm512_set1_ps(is_plain(F) ? 1.0f : has_bias(F) ? kp->scale[kg] : group_scale(F, k, srow[u], (int64_t)g));
            zv[u] = has_bias(F) ? _mm512_set1_ps(kp->shift[kg]) : _mm512_setzero_ps();
        }
        /* 16-value steps in their own loop: folded into the pair loop, gcc kept more on the
         * stack and affine 8-bit Lq 1 lost 9% (bench/NOTES.md session 15) */
        for (size_t e = 0; !PAIR_LANES(F) && e < G; e += 16, step++) {
            __m512 c[4];
            for (int u = 0; u < KEYS; u++) {
                c[u] = decode16z(F, row[u], g * G + e);
                if (has_bias(F)) c[u] = _mm512_fmadd_ps(c[u], sv[u], zv[u]);
                else if (!is_plain(F)) c[u] = _mm512_mul_ps(c[u], sv[u]);
            }
            for (int r = 0; r < NR; r++) {
                __m512 qv = _mm512_loadu_ps(qg + (size_t)r * dim + e);
                for (int u = 0; u < KEYS; u++) {
                    if (NR == 1 && (step & 1)) b[u][r] = _mm512_fmadd_ps(c[u], qv, b[u][r]);
                    else a[u][r] = _mm512_fmadd_ps(c[u], qv, a[u][r]);
                }
            }
        }
        for (size_t e = 0; PAIR_LANES(F) && e < G; e += 32) {
            __m512 c[4][2];
            for (int u = 0; u < KEYS; u++) {
                decode32z(F, row[u], g * G + e, c[u]);
                for (int h = 0; h < 2; h++)
                    c[u][h] = has_bias(F) ? _mm512_fmadd_ps(c[u][h], sv[u], zv[u]) : _mm512_mul_ps(c[u][h], sv[u]);
            }
            for (int h = 0; h < 2; h++)
                for (int r = 0; r < NR; r++) {
                    __m512 qv = _mm512_loadu_ps(qg + (size_t)r * dim + e + 16 * (size_t)h);
                    for (int u = 0; u < KEYS; u++) {
                        if (NR == 1 && h) b[u][r] = _mm512_fmadd_ps(c[u][h], qv, b[u][r]);
                        else a[u][r] = _mm512_fmadd_ps(c[u][h], qv, a[u][r]);
                    }
                }
        }
        if (has_bias(F)) {
            for (int h = 0; h < (NR > 4 ? 2 : 1); h++) {
                __m128 qs = _mm_loadu_ps(qsum + g * (size_t)nq + (size_t)r0 + 4 * (size_t)h);
                for (int u = 0; u < KEYS; u++)
                    bias[u][h] = _mm_fmadd_ps(_mm_set1_ps(kp->bias[(kj + (size_t)u) * ng + g]), qs, bias[u][h]);
            }
        }
    }
    for (int u = 0; u < KEYS; u++) {
        if (NR == 1) a[u][0] = _mm512_add_ps(a[u][0], b[u][0]);
        for (int r = NR; r < 8; r++) a[u][r] = _mm512_setzero_ps();
        store_rows(NR > 4 ? 4 : NR, _mm_add_ps(sum16x4(a[u]), bias[u][0]), scores + u * nq + r0);
        if (NR > 4) store_rows(NR - 4, _mm_add_ps(sum16x4(a[u] + 4), bias[u][1]), scores + u * nq + r0 + 4);
    }
}

INLINE Z_TARGET void score_z_nr(int F, const int NR, const int GC, const cpu_rows *k, int64_t j0, int64_t n,
                                const float *q, const float *qsum, int nq, int r0, float *scores, const k_params *kp) {
    int64_t j = 0;
    /* four keys per pass share each q load and the pass's setup (16 sums; 8 rows leave room for two keys):
     * 5-9% faster for the 4-bit formats, 9% slower for 8-bit (bench/NOTES.md session 14) */
    if (NR <= 4 && (PAIR_LANES(F) || NIBBLE_LANES(F)))
        for (; j + 4 <= n; j += 4) score_z_keys(F, NR, GC, 4, k, j0 + j, q, qsum, nq, r0, scores + j * nq, kp, (size_t)j);
    for (; j + 2 <= n; j += 2) score_z_keys(F, NR, GC, 2, k, j0 + j, q, qsum, nq, r0, scores + j * nq, kp, (size_t)j);
    if (j < n) score_z_keys(F, NR, GC, 1, k, j0 + j, q, qsum, nq, r0, scores + j * nq, kp, (size_t)j);
}
#endif

/* dst[j] = scale * code + bias for rows j0 .. j0 + n - 1. */
INLINE void unpack_rows(int F, const cpu_rows *t, int64_t j0, int64_t n, float *dst) {
    const int64_t dim = t->dim, G = is_plain(F) ? dim : t->group, ng = dim / G;
    for (int64_t j = 0; j < n; j++) {
        const char *row = t->codes + (j0 + j) * t->code_stride;
        float *o = dst + j * dim;
        for (int64_t g = 0; g < ng; g++) {
            __m256 sv = _mm256_set1_ps(1.0f), bv = _mm256_setzero_ps();
            if (!is_plain(F)) sv = _mm256_set1_ps(group_scale(F, t, t->scales + (j0 + j) * t->scale_stride, g));
            if (has_bias(F)) bv = _mm256_set1_ps(load_scalar(t->scale_dtype, t->biases + (j0 + j) * t->bias_stride, g));
            for (int64_t e = g * G; e < (g + 1) * G; e += 8)
                _mm256_storeu_ps(o + e, _mm256_fmadd_ps(decode8(F, row, e), sv, bv));
        }
    }
}

/* Formats whose codes are integers (times a known unit) in int16: the integer K path. */
#define HAS_Q16(F) ((F) == F_AFF4 || (F) == F_AFF8 || (F) == F_MXFP4 || (F) == F_NVFP4)

/* The VNNI build scores K (f32 q) and accumulates V with the 512-bit kernels where it has a decoder. */
#ifdef QSDPA_ISA_VNNI
#define ACCUM_TARGET Z_TARGET
#define ACCUM_NR(F, ...) (HAS_Z(F) ? accum_z_nr(F, __VA_ARGS__) : accum_nr(F, __VA_ARGS__))
#define FIX_ACC(F) (HAS_Z(F) ? (PAIR_LANES(F) ? pair_fix_acc : NIBBLE_LANES(F) ? perm16_fix_acc : NULL) : NULL)
#define SCORE_NR(F, ...) (HAS_Z(F) ? score_z_nr(F, __VA_ARGS__) : score_ymm_nr(F, __VA_ARGS__))
#define PREP_Q(F) (HAS_Z(F) ? (PAIR_LANES(F) ? pair_prep_q : NIBBLE_LANES(F) ? perm16_prep_q : NULL) : NULL)
/* the integer K path only where it beats the 512-bit float score (32K, f16 q: 8-bit 4.0 vs
 * 4.3 ms; 4-bit 3.5 vs 2.7, nvfp4 4.1 vs 2.9: bench/NOTES.md session 13) */
#define SCORE_Q16(NAME, F) ((F) == F_AFF8 ? NAME##_score_q16 : NULL)
/* 8 query rows per pass where the 512-bit kernels serve (32 registers: 16 sums for two keys):
 * each decoded vector then serves twice the rows (GQA 4 with Lq >= 2) */
#define SCORE_CHUNKS8(F, GC, k, j0, n, q, qsum, nq, r0, scores, kp)                                           \
    if (HAS_Z(F))                                                                                             \
        for (; r0 + 8 <= nq; r0 += 8) score_z_nr(F, 8, GC, k, j0, n, q, qsum, nq, r0, scores, kp)
#define ACCUM_CHUNKS8(F, GC, v, j0, n, w, nq, r0, acc)                                                        \
    if (HAS_Z(F))                                                                                             \
        for (; r0 + 8 <= nq; r0 += 8) accum_z_nr(F, 8, GC, v, j0, n, w, nq, r0, acc)
#else
#define SCORE_CHUNKS8(F, GC, k, j0, n, q, qsum, nq, r0, scores, kp) (void)0
#define ACCUM_CHUNKS8(F, GC, v, j0, n, w, nq, r0, acc) (void)0
#define SCORE_Q16(NAME, F) (HAS_Q16(F) ? NAME##_score_q16 : NULL)
#define ACCUM_TARGET
#define ACCUM_NR(F, ...) accum_nr(F, __VA_ARGS__)
#define FIX_ACC(F) (F == F_AFF4 ? aff4_fix_acc : NULL)
#define SCORE_NR(F, ...) score_ymm_nr(F, __VA_ARGS__)
#define PREP_Q(F) (F == F_AFF4 ? aff4_prep_q : NULL)
#endif

/* The 256-bit score over key pairs, then the odd key. */
INLINE void score_ymm_nr(int F, const int NR, const int GC, const cpu_rows *k, int64_t j0, int64_t n, const float *q,
                         const float *qsum, int nq, int r0, float *scores, const k_params *kp) {
    const int64_t even = n & ~(int64_t)1;
    score2_nr(F, NR, GC, k, j0, even, q, qsum, nq, r0, scores, kp);
    const size_t skip = (size_t)even * (size_t)(k->dim / (is_plain(F) ? k->dim : k->group));
    const k_params rest = has_bias(F) ? (k_params){kp->scale + skip, kp->shift + skip, kp->bias + skip} : *kp;
    score_nr(F, NR, GC, k, j0 + even, n - even, q, qsum, nq, r0, scores + even * nq, &rest);
}

/* One set of kernels per (format, group): GC is the group size when it is known at
 * compile time (0: read it from the rows). Query rows go in chunks of 4, the rest by 1..3. */
#define DEFINE_FORMAT(NAME, F, GC)                                                                              \
    static ACCUM_TARGET void NAME##_score(const cpu_rows *k, int64_t j0, int64_t n, const float *q,            \
                                          const float *qsum, int nq, float *scores, float *tmp) {             \
        const k_params kp = has_bias(F) ? affine_k_params(k, j0, n, tmp) : (k_params){NULL, NULL, NULL};       \
        int r0 = 0;                                                                                           \
        SCORE_CHUNKS8(F, GC, k, j0, n, q, qsum, nq, r0, scores, &kp);                                         \
        for (; r0 + 4 <= nq; r0 += 4) SCORE_NR(F, 4, GC, k, j0, n, q, qsum, nq, r0, scores, &kp);             \
        switch (nq - r0) {                                                                                    \
        case 3: SCORE_NR(F, 3, GC, k, j0, n, q, qsum, nq, r0, scores, &kp); break;                            \
        case 2: SCORE_NR(F, 2, GC, k, j0, n, q, qsum, nq, r0, scores, &kp); break;                            \
        case 1: SCORE_NR(F, 1, GC, k, j0, n, q, qsum, nq, r0, scores, &kp); break;                            \
        default: break;                                                                                       \
        }                                                                                                     \
    }                                                                                                         \
    static ACCUM_TARGET void NAME##_accum(const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq,    \
                                          float *acc, float *tmp) {                                           \
        (void)tmp;                                                                                            \
        int r0 = 0;                                                                                           \
        ACCUM_CHUNKS8(F, GC, v, j0, n, w, nq, r0, acc);                                                       \
        for (; r0 + 4 <= nq; r0 += 4) ACCUM_NR(F, 4, GC, v, j0, n, w, nq, r0, acc);                           \
        switch (nq - r0) {                                                                                    \
        case 3: ACCUM_NR(F, 3, GC, v, j0, n, w, nq, r0, acc); break;                                          \
        case 2: ACCUM_NR(F, 2, GC, v, j0, n, w, nq, r0, acc); break;                                          \
        case 1: ACCUM_NR(F, 1, GC, v, j0, n, w, nq, r0, acc); break;                                          \
        default: break;                                                                                       \
        }                                                                                                     \
    }                                                                                                         \
    static void NAME##_unpack(const cpu_rows *t, int64_t j0, int64_t n, float *dst) {                         \
        unpack_rows(F, t, j0, n, dst);                                                                        \
    }                                                                                                         \
    static Q16_TARGET void NAME##_score_q16(const cpu_rows *k, int64_t j0, int64_t n, const int16_t *q16,     \
                                 const float *qscale, const float *qsum, int nq, float *scores) {             \
        int r0 = 0;                                                                                           \
        for (; r0 + 4 <= nq; r0 += 4) score_q16_nr(F, 4, GC, k, j0, n, q16, qscale, qsum, nq, r0, scores);    \
        switch (nq - r0) {                                                                                    \
        case 3: score_q16_nr(F, 3, GC, k, j0, n, q16, qscale, qsum, nq, r0, scores); break;                   \
        case 2: score_q16_nr(F, 2, GC, k, j0, n, q16, qscale, qsum, nq, r0, scores); break;                   \
        case 1: score_q16_nr(F, 1, GC, k, j0, n, q16, qscale, qsum, nq, r0, scores); break;                   \
        default: break;                                                                                       \
        }                                                                                                     \
    }                                                                                                         \
    static const cpu_kv_ops NAME##_ops = {#NAME,                                                              \
                                          NAME##_score,                                                       \
                                          NAME##_accum,                                                       \
                                          NAME##_unpack,                                                      \
                                          PREP_Q(F),                                                          \
                                          FIX_ACC(F),                                                         \
                                          SCORE_Q16(NAME, F),                               \
                                          F == F_AFF4 || F == F_MXFP4 ? order_q16_step32                      \
                                          : F == F_NVFP4              ? order_q16_step16                      \
                                                                      : NULL,                                 \
                                          NULL, false};

DEFINE_FORMAT(affine4_g32, F_AFF4, 32)
DEFINE_FORMAT(affine4_g64, F_AFF4, 64)
DEFINE_FORMAT(affine4_g128, F_AFF4, 128)
DEFINE_FORMAT(affine8_g32, F_AFF8, 32)
DEFINE_FORMAT(affine8_g64, F_AFF8, 64)
DEFINE_FORMAT(affine8_g128, F_AFF8, 128)
DEFINE_FORMAT(mxfp4, F_MXFP4, 32)
DEFINE_FORMAT(nvfp4, F_NVFP4, 16)
DEFINE_FORMAT(mxfp8, F_FP8, 32)
DEFINE_FORMAT(f32, F_F32, 0)
DEFINE_FORMAT(f16, F_F16, 0)
DEFINE_FORMAT(bf16, F_BF16, 0)
DEFINE_FORMAT(affine2, F_AFF2, 0)
DEFINE_FORMAT(affine3, F_AFF3, 0)
DEFINE_FORMAT(affine5, F_AFF5, 0)
DEFINE_FORMAT(affine6, F_AFF6, 0)

static const cpu_kv_ops *const affine_ops[2][3] = {{&affine4_g32_ops, &affine4_g64_ops, &affine4_g128_ops},
                                                   {&affine8_g32_ops, &affine8_g64_ops, &affine8_g128_ops}};
#ifndef QSDPA_ISA_VNNI
/* the 4-bit tables for scales that can be large (aff4_wide): the same kernels on unscaled lanes, q and the
 * accumulator only permuted */
#define AFF4_WIDE_OPS(NAME)                                                                                   \
    {#NAME ".wide", NAME##_score, NAME##_accum, NAME##_unpack, aff4_wide_prep_q, aff4_wide_fix_acc, NAME##_score_q16, \
     order_q16_step32, NULL, false}
static const cpu_kv_ops affine4_wide_ops[3] = {AFF4_WIDE_OPS(affine4_g32), AFF4_WIDE_OPS(affine4_g64),
                                               AFF4_WIDE_OPS(affine4_g128)};
#endif

/* Formats without a decoder (none of SPEC's today; the fallback for a new mode): rows to floats
 * (portable unpack), then the f32 kernels. */
static cpu_rows float_rows(const cpu_rows *t, const float *tmp) {
    cpu_rows f;
    memset(&f, 0, sizeof f);
    f.format.mode = QSDPA_MODE_PLAIN;
    f.format.plain_dtype = QSDPA_DTYPE_F32;
    f.codes = (const char *)tmp;
    f.code_stride = t->dim * 4;
    f.dim = f.group = t->dim;
    f.global = 1.0f;
    return f;
}

static void generic_unpack(const cpu_rows *t, int64_t j0, int64_t n, float *dst) {
    for (int64_t j = 0; j < n; j++) qsdpa_cpu_unpack_row(t, j0 + j, dst + j * t->dim);
}

static void generic_score(const cpu_rows *k, int64_t j0, int64_t n, const float *q, const float *qsum, int nq,
                          float *scores, float *tmp) {
    generic_unpack(k, j0, n, tmp);
    cpu_rows f = float_rows(k, tmp);
    f32_score(&f, 0, n, q, qsum, nq, scores, NULL);
}

static void generic_accum(const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq, float *acc, float *tmp) {
    generic_unpack(v, j0, n, tmp);
    cpu_rows f = float_rows(v, tmp);
    f32_accum(&f, 0, n, w, nq, acc, NULL);
}

static const cpu_kv_ops generic_ops = {"generic", generic_score, generic_accum, generic_unpack, NULL, NULL, NULL, NULL, NULL, false};

static const cpu_kv_ops *ops_for_avx2(const cpu_rows *t) {
    if (t->dim % 16 != 0) return qsdpa_cpu_isa_c.ops_for(t); /* plain rows of odd width */
    switch (t->format.mode) {
    case QSDPA_MODE_PLAIN:
        return t->format.plain_dtype == QSDPA_DTYPE_F16 ? &f16_ops
               : t->format.plain_dtype == QSDPA_DTYPE_BF16 ? &bf16_ops
                                                           : &f32_ops;
    case QSDPA_MODE_AFFINE:
        switch (t->format.bits) {
        case 2: return &affine2_ops;
        case 3: return &affine3_ops;
        case 5: return &affine5_ops;
        case 6: return &affine6_ops;
        case 4:
        case 8: break;
        default: return &generic_ops;
        }
#ifndef QSDPA_ISA_VNNI
        if (t->format.bits == 4 && aff4_wide(t)) return &affine4_wide_ops[t->group == 32 ? 0 : t->group == 64 ? 1 : 2];
#endif
        return affine_ops[t->format.bits == 8][t->group == 32 ? 0 : t->group == 64 ? 1 : 2];
    case QSDPA_MODE_MXFP4: return &mxfp4_ops;
    case QSDPA_MODE_NVFP4: return &nvfp4_ops;
    case QSDPA_MODE_MXFP8: return &mxfp8_ops;
    default: return &generic_ops;
    }
}

/* F16C, 8 values a step (vcvtps2ph with round-to-nearest-even: the rounding of qsdpa_f32_to_f16) */
static void f16_to_f32_avx2(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
static void f32_to_f16_avx2(const float *src, int64_t n, uint16_t *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

#ifdef QSDPA_ISA_VNNI
/* bf16 dot products for the P V of bf16 q over float tiles with many rows (cpu_driver.c, bf16 tiles):
 * vdpbf16ps does 32 multiply-adds where an FMA does 16, at the same issue rate on this Zen 5 VM (bench/NOTES.md
 * session 22), and the calls that take these tiles run at the FMA rate. V and the weights are rounded to bf16
 * once (nearest even), the sums are f32: at most 2^-8 max|V| of error, inside bf16 q's SPEC 4 bound (1.6e-2). */
#define BF16_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni,avx512bf16")))

/* BODY(NR) for nr (1-8) query rows, NR a compile-time constant (the row loops unroll into registers) */
#define BF16_FOR_ROWS(nr, BODY)                                                                                \
    switch (nr) {                                                                                              \
    case 1: BODY(1) break;                                                                                     \
    case 2: BODY(2) break;                                                                                     \
    case 3: BODY(3) break;                                                                                     \
    case 4: BODY(4) break;                                                                                     \
    case 5: BODY(5) break;                                                                                     \
    case 6: BODY(6) break;                                                                                     \
    case 7: BODY(7) break;                                                                                     \
    default: BODY(8) break;                                                                                    \
    }

/* n floats to bf16; returns max |src| (NaN ignored) */
static BF16_TARGET float bf16_pack_z(const float *src, int64_t n, uint16_t *dst) {
    int64_t i = 0;
    __m512 vmax = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(src + i);
        vmax = _mm512_max_ps(_mm512_abs_ps(x), vmax);
        __m256bh h = _mm512_cvtneps_pbh(x);
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    float m = _mm512_reduce_max_ps(vmax);
    for (; i < n; i++) {
        dst[i] = qsdpa_f32_to_bf16(src[i]);
        if (fabsf(src[i]) > m) m = fabsf(src[i]);
    }
    return m;
}

/* scores[j][r] (key-major, nq a row) = sum_d qb[r][d] kb[j][d] over rows r0..r0+NR-1 (NR <= 8) and keys j, j + 1;
 * dim a multiple of 32. Used where q and K are exact in bf16 (cpu_driver.c), so each product is exact and the sums
 * are f32's, as on the f32 tiles */
INLINE BF16_TARGET void bf16_score_keys(const int NR, const int KEYS, const uint16_t *kb, int64_t j, int64_t dim,
                                        const uint16_t *qb, int nq, int r0, float *scores) {
    __m512 a[2][8];
    for (int u = 0; u < KEYS; u++)
        for (int r = 0; r < 8; r++) a[u][r] = _mm512_setzero_ps();
    for (int64_t e = 0; e < dim; e += 32) {
        __m512bh k[2];
        for (int u = 0; u < KEYS; u++) k[u] = (__m512bh)_mm512_loadu_si512((const void *)(kb + (j + u) * dim + e));
        for (int r = 0; r < NR; r++) {
            const __m512bh qv = (__m512bh)_mm512_loadu_si512((const void *)(qb + (int64_t)(r0 + r) * dim + e));
            for (int u = 0; u < KEYS; u++) a[u][r] = _mm512_dpbf16_ps(a[u][r], k[u], qv);
        }
    }
    for (int u = 0; u < KEYS; u++) {
        store_rows(NR > 4 ? 4 : NR, sum16x4(a[u]), scores + (j + u) * nq + r0);
        if (NR > 4) store_rows(NR - 4, sum16x4(a[u] + 4), scores + (j + u) * nq + r0 + 4);
    }
}

static BF16_TARGET void bf16_score_z(const uint16_t *kb, int64_t n, int64_t dim, const uint16_t *qb, int nq,
                                     float *scores) {
    for (int r0 = 0; r0 < nq; r0 += 8) {
        const int nr = nq - r0 < 8 ? nq - r0 : 8;
        int64_t j = 0;
#define BF16_SCORE_ROWS(NR)                                                                                    \
    for (; j + 2 <= n; j += 2) bf16_score_keys(NR, 2, kb, j, dim, qb, nq, r0, scores);                           \
    if (j < n) bf16_score_keys(NR, 1, kb, j, dim, qb, nq, r0, scores);
        BF16_FOR_ROWS(nr, BF16_SCORE_ROWS)
#undef BF16_SCORE_ROWS
    }
}


/* acc[r][d] += sum_j w[j][r] v[j][d] over rows r0..r0+NR-1, dims e..e+32 (VECS 2) or e..e+16: vp holds keys 2i
 * and 2i + 1 of V in the halves of each 32-bit lane, wp the same pairs of weights for each row */
INLINE BF16_TARGET void bf16_accum_rows(const int NR, const int VECS, const uint32_t *vp, const uint32_t *wp,
                                        int64_t pairs, int64_t dim, int64_t e, int nq, int r0, float *acc) {
    __m512 a[2][8];
    for (int h = 0; h < VECS; h++)
        for (int r = 0; r < NR; r++) a[h][r] = _mm512_loadu_ps(acc + (int64_t)(r0 + r) * dim + e + 16 * h);
    for (int64_t i = 0; i < pairs; i++) {
        __m512bh v[2];
        for (int h = 0; h < VECS; h++) v[h] = (__m512bh)_mm512_loadu_si512((const void *)(vp + i * dim + e + 16 * h));
        for (int r = 0; r < NR; r++) {
            const __m512bh w = (__m512bh)_mm512_set1_epi32((int)wp[i * nq + r0 + r]);
            for (int h = 0; h < VECS; h++) a[h][r] = _mm512_dpbf16_ps(a[h][r], v[h], w);
        }
    }
    for (int h = 0; h < VECS; h++)
        for (int r = 0; r < NR; r++) _mm512_storeu_ps(acc + (int64_t)(r0 + r) * dim + e + 16 * h, a[h][r]);
}

/* acc[r][d] += sum_j w[j][r] v[j][d]: v a float tile [n][dim] (dim a multiple of 16), w key-major [n][nq];
 * scratch: (n + 1) / 2 * (dim + nq) 32-bit words */
/* 16 values of V as bf16 in the low halves of 32-bit lanes: finite values past bf16's largest clamped to it (the
 * rounding would make them infinite, and a masked key's 0 x inf NaN), infinities and NaN kept; |x| folded into
 * *vmax (NaN ignored) */
INLINE BF16_TARGET __m512i bf16_lanes(const float *x, __m512 *vmax) {
    const __m512 v = _mm512_loadu_ps(x), a = _mm512_abs_ps(v);
    const __m512 top = _mm512_castsi512_ps(_mm512_set1_epi32(0x7F7F0000)); /* bf16's largest finite */
    const __mmask16 big = _mm512_cmp_ps_mask(a, top, _CMP_GT_OQ) &
                          _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u));
    const __m512 c = _mm512_mask_blend_ps(big, v, _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(top), sign)));
    *vmax = _mm512_max_ps(a, *vmax);
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(c));
}

/* false (nothing written to acc): the block's V is so small (max |v| below 2^-100, subnormal products within reach)
 * that bf16's flush of subnormal inputs and products could cost more than SPEC 4 allows; the caller takes f32 */
static BF16_TARGET bool bf16_accum_z(const float *v, int64_t n, int64_t dim, const float *w, int nq, float *acc,
                                     uint32_t *scratch) {
    const int64_t pairs = (n + 1) / 2;
    uint32_t *vp = scratch, *wp = scratch + pairs * dim;
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t i = 0; i < pairs; i++) {
        const float *v0 = v + 2 * i * dim, *v1 = 2 * i + 1 < n ? v0 + dim : NULL;
        for (int64_t d = 0; d < dim; d += 16) {
            const __m512i lo = bf16_lanes(v0 + d, &vmax);
            const __m512i hi = v1 ? bf16_lanes(v1 + d, &vmax) : _mm512_setzero_si512();
            _mm512_storeu_si512((void *)(vp + i * dim + d), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
        for (int r = 0; r < nq; r++)
            wp[i * nq + r] = qsdpa_f32_to_bf16(w[2 * i * nq + r]) | (2 * i + 1 < n ? (uint32_t)qsdpa_f32_to_bf16(w[(2 * i + 1) * nq + r]) << 16 : 0u);
    }
    if (!(_mm512_reduce_max_ps(vmax) >= 0x1p-100f)) return false;
    for (int r0 = 0; r0 < nq; r0 += 8) {
        const int nr = nq - r0 < 8 ? nq - r0 : 8;
        for (int64_t e = 0; e < dim; e += 32) {
            const int vecs = e + 32 <= dim ? 2 : 1;
#define BF16_ACCUM_ROWS(NR)                                                                                    \
    if (vecs == 2) bf16_accum_rows(NR, 2, vp, wp, pairs, dim, e, nq, r0, acc);                                   \
    else bf16_accum_rows(NR, 1, vp, wp, pairs, dim, e, nq, r0, acc);
            BF16_FOR_ROWS(nr, BF16_ACCUM_ROWS)
#undef BF16_ACCUM_ROWS
        }
    }
    return true;
}
#endif

#ifdef QSDPA_ISA_VNNI
/* The AVX-512 tier (src/cpu/vnni/isa_vnni.c builds this file again): rows of their own,
 * chosen where the CPU has AVX512 F/BW/VL/VNNI. */
static const cpu_isa isa_vnni = {"vnni", ops_for_avx2, qsdpa_cpu_avx2_row_max, qsdpa_cpu_avx512_exp_sub,
                                 f16_to_f32_avx2, f32_to_f16_avx2, bf16_accum_z, bf16_pack_z, bf16_score_z, NULL, 16};

qsdpa_status qsdpa_cpu_vnni_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_vnni_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_vnni_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &isa_vnni, false);
}
qsdpa_status qsdpa_cpu_vnni_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &isa_vnni, true);
}
#else
/* code_rows_max 8: at 16 rows (Lq 4, GQA 4) float tiles beat four 4-row passes over the codes by 11-33% on a
 * Zen 3 VM (bench/NOTES.md session 41); at 8 rows neither wins clearly */
const cpu_isa qsdpa_cpu_isa_avx2 = {"avx2", ops_for_avx2, qsdpa_cpu_avx2_row_max, qsdpa_cpu_avx2_exp_sub,
                                    f16_to_f32_avx2, f32_to_f16_avx2, NULL, NULL, NULL, NULL, 8};

qsdpa_status qsdpa_cpu_avx2_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_avx2_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_avx2_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &qsdpa_cpu_isa_avx2, false);
}
qsdpa_status qsdpa_cpu_avx2_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &qsdpa_cpu_isa_avx2, true);
}
#endif
