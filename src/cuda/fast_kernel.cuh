/* The tensor-core attention kernels over a quantized KV cache: their shared
 * parameters and device helpers, the cp.async ring's tile copy, the split-K
 * merge, and the host-side launch of one instantiation.
 *
 * Rows: the GQA group is folded into the query rows, row f = i * ratio + hg
 * (query position i, head hg of the group), so every K/V tile a CTA loads
 * serves all heads of the group and all its query positions. Two kernels:
 *   fast_decode.cuh   up to DEC_MAX_ROWS (32) folded rows (decode, short
 *                     queries): split-K, K/V dequantized straight into mma
 *                     fragments, no barrier in the key loop;
 *   fast_prefill.cuh  everything else, and the layouts the decode kernel does
 *                     not take (f32 affine scales, scale rows that are not
 *                     one aligned block, huge strides): 128-row CTAs, each
 *                     64-key tile dequantized once into f16 shared memory.
 * Both stream packed codes and raw scales (never dequantized K/V) from global
 * memory, run Q.K^T and P.V on mma.sync m16n8k16 (f16 in, f32 accumulate) with
 * the online softmax in log2 units, and write (m, l, o) partials that
 * split_merge combines when a launch splits the keys. Causal/window tiles
 * outside a CTA's rows are skipped; the host routes rows with no visible key
 * at all (and partial mode with a bool mask) to the generic kernel, which
 * keeps the reference's semantics there. */
#ifndef QSDPA_CUDA_FAST_KERNEL_CUH
#define QSDPA_CUDA_FAST_KERNEL_CUH

#include <float.h>
#include <math.h>
#include <string.h>

#include "cuda/fast_formats.cuh"
#include "cuda/mma_sync.cuh"

