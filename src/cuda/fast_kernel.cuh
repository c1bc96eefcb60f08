/* The tensor-core attention kernel over a quantized KV cache (decode and
 * prefill), one template over (Dk, Dv, K format, V format).
 *
 * Rows: the GQA group is folded into the query rows, row f = i * ratio + hg
 * (query position i, head hg of the group), so every K/V tile a CTA loads
 * serves all heads of the group and all its query positions.
 * A CTA = 4 warps = WM row warps x WN key warps (WM = 1, 2 or 4, chosen at run
 * time): 16 * WM rows; each warp owns 16 rows and 64 / WN keys of every
 * 64-key tile. Up to 64 rows (decode, DEC_MAX_ROWS) the split-K kernel of fast_decode.cuh
 * serves instead; this kernel takes them only where that one's limits
 * (qsdpa_cuda_use_decode_kernel: f32 affine scales, scale rows that are not
 * one aligned block, huge strides) or QSDPA_CUDA_TILE_DECODE=1 say so, then
 * with WM = 1: four warps split each tile.
 * Keys: tiles of 64 stream through a 3-stage cp.async pipeline of packed
 * codes and raw scales; each warp dequantizes its keys straight into mma
 * fragments (fast_formats.cuh), so dequantized K/V never touch shared memory.
 * Q.K^T and P.V run on mma.sync m16n8k16 (f16 in, f32 accumulate); the
 * online softmax is in log2 units. Split-K: the key range is cut into
 * `nsplit` slices; each CTA writes (m, l, o) partials and split_merge merges
 * them (a second launch, overlapped by programmatic dependent launch).
 * Causal/window: tiles outside the CTA's visible range are skipped; the host
 * routes rows with no visible key at all (and partial mode with a bool mask)
 * to the generic kernel, which keeps the reference's semantics there. */
#ifndef QSDPA_CUDA_FAST_KERNEL_CUH
#define QSDPA_CUDA_FAST_KERNEL_CUH

#include <float.h>
#include <string.h>

#include "cuda/fast_formats.cuh"
#if defined(QSDPA_CUDA_DEC_TRACE) && QSDPA_CUDA_DEC_TRACE
#include <stdio.h> /* the diagnostic build's device printf */
#endif

