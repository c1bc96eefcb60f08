/* The generic CUDA kernel: serves every format (any bits, any group), any
 * D <= 1024, Dk != Dv, every q dtype, masks, sinks, causal/window and partial
 * mode. It is the GPU's correctness fallback (never a host round trip), not its
 * fast path, but it should not be a cliff either (bench/NOTES.md v26, v27-v27.4).
 *
 * One block of 4 warps per (b, kv head, up to 8 folded rows, key split); a folded
 * row is one (q head of the group, query position) pair, so every row of a block
 * reads the same K/V rows. Per tile of T keys (32, 16 or 8 by head dim, so the
 * tiles stay within ~50 KB and four or more blocks share an SM):
 *   decode  each warp decodes T/4 keys' K and V rows into shared memory as f32
 *           (qd_rows_decode: (row, word of codes) items dealt to every lane, all
 *           their loads issued before any is decoded);
 *   scores  each warp scores T/4 consecutive keys for every row, 32/(T/4) lanes per key
 *           splitting the dims, float4 reads, so a K value read serves all rows;
 *   softmax warp w runs rows w and w + 4 (a lane per key), one online step a tile;
 *   P V     each warp owns a quarter of the output dims for every row, so a V
 *           value read serves all rows.
 * f32 throughout: it also serves f32 q at SPEC's 2e-5.
 *
 * Splits fill two waves of the blocks an SM holds. Their partials go to device
 * scratch as [split][row][4 + Dv] floats (m, l, kept, -, o[Dv]) in natural-log
 * units, then a combine kernel (a block per row and 32 output dims) merges them
 * exactly as the reference does (sinks, fully masked rows, lse). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_generic.cuh"

namespace {

using namespace qgen;

/* Keys per tile: K and V tiles and q rows in f32 within ~50 KB up to Dk + Dv of 1024 (about
 * 100 KB at 1024 + 1024). Where a GPU's per-block limit is lower (99 KB on sm_86 / sm_89) the
 * host takes 4 keys (gen_choose_tile). */
__host__ __device__ constexpr int gen_tile(int dk, int dv) { return dk + dv <= 256 ? 32 : dk + dv <= 512 ? 16 : 8; }

/* K row pitch: a multiple of the 4 * (32 / (T/4)) dims a score step covers (the pad is
 * zero in q and K); at T = 32 two keys share a phase of a float4 read, so the pitch is
 * 16 mod 32 floats and their 64-byte runs fall in different banks. */
__host__ __device__ constexpr int gen_kpitch(int dk, int tile) {
    return tile == 32 ? (dk + 15) / 16 * 16 + ((dk + 15) / 16 % 2 == 0 ? 16 : 0)
                      : (dk + 4 * (128 / tile) - 1) / (4 * (128 / tile)) * (4 * (128 / tile));
}

/* shared memory in floats: q rows, K and V tiles, scores [8][32], weights [32][8], the
 * rows' corrections [8] and kept flags [8][32] */