namespace qfast {

/* Diagnostic build (QSDPA_CUDA_DEC_TRACE=1, never the default): every decode CTA and
 * every split_merge block writes globaltimer and clock64 marks of its phases into
 * p.trace (a device buffer, not printf: a printing kernel is 6x slower, and under PDL
 * the marks must start at pdl_wait's return, run 127); the host prints a summary of
 * one call (fast_setup.cu, `gpu.sh trace`), so a device run shows where a decode
 * call's fixed time goes. */
#ifndef QSDPA_CUDA_DEC_TRACE
#define QSDPA_CUDA_DEC_TRACE 0
#endif
constexpr int TRACE_CTAS = 4096;   /* CTAs (and merge blocks) a trace records */
constexpr int TRACE_DEC_WORDS = 16; /* per decode CTA: 6 globaltimer marks, 6 clock64 marks, smid, chunks per
                                     * warp, split (blockIdx.y), b * Hkv (blockIdx.z) */
constexpr int TRACE_MERGE_WORDS = 4; /* per merge block: globaltimer at entry, after pdl_wait, at the end */
__device__ __forceinline__ unsigned long long dec_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

struct fast_params : qd_io {
    int64_t hkv, lq, lk, ratio, key_offset, key_total, window;
    int causal;
    int64_t rows;            /* ratio * Lq folded rows */
    int nrb;                 /* row blocks: 8 * NR rows (decode kernel), PF_ROWS (prefill kernel) */
    int dv_out;              /* Dv of out: the kernel's DV, or a narrower cache's (pad_from; the partials keep DV) */
    int nsplit, tiles_per_split;
    float scale_log2;        /* scale * log2(e), times K's NVFP4 global factor (its tiles are decoded without it) */
    float v_factor;          /* V's NVFP4 global factor, applied to the outputs and partials; else 1 */
    float masked_log2;       /* masked score * log2(e), clamped finite */
    int scales_vec;          /* 1: a tile's scales are one 16-byte-aligned block; 0: 4-byte rows */
    int dec_prefetch;        /* decode kernel: chunks per warp pulled into L2 before pdl_wait */
    float *part_o;           /* [nsplit][B*Hkv][rows][Dv] */
    float *part_ml;          /* [nsplit][B*Hkv][rows][2] */
    unsigned long long *trace; /* QSDPA_CUDA_DEC_TRACE builds: the call's phase marks; else null */
    const float *k_shift;    /* prefill kernel, affine K: [B*Hkv][DK] subtracted from K's biases (qsdpa_cuda_k_shift);
                              * null: none */
    const float *q_shift;    /* with k_shift, or over a stage of shifted K (qsdpa_problem.score_shift), where sinks or
                              * lse are asked for: [B*Hkv][rows] each row's score shift in log2 units
                              * (qsdpa_cuda_q_shift), taken back where a score meets the sink or the lse */
    unsigned *arrivals;      /* decode kernel: [B*Hkv][nrb] counters, zero between calls; non-null: the last
                              * CTA of each (b, head, row block) merges the partials itself (dec_merge_rows) */
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
/* all 16 bytes, no zero fill: no source-size operand to set up */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
/* Programmatic dependent launch (sm_90+): a kernel launched with it may start while
 * the kernel ahead of it in the stream still runs. Until pdl_wait returns it must not
 * read or write what that kernel may touch (q, K, V, the partials, the output); an L2
 * prefetch is the one early access allowed, because L2 is where every SM's writes
 * land: a line prefetched early still reads as the earlier kernel left it. pdl_trigger
 * lets the next kernel's CTAs be placed while this one finishes. */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void *gmem) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Packed rows [key0, key0 + L::BN) of one tensor (`rows` = its first row, `stride` bytes
 * apart, `valid` of them inside the cache; rows past them are zero-filled from the
 * in-bounds address `head`) -> the stage's 16-byte slots (L::k_slot or v_slot). Where the
 * threads cover whole rows, each thread's chunk column is fixed and only its row steps, so
 * the addresses are one add per chunk (run 33: the div/mod and 64-bit multiplies per chunk
 * were 28% of the f16 kernel's instructions). */
template <class L, bool IS_K>
__device__ __forceinline__ void load_code_rows(const char *head, const char *rows, int64_t stride, int64_t valid,
                                               uint32_t *dst, int tid) {
    constexpr int CW = IS_K ? L::CWK : L::CWV; /* 16-byte chunks per row */
    auto slot = [](int r, int c) { return IS_K ? L::k_slot(r, c) : L::v_slot(r, c); };
    if constexpr (L::THREADS % CW == 0 && L::BN % (L::THREADS / CW) == 0) {
        constexpr int ROW_STEP = L::THREADS / CW;
        const int c = tid % CW, r0 = tid / CW;
        const char *src = rows + r0 * stride + c * 16;
        const int64_t step = ROW_STEP * stride;
#pragma unroll
        for (int i = 0; i < L::BN / ROW_STEP; i++, src += step) {
            const int r = r0 + i * ROW_STEP;
            const bool ok = r < valid;
            cp_async16(dst + slot(r, c), ok ? src : head, ok ? 16 : 0);
        }
    } else {
        for (int idx = tid; idx < L::BN * CW; idx += L::THREADS) {
            const int r = idx / CW, c = idx % CW;
            const bool ok = r < valid;
            cp_async16(dst + slot(r, c), ok ? rows + r * stride + c * 16 : head, ok ? 16 : 0);
        }
    }
}

/* Where one (b, kv head)'s tiles come from: computed once per CTA, so a tile's copy is
 * pointer adds (run 33: recomputing the head offsets, element sizes and strides of the four
 * scale/bias sources per tile cost ~200 instructions per warp and tile). */
struct tile_sources {
    const char *k, *v;          /* the head's first packed row */
    int64_t k_stride, v_stride; /* bytes between keys */
    const char *sb[4];          /* K scales, K biases, V scales, V biases: the head's first row */
    int64_t sb_stride[4];       /* bytes between keys */
    int sb_row_bytes[4];        /* bytes of one key's groups; 0: no such source */
};

template <class L>
__device__ __forceinline__ tile_sources tile_sources_of(const fast_params &p, int64_t b, int64_t g) {
    tile_sources src;
    src.k = (const char *)p.k.codes + b * p.k.cs[0] + g * p.k.cs[1];
    src.v = (const char *)p.v.codes + b * p.v.cs[0] + g * p.v.cs[1];
    src.k_stride = p.k.cs[2];
    src.v_stride = p.v.cs[2];
    const qd_qtensor *ts[2] = {&p.k, &p.v};
    const int groups[2] = {L::GK, L::GV};
    const bool biases[2] = {L::FK::has_biases, L::FV::has_biases};
#pragma unroll
    for (int t = 0; t < 2; t++) {
        const qd_qtensor &x = *ts[t];
        const int es = x.scale_dtype == QSDPA_DTYPE_F32 ? 4 : x.scale_dtype == QSDPA_DTYPE_U8 ? 1 : 2;
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const int i = 2 * t + s;
            const bool present = groups[t] > 0 && (s == 0 || biases[t]);
            const int64_t *st = s == 0 ? x.ss : x.bs;
            src.sb[i] = present ? (const char *)(s == 0 ? x.scales : x.biases) + (b * st[0] + g * st[1]) * es : nullptr;
            src.sb_stride[i] = present ? st[2] * es : 0;
            src.sb_row_bytes[i] = present ? groups[t] * es : 0;
        }
    }
    return src;
}

/* Copies tile `tile` of one head's packed rows and raw scales (`src`) into a stage of layout L
 * (pf_layout: L::k_slot / v_slot place each 16-byte chunk, L::THREADS copy; the raw scales and
 * biases land as [L::BN][G] elements of their stored dtype after the V rows). */
template <class L>
__device__ __forceinline__ void load_tile(const fast_params &p, const tile_sources &src, char *stage, int tile,
                                          int tid) {
    const int64_t key0 = (int64_t)tile * L::BN;
    const int64_t valid = p.lk - key0; /* keys of this tile inside the cache (may exceed BN) */
    load_code_rows<L, true>(src.k, src.k + key0 * src.k_stride, src.k_stride, valid, (uint32_t *)stage, tid);
    load_code_rows<L, false>(src.v, src.v + key0 * src.v_stride, src.v_stride, valid,
                             (uint32_t *)(stage + L::K_BYTES), tid);
    const int offset[4] = {0, L::KS_BYTES, 2 * L::KS_BYTES, 2 * L::KS_BYTES + L::VS_BYTES};
    const int groups[4] = {L::GK, L::GK, L::GV, L::GV};
    const bool has[4] = {L::GK > 0, L::GK > 0 && L::FK::has_biases, L::GV > 0, L::GV > 0 && L::FV::has_biases};
    /* a tile's scale rows in 16-byte chunks (elements of at most L::SBYTES bytes, what validation allows and the
     * stage reserves) are at most one a thread: one copy each and no loop over a run-time row size (run 214: that
     * loop was ~100 of the producer's ~160 copy instructions a warp and tile, and its code most of the producer's
     * instruction-cache misses) */
    constexpr bool ONE_EACH = L::BN * L::SBYTES * (L::GK > L::GV ? L::GK : L::GV) / 16 <= L::THREADS;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (!has[i] || groups[i] == 0) continue;
        char *dst = stage + L::K_BYTES + L::V_BYTES + offset[i];
        const char *head = src.sb[i];
        const int row_bytes = src.sb_row_bytes[i];
        if (p.scales_vec) { /* the tile's rows are one contiguous, 16-byte-aligned block */
            const int bytes = (valid < L::BN ? (int)valid : L::BN) * row_bytes;
            const char *rows = head + key0 * row_bytes;
            if constexpr (ONE_EACH) {
                const int left = bytes - tid * 16;
                if (tid * 16 < L::BN * row_bytes)
                    cp_async16(dst + tid * 16, left > 0 ? rows + tid * 16 : head, left >= 16 ? 16 : left > 0 ? left : 0);
            } else {
                for (int c = tid; c < L::BN * row_bytes / 16; c += L::THREADS) {
                    const int left = bytes - c * 16;
                    const int nb = left >= 16 ? 16 : left > 0 ? left : 0;
                    cp_async16(dst + c * 16, nb ? rows + c * 16 : head, nb);
                }
            }
        } else { /* 4-byte words of rows `sb_stride` apart */
            const int words = row_bytes / 4;
            const char *rows = head + key0 * src.sb_stride[i];
            for (int idx = tid; idx < L::BN * words; idx += L::THREADS) {
                const int r = idx / words, w = idx % words;
                const bool ok = r < valid;
                cp_async4(dst + r * row_bytes + w * 4, ok ? rows + r * src.sb_stride[i] + w * 4 : head, ok ? 4 : 0);
            }
        }
    }
}

