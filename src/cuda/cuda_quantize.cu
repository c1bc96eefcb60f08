/* qsdpa_quantize_device / qsdpa_dequantize_device: the host qsdpa_quantize /
 * qsdpa_dequantize (src/format/quantize.c, bit-exact with MLX 0.32.4 on CPU)
 * on device rows, one thread per group. Every rounding of the host code is
 * reproduced: IEEE division, no fused multiply-add (explicit __fmul_rn /
 * __fadd_rn), dtype round trips where MLX works in the input's dtype.
 * Appending to a cache on the GPU is a quantize into the cache's rows at
 * position L (codes + L * row_words, scales + L * groups, ...). */
#include <math.h>

#include "cuda/cuda_format.cuh"

namespace {

struct quant_params {
    int mode, bits, group, plain_dtype;
    float global_scale;
    int64_t rows, dim, words, groups;
    const void *x;       /* [rows, dim] of x_dtype (quantize input / dequantize output) */
    int x_dtype;
    uint32_t *codes;     /* [rows, words] */
    void *scales;        /* [rows, groups] */
    void *biases;        /* [rows, groups] or NULL */
    int scale_dtype;
};

__device__ __forceinline__ float round_to(int dtype, float v) {
    if (dtype == QSDPA_DTYPE_F16) return __half2float(__float2half_rn(v));
    if (dtype == QSDPA_DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    return v;
}

__device__ const float fp4_table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                        -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* argmin over the table of |x - entry| rounded to arith, first minimum wins */
__device__ unsigned fp4_encode(float x, int arith) {
    float best = fabsf(round_to(arith, __fsub_rn(x, fp4_table[0])));
    unsigned code = 0;
    for (unsigned c = 1; c < 16; c++) {
        float d = fabsf(round_to(arith, __fsub_rn(x, fp4_table[c])));
        if (d < best) { best = d; code = c; }
    }
    return code;
}

/* MLX's ToFP8 (see src/format/fp_codecs.c) */
__device__ unsigned fp8_encode(float x) {
    uint32_t f = (uint32_t)__float_as_int(x);
    unsigned sign = (f >> 24) & 0x80u;
    f &= 0x7fffffffu;
    if (!(__int_as_float((int)f) < 448.0f)) return sign | 0x7Eu;
    if (f < (121u << 23)) {
        const uint32_t denorm = 141u << 23;
        float s = __fadd_rn(__int_as_float((int)f), __int_as_float((int)denorm));
        return (sign | (((uint32_t)__float_as_int(s) - denorm) & 0xFFu)) & 0xFFu;
    }
    uint32_t mant_odd = (f >> 20) & 1u;
    f += (uint32_t)(7 - 127) * (1u << 23) + 0x7FFFFu + mant_odd;
    return (sign | ((f >> 20) & 0xFFu)) & 0xFFu;
}

/* Packs codes of one group (the group starts on a word boundary, since
 * group * bits is a multiple of 32 for every format). */
struct bit_writer {
    uint32_t *out;
    uint64_t acc;
    int filled;
    __device__ void put(unsigned code, int bits) {
        acc |= (uint64_t)code << filled;
        filled += bits;
        if (filled >= 32) {
            *out++ = (uint32_t)acc;
            acc >>= 32;
            filled -= 32;
        }
    }
};

__global__ void quantize_groups(const quant_params p) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.rows * p.groups) return;
    int64_t r = t / p.groups, g = t % p.groups;
    int n = p.group;
    int64_t base = r * p.dim + g * n;
    bit_writer w = {p.codes + r * p.words + g * n * p.bits / 32, 0, 0};
    if (p.mode == QSDPA_MODE_AFFINE) {
        float n_bins = (float)((1 << p.bits) - 1), w_min = INFINITY, w_max = -INFINITY;
        for (int j = 0; j < n; j++) {
            float v = qd_load_float(p.x, p.x_dtype, base + j);
            w_max = v > w_max ? v : w_max;
            w_min = v < w_min ? v : w_min;
        }
        bool neg = fabsf(w_min) > fabsf(w_max);
        float scale = __fdiv_rn(__fsub_rn(w_max, w_min), n_bins);
        scale = scale > 1e-7f ? scale : 1e-7f;
        scale = neg ? scale : -scale;
        float edge = neg ? w_min : w_max;
        float q0 = rintf(__fdiv_rn(edge, scale));
        float bias = 0.0f;
        if (q0 != 0.0f) { scale = __fdiv_rn(edge, q0); bias = edge; }
        for (int j = 0; j < n; j++) {
            float q = rintf(__fdiv_rn(__fsub_rn(qd_load_float(p.x, p.x_dtype, base + j), bias), scale));
            q = q > 0.0f ? q : 0.0f;
            q = q < n_bins ? q : n_bins;
            w.put((unsigned)q, p.bits);
        }
        qd_store_float(p.scales, p.scale_dtype, t, scale);
        qd_store_float(p.biases, p.scale_dtype, t, bias);
        return;
    }
    float m = 0.0f;
    for (int j = 0; j < n; j++) {
        float a = fabsf(qd_load_float(p.x, p.x_dtype, base + j));
        m = a > m ? a : m;
    }
    if (p.mode == QSDPA_MODE_NVFP4) {
        float s = round_to(p.x_dtype, __fdiv_rn(m, 6.0f));
        float enc = p.global_scale != 0.0f ? __fdiv_rn(2688.0f, p.global_scale) : 1.0f;
        unsigned byte = fp8_encode(__fmul_rn(s, enc));
        float dec = qd_fp8(byte);
        for (int j = 0; j < n; j++) {
            float x = __fmul_rn(round_to(p.x_dtype, __fdiv_rn(qd_load_float(p.x, p.x_dtype, base + j), dec)), enc);
            w.put(fp4_encode(x, QSDPA_DTYPE_F32), 4);
        }
        ((uint8_t *)p.scales)[t] = (uint8_t)byte;
        return;
    }
    /* mxfp4 / mxfp8: s = max/M in the input dtype, e = exact ceil(log2 s) */
    float s = round_to(p.x_dtype, __fdiv_rn(m, p.bits == 4 ? 6.0f : 448.0f));
    int e = 0;
    if (isinf(s) || isnan(s)) {
        e = 128;
    } else if (s != 0.0f) {
        int ex;
        float frac = frexpf(s, &ex);
        e = frac == 0.5f ? ex - 1 : ex;
    }
    float pw = ldexpf(1.0f, e);
    for (int j = 0; j < n; j++) {
        float x = round_to(p.x_dtype, __fdiv_rn(qd_load_float(p.x, p.x_dtype, base + j), pw));
        if (p.bits == 4) w.put(fp4_encode(x, p.x_dtype), 4);
        else w.put(fp8_encode(x), 8);
    }
    ((uint8_t *)p.scales)[t] = (uint8_t)((unsigned)(e + 127) & 255u);
}