__host__ __device__ inline size_t gen_smem_floats(int kpitch, int vpitch, int tile) {
    return (size_t)GEN_ROWS * kpitch + (size_t)tile * kpitch + (size_t)tile * vpitch + 2 * GEN_ROWS * 32 + GEN_ROWS +
           GEN_ROWS * 32;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* T keys per tile; DPL = ceil(Dv / 128) output dims per lane and row. */
template <int T, int DPL>
__global__ void __launch_bounds__(GEN_WARPS * 32) generic_attention(const gen_params p) {
    constexpr int KPW = T / GEN_WARPS, LPK = 32 / KPW; /* keys per warp, lanes per key in the scores */
    extern __shared__ float4 gsm4[];
    float *gsm = (float *)gsm4;
    const int kp = p.kpitch, vp = p.vpitch, dv = p.dv;
    float *q_s = gsm, *k_s = q_s + GEN_ROWS * kp, *v_s = k_s + T * kp, *s_s = v_s + T * vp;
    float *p_s = s_s + GEN_ROWS * 32, *corr_s = p_s + 32 * GEN_ROWS, *keep_s = corr_s + GEN_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* block x: (b * hkv + g) * row_chunks + chunk */
    const int64_t hkv = p.hq / p.ratio;
    const int64_t chunk = blockIdx.x % p.row_chunks, g = (blockIdx.x / p.row_chunks) % hkv,
                  b = blockIdx.x / (p.row_chunks * hkv);
    const int64_t f0 = chunk * GEN_ROWS; /* first folded row: (head in group) * lq + i */
    const int nrows = (int)min((int64_t)GEN_ROWS, p.ratio * p.lq - f0);
    for (int e = threadIdx.x; e < GEN_ROWS * kp; e += blockDim.x) {
        const int r = e / kp, d = e % kp;
        const int64_t f = f0 + r, h = g * p.ratio + f / p.lq, i = f % p.lq;
        q_s[e] = r < nrows && d < p.dk ? qd_load_float(p.q, p.q_dtype, b * p.qs[0] + h * p.qs[1] + i * p.qs[2] + d)
                                       : 0.0f;
    }
    /* the K tile's pad dims stay zero (decoding writes [0, dk) only) */
    for (int e = threadIdx.x; e < T * kp; e += blockDim.x) k_s[e] = 0.0f;
    /* weights of rows past nrows stay zero (P V multiplies every row) */
    for (int e = threadIdx.x; e < 32 * GEN_ROWS; e += blockDim.x) p_s[e] = 0.0f;
    /* per row: the last visible global key position and the mask's row offset (no 64-bit
     * division in the tile loop) */
    __shared__ int64_t last_s[GEN_ROWS], mrow_s[GEN_ROWS];
    if (threadIdx.x < GEN_ROWS) {
        const int64_t f = f0 + threadIdx.x, h = g * p.ratio + f / p.lq, i = f % p.lq;
        last_s[threadIdx.x] = i + p.key_total - p.lq;
        mrow_s[threadIdx.x] = b * p.ms[0] + h * p.ms[1] + i * p.ms[2];
    }

    /* this split's keys; with p.skip only those some row of the block sees (from last_s; the
     * range goes through shared memory, which kept ptxas's register counts at main's, run 88) */
    __shared__ int64_t range_s[2];
    __syncwarp(); /* last_s comes from warp 0 */
    gen_split_range(p, last_s, nrows, range_s);
    __syncthreads();
    const int64_t j0 = range_s[0], j1 = range_s[1];
    /* softmax rows of this warp: w and w + 4 */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, kept[2] = {0.0f, 0.0f};
    float o[GEN_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < GEN_ROWS; r++)
#pragma unroll
        for (int x = 0; x < DPL; x++) o[r][x] = 0.0f;

    for (int64_t jt = j0; jt < j1; jt += T) {
        const int n = (int)min((int64_t)T, j1 - jt);
        __syncthreads(); /* q staged / the previous tile consumed */
        qd_rows_decode<KPW>(p.k, p.k_words, b, g, jt, warp, n, k_s, kp, lane);
        qd_rows_decode<KPW>(p.v, p.v_words, b, g, jt, warp, n, v_s, vp, lane);
        __syncthreads();
        { /* scores: key t of this warp, dims part * 4 + LPK * 4 * step */
            const int t = warp * KPW + lane / LPK, part = lane % LPK;
            float acc[GEN_ROWS];
#pragma unroll
            for (int r = 0; r < GEN_ROWS; r++) acc[r] = 0.0f;
            for (int d = part * 4; d < kp; d += LPK * 4) {
                const float4 kv = *(const float4 *)(k_s + t * kp + d);
#pragma unroll
                for (int r = 0; r < GEN_ROWS; r++) {
                    if (r >= nrows) break;
                    const float4 qv = *(const float4 *)(q_s + r * kp + d);
                    acc[r] = fmaf(qv.x, kv.x, fmaf(qv.y, kv.y, fmaf(qv.z, kv.z, fmaf(qv.w, kv.w, acc[r]))));
                }
            }
#pragma unroll
            for (int r = 0; r < GEN_ROWS; r++)
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
            if (part == 0) {
                const int64_t j = jt + t;
#pragma unroll
                for (int r = 0; r < GEN_ROWS; r++) {
                    if (r >= nrows) break;
                    float s = -INFINITY, keep_flag = 0.0f;
                    if (t < n) s = gen_key_score(p, acc[r], j, last_s[r], mrow_s[r], keep_flag);
                    s_s[r * 32 + t] = s;
                    keep_s[r * 32 + t] = keep_flag;
                }
            }
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < 2; rr++) { /* online softmax of rows w, w + 4: a lane per key */
            const int r = warp + GEN_WARPS * rr;
            if (r >= nrows) continue; /* warp-uniform */
            const float s = lane < n ? s_s[r * 32 + lane] : -INFINITY;
            if (lane < n) kept[rr] = fmaxf(kept[rr], keep_s[r * 32 + lane]);
            const float mn = fmaxf(m[rr], warp_max(s));
            const float corr = mn == -INFINITY ? 1.0f : expf(m[rr] - mn);
            const float w = mn == -INFINITY || lane >= n ? 0.0f : expf(s - mn);
            l[rr] = l[rr] * corr + warp_sum(w);
            m[rr] = mn;
            p_s[lane * GEN_ROWS + r] = w;
            if (lane == 0) corr_s[r] = corr;
        }
        __syncthreads();
        /* P V: dims warp * 32 + lane + 128 x of every row */
        float corr[GEN_ROWS];
#pragma unroll
        for (int r = 0; r < GEN_ROWS; r++) corr[r] = r < nrows ? corr_s[r] : 1.0f;
#pragma unroll
        for (int r = 0; r < GEN_ROWS; r++)
#pragma unroll
            for (int x = 0; x < DPL; x++) o[r][x] *= corr[r];
        for (int u = 0; u < n; u++) {
            const float4 w0 = *(const float4 *)(p_s + u * GEN_ROWS), w1 = *(const float4 *)(p_s + u * GEN_ROWS + 4);
            const float w[GEN_ROWS] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
            for (int x = 0; x < DPL; x++) {
                const int d = warp * 32 + lane + 128 * x;
                if (d >= dv) break;
                const float vv = v_s[u * vp + d];
#pragma unroll
                for (int r = 0; r < GEN_ROWS; r++) o[r][x] = fmaf(w[r], vv, o[r][x]);
            }
        }
    }
    /* the split's partials: (m, l, kept) from the softmax warps, o from every warp (r unrolled:
     * a run-time index would put o, m and l in local memory for the whole kernel) */
#pragma unroll
    for (int r = 0; r < GEN_ROWS; r++) {
        if (r >= nrows) break;
        const int64_t f = f0 + r, h = g * p.ratio + f / p.lq, i = f % p.lq;
        const int64_t row = (b * p.hq + h) * p.lq + i;
        float *dst = p.part + ((int64_t)blockIdx.y * p.rows + row) * (4 + p.dv);
        if (r % GEN_WARPS == warp) {
            const int rr = r / GEN_WARPS;
            const float K = warp_max(kept[rr]);
            if (lane == 0) { dst[0] = m[rr]; dst[1] = l[rr]; dst[2] = K; dst[3] = 0.0f; }
        }
#pragma unroll
        for (int x = 0; x < DPL; x++) {
            const int d = warp * 32 + lane + 128 * x;
            if (d < dv) dst[4 + d] = o[r][x];
        }
    }
}

/* Block-wide max / sum over the combine kernel's 4 warps (all threads get the result). */
__device__ __forceinline__ float block_reduce(float x, bool is_max, float *scratch) {
    x = is_max ? warp_max(x) : warp_sum(x);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); /* scratch free (an earlier reduction read it) */
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < GEN_WARPS; w++) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
    return x;
}

