/* The generic CUDA kernel: serves every format (any bits, any group), any
 * D <= 1024, Dk != Dv, every q dtype, masks, sinks, causal/window and partial
 * mode. One block of 4 warps per (query row, key split); a warp takes one key
 * at a time, its lanes split the head dim. It is the GPU's correctness
 * fallback (never a host round trip), not its fast path.
 *
 * Partials of the splits go to device scratch as [split][row][4 + Dv] floats
 * (m, l, kept, -, o[Dv]) in natural-log units, then a combine kernel merges
 * them exactly as the reference does (sinks, fully masked rows, lse). */
#include <math.h>
#include <string.h>

#include "cuda/cuda_format.cuh"

namespace {

struct gen_params : qd_io {
    int64_t batch, hq, lq, lk, ratio, key_offset, key_total, window;
    int dk, dv, causal;
    float scale, masked;
    float *part;         /* [nsplit][rows][4 + dv] */
    int nsplit;
    int64_t keys_per_split;
};

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* One block per (row, split); NT = ceil(D/32) values of o per lane. */
template <int NT>
__global__ void __launch_bounds__(128) generic_attention(const gen_params p) {
    __shared__ float q_s[1024];
    __shared__ float wm[4], wl[4], wk[4];
    __shared__ float wo[4][NT * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = blockIdx.x; /* (b, h, i) flattened */
    const int64_t i = row % p.lq, h = (row / p.lq) % p.hq, b = row / (p.lq * p.hq);
    const int64_t g = h / p.ratio;
    for (int d = threadIdx.x; d < p.dk; d += blockDim.x)
        q_s[d] = qd_load_float(p.q, p.q_dtype, b * p.qs[0] + h * p.qs[1] + i * p.qs[2] + d);
    __syncthreads();

    const int64_t j0 = (int64_t)blockIdx.y * p.keys_per_split;
    const int64_t j1 = min(p.lk, j0 + p.keys_per_split);
    const int64_t last = i + p.key_total - p.lq; /* last visible global position */
    float m = -INFINITY, l = 0.0f, kept = 0.0f;
    float o[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) o[t] = 0.0f;

    for (int64_t j = j0 + warp; j < j1; j += 4) {
        float dot = 0.0f;
        for (int d = lane; d < p.dk; d += 32) dot += q_s[d] * qd_element(p.k, b, g, j, d);
        float s = p.scale * warp_sum(dot);
        bool keep = true;
        if (p.causal) {
            int64_t pos = p.key_offset + j;
            if (pos > last || (p.window > 0 && pos <= last - p.window)) keep = false;
        }
        if (keep && p.mask_kind != QSDPA_MASK_NONE) {
            int64_t at = b * p.ms[0] + h * p.ms[1] + i * p.ms[2] + j * p.ms[3];
            if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
            else s += qd_load_float(p.mask, p.mask_dtype, at);
        }
        if (!keep) s = p.masked;
        else kept = 1.0f;
        float mn = fmaxf(m, s);
        float corr = mn == -INFINITY ? 1.0f : expf(m - mn);
        float w = mn == -INFINITY ? 0.0f : expf(s - mn);
        l = l * corr + w;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int d = lane + 32 * t;
            if (d < p.dv) o[t] = o[t] * corr + w * qd_element(p.v, b, g, j, d);
        }
        m = mn;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; wk[warp] = kept; }
#pragma unroll
    for (int t = 0; t < NT; t++) wo[warp][lane + 32 * t] = o[t];
    __syncthreads();
    /* merge the 4 warps' states; write the split's partial */
    float M = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3]));
    float c[4], L = 0.0f, K = 0.0f;
    for (int w = 0; w < 4; w++) {
        c[w] = (M == -INFINITY || wl[w] == 0.0f) ? 0.0f : expf(wm[w] - M);
        L += wl[w] * c[w];
        K = fmaxf(K, wk[w]);
    }
    float *dst = p.part + ((int64_t)blockIdx.y * gridDim.x + row) * (4 + p.dv);
    if (threadIdx.x == 0) { dst[0] = M; dst[1] = L; dst[2] = K; dst[3] = 0.0f; }
    for (int d = threadIdx.x; d < p.dv; d += blockDim.x)
        dst[4 + d] = c[0] * wo[0][d] + c[1] * wo[1][d] + c[2] * wo[2][d] + c[3] * wo[3][d];
}

