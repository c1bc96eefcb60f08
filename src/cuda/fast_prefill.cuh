/* The prefill kernel: more folded rows than the decode kernel takes (long
 * queries), over a quantized KV cache; one template over (Dk, Dv, K format,
 * V format).
 *
 * Each 64-key tile's packed K and V rows are dequantized ONCE per CTA into f16
 * tiles in shared memory, read by the CTA's eight row warps (16 folded rows
 * each, 128 per CTA), so the dequantization is shared by 128 rows. f16 rows
 * skip it: their ring stage is the f16 tile. Packed tiles stream through a
 * 3-stage cp.async ring (load_tile); f16 tiles are 128-byte swizzled
 * (tile_chunk, wgmma.cuh). The online softmax runs once per 64-key tile.
 * Causal and window tiles outside a CTA's rows are skipped; split-K partials
 * and split_merge serve launches with too few row blocks to fill the GPU.
 *
 * sm_90a (wgmma): a fourth warpgroup is the producer (pf_produce): it loads
 * and dequantizes tiles up to 3 ahead into f16 buffers, handing them to the
 * two row warpgroups through named barriers (FULL / EMPTY per buffer), and
 * gives most of its registers to them (setmaxnreg). The row warpgroups run
 * S = Q K^T and O += P V on wgmma, q staged in shared memory.
 * sm_80 (mma.sync, portable): all eight warps load, dequantize tile i into one
 * of two buffers and attend to tile i - 1 from the other, one barrier per step,
 * reading the tiles with ldmatrix.
 * Measured and profiled in bench/NOTES.md (v11, v12, v13). */
#ifndef QSDPA_CUDA_FAST_PREFILL_CUH
#define QSDPA_CUDA_FAST_PREFILL_CUH

#include <type_traits>

#include "cuda/wgmma.cuh"