namespace qfast {

/* Diagnostic build (QSDPA_CUDA_DEC_TRACE=1, never the default): the first and last CTA
 * of each launch print clock64 and globaltimer marks of their phases, so a device
 * run can show where a decode call's fixed time goes (bench/gpu_durations.sh). */
#ifndef QSDPA_CUDA_DEC_TRACE
#define QSDPA_CUDA_DEC_TRACE 0
#endif
__device__ __forceinline__ unsigned long long dec_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Keys per tile and CTAs per SM the register budget is cut for. Compile-time
 * knobs so the device script can time variants of one source (bench/NOTES.md). */
#ifndef QSDPA_CUDA_MIN_BLOCKS
#define QSDPA_CUDA_MIN_BLOCKS 2
#endif
/* Keys per tile: 128 when K and V are both <= 4 bits (run 3: 4-bit 32K decode 62 us vs 79 us at 64),
 * 64 otherwise (8-bit and f16 rows were slower at 128: their stages no longer fit two CTAs per SM). */
template <class FK, class FV>
constexpr int tile_keys() {
#ifdef QSDPA_CUDA_BN
    return QSDPA_CUDA_BN;
#else
    return FK::bits <= 4 && FV::bits <= 4 ? 128 : 64;
#endif
}
constexpr int THREADS = 128;

struct fast_params : qd_io {
    int64_t hkv, lq, lk, ratio, key_offset, key_total, window;
    int causal;
    int wm;                  /* row warps (1, 2, 4); WN = 4 / wm */
    int64_t rows;            /* ratio * Lq folded rows */
    int nrb;                 /* row blocks: 16 * wm rows (tile kernel), 8 * NR (decode kernel) */
    int nsplit, tiles_per_split;
    float scale_log2;        /* scale * log2(e) */
    float masked_log2;       /* masked score * log2(e), clamped finite */
    int scales_vec;          /* 1: a tile's scales are one 16-byte-aligned block; 0: 4-byte rows */
    float *part_o;           /* [nsplit][B*Hkv][rows][Dv] */
    float *part_ml;          /* [nsplit][B*Hkv][rows][2] */
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Shared-memory geometry of one instantiation. */
template <int DK, int DV, class FK_, class FV_>
struct layout {
    using FK = FK_;
    using FV = FV_;
    static constexpr int THREADS = qfast::THREADS;
    static constexpr int BN = tile_keys<FK, FV>();
    static constexpr int WK = DK * FK::bits / 32, WV = DV * FV::bits / 32; /* words per row */
    static constexpr int CWK = WK / 4, CWV = WV / 4;                        /* 16-byte chunks per row */
    static constexpr int RSV = WV + 4;  /* V row stride: rows 2c of a warp land 8 banks apart */
    static constexpr int GK = FK::has_scales ? DK / FK::group : 0, GV = FV::has_scales ? DV / FV::group : 0;
    static constexpr int SBYTES = 4;    /* largest stored scale element (f32) */
    static constexpr int KS_BYTES = (BN * GK * SBYTES + 15) / 16 * 16;
    static constexpr int VS_BYTES = (BN * GV * SBYTES + 15) / 16 * 16;
    static constexpr int K_BYTES = BN * WK * 4, V_BYTES = BN * RSV * 4;
    static constexpr int STAGE_BYTES = K_BYTES + V_BYTES + 2 * KS_BYTES + 2 * VS_BYTES;
    static constexpr int SB_BYTES = BN * (GK + GV) * 4;     /* converted half2 {scale, bias} */
    static constexpr int OSTRIDE = DV + 1;                           /* padded o row: 2-way, not 16-way, conflicts */
    static constexpr int COMBINE_BYTES = 4 * (16 * OSTRIDE + 32) * 4; /* per-warp o [16][OSTRIDE], m[16], l[16] */
    /* cp.async depth: 4 stages of small (4-bit) tiles, 3 of wide ones, so two CTAs fit an SM */
    static constexpr int STAGES = STAGE_BYTES <= 16384 ? 4 : 3;
    static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
    static constexpr int BYTES = (PIPE_BYTES > COMBINE_BYTES ? PIPE_BYTES : COMBINE_BYTES) + SB_BYTES;
    /* 32-bit word of 16-byte chunk c of key row r in a stage's K and V regions */
    __device__ static int k_slot(int r, int c);
    __device__ static int v_slot(int r, int c) { return r * RSV + c * 4; }
};

/* Swizzle of K's 16-byte chunks: odd rows of wide rows flip chunk bit 2, so the
 * two rows of an 8-lane LDS.128 phase use disjoint banks. */
template <int CW>
__device__ __forceinline__ int k_chunk(int row, int chunk) {
    return CW >= 8 ? chunk ^ ((row & 1) << 2) : chunk;
}

template <int DK, int DV, class FK, class FV>
__device__ __forceinline__ int layout<DK, DV, FK, FV>::k_slot(int r, int c) {
    return r * WK + k_chunk<CWK>(r, c) * 4;
}

/* Copies tile `tile` of the (b, g) head's packed rows and raw scales into a stage of layout L
 * (any struct with layout's members: the tile kernel's, the prefill kernel's). */
template <class L>
__device__ __forceinline__ void load_tile(const fast_params &p, char *stage, int64_t b, int64_t g, int tile, int tid) {
    using FK = typename L::FK;
    using FV = typename L::FV;
    const int64_t key0 = (int64_t)tile * L::BN;
    uint32_t *sk = (uint32_t *)stage;
    uint32_t *sv = (uint32_t *)(stage + L::K_BYTES);
    const char *kc = (const char *)p.k.codes + b * p.k.cs[0] + g * p.k.cs[1];
    const char *vc = (const char *)p.v.codes + b * p.v.cs[0] + g * p.v.cs[1];
    for (int idx = tid; idx < L::BN * L::CWK; idx += L::THREADS) {
        int r = idx / L::CWK, c = idx % L::CWK;
        int64_t key = key0 + r;
        bool ok = key < p.lk;
        cp_async16(sk + L::k_slot(r, c), ok ? kc + key * p.k.cs[2] + c * 16 : kc, ok ? 16 : 0);
    }
    for (int idx = tid; idx < L::BN * L::CWV; idx += L::THREADS) {
        int r = idx / L::CWV, c = idx % L::CWV;
        int64_t key = key0 + r;
        bool ok = key < p.lk;
        cp_async16(sv + L::v_slot(r, c), ok ? vc + key * p.v.cs[2] + c * 16 : vc, ok ? 16 : 0);
    }
    /* raw scales and biases: [L::BN][G] elements of the stored dtype */
    char *dst = stage + L::K_BYTES + L::V_BYTES;
    const qd_qtensor *ts[2] = {&p.k, &p.v};
    const int gs[2] = {L::GK, L::GV};
    const int bytes_of[2] = {L::KS_BYTES, L::VS_BYTES};
#pragma unroll
    for (int t = 0; t < 2; t++) {
        const qd_qtensor &x = *ts[t];
        if (gs[t] == 0) continue;
        int es = x.scale_dtype == QSDPA_DTYPE_F32 ? 4 : x.scale_dtype == QSDPA_DTYPE_U8 ? 1 : 2;
        int row_bytes = gs[t] * es;
        const bool biases = t == 0 ? FK::has_biases : FV::has_biases;
        const int nsrc = biases ? 2 : 1;
        for (int s = 0; s < nsrc; s++) {
            const char *base = (const char *)(s == 0 ? x.scales : x.biases);
            const int64_t *st = s == 0 ? x.ss : x.bs;
            base += (b * st[0] + g * st[1]) * es;
            if (p.scales_vec) {
                int64_t valid = p.lk - key0 < L::BN ? (p.lk - key0) * row_bytes : (int64_t)L::BN * row_bytes;
                const char *src = base + key0 * row_bytes;
                for (int c = tid; c < L::BN * row_bytes / 16; c += L::THREADS) {
                    int64_t left = valid - (int64_t)c * 16;
                    int nb = left >= 16 ? 16 : left > 0 ? (int)left : 0;
                    cp_async16(dst + c * 16, nb ? src + c * 16 : base, nb);
                }
            } else {
                int words = row_bytes / 4;
                for (int idx = tid; idx < L::BN * words; idx += L::THREADS) {
                    int r = idx / words, w = idx % words;
                    int64_t key = key0 + r;
                    bool ok = key < p.lk;
                    cp_async4(dst + r * row_bytes + w * 4, ok ? base + key * st[2] * es + w * 4 : base, ok ? 4 : 0);
                }
            }
            dst += bytes_of[t];
        }
        if (!biases) dst += bytes_of[t];
    }
}

/* n stored (scale, bias) -> half2; the dtype switch stays outside the loop. */
template <class F>
__device__ __forceinline__ void convert_group_table(const char *s, const char *z, half2 *out, int n, int dtype,
                                                    float gscale, int tid) {
    if constexpr (F::mode == QSDPA_MODE_AFFINE) {
        if (dtype == QSDPA_DTYPE_F16) {
            for (int i = tid; i < n; i += THREADS)
                out[i] = __halves2half2(((const __half *)s)[i], ((const __half *)z)[i]);
            return;
        }
    }
    for (int i = tid; i < n; i += THREADS) out[i] = F::scale_bias(s, z, dtype, i, gscale);
}

/* Raw stored scales of a stage -> half2 {scale, bias} tables sbk [L::BN][GK], sbv [L::BN][GV]. */
template <class L>
__device__ __forceinline__ void convert_scales(const fast_params &p, const char *stage, half2 *sbk, half2 *sbv, int tid) {
    using FK = typename L::FK;
    using FV = typename L::FV;
    const char *ks = stage + L::K_BYTES + L::V_BYTES;
    const char *kz = ks + L::KS_BYTES;
    const char *vs = kz + L::KS_BYTES;
    const char *vz = vs + L::VS_BYTES;
    convert_group_table<FK>(ks, kz, sbk, L::BN * L::GK, p.k.scale_dtype, p.k.global_scale, tid);
    convert_group_table<FV>(vs, vz, sbv, L::BN * L::GV, p.v.scale_dtype, p.v.global_scale, tid);
}

template <int DK, int DV, class FK, class FV>
__global__ void __launch_bounds__(THREADS, QSDPA_CUDA_MIN_BLOCKS) fast_attention(const fast_params p) {
    using L = layout<DK, DV, FK, FV>;
    constexpr int KSTEPS = DK / 16;           /* k16 steps of Q.K */
    constexpr int NT = DV / 8;                /* n8 tiles of P.V */
    constexpr int KWPT = L::WK / 4;           /* K words per thread per key row */
    constexpr int KUW = KWPT < 4 ? KWPT : 4;  /* words per K shared load */
    constexpr int KPAIRS = KWPT * FK::U / 2;  /* = DK / 8 half2 per key row */
    static_assert(KPAIRS == 2 * KSTEPS, "K pairs");
    static_assert(L::WV % 8 == 0, "V words per row must split over 8 lanes");
    extern __shared__ __align__(16) char smem[];
    half2 *sbk = (half2 *)(smem + (L::PIPE_BYTES > L::COMBINE_BYTES ? L::PIPE_BYTES : L::COMBINE_BYTES));
    half2 *sbv = sbk + L::BN * L::GK;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gq = lane >> 2, c4 = lane & 3;
    const int wm_n = p.wm, wn_n = 4 / p.wm;
    const int wrow = warp / wn_n, wcol = warp % wn_n;
    const int rb = p.nrb - 1 - (int)blockIdx.x; /* heaviest (latest causal) row blocks first */
    const int split = blockIdx.y;
    const int64_t bh = blockIdx.z, b = bh / p.hkv, g = bh % p.hkv;
    const int64_t f_cta = (int64_t)rb * 16 * wm_n;               /* first folded row of the CTA */
    const int64_t f_warp = f_cta + 16 * wrow;
    const int64_t f_end = min(p.rows, f_cta + 16 * wm_n);

    /* visible key range of the CTA's rows (local indices), tile-aligned */
    int64_t lo = 0, hi = p.lk - 1;
    if (p.causal) {
        int64_t i_min = f_cta / p.ratio, i_max = (f_end - 1) / p.ratio;
        int64_t shift = p.key_total - p.lq - p.key_offset;
        hi = min(hi, i_max + shift);
        if (p.window > 0) lo = max((int64_t)0, i_min + shift - p.window + 1);
    }
    int t0 = split * p.tiles_per_split, t1 = t0 + p.tiles_per_split;
    int ntiles_all = (int)((p.lk + L::BN - 1) / L::BN);
    if (t1 > ntiles_all) t1 = ntiles_all;
    if (hi >= lo) {
        t0 = max(t0, (int)(lo / L::BN));
        t1 = min(t1, (int)(hi / L::BN) + 1);
    } else {
        t1 = t0;
    }
    constexpr int STAGES = L::STAGES;
    /* key indices fit int: the host sends Lk >= 2^31 to the generic kernel */
    const int kend = (int)min(min(p.lk, (int64_t)(split + 1) * p.tiles_per_split * L::BN), hi + 1);

    /* my two rows (g and g+8 of the warp's 16) and their query position / head */
    int64_t fr[2];
    int ir[2], hr[2], last[2];
    bool rv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        fr[r] = f_warp + gq + 8 * r;
        rv[r] = fr[r] < p.rows;
        ir[r] = rv[r] ? (int)(fr[r] / p.ratio) : 0;
        hr[r] = (int)(g * p.ratio + (rv[r] ? fr[r] % p.ratio : 0));
        last[r] = (int)(ir[r] + p.key_total - p.lq - p.key_offset); /* last visible local key */
    }