/* Folded row f of bh's score shift under K's shift (p.q_shift), in log2 units; 0 without */
__device__ __forceinline__ float row_shift_log2(const fast_params &p, int64_t bh, int64_t f) {
    return p.q_shift ? p.q_shift[bh * p.rows + f] : 0.0f;
}
/* Query head h's sink in log2 units, moved as the row's scores were (row_shift_log2); -inf without sinks */
__device__ __forceinline__ float row_sink_log2(const fast_params &p, int64_t h, float shift) {
    return p.sinks ? qd_load_float(p.sinks, p.sinks_dtype, h) * 1.4426950408889634f - shift : -INFINITY;
}
/* The row's natural-log lse from its merged max MM and sum LL (log2 units), the score shift taken back */
__device__ __forceinline__ float row_lse(float MM, float LL, float shift) {
    return MM == -INFINITY ? -INFINITY : (MM + log2f(LL) + shift) * 0.6931471805599453f;
}

/* The end of a merge of folded row f of bh: the sink, the normalisation (NaN where every key was
 * -inf, as MLX), the store of n <= N values from dim d0, and the lse where `lse_writer`. M and L
 * (the merged max and sum) in log2 units; o unnormalised. */
template <int N>
__device__ __forceinline__ void merge_store(const fast_params &p, int64_t bh, int64_t f, float M, float L,
                                            const float (&o)[N], int d0, int n, bool lse_writer) {
    const int64_t b = bh / p.hkv, g = bh % p.hkv;
    const int64_t i = f / p.ratio, h = g * p.ratio + f % p.ratio;
    const float shift = row_shift_log2(p, bh, f), sink = row_sink_log2(p, h, shift);
    const float MM = fmaxf(M, sink);
    const float c = M == -INFINITY ? 0.0f : fast_exp2(M - MM);
    const float LL = L * c + (p.sinks && MM != -INFINITY ? fast_exp2(sink - MM) : 0.0f);
    const int64_t at = b * p.os[0] + h * p.os[1] + i * p.os[2] + d0;
#pragma unroll
    for (int e = 0; e < N; e++)
        if (e < n) /* every key -inf: NaN, as MLX */
            qd_store_float(p.out, p.out_dtype, at + e, MM == -INFINITY ? __int_as_float(0x7fc00000) : o[e] * c / LL);
    if (p.lse && lse_writer) p.lse[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = row_lse(MM, LL, shift);
}

/* One batch of an online merge: the running (M, L, o) of the splits so far takes SB more
 * splits' (m, l, o), all loaded before this is called (M, m and L in log2 units). A split
 * that saw no key (m = -inf) adds nothing. split_merge and the decode kernel's fused
 * merge (dec_merge_rows) both step through their splits with this. */
template <int N, int SB>
__device__ __forceinline__ void merge_batch(float &M, float &L, float (&o)[N], const float (&ms)[SB],
                                            const float (&ls)[SB], const float (&os)[SB][N]) {
    float mb = M;
#pragma unroll
    for (int k = 0; k < SB; k++) mb = fmaxf(mb, ms[k]);
    if (mb == -INFINITY) return; /* no split so far saw a key */
    const float c = M == -INFINITY ? 0.0f : fast_exp2(M - mb);
    L *= c;
#pragma unroll
    for (int e = 0; e < N; e++) o[e] *= c;
#pragma unroll
    for (int k = 0; k < SB; k++) {
        const float w = ms[k] == -INFINITY ? 0.0f : fast_exp2(ms[k] - mb);
        L += ls[k] * w;
#pragma unroll
        for (int e = 0; e < N; e++) o[e] += os[k][e] * w;
    }
    M = mb;
}

/* Split-K merge, one block per (b, kv head, folded row) and 32 output columns:
 * warp w takes the splits s = w, w + 4, ..., lane l column 32 * blockIdx.y + l,
 * BATCH splits at a time: all of a batch's loads go out before any is used and the
 * batch then merges into the warp's running (m, l, o), so a call with up to
 * 4 * BATCH splits waits on one round trip to L2 (the version that first reduced
 * the global max, then summed 4 splits per round, took ~2.5 us on the H100 at 33
 * splits, run 128); the four warps meet in shared memory. BATCH follows the split
 * count (qsdpa_cuda_launch_split_merge): a batch of 16 takes 128 registers, which
 * at B=8 (1024 blocks) made two waves (run 129: B=8 8K 37.9 -> 40.3 us). Launched
 * right behind the attention kernel with programmatic dependent launch on sm_90,
 * so its launch overlaps that kernel's tail (pdl_wait orders the reads). */
template <int DV, int BATCH>
__global__ void __launch_bounds__(128) split_merge(const fast_params p) {
#if QSDPA_CUDA_DEC_TRACE
    const unsigned long long t_entry = dec_globaltimer();
#endif
    pdl_trigger(); /* the next call's kernel may take the SMs' free slots and wait there */
    pdl_wait();
#if QSDPA_CUDA_DEC_TRACE
    const unsigned long long t_wait = dec_globaltimer();
#endif
    __shared__ float so[4][32], sl[4], sm[4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t prow0 = blockIdx.x; /* bh * rows + f */
    const int64_t bh = prow0 / p.rows, f = prow0 % p.rows;
    const int64_t sstride = (int64_t)gridDim.x;
    const int d = blockIdx.y * 32 + lane;
    float M = -INFINITY, Ls = 0.0f, O[1] = {0.0f}; /* the warp's splits so far (M uniform in the warp) */
    for (int s0 = warp; s0 < p.nsplit; s0 += 4 * BATCH) {
        float ms[BATCH], ls[BATCH], os[BATCH][1];
#pragma unroll
        for (int k = 0; k < BATCH; k++) {
            const int s = s0 + 4 * k;
            const int64_t prow = (int64_t)s * sstride + prow0;
            const bool ok = s < p.nsplit;
            ms[k] = ok ? p.part_ml[prow * 2] : -INFINITY;
            ls[k] = ok ? p.part_ml[prow * 2 + 1] : 0.0f;
            os[k][0] = ok && d < DV ? p.part_o[prow * DV + d] : 0.0f;
        }
        merge_batch<1, BATCH>(M, Ls, O, ms, ls, os);
    }
    so[warp][lane] = O[0];
    if (lane == 0) sl[warp] = Ls, sm[warp] = M;
    __syncthreads();
    if (warp) return;
    M = fmaxf(fmaxf(sm[0], sm[1]), fmaxf(sm[2], sm[3]));
    float Lw = 0.0f, Ow = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const float cw = sm[w] == -INFINITY ? 0.0f : fast_exp2(sm[w] - M);
        Lw += sl[w] * cw;
        Ow += so[w][lane] * cw;
    }
    const float ow[1] = {Ow};
    merge_store<1>(p, bh, f, M, Lw, ow, d, d < p.dv_out ? 1 : 0, blockIdx.y == 0 && lane == 0);
#if QSDPA_CUDA_DEC_TRACE
    const unsigned blk = blockIdx.x * gridDim.y + blockIdx.y;
    if (p.trace && lane == 0 && blk < TRACE_CTAS) {
        unsigned long long *t = p.trace + TRACE_CTAS * TRACE_DEC_WORDS + blk * TRACE_MERGE_WORDS;
        t[0] = t_entry; t[1] = t_wait; t[2] = dec_globaltimer();
    }
#endif
}

} // namespace qfast