namespace qfast {

constexpr int PF_BN = 64;            /* keys per tile */
#ifndef QSDPA_CUDA_PF_WARPS
#define QSDPA_CUDA_PF_WARPS 8
#endif
constexpr int PF_WARPS = QSDPA_CUDA_PF_WARPS; /* row warps per CTA, 16 folded rows each (4 or 8) */
constexpr int PF_ROWS = 16 * PF_WARPS;
constexpr int PF_THREADS = 32 * PF_WARPS; /* the row (consumer) threads */
/* sm_90a binaries add a producer warpgroup that loads and dequantizes the tiles (fast_prefill).
 * Two (512 threads, 128 registers each at launch) made ptxas spill ~300 bytes: not tried. */
constexpr int PF_PRODUCER_THREADS = 128;
constexpr int PF_BLOCK_THREADS_WGMMA = PF_THREADS + PF_PRODUCER_THREADS;
#ifdef QSDPA_CUDA_HAVE_WGMMA
#define QSDPA_PF_BLOCK_THREADS (qfast::PF_BLOCK_THREADS_WGMMA)
#define QSDPA_PF_LOAD_THREADS (qfast::PF_PRODUCER_THREADS)
#else
#define QSDPA_PF_BLOCK_THREADS (qfast::PF_THREADS)
#define QSDPA_PF_LOAD_THREADS (qfast::PF_THREADS)
#endif

template <int DK, int DV, class FK_, class FV_>
struct pf_layout {
    using FK = FK_;
    using FV = FV_;
    static constexpr int D_K = DK, D_V = DV;
    static constexpr int THREADS = QSDPA_PF_LOAD_THREADS; /* threads that load and dequantize */
    static constexpr int BN = PF_BN;
    /* f16 rows are used in place (ldmatrix reads the ring stage); other formats are
     * dequantized from the stage into double-buffered f16 tiles */
    static constexpr bool DIRECT = FK::mode == QSDPA_MODE_PLAIN;
    static_assert((FK::mode == QSDPA_MODE_PLAIN) == (FV::mode == QSDPA_MODE_PLAIN),
                  "K and V both f16 rows or both quantized (one pipeline schedule)");
    static constexpr int WK = DK * FK::bits / 32, WV = DV * FV::bits / 32; /* words per packed row */
    static constexpr int CWK = WK / 4, CWV = WV / 4;                        /* 16-byte chunks per row */
    static constexpr int GK = FK::has_scales ? DK / FK::group : 0, GV = FV::has_scales ? DV / FV::group : 0;
    static constexpr int SBYTES = 4; /* a stored scale or bias, at most (f32; validate.c allows no wider) */
    static constexpr int KS_BYTES = (BN * GK * SBYTES + 15) / 16 * 16;
    static constexpr int VS_BYTES = (BN * GV * SBYTES + 15) / 16 * 16;
    static constexpr int K_BYTES = BN * WK * 4, V_BYTES = BN * WV * 4;
    static constexpr int STAGE_BYTES = K_BYTES + V_BYTES + 2 * KS_BYTES + 2 * VS_BYTES;
    static constexpr int STAGES = 3;
    /* 1024-byte-aligned regions: the swizzle pattern repeats every 8 rows of 128 bytes */
    static constexpr int PIPE_BYTES = (STAGES * STAGE_BYTES + 1023) / 1024 * 1024;
    static constexpr int TILE_BYTES = DIRECT ? 0 : BN * (DK + DV) * 2; /* one f16 K tile + V tile */
    static constexpr int Q_BYTES = PF_ROWS * DK * 2;                  /* the CTA's q rows (wgmma's A) */
    /* dynamic shared memory of the two builds: the mma.sync path (sm_80 binaries) needs neither the
     * q tile nor 1024-byte alignment; the wgmma path (sm_90a binaries) gets both (+ alignment slack) */
    /* f16 tile pairs: the mma.sync path dequantizes tile i while attending to tile i - 1 (2);
     * the producer of the wgmma path runs up to 3 tiles ahead of the consumers */
    static constexpr int TILE_BUFS_MMA = 2, TILE_BUFS_WGMMA = 3;
    static_assert(STAGES <= 3 && TILE_BUFS_WGMMA <= 3, "three FULL barriers a row warpgroup (PF_BAR_FULL)");
    static constexpr int BYTES_MMA = PIPE_BYTES + TILE_BUFS_MMA * TILE_BYTES;
    static constexpr int BYTES_WGMMA = 1024 + PIPE_BYTES + TILE_BUFS_WGMMA * TILE_BYTES + Q_BYTES;
    static_assert(DK % 64 == 0 && DV % 64 == 0, "f16 tile rows of whole 8-chunk swizzle units");
    /* f16 tiles (in place or dequantized) are 128-byte-swizzled halves (tile_chunk, wgmma.cuh);
     * packed rows stay in order */
    __device__ static int k_slot(int r, int c) { return DIRECT ? (int)tile_chunk(r, c, BN) / 4 : r * WK + c * 4; }
    __device__ static int v_slot(int r, int c) { return DIRECT ? (int)tile_chunk(r, c, BN) / 4 : r * WV + c * 4; }
};


/* Dequantization: packed rows of a stage -> swizzled f16 tiles [BN][D], one 16-byte chunk
 * (8 elements of one key, within one scale group) per work item; each group's stored scale
 * and bias are converted from the stage's raw [BN][G] rows, so no table or barrier sits
 * between. Here: one group's {scale, bias} as f16, affine scales of stored type S (no dtype
 * branch in the tile loop), other formats through their own decoder (u8 scales); f32 affine
 * scales stay f32 (float2): rounded to f16 they moved every value of a group together, by
 * up to 2^-11 of |bias|, which over a group of dims added up in the scores (run 180: 0.022 x
 * max|V| against f16's bound of 0.002, K and V of 5-bit g128 with biases near -300). */
template <class S> struct group_sb { using type = half2; };
template <> struct group_sb<float> { using type = float2; };

template <class F, class S>
__device__ __forceinline__ typename group_sb<S>::type group_scale_bias(const char *scales, const char *biases, int i,
                                                                       float nv_factor) {
    if constexpr (F::mode == QSDPA_MODE_AFFINE) {
        if constexpr (std::is_same<S, __half>::value)
            return __halves2half2(((const __half *)scales)[i], ((const __half *)biases)[i]);
        else if constexpr (std::is_same<S, float>::value)
            return make_float2(((const float *)scales)[i], ((const float *)biases)[i]);
        else
            return __floats2half2_rn((float)((const S *)scales)[i], (float)((const S *)biases)[i]);
    } else {
        return F::scale_bias(scales, biases, 0, i, nv_factor);
    }
}

/* A group's {scale, bias} with K's shift taken from the bias (qsdpa_cuda_k_shift), in f32 and rounded once: exact
 * for every sampled key where k_shift_means allows the shift (k_shift_of_group; bf16 biases as converted to f16) */
__device__ __forceinline__ half2 shifted_sb(half2 sb, float shift) {
    return __halves2half2(__low2half(sb), __float2half_rn(__high2float(sb) - shift));
}
__device__ __forceinline__ float2 shifted_sb(float2 sb, float shift) { return make_float2(sb.x, sb.y - shift); }

/* One 16-byte chunk of a swizzled f16 tile: 8 elements of row r, columns 8c..8c+7, from
 * their packed words and group {scale, bias}, stored in element order, or with PAIR_ORDER in
 * the order k_word yields them (halves 2q, 2q + 1 of word w = elements k_order(q, 0), (q, 1)):
 * a K tile whose q is permuted the same way (pf_k_pair_order) needs no reordering. */
template <class F, bool PAIR_ORDER = false, class SB>
__device__ __forceinline__ void emit_chunk(uint32_t *tile, int r, int c, const uint32_t *words, SB sb) {
    /* f32 scales (float2): k_word yields the codes themselves (scale 1, bias 0: exact in f16), then
     * s c + z in f32, one rounding to f16 per value */
    constexpr bool F32_SB = std::is_same<SB, float2>::value;
    __half h[8];
#pragma unroll
    for (int w = 0; w < 8 / F::U; w++) {
        half2 pairs[F::U / 2];
        if constexpr (F32_SB) {
            F::k_word(words[w], __floats2half2_rn(1.0f, 0.0f), pairs);
#pragma unroll
            for (int q = 0; q < F::U / 2; q++)
                pairs[q] = __floats2half2_rn(fmaf(sb.x, __low2float(pairs[q]), sb.y), fmaf(sb.x, __high2float(pairs[q]), sb.y));
        } else {
            F::k_word(words[w], sb, pairs);
        }
#pragma unroll
        for (int q = 0; q < F::U / 2; q++) {
            h[w * F::U + (PAIR_ORDER ? 2 * q : F::k_order(q, 0))] = __low2half(pairs[q]);
            h[w * F::U + (PAIR_ORDER ? 2 * q + 1 : F::k_order(q, 1))] = __high2half(pairs[q]);
        }
    }
    uint4 out;
    out.x = h2u(__halves2half2(h[0], h[1]));
    out.y = h2u(__halves2half2(h[2], h[3]));
    out.z = h2u(__halves2half2(h[4], h[5]));
    out.w = h2u(__halves2half2(h[6], h[7]));
    *(uint4 *)((char *)tile + tile_chunk(r, c, PF_BN)) = out;
}

/* This thread's share of one tensor's tile where the loading threads cover whole rows:
 * a fixed chunk column c and rows r0 + i * ROW_STEP, so addresses are adds (run 33: the
 * generic loop's index math was half of its ~44 instructions per chunk). gather() loads
 * every word and group scale (converted to f16 here, one dtype branch per tensor), emit()
 * decodes and stores: the caller gathers K and V before emitting either, because the
 * compiler cannot tell the stage from the tile and would otherwise wait out each load's
 * latency behind the previous store (runs 36-39). */
template <int D, class F, class SB = half2>
struct chunk_batch {
    static constexpr int W = D * F::bits / 32; /* packed words per row */
    static constexpr int CH = D / 8;           /* f16 chunks per row */
    static constexpr int WPC = 8 / F::U;       /* packed words per chunk */
    static constexpr int G = F::has_scales ? D / F::group : 1;
    static constexpr int NTH = QSDPA_PF_LOAD_THREADS;
    static constexpr bool FIXED = NTH % CH == 0 && PF_BN % (NTH / CH) == 0;
    static constexpr int ROW_STEP = FIXED ? NTH / CH : 1, N = FIXED ? PF_BN / ROW_STEP : 1;
    static_assert(8 % F::U == 0 && (!F::has_scales || F::group % 8 == 0), "a chunk: whole words, one group");
    uint32_t words[N][WPC];
    SB sb[N]; /* float2: f32 affine scales (group_scale_bias) */