    /* last visible local key of the CTA's first and final query rows */
    const int last_lo = (int)(f_cta / p.ratio + p.key_total - p.lq - p.key_offset);
    const int last_hi = (int)((f_end - 1) / p.ratio + p.key_total - p.lq - p.key_offset);

    /* pipeline prologue first: the first K/V tiles stream in while q is read */
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (t0 + s < t1) load_tile<L>(p, smem + s * L::STAGE_BYTES, b, g, t0 + s, tid);
        cp_async_commit();
    }

    /* Q fragments, permuted to match the K pair order */
    uint32_t qa[KSTEPS][4];
    {
        const int kw_unit = KUW; /* words of one unit */
#pragma unroll
        for (int s = 0; s < KSTEPS; s++) {
#pragma unroll
            for (int half = 0; half < 2; half++) { /* pair 2s (a0/a1) and 2s+1 (a2/a3) */
                int P = 2 * s + half;
                int wl = P / (FK::U / 2), pp = P % (FK::U / 2);
                int unit = wl / kw_unit, wj = wl % kw_unit;
                int word = (c4 + 4 * unit) * kw_unit + wj;
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    float v0 = 0.0f, v1 = 0.0f;
                    if (rv[r]) {
                        int64_t base = b * p.qs[0] + hr[r] * p.qs[1] + ir[r] * p.qs[2];
                        v0 = qd_load_float(p.q, p.q_dtype, base + word * FK::U + FK::k_order(pp, 0));
                        v1 = qd_load_float(p.q, p.q_dtype, base + word * FK::U + FK::k_order(pp, 1));
                    }
                    qa[s][half * 2 + r] = h2u(__floats2half2_rn(v0, v1));
                }
            }
        }
    }

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int t = t0; t < t1; t++) {
        const int it = t - t0;
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < t1)
            load_tile<L>(p, smem + ((it + STAGES - 1) % STAGES) * L::STAGE_BYTES, b, g, t + STAGES - 1, tid);
        cp_async_commit();
        const char *stage = smem + (it % STAGES) * L::STAGE_BYTES;
        if (FK::has_scales || FV::has_scales) {
            convert_scales<L>(p, stage, sbk, sbv, tid);
            __syncthreads();
        }
        const uint32_t *sk = (const uint32_t *)stage;
        const uint32_t *sv = (const uint32_t *)(stage + L::K_BYTES);
        /* no mask, no end of range, every key visible to every row of the CTA: scores need no checks */
        const bool plain_tile = p.mask_kind == QSDPA_MASK_NONE && (t + 1) * L::BN <= kend &&
                                (!p.causal || ((t + 1) * L::BN - 1 <= last_lo &&
                                               (p.window <= 0 || t * L::BN > last_hi - p.window)));

        for (int ch = wcol; ch < L::BN / 16; ch += wn_n) {
            /* S = Q K^T for 16 keys: two n8 tiles */
            float sc[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const int kr = ch * 16 + nt * 8 + gq; /* key row in the tile */
                uint32_t kw[KWPT];
#pragma unroll
                for (int u = 0; u < KWPT / KUW; u++) {
                    const uint32_t *src = sk + kr * L::WK + k_chunk<L::CWK>(kr, (c4 + 4 * u) * KUW / 4) * 4 +
                                          ((c4 + 4 * u) * KUW) % 4;
                    if (KUW == 4) {
                        uint4 x = *(const uint4 *)src;
                        kw[u * 4 + 0] = x.x; kw[u * 4 + 1] = x.y; kw[u * 4 + 2] = x.z; kw[u * 4 + 3] = x.w;
                    } else if (KUW == 2) {
                        uint2 x = *(const uint2 *)src;
                        kw[u * 2 + 0] = x.x; kw[u * 2 + 1] = x.y;
                    } else {
                        kw[u] = *src;
                    }
                }
                /* two accumulators (even / odd k steps) halve the dependent mma chain */
                float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                for (int wl = 0; wl < KWPT; wl++) {
                    const int word = (c4 + 4 * (wl / KUW)) * KUW + wl % KUW;
                    half2 sb = FK::has_scales ? sbk[kr * L::GK + word * FK::U / FK::group] : __floats2half2_rn(1.f, 0.f);
                    half2 kv[FK::U / 2];
                    FK::k_word(kw[wl], sb, kv);
                    if constexpr (FK::U / 2 >= 2) {
#pragma unroll
                        for (int pp = 0; pp < FK::U / 2; pp += 2) {
                            const int P = wl * (FK::U / 2) + pp; /* even: k step P/2 */
                            mma16816(acc[(P / 2) & 1], qa[P / 2], h2u(kv[pp]), h2u(kv[pp + 1]));
                        }
                    } else if (wl & 1) {
                        /* one pair per word: words wl-1, wl form one k step */
                        half2 prev[1];
                        FK::k_word(kw[wl - 1], FK::has_scales ? sbk[kr * L::GK + ((c4 + 4 * ((wl - 1) / KUW)) * KUW +
                                                                                  (wl - 1) % KUW) * FK::U / FK::group]
                                                             : __floats2half2_rn(1.f, 0.f),
                                   prev);
                        mma16816(acc[((wl - 1) / 2) & 1], qa[(wl - 1) / 2], h2u(prev[0]), h2u(kv[0]));
                    }
                }
#pragma unroll
                for (int k = 0; k < 4; k++) sc[nt][k] = acc[0][k] + acc[1][k];
            }
            /* scale, mask, online softmax (rows gq and gq+8) */
            float mx[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int j = t * L::BN + ch * 16 + nt * 8 + 2 * c4 + e;
                        float s = sc[nt][2 * r + e] * p.scale_log2;
                        if (plain_tile) {
                        } else if (j >= kend) s = -INFINITY;
                        else {
                            bool keep = true;
                            if (p.causal) keep = j <= last[r] && !(p.window > 0 && j <= last[r] - p.window);
                            if (keep && p.mask_kind != QSDPA_MASK_NONE && rv[r]) {
                                int64_t at = b * p.ms[0] + hr[r] * p.ms[1] + ir[r] * p.ms[2] + (int64_t)j * p.ms[3];
                                if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
                                else s += qd_load_float(p.mask, p.mask_dtype, at) * 1.4426950408889634f;
                            }
                            if (!keep) s = p.masked_log2;
                        }
                        sc[nt][2 * r + e] = s;
                        mx[r] = fmaxf(mx[r], s);
                    }
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            }
            float corr[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mn = fmaxf(m[r], mx[r]);
                corr[r] = mn == -INFINITY ? 1.0f : fast_exp2(m[r] - mn);
                m[r] = mn;
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float s = sc[nt][2 * r + e];
                        sc[nt][2 * r + e] = mn == -INFINITY ? 0.0f : fast_exp2(s - mn);
                    }
                l[r] = l[r] * corr[r] + sc[0][2 * r] + sc[0][2 * r + 1] + sc[1][2 * r] + sc[1][2 * r + 1];
            }
            if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    o[n][0] *= corr[0]; o[n][1] *= corr[0];
                    o[n][2] *= corr[1]; o[n][3] *= corr[1];
                }
            }
            uint32_t pa[4];
            pa[0] = h2u(__floats2half2_rn(sc[0][0], sc[0][1]));
            pa[1] = h2u(__floats2half2_rn(sc[0][2], sc[0][3]));
            pa[2] = h2u(__floats2half2_rn(sc[1][0], sc[1][1]));
            pa[3] = h2u(__floats2half2_rn(sc[1][2], sc[1][3]));

            /* O += P V: keys ch*16 + {2c, 2c+1} (b0) and {2c+8, 2c+9} (b1) */
            const int r0 = ch * 16 + 2 * c4;
