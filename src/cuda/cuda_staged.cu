/* The staged path of the cuda.generic row: long queries over head dims or formats
 * that have no tensor-core row.
 *
 * It takes problems with more than 32 folded rows (ratio * Lq, where the fast rows
 * also leave their decode kernel), f16 or bf16 q, and Dk, Dv <= 128: head dims 96 or
 * 80, Dk != Dv, and formats without a fast row (affine 2/3/5/6 bits, ...). K and V are
 * dequantized once per call into f16 rows padded with zeros to W = 64 or 128 dims, q
 * is padded likewise, and the f16 tensor-core row of width W attends. The first Dv
 * dims of its output are then copied out. Zero dims add nothing to q.k, and V's pad
 * dims only make output dims that are dropped, so the result is the f16 row's on the
 * logical problem, at the tensor-core rows' precision (kernels_cuda.def).
 *
 * Why: the generic kernel runs its products on CUDA cores in f32. A 4K causal prefill
 * at D 96 took it 24.7 ms where the f16 row takes 0.55 ms at D 128 (run 88, H200).
 * Staging costs one write and one read of an f16 copy of the cache, which long queries
 * amortise. Decode stays on the generic kernel: staging a 32K cache per call costs
 * more than reading it quantized saves, and a copy as large as the f16 cache is what
 * a quantized cache exists to avoid.
 *
 * Left to the generic kernel: f32 q (SPEC §4's 2e-5 needs f32 products), f32 or bf16
 * plain rows (ranges beyond f16), staging above QSDPA_CUDA_STAGE_LIMIT_MB (default
 * 1024 MiB), and QSDPA_CUDA_STAGED=0 (the coverage test's switch). The f16 row's own
 * hand-offs (rows that see no key, partial mode with a bool mask) run the generic
 * kernel on the staged copy: correct, and slower than skipping the copy would be. */
#include <stdlib.h>

#include "cuda/cuda_format.cuh"

extern "C" qsdpa_status qsdpa_cuda_mma_f16_d64(qsdpa_context *ctx, const qsdpa_problem *p);
extern "C" qsdpa_status qsdpa_cuda_mma_f16_d128(qsdpa_context *ctx, const qsdpa_problem *p);

namespace {

constexpr int64_t STAGED_MIN_ROWS = 32; /* folded rows the fast rows' decode kernel takes */

int64_t env_int64(const char *name, int64_t unset) {
    const char *e = getenv(name);
    return e ? atoll(e) : unset;
}

int staged_width(const qsdpa_problem *p) { return p->dim_k <= 64 && p->dim_v <= 64 ? 64 : 128; }

/* Bytes of the stage: K and V (f16), q (its dtype, 2 bytes), out (its dtype), each 256-aligned. */
struct stage_layout {
    size_t k, v, q, out, total;
};

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

stage_layout layout_of(const qsdpa_problem *p) {
    const size_t w = (size_t)staged_width(p);
    stage_layout s;
    s.k = align256((size_t)(p->batch * p->heads_kv * p->len_k) * w * 2);
    s.v = s.k;
    s.q = align256((size_t)(p->batch * p->heads_q * p->len_q) * w * 2);
    s.out = align256((size_t)(p->batch * p->heads_q * p->len_q) * w * qsdpa_dtype_size(p->out_dtype));
    s.total = s.k + s.v + s.q + s.out;
    return s;
}

/* Rows [B, H, L] of t as f16 rows of w dims, zeros past t.dim. */
__global__ void stage_rows(const qd_qtensor t, int64_t heads, int64_t len, int w, int64_t n, __half *dst) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / w, l = r % len, h = (r / len) % heads, b = r / (len * heads);
        const int d = (int)(e % w);
        dst[e] = __float2half_rn(d < t.dim ? qd_element(t, b, h, l, d) : 0.0f);
    }
}

/* q [B, Hq, Lq, dk] (2-byte elements, strided) -> contiguous rows of w dims, zeros past dk. */
__global__ void stage_q(const uint16_t *q, int64_t qs0, int64_t qs1, int64_t qs2, int64_t heads, int64_t len,
                        int dk, int w, int64_t n, uint16_t *dst) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / w, i = r % len, h = (r / len) % heads, b = r / (len * heads);
        const int d = (int)(e % w);
        dst[e] = d < dk ? q[b * qs0 + h * qs1 + i * qs2 + d] : (uint16_t)0; /* 0x0000 is +0 in f16 and bf16 */
    }
}

/* The first dv dims of contiguous rows of w dims -> out [B, Hq, Lq, dv] (strided). */
template <class E>
__global__ void unstage_out(const E *src, E *out, int64_t os0, int64_t os1, int64_t os2, int64_t heads, int64_t len,
                            int dv, int w, int64_t n) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / dv, i = r % len, h = (r / len) % heads, b = r / (len * heads);
        const int d = (int)(e % dv);
        out[b * os0 + h * os1 + i * os2 + d] = src[r * w + d];
    }
}