#include "cuda/fast_decode.cuh"
#include "cuda/fast_prefill.cuh"

/* Host side: choose the configuration and launch one instantiation. */
qsdpa_status qsdpa_cuda_fast_launch_setup(qsdpa_context *ctx, const qsdpa_problem *pr, int smem_bytes,
                                          int ctas_per_sm, int bn, int block_rows, bool partials, int kernel_dv,
                                          int k_plain, int v_plain, qfast::fast_params *p, dim3 *grid,
                                          bool *use_generic);

/* Whether the decode kernel merges its own splits (QSDPA_CUDA_FUSED_MERGE, read once; default 1): one
 * launch a call instead of two. A benchmark knob; the trace build keeps split_merge. */
bool qsdpa_cuda_fused_merge(void);
/* Waves of CTAs split-K fills (1 unless QSDPA_CUDA_SPLIT_WAVES, read once, says
 * otherwise: a benchmark knob, bench/gpu.sh variants). */
double qsdpa_cuda_split_waves(void);
/* Chunks per warp the decode kernel pulls into L2 before pdl_wait (QSDPA_CUDA_DEC_PREFETCH, read once):
 * 2 by default. The paired kernels' whole ring (4) queued ~10 MB ahead of q's loads at 32K, so q was staged
 * 1.5-4 us after pdl_wait; 2 is best or within noise on every row of run 132 (H100: 32K 21.8 -> 21.3 us,
 * Lq 4 25.5 -> 24.8, 8K 10.6 -> 10.0, 128K 65.2 -> 64.6). A benchmark knob. */
int qsdpa_cuda_dec_prefetch(void);

/* What bounds split-K for `ctas_per_sm` CTAs per SM (fast_setup.cu): key tiles of `bn`,
 * (b * Hkv, row block) pairs, CTAs wanted, and the most splits it may use. */
struct qsdpa_cuda_split_bounds {
    int64_t tiles, base, want, n_max;
};
qsdpa_cuda_split_bounds qsdpa_cuda_split_limits(const qsdpa_context *ctx, const qsdpa_problem *pr, int ctas_per_sm,
                                                int bn, int block_rows);

#if QSDPA_CUDA_DEC_TRACE
/* The diagnostic build's host side (fast_setup.cu): the buffer a decode call writes its
 * marks to (two calls alternate), and after the call, at call QSDPA_CUDA_TRACE_CALL
 * (default 200), a summary of that call and the one before it on stderr. */
unsigned long long *qsdpa_cuda_trace_slot(qsdpa_context *ctx, dim3 grid, int64_t merge_blocks);
void qsdpa_cuda_trace_after_call(qsdpa_context *ctx);
#endif

/* Decode kernel for short queries unless QSDPA_CUDA_TILE_DECODE=1 (read once): that
 * variable sends every Lq to the prefill kernel, so the device script can time both. */