#pragma unroll
            for (int a = 0; a < L::WV / 8; a++) {
                const int word = a * 8 + gq;
                const int gi = FV::has_scales ? word * FV::U / FV::group : 0;
                half2 vb0[FV::U], vb1[FV::U];
                {
                    half2 sa = FV::has_scales ? sbv[r0 * L::GV + gi] : __floats2half2_rn(1.f, 0.f);
                    half2 sb = FV::has_scales ? sbv[(r0 + 1) * L::GV + gi] : sa;
                    FV::v_words(sv[r0 * L::RSV + word], sv[(r0 + 1) * L::RSV + word], __lows2half2(sa, sb),
                                __highs2half2(sa, sb), vb0);
                }
                {
                    half2 sa = FV::has_scales ? sbv[(r0 + 8) * L::GV + gi] : __floats2half2_rn(1.f, 0.f);
                    half2 sb = FV::has_scales ? sbv[(r0 + 9) * L::GV + gi] : sa;
                    FV::v_words(sv[(r0 + 8) * L::RSV + word], sv[(r0 + 9) * L::RSV + word], __lows2half2(sa, sb),
                                __highs2half2(sa, sb), vb1);
                }
#pragma unroll
                for (int e = 0; e < FV::U; e++) mma16816(o[a * FV::U + e], pa, h2u(vb0[e]), h2u(vb1[e]));
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif

    /* quad-reduce l; merge the WN key warps of each row block through shared memory */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    constexpr int OS = L::OSTRIDE, WB = 16 * L::OSTRIDE + 32; /* per-warp block: o [16][OS], m[16], l[16] */
    float *cw = (float *)smem + warp * WB;
    float *cm = cw + 16 * OS, *cl = cm + 16;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int a = n / FV::U, e = n % FV::U;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int row = gq + 8 * (k >> 1), col = 2 * c4 + (k & 1);
            cw[row * OS + (a * 8 + col) * FV::U + e] = o[n][k];
        }
    }
    if (c4 == 0) {
        cm[gq] = m[0]; cm[gq + 8] = m[1];
        cl[gq] = l[0]; cl[gq + 8] = l[1];
    }
    __syncthreads();
    /* thread -> (row of the CTA, column block): merged m, l, o for 16*WM rows */
    const int crows = 16 * wm_n;
    const bool single = p.nsplit == 1;
    const int64_t bhrows = bh * p.rows;
    for (int idx = tid; idx < crows * DV; idx += THREADS) {
        const int row = idx / DV, d = idx % DV;
        const int wr = row / 16, rr = row % 16;
        const int64_t f = f_cta + row;
        if (f >= p.rows) continue;
        float M = -INFINITY;
        for (int w = 0; w < wn_n; w++) M = fmaxf(M, ((float *)smem + (wr * wn_n + w) * WB + 16 * OS)[rr]);
        float Ls = 0.0f, O = 0.0f;
        for (int w = 0; w < wn_n; w++) {
            const float *bw = (float *)smem + (wr * wn_n + w) * WB;
            float mw = bw[16 * OS + rr], lw = bw[16 * OS + 16 + rr];
            float cf = (mw == -INFINITY) ? 0.0f : fast_exp2(mw - M);
            Ls += lw * cf;
            O += bw[rr * OS + d] * cf;
        }
        if (single) {
            const int64_t i = f / p.ratio, h = g * p.ratio + f % p.ratio;
            float sink = p.sinks ? qd_load_float(p.sinks, p.sinks_dtype, h) * 1.4426950408889634f : -INFINITY;
            float MM = fmaxf(M, sink);
            float c = M == -INFINITY ? 0.0f : fast_exp2(M - MM);
            float LL = Ls * c + (p.sinks ? fast_exp2(sink - MM) : 0.0f);
            float v = MM == -INFINITY ? __int_as_float(0x7fc00000) : O * c / LL; /* every key -inf: NaN, as MLX */
            qd_store_float(p.out, p.out_dtype, b * p.os[0] + h * p.os[1] + i * p.os[2] + d, v);
            if (p.lse && d == 0)
                p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] =
                    MM == -INFINITY ? -INFINITY : (MM + log2f(LL)) * 0.6931471805599453f;
        } else {
            const int64_t prow = (int64_t)split * gridDim.z * p.rows + bhrows + f; /* [split][bh][f] */
            p.part_o[prow * DV + d] = O;
            if (d == 0) { p.part_ml[prow * 2] = M; p.part_ml[prow * 2 + 1] = Ls; }
        }
    }
}