/* Merge the splits of one row (block per row), finish as the reference does. */
__global__ void __launch_bounds__(128) generic_combine(const gen_params p, int64_t rows) {
    const int64_t row = blockIdx.x;
    const int64_t i = row % p.lq, h = (row / p.lq) % p.hq, b = row / (p.lq * p.hq);
    const int64_t stride = rows * (4 + p.dv);
    const float *src = p.part + row * (4 + p.dv);
    float sink = p.sinks ? qd_load_float(p.sinks, p.sinks_dtype, h) : -INFINITY;
    float M = -INFINITY, K = sink > -INFINITY ? 1.0f : 0.0f; /* a finite sink is a kept column; -inf is none */
    for (int s = 0; s < p.nsplit; s++) {
        const float *ps = src + s * stride;
        if (ps[1] > 0.0f) M = fmaxf(M, ps[0]);
        K = fmaxf(K, ps[2]);
    }
    M = fmaxf(M, sink);
    float L = sink > -INFINITY ? expf(sink - M) : 0.0f;
    for (int s = 0; s < p.nsplit; s++) {
        const float *ps = src + s * stride;
        if (ps[1] > 0.0f && M != -INFINITY) L += ps[1] * expf(ps[0] - M);
    }
    bool empty = p.lse && (K == 0.0f || M == -INFINITY);
    /* all keys of the slice masked: out = sum(V)/key_total = mean(V) * Lk/key_total */
    float share = K == 0.0f ? (float)((double)p.lk / (double)p.key_total) : 0.0f;
    for (int d = threadIdx.x; d < p.dv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < p.nsplit; s++) {
            const float *ps = src + s * stride;
            if (ps[1] > 0.0f && M != -INFINITY) acc += expf(ps[0] - M) * ps[4 + d];
        }
        float v = acc / L;
        /* kept keys all at -inf (additive mask): NaN as the unsplit softmax, lse -inf */
        if (empty) v = M == -INFINITY && K != 0.0f ? __int_as_float(0x7fc00000) : v * share;
        qd_store_float(p.out, p.out_dtype, b * p.os[0] + h * p.os[1] + i * p.os[2] + d, v);
    }
    if (p.lse && threadIdx.x == 0)
        p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = empty ? -INFINITY : M + logf(L);
}

} // namespace

extern "C" qsdpa_status qsdpa_cuda_generic_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    const char *fn = pr->lse ? "qsdpa_attention_partial" : "qsdpa_attention";
    qsdpa_status st = qsdpa_cuda_enter(ctx, fn);
    if (st == QSDPA_OK) st = qsdpa_cuda_check_problem(ctx, pr, fn);
    if (st != QSDPA_OK) return st;
    gen_params p;
    memset(&p, 0, sizeof p);
    qd_io_fill(&p, pr);
    p.batch = pr->batch; p.hq = pr->heads_q; p.lq = pr->len_q; p.lk = pr->len_k; p.ratio = pr->group_ratio;
    p.key_offset = pr->key_offset; p.key_total = pr->key_total; p.window = pr->window;
    p.dk = (int)pr->dim_k; p.dv = (int)pr->dim_v; p.causal = pr->causal;
    p.scale = pr->scale; p.masked = pr->masked_score;

    int64_t rows = pr->batch * pr->heads_q * pr->len_q;
    if (rows > 0x7fffffff)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "B*Hq*Lq = %lld rows exceed the generic kernel's grid",
                          (long long)rows);
    /* enough blocks to fill the device: about 4 per SM, a split at least 64 keys */
    int64_t want = 4LL * ctx->cuda->sm_count;
    int64_t nsplit = (want + rows - 1) / rows;
    int64_t max_split = (pr->len_k + 63) / 64;
    if (nsplit > max_split) nsplit = max_split;
    if (nsplit > 65535) nsplit = 65535;
    if (nsplit < 1) nsplit = 1;
    p.keys_per_split = (pr->len_k + nsplit - 1) / nsplit;
    p.nsplit = (int)((pr->len_k + p.keys_per_split - 1) / p.keys_per_split);

    size_t floats_per = (size_t)(4 + p.dv), bytes;
    if (!qsdpa_mul_size((size_t)rows * floats_per, (size_t)p.nsplit * sizeof(float), &bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "generic-kernel scratch overflows size_t");
    void *scratch;
    if ((st = qsdpa_cuda_scratch(ctx, bytes, &scratch)) != QSDPA_OK) return st;
    p.part = (float *)scratch;

    cudaStream_t stream = qsdpa_cuda_stream(ctx);
    dim3 grid((unsigned)rows, (unsigned)p.nsplit);
    int dmax = p.dv;
    if (dmax <= 128) generic_attention<4><<<grid, 128, 0, stream>>>(p);
    else if (dmax <= 256) generic_attention<8><<<grid, 128, 0, stream>>>(p);
    else if (dmax <= 512) generic_attention<16><<<grid, 128, 0, stream>>>(p);
    else generic_attention<32><<<grid, 128, 0, stream>>>(p);
    if ((st = qsdpa_cuda_launch_status(fn, "generic_attention")) != QSDPA_OK) return st;
    generic_combine<<<(unsigned)rows, 128, 0, stream>>>(p, rows);
    return qsdpa_cuda_launch_status(fn, "generic_combine");
}

/* Table entry: the generic kernel under its table name. */
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p);
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cuda_generic_run(ctx, p);
}