bool qsdpa_cuda_use_decode_kernel(const qsdpa_problem *pr, bool wgmma_prefill);

/* What the launcher reads once per kernel (and per device): blocks per SM at its
 * shared-memory size (it sizes split-K) and whether its loaded binary was compiled
 * for sm_90+, where the kernel calls pdl_wait and may launch with PDL. */
struct qsdpa_cuda_kernel_info {
    int blocks[64];      /* 0: not read yet */
    int ptx_version[64];
    int capped[64];      /* qsdpa_cuda_cap_residency: smem * 64 + resident, one word so a thread
                          * never sees one half of it new (0: not read yet) */
};

template <class K>
static qsdpa_status qsdpa_cuda_kernel_query(qsdpa_context *ctx, K kernel, int threads, int smem_bytes,
                                            qsdpa_cuda_kernel_info *info, const char *fn, const char *what,
                                            int *blocks, bool *pdl) {
    int dev = ctx->cuda->device < 64 ? ctx->cuda->device : 0;
    if (!info->blocks[dev]) {
        cudaError_t err = cudaSuccess;
        if (smem_bytes > 48 * 1024 && smem_bytes <= ctx->cuda->smem_optin)
            err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
        int n = 0;
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem_bytes);
        cudaFuncAttributes fa;
        if (err == cudaSuccess) err = cudaFuncGetAttributes(&fa, kernel);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, what);
        info->ptx_version[dev] = fa.ptxVersion;
        info->blocks[dev] = n > 0 ? n : 1;
    }
    *blocks = info->blocks[dev];
    *pdl = qsdpa_cuda_pdl_ok(ctx, info->ptx_version[dev]);
    return QSDPA_OK;
}

/* The dynamic shared memory that lets at most `resident` CTAs of `kernel` share an SM
 * (at least `smem`; `smem` itself where the kernel's occupancy is no higher anyway).
 * Why: split-K sizes the grid as whole waves of `resident` CTAs per SM, but a kernel
 * launched with PDL places its CTAs while the previous kernel still holds some SMs,
 * so where a third CTA would fit, the first SMs to free up take three and others one:
 * the wave runs as long as its fullest SM (run 68: 4-bit 128K +21%, B=8 +19-33%). */
template <class K>
static qsdpa_status qsdpa_cuda_cap_residency(qsdpa_context *ctx, K kernel, int threads, int smem, int resident,
                                             qsdpa_cuda_kernel_info *info, const char *fn, int *smem_out) {
    int dev = ctx->cuda->device < 64 ? ctx->cuda->device : 0;
    *smem_out = smem;
    if (resident < 1 || resident >= 64 || resident >= info->blocks[dev]) return QSDPA_OK;
    int capped = __atomic_load_n(&info->capped[dev], __ATOMIC_RELAXED);
    if (capped % 64 != resident) {
        /* each CTA also holds 1 KB the runtime reserves; one byte past a (resident + 1)th share */
        int want = ctx->cuda->smem_per_sm / (resident + 1) - 1024 + 16;
        want = want < smem ? smem : (want + 15) / 16 * 16;
        int n = 0;
        cudaError_t err = cudaSuccess;
        if (want > ctx->cuda->smem_optin) want = smem; /* cannot cap: keep the kernel's own size */
        else if (want > 48 * 1024) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, want);
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, want);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "capping CTAs per SM");
        capped = (n >= 1 && n <= resident ? want : smem) * 64 + resident;
        __atomic_store_n(&info->capped[dev], capped, __ATOMIC_RELAXED);
    }
    *smem_out = capped / 64;
    return QSDPA_OK;
}

/* split_merge behind an attention kernel that wrote nsplit partials, its batch
 * (splits a warp loads at once) the smallest that covers them in one round */
template <int DV, int BATCH>
static qsdpa_status qsdpa_cuda_launch_split_merge_batch(qsdpa_context *ctx, const qfast::fast_params &p, dim3 grid,
                                                        const char *fn) {
    static qsdpa_cuda_kernel_info info;
    int blocks;
    bool pdl;
    qsdpa_status st = qsdpa_cuda_kernel_query(ctx, qfast::split_merge<DV, BATCH>, 128, 0, &info, fn,
                                              "configuring split_merge", &blocks, &pdl);
    if (st != QSDPA_OK) return st;
    return qsdpa_cuda_launch_pdl(ctx, qfast::split_merge<DV, BATCH>,
                                 dim3((unsigned)(grid.z * p.rows), (unsigned)((p.dv_out + 31) / 32)), dim3(128), 0, pdl, p,
                                 fn, "split_merge launch");
}
template <int DV>
static qsdpa_status qsdpa_cuda_launch_split_merge(qsdpa_context *ctx, const qfast::fast_params &p, dim3 grid,
                                                  const char *fn) {
    if (p.nsplit <= 4) return qsdpa_cuda_launch_split_merge_batch<DV, 1>(ctx, p, grid, fn);
    if (p.nsplit <= 16) return qsdpa_cuda_launch_split_merge_batch<DV, 4>(ctx, p, grid, fn);
    return qsdpa_cuda_launch_split_merge_batch<DV, 16>(ctx, p, grid, fn);
}

/* Tiles of `bn` keys each CTA streams when split-K fills `per_sm` CTAs per SM at its
 * most splits (before causal or window cuts) */
static int64_t qsdpa_cuda_tiles_per_cta(const qsdpa_context *ctx, const qsdpa_problem *pr, int per_sm, int bn,
                                        int block_rows) {
    const qsdpa_cuda_split_bounds lim = qsdpa_cuda_split_limits(ctx, pr, per_sm, bn, block_rows);
    return (lim.tiles + lim.n_max - 1) / lim.n_max;
}