/* Split-K merge, one block per (b, kv head, folded row) and 32 output columns:
 * every warp first reduces the global max over the splits' m (so the split
 * loop carries no online-softmax dependency and its loads pipeline), then warp
 * w sums the splits s = w, w + 4, ..., lane l column 32 * blockIdx.y + l; the
 * four warp sums meet in shared memory. Launched right behind the attention
 * kernel with programmatic dependent launch on sm_90, so its launch overlaps
 * that kernel's tail (griddepcontrol.wait orders the reads). */
template <int DV>
__global__ void __launch_bounds__(128) split_merge(const fast_params p) {
#if QSDPA_CUDA_DEC_TRACE
    const unsigned long long t_entry = dec_globaltimer();
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
#if QSDPA_CUDA_DEC_TRACE
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0)
        printf("TRACE merge block 0 | gt entry %llu after wait %llu\n", t_entry, dec_globaltimer());
#endif
    __shared__ float so[4][32], sl[4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t prow0 = blockIdx.x; /* bh * rows + f */
    const int64_t bh = prow0 / p.rows, f = prow0 % p.rows;
    const int64_t sstride = (int64_t)gridDim.x;
    const int d = blockIdx.y * 32 + lane;
    float M = -INFINITY;
    for (int s = lane; s < p.nsplit; s += 32) M = fmaxf(M, p.part_ml[((int64_t)s * sstride + prow0) * 2]);
#pragma unroll
    for (int x = 16; x > 0; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
    float Ls = 0.0f, O = 0.0f;
#pragma unroll 4
    for (int s = warp; s < p.nsplit; s += 4) {
        const int64_t prow = (int64_t)s * sstride + prow0;
        const float ms = p.part_ml[prow * 2], ls = p.part_ml[prow * 2 + 1];
        const float os = d < DV ? p.part_o[prow * DV + d] : 0.0f;
        if (ms != -INFINITY) { /* a split that saw no key contributes nothing */
            const float w = fast_exp2(ms - M);
            Ls += ls * w;
            O += os * w;
        }
    }
    so[warp][lane] = O;
    if (lane == 0) sl[warp] = Ls;
    __syncthreads();
    if (warp) return;
    const int64_t b = bh / p.hkv, g = bh % p.hkv;
    const int64_t i = f / p.ratio, h = g * p.ratio + f % p.ratio;
    const float sink = p.sinks ? qd_load_float(p.sinks, p.sinks_dtype, h) * 1.4426950408889634f : -INFINITY;
    const float MM = fmaxf(M, sink);
    const float c = M == -INFINITY ? 0.0f : fast_exp2(M - MM);
    const float LL = (sl[0] + sl[1] + sl[2] + sl[3]) * c + (p.sinks && MM != -INFINITY ? fast_exp2(sink - MM) : 0.0f);
    if (d < DV) {
        const float o = (so[0][lane] + so[1][lane] + so[2][lane] + so[3][lane]) * c;
        const float v = MM == -INFINITY ? __int_as_float(0x7fc00000) : o / LL; /* every key -inf: NaN, as MLX */
        qd_store_float(p.out, p.out_dtype, b * p.os[0] + h * p.os[1] + i * p.os[2] + d, v);
    }
    if (p.lse && blockIdx.y == 0 && lane == 0)
        p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = MM == -INFINITY ? -INFINITY : (MM + log2f(LL)) * 0.6931471805599453f;
}

} // namespace qfast