__global__ void quantize_plain(const quant_params p) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.rows * p.dim) return;
    int64_t r = t / p.dim, j = t % p.dim;
    qd_store_float(p.codes + r * p.words, p.plain_dtype, j, qd_load_float(p.x, p.x_dtype, t));
}

/* One thread per element, MLX's dequantize roundings (src/format/quantize.c). */
__global__ void dequantize_elements(const quant_params p) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.rows * p.dim) return;
    int64_t r = t / p.dim;
    int j = (int)(t % p.dim);
    const uint32_t *row = p.codes + r * p.words;
    void *out = (void *)p.x;
    if (p.mode == QSDPA_MODE_PLAIN) {
        qd_store_float(out, p.x_dtype, t, qd_load_float(row, p.plain_dtype, j));
        return;
    }
    int64_t si = r * p.groups + j / p.group;
    float v;
    if (p.mode == QSDPA_MODE_AFFINE) {
        float scale = qd_load_float(p.scales, p.scale_dtype, si), bias = qd_load_float(p.biases, p.scale_dtype, si);
        int T = p.scale_dtype;
        v = round_to(T, __fadd_rn(round_to(T, __fmul_rn((float)qd_code(row, p.bits, j), scale)), bias));
    } else {
        unsigned sb = ((const uint8_t *)p.scales)[si];
        float e = p.mode == QSDPA_MODE_MXFP8 ? qd_fp8(qd_code(row, 8, j)) : qd_fp4(qd_code(row, 4, j));
        if (p.mode == QSDPA_MODE_NVFP4 && p.global_scale != 0.0f) {
            float scale = __fmul_rn(qd_fp8(sb), __fdiv_rn(p.global_scale, 2688.0f));
            v = __fmul_rn(e, scale);
        } else {
            float scale = p.mode == QSDPA_MODE_NVFP4 ? qd_fp8(sb) : qd_e8m0(sb);
            scale = round_to(p.x_dtype, scale);
            v = round_to(p.x_dtype, __fmul_rn(e, scale));
        }
    }
    qd_store_float(out, p.x_dtype, t, v);
}

bool float_dtype(qsdpa_dtype d) {
    return d == QSDPA_DTYPE_F32 || d == QSDPA_DTYPE_F16 || d == QSDPA_DTYPE_BF16;
}

