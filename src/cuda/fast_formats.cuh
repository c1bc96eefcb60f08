/* Register dequantization for the tensor-core kernel: one small struct per
 * format (STYLE rule 8). Each turns packed 32-bit words into f16 pairs ready
 * for mma.sync m16n8k16:
 *   k_word(w, sb, out)   one K word -> U/2 half2 of the SAME key; pair p holds
 *                        in-word elements k_order(p, 0) and k_order(p, 1)
 *                        (the kernel permutes q the same way, so the dot
 *                        product is unchanged);
 *   v_words(a, b, s, z, out)  the same word of two keys -> U half2
 *                        {key a, key b} for in-word elements 0..U-1 (the
 *                        B operand of P.V pairs consecutive keys);
 *   scale_bias(...)      one group's stored scale (and bias) -> half2 {s, z};
 *   scale_bias_raw(...)  the same from raw bits already loaded (fp formats);
 *                        the float argument is qd_qtensor.nv_factor (NVFP4).
 * The affine dequantization s*c + z is one f16 fma of exact operands: the
 * same value as f32 arithmetic rounded once to f16.
 * Bit tricks: 0x6400 | c is the f16 1024 + c (c < 1024); an E2M1 code's three
 * magnitude bits at f16 bits 9..11 read as value * 2^-14; an E4M3 byte's seven
 * low bits at f16 bits 7..13 read as value * 2^-8 (subnormals included). */
#ifndef QSDPA_CUDA_FAST_FORMATS_CUH
#define QSDPA_CUDA_FAST_FORMATS_CUH

#include <type_traits>
#include <utility>

#include "cuda/cuda_format.cuh"

namespace qfast {

__device__ __forceinline__ half2 u2h(uint32_t x) { return *reinterpret_cast<half2 *>(&x); }
__device__ __forceinline__ uint32_t h2u(half2 x) { return *reinterpret_cast<uint32_t *>(&x); }

/* Two bf16 values of a word -> the f16 pair, rounded to nearest (the decode kernel's bf16 scales and
 * bf16 rows enter f16 arithmetic; beyond f16's range they become inf, as the tensor-core rows document) */
__device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t w) { return h2u(qd_bf16x2_to_half2(w)); }
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) { return __byte_perm(a, b, s); }

/* (x & mask) | bits in one LOP3 (the compiler emits two when both are immediates) */
__device__ __forceinline__ uint32_t and_or(uint32_t x, uint32_t mask, uint32_t bits) {
    uint32_t y;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(y) : "r"(x), "r"(mask), "r"(bits));
    return y;
}

/* 1024 + c in both halves minus 1024: exact small integers as f16 */
__device__ __forceinline__ half2 magic_int(uint32_t x, uint32_t mask) {
    return __hsub2(u2h(and_or(x, mask, 0x64006400u)), u2h(0x64006400u));
}

/* Four 4-bit codes per half-word, two half2 of exact integers per call:
 * {c0, c4} from bits 0-3 and {c1, c5} from bits 4-7 of each half (the second
 * lands as 1024 + 16c and is scaled back by 1/16 exactly), so a word needs
 * one shift for all four pairs. */
__device__ __forceinline__ void nibble_pairs(uint32_t x, half2 &p0, half2 &p1) {
    p0 = __hsub2(u2h(and_or(x, 0x000F000Fu, 0x64006400u)), u2h(0x64006400u));
    p1 = __hfma2(u2h(and_or(x, 0x00F000F0u, 0x64006400u)), u2h(0x2C002C00u) /* 1/16 */, u2h(0xD400D400u) /* -64 */);
}

/* Stored affine scale/bias of any float dtype -> f16. */
__device__ __forceinline__ half2 affine_sb(const void *s, const void *z, int dtype, int i) {
    return __floats2half2_rn(qd_load_float(s, dtype, i), qd_load_float(z, dtype, i));
}