#include "cuda/fast_decode.cuh"
#include "cuda/fast_prefill.cuh"

/* Host side: choose the configuration and launch one instantiation. */
qsdpa_status qsdpa_cuda_fast_launch_setup(qsdpa_context *ctx, const qsdpa_problem *pr, int smem_bytes,
                                          int ctas_per_sm, int bn, int block_rows, bool partials,
                                          qfast::fast_params *p, dim3 *grid, bool *use_generic);

/* Decode kernel for short queries unless QSDPA_CUDA_TILE_DECODE=1 (read once): that
 * variable keeps the tile kernel for every Lq, so the device script can time both. */
bool qsdpa_cuda_use_decode_kernel(const qsdpa_problem *pr);

/* Blocks per SM of a kernel at a shared-memory size, read once per device into
 * cache (it sizes split-K), returned in *blocks. */
template <class K>
static qsdpa_status qsdpa_cuda_occupancy(qsdpa_context *ctx, K kernel, int threads, int smem_bytes, int *cache,
                                         const char *fn, const char *what, int *blocks) {
    int dev = ctx->cuda->device < 64 ? ctx->cuda->device : 0;
    if (!cache[dev]) {
        cudaError_t err = cudaSuccess;
        if (smem_bytes > 48 * 1024 && smem_bytes <= ctx->cuda->smem_optin)
            err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
        int n = 0;
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem_bytes);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, what);
        cache[dev] = n > 0 ? n : 1;
    }
    *blocks = cache[dev];
    return QSDPA_OK;
}