/* Merge the splits of one row, finish as the reference does. A block takes 32 output dims
 * of one row (grid: rows x ceil(Dv / 32)), a lane per dim, its 4 warps a quarter of the
 * splits each, summed through shared memory at the end. Why: a block per row left 32 rows'
 * worth of warps to read every split's partials, a few loads in flight each (runs 83-84:
 * 48-85 us at 32 rows and 82-171 splits, against 5 MB of partials). */
constexpr int COMBINE_CHUNK = 256; /* splits whose weights a merge block holds at once (a multiple of its threads) */
__global__ void __launch_bounds__(GEN_WARPS * 32) generic_combine(const gen_params p, int64_t rows) {
    __shared__ float red[GEN_WARPS], part_s[GEN_WARPS][32], w_s[COMBINE_CHUNK];
    const int64_t row = blockIdx.x;
    const int64_t i = row % p.lq, h = (row / p.lq) % p.hq, b = row / (p.lq * p.hq);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, d = blockIdx.y * 32 + lane;
    const int64_t stride = rows * (4 + p.dv);
    const float *src = p.part + row * (4 + p.dv);
    /* a stage of shifted K moved the row's scores by a constant (qsdpa_problem.score_shift): the sink moves
     * with them, the lse takes it back */
    const float shift = p.score_shift ? p.score_shift[(b * (p.hq / p.ratio) + h / p.ratio) * (p.ratio * p.lq) +
                                                      i * p.ratio + h % p.ratio] * 0.6931471805599453f
                                      : 0.0f;
    const float sink = p.sinks ? qd_load_float(p.sinks, p.sinks_dtype, h) - shift : -INFINITY;
    float M = -INFINITY, K = 0.0f;
    for (int s = threadIdx.x; s < p.nsplit; s += blockDim.x) {
        const float *ps = src + s * stride;
        if (ps[1] != 0.0f) M = fmaxf(M, ps[0]); /* l == 0: no kept weight; NaN propagates */
        K = fmaxf(K, ps[2]);
    }
    M = fmaxf(block_reduce(M, true, red), sink);
    K = fmaxf(block_reduce(K, true, red), p.sinks && sink != -INFINITY ? 1.0f : 0.0f); /* a finite or NaN sink is a kept column */
    /* each split's weight once a block, into shared memory, COMBINE_CHUNK splits at a time, L summed on the
     * way (a thread's splits in the same order as one pass over them); -1: a split with no kept weight.
     * An expf per split and output dim was most of the merge's instructions (run 174's profile). */
    float L = 0.0f, acc = 0.0f;
    for (int s0 = 0; s0 < p.nsplit; s0 += COMBINE_CHUNK) {
        const int ns = min(COMBINE_CHUNK, p.nsplit - s0);
        for (int s = threadIdx.x; s < ns; s += blockDim.x) {
            const float *ps = src + (s0 + s) * stride;
            const bool kept = ps[1] != 0.0f && M != -INFINITY;
            const float w = kept ? expf(ps[0] - M) : -1.0f;
            if (kept) L += ps[1] * w;
            w_s[s] = w;
        }
        __syncthreads();
        if (d < p.dv) {
            /* this warp's splits: o[d] loaded before the weights need them, 16 in flight (the merge waits on
             * round trips to the partials: run 175's profile) */
#pragma unroll 16
            for (int s = warp; s < ns; s += GEN_WARPS) {
                const float w = w_s[s], o = src[(s0 + s) * stride + 4 + d];
                acc += w < 0.0f ? 0.0f : w * o;
            }
        }
        __syncthreads(); /* w_s consumed */
    }
    L = block_reduce(L, false, red) + (p.sinks && sink != -INFINITY ? expf(sink - M) : 0.0f); /* NaN: the row NaN, as MLX */
    part_s[warp][lane] = acc;
    __syncthreads();
    if (warp != 0) return;
    for (int w = 1; w < GEN_WARPS; w++) acc += part_s[w][lane];
    const bool empty = p.lse && (K == 0.0f || M == -INFINITY);
    /* all keys of the slice masked: out = sum(V)/key_total = mean(V) * Lk/key_total */
    const float share = K == 0.0f ? (float)((double)p.lk / (double)p.key_total) : 0.0f;
    if (d < p.dv) {
        float v = acc / L;
        /* kept keys all at -inf (additive mask): NaN as the unsplit softmax, lse -inf */
        if (empty) v = M == -INFINITY && K != 0.0f ? __int_as_float(0x7fc00000) : v * share;
        qd_store_float(p.out, p.out_dtype, b * p.os[0] + h * p.os[1] + i * p.os[2] + d, v);
    }
    if (p.lse && blockIdx.y == 0 && lane == 0)
        p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = empty ? -INFINITY : M + logf(L) + shift;
}