    template <class S>
    __device__ __forceinline__ void gather_as(const uint32_t *packed, const char *scales, const char *biases,
                                              float nv_factor, int tid, const float *shift = nullptr) {
        const int c = tid % CH, r0 = tid / CH;
        float sh = 0.0f; /* K's shift of this chunk's group (affine only) */
        if constexpr (F::mode == QSDPA_MODE_AFFINE)
            if (shift) sh = shift[c * 8];
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int r = r0 + i * ROW_STEP;
            sb[i] = group_scale_bias<F, S>(scales, biases, r * G + c * 8 / F::group, nv_factor);
            if constexpr (F::mode == QSDPA_MODE_AFFINE)
                if (shift) sb[i] = shifted_sb(sb[i], sh);
#pragma unroll
            for (int w = 0; w < WPC; w++) words[i][w] = packed[r * W + c * WPC + w];
        }
    }
    /* f16/bf16 affine scales and the fp formats' (dequant_stage sends f32 ones elsewhere) */
    __device__ __forceinline__ void gather(const qd_qtensor &t, const uint32_t *packed, const char *scales,
                                           const char *biases, int tid, const float *shift = nullptr) {
        if constexpr (F::mode == QSDPA_MODE_AFFINE) {
            if (t.scale_dtype == QSDPA_DTYPE_F16) gather_as<__half>(packed, scales, biases, 0.0f, tid, shift);
            else gather_as<__nv_bfloat16>(packed, scales, biases, 0.0f, tid, shift);
        } else {
            gather_as<uint8_t>(packed, scales, biases, t.nv_factor, tid);
        }
    }
    template <bool PAIR_ORDER = false>
    __device__ __forceinline__ void emit(uint32_t *tile, int tid) const {
#pragma unroll
        for (int i = 0; i < N; i++)
            emit_chunk<F, PAIR_ORDER>(tile, tid / CH + i * ROW_STEP, tid % CH, words[i], sb[i]);
    }
};

/* The same for layouts whose threads do not cover whole rows: one chunk at a time. */
template <int D, class F, class S>
__device__ __forceinline__ void dequant_rows_generic(const uint32_t *packed, const char *scales, const char *biases,
                                                     float nv_factor, uint32_t *tile, int tid, const float *shift) {
    using CB = chunk_batch<D, F>;
#pragma unroll 1
    for (int idx = tid; idx < PF_BN * CB::CH; idx += CB::NTH) {
        const int r = idx / CB::CH, c = idx % CB::CH;
        uint32_t words[CB::WPC];
#pragma unroll
        for (int w = 0; w < CB::WPC; w++) words[w] = packed[r * CB::W + c * CB::WPC + w];
        auto sb = group_scale_bias<F, S>(scales, biases, r * CB::G + c * 8 / F::group, nv_factor);
        if constexpr (F::mode == QSDPA_MODE_AFFINE)
            if (shift) sb = shifted_sb(sb, shift[c * 8]);
        emit_chunk<F>(tile, r, c, words, sb);
    }
}

template <int D, class F>
__device__ __forceinline__ void dequant_tile_generic(const qd_qtensor &t, const uint32_t *packed, const char *scales,
                                                     const char *biases, uint32_t *tile, int tid,
                                                     const float *shift = nullptr) {
    if constexpr (F::mode == QSDPA_MODE_AFFINE) {
        if (t.scale_dtype == QSDPA_DTYPE_F16)
            dequant_rows_generic<D, F, __half>(packed, scales, biases, 0.0f, tile, tid, shift);
        else if (t.scale_dtype == QSDPA_DTYPE_BF16)
            dequant_rows_generic<D, F, __nv_bfloat16>(packed, scales, biases, 0.0f, tile, tid, shift);
        else dequant_rows_generic<D, F, float>(packed, scales, biases, 0.0f, tile, tid, shift);
    } else {
        dequant_rows_generic<D, F, uint8_t>(packed, scales, biases, t.nv_factor, tile, tid, nullptr);
    }
}

template <int D, class F, class S, bool PAIR_ORDER = false>
__device__ __forceinline__ void dequant_rows_fixed(const uint32_t *packed, const char *scales, const char *biases,
                                                   float nv_factor, uint32_t *tile, int tid, const float *shift) {
    chunk_batch<D, F, typename group_sb<S>::type> cb;
    cb.template gather_as<S>(packed, scales, biases, nv_factor, tid, shift);
    cb.template emit<PAIR_ORDER>(tile, tid);
}

template <int D, class F, bool PAIR_ORDER = false>
__device__ __forceinline__ void dequant_tile_fixed(const qd_qtensor &t, const uint32_t *packed, const char *scales,
                                                   const char *biases, uint32_t *tile, int tid,
                                                   const float *shift = nullptr) {
    if constexpr (F::mode == QSDPA_MODE_AFFINE) {
        if (t.scale_dtype == QSDPA_DTYPE_F16)
            dequant_rows_fixed<D, F, __half, PAIR_ORDER>(packed, scales, biases, 0.0f, tile, tid, shift);
        else if (t.scale_dtype == QSDPA_DTYPE_BF16)
            dequant_rows_fixed<D, F, __nv_bfloat16, PAIR_ORDER>(packed, scales, biases, 0.0f, tile, tid, shift);
        else dequant_rows_fixed<D, F, float, PAIR_ORDER>(packed, scales, biases, 0.0f, tile, tid, shift);
    } else {
        dequant_rows_fixed<D, F, uint8_t, PAIR_ORDER>(packed, scales, biases, t.nv_factor, tile, tid, nullptr);
    }
}

/* K tiles of the wgmma path keep k_word's pair order where it differs from element order
 * (quantized K dequantized by the fixed-column batch); q is staged permuted to match, once
 * per CTA, instead of every K chunk being reordered (run 41: ~4 of ~26 producer
 * instructions per chunk). */
template <class L>
__host__ __device__ constexpr bool pf_k_pair_order() {
#ifdef QSDPA_CUDA_HAVE_WGMMA
    return !L::DIRECT && chunk_batch<L::D_K, typename L::FK>::FIXED && chunk_batch<L::D_V, typename L::FV>::FIXED;
#else
    return false;
#endif
}

/* A stage's packed K and V tile -> the f16 tiles at `tile` (K [BN][DK], then V [BN][DV]); kshift: K's shift of
 * this (b, head) [DK], or null */