/* Configure and launch one tensor-core kernel (occupancy and binary read once per device
 * into `info`; split-K sized for at most `cta_cap` CTAs per SM, or for the kernel's
 * occupancy where even then each CTA would stream more than `long_tiles` tiles
 * (0: never); row blocks of `block_rows`). Its partials (always with `partials`, else
 * where the keys were split) are merged by split_merge, or by the kernel itself (the
 * decode kernel: `own_merge`) where that merge is small enough. */
template <int DV, class FK, class FV, class K>
static qsdpa_status qsdpa_cuda_fast_launch(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn, K kernel,
                                           const char *name, const char *route, const char *configuring, int threads, int smem,
                                           qsdpa_cuda_kernel_info *info, int cta_cap, int long_tiles, int bn,
                                           int block_rows, bool partials, bool own_merge, int k_shift_width = 0) {
    /* the context's device first: the query sets and reads per-device kernel attributes */
    qsdpa_status st = qsdpa_cuda_enter(ctx, fn);
    if (st != QSDPA_OK) return st;
    int occ;
    bool pdl;
    st = qsdpa_cuda_kernel_query(ctx, kernel, threads, smem, info, fn, configuring, &occ, &pdl);
    if (st != QSDPA_OK) return st;
    int per_sm = occ < cta_cap ? occ : cta_cap;
    if (long_tiles > 0 && per_sm < occ && qsdpa_cuda_tiles_per_cta(ctx, pr, per_sm, bn, block_rows) > long_tiles)
        per_sm = occ;
    qfast::fast_params p;
    dim3 grid;
    bool generic = false;
    st = qsdpa_cuda_fast_launch_setup(ctx, pr, smem, per_sm, bn, block_rows, partials, DV, qfast::plain_dtype_of<FK>(),
                                      qfast::plain_dtype_of<FV>(), &p, &grid, &generic);
    if (st != QSDPA_OK) return st;
    if (generic) return qsdpa_cuda_generic_run(ctx, pr);
    p.q_shift = pr->score_shift; /* the staged path's f16 rows (K shifted before the stage rounded it) */
    if (k_shift_width > 0) { /* the prefill kernel's K tiles: SPEC 8.1's mend (affine K: pr has no score_shift) */
        st = qsdpa_cuda_k_shift_call(ctx, pr, k_shift_width, &p.k_shift, &p.q_shift);
        if (st != QSDPA_OK) return st;
    }
    int smem_launch = smem;
    const int resident = (int)ceil(per_sm * qsdpa_cuda_split_waves() - 1e-9);
    /* only a grid that fits one wave at the occupancy, where early placement can pile
     * CTAs up (B=8 8K: 320 CTAs against 396 slots, 39.2 us uncapped, 32.6 capped, runs
     * 68-69); a grid of several waves even then (large B * Hkv, one split) keeps them */
    if (pdl && (int64_t)grid.x * grid.y * grid.z <= (int64_t)occ * ctx->cuda->sm_count) {
        st = qsdpa_cuda_cap_residency(ctx, kernel, threads, smem, resident, info, fn, &smem_launch);
        if (st != QSDPA_OK) return st;
    }
    const bool merged = partials || p.nsplit > 1; /* the partials are merged: by split_merge, or */
    /* in the kernel, where one CTA's merge is one round trip of at most 16 KB: at most 8 splits (many
     * heads x batch: B=8 8K 37.3 -> 36.0-36.5 us, 32K 119.9 -> 118.8-119.5, and a launch less, runs
     * 141 and 143). Not at B 1's 32 splits, where the one merging CTA per head lengthened every
     * call by 0.7-1.7 us (2K, 8K, 32K; Lq 4's 16 rows by 6.8 us) against split_merge's many blocks */
    const int64_t mrows = p.rows < block_rows ? p.rows : block_rows;
    const bool fused = merged && own_merge && !QSDPA_CUDA_DEC_TRACE && qsdpa_cuda_fused_merge() && p.nsplit <= 8 &&
                       mrows * p.nsplit * DV * 4 <= (16 << 10);
    /* the counters are sized by every merged decode call, fused or not: a call of this (b, head, row
     * block) count made before a capture must leave nothing to allocate inside it, whatever its split */
    unsigned *arrivals = nullptr;
    if (merged && own_merge && (st = qsdpa_cuda_arrivals(ctx, (size_t)grid.x * grid.z, &arrivals)) != QSDPA_OK)
        return st;
    if (fused) p.arrivals = arrivals;
#if QSDPA_CUDA_DEC_TRACE
    const bool traced = !strcmp(name, "fast_decode");
    if (traced) p.trace = qsdpa_cuda_trace_slot(ctx, grid, merged ? grid.z * p.rows * ((DV + 31) / 32) : 0);
#endif
    st = qsdpa_cuda_launch_pdl(ctx, kernel, grid, dim3(threads), smem_launch, pdl, p, fn, name);
    qsdpa_set_route(ctx, nullptr, route);
    if (st == QSDPA_OK && merged && !fused) st = qsdpa_cuda_launch_split_merge<DV>(ctx, p, grid, fn);
#if QSDPA_CUDA_DEC_TRACE
    if (traced && st == QSDPA_OK) qsdpa_cuda_trace_after_call(ctx);
#endif
    return st;
}

