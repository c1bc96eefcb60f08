/* Per-format decoding on the device, one element at a time (the generic
 * kernel and the device dequantize), plus the scalar FP4/FP8/E8M0 codecs.
 * Arithmetic follows SPEC §2 exactly (f32, unfused multiply then add), so a
 * device dequantize equals the host one bit for bit. */
#ifndef QSDPA_CUDA_FORMAT_CUH
#define QSDPA_CUDA_FORMAT_CUH

#include "cuda/cuda_internal.cuh"

/* A K or V tensor as the device kernels see it: base pointers and element
 * strides of (b, h, l); the last dim is contiguous. */
typedef struct qd_qtensor {
    const uint32_t *codes;  /* [B,H,L,row_words] u32 (PLAIN: [B,H,L,dim] plain dtype) */
    const void *scales;     /* [B,H,L,dim/group] or NULL */
    const void *biases;     /* [B,H,L,dim/group] or NULL */
    int64_t cs[3];          /* BYTE strides of codes over (b, h, l) (PLAIN rows are 2- or 4-byte elements) */
    int64_t ss[3], bs[3];   /* element strides of scales, biases over (b, h, l) */
    int mode, bits, group;
    int scale_dtype;        /* F32/F16/BF16 for affine, U8 for fp modes */
    int plain_dtype;        /* PLAIN rows */
    float global_scale;     /* NVFP4 G, 0 = none */
    float nv_factor;        /* NVFP4: G / 2688 rounded once (f32), 1 without G; what multiplies e4m3(s) */
    int dim;
} qd_qtensor;

static inline qd_qtensor qd_qtensor_make(const qsdpa_qtensor *t) {
    qd_qtensor d;
    d.codes = (const uint32_t *)t->codes.data;
    d.scales = t->scales.data;
    d.biases = t->biases.data;
    for (int i = 0; i < 3; i++) {
        d.cs[i] = t->codes.stride[i] * (int64_t)qsdpa_dtype_size(t->codes.dtype);
        d.ss[i] = t->scales.data ? t->scales.stride[i] : 0;
        d.bs[i] = t->biases.data ? t->biases.stride[i] : 0;
    }
    d.mode = (int)t->format.mode;
    d.bits = t->format.bits;
    d.group = t->format.group;
    d.scale_dtype = (int)t->scales.dtype;
    d.plain_dtype = (int)t->format.plain_dtype;
    d.global_scale = t->format.global_scale;
    d.nv_factor = t->format.global_scale != 0.0f ? t->format.global_scale / 2688.0f : 1.0f;
    d.dim = (int)t->dim;
    return d;
}

/* The tensors of a validated problem as every attention kernel reads them.
 * The kernels' parameter structs derive from it and add their own sizes. */
struct qd_io {
    const void *q;       /* [B,Hq,Lq,Dk] */
    int q_dtype;
    int64_t qs[4];
    qd_qtensor k, v;
    int mask_kind;
    const void *mask;    /* broadcast element strides ms */
    int mask_dtype;
    int64_t ms[4];
    const void *sinks;   /* [Hq] or NULL */
    int sinks_dtype;
    void *out;           /* [B,Hq,Lq,Dv] */
    int out_dtype;
    int64_t os[4];
    float *lse;          /* partial mode: [B,Hq,Lq], else NULL */
    int64_t ls[3];
};

static inline void qd_io_fill(qd_io *io, const qsdpa_problem *pr) {
    io->q = pr->q;
    io->q_dtype = pr->q_dtype;
    for (int d = 0; d < 4; d++) {
        io->qs[d] = pr->q_stride[d];
        io->ms[d] = pr->mask_stride[d];
        io->os[d] = pr->out_stride[d];
    }
    for (int d = 0; d < 3; d++) io->ls[d] = pr->lse_stride[d];
    io->k = qd_qtensor_make(&pr->k);
    io->v = qd_qtensor_make(&pr->v);
    io->mask_kind = pr->mask_kind;
    io->mask = pr->mask;
    io->mask_dtype = pr->mask_dtype;
    io->sinks = pr->sinks;
    io->sinks_dtype = pr->sinks_dtype;
    io->out = pr->out;
    io->out_dtype = pr->out_dtype;
    io->lse = pr->lse;
}