template <class L, int DK, int DV>
__device__ __forceinline__ void dequant_stage(const fast_params &p, const char *stage, uint32_t *tile, int tid,
                                              const float *kshift) {
    using FK = typename L::FK;
    using FV = typename L::FV;
    const uint32_t *kp = (const uint32_t *)stage, *vp = (const uint32_t *)(stage + L::K_BYTES);
    const char *ks = stage + L::K_BYTES + L::V_BYTES;
    const char *vs = ks + 2 * L::KS_BYTES;
    uint32_t *vtile = tile + L::BN * DK / 2;
    if constexpr (chunk_batch<DK, FK>::FIXED && chunk_batch<DV, FV>::FIXED) {
#ifdef QSDPA_CUDA_HAVE_WGMMA
        if ((FK::mode == QSDPA_MODE_AFFINE && p.k.scale_dtype == QSDPA_DTYPE_F32) ||
            (FV::mode == QSDPA_MODE_AFFINE && p.v.scale_dtype == QSDPA_DTYPE_F32)) {
            /* f32 scales: their batches hold float2 {scale, bias}, one tensor at a time */
            dequant_tile_fixed<DK, FK, pf_k_pair_order<L>()>(p.k, kp, ks, ks + L::KS_BYTES, tile, tid, kshift);
            dequant_tile_fixed<DV, FV>(p.v, vp, vs, vs + L::VS_BYTES, vtile, tid);
        } else {
            chunk_batch<DK, FK> kb; /* the producer has the registers to hold both batches */
            chunk_batch<DV, FV> vb;
            kb.gather(p.k, kp, ks, ks + L::KS_BYTES, tid, kshift);
            vb.gather(p.v, vp, vs, vs + L::VS_BYTES, tid);
            kb.template emit<pf_k_pair_order<L>()>(tile, tid); /* q is staged in the same order */
            vb.emit(vtile, tid);
        }
#else /* 256 threads at 255 registers (sm_80): one batch at a time, the dtype branch around it, or they spill */
        dequant_tile_fixed<DK, FK>(p.k, kp, ks, ks + L::KS_BYTES, tile, tid, kshift);
        dequant_tile_fixed<DV, FV>(p.v, vp, vs, vs + L::VS_BYTES, vtile, tid);
#endif
    } else {
        dequant_tile_generic<DK, FK>(p.k, kp, ks, ks + L::KS_BYTES, tile, tid, kshift);
        dequant_tile_generic<DV, FV>(p.v, vp, vs, vs + L::VS_BYTES, vtile, tid);
    }
#ifdef QSDPA_CUDA_HAVE_WGMMA
    fence_proxy_async(); /* the tiles are read next by wgmma (async proxy) */
#endif
}

#ifdef QSDPA_CUDA_HAVE_WGMMA
/* Named barriers between the producer warpgroup and the row warps (id 0 is __syncthreads):
 * tile buffer b is FULL once the producer has written it, EMPTY once every row warp's
 * wgmma has finished reading it (FULL per row warpgroup, below); PF_BAR_PRODUCER orders the producer's own ring,
 * PF_BAR_ROWS the row warps' staging of q, and PF_BAR_TURN + w the row warpgroups' turns at
 * the tensor cores (fast_prefill's ping-pong). */
/* On the f16 rows FULL is one barrier a buffer and row warpgroup (1 + 3 w + buffer: the producer arrives on each, a
 * warpgroup syncs its own), so the two warpgroups need not meet every tile and their turns can drift half a tile
 * apart (FA3); the quantized rows keep one a buffer (1 + buffer) that both join (pf_publish) */
constexpr int PF_BAR_FULL = 1, PF_BAR_EMPTY = 7, PF_BAR_PRODUCER = 10, PF_BAR_ROWS = 11, PF_BAR_TURN = 12; /* 12, 13 */
constexpr int PF_FULL_THREADS = PF_PRODUCER_THREADS + 128; /* the producer and one row warpgroup */
static_assert(PF_BAR_TURN + 1 < 16, "named barrier ids");
/* registers per thread after setmaxnreg (one producer warpgroup: rows 192, producer 120).
 * setmaxnreg.inc only takes what other warps of the CTA released, so the split must fit the
 * launch's allocation, 384 x 168, not the SM's 64K (run 37: 2 x 128 x 192 + 128 x 128 = 64K
 * hung every launch in setmaxnreg.inc) */
constexpr int PF_LAUNCH_REGS = 65536 / PF_BLOCK_THREADS_WGMMA / 8 * 8, PF_ROW_REGS = 192;
constexpr int PF_PRODUCER_REGS =
    (PF_BLOCK_THREADS_WGMMA * PF_LAUNCH_REGS - PF_THREADS * PF_ROW_REGS) / PF_PRODUCER_THREADS / 8 * 8;
/* with one row warpgroup (QSDPA_CUDA_PF_WARPS 4) every thread may hold 255 registers at launch: no split (the
 * formula above asks setmaxnreg for 320, past its range [24, 256], and ptxas refused the build) */
constexpr bool PF_SPLIT_REGS = PF_WARPS == 8;
static_assert(!PF_SPLIT_REGS || (PF_PRODUCER_REGS >= 56 && PF_PRODUCER_REGS <= 256),
              "setmaxnreg: enough registers left for the producer, within its range");
static_assert(PF_THREADS * PF_ROW_REGS + PF_PRODUCER_THREADS * PF_PRODUCER_REGS <=
                  PF_BLOCK_THREADS_WGMMA * PF_LAUNCH_REGS,
              "setmaxnreg split within the launch's registers");