#include "cuda/cuda_generic_decode.cuh"

} // namespace

/* QSDPA_CUDA_GENERIC_TILE=4 sends every shape with 8-key tiles to 4-key tiles, the path GPUs
 * with 99 KB blocks take at the largest head dims; anything else: no override. */
static int qsdpa_cuda_generic_tile_override(void) {
    static const int tile = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_TILE", 0);
    return tile;
}

/* Waves of generic blocks the split count aims at, for `blocks` (b, kv head, row block)
 * triples: one below 16, else two (runs 83-85: at 8 one wave was 5-15% faster, its combine
 * reading fewer splits; at 64 two were 30-50% faster; at 16 even). QSDPA_CUDA_GENERIC_WAVES
 * (1-16) overrides it, a benchmark knob. */
static int qsdpa_cuda_generic_waves(int64_t blocks) {
    static const int forced = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_WAVES", 0);
    if (forced >= 1 && forced <= 16) return forced;
    return blocks < 16 ? 1 : 2;
}

/* Whether a block may skip the keys no row of it sees (v27.5): causal (or a window) without an
 * array mask, and every query row sees a key of this call's slice, so no row is fully masked
 * (a fully masked row's output is the mean of V over every key: each one counts). A skipped
 * key would have scored the masked value (the lowest finite score of q's dtype), whose weight
 * underflows to 0 unless every visible score of the row lies within about 104 of it; and a
 * NaN or Inf in a skipped key's V no longer reaches the row. The fast rows skip such tiles
 * the same way. QSDPA_CUDA_GENERIC_SKIP=0 turns it off (a benchmark knob). */