/* split_merge behind an attention kernel that wrote nsplit partials. */
template <int DV>
static qsdpa_status qsdpa_cuda_launch_split_merge(qsdpa_context *ctx, const qfast::fast_params &p, dim3 grid,
                                                  const char *fn) {
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3((unsigned)(grid.z * p.rows), (unsigned)((DV + 31) / 32));
    cfg.blockDim = dim3(128);
    cfg.stream = qsdpa_cuda_stream(ctx);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    /* PDL only where split_merge was compiled with its griddepcontrol.wait (PTX for sm_90+):
     * an sm_80 build running on Hopper must keep plain stream order. */
    static int merge_ptx = -1;
    if (merge_ptx < 0) {
        cudaFuncAttributes fa;
        merge_ptx = cudaFuncGetAttributes(&fa, qfast::split_merge<DV>) == cudaSuccess ? fa.ptxVersion : 0;
    }
    cfg.numAttrs = ctx->cuda->cc >= 90 && merge_ptx >= 90 ? 1 : 0;
    cudaError_t err = cudaLaunchKernelEx(&cfg, qfast::split_merge<DV>, p);
    if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "split_merge launch");
    return qsdpa_cuda_launch_status(fn, "split_merge");
}

template <int DK, int DV, class FK, class FV, int NR>
static qsdpa_status qsdpa_cuda_decode_run(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn) {
    static int occupancy[64];
    constexpr int smem = qfast::dec_smem<DK, DV, FK, FV, NR>::BYTES;
    auto kernel = qfast::fast_decode<DK, DV, FK, FV, NR>;
    int occ;
    qsdpa_status st =
        qsdpa_cuda_occupancy(ctx, kernel, qfast::DEC_WARPS * 32, smem, occupancy, fn, "configuring fast_decode", &occ);
    if (st != QSDPA_OK) return st;
    qfast::fast_params p;
    dim3 grid;
    bool generic = false;
    /* split-K sized for 2 CTAs (8 warps) per SM even where 4 fit: longer per-warp streams
     * amortise the ring's fill and the partials (run 12: 4-bit 32K 28.8 us vs 30.5 at 4 per SM) */
    st = qsdpa_cuda_fast_launch_setup(ctx, pr, smem, occ < 2 ? occ : 2, qfast::DEC_TILE, 8 * NR, true, &p, &grid,
                                      &generic);
    if (st != QSDPA_OK) return st;
    if (generic) return qsdpa_cuda_generic_run(ctx, pr);
    kernel<<<grid, qfast::DEC_WARPS * 32, smem, qsdpa_cuda_stream(ctx)>>>(p);
    if ((st = qsdpa_cuda_launch_status(fn, "fast_decode")) != QSDPA_OK) return st;
    return qsdpa_cuda_launch_split_merge<DV>(ctx, p, grid, fn);
}