__device__ __forceinline__ void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* FULL of buffer b: on the f16 rows (L::DIRECT) one barrier a row warpgroup, which the producer arrives on
 * each of and a warpgroup syncs alone, so the ping-pong's warpgroups can drift apart; elsewhere one barrier
 * that both warpgroups join, as before the ping-pong (split FULL and turns cost the quantized rows 2-3%, their
 * producer's dequantization being what limits them: run 192) */
template <class L>
__device__ __forceinline__ void pf_publish(int b) {
    if constexpr (L::DIRECT) {
#pragma unroll
        for (int w = 0; w < PF_WARPS / 4; w++) named_arrive(PF_BAR_FULL + 3 * w + b, PF_FULL_THREADS);
    } else {
        named_arrive(PF_BAR_FULL + b, PF_BLOCK_THREADS_WGMMA);
    }
}
template <class L>
__device__ __forceinline__ void pf_wait_full(int wg, int b) {
    if constexpr (L::DIRECT) named_sync(PF_BAR_FULL + 3 * wg + b, PF_FULL_THREADS);
    else named_sync(PF_BAR_FULL + b, PF_BLOCK_THREADS_WGMMA);
}

/* The producer warpgroup (`ptid` 0..127) of tiles t0..t1-1: packed tiles through the
 * cp.async ring, each dequantized into tile buffer i % TILE_BUFS_WGMMA once the row
 * warps have released it, then published (FULL). f16 rows: the ring stages are the
 * buffers; a stage is published when its copy lands and refilled when released. The
 * producer runs ahead by as many tiles as there are buffers, so the row warps find
 * their next tile ready while it loads and dequantizes the ones after. */
template <class L, int DK, int DV>
__device__ __forceinline__ void pf_produce(const fast_params &p, const tile_sources &src, char *smem,
                                           uint32_t *tiles, int t0, int t1, int ptid, const float *kshift) {
    constexpr int S = L::STAGES, NB = L::DIRECT ? L::STAGES : L::TILE_BUFS_WGMMA;
    constexpr int ALL = PF_BLOCK_THREADS_WGMMA;
    const int n = t1 - t0;
    auto stage = [&](int i) { return smem + (i % S) * L::STAGE_BYTES; };
    if constexpr (L::DIRECT) {
#pragma unroll
        for (int i = 0; i < S; i++) { /* one commit group per tile, empty past the last */
            if (i < n) load_tile<L>(p, src, stage(i), t0 + i, ptid);
            cp_async_commit();
        }
        for (int it = 0; it < n; it++) {
            /* this thread's copies of tile it: S + it groups committed, the empty one of step 0
             * among them, so tile it (>= S) is group it + 1 and S - 2 may stay pending */
            cp_async_wait<S - 2>();
            fence_proxy_async();
            pf_publish<L>(it % NB);
            /* refill the stage of tile it - 1 with tile it - 1 + S once the row warps release it */
            if (it >= 1 && it - 1 + S < n) {
                named_sync(PF_BAR_EMPTY + (it - 1) % NB, ALL);
                load_tile<L>(p, src, stage(it - 1), t0 + it - 1 + S, ptid);
            }
            cp_async_commit();
        }
    } else {
#pragma unroll
        for (int i = 0; i < S - 1; i++) {
            if (i < n) load_tile<L>(p, src, stage(i), t0 + i, ptid);
            cp_async_commit();
        }
        for (int it = 0; it < n; it++) {
            cp_async_wait<S - 2>(); /* groups committed: S - 1 + it */
            /* every producer thread's copies of tile it landed, and every one is done with
             * stage it - 1, which the load below refills */
            named_sync(PF_BAR_PRODUCER, PF_PRODUCER_THREADS);
            if (it + S - 1 < n) load_tile<L>(p, src, stage(it + S - 1), t0 + it + S - 1, ptid);
            cp_async_commit();
            if (it >= NB) named_sync(PF_BAR_EMPTY + it % NB, ALL); /* tile it - NB's readers are done */
            dequant_stage<L, DK, DV>(p, stage(it), tiles + (it % NB) * (L::TILE_BYTES / 4), ptid, kshift);
            pf_publish<L>(it % NB);
        }
    }
    cp_async_wait<0>();
}
#endif

template <int DK, int DV, class FK, class FV>
__global__ void __launch_bounds__(QSDPA_PF_BLOCK_THREADS, 1) fast_prefill(const fast_params p) {
    using L = pf_layout<DK, DV, FK, FV>;
    constexpr int KSTEPS = DK / 16; /* k16 steps of Q.K */
    constexpr int NT = DV / 8;      /* n8 tiles of O */
    constexpr int BN = L::BN;
    extern __shared__ __align__(16) char smem_raw[];
#ifdef QSDPA_CUDA_HAVE_WGMMA
    static_assert(PF_WARPS % 4 == 0 && (DV == 64 || DV == 128), "whole warpgroups; wgmma N of 64 or 128");
    char *smem = smem_raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(smem_raw) & 1023)) & 1023);
#else
    char *smem = smem_raw;
#endif
    uint32_t *tiles = (uint32_t *)(smem + L::PIPE_BYTES); /* f16 (K, V) tile pairs */
#ifdef QSDPA_CUDA_HAVE_WGMMA
    char *qsm = smem + L::PIPE_BYTES + L::TILE_BUFS_WGMMA * L::TILE_BYTES; /* q [PF_ROWS][DK] f16, swizzled */