static bool qsdpa_cuda_generic_can_skip(const qsdpa_problem *pr) {
    static const int enabled = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_SKIP", 1);
    return enabled && pr->causal && pr->mask_kind == QSDPA_MASK_NONE && qsdpa_cuda_every_row_sees_a_key(pr);
}

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
    p.skip = qsdpa_cuda_generic_can_skip(pr);
    p.score_shift = pr->score_shift;

    int64_t rows = pr->batch * pr->heads_q * pr->len_q;
    p.rows = rows;
    p.vpitch = (p.dv + 3) / 4 * 4;
    p.k_words = qd_word_path(&p.k) != 0;
    p.v_words = qd_word_path(&p.v) != 0;
    const int64_t folded = pr->group_ratio * pr->len_q;
    void (*kernel)(const gen_params) = gen_decode_choice(&p, folded);
    const int wm = wide_choice(ctx, &p, folded, kernel != nullptr);
    const bool decode = kernel != nullptr && wm == 0;
    size_t smem;
    int tile, min_keys, waves, threads;
    if (wm > 0) {
        /* 16 * wm folded rows a block, 32-key tiles; one wave of resident blocks, a split at least
         * QSDPA_CUDA_GENERIC_WIDE_KEYS keys (default 128) */
        kernel = wide_kernel(p.q_dtype, p.dv, wm);
        p.row_chunks = (folded + 16 * wm - 1) / (16 * wm);
        smem = wide_smem_bytes(wm, p.kpitch, p.vpitch); /* pitches: wide_choice */
        static const int wide_keys = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_WIDE_KEYS", 128);
        tile = WIDE_T, min_keys = wide_keys >= WIDE_T ? wide_keys : WIDE_T, waves = 1, threads = 128 * wm;
        /* SPEC 8.1's mend: K rounds to q's 16-bit type here, so it takes the prefill kernel's shift, and where
         * the scores meet a sink or the lse, each row's constant for generic_combine to take back */
        if (qsdpa_cuda_k_shift_takes(pr) && !pr->score_shift &&
            (st = qsdpa_cuda_k_shift_call(ctx, pr, p.dk, &p.k_shift, &p.score_shift)) != QSDPA_OK)
            return st;
    } else if (decode) {
        /* a block per warp, 4 or 8 rows (gen_decode_choice), 32-key steps; the splits fill one wave
         * of resident warps down to one step each (QSDPA_CUDA_GENERIC_DECODE_KEYS, default 32, sets
         * that floor: at 256, 2K took 128 us against 34, 8K 140 against 47, 32K 163 against 121,
         * run 149; the warp is latency-bound, so more warps per SM win over fewer partials) */
        const int rows_per_block = gen_decode_rows(folded);
        p.row_chunks = (folded + rows_per_block - 1) / rows_per_block;
        p.kpitch = (p.dk + 3) / 4 * 4;
        p.k_vec4 = gen_rows_vec4(&p.k, true); /* gen_decode_choice took K on the words path */
        smem = (size_t)rows_per_block * (p.kpitch + 32 + GEN_DECODE_KGROUPS) * sizeof(float);
        static const int decode_keys = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_DECODE_KEYS", 32);
        tile = 32, min_keys = decode_keys >= 32 ? decode_keys : 32, waves = 1, threads = 32;
    } else {
        p.row_chunks = (folded + GEN_ROWS - 1) / GEN_ROWS;
        tile = gen_tile(p.dk, p.dv);
        /* 4 keys where 8 exceed the device's per-block shared memory (the static part: 2 x 8 int64),
         * or where QSDPA_CUDA_GENERIC_TILE=4 asks for it (the coverage test runs that path on any GPU) */
        if (tile == 8 && (gen_smem_floats(gen_kpitch(p.dk, 8), p.vpitch, 8) * sizeof(float) + 128 >
                              (size_t)ctx->cuda->smem_optin ||
                          qsdpa_cuda_generic_tile_override() == 4))
            tile = 4;
        p.kpitch = gen_kpitch(p.dk, tile);
        smem = gen_smem_floats(p.kpitch, p.vpitch, tile) * sizeof(float);
        const int dpl = p.dv <= 128 ? 1 : p.dv <= 256 ? 2 : p.dv <= 512 ? 4 : 8;
        /* the tile rule bounds Dv: T 32 has Dv < 256, T 16 Dv < 512; T 4 runs DPL 8 for any Dv */
        kernel = tile == 4    ? generic_attention<4, 8>
                 : tile == 32 ? (dpl == 1 ? generic_attention<32, 1> : generic_attention<32, 2>)
                 : tile == 16 ? (dpl == 1 ? generic_attention<16, 1> : dpl == 2 ? generic_attention<16, 2> : generic_attention<16, 4>)
                              : (dpl == 1   ? generic_attention<8, 1>
                                 : dpl == 2 ? generic_attention<8, 2>
                                 : dpl == 4 ? generic_attention<8, 4>
                                            : generic_attention<8, 8>);
        min_keys = 64, threads = GEN_WARPS * 32;
        waves = qsdpa_cuda_generic_waves(pr->batch * pr->heads_kv * p.row_chunks);
    }
    const int64_t blocks = pr->batch * pr->heads_kv * p.row_chunks;
    if (rows > 0x7fffffff || blocks > 0x7fffffff)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "B*Hq*Lq = %lld rows exceed the generic kernel's grid",
                          (long long)rows);
    /* the 48 KB a block gets without opting in counts the kernels' static arrays too (under 2 KB): a
     * wide block of exactly 48 KB dynamic (Dk 160, Dv 128, four row tiles) failed its launch with
     * cudaErrorInvalidValue (test_cuda_random, run 178) */
    if (smem + 4096 > 48 * 1024) {
        cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "configuring the generic kernel");
    }
    /* splits: whole waves of the blocks that fit an SM, a split at least min_keys keys and
     * whole tiles */
    int per_sm = 0;
    cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "sizing the generic kernel");
    int64_t want = (int64_t)(per_sm > 0 ? per_sm : 1) * ctx->cuda->sm_count * waves;
    int64_t nsplit = (want + blocks - 1) / blocks;
    int64_t max_split = (pr->len_k + min_keys - 1) / min_keys;
    if (nsplit > max_split) nsplit = max_split;
    if (nsplit > 65535) nsplit = 65535;
    if (nsplit < 1) nsplit = 1;
    p.keys_per_split = ((pr->len_k + nsplit - 1) / nsplit + tile - 1) / tile * tile;
    p.nsplit = (int)((pr->len_k + p.keys_per_split - 1) / p.keys_per_split);

    size_t floats_per = (size_t)(4 + p.dv), bytes;
    if (!qsdpa_mul_size((size_t)rows * floats_per, (size_t)p.nsplit * sizeof(float), &bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "generic-kernel scratch overflows size_t");
    void *scratch;
    if ((st = qsdpa_cuda_scratch(ctx, bytes, &scratch)) != QSDPA_OK) return st;
    p.part = (float *)scratch;

    cudaStream_t stream = qsdpa_cuda_stream(ctx);
    dim3 grid((unsigned)blocks, (unsigned)p.nsplit);
    kernel<<<grid, threads, smem, stream>>>(p);
    qsdpa_set_route(ctx, nullptr, wm > 0 ? "cuda.generic.wide" : decode ? "cuda.generic.decode" : "cuda.generic");
    if ((st = qsdpa_cuda_launch_status(fn, wm > 0   ? "generic_wide"
                                           : decode ? "generic_decode"
                                                    : "generic_attention")) != QSDPA_OK)
        return st;
    generic_combine<<<dim3((unsigned)rows, (unsigned)((p.dv + 31) / 32)), GEN_WARPS * 32, 0, stream>>>(p, rows);
    return qsdpa_cuda_launch_status(fn, "generic_combine");
}