template <int DK, int DV, class FK, class FV, int NR>
static qsdpa_status qsdpa_cuda_decode_run(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn) {
    static qsdpa_cuda_kernel_info info;
    /* split-K sized for 2 CTAs (8 warps) per SM even where 3 fit: longer per-warp streams
     * amortise the ring's fill and the partials (run 12: 4-bit 32K 28.8 us vs 30.5 at 4 per
     * SM; run 69: 32K 21.3 us vs 22.5 at 3), unless the streams are long anyway: past 32
     * tiles per CTA the third CTA's latency hiding wins (run 69: 128K 57.0 -> 53.4 us,
     * B=8 32K 104 -> 94; B=8 8K, 26 tiles, even) */
    return qsdpa_cuda_fast_launch<DV, FK, FV>(ctx, pr, fn, qfast::fast_decode<DK, DV, FK, FV, NR>, "fast_decode", "cuda.decode",
                                      "configuring fast_decode", qfast::DEC_WARPS * 32,
                                      qfast::dec_smem<DK, DV, FK, FV, NR>::BYTES, &info, 2, 32, qfast::DEC_TILE, 8 * NR,
                                      true, true);
}

/* The decode kernel in the row blocks its head dims take: 8 rows up to 8 folded rows, else 16, and past
 * D 128 8 rows always (16-row blocks spill there; more rows take several blocks of one launch). The fast
 * rows' short queries come here, and so do cuda.generic's padded calls (FK, FV = pad_from<format, stored
 * dim>: a narrower cache read in place; cuda_staged.cu sends only what the decode kernel takes). */
template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_decode_blocks_run(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn) {
    if constexpr (DK > 128 || DV > 128) return qsdpa_cuda_decode_run<DK, DV, FK, FV, 1>(ctx, pr, fn);
    else if (pr->group_ratio * pr->len_q <= 8) return qsdpa_cuda_decode_run<DK, DV, FK, FV, 1>(ctx, pr, fn);
    else return qsdpa_cuda_decode_run<DK, DV, FK, FV, 2>(ctx, pr, fn);
}

/* Whether the prefill kernel's loaded code is its wgmma path (sm_90a: a producer warpgroup, so its shared
 * memory, block size and routing). The code decides, not the device: a build for 80 or plain 90 runs its
 * mma.sync path on a Hopper card (PTX compiled by the driver reports binaryVersion 90 there), so the test
 * reads the kernel's own launch bound: PF_BLOCK_THREADS_WGMMA on the wgmma path, PF_THREADS on the other. */
template <int DK, int DV, class FK, class FV>
static bool qsdpa_cuda_prefill_wgmma(const qsdpa_context *ctx) {
    static int path[64]; /* per device (a build for several architectures loads each card's own): 0 not read
                          * yet, 1 mma.sync, 2 wgmma */
    const int dev = ctx->cuda->device < 64 ? ctx->cuda->device : 0;
    if (!path[dev]) {
        cudaFuncAttributes fa;
        if (cudaSetDevice(ctx->cuda->device) != cudaSuccess ||
            cudaFuncGetAttributes(&fa, qfast::fast_prefill<DK, DV, FK, FV>) != cudaSuccess) {
            (void)cudaGetLastError(); /* not kept: the launch reports what is wrong (no code for this card) */
            return false;
        }
        path[dev] = fa.maxThreadsPerBlock >= qfast::PF_BLOCK_THREADS_WGMMA ? 2 : 1;
    }
    return path[dev] == 2;
}

template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_prefill_run(qsdpa_context *ctx, const qsdpa_problem *pr, const char *fn) {
    static qsdpa_cuda_kernel_info info;
    auto kernel = qfast::fast_prefill<DK, DV, FK, FV>;
    const bool wgmma = qsdpa_cuda_prefill_wgmma<DK, DV, FK, FV>(ctx);
    using L = qfast::pf_layout<DK, DV, FK, FV>;
    const int smem = wgmma ? L::BYTES_WGMMA : L::BYTES_MMA;
    const int threads = wgmma ? qfast::PF_BLOCK_THREADS_WGMMA : qfast::PF_THREADS; /* + producer */
    const int k_shift = FK::mode == QSDPA_MODE_AFFINE && qsdpa_cuda_k_shift_takes(pr) ? DK : 0;
    return qsdpa_cuda_fast_launch<DV, FK, FV>(ctx, pr, fn, kernel, "fast_prefill", "cuda.prefill", "configuring fast_prefill", threads,
                                      smem, &info, 1 << 30, 0, L::BN, qfast::PF_ROWS, false, false, k_shift);
}

/* The padded path's decode kernel (kernels_cuda.def's QSDPA_CUDA_PAD_ROWS, called for at most 32 folded
 * rows): the (DK, DV) kernel over a cache of stored head dims DSK, DSV; an f16-row entry runs bf16 rows
 * on the bf16 twin, as the f16 rows' run does at their own width */
template <int DSK, int DSV, int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_padded_decode_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    using qfast::pad_from;
    if constexpr (FK::mode == QSDPA_MODE_PLAIN && FV::mode == QSDPA_MODE_PLAIN)
        if (qsdpa_cuda_bf16_rows(pr))
            return qsdpa_cuda_decode_blocks_run<DK, DV, pad_from<qfast::plain_bf16_fmt, DSK>,
                                                pad_from<qfast::plain_bf16_fmt, DSV>>(ctx, pr, pr->function);
    return qsdpa_cuda_decode_blocks_run<DK, DV, pad_from<FK, DSK>, pad_from<FV, DSV>>(ctx, pr, pr->function);
}