#endif

    pdl_wait(); /* launched with PDL on sm_90: nothing global is touched before this */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gq = lane >> 2, c4 = lane & 3;
    const int rb = p.nrb - 1 - (int)blockIdx.x; /* heaviest (latest causal) row blocks first */
    const int split = blockIdx.y;
    const int64_t bh = blockIdx.z, b = bh / p.hkv, g = bh % p.hkv;
    const float *kshift = p.k_shift ? p.k_shift + bh * DK : nullptr; /* SPEC 8.1's mend (qsdpa_cuda_k_shift) */
    const int64_t f_cta = (int64_t)rb * PF_ROWS;
    const int64_t f_warp = f_cta + 16 * warp;
    const int64_t f_end = min(p.rows, f_cta + PF_ROWS);

    /* visible key range of the CTA's rows (local indices), tile-aligned */
    int64_t lo = 0, hi = p.lk - 1;
    if (p.causal) {
        int64_t i_min = f_cta / p.ratio, i_max = (f_end - 1) / p.ratio;
        int64_t shift = p.key_total - p.lq - p.key_offset;
        hi = min(hi, i_max + shift);
        if (p.window > 0) lo = max((int64_t)0, i_min + shift - p.window + 1);
    }
    int t0 = split * p.tiles_per_split, t1 = t0 + p.tiles_per_split;
    const int ntiles_all = (int)((p.lk + BN - 1) / BN);
    if (t1 > ntiles_all) t1 = ntiles_all;
    if (hi >= lo) {
        t0 = max(t0, (int)(lo / BN));
        t1 = min(t1, (int)(hi / BN) + 1);
    } else {
        t1 = t0;
    }
    const int kend = (int)min(min(p.lk, (int64_t)(split + 1) * p.tiles_per_split * BN), hi + 1);

    /* my two rows (gq and gq+8 of the warp's 16) */
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
    const int last_lo = (int)(f_cta / p.ratio + p.key_total - p.lq - p.key_offset);
    const int last_hi = (int)((f_end - 1) / p.ratio + p.key_total - p.lq - p.key_offset);

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    /* Tile ta's scores sc (rows gq and gq+8): scale, mask, online softmax into m, l and o,
     * and P packed as pk, the A fragments of P V */
    auto attend = [&](int ta, float (&sc)[BN / 8][4], uint32_t (&pk)[BN / 16][4]) {
        /* scale, mask, online softmax over the tile (rows gq and gq+8) */
        const bool plain_tile = p.mask_kind == QSDPA_MASK_NONE && (ta + 1) * BN <= kend &&
                                (!p.causal || ((ta + 1) * BN - 1 <= last_lo &&
                                               (p.window <= 0 || ta * BN > last_hi - p.window)));
        float mx[2] = {-INFINITY, -INFINITY};
        /* two loops, not one with a per-score test: the per-score branch cost a convergence
         * barrier per score and a 2000-instruction walk through the masked code every tile
         * (run 33: BSYNC held 38% of the stall samples) */
        if (plain_tile) {
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    sc[j][x] *= p.scale_log2;
                    mx[x >> 1] = fmaxf(mx[x >> 1], sc[j][x]);
                }
        } else if (p.mask_kind == QSDPA_MASK_NONE) {
            /* causal, window and key-range edges only: compares and selects (the general loop
             * below, with its mask loads and dtype branches, held 10% of the stall samples at
             * one diagonal tile per CTA, run 40). The two loops share their shape on purpose: one
             * loop over a per-score mask function cost the 4K prefill 5% (run 67) */
            int64_t above[2], below[2]; /* keep above < key <= below */
#pragma unroll
            for (int r = 0; r < 2; r++) {
                above[r] = p.causal && p.window > 0 ? last[r] - p.window : INT64_MIN;
                below[r] = p.causal ? (int64_t)last[r] : INT64_MAX;
            }
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    const int r = x >> 1;
                    const int key = ta * BN + 8 * j + 2 * c4 + (x & 1);
                    float s = sc[j][x] * p.scale_log2;
                    s = key > above[r] && key <= below[r] ? s : p.masked_log2;
                    s = key < kend ? s : -INFINITY;
                    sc[j][x] = s;
                    mx[r] = fmaxf(mx[r], s);
                }
        } else {
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    const int r = x >> 1;
                    const int key = ta * BN + 8 * j + 2 * c4 + (x & 1);
                    float s = sc[j][x] * p.scale_log2;
                    if (key >= kend) s = -INFINITY;
                    else {
                        bool keep = true;
                        if (p.causal) keep = key <= last[r] && !(p.window > 0 && key <= last[r] - p.window);
                        if (keep && p.mask_kind != QSDPA_MASK_NONE && rv[r]) {
                            int64_t at = b * p.ms[0] + hr[r] * p.ms[1] + ir[r] * p.ms[2] + (int64_t)key * p.ms[3];
                            if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
                            else s += qd_load_float(p.mask, p.mask_dtype, at) * 1.4426950408889634f;
                        }
                        if (!keep) s = p.masked_log2;
                    }
                    sc[j][x] = s;
                    mx[r] = fmaxf(mx[r], s);
                }
        }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            corr[r] = mn == -INFINITY ? 1.0f : fast_exp2(m[r] - mn);
            m[r] = mn;
            /* a row with every score -inf so far subtracts 0 (exp2(-inf) = 0): no per-score select */
            const float msub = mn == -INFINITY ? 0.0f : mn;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float pv = fast_exp2(sc[j][2 * r + e] - msub);
                    sc[j][2 * r + e] = pv;
                    sum += pv;
                }
            l[r] = l[r] * corr[r] + sum;
        }
#pragma unroll
        for (int n = 0; n < NT; n++) {
            o[n][0] *= corr[0]; o[n][1] *= corr[0];
            o[n][2] *= corr[1]; o[n][3] *= corr[1];
        }

        /* P as f16 A fragments of P V (k step kk = keys 16kk..16kk+15) */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            pk[kk][0] = h2u(__floats2half2_rn(sc[2 * kk][0], sc[2 * kk][1]));
            pk[kk][1] = h2u(__floats2half2_rn(sc[2 * kk][2], sc[2 * kk][3]));
            pk[kk][2] = h2u(__floats2half2_rn(sc[2 * kk + 1][0], sc[2 * kk + 1][1]));
            pk[kk][3] = h2u(__floats2half2_rn(sc[2 * kk + 1][2], sc[2 * kk + 1][3]));
        }
    };