#ifdef __CUDACC__
/* FP4 E2M1 code (4 bits) -> value: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives,
 * built from the bits (a table here is a local-memory array: run 79, eight lookups per
 * lane made the generic kernel's mxfp4 decode 1.8x slower than value by value) */
__device__ __forceinline__ float qd_fp4(unsigned c) {
    const unsigned e = (c >> 1) & 3u, m = c & 1u;
    const float v = e ? __int_as_float((int)(((e + 126u) << 23) | (m << 22))) : (m ? 0.5f : 0.0f);
    return (c & 8u) ? -v : v;
}

/* FP8 E4M3 byte -> value (bias 7, subnormals; magnitude 0x7F is NaN as in
 * src/format/fp_codecs.c; the quantizer never produces it). Exact: the byte's exponent
 * and mantissa bits placed at f16 bits 7..13 (sign at 15) read as the value times 2^-8,
 * subnormals included (f16's bias is 8 more than E4M3's), then scaled back; a conversion
 * and a multiply instead of ldexpf's branches (the generic decode kernel's inner loop). */
__device__ __forceinline__ float qd_fp8(unsigned b) {
    if ((b & 0x7Fu) == 0x7Fu) return __int_as_float(0x7fc00000);
    const float e = __half2float(__ushort_as_half((unsigned short)(((b & 0x7Fu) << 7) | ((b & 0x80u) << 8))));
    return e * 256.0f;
}