template <int BITS, int GROUP>
struct affine_fmt {
    static constexpr int bits = BITS, group = GROUP, U = 32 / BITS;
    static constexpr bool has_scales = true, has_biases = true;
    static constexpr int mode = QSDPA_MODE_AFFINE;
    __device__ static int k_order(int p, int e) { return BITS == 4 ? p + 4 * e : p + 2 * e; }
    __device__ __forceinline__ static half2 scale_bias(const void *s, const void *z, int dtype, int i, float) {
        return affine_sb(s, z, dtype, i);
    }
    __device__ __forceinline__ static void k_word(uint32_t w, half2 sb, half2 *out) {
        half2 s2 = __low2half2(sb), z2 = __high2half2(sb);
        if (BITS == 4) {
            half2 c[4];
            nibble_pairs(w, c[0], c[1]);
            nibble_pairs(w >> 8, c[2], c[3]);
#pragma unroll
            for (int i = 0; i < 4; i++) out[i] = __hfma2(c[i], s2, z2);
        } else { /* bytes {0, 2} and {1, 3} next to the 0x64 exponent byte: one PRMT each */
            out[0] = __hfma2(__hsub2(u2h(prmt(w, 0x64646464u, 0x4240)), u2h(0x64006400u)), s2, z2);
            out[1] = __hfma2(__hsub2(u2h(prmt(w, 0x64646464u, 0x4341)), u2h(0x64006400u)), s2, z2);
        }
    }
    /* Folded K (fast_decode.cuh): the pairs of k_word as offset integers, scale and
     * bias left out: 1024 + c, or 64 + c for the odd nibbles (a second magic
     * exponent, one step of 1/16); k_word_raw(0) yields the offsets alone. */
    __device__ __forceinline__ static void k_word_raw(uint32_t w, uint32_t *out) {
        if (BITS == 4) {
            const uint32_t w8 = w >> 8;
            out[0] = and_or(w, 0x000F000Fu, 0x64006400u);
            out[1] = and_or(w, 0x00F000F0u, 0x54005400u);
            out[2] = and_or(w8, 0x000F000Fu, 0x64006400u);
            out[3] = and_or(w8, 0x00F000F0u, 0x54005400u);
        } else {
            out[0] = prmt(w, 0x64646464u, 0x4240);
            out[1] = prmt(w, 0x64646464u, 0x4341);
        }
    }
    __device__ __forceinline__ static void v_words(uint32_t a, uint32_t b, half2 s2, half2 z2, half2 *out) {
        if (BITS == 4) {
            uint32_t lo = prmt(a, b, 0x5410), hi = prmt(a, b, 0x7632);
            half2 c[8];
            nibble_pairs(lo, c[0], c[1]);
            nibble_pairs(lo >> 8, c[2], c[3]);
            nibble_pairs(hi, c[4], c[5]);
            nibble_pairs(hi >> 8, c[6], c[7]);
#pragma unroll
            for (int e = 0; e < 8; e++) out[e] = __hfma2(c[e], s2, z2);
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                out[e] = __hfma2(magic_int(prmt(a, b, (uint32_t)(e | ((4 + e) << 8))), 0x00FF00FFu), s2, z2);
        }
    }
};

/* E2M1 pair i of a word: nibbles i (low half) and i + 4 (high half) as f16 * 2^-14 */
template <int I>
__device__ __forceinline__ half2 fp4_pair(uint32_t w) {
    constexpr int sh_mag = 9 - 4 * I, sh_sign = 12 - 4 * I;
    uint32_t mag = sh_mag >= 0 ? (w << sh_mag) : (w >> -sh_mag);
    uint32_t sgn = w << sh_sign;
    return u2h((mag & 0x0E000E00u) | (sgn & 0x80008000u));
}