template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_fast_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    const char *fn = pr->lse ? "qsdpa_attention_partial" : "qsdpa_attention";
    /* Scale planes that are not one aligned block per (b, head) (a tensor of exactly Lk keys, Lk not a
     * multiple of 8 at one f16 group per key) are copied aligned where the kernel chosen needs them so:
     * the decode kernel always, the prefill kernel for rows under 4 bytes (the staged paths read any
     * layout). The copy's planes are aligned, so its run never comes back here. */
    auto realigned = [&] { return qsdpa_cuda_realigned_run(ctx, pr, qsdpa_cuda_fast_run<DK, DV, FK, FV>); };
    if constexpr (FK::mode == QSDPA_MODE_PLAIN && FV::mode == QSDPA_MODE_PLAIN) {
        /* bf16 rows (the f16 rows' table entries match them by mode and width): short queries on the decode
         * kernel's bf16 twin, which converts each word as it reads it; long queries over bf16 rows, or f16 K
         * with bf16 V, which no kernel of this row reads, staged into f16 rows (session 21; before, the generic
         * kernel in f32), the rest to cuda.generic. The twin and the stage have the tensor-core rows' f16
         * range (kernels_cuda.def): |values| past 65504 overflow there. */
        if (qsdpa_cuda_bf16_rows(pr) && qsdpa_cuda_use_decode_kernel(pr, false)) /* false: no prefill kernel reads bf16 rows */
            return qsdpa_cuda_decode_blocks_run<DK, DV, qfast::plain_bf16_fmt, qfast::plain_bf16_fmt>(ctx, pr, fn);
        const bool f16_rows = pr->k.format.plain_dtype == QSDPA_DTYPE_F16 && pr->v.format.plain_dtype == QSDPA_DTYPE_F16;
        if (!f16_rows && qsdpa_cuda_staged_takes(ctx, pr)) return qsdpa_cuda_staged_run(ctx, pr, qsdpa_cuda_generic_run);
    }
    if constexpr (DK > 128 || DV > 128) {
        /* Past D 128 the decode kernel runs 8-row blocks only (16-row blocks spill at this width,
         * kernels_cuda.def): more folded rows take several row blocks in one launch, which stream the
         * same K/V chunks at the same time, mostly from L2 (v33; v29 launched once per 8-row query
         * slice, each slice reading the cache from DRAM again). Past 128 rows the staged path's f16
         * prefill (K width 256, V in two passes) wins where it can take the call (run 103, H200,
         * 4-bit: 128 rows at 32K 310 us as row blocks, 362 staged; at 8K 91 against 137; 256 rows
         * at 32K 609 against 468). */
        if (pr->group_ratio * pr->len_q > 4 * qfast::DEC_MAX_ROWS && qsdpa_cuda_staged_takes(ctx, pr))
            return qsdpa_cuda_staged_run(ctx, pr, qsdpa_cuda_generic_run);
        if (qsdpa_cuda_decode_layouts_ok(pr)) return qsdpa_cuda_decode_blocks_run<DK, DV, FK, FV>(ctx, pr, fn);
        return qsdpa_cuda_realign_takes(pr) ? realigned() : qsdpa_cuda_generic_run(ctx, pr);
    } else {
        if (qsdpa_cuda_use_decode_kernel(pr, qsdpa_cuda_prefill_wgmma<DK, DV, FK, FV>(ctx)))
            return qsdpa_cuda_decode_blocks_run<DK, DV, FK, FV>(ctx, pr, fn);
        /* short queries over a quantized cache whose planes kept them off the decode kernel */
        const bool short_quantized = FK::mode != QSDPA_MODE_PLAIN && pr->group_ratio * pr->len_q <= qfast::DEC_MAX_ROWS;
        if (short_quantized && qsdpa_cuda_realign_takes(pr)) return realigned();
        /* Long enough queries over a quantized cache: dequantized once into f16 for the f16 row, which
         * beats dequantizing each tile per 128-row block from 2048 folded rows on (cuda_staged.cu) */
        if constexpr (FK::mode != QSDPA_MODE_PLAIN)
            if (qsdpa_cuda_staged_prefill(ctx, pr))
                return qsdpa_cuda_staged_run(ctx, pr, [](qsdpa_context *c, const qsdpa_problem *q) {
                    return qsdpa_cuda_prefill_run<DK, DV, FK, FV>(c, q, q->function);
                });
        if (qsdpa_cuda_fast_hands_off(pr) && qsdpa_cuda_realign_takes(pr)) return realigned();
        return qsdpa_cuda_prefill_run<DK, DV, FK, FV>(ctx, pr, fn);
    }
}

/* A row of 2/3/5/6-bit codes (qfast::stored_as): short queries on the decode kernel, which widens the
 * codes as it reads them; the rest goes where cuda.generic sends such a cache (long queries staged to
 * f16, others repacked widened, or the generic kernel). No prefill kernel reads these codes. */
template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_widened_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    const char *fn = pr->lse ? "qsdpa_attention_partial" : "qsdpa_attention";
    /* the launch's own hand-offs (codes off 16 bytes, B x Hkv past 65535, ...) checked here, so they take
     * cuda.generic's routing below rather than the launch's fallback, the generic kernel */
    if (qsdpa_cuda_use_decode_kernel(pr, false) && !qsdpa_cuda_fast_hands_off(pr))
        return qsdpa_cuda_decode_blocks_run<DK, DV, FK, FV>(ctx, pr, fn);
    if (pr->group_ratio * pr->len_q <= qfast::DEC_MAX_ROWS && qsdpa_cuda_realign_takes(pr))
        return qsdpa_cuda_realigned_run(ctx, pr, qsdpa_cuda_widened_run<DK, DV, FK, FV>);
    return qsdpa_cuda_generic_kernel(ctx, pr);
}

/* A tensor-core table row's run (fast_instantiate.cuh) */
template <int DK, int DV, class FK, class FV>
static qsdpa_status qsdpa_cuda_row_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    if constexpr (qfast::stored_bits_of<FK>::value != FK::bits || qfast::stored_bits_of<FV>::value != FV::bits)
        return qsdpa_cuda_widened_run<DK, DV, FK, FV>(ctx, pr);
    else
        return qsdpa_cuda_fast_run<DK, DV, FK, FV>(ctx, pr);
}

#endif
