/* What the generic row's kernels share (cuda_generic.cu: generic_attention, generic_decode,
 * generic_combine; cuda_generic_wide.cu: generic_wide): their parameters, the per-key score
 * rules, the causal key range, and the wide kernel's host interface. */
#ifndef QSDPA_CUDA_GENERIC_CUH
#define QSDPA_CUDA_GENERIC_CUH

#include "cuda/cuda_format.cuh"

namespace qgen {

constexpr int GEN_ROWS = 8;  /* folded rows per block */
constexpr int GEN_WARPS = 4;

struct gen_params : qd_io {
    int64_t batch, hq, lq, lk, ratio, key_offset, key_total, window;
    int dk, dv, causal;
    float scale, masked;
    float *part;         /* [nsplit][rows][4 + dv] */
    int nsplit;
    int64_t keys_per_split;
    int64_t rows;        /* batch * hq * lq */
    int64_t row_chunks;  /* ceil(ratio * lq / the kernel's rows a block) */
    int kpitch, vpitch;  /* elements per staged K / V row (f32; generic_wide: q's 16-bit type), zero-padded */
    bool k_words, v_words; /* qd_word_path */
    bool k_vec4, v_vec4; /* generic_decode (K) and generic_wide: rows of whole 16-byte pieces at 16-byte alignment */
    bool skip;           /* qsdpa_cuda_generic_can_skip */
    const float *score_shift; /* each folded row's score shift under K's shift (log2 units, [B*Hkv][ratio*Lq]):
                               * qsdpa_problem.score_shift, or the wide kernel's own; null: none */
    const float *k_shift;     /* generic_wide: K's shift ([B*Hkv][dk], qsdpa_cuda_k_shift), or null */
};

/* The score of key j (this call's index) for a folded row whose last visible global key is
 * `last` and whose mask row starts at `mrow`: scale * dot, then causal/window and the mask; a
 * dropped key scores p.masked. keep_flag: 1 where the key counts (generic_combine's kept). */
__device__ __forceinline__ float gen_key_score(const gen_params &p, float dot, int64_t j, int64_t last, int64_t mrow,
                                               float &keep_flag) {
    float s = p.scale * dot;
    bool keep = true;
    if (p.causal) {
        const int64_t pos = p.key_offset + j;
        if (pos > last || (p.window > 0 && pos <= last - p.window)) keep = false;
    }
    if (keep && p.mask_kind != QSDPA_MASK_NONE) {
        const int64_t at = mrow + j * p.ms[3];
        if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
        else s += qd_load_float(p.mask, p.mask_dtype, at);
    }
    keep_flag = keep ? 1.0f : 0.0f;
    return keep ? s : p.masked;
}

/* With p.skip: [j0, j1) narrowed to the keys some row of the block sees (`last` of its
 * first nrows rows, a register or shared array of N). */
template <int N>
__device__ __forceinline__ void gen_skip_range(const gen_params &p, const int64_t (&last)[N], int nrows, int64_t &j0,
                                               int64_t &j1) {
    int64_t lo = INT64_MAX, hi = INT64_MIN;
#pragma unroll
    for (int r = 0; r < N; r++) {
        if (r >= nrows) break;
        const int64_t end = last[r] - p.key_offset;
        hi = max(hi, end + 1);
        lo = min(lo, p.window > 0 ? end - p.window + 1 : (int64_t)0);
    }
    j0 = max(j0, lo);
    j1 = min(j1, hi);
}

/* Thread 0 of the block: the keys [j0, j1) of split blockIdx.y into range (shared memory); with p.skip only
 * those some of the block's first nrows rows see (last: a shared array). The caller syncs before reading. */
template <int N>
__device__ __forceinline__ void gen_split_range(const gen_params &p, const int64_t (&last)[N], int nrows,
                                                int64_t (&range)[2]) {
    if (threadIdx.x == 0) {
        int64_t j0 = (int64_t)blockIdx.y * p.keys_per_split, j1 = min(p.lk, j0 + p.keys_per_split);
        if (p.skip) gen_skip_range(p, last, nrows, j0, j1);
        range[0] = j0;
        range[1] = j1;
    }
}

/* The wide kernel (cuda_generic_wide.cu): f16/bf16 q, Dv <= 512, 16-row tiles, 32-key tiles. */
constexpr int WIDE_T = 32;

/* Whether rows of t (on the words path) are whole 16-byte pieces at 16-byte alignment. */
static inline bool gen_rows_vec4(const qd_qtensor *t, bool words) {
    return words && (t->dim / qd_codes_per_item(t)) % 4 == 0 && (uintptr_t)t->codes % 16 == 0 && t->cs[0] % 16 == 0 &&
           t->cs[1] % 16 == 0 && t->cs[2] % 16 == 0;
}

/* Shared memory of a wide block in bytes (wm row tiles; pitches in elements). */
size_t wide_smem_bytes(int wm, int kpitch, int vpitch);

/* The wide kernel for q of dtype q_dtype, Dv, wm row tiles; nullptr where none is built. */
void (*wide_kernel(int q_dtype, int dv, int wm))(const gen_params);

/* Row tiles of the wide kernel for this call, 0 where it does not take it (else sets p's pitches and vec4 flags). */
int wide_choice(const qsdpa_context *ctx, gen_params *p, int64_t folded, bool decode_taken);

} // namespace qgen

#endif