/* The prefill kernel (fast_prefill.cuh) past the decode kernel's rows unless
 * QSDPA_CUDA_TILE_KERNEL=old (read once): the device script times both. */
bool qsdpa_cuda_use_prefill_kernel(void);

template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_prefill_run(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn) {
    using L = qfast::pf_layout<DK, DV, FK, FV>;
    static int occupancy[64];
    int occ;
    auto kernel = qfast::fast_prefill<DK, DV, FK, FV>;
    qsdpa_status st = qsdpa_cuda_occupancy(ctx, kernel, qfast::PF_THREADS, L::BYTES, occupancy, fn,
                                           "configuring fast_prefill", &occ);
    if (st != QSDPA_OK) return st;
    qfast::fast_params p;
    dim3 grid;
    bool generic = false;
    st = qsdpa_cuda_fast_launch_setup(ctx, pr, L::BYTES, occ, L::BN, qfast::PF_ROWS, false, &p, &grid, &generic);
    if (st != QSDPA_OK) return st;
    if (generic) return qsdpa_cuda_generic_run(ctx, pr);
    kernel<<<grid, qfast::PF_THREADS, L::BYTES, qsdpa_cuda_stream(ctx)>>>(p);
    if ((st = qsdpa_cuda_launch_status(fn, "fast_prefill")) != QSDPA_OK || p.nsplit == 1) return st;
    return qsdpa_cuda_launch_split_merge<DV>(ctx, p, grid, fn);
}

template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_fast_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    using L = qfast::layout<DK, DV, FK, FV>;
    const char *fn = pr->lse ? "qsdpa_attention_partial" : "qsdpa_attention";
    if (qsdpa_cuda_use_decode_kernel(pr))
        return pr->group_ratio * pr->len_q <= 8 ? qsdpa_cuda_decode_run<DK, DV, FK, FV, 1>(ctx, pr, fn)
                                                : qsdpa_cuda_decode_run<DK, DV, FK, FV, 2>(ctx, pr, fn);
    if (qsdpa_cuda_use_prefill_kernel()) return qsdpa_cuda_prefill_run<DK, DV, FK, FV>(ctx, pr, fn);
    static int occupancy[64];
    int occ;
    qsdpa_status st = qsdpa_cuda_occupancy(ctx, qfast::fast_attention<DK, DV, FK, FV>, qfast::THREADS, L::BYTES,
                                           occupancy, fn, "configuring fast_attention", &occ);
    if (st != QSDPA_OK) return st;
    qfast::fast_params p;
    dim3 grid;
    bool generic = false;
    st = qsdpa_cuda_fast_launch_setup(ctx, pr, L::BYTES, occ, L::BN, 0, false, &p, &grid, &generic);
    if (st != QSDPA_OK) return st;
    if (generic) return qsdpa_cuda_generic_run(ctx, pr);
    qfast::fast_attention<DK, DV, FK, FV><<<grid, qfast::THREADS, L::BYTES, qsdpa_cuda_stream(ctx)>>>(p);
    if ((st = qsdpa_cuda_launch_status(fn, "fast_attention")) != QSDPA_OK || p.nsplit == 1) return st;
    return qsdpa_cuda_launch_split_merge<DV>(ctx, p, grid, fn);
}

#endif
