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
/* FP4 E2M1 code (4 bits) -> value. */
__device__ __forceinline__ float qd_fp4(unsigned c) {
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float m = mag[c & 7u];
    return (c & 8u) ? -m : m;
}

/* FP8 E4M3 byte -> value (bias 7, subnormals; magnitude 0x7F is NaN as in
 * src/format/fp_codecs.c; the quantizer never produces it). */
__device__ __forceinline__ float qd_fp8(unsigned b) {
    unsigned e = (b >> 3) & 15u, m = b & 7u;
    if ((b & 0x7Fu) == 0x7Fu) return __int_as_float(0x7fc00000);
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8u + m), (int)e - 10);
    return (b & 0x80u) ? -v : v;
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

/* Row (b, h, l) of t -> dst[0, dim), decoded by the 32 lanes of a warp, each value as
 * qd_element gives it. Affine codes of 2, 4 or 8 bits and MXFP8 (words that never
 * straddle a group) go a word per lane: one code load and one scale (and bias) per 32
 * bits, where qd_element would redo the row address, the format switch and the scale
 * load for every value (bench/NOTES.md v26.2: affine 2.3-2.5x). The FP4 formats go
 * value by value: qd_fp4's table is a local-memory array, and eight lookups per lane
 * made mxfp4 slower (run 79; branch cuda-generic-fp4 builds it from the bits, untimed). */
__device__ __forceinline__ void qd_row_decode(const qd_qtensor &t, int64_t b, int64_t h, int64_t l, float *dst,
                                              int lane) {
    const int dim = t.dim;
    const bool packed = (t.mode == QSDPA_MODE_AFFINE && 32 % t.bits == 0) || t.mode == QSDPA_MODE_MXFP8;
    if (packed && t.group % (32 / t.bits) == 0 && dim % (32 / t.bits) == 0) {
        const uint32_t *row = (const uint32_t *)((const char *)t.codes + b * t.cs[0] + h * t.cs[1] + l * t.cs[2]);
        const int per = 32 / t.bits, words = dim / per;
        const unsigned mask = (1u << t.bits) - 1u;
        const int64_t srow = b * t.ss[0] + h * t.ss[1] + l * t.ss[2];
        for (int w = lane; w < words; w += 32) {
            const uint32_t word = row[w];
            const int d0 = w * per, gi = d0 / t.group;
            float s, z = 0.0f;
            if (t.mode == QSDPA_MODE_AFFINE) {
                s = qd_load_float(t.scales, t.scale_dtype, srow + gi);
                z = qd_load_float(t.biases, t.scale_dtype, b * t.bs[0] + h * t.bs[1] + l * t.bs[2] + gi);
            } else { /* MXFP8 */
                s = qd_e8m0(((const uint8_t *)t.scales)[srow + gi]);
            }
            for (int c = 0; c < per; c++) {
                const unsigned code = (word >> (c * t.bits)) & mask;
                dst[d0 + c] = t.mode == QSDPA_MODE_AFFINE ? __fadd_rn(__fmul_rn(s, (float)code), z)
                                                          : __fmul_rn(qd_fp8(code), s);
            }
        }
        return;
    }
    for (int d = lane; d < dim; d += 32) dst[d] = qd_element(t, b, h, l, d);
}
#endif

#endif
