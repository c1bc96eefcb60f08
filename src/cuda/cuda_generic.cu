/* The generic CUDA kernel: serves every format (any bits, any group), any
 * D <= 1024, Dk != Dv, every q dtype, masks, sinks, causal/window and partial
 * mode. It is the GPU's correctness fallback (never a host round trip), not its
 * fast path, but it should not be a cliff either (v26, bench/NOTES.md: the
 * one-key-per-warp version ran at 0.2-0.7% of copy).
 *
 * One block of 4 warps per (b, kv head, query position, up to 8 of the group's q
 * heads, key split): per tile of T keys the block decodes K and V once into shared
 * memory as f32 (a warp per key, qd_row_decode: a word of codes per lane for affine and
 * MXFP8, qd_element value by value otherwise), then
 * each warp scores its rows with a lane per key, takes one online-softmax step per
 * tile, and accumulates P V with a lane per output dim. f32 throughout: it also
 * serves f32 q at SPEC's 2e-5.
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
    int64_t rows;        /* batch * hq * lq */
    int head_chunks;     /* ceil(ratio / GEN_ROWS) */
    int tile;            /* keys per tile (T <= 32) */
};

constexpr int GEN_ROWS = 8;  /* q heads per block (two per warp) */
constexpr int GEN_WARPS = 4;

/* shared memory: q rows, the K and V tiles (rows padded by one float: the score
 * lanes read different keys at the same dim), the tile's weights */