unsigned grid_for(int64_t n) { return (unsigned)((n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536); }

/* A contiguous f16 plain-row tensor [B, H, L, w] at data. */
qsdpa_qtensor plain_f16(void *data, int64_t b, int64_t h, int64_t l, int w) {
    qsdpa_qtensor t = {};
    t.format.mode = QSDPA_MODE_PLAIN;
    t.format.bits = 16;
    t.format.plain_dtype = QSDPA_DTYPE_F16;
    t.codes = qsdpa_tensor_4d(data, QSDPA_DTYPE_F16, b, h, l, w);
    t.scales.dtype = QSDPA_DTYPE_F16;
    t.biases.dtype = QSDPA_DTYPE_F16;
    t.dim = w;
    return t;
}

bool plain_but_not_f16(const qsdpa_qtensor *t) {
    return t->format.mode == QSDPA_MODE_PLAIN && t->format.plain_dtype != QSDPA_DTYPE_F16;
}

} // namespace

bool qsdpa_cuda_staged_takes(const qsdpa_problem *p) {
    static const int64_t enabled = env_int64("QSDPA_CUDA_STAGED", 1);
    static const int64_t limit_mb = env_int64("QSDPA_CUDA_STAGE_LIMIT_MB", 1024);
    if (!enabled) return false;
    if (p->q_dtype != QSDPA_DTYPE_F16 && p->q_dtype != QSDPA_DTYPE_BF16) return false;
    if (p->dim_k > 128 || p->dim_v > 128) return false;
    if (plain_but_not_f16(&p->k) || plain_but_not_f16(&p->v)) return false;
    if (p->group_ratio * p->len_q <= STAGED_MIN_ROWS) return false;
    /* sizes are validated to fit size_t as tensors; the stage is at most (128 / D) x 2 of them */
    return layout_of(p).total <= (size_t)limit_mb << 20;
}

qsdpa_status qsdpa_cuda_staged_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    const char *fn = pr->function;
    qsdpa_status st = qsdpa_cuda_enter(ctx, fn);
    if (st == QSDPA_OK) st = qsdpa_cuda_check_problem(ctx, pr, fn);
    if (st != QSDPA_OK) return st;
    const stage_layout lay = layout_of(pr);
    void *base;
    if ((st = qsdpa_cuda_stage(ctx, lay.total, &base)) != QSDPA_OK) return st;
    char *k_s = (char *)base, *v_s = k_s + lay.k, *q_s = v_s + lay.v, *o_s = q_s + lay.q;
    const int w = staged_width(pr);
    cudaStream_t stream = qsdpa_cuda_stream(ctx);

    const int64_t kv_n = pr->batch * pr->heads_kv * pr->len_k * w, q_n = pr->batch * pr->heads_q * pr->len_q * w;
    stage_rows<<<grid_for(kv_n), 256, 0, stream>>>(qd_qtensor_make(&pr->k), pr->heads_kv, pr->len_k, w, kv_n,
                                                    (__half *)k_s);
    stage_rows<<<grid_for(kv_n), 256, 0, stream>>>(qd_qtensor_make(&pr->v), pr->heads_kv, pr->len_k, w, kv_n,
                                                    (__half *)v_s);
    stage_q<<<grid_for(q_n), 256, 0, stream>>>((const uint16_t *)pr->q, pr->q_stride[0], pr->q_stride[1],
                                                pr->q_stride[2], pr->heads_q, pr->len_q, (int)pr->dim_k, w, q_n,
                                                (uint16_t *)q_s);
    if ((st = qsdpa_cuda_launch_status(fn, "staging K, V and q")) != QSDPA_OK) return st;

    qsdpa_problem sp = *pr;
    sp.dim_k = sp.dim_v = w;
    sp.q = q_s;
    sp.q_stride[0] = pr->heads_q * pr->len_q * w;
    sp.q_stride[1] = pr->len_q * w;
    sp.q_stride[2] = w;
    sp.q_stride[3] = 1;
    sp.k = plain_f16(k_s, pr->batch, pr->heads_kv, pr->len_k, w);
    sp.v = plain_f16(v_s, pr->batch, pr->heads_kv, pr->len_k, w);
    sp.out = o_s;
    for (int d = 0; d < 4; d++) sp.out_stride[d] = sp.q_stride[d];
    st = w == 64 ? qsdpa_cuda_mma_f16_d64(ctx, &sp) : qsdpa_cuda_mma_f16_d128(ctx, &sp);
    if (st != QSDPA_OK) return st;

    const int64_t o_n = pr->batch * pr->heads_q * pr->len_q * pr->dim_v;
    const int64_t *os = pr->out_stride;
    if (qsdpa_dtype_size(pr->out_dtype) == 4)
        unstage_out<uint32_t><<<grid_for(o_n), 256, 0, stream>>>((const uint32_t *)o_s, (uint32_t *)pr->out, os[0],
                                                                 os[1], os[2], pr->heads_q, pr->len_q,
                                                                 (int)pr->dim_v, w, o_n);
    else
        unstage_out<uint16_t><<<grid_for(o_n), 256, 0, stream>>>((const uint16_t *)o_s, (uint16_t *)pr->out, os[0],
                                                                 os[1], os[2], pr->heads_q, pr->len_q,
                                                                 (int)pr->dim_v, w, o_n);
    return qsdpa_cuda_launch_status(fn, "copying the staged output");
}