/* The two bf16 values of a word as an f16 pair, rounded to nearest (values past f16's range become inf) */
__device__ __forceinline__ __half2 qd_bf16x2_to_half2(uint32_t w) {
    return __floats2half2_rn(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}

/* E8M0 scale byte -> 2^(s-127) (s = 0 gives 2^-127, a float subnormal; 255 gives inf). */
__device__ __forceinline__ float qd_e8m0(unsigned s) {
    return s == 0 ? __int_as_float(0x00400000) : __int_as_float((int)(s << 23));
}

/* Code of element d of one packed row: a little-endian bit stream. */
__device__ __forceinline__ unsigned qd_code(const uint32_t *row, int bits, int d) {
    int bit = d * bits, w = bit >> 5, off = bit & 31;
    uint64_t v = row[w];
    if (off + bits > 32) v |= (uint64_t)row[w + 1] << 32;
    return (unsigned)(v >> off) & ((1u << bits) - 1u);
}

/* Element d of row (b, h, l) of t, dequantized per SPEC §2 in f32. */
__device__ __forceinline__ float qd_element(const qd_qtensor &t, int64_t b, int64_t h, int64_t l, int d) {
    const uint32_t *row = (const uint32_t *)((const char *)t.codes + b * t.cs[0] + h * t.cs[1] + l * t.cs[2]);
    if (t.mode == QSDPA_MODE_PLAIN) return qd_load_float(row, t.plain_dtype, d);
    int gi = d / t.group;
    if (t.mode == QSDPA_MODE_AFFINE) {
        float s = qd_load_float(t.scales, t.scale_dtype, b * t.ss[0] + h * t.ss[1] + l * t.ss[2] + gi);
        float z = qd_load_float(t.biases, t.scale_dtype, b * t.bs[0] + h * t.bs[1] + l * t.bs[2] + gi);
        return __fadd_rn(__fmul_rn(s, (float)qd_code(row, t.bits, d)), z);
    }
    unsigned sb = ((const uint8_t *)t.scales)[b * t.ss[0] + h * t.ss[1] + l * t.ss[2] + gi];
    if (t.mode == QSDPA_MODE_MXFP4) return __fmul_rn(qd_fp4(qd_code(row, 4, d)), qd_e8m0(sb));
    if (t.mode == QSDPA_MODE_MXFP8) return __fmul_rn(qd_fp8(qd_code(row, 8, d)), qd_e8m0(sb));
    /* NVFP4: scale = e4m3(s) * (G / 2688) first, as MLX (src/format/unpack.c) */
    float s = qd_fp8(sb);
    if (t.global_scale != 0.0f) s = __fmul_rn(s, __fdiv_rn(t.global_scale, 2688.0f));
    return __fmul_rn(qd_fp4(qd_code(row, 4, d)), s);
}

/* Affine codes of B = 3, 5 or 6 bits pack whole into units of lcm(B, 32) bits: 32 codes in
 * 3 or 5 words, or 16 codes in 3 words. */
template <int B>
struct qd_odd_unit {
    static constexpr int WORDS = B == 6 ? 3 : B;
    static constexpr int CODES = WORDS * 32 / B;
};

/* Codes per word (per unit of words for affine 3/5/6 bits) of t. */
__host__ __device__ inline int qd_codes_per_item(const qd_qtensor *t) {
    if (t->mode == QSDPA_MODE_PLAIN) return t->plain_dtype == QSDPA_DTYPE_F32 ? 1 : 2;
    if (32 % t->bits == 0) return 32 / t->bits;
    return t->bits == 6 ? 16 : 32;
}

/* Whether rows of t decode a 32-bit word (or, at 3/5/6 bits, a unit of words) per lane
 * (qd_rows_decode): words or units that never straddle a group, rows of whole words
 * at 4-byte alignment. Odd-width 16-bit rows go value by value. */
static inline int qd_word_path(const qd_qtensor *t) {
    const int per = qd_codes_per_item(t);
    if (t->mode != QSDPA_MODE_PLAIN && t->group % per != 0) return 0;
    if (t->dim % per != 0 || (uintptr_t)t->codes % 4 != 0) return 0;
    for (int i = 0; i < 3; i++)
        if (t->cs[i] % 4 != 0) return 0;
    return 1;
}

/* The scale of group gi of row srow: affine's as stored, E8M0, or NVFP4's e4m3 times
 * (G / 2688) (rounded once on the host, as MLX, src/format/unpack.c). */
__device__ __forceinline__ float qd_group_scale(const qd_qtensor &t, int64_t srow, int gi) {
    if (t.mode == QSDPA_MODE_AFFINE) return qd_load_float(t.scales, t.scale_dtype, srow + gi);
    const unsigned sb = ((const uint8_t *)t.scales)[srow + gi];
    if (t.mode == QSDPA_MODE_NVFP4) {
        const float s = qd_fp8(sb);
        return t.global_scale != 0.0f ? __fmul_rn(s, t.nv_factor) : s;
    }
    return qd_e8m0(sb);
}

/* Value c of a word of codes of mode MODE with its group's scale s (and bias z), per
 * SPEC §2 exactly as qd_element (FP4 modes: s is the group's whole scale). An affine code
 * becomes a float as 2^23 + c minus 2^23: the same value as a conversion (codes are below
 * 2^23), without the quarter-rate I2F. */
template <int MODE>
__device__ __forceinline__ float qd_word_value(uint32_t word, int bits, int c, float s, float z) {
    if constexpr (MODE == QSDPA_MODE_AFFINE)
        return __fadd_rn(__fmul_rn(s, __uint_as_float(((word >> (c * bits)) & ((1u << bits) - 1u)) | 0x4B000000u) -
                                          8388608.0f),
                         z);
    else if constexpr (MODE == QSDPA_MODE_MXFP8)
        return __fmul_rn(qd_fp8((word >> (8 * c)) & 0xFFu), s);
    else
        return __fmul_rn(qd_fp4((word >> (4 * c)) & 0xFu), s);
}

/* qd_rows_decode's word path for one mode (the mode's switch out of the value loop). The
 * warp's (row, word) items are dealt to lanes row-major, KPW per lane per pass, so rows
 * shorter than 32 words still keep every lane busy (v27: a D 96 4-bit row is 12 words). */
template <int MODE, int KPW>
__device__ __forceinline__ void qd_rows_decode_words(const qd_qtensor &t, int64_t b, int64_t h, int64_t l0, int first,
                                                     int n, float *dst, int pitch, int lane) {
    const bool f32 = t.plain_dtype == QSDPA_DTYPE_F32, f16 = t.plain_dtype == QSDPA_DTYPE_F16;
    const int per = MODE == QSDPA_MODE_PLAIN ? (f32 ? 1 : 2) : 32 / t.bits, nwords = t.dim / per;
    const int rows = min(KPW, (n - first + 3) / 4), items = rows * nwords; /* the warp's rows first + 4j < n */
    const char *base = (const char *)t.codes + b * t.cs[0] + h * t.cs[1];
    const int64_t sbase = b * t.ss[0] + h * t.ss[1], zbase = b * t.bs[0] + h * t.bs[1];
    for (int i0 = 0; i0 < items; i0 += 32 * KPW) {
        uint32_t word[KPW];
        float s[KPW], z[KPW];
        int at[KPW]; /* the item's first value in dst, -1: none */
#pragma unroll
        for (int k = 0; k < KPW; k++) { /* every item's loads first */
            const int idx = i0 + lane + 32 * k, j = idx / nwords, w = idx - j * nwords;
            const int64_t l = l0 + first + 4 * j;
            word[k] = 0;
            s[k] = 1.0f;
            z[k] = 0.0f;
            at[k] = -1;
            if (idx >= items) continue;
            const int d0 = w * per, gi = MODE == QSDPA_MODE_PLAIN ? 0 : d0 / t.group;
            at[k] = (first + 4 * j) * pitch + d0;
            word[k] = ((const uint32_t *)(base + l * t.cs[2]))[w];
            if (MODE != QSDPA_MODE_PLAIN) s[k] = qd_group_scale(t, sbase + l * t.ss[2], gi);
            if (MODE == QSDPA_MODE_AFFINE) z[k] = qd_load_float(t.biases, t.scale_dtype, zbase + l * t.bs[2] + gi);
        }
#pragma unroll
        for (int k = 0; k < KPW; k++) {
            if (at[k] < 0) continue;
            float *row = dst + at[k];
            if constexpr (MODE == QSDPA_MODE_PLAIN) {
                if (f32) row[0] = __uint_as_float(word[k]);
                else if (f16) *(float2 *)row = __half22float2(*(const __half2 *)&word[k]);
                else *(float2 *)row = make_float2(__uint_as_float(word[k] << 16), __uint_as_float(word[k] & 0xFFFF0000u));
            } else {
                for (int c = 0; c < per; c += 4) /* per is 4, 8, 16 or 32 */
                    *(float4 *)(row + c) = make_float4(qd_word_value<MODE>(word[k], t.bits, c, s[k], z[k]),
                                                       qd_word_value<MODE>(word[k], t.bits, c + 1, s[k], z[k]),
                                                       qd_word_value<MODE>(word[k], t.bits, c + 2, s[k], z[k]),
                                                       qd_word_value<MODE>(word[k], t.bits, c + 3, s[k], z[k]));
            }
        }
    }
}

/* Code c of a unit of B-bit codes held in words w (c a compile-time constant once unrolled). */
template <int B>
__device__ __forceinline__ unsigned qd_unit_code(const uint32_t *w, int c) {
    const int bit = c * B, i = bit >> 5, off = bit & 31;
    uint32_t v = w[i] >> off;
    if (off + B > 32) v |= w[i + 1] << (32 - off);
    return v & ((1u << B) - 1u);
}

/* Value c of such a unit with its group's scale s and bias z, qd_element's arithmetic: s * code, then + z. */
template <int B>
__device__ __forceinline__ float qd_unit_value(const uint32_t *w, int c, float s, float z) {
    return __fadd_rn(__fmul_rn(s, (float)qd_unit_code<B>(w, c)), z);
}

/* qd_rows_decode's path for affine codes of B = 3, 5 or 6 bits: (row, unit) items dealt to
 * lanes as the word path deals words, two items per lane per pass (a unit's 3 or 5 words
 * each; more in flight would raise the kernel's register count for every format). */
template <int B, int KPW>
__device__ __forceinline__ void qd_rows_decode_units(const qd_qtensor &t, int64_t b, int64_t h, int64_t l0, int first,
                                                     int n, float *dst, int pitch, int lane) {
    using U = qd_odd_unit<B>;
    constexpr int IPP = 2;
    const int nunits = t.dim / U::CODES;
    const int rows = min(KPW, (n - first + 3) / 4), items = rows * nunits;
    const char *base = (const char *)t.codes + b * t.cs[0] + h * t.cs[1];
    const int64_t sbase = b * t.ss[0] + h * t.ss[1], zbase = b * t.bs[0] + h * t.bs[1];
    for (int i0 = 0; i0 < items; i0 += 32 * IPP) {
        uint32_t w[IPP][U::WORDS];
        float s[IPP], z[IPP];
        int at[IPP];
#pragma unroll
        for (int k = 0; k < IPP; k++) { /* both items' loads first */
            const int idx = i0 + lane + 32 * k, j = idx / nunits, u = idx - j * nunits;
            s[k] = 1.0f;
            z[k] = 0.0f;
            at[k] = -1;
#pragma unroll
            for (int x = 0; x < U::WORDS; x++) w[k][x] = 0;
            if (idx >= items) continue;
            const int64_t l = l0 + first + 4 * j;
            const int d0 = u * U::CODES, gi = d0 / t.group;
            at[k] = (first + 4 * j) * pitch + d0;
            const uint32_t *src = (const uint32_t *)(base + l * t.cs[2]) + u * U::WORDS;
#pragma unroll
            for (int x = 0; x < U::WORDS; x++) w[k][x] = src[x];
            s[k] = qd_load_float(t.scales, t.scale_dtype, sbase + l * t.ss[2] + gi);
            z[k] = qd_load_float(t.biases, t.scale_dtype, zbase + l * t.bs[2] + gi);
        }
#pragma unroll
        for (int k = 0; k < IPP; k++) {
            if (at[k] < 0) continue;
            float *row = dst + at[k];
#pragma unroll
            for (int c = 0; c < U::CODES; c += 4)
                *(float4 *)(row + c) =
                    make_float4(qd_unit_value<B>(w[k], c, s[k], z[k]), qd_unit_value<B>(w[k], c + 1, s[k], z[k]),
                                qd_unit_value<B>(w[k], c + 2, s[k], z[k]), qd_unit_value<B>(w[k], c + 3, s[k], z[k]));
        }
    }
}

/* Rows l0 + first + 4j (j < KPW, first + 4j < n) of t -> dst + (first + 4j) * pitch,
 * [0, dim), decoded by the 32 lanes of one warp, each value as qd_element gives it.
 * On the word path (`words`: qd_word_path) a lane decodes a 32-bit word of codes with
 * one scale (and bias) load, and every row's loads are issued before any row is
 * decoded, so KPW rows of loads are in flight per lane rather than one (v27: one row at
 * a time, the generic kernel's decode was latency-bound). Otherwise value by value. */
template <int KPW>
__device__ __forceinline__ void qd_rows_decode(const qd_qtensor &t, bool words, int64_t b, int64_t h, int64_t l0,
                                               int first, int n, float *dst, int pitch, int lane) {
    if (words) {
        switch (t.mode) {
        case QSDPA_MODE_PLAIN: qd_rows_decode_words<QSDPA_MODE_PLAIN, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
        case QSDPA_MODE_AFFINE:
            switch (t.bits) {
            case 3: qd_rows_decode_units<3, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
            case 5: qd_rows_decode_units<5, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
            case 6: qd_rows_decode_units<6, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
            default: qd_rows_decode_words<QSDPA_MODE_AFFINE, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
            }
        case QSDPA_MODE_MXFP8: qd_rows_decode_words<QSDPA_MODE_MXFP8, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
        default: qd_rows_decode_words<QSDPA_MODE_MXFP4, KPW>(t, b, h, l0, first, n, dst, pitch, lane); return;
        }
    }
    for (int d = lane; d < t.dim; d += 32) {
        float x[KPW];
#pragma unroll
        for (int j = 0; j < KPW; j++) x[j] = first + 4 * j < n ? qd_element(t, b, h, l0 + first + 4 * j, d) : 0.0f;
#pragma unroll
        for (int j = 0; j < KPW; j++)
            if (first + 4 * j < n) dst[(first + 4 * j) * pitch + d] = x[j];
    }
}
#endif

#endif