#ifdef QSDPA_CUDA_HAVE_WGMMA
    /* the producer warpgroup starts loading at once; the row warps stage q meanwhile */
    if (warp >= PF_WARPS) {
        if constexpr (PF_SPLIT_REGS) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PF_PRODUCER_REGS));
        pf_produce<L, DK, DV>(p, tile_sources_of<L>(p, b, g), smem, tiles, t0, t1, tid - PF_THREADS, kshift);
        return;
    }
    if constexpr (PF_SPLIT_REGS) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(PF_ROW_REGS));
    /* q rows -> f16 in shared memory (zeros past the last row), wgmma's A operand. 16-byte
     * loads where the row is aligned, and 32-bit index arithmetic where the rows allow it (run
     * 36: per-element loads and 64-bit divisions made this prologue 7% of the 4-bit kernel) */
    const bool rows32 = p.rows <= 0x7fffffff && p.ratio <= 0x7fffffff;
    for (int idx = tid; idx < PF_ROWS * (DK / 8); idx += PF_THREADS) {
        const int row = idx / (DK / 8), c = idx % (DK / 8);
        const int64_t f = f_cta + row;
        uint4 chunk = make_uint4(0u, 0u, 0u, 0u);
        if (f < p.rows) {
            int64_t qi, qh;
            if (rows32) {
                qi = (uint32_t)f / (uint32_t)p.ratio;
                qh = (uint32_t)f - (uint32_t)qi * (uint32_t)p.ratio;
            } else {
                qi = f / p.ratio;
                qh = f % p.ratio;
            }
            const int64_t base = b * p.qs[0] + (g * p.ratio + qh) * p.qs[1] + qi * p.qs[2] + 8 * c;
            const bool f16 = p.q_dtype == QSDPA_DTYPE_F16, bf16 = p.q_dtype == QSDPA_DTYPE_BF16;
            const char *src = (const char *)p.q + base * (f16 || bf16 ? 2 : 4);
            if ((f16 || bf16) && ((uintptr_t)src & 15) == 0) {
                chunk = *(const uint4 *)src;
                if (bf16) {
                    uint32_t *w = &chunk.x;
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        w[e] = h2u(__float22half2_rn(__bfloat1622float2(*(__nv_bfloat162 *)&w[e])));
                }
            } else {
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; e++) v[e] = qd_load_float(p.q, p.q_dtype, base + e);
                chunk = make_uint4(h2u(__floats2half2_rn(v[0], v[1])), h2u(__floats2half2_rn(v[2], v[3])),
                                   h2u(__floats2half2_rn(v[4], v[5])), h2u(__floats2half2_rn(v[6], v[7])));
            }
        }
        if constexpr (pf_k_pair_order<L>()) { /* the K tile's order: half 2q + e of word w = element k_order */
            const __half *h = (const __half *)&chunk; /* FK: the kernel's K format, L::FK */
            __half perm[8];
#pragma unroll
            for (int w = 0; w < 8 / FK::U; w++)
#pragma unroll
                for (int q = 0; q < FK::U / 2; q++)
#pragma unroll
                    for (int e = 0; e < 2; e++) perm[w * FK::U + 2 * q + e] = h[w * FK::U + FK::k_order(q, e)];
            chunk = *(const uint4 *)perm;
        }
        *(uint4 *)(qsm + tile_chunk(row, c, PF_ROWS)) = chunk;
    }
    fence_proxy_async();
    named_sync(PF_BAR_ROWS, PF_THREADS); /* q staged by every row warp */
    /* this warpgroup's 64 rows of each half */
    const uint64_t q_desc = wg_desc(qsm + (warp / 4) * 64 * 128, 16, 1024);
    /* a warpgroup whose 64 rows all lie past the last folded row (a CTA of 64 rows or fewer:
     * Lq 16 at GQA 4, the last row block) keeps the FULL/EMPTY protocol but issues no
     * tensor-core or softmax work, leaving the SM to the other one; two loops, not a branch in
     * one (the branch cost the full 4K prefill 4%, run 52) */
    const bool wg_rows = f_cta + (warp / 4) * 64 < f_end;
    constexpr int NB = L::DIRECT ? L::STAGES : L::TILE_BUFS_WGMMA;
    if (!wg_rows) {
        for (int it = 0; it < t1 - t0; it++) {
            pf_wait_full<L>(warp / 4, it % NB);
            if (it + NB < t1 - t0) named_arrive(PF_BAR_EMPTY + it % NB, PF_BLOCK_THREADS_WGMMA);
        }
    } else {
        /* Ping-pong (FA3): the two row warpgroups take turns issuing their tensor-core work, S and P V each a
         * turn, so one warpgroup's softmax runs while the other's mma run. Warpgroup w waits at
         * PF_BAR_TURN + w for the other's arrival after its issue; warpgroup 1 arrives once first and skips
         * its last arrival, so every sync meets one arrival. Only where both warpgroups have rows (a CTA of
         * 64 rows or fewer leaves one idle), and only on the f16 rows: it gained them 1-6% and cost the
         * quantized rows 2-3% (run 192). The loop keeps its shape: a tile's buffer is released as soon as
         * its P V completes (v15 issued P V(i) and S(i + 1) as one group: quantized rows +7%, runs 190-191). */
        const bool pingpong = L::DIRECT && PF_WARPS == 8 && f_cta + 64 < f_end && t1 > t0;
        const int wg = warp / 4;
        if (pingpong && wg == 1) named_arrive(PF_BAR_TURN, PF_THREADS); /* warpgroup 0 goes first */
        for (int it = 0; it < t1 - t0; it++) {
            const int ta = t0 + it;
            pf_wait_full<L>(wg, it % NB); /* the producer published tile ta */
            if (pingpong) named_sync(PF_BAR_TURN + wg, PF_THREADS);
            const char *kbytes = L::DIRECT ? smem + (it % L::STAGES) * L::STAGE_BYTES
                                           : (const char *)(tiles + (it % NB) * (L::TILE_BYTES / 4));
            const char *vbytes = kbytes + (L::DIRECT ? L::K_BYTES : BN * DK * 2);
            /* S = Q K^T: one m64n64k16 per k step for this warpgroup's 64 rows; the accumulator
             * layout is the mma.sync one (sc[j][2h + e]), so attend() serves both paths */
            float sc[BN / 8][4];
            wg_hold(&sc[0][0], BN / 2);
            wg_fence();
            const uint64_t k_desc = wg_desc(kbytes, 16, 1024);
#pragma unroll
            for (int s = 0; s < KSTEPS; s++) /* the first k step does not accumulate: sc needs no zeroing */
                wg_64x64_ss(&sc[0][0], wg_desc_add(q_desc, (s / 4) * PF_ROWS * 128 + (s % 4) * 32),
                            wg_desc_add(k_desc, (s / 4) * BN * 128 + (s % 4) * 32), s > 0);
            wg_commit();
            if (pingpong) named_arrive(PF_BAR_TURN + (wg ^ 1), PF_THREADS);
            wg_wait0();
            wg_hold(&sc[0][0], BN / 2);
            uint32_t pk[BN / 16][4];
            attend(ta, sc, pk);
            if (pingpong) named_sync(PF_BAR_TURN + wg, PF_THREADS);
            /* O += P V, P from registers, V MN-major: 16 keys per 2048 bytes, the two 64-column
             * halves of Dv 128 BN * 128 bytes apart */
            wg_hold(&o[0][0], DV / 2);
            wg_hold_regs(&pk[0][0], BN / 4);
            wg_fence();
            const uint64_t v_desc = wg_desc(vbytes, BN * 128, 1024);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                const uint64_t dv = wg_desc_add(v_desc, kk * 2048);
                if constexpr (DV == 128) wg_64x128_rs_tb(&o[0][0], pk[kk], dv, 1);
                else wg_64x64_rs_tb(&o[0][0], pk[kk], dv, 1);
            }
            wg_commit();
            if (pingpong && !(wg == 1 && it + 1 == t1 - t0)) named_arrive(PF_BAR_TURN + (wg ^ 1), PF_THREADS);
            wg_wait0();
            wg_hold(&o[0][0], DV / 2);
            if (it + NB < t1 - t0) named_arrive(PF_BAR_EMPTY + it % NB, PF_BLOCK_THREADS_WGMMA); /* buffer free */
        }
    }