/* The host functions' checks, plus a CUDA context and device pointers. */
qsdpa_status check(const char *fn, qsdpa_context *ctx, const qsdpa_format *format, int64_t rows, int64_t dim,
                   const void *codes, const void *scales, const void *biases, qsdpa_dtype scale_dtype,
                   const void *values, const char *values_name, qsdpa_dtype values_dtype, quant_params *p) {
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is NULL");
    if (ctx->options.backend != QSDPA_BACKEND_CUDA || !ctx->cuda)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is a CPU context; a CUDA context is required");
    if (!format) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "format is NULL");
    qsdpa_status st = qsdpa_format_check(format);
    if (st != QSDPA_OK) return st;
    if (rows <= 0) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "rows = %lld (must be > 0)", (long long)rows);
    int64_t words;
    if ((st = qsdpa_format_row_words(format, dim, &words)) != QSDPA_OK) return st;
    if (!values) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s is NULL", values_name);
    if (!float_dtype(values_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s dtype = %s (must be f32, f16 or bf16)", values_name,
                          qsdpa_dtype_name(values_dtype));
    if (!codes) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "codes is NULL");
    bool plain = format->mode == QSDPA_MODE_PLAIN, affine = format->mode == QSDPA_MODE_AFFINE;
    if (plain && (scales || biases))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scales/biases given for a plain format (must be NULL)");
    if (!plain && !scales) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scales is NULL");
    if (affine && !biases) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "biases is NULL (affine needs biases)");
    if (!affine && biases) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "biases given for a non-affine mode");
    if (affine && !float_dtype(scale_dtype))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scale_dtype = %s for affine (must be f32, f16 or bf16)",
                          qsdpa_dtype_name(scale_dtype));
    if (!plain && !affine && scale_dtype != QSDPA_DTYPE_U8)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "scale_dtype = %s for an fp mode (must be u8)",
                          qsdpa_dtype_name(scale_dtype));
    size_t bytes;
    if (!qsdpa_mul_size((size_t)rows, (size_t)dim, &bytes) || !qsdpa_mul_size(bytes, 4, &bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "rows = %lld x dim = %lld overflows size_t", (long long)rows,
                          (long long)dim);
    if ((st = qsdpa_cuda_enter(ctx, fn)) != QSDPA_OK) return st;
    if ((st = qsdpa_cuda_check_device_ptr(ctx, values, fn, values_name)) != QSDPA_OK) return st;
    if ((st = qsdpa_cuda_check_device_ptr(ctx, codes, fn, "codes")) != QSDPA_OK) return st;
    if ((st = qsdpa_cuda_check_device_ptr(ctx, scales, fn, "scales")) != QSDPA_OK) return st;
    if ((st = qsdpa_cuda_check_device_ptr(ctx, biases, fn, "biases")) != QSDPA_OK) return st;
    p->mode = format->mode; p->bits = format->bits; p->group = format->group;
    p->plain_dtype = format->plain_dtype; p->global_scale = format->global_scale;
    p->rows = rows; p->dim = dim; p->words = words;
    p->groups = plain ? 0 : dim / format->group;
    p->x = values; p->x_dtype = values_dtype;
    p->codes = (uint32_t *)codes; p->scales = (void *)scales; p->biases = (void *)biases;
    p->scale_dtype = scale_dtype;
    return QSDPA_OK;
}

unsigned blocks_for(int64_t n) { return (unsigned)((n + 255) / 256); }

} // namespace

extern "C" qsdpa_status qsdpa_quantize_device(qsdpa_context *ctx, const qsdpa_format *format, const void *x,
                                              qsdpa_dtype x_dtype, int64_t rows, int64_t dim, uint32_t *codes,
                                              void *scales, void *biases, qsdpa_dtype scale_dtype) {
    qsdpa_clear_error();
    quant_params p;
    qsdpa_status st = check(__func__, ctx, format, rows, dim, codes, scales, biases, scale_dtype, x, "x", x_dtype, &p);
    if (st != QSDPA_OK) return st;
    cudaStream_t stream = qsdpa_cuda_stream(ctx);
    if (format->mode == QSDPA_MODE_PLAIN) quantize_plain<<<blocks_for(rows * dim), 256, 0, stream>>>(p);
    else quantize_groups<<<blocks_for(rows * p.groups), 256, 0, stream>>>(p);
    return qsdpa_cuda_launch_status(__func__, "quantize");
}

extern "C" qsdpa_status qsdpa_dequantize_device(qsdpa_context *ctx, const qsdpa_format *format,
                                                const uint32_t *codes, const void *scales, const void *biases,
                                                qsdpa_dtype scale_dtype, int64_t rows, int64_t dim, void *out,
                                                qsdpa_dtype out_dtype) {
    qsdpa_clear_error();
    quant_params p;
    qsdpa_status st =
        check(__func__, ctx, format, rows, dim, codes, scales, biases, scale_dtype, out, "out", out_dtype, &p);
    if (st != QSDPA_OK) return st;
    dequantize_elements<<<blocks_for(rows * dim), 256, 0, qsdpa_cuda_stream(ctx)>>>(p);
    return qsdpa_cuda_launch_status(__func__, "dequantize");
}