/* Table entry of cuda.generic: long queries it can stage go to the f16 tensor-core rows, short
 * ones a wider row's decode kernel reads in place go there (padded; with their scale planes copied
 * aligned first where those are not one aligned block), short ones it can repack to a fast row's
 * head dim go there (all cuda_staged.cu), the rest to qsdpa_cuda_generic_run (the one-warp decode
 * kernel, the wide kernel or generic_attention). The fast rows' hand-offs call qsdpa_cuda_generic_run
 * directly, so a staged or repacked problem never comes back here; the 2/3/5/6-bit rows
 * (qsdpa_cuda_widened_run) call this entry, and the copies it makes are 4/8-bit or f16 rows, which do not. */
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p) {
    if (qsdpa_cuda_staged_takes(ctx, p)) return qsdpa_cuda_staged_run(ctx, p, qsdpa_cuda_generic_run);
    if (qsdpa_cuda_padded_takes(p)) return qsdpa_cuda_padded_run(ctx, p);
    if (qsdpa_cuda_padded_realign_takes(p)) return qsdpa_cuda_realigned_run(ctx, p, qsdpa_cuda_padded_run);
    if (qsdpa_cuda_repacked_takes(p)) return qsdpa_cuda_repacked_run(ctx, p, qsdpa_cuda_generic_run);
    return qsdpa_cuda_generic_run(ctx, p);
}