/* FP4 E2M1 codes with a per-group scale: MXFP4 (E8M0 per 32) or NVFP4 (E4M3 per 16). */
template <int MODE>
struct fp4_fmt {
    static constexpr int bits = 4, group = MODE == QSDPA_MODE_NVFP4 ? 16 : 32, U = 8;
    static constexpr bool has_scales = true, has_biases = false;
    static constexpr int mode = MODE;
    __device__ static int k_order(int p, int e) { return p + 4 * e; }
    /* NVFP4: the E4M3 byte's bits placed at f16 bits 7..15 read as e4m3 * 2^-8 exactly
     * (subnormals too), and factor * 256 is exact, so the product rounds once to the
     * reference's e4m3 * factor (cuda_format.cuh), with no ldexp, branch or division
     * per group; magnitude 0x7F is NaN as there */
    __device__ __forceinline__ static half2 scale_bias_raw(uint32_t b, uint32_t, int, float factor) {
        float v;
        if constexpr (MODE == QSDPA_MODE_NVFP4) {
            const float e = __half2float(__ushort_as_half((unsigned short)(((b & 0x7Fu) << 7) | ((b & 0x80u) << 8))));
            v = (b & 0x7Fu) == 0x7Fu ? __int_as_float(0x7fc00000) : e * (factor * 256.0f);
        } else {
            v = qd_e8m0(b);
        }
        return __floats2half2_rn(v, 0.0f);
    }
    __device__ __forceinline__ static half2 scale_bias(const void *s, const void *, int, int i, float factor) {
        return scale_bias_raw(((const uint8_t *)s)[i], 0, 0, factor);
    }
    __device__ __forceinline__ static void k_word(uint32_t w, half2 sb, half2 *out) {
        const half2 k14 = __float2half2_rn(16384.0f), s2 = __low2half2(sb);
        out[0] = __hmul2(__hmul2(fp4_pair<0>(w), k14), s2);
        out[1] = __hmul2(__hmul2(fp4_pair<1>(w), k14), s2);
        out[2] = __hmul2(__hmul2(fp4_pair<2>(w), k14), s2);
        out[3] = __hmul2(__hmul2(fp4_pair<3>(w), k14), s2);
    }
    __device__ __forceinline__ static void v_words(uint32_t a, uint32_t b, half2 s2, half2, half2 *out) {
        const half2 k14 = __float2half2_rn(16384.0f);
        uint32_t lo = prmt(a, b, 0x5410), hi = prmt(a, b, 0x7632);
        out[0] = __hmul2(__hmul2(fp4_pair<0>(lo), k14), s2);
        out[1] = __hmul2(__hmul2(fp4_pair<1>(lo), k14), s2);
        out[2] = __hmul2(__hmul2(fp4_pair<2>(lo), k14), s2);
        out[3] = __hmul2(__hmul2(fp4_pair<3>(lo), k14), s2);
        out[4] = __hmul2(__hmul2(fp4_pair<0>(hi), k14), s2);
        out[5] = __hmul2(__hmul2(fp4_pair<1>(hi), k14), s2);
        out[6] = __hmul2(__hmul2(fp4_pair<2>(hi), k14), s2);
        out[7] = __hmul2(__hmul2(fp4_pair<3>(hi), k14), s2);
    }
};

/* bytes 0 and 2 of t (E4M3) -> f16 * 2^-8 */
__device__ __forceinline__ half2 fp8_pair(uint32_t t) {
    return u2h(((t & 0x007F007Fu) << 7) | ((t & 0x00800080u) << 8));
}

/* MXFP8: E4M3 codes, E8M0 scale per 32. fp8_pair's 2^-8 is undone half on each side:
 * codes x 16 (exact, <= 28) times scale x 16, so no factor overflows f16 while the
 * value fits it (folding all 2^8 into the scale overflowed for groups with max > 57344,
 * scale 2^8 -> 2^16 = inf in f16), at the cost of groups below ~8e-7 (scale < 2^-28). */
struct mxfp8_fmt {
    static constexpr int bits = 8, group = 32, U = 4;
    static constexpr bool has_scales = true, has_biases = false;
    static constexpr int mode = QSDPA_MODE_MXFP8;
    __device__ static int k_order(int p, int e) { return p + 2 * e; }
    __device__ __forceinline__ static half2 scale_bias_raw(uint32_t b, uint32_t, int, float) {
        return __floats2half2_rn(qd_e8m0(b) * 16.0f, 0.0f);
    }
    __device__ __forceinline__ static half2 scale_bias(const void *s, const void *, int, int i, float) {
        return scale_bias_raw(((const uint8_t *)s)[i], 0, 0, 0.0f);
    }
    __device__ __forceinline__ static void k_word(uint32_t w, half2 sb, half2 *out) {
        const half2 s2 = __low2half2(sb), k16 = __float2half2_rn(16.0f);
        out[0] = __hmul2(__hmul2(fp8_pair(w), k16), s2);      /* elements 0, 2 */
        out[1] = __hmul2(__hmul2(fp8_pair(w >> 8), k16), s2); /* elements 1, 3 */
    }
    __device__ __forceinline__ static void v_words(uint32_t a, uint32_t b, half2 s2, half2, half2 *out) {
        const half2 k16 = __float2half2_rn(16.0f);
#pragma unroll
        for (int e = 0; e < 4; e++)
            out[e] = __hmul2(__hmul2(fp8_pair(prmt(a, b, (uint32_t)(e | ((4 + e) << 8)))), k16), s2);
    }
};