#else
    const tile_sources src = tile_sources_of<L>(p, b, g);
#pragma unroll
    for (int s = 0; s < L::STAGES - 1; s++) {
        if (t0 + s < t1) load_tile<L>(p, src, smem + s * L::STAGE_BYTES, t0 + s, tid);
        cp_async_commit();
    }
    /* Q fragments in element order (K tiles are f16 in element order) */
    uint32_t qa[KSTEPS][4];
#pragma unroll
    for (int s = 0; s < KSTEPS; s++)
#pragma unroll
        for (int x = 0; x < 4; x++) { /* a0: row gq, k 2c; a1: row gq+8; a2: row gq, k 2c+8; a3: row gq+8, k 2c+8 */
            const int r = x & 1, d = 16 * s + 2 * c4 + 8 * (x >> 1);
            float v0 = 0.0f, v1 = 0.0f;
            if (rv[r]) {
                int64_t base = b * p.qs[0] + hr[r] * p.qs[1] + ir[r] * p.qs[2];
                v0 = qd_load_float(p.q, p.q_dtype, base + d);
                v1 = qd_load_float(p.q, p.q_dtype, base + d + 1);
            }
            qa[s][x] = h2u(__floats2half2_rn(v0, v1));
        }

    /* Schedule, one barrier per step: f16 rows attend to tile t0 + it in step it; quantized
     * tiles are dequantized one step ahead of their attention (step it dequantizes tile
     * t0 + it into buffer it & 1 and attends to tile t0 + it - 1), so every warp's
     * dequantization work sits beside the tensor-core work of the other warps. */
    const int lag = L::DIRECT ? 0 : 1;
    for (int it = 0; it < t1 - t0 + lag; it++) {
        const int t = t0 + it; /* tile arriving in this step */
        if (t < t1) cp_async_wait<L::STAGES - 2>();
        __syncthreads(); /* tile t landed; every warp is done with step it-1's reads */
        if (t + L::STAGES - 1 < t1)
            load_tile<L>(p, src, smem + ((it + L::STAGES - 1) % L::STAGES) * L::STAGE_BYTES, t + L::STAGES - 1, tid);
        cp_async_commit();
        const char *kbytes, *vbytes;
        if constexpr (L::DIRECT) {
            kbytes = smem + (it % L::STAGES) * L::STAGE_BYTES;
            vbytes = kbytes + L::K_BYTES;
        } else {
            if (t < t1) dequant_stage<L, DK, DV>(p, smem + (it % L::STAGES) * L::STAGE_BYTES,
                                                 tiles + (it & 1) * (L::TILE_BYTES / 4), tid, kshift);
            if (it == 0) continue; /* nothing dequantized yet to attend to */
            kbytes = (const char *)(tiles + ((it - 1) & 1) * (L::TILE_BYTES / 4));
            vbytes = kbytes + BN * DK * 2;
        }
        /* S = Q K^T for 64 keys: n8 tile j = keys 8j..8j+7 */
        float sc[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
            const int key = 8 * j + (lane & 7);
#pragma unroll
            for (int s2 = 0; s2 < KSTEPS / 2; s2++) { /* two k steps (32 dims) per ldmatrix.x4 */
                const int chunk = 4 * s2 + (lane >> 3);
                uint32_t bf[4];
                ldmatrix_x4(bf, kbytes + tile_chunk(key, chunk, BN));
                mma16816(sc[j], qa[2 * s2], bf[0], bf[1]);
                mma16816(sc[j], qa[2 * s2 + 1], bf[2], bf[3]);
            }
        }
        uint32_t pk[BN / 16][4];
        attend(t - lag, sc, pk);
        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const int key = 16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                const int chunk = 2 * np + (lane >> 4);
                uint32_t bf[4];
                ldmatrix_x4_trans(bf, vbytes + tile_chunk(key, chunk, BN));
                mma16816(o[2 * np], pk[kk], bf[0], bf[1]);
                mma16816(o[2 * np + 1], pk[kk], bf[2], bf[3]);
            }
        }
    }
#endif
    cp_async_wait<0>();
    pdl_trigger();

    /* each warp owns its 16 rows whole: quad-reduce l, then write out (or partials) */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (!rv[r]) continue;
        const int64_t f = fr[r];
        if (p.nsplit == 1) {
            const int64_t i = ir[r], h = hr[r];
            const float shift = row_shift_log2(p, bh, f), sink = row_sink_log2(p, h, shift);
            const float MM = fmaxf(m[r], sink);
            const float c = m[r] == -INFINITY ? 0.0f : fast_exp2(m[r] - MM);
            const float LL = l[r] * c + (p.sinks ? fast_exp2(sink - MM) : 0.0f);
            const float scale = MM == -INFINITY ? 0.0f : c / LL * p.v_factor;
            const int64_t orow = b * p.os[0] + h * p.os[1] + i * p.os[2];
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float v = MM == -INFINITY ? __int_as_float(0x7fc00000) : o[n][2 * r + e] * scale;
                    qd_store_float(p.out, p.out_dtype, orow + 8 * n + 2 * c4 + e, v);
                }
            if (p.lse && c4 == 0) p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = row_lse(MM, LL, shift);
        } else {
            const int64_t prow = (int64_t)split * gridDim.z * p.rows + bh * p.rows + f; /* [split][bh][f] */
#pragma unroll
            for (int n = 0; n < NT; n++)
                *(float2 *)&p.part_o[prow * DV + 8 * n + 2 * c4] =
                    make_float2(o[n][2 * r] * p.v_factor, o[n][2 * r + 1] * p.v_factor);
            if (c4 == 0) { p.part_ml[prow * 2] = m[r]; p.part_ml[prow * 2 + 1] = l[r]; }
        }
    }
}

} // namespace qfast

#endif