__host__ __device__ inline size_t gen_smem_floats(int dk, int dv, int tile) {
    return (size_t)GEN_ROWS * dk + (size_t)tile * (dk + 1) + (size_t)tile * (dv + 1) + GEN_ROWS * 32;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* NT = ceil(Dv / 32) output values per lane and row. */
template <int NT>
__global__ void __launch_bounds__(GEN_WARPS * 32) generic_attention(const gen_params p) {
    extern __shared__ float gsm[];
    const int T = p.tile, dk = p.dk, dv = p.dv;
    float *q_s = gsm, *k_s = q_s + GEN_ROWS * dk, *v_s = k_s + T * (dk + 1), *p_s = v_s + T * (dv + 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* block x: ((b * hkv + g) * lq + i) * head_chunks + chunk */
    const int64_t hkv = p.hq / p.ratio;
    int64_t x = blockIdx.x;
    const int chunk = (int)(x % p.head_chunks);
    x /= p.head_chunks;
    const int64_t i = x % p.lq, g = (x / p.lq) % hkv, b = x / (p.lq * hkv);
    const int64_t h0 = g * p.ratio + (int64_t)chunk * GEN_ROWS;
    const int nrows = (int)min((int64_t)GEN_ROWS, p.ratio - (int64_t)chunk * GEN_ROWS);
    for (int e = threadIdx.x; e < GEN_ROWS * dk; e += blockDim.x) {
        const int r = e / dk, d = e % dk;
        q_s[e] = r < nrows ? qd_load_float(p.q, p.q_dtype, b * p.qs[0] + (h0 + r) * p.qs[1] + i * p.qs[2] + d) : 0.0f;
    }

    const int64_t j0 = (int64_t)blockIdx.y * p.keys_per_split;
    const int64_t j1 = min(p.lk, j0 + p.keys_per_split);
    const int64_t last = i + p.key_total - p.lq; /* last visible global position */
    /* warp w: rows w and w + 4 */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, kept[2] = {0.0f, 0.0f};
    float o[2][NT];
#pragma unroll
    for (int rr = 0; rr < 2; rr++)
#pragma unroll
        for (int t = 0; t < NT; t++) o[rr][t] = 0.0f;

    for (int64_t jt = j0; jt < j1; jt += T) {
        const int n = (int)min((int64_t)T, j1 - jt);
        __syncthreads(); /* q staged / the previous tile consumed */
        /* a warp per key, lanes over its codes */
        for (int t = warp; t < n; t += GEN_WARPS) {
            qd_row_decode(p.k, b, g, jt + t, k_s + t * (dk + 1), lane);
            qd_row_decode(p.v, b, g, jt + t, v_s + t * (dv + 1), lane);
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int r = warp + GEN_WARPS * rr;
            if (r >= nrows) continue; /* warp-uniform */
            const int64_t h = h0 + r, j = jt + lane;
            float s = -INFINITY;
            if (lane < n) {
                const float *qr = q_s + r * dk, *kr = k_s + lane * (dk + 1);
                float dot[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* four chains: a lane's dot is serial */
                int d = 0;
                for (; d + 4 <= dk; d += 4)
#pragma unroll
                    for (int c = 0; c < 4; c++) dot[c] = fmaf(qr[d + c], kr[d + c], dot[c]);
                for (; d < dk; d++) dot[0] = fmaf(qr[d], kr[d], dot[0]);
                s = p.scale * ((dot[0] + dot[1]) + (dot[2] + dot[3]));
                bool keep = true;
                if (p.causal) {
                    const int64_t pos = p.key_offset + j;
                    if (pos > last || (p.window > 0 && pos <= last - p.window)) keep = false;
                }
                if (keep && p.mask_kind != QSDPA_MASK_NONE) {
                    const int64_t at = b * p.ms[0] + h * p.ms[1] + i * p.ms[2] + j * p.ms[3];
                    if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
                    else s += qd_load_float(p.mask, p.mask_dtype, at);
                }
                if (!keep) s = p.masked;
                else kept[rr] = 1.0f;
            }
            const float mn = fmaxf(m[rr], warp_max(s));
            const float corr = mn == -INFINITY ? 1.0f : expf(m[rr] - mn);
            const float w = mn == -INFINITY || lane >= n ? 0.0f : expf(s - mn);
            l[rr] = l[rr] * corr + warp_sum(w);
            m[rr] = mn;
            p_s[r * 32 + lane] = w;
            __syncwarp();
#pragma unroll
            for (int t = 0; t < NT; t++) o[rr][t] *= corr;
            /* keys outer, dims inner: NT independent chains per lane */
            for (int u = 0; u < n; u++) {
                const float wu = p_s[r * 32 + u];
                const float *vr = v_s + u * (dv + 1) + lane;
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (lane + 32 * t < dv) o[rr][t] = fmaf(wu, vr[32 * t], o[rr][t]);
            }
            __syncwarp();
        }
    }
    /* each warp's rows are whole: write the split's partials */
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int r = warp + GEN_WARPS * rr;
        if (r >= nrows) continue;
        const float K = warp_max(kept[rr]);
        const int64_t row = (b * p.hq + h0 + r) * p.lq + i;
        float *dst = p.part + ((int64_t)blockIdx.y * p.rows + row) * (4 + p.dv);
        if (lane == 0) { dst[0] = m[rr]; dst[1] = l[rr]; dst[2] = K; dst[3] = 0.0f; }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int d = lane + 32 * t;
            if (d < dv) dst[4 + d] = o[rr][t];
        }
    }
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
    p.rows = rows;
    p.head_chunks = (int)((pr->group_ratio + GEN_ROWS - 1) / GEN_ROWS);
    const int64_t blocks = pr->batch * pr->heads_kv * pr->len_q * p.head_chunks;
    if (rows > 0x7fffffff || blocks > 0x7fffffff)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "B*Hq*Lq = %lld rows exceed the generic kernel's grid",
                          (long long)rows);
    /* keys per tile: the K and V tiles in f32 within ~64 KB */
    p.tile = p.dk + p.dv <= 512 ? 32 : p.dk + p.dv <= 1024 ? 16 : 8;
    const size_t smem = gen_smem_floats(p.dk, p.dv, p.tile) * sizeof(float);
    /* enough blocks to fill the device: about 8 per SM, a split at least 64 keys */
    int64_t want = 8LL * ctx->cuda->sm_count;
    int64_t nsplit = (want + blocks - 1) / blocks;
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
    dim3 grid((unsigned)blocks, (unsigned)p.nsplit);
    const int dmax = p.dv;
    void (*kernel)(const gen_params) = dmax <= 128   ? generic_attention<4>
                                       : dmax <= 256 ? generic_attention<8>
                                       : dmax <= 512 ? generic_attention<16>
                                                     : generic_attention<32>;
    if (smem > 48 * 1024) {
        cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "configuring generic_attention");
    }
    kernel<<<grid, GEN_WARPS * 32, smem, stream>>>(p);
    if ((st = qsdpa_cuda_launch_status(fn, "generic_attention")) != QSDPA_OK) return st;
    generic_combine<<<(unsigned)rows, 128, 0, stream>>>(p, rows);
    return qsdpa_cuda_launch_status(fn, "generic_combine");
}

/* Table entry: the generic kernel under its table name. */
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p);
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cuda_generic_run(ctx, p);
}