/* Unquantized f16 rows (the fp16-KV baseline of the same kernel). */
struct plain_f16_fmt {
    static constexpr int bits = 16, group = 1 << 20, U = 2;
    static constexpr bool has_scales = false, has_biases = false;
    static constexpr int mode = QSDPA_MODE_PLAIN;
    static constexpr int plain_dtype = QSDPA_DTYPE_F16; /* the rows' element type (the host checks the cache's) */
    __device__ static int k_order(int, int e) { return e; }
    __device__ __forceinline__ static half2 scale_bias(const void *, const void *, int, int, float) {
        return __floats2half2_rn(1.0f, 0.0f);
    }
    __device__ __forceinline__ static half2 scale_bias_raw(uint32_t, uint32_t, int, float) {
        return __floats2half2_rn(1.0f, 0.0f);
    }
    __device__ __forceinline__ static void k_word(uint32_t w, half2, half2 *out) { out[0] = u2h(w); }
    __device__ __forceinline__ static void v_words(uint32_t a, uint32_t b, half2, half2, half2 *out) {
        out[0] = u2h(prmt(a, b, 0x5410));
        out[1] = u2h(prmt(a, b, 0x7632));
    }
};

/* Unquantized bf16 rows, read by the decode kernel only (the f16 rows' run function sends their short
 * queries here): each word converted to an f16 pair as it leaves shared memory, so the mma sees f16 as
 * for f16 rows (values past f16's range overflow, as for bf16 q). The prefill kernel reads f16 tiles in
 * place and has no bf16 twin: long queries over bf16 rows are staged into f16 rows (cuda_staged.cu). */
struct plain_bf16_fmt : plain_f16_fmt {
    static constexpr int plain_dtype = QSDPA_DTYPE_BF16;
    __device__ __forceinline__ static void k_word(uint32_t w, half2 s, half2 *out) {
        plain_f16_fmt::k_word(bf16x2_to_f16x2(w), s, out);
    }
    __device__ __forceinline__ static void v_words(uint32_t a, uint32_t b, half2 s, half2 z, half2 *out) {
        plain_f16_fmt::v_words(bf16x2_to_f16x2(a), bf16x2_to_f16x2(b), s, z, out);
    }
};

/* The element type of F's rows where F is unquantized (f16 for every other format: not asked) */
template <class F>
__host__ __device__ constexpr int plain_dtype_of() {
    if constexpr (F::mode == QSDPA_MODE_PLAIN) return F::plain_dtype;
    else return QSDPA_DTYPE_F16;
}

/* Affine codes of SB bits (2, 3, 5 or 6) as MLX packs them (one little-endian bit stream per row), read
 * by the decode kernel of F, the affine format of the next width (4 or 8 bits) and the same group: a
 * stage holds the rows as stored, and each lane widens its runs to F's words as it reads them
 * (lds_codes, fast_decode.cuh), so all arithmetic is F's. Before, such a cache was copied widened on
 * every call (the repacked path, cuda_staged.cu). The decode kernel only: longer queries take
 * cuda.generic's paths (qsdpa_cuda_widened_run, fast_kernel.cuh). */
template <class F, int SB>
struct stored_as : F {
    static constexpr int stored_bits = SB;
};
/* Bits a code of F occupies in the cache: F's own, or stored_as's SB */
template <class F, class = void>
struct stored_bits_of {
    static constexpr int value = F::bits;
};
template <class F>
struct stored_bits_of<F, std::void_t<decltype(F::stored_bits)>> {
    static constexpr int value = F::stored_bits;
};

/* The format type of a kernel-table row's (mode, bits, group) columns, so the
 * instantiations are generated from the table (fast_instantiate.cuh). */
template <int MODE, int BITS, int GROUP> struct format_of;
template <int B, int G> struct format_of<QSDPA_MODE_AFFINE, B, G> {
    using type = std::conditional_t<B == 4 || B == 8, affine_fmt<B, G>, stored_as<affine_fmt<(B < 4 ? 4 : 8), G>, B>>;
};
template <int G> struct format_of<QSDPA_MODE_MXFP4, 4, G> { using type = fp4_fmt<QSDPA_MODE_MXFP4>; };
template <int G> struct format_of<QSDPA_MODE_NVFP4, 4, G> { using type = fp4_fmt<QSDPA_MODE_NVFP4>; };
template <int G> struct format_of<QSDPA_MODE_MXFP8, 8, G> { using type = mxfp8_fmt; };
template <int G> struct format_of<QSDPA_MODE_PLAIN, 16, G> { using type = plain_f16_fmt; };

/* Format F read from a cache of head dim S narrower than the kernel's (the decode kernel of a
 * wider row reading a D 96 cache in place, cuda.padded: kernels_cuda.def): every member is F's;
 * src_dim_of tells the kernel the stored width, so it zero-fills the missing code pieces, reads
 * scale rows of S / group groups and gives the missing groups zero scales. */
template <class F, int S>
struct pad_from : F {};
template <class F> struct src_dim_of { static constexpr int value = 0; };
template <class F, int S> struct src_dim_of<pad_from<F, S>> { static constexpr int value = S; };

} // namespace qfast

#endif
