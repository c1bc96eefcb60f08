/* The staged and repacked paths of the cuda.generic row, and the staged prefill of the fast rows.
 *
 * Repacked (short queries, at most 32 folded rows, f16/bf16 q): K and V copied into the layout of
 * the narrowest tensor-core row that takes their formats at a wider head dim (D 96 -> 128, D 192 ->
 * 256), zero-padded, q too, and that row runs; its output is staged where Dv is not the width
 * (repack_tensor, qsdpa_cuda_repacked_run below). Affine 2/3-bit codes are widened to 4 bits and
 * 5/6-bit ones to 8 in the same copy (repack_bits), at the same head dim or a wider one. Precision:
 * the tensor-core rows'.
 *
 * Staged: long queries over head dims or formats that have no tensor-core row.
 *
 * It takes problems with more than 32 folded rows (ratio * Lq, where the fast rows
 * also leave their decode kernel), f16 or bf16 q, and Dk <= 256: head dims 96, 80,
 * 192 or 256, Dk != Dv, and formats without a fast row (affine 2/3/5/6 bits, ...);
 * the fast rows at D 256, whose long queries would otherwise run their decode kernel
 * slice by slice, send them here too. K and V are dequantized once per call into f16
 * rows padded with zeros, q is padded likewise, and an f16 prefill kernel attends:
 * one of the table's f16 rows (K and V width 64 or 128) or a stage row (K width 256,
 * V 128 columns per pass; kernels_cuda.def), whichever does the least work. V wider
 * than the kernel's V columns runs in passes, each a view of the next columns of the
 * staged V and out (each pass recomputes the scores: 1.5x the ideal work at D 256,
 * where one pass's O of 256 columns does not fit the kernel's registers). The first
 * Dv dims of the output are kept. Zero dims add nothing to q.k, and V's pad dims only
 * make output dims that are dropped, so the result is the f16 kernel's on the logical
 * problem.
 *
 * Precision is therefore the tensor-core rows' (kernels_cuda.def), not the generic
 * kernel's f32: dequantized K/V beyond f16's range (|x| > 65504, e.g. affine with huge
 * scales) overflow, and values below its normal range lose bits, as at D 64 and 128.
 *
 * Why: the generic kernel runs its products on CUDA cores in f32. A 4K causal prefill
 * at D 96 took it 24.7 ms where the f16 row takes 0.55 ms at D 128 (run 88, H200).
 * Staging costs one write and one read of an f16 copy of the cache, which long queries
 * amortise. Short queries (at most 32 folded rows) stay on the generic kernel: staging
 * a 32K cache per decode step costs more than reading it quantized saves, and a copy as
 * large as the f16 cache is what a quantized cache exists to avoid. (Decode with a GQA
 * ratio above 32 has more rows than that, and is staged.)
 *
 * Plain bf16 and f32 rows are staged too (session 21; before, the generic kernel took them): into f16, so
 * values past f16's range (|x| > 65504) overflow, as on every tensor-core row (kernels_cuda.def).
 * Left to the generic kernel: f32 q (SPEC §4's 2e-5 needs f32 products), Dk above 256, staging above
 * QSDPA_CUDA_STAGE_LIMIT_MB (default 1024 MiB of need; the buffer grows to 1.25x what
 * it needs), a stage buffer that cannot be allocated, and QSDPA_CUDA_STAGED=0 (the
 * coverage test's switch). The f16 kernel's own hand-offs (rows that see no key, partial
 * mode with a bool mask) run the generic kernel on the staged copy: correct, and
 * slower than skipping the copy would be. */
#include <stdlib.h>

#include "cuda/cuda_format.cuh"

/* The f16 kernels a stage can feed, from the kernel table: its f16 rows (K and V width D) and
 * its stage rows (K width DK, V DV columns per pass). */
#define ANY QSDPA_ANY
#define QSDPA_KERNEL(...)
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn)                                          \
    extern "C" qsdpa_status fn(qsdpa_context *ctx, const qsdpa_problem *p);
#define QSDPA_CUDA_STAGE_ROWS(unit, DK, DV, fn) extern "C" qsdpa_status fn(qsdpa_context *ctx, const qsdpa_problem *p);
#define QSDPA_CUDA_PAD_ROWS(unit, DSK, DSV, DK, DV, km, kb, kg, vm, vb, vg, fn)                            \
    extern "C" qsdpa_status fn(qsdpa_context *ctx, const qsdpa_problem *p);
#include "cuda/kernels_cuda.def"

namespace {

struct f16_kernel {
    bool f16;   /* K and V f16 rows (the other table rows are quantized) */
    int wk, wv; /* K width, V columns per pass */
    qsdpa_status (*run)(qsdpa_context *ctx, const qsdpa_problem *p);
};
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn)                                          \
    {km == QSDPA_MODE_PLAIN && kb == 16 && vm == QSDPA_MODE_PLAIN && vb == 16, D, D, fn},
#define QSDPA_CUDA_STAGE_ROWS(unit, DK, DV, fn) {true, DK, DV, fn},
const f16_kernel f16_kernels[] = {
#include "cuda/kernels_cuda.def"
};

/* Every tensor-core row of the table with its formats and head dim: what the repacked path looks up. */
struct fast_row {
    int km, kb, kg, vm, vb, vg, d;
    qsdpa_status (*run)(qsdpa_context *ctx, const qsdpa_problem *p);
};
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn) {km, kb, kg, vm, vb, vg, D, fn},
#define QSDPA_CUDA_STAGE_ROWS(unit, DK, DV, fn)
const fast_row fast_rows[] = {
#include "cuda/kernels_cuda.def"
};

/* The padded path's kernels: a decode kernel over a narrower cache (stored head dims dsk, dsv) */
struct padded_row {
    int dsk, dsv, km, kb, kg, vm, vb, vg;
    qsdpa_status (*run)(qsdpa_context *ctx, const qsdpa_problem *p);
};
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn)
#define QSDPA_CUDA_PAD_ROWS(unit, DSK, DSV, DK, DV, km, kb, kg, vm, vb, vg, fn) {DSK, DSV, km, kb, kg, vm, vb, vg, fn},
const padded_row padded_rows[] = {
#include "cuda/kernels_cuda.def"
};
#undef QSDPA_KERNEL
#undef ANY

constexpr int64_t STAGED_MIN_ROWS = 32; /* folded rows the fast rows' decode kernel takes */

/* The f16 kernel for p and its V passes: K width >= Dk, the least work (passes x (K width +
 * V columns)), then the fewest passes. */
struct stage_plan {
    const f16_kernel *kernel;
    int passes;
    int wk, wvt; /* staged K width, staged V width (passes x V columns) */
};

/* Dynamic shared memory of the f16 prefill kernel at K width wk, V columns wv (pf_layout for f16 rows: three
 * ring stages of 64 keys, plus on sm_90a the q tile of 128 rows and 1 KB of alignment). */
size_t f16_prefill_smem(const qsdpa_context *ctx, int wk, int wv) {
    const size_t ring = 3 * 64 * (size_t)(wk + wv) * 2;
    return ctx->cuda->cc >= 90 ? 1024 + ring + 128 * (size_t)wk * 2 : ring;
}

bool plan_of(const qsdpa_context *ctx, const qsdpa_problem *p, stage_plan *plan) {
    plan->kernel = nullptr;
    int64_t best = 0;
    for (const f16_kernel &k : f16_kernels) {
        if (!k.f16 || k.wk < p->dim_k) continue;
        /* the K-width-256 row needs 144 KiB on the mma.sync path: GPUs with 99 KiB blocks (sm_86/89)
         * would hand each V pass to the generic kernel after staging */
        if (f16_prefill_smem(ctx, k.wk, k.wv) > (size_t)ctx->cuda->smem_optin) continue;
        const int passes = (int)((p->dim_v + k.wv - 1) / k.wv);
        const int64_t work = (int64_t)passes * (k.wk + k.wv);
        if (!plan->kernel || work < best || (work == best && passes < plan->passes)) {
            *plan = {&k, passes, k.wk, passes * k.wv};
            best = work;
        }
    }
    return plan->kernel != nullptr;
}

/* Bytes of the stage: K and V (f16), q (its dtype, 2 bytes) and out (its dtype) where their dims are not
 * the staged widths, each 256-aligned. */
struct stage_layout {
    size_t k, v, q, out, total;
};

/* n rows of w elements of esize bytes, rounded up to 256; false on size_t overflow (stride-0
 * views let B x H x L pass validation at any size, so nothing bounds it before here). */
bool rows_bytes(size_t n, int w, size_t esize, size_t *out) {
    size_t b;
    if (!qsdpa_mul_size(n, (size_t)w * esize, &b) || b > SIZE_MAX - 255) return false;
    *out = (b + 255) / 256 * 256;
    return true;
}

bool layout_of(const qsdpa_problem *p, const stage_plan &plan, stage_layout *s) {
    size_t kv_rows, q_rows;
    if (!qsdpa_mul_size((size_t)p->batch, (size_t)p->heads_kv, &kv_rows) ||
        !qsdpa_mul_size(kv_rows, (size_t)p->len_k, &kv_rows) ||
        !qsdpa_mul_size((size_t)p->batch, (size_t)p->heads_q, &q_rows) ||
        !qsdpa_mul_size(q_rows, (size_t)p->len_q, &q_rows))
        return false;
    s->q = s->out = 0; /* q and out of the staged widths are used in place */
    if (!rows_bytes(kv_rows, plan.wk, 2, &s->k) || !rows_bytes(kv_rows, plan.wvt, 2, &s->v) ||
        (p->dim_k != plan.wk && !rows_bytes(q_rows, plan.wk, 2, &s->q)) ||
        (p->dim_v != plan.wvt && !rows_bytes(q_rows, plan.wvt, qsdpa_dtype_size(p->out_dtype), &s->out)))
        return false;
    if (s->k > SIZE_MAX / 4 || s->v > SIZE_MAX / 4) return false;
    s->total = s->k + s->v;
    if (s->q > SIZE_MAX - s->total) return false;
    s->total += s->q;
    if (s->out > SIZE_MAX - s->total) return false;
    s->total += s->out;
    return true;
}

/* Every staging kernel walks rows [B, H, L] as grid (L / 8, H, B) and blocks of (32, 8)
 * threads, a row per warp: no 64-bit division per element (run 89: element-indexed
 * forms took about 330 us of a 774 us D 96 prefill). */
dim3 rows_grid(int64_t batch, int64_t heads, int64_t len) {
    return dim3((unsigned)((len + 7) / 8), (unsigned)heads, (unsigned)batch);
}
const dim3 rows_block(32, 8);

/* Rows of t as f16 rows of w dims at dst ([B, H, L, w] contiguous), zeros past t.dim, value by value; shift
 * (K, [B * H][w], or null): taken from each value before its rounding (qsdpa_cuda_k_shift) */
__global__ void stage_rows(const qd_qtensor t, int64_t heads, int64_t len, int w, __half *dst, const float *shift) {
    const int64_t b = blockIdx.z, h = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (l >= len) return;
    __half *out = dst + ((b * heads + h) * len + l) * w;
    const float *sh = shift ? shift + (b * heads + h) * w : nullptr;
    for (int d = threadIdx.x; d < w; d += blockDim.x)
        out[d] = __float2half_rn(d < t.dim ? qd_element(t, b, h, l, d) - (sh ? sh[d] : 0.0f) : 0.0f);
}

/* The shift of one group or dim from the sum and the sum of squares of its count sampled values: their mean m,
 * where m^2 >= half their mean square, else 0 (why: k_shift_means) */
__device__ __forceinline__ float k_shift_of(float sum, float sq, float count) {
    const float m = sum / count;
    return isfinite(m) && isfinite(sq) && m * m >= 0.5f * (sq / count) ? m : 0.0f;
}

/* An affine group's shift: k_shift_of's m, with f16 or bf16 biases rounded to a multiple of the f16 spacing at the
 * largest sampled |bias| (zmax), so that a key's z - m, which the prefill kernel's f16 path rounds to f16 once for
 * the group's values (shifted_sb, fast_prefill.cuh), is exact for every sampled key where z and m share a sign
 * and |z - m| <= |z| (z an f16 value no larger than zmax, so a multiple of its own spacing, which divides the
 * rounded m's); k_shift_means then refuses the shift where a sampled key's z - m is still not exact: z across 0
 * from m, or |z| under about |m| / 2 (MLX's quantizer puts the bias at the edge of larger magnitude, so within
 * one sign |z| >= |m|). All biases 0: m rounded to f16. Why: a rounded z - m moved every value of a key's group
 * together, an error that does not cancel from key to key where the biases cross binades (an outlier channel at
 * the group's edge, MLX's bias there): fuzz case 1657218644:442, K near 3.4 with a +57 channel, 1.3x f16's bound
 * (run 253). Session 39 refused the shift wherever the biases lay far from m, which gave up shifts that helped; carrying
 * z - m as two f16 halves instead (run 256) cost the prefill kernel 3-7% with no shift at all. Emulated
 * (bench/NOTES.md session 40): 4/g64 K over offsets 10-20 with such a channel 3.0-4.4e-4 max|V|, against
 * 0.66-2.9e-3 refused. f32 biases: m as it is (every path takes z - m in f32 there). tools/emulate_prefill_k.py
 * holds the same arithmetic for its off-device check (robustness.kshift_emulation): change both together. */
__device__ __forceinline__ float k_shift_of_group(float sum, float sq, float count, float zmax, bool f32_biases) {
    const float m = k_shift_of(sum, sq, count);
    if (f32_biases) return m; /* z - m stays in f32 on every path (f32 scales: the prefill kernel's float2 path) */
    if (zmax == 0.0f) return __half2float(__float2half_rn(m)); /* z - m = -m */
    int e;
    frexpf(zmax, &e); /* zmax in [2^(e-1), 2^e): f16 spacing 2^(e-11) there, 2^-24 at the least */
    const float spacing = ldexpf(1.0f, e - 11 > -24 ? e - 11 : -24);
    return isfinite(zmax) ? rintf(m / spacing) * spacing : m;
}

/* The sum and sum of squares of word's 32 / BITS affine values (scale sc, bias z), each made as qd_element makes
 * it: the codes of a word of a power-of-two width, unrolled (run 252: qd_code's per-value bit arithmetic was
 * half of k_shift_means' instructions) */
template <int BITS>
__device__ __forceinline__ void k_shift_word(uint32_t word, float sc, float z, float &sum, float &sq) {
#pragma unroll
    for (int o = 0; o < 32; o += BITS) {
        const float v = __fadd_rn(__fmul_rn(sc, (float)((word >> o) & ((1u << BITS) - 1u))), z);
        sum += v, sq += v * v;
    }
}

/* qsdpa_cuda_k_shift's kernel: block (b, h, z) of K_SHIFT_THREADS threads over K_SHIFT_KEYS sampled keys.
 * Affine K: block z takes groups z, z + gridDim.z, ... (each group's shift is its own: blocks over the groups
 * keep a call of one KV head, MLA's, off a single SM), K_SHIFT_PARTS threads a key, each a strided share of
 * the group's values; f32 rows (gridDim.z 1): threads a dim, the keys dealt out among those of one dim. Why this many threads and the scale and bias loaded once a
 * group: the first version (session 36: a thread a key, qd_element per value, 256 threads on one SM per head)
 * ran a long chain of instructions per value on 8 warps an SM: the staged 4K causal prefill took 494-509 us
 * (runs 245-246), 458-464 with this one and 446-449 without the shift (run 248, H200). */
constexpr int K_SHIFT_THREADS = 1024, K_SHIFT_KEYS = 256, K_SHIFT_PARTS = K_SHIFT_THREADS / K_SHIFT_KEYS;
/* one block an SM stated (min blocks 1): left to itself ptxas aimed at two and spilled at 32 registers */
__global__ void __launch_bounds__(K_SHIFT_THREADS, 1) k_shift_means(const qd_qtensor t, int64_t heads, int64_t len,
                                                                  int w, float *dst) {
    const int64_t b = blockIdx.y, h = blockIdx.x;
    const int l = threadIdx.x, n = len < (int64_t)K_SHIFT_KEYS ? (int)len : K_SHIFT_KEYS;
    __shared__ float sum_part[K_SHIFT_THREADS], sq_part[K_SHIFT_THREADS]; /* a thread's (f32 rows), a warp's (affine) */
    __shared__ float zmax_part[K_SHIFT_THREADS / 32]; /* a warp's largest |bias| (affine) */
    float *out = dst + (b * heads + h) * w;
    if (t.mode == QSDPA_MODE_PLAIN) { /* f32 rows: no groups, so a constant a dim */
        const int lanes = t.dim < K_SHIFT_THREADS ? K_SHIFT_THREADS / t.dim : 1; /* threads a dim */
        const int dims = K_SHIFT_THREADS / lanes;                                 /* dims a pass (all, to D 1024) */
        for (int d0 = 0; d0 < t.dim; d0 += dims) {
            const int d = d0 + l % dims, lane = l / dims;
            float sum = 0.0f, sq = 0.0f;
            if (d < t.dim && lane < lanes)
#pragma unroll 4
                for (int j = lane; j < n; j += lanes) {
                    const float v = qd_element(t, b, h, (int64_t)j * len / n, d);
                    sum += v, sq += v * v;
                }
            sum_part[l] = sum, sq_part[l] = sq;
            __syncthreads();
            if (l < dims && d < t.dim) {
                for (int x = 1; x < lanes; x++) sum += sum_part[l + x * dims], sq += sq_part[l + x * dims];
                out[d] = k_shift_of(sum, sq, (float)n);
            }
            __syncthreads();
        }
        for (int d = t.dim + l; d < w; d += K_SHIFT_THREADS) out[d] = 0.0f;
        return;
    }
    const int groups = t.dim / t.group, j = l / K_SHIFT_PARTS, part = l % K_SHIFT_PARTS;
    const int64_t key = (int64_t)j * len / n; /* n keys spread over the cache */
    const uint32_t *row = (const uint32_t *)((const char *)t.codes + b * t.cs[0] + h * t.cs[1] + key * t.cs[2]);
    const int64_t srow = b * t.ss[0] + h * t.ss[1] + key * t.ss[2], brow = b * t.bs[0] + h * t.bs[1] + key * t.bs[2];
    const bool f32_biases = t.scale_dtype == QSDPA_DTYPE_F32;
    for (int gi = blockIdx.z; gi < groups; gi += gridDim.z) {
        float sum = 0.0f, sq = 0.0f; /* of the share's values in this key; a NaN or inf: no shift (below) */
        /* the key's bias as the prefill kernel's f16 path holds it (bf16 converted to f16; f32 biases as they are),
         * and its magnitude (the key's first share only) */
        float zh = 0.0f, zmax = 0.0f;
        if (j < n) {
            const float sc = qd_load_float(t.scales, t.scale_dtype, srow + gi);
            const float z = qd_load_float(t.biases, t.scale_dtype, brow + gi);
            zh = f32_biases ? z : __half2float(__float2half_rn(z));
            if (part == 0) zmax = fabsf(zh);
            if (t.bits == 2 || t.bits == 4 || t.bits == 8) { /* whole codes a word: the share is words */
                const int words = t.group * t.bits / 32;      /* a group's (groups are powers of two, >= 32) */
                for (int wi = part; wi < words; wi += K_SHIFT_PARTS) {
                    const uint32_t word = row[gi * words + wi];
                    if (t.bits == 4) k_shift_word<4>(word, sc, z, sum, sq);
                    else if (t.bits == 8) k_shift_word<8>(word, sc, z, sum, sq);
                    else k_shift_word<2>(word, sc, z, sum, sq);
                }
            } else { /* 3, 5, 6 bits: codes across words */
#pragma unroll 4
                for (int d = gi * t.group + part; d < (gi + 1) * t.group; d += K_SHIFT_PARTS) {
                    const float v = __fadd_rn(__fmul_rn(sc, (float)qd_code(row, t.bits, d)), z); /* as qd_element */
                    sum += v, sq += v * v;
                }
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            sum += __shfl_xor_sync(0xffffffffu, sum, o);
            sq += __shfl_xor_sync(0xffffffffu, sq, o);
            zmax = fmaxf(zmax, __shfl_xor_sync(0xffffffffu, zmax, o));
        }
        if ((l & 31) == 0) sum_part[l >> 5] = sum, sq_part[l >> 5] = sq, zmax_part[l >> 5] = zmax;
        __syncthreads();
        /* m: the mean of the group's values over the sampled keys, the constant that most shrinks their squares
         * (sum (v - m)^2 = sum v^2 - N m^2, so never more), taken only where it shrinks them at least by half
         * (m^2 >= mean v^2 / 2: an offset that dominates the spread). Session 36: the middle of the group
         * centres (bias + scale (2^bits - 1) / 2) was a poor m where a group holds an outlier, whose centre
         * lies halfway to it: an outlier channel (one value at -100, the rest near 0) put it near -50 in every
         * key, moving the 63 values near 0 to ~50 (7-15x f16's bound, SPEC 9.2); session 35's guard for that
         * (|m| at least the centres' spread plus the widest group's range) refused the shift wherever one
         * sampled value stood out (fuzz replay 236869353:466, 6-bit g128 over 9 keys, 3x f16's bound). */
        if (l == 0) { /* thread 0 alone adds the warps' partials (all 32 warps doing it was a sixth of the
                       * kernel's instructions, run 252) */
            sum = sum_part[0], sq = sq_part[0], zmax = zmax_part[0];
            for (int x = 1; x < K_SHIFT_THREADS / 32; x++)
                sum += sum_part[x], sq += sq_part[x], zmax = fmaxf(zmax, zmax_part[x]);
            sum_part[0] = k_shift_of_group(sum, sq, (float)n * (float)t.group, zmax, f32_biases);
        }
        __syncthreads();
        /* the shift only where every sampled key's z - m is exact in f16 (k_shift_of_group) */
        const float shift = sum_part[0];
        const bool inexact = !f32_biases && shift != 0.0f && j < n && part == 0 &&
                             __half2float(__float2half_rn(zh - shift)) != zh - shift;
        const float taken = __syncthreads_or(inexact) ? 0.0f : shift;
        if (l < 32)
            for (int d = l; d < t.group; d += 32) out[gi * t.group + d] = taken;
        __syncthreads();
    }
    if (blockIdx.z == 0)
        for (int d = t.dim + l; d < w; d += K_SHIFT_THREADS) out[d] = 0.0f;
}

/* qsdpa_cuda_q_shift's kernel: a warp a folded row (blockIdx.x * 8 + threadIdx.y) of KV head blockIdx.y */
__global__ void q_shift_rows(const void *q, int q_dtype, int64_t qs0, int64_t qs1, int64_t qs2, int64_t qs3,
                             int64_t heads_kv, int64_t ratio, int64_t rows, int64_t dim, float scale_log2,
                             const float *shift, int w, float *dst) {
    const int64_t bh = blockIdx.y, f = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (f >= rows) return;
    const int64_t b = bh / heads_kv, h = bh % heads_kv * ratio + f % ratio, i = f / ratio;
    const int64_t row = b * qs0 + h * qs1 + i * qs2;
    const float *m = shift + bh * w;
    float sum = 0.0f;
    for (int64_t d = threadIdx.x; d < dim; d += 32) sum = fmaf(qd_load_float(q, q_dtype, row + d * qs3), m[d], sum);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (threadIdx.x == 0) dst[bh * rows + f] = sum * scale_log2;
}

/* The same on qd_word_path's tensors: a thread per 32-bit word of codes (its `per`
 * values share one scale and bias); words past the row write the zero pad. */
template <int MODE>
__global__ void stage_words(const qd_qtensor t, int64_t heads, int64_t len, int w, __half *dst, const float *shift) {
    const int64_t b = blockIdx.z, h = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (l >= len) return;
    const int per = MODE == QSDPA_MODE_PLAIN ? 2 : 32 / t.bits, nwords = t.dim / per;
    const uint32_t *row = (const uint32_t *)((const char *)t.codes + b * t.cs[0] + h * t.cs[1] + l * t.cs[2]);
    __half *out = dst + ((b * heads + h) * len + l) * w;
    for (int c = threadIdx.x; c < w / per; c += blockDim.x) {
        __half2 *o2 = (__half2 *)(out + c * per);
        if (c >= nwords) {
            for (int i = 0; i < per / 2; i++) o2[i] = __float2half2_rn(0.0f);
            continue;
        }
        const uint32_t word = row[c];
        if constexpr (MODE == QSDPA_MODE_PLAIN) { /* f16 rows: the word is the two halves; bf16 converted */
            o2[0] = t.plain_dtype == QSDPA_DTYPE_BF16 ? qd_bf16x2_to_half2(word) : *(const __half2 *)&word;
        } else {
            const int gi = c * per / t.group;
            const float sc = qd_group_scale(t, b * t.ss[0] + h * t.ss[1] + l * t.ss[2], gi);
            const float z =
                MODE == QSDPA_MODE_AFFINE ? qd_load_float(t.biases, t.scale_dtype, b * t.bs[0] + h * t.bs[1] + l * t.bs[2] + gi) -
                                                (shift ? shift[(b * heads + h) * w + gi * t.group] : 0.0f)
                                          : 0.0f;
            for (int i = 0; i < per / 2; i++)
                o2[i] = __floats2half2_rn(qd_word_value<MODE>(word, t.bits, 2 * i, sc, z),
                                          qd_word_value<MODE>(word, t.bits, 2 * i + 1, sc, z));
        }
    }
}

/* The same for affine codes of B = 3, 5 or 6 bits: a thread per unit of words (qd_odd_unit). */
template <int B>
__global__ void stage_units(const qd_qtensor t, int64_t heads, int64_t len, int w, __half *dst, const float *shift) {
    using U = qd_odd_unit<B>;
    const int64_t b = blockIdx.z, h = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (l >= len) return;
    const int nunits = t.dim / U::CODES;
    const uint32_t *row = (const uint32_t *)((const char *)t.codes + b * t.cs[0] + h * t.cs[1] + l * t.cs[2]);
    __half2 *out = (__half2 *)(dst + ((b * heads + h) * len + l) * w);
    for (int u = threadIdx.x; u < w / U::CODES; u += blockDim.x) {
        __half2 *o2 = out + u * (U::CODES / 2);
        if (u >= nunits) {
            for (int i = 0; i < U::CODES / 2; i++) o2[i] = __float2half2_rn(0.0f);
            continue;
        }
        uint32_t words[U::WORDS];
#pragma unroll
        for (int x = 0; x < U::WORDS; x++) words[x] = row[u * U::WORDS + x];
        const int gi = u * U::CODES / t.group;
        const float sc = qd_load_float(t.scales, t.scale_dtype, b * t.ss[0] + h * t.ss[1] + l * t.ss[2] + gi);
        const float z = qd_load_float(t.biases, t.scale_dtype, b * t.bs[0] + h * t.bs[1] + l * t.bs[2] + gi) -
                        (shift ? shift[(b * heads + h) * w + gi * t.group] : 0.0f);
#pragma unroll
        for (int i = 0; i < U::CODES / 2; i++)
            o2[i] = __floats2half2_rn(qd_unit_value<B>(words, 2 * i, sc, z), qd_unit_value<B>(words, 2 * i + 1, sc, z));
    }
}

/* Stage K or V: by words (units at 3/5/6 bits) where qd_word_path allows, else (f32 plain rows too)
 * value by value; shift: K's (qsdpa_cuda_k_shift: affine K or f32 rows) or null. */
void stage_tensor(const qsdpa_qtensor *src, int64_t batch, int64_t heads, int64_t len, int w, __half *dst,
                  cudaStream_t stream, const float *shift = nullptr) {
    const qd_qtensor t = qd_qtensor_make(src);
    const dim3 grid = rows_grid(batch, heads, len), block = rows_block;
    if (!qd_word_path(&t) || (t.mode == QSDPA_MODE_PLAIN && t.plain_dtype == QSDPA_DTYPE_F32)) {
        stage_rows<<<grid, block, 0, stream>>>(t, heads, len, w, dst, shift);
        return;
    }
    switch (t.mode) {
    case QSDPA_MODE_PLAIN: stage_words<QSDPA_MODE_PLAIN><<<grid, block, 0, stream>>>(t, heads, len, w, dst, nullptr); break;
    case QSDPA_MODE_AFFINE:
        if (t.bits == 3) stage_units<3><<<grid, block, 0, stream>>>(t, heads, len, w, dst, shift);
        else if (t.bits == 5) stage_units<5><<<grid, block, 0, stream>>>(t, heads, len, w, dst, shift);
        else if (t.bits == 6) stage_units<6><<<grid, block, 0, stream>>>(t, heads, len, w, dst, shift);
        else stage_words<QSDPA_MODE_AFFINE><<<grid, block, 0, stream>>>(t, heads, len, w, dst, shift);
        break;
    case QSDPA_MODE_MXFP8: stage_words<QSDPA_MODE_MXFP8><<<grid, block, 0, stream>>>(t, heads, len, w, dst, nullptr); break;
    default: stage_words<QSDPA_MODE_MXFP4><<<grid, block, 0, stream>>>(t, heads, len, w, dst, nullptr); break; /* MXFP4, NVFP4 */
    }
}


/* Rows [B, H, L] of C chunks: the first n_copy of each src row to dst, zeros up to n_dst
 * (q into the stage, zero-padded; the stage's output rows back to out). Strides in chunks. */
template <class C>
__global__ void copy_rows(const C *src, int64_t ss0, int64_t ss1, int64_t ss2, C *dst, int64_t ds0, int64_t ds1,
                          int64_t ds2, int64_t len, int n_copy, int n_dst) {
    const int64_t b = blockIdx.z, h = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
    if (l >= len) return;
    const C *s = src + b * ss0 + h * ss1 + l * ss2;
    C *d = dst + b * ds0 + h * ds1 + l * ds2;
    for (int c = threadIdx.x; c < n_dst; c += blockDim.x) d[c] = c < n_copy ? s[c] : C{}; /* 0 bits: +0 */
}

template <class C>
void launch_copy(const void *src, const int64_t *ss, void *dst, const int64_t *ds, size_t esize, int64_t batch,
                 int64_t heads, int64_t len, int n_copy, int n_dst, cudaStream_t stream) {
    const int64_t per = (int64_t)(sizeof(C) / esize); /* elements per chunk */
    copy_rows<C><<<rows_grid(batch, heads, len), rows_block, 0, stream>>>((const C *)src, ss[0] / per, ss[1] / per, ss[2] / per, (C *)dst,
                                             ds[0] / per, ds[1] / per, ds[2] / per, len, (int)(n_copy / per),
                                             (int)(n_dst / per));
}

/* copy_rows on elements of esize bytes (1, 2 or 4) given element strides: 16-byte chunks where
 * both sides' pointers, strides and row lengths allow (run 91: the element form took about
 * 100 us of a 567 us D 96 prefill), else elements. */
void copy_rows_any(const void *src, const int64_t *ss, void *dst, const int64_t *ds, size_t esize, int64_t batch,
                   int64_t heads, int64_t len, int n_copy, int n_dst, cudaStream_t stream) {
    if (qsdpa_cuda_aligned16(src, ss, 3, esize) && qsdpa_cuda_aligned16(dst, ds, 3, esize) &&
        n_copy * esize % 16 == 0 && n_dst * esize % 16 == 0)
        launch_copy<uint4>(src, ss, dst, ds, esize, batch, heads, len, n_copy, n_dst, stream);
    else if (esize == 1)
        launch_copy<uint8_t>(src, ss, dst, ds, esize, batch, heads, len, n_copy, n_dst, stream);
    else if (esize == 2)
        launch_copy<uint16_t>(src, ss, dst, ds, esize, batch, heads, len, n_copy, n_dst, stream);
    else
        launch_copy<uint32_t>(src, ss, dst, ds, esize, batch, heads, len, n_copy, n_dst, stream);
}

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


/* Calls the tensor-core rows hand to the generic kernel whatever their layout (partial mode with a bool
 * mask, rows that see no key): staging or repacking them would only precede a generic run on the copy. */
bool rows_hand_off(const qsdpa_problem *p) {
    return (p->lse && p->mask_kind == QSDPA_MASK_BOOL) || !qsdpa_cuda_every_row_sees_a_key(p);
}

/* QSDPA_CUDA_STAGED=0 sends what the staged, padded, repacked and realigned paths take to the generic kernel
 * (the coverage test's switch) */
bool staging_enabled() {
    static const bool enabled = qsdpa_cuda_env("QSDPA_CUDA_STAGED", 1) != 0;
    return enabled;
}

/* What both the staged and the repacked path ask of p: enabled, f16/bf16 q (the tensor-core rows'),
 * no hand-off to the generic kernel waiting behind the copy, and the copy kernels' grid (L / 8, H, B). */
bool stageable(const qsdpa_problem *p) {
    if (!staging_enabled() || rows_hand_off(p)) return false;
    if (p->q_dtype != QSDPA_DTYPE_F16 && p->q_dtype != QSDPA_DTYPE_BF16) return false;
    return p->batch <= 65535 && p->heads_q <= 65535 && (p->len_q + 7) / 8 <= INT32_MAX &&
           (p->len_k + 7) / 8 <= INT32_MAX;
}

/* The stage's bytes for p, false where the staged path cannot take p at all (stageable, too few rows,
 * no f16 kernel wide enough, overflow). */
bool stage_need(const qsdpa_context *ctx, const qsdpa_problem *p, double *bytes) {
    if (!stageable(p) || p->group_ratio * p->len_q <= STAGED_MIN_ROWS) return false;
    stage_plan plan;
    stage_layout lay;
    if (!plan_of(ctx, p, &plan) || !layout_of(p, plan, &lay)) return false;
    *bytes = (double)lay.total;
    return true;
}

/* ---- The repacked path: short queries at head dims without a fast row ---- */

/* The code width a repack of format f writes: affine 2 and 3 bits widen to 4, 5 and 6 to 8 (the same
 * integers in wider fields, scales and biases unchanged: the same dequantized values), so those caches
 * run a 4- or 8-bit row's decode kernel; every other format keeps its width. */
int widened_bits(int bits) { return bits == 2 || bits == 3 ? 4 : bits == 5 || bits == 6 ? 8 : bits; }
int repack_bits(const qsdpa_format &f) { return f.mode == QSDPA_MODE_AFFINE ? widened_bits(f.bits) : f.bits; }

/* Whether a table row's K or V columns (mode, bits, group; any group: f16 rows) take format f, widened. */
bool row_takes(const qsdpa_format &f, int mode, int bits, int group) {
    if ((int)f.mode != mode || repack_bits(f) != bits) return false;
    if (mode == QSDPA_MODE_PLAIN) return f.plain_dtype == QSDPA_DTYPE_F16;
    return group == QSDPA_ANY || f.group == group;
}

/* The padded kernel of p's stored head dims and formats exactly (no widening), for at most 32 folded rows
 * and f16/bf16 q, whatever the layout; null where none is. QSDPA_CUDA_PADDED=0 turns the path off (the
 * repacked path then takes these calls: an A/B knob). */
const padded_row *padded_kernel_of(const qsdpa_problem *p) {
    static const bool on = qsdpa_cuda_env("QSDPA_CUDA_PADDED", 1) != 0;
    if (!on || !stageable(p) || p->group_ratio * p->len_q > STAGED_MIN_ROWS) return nullptr;
    /* bf16 rows (K and V both): the f16 rows' entries, which run them on the bf16 twin */
    qsdpa_problem as_f16;
    if (qsdpa_cuda_bf16_rows(p)) {
        as_f16 = *p;
        as_f16.k.format.plain_dtype = as_f16.v.format.plain_dtype = QSDPA_DTYPE_F16;
        p = &as_f16;
    }
    for (const padded_row &r : padded_rows)
        if (r.dsk == p->dim_k && r.dsv == p->dim_v && p->k.format.bits == r.kb && p->v.format.bits == r.vb &&
            row_takes(p->k.format, r.km, r.kb, r.kg) && row_takes(p->v.format, r.vm, r.vb, r.vg))
            return &r;
    return nullptr;
}

/* The padded kernel that reads p's cache in place: padded_kernel_of, where the layouts are ones the decode
 * kernel copies with scale planes of one aligned block (a pad_from stage keeps them as stored, rows of e.g.
 * 3 or 6 bytes); null where none does. */
const padded_row *padded_row_of(const qsdpa_problem *p) {
    const padded_row *r = padded_kernel_of(p);
    const bool blocks = r && qsdpa_cuda_scales_one_block(&p->k) && qsdpa_cuda_scales_one_block(&p->v);
    const int plain = qsdpa_cuda_bf16_rows(p) ? QSDPA_DTYPE_BF16 : QSDPA_DTYPE_F16; /* the kernel's rows */
    return blocks && qsdpa_cuda_decode_layouts_ok(p) && !qsdpa_cuda_fast_hands_off(p, plain, plain) ? r : nullptr;
}

/* The fast row a repack of p feeds: the narrowest head dim W >= Dk, Dv whose row takes p's K and V formats. */
const fast_row *repack_row(const qsdpa_problem *p) {
    const fast_row *best = nullptr;
    for (const fast_row &r : fast_rows)
        if (r.d >= p->dim_k && r.d >= p->dim_v && (!best || r.d < best->d) && row_takes(p->k.format, r.km, r.kb, r.kg) &&
            row_takes(p->v.format, r.vm, r.vb, r.vg))
            best = &r;
    return best;
}

/* One copy of the repacked path: rows [B, H, len] of src_units units (`unit` bytes) at src (byte strides
 * ss) into rows of dst_units units, `lpad` rows per (b, h) plane, at dst; units past src_units are zeros.
 * A widening job (from_bits set) writes 16-byte units of to_bits-wide codes read from from_bits-wide ones:
 * src_units is then the count of units that hold codes. */
struct repack_job {
    const char *src;
    int64_t ss[3];
    char *dst;
    unsigned heads, len, lpad, src_units, dst_units, unit;
    unsigned total;  /* B * heads * len * dst_units: the job's threads */
    unsigned block0; /* the job's first block in the launch */
    unsigned char from_bits; /* 0: a plain copy; 2, 3 (to 4 bits), 5 or 6 (to 8 bits): widening */
    unsigned char bytewise;  /* 16-byte destination units from a source of any alignment, read byte by byte */
    unsigned src_bytes;      /* bytewise: the source row's bytes (the rest of its last unit is zeros) */
};
constexpr int REPACK_JOBS = 7; /* K's and V's codes, scales and biases; q */
constexpr int REPACK_THREADS = 256;
struct repack_set {
    repack_job job[REPACK_JOBS];
    int count;
    unsigned blocks;
};

template <class C>
__device__ __forceinline__ void repack_unit(const char *src, char *dst, bool copy) {
    *(C *)dst = copy ? *(const C *)src : C{}; /* C{}: 0 bits, 0.0 in every format */
}

/* Destination unit u (16 bytes: 32 codes of 4 bits or 16 of 8) of a widening job from FB-bit codes, read
 * from the source row's bit stream (SPEC 2: code j at bits [j * FB, +FB)): 64, 80 or 96 source bits that
 * start at a multiple of 16, so at most four words, funnel-shifted once to start at bit 0; then every
 * code's position is a constant. The row is whole words, 4-byte aligned (add_repack_job), and the unit's
 * bits lie inside it: no word past the row is read. */
template <int FB, int TB>
__device__ __forceinline__ uint4 widen_unit(const uint32_t *row, unsigned u) {
    constexpr int CODES = 128 / TB, NB = CODES * FB, NW = (NB + 31) / 32 + 1;
    constexpr uint32_t MASK = (1u << FB) - 1;
    const unsigned bit0 = u * NB, k0 = bit0 / 32, sh = bit0 % 32;
    uint32_t w[NW];
#pragma unroll
    for (int j = 0; j < NW; j++) w[j] = (k0 + j) * 32 < bit0 + NB ? row[k0 + j] : 0u;
    uint32_t v[NW - 1];
#pragma unroll
    for (int j = 0; j < NW - 1; j++) v[j] = __funnelshift_r(w[j], w[j + 1], sh);
    uint32_t out[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < CODES; i++) {
        const int p = i * FB, k = p / 32;
        const uint32_t hi = k + 1 < NW - 1 ? v[k + 1] : 0u;
        out[i * TB / 32] |= (__funnelshift_r(v[k], hi, p % 32) & MASK) << (i * TB % 32);
    }
    return make_uint4(out[0], out[1], out[2], out[3]);
}

/* Every job of a call in one launch, a thread per destination unit (run 105: a warp per row and a launch
 * per tensor left most lanes idle on rows of 3 16-byte units, 6 launches; the copies took about 115 us of
 * a 140 us D 96 decode). The divisions are 32-bit: the host keeps each job's threads below 2^32. */
__global__ void __launch_bounds__(REPACK_THREADS) repack_copy(const __grid_constant__ repack_set s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    /* launched with programmatic dependent launch (launch_repack): the kernel it feeds may be placed now and
     * waits for this one's end; this one waits for the kernel ahead of it before touching memory (which may
     * still read the buffer this call overwrites, or write the cache it reads) */
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
    int j = 0;
    while (j + 1 < s.count && blockIdx.x >= s.job[j + 1].block0) j++;
    const repack_job &jb = s.job[j];
    const unsigned idx = (blockIdx.x - jb.block0) * REPACK_THREADS + threadIdx.x;
    if (idx >= jb.total) return;
    const unsigned row = idx / jb.dst_units, c = idx - row * jb.dst_units;
    const unsigned bh = row / jb.len, l = row - bh * jb.len;
    const unsigned b = bh / jb.heads, h = bh - b * jb.heads;
    const bool copy = c < jb.src_units;
    const char *src_row = jb.src + (int64_t)b * jb.ss[0] + (int64_t)h * jb.ss[1] + (int64_t)l * jb.ss[2];
    const char *src = src_row + (size_t)c * jb.unit;
    char *dst = jb.dst + (((size_t)bh * jb.lpad + l) * jb.dst_units + c) * jb.unit;
    if (jb.bytewise) { /* a warp's byte loads cover 512 contiguous source bytes */
        uint32_t w[4] = {0u, 0u, 0u, 0u};
        const unsigned o = c * 16;
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (o + i < jb.src_bytes) w[i >> 2] |= (uint32_t)(uint8_t)src_row[o + i] << (8 * (i & 3));
        *(uint4 *)dst = make_uint4(w[0], w[1], w[2], w[3]);
        return;
    }
    if (jb.from_bits) {
        const uint32_t *words = (const uint32_t *)src_row;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (copy) switch (jb.from_bits) {
            case 2: x = widen_unit<2, 4>(words, c); break;
            case 3: x = widen_unit<3, 4>(words, c); break;
            case 5: x = widen_unit<5, 8>(words, c); break;
            case 6: x = widen_unit<6, 8>(words, c); break;
            }
        *(uint4 *)dst = x;
        return;
    }
    switch (jb.unit) {
    case 16: repack_unit<uint4>(src, dst, copy); break;
    case 8: repack_unit<uint2>(src, dst, copy); break;
    case 4: repack_unit<uint32_t>(src, dst, copy); break;
    case 2: repack_unit<uint16_t>(src, dst, copy); break;
    default: repack_unit<uint8_t>(src, dst, copy); break;
    }
}

/* repack_copy on ctx's stream, with programmatic dependent launch where the device and the loaded binary
 * are sm_90+ (the binary then holds the griddepcontrol instructions): its launch overlaps the previous
 * kernel's tail, and the row's kernel, launched the same way, overlaps its own. */
qsdpa_status launch_repack(qsdpa_context *ctx, const repack_set &set, const char *fn, const char *what) {
    static int ptx_version[64]; /* per device; 0: not read yet */
    const int dev = ctx->cuda->device < 64 ? ctx->cuda->device : 0;
    if (!ptx_version[dev]) {
        cudaFuncAttributes fa;
        cudaError_t err = cudaFuncGetAttributes(&fa, repack_copy);
        if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, what);
        ptx_version[dev] = fa.ptxVersion > 0 ? fa.ptxVersion : 1;
    }
    return qsdpa_cuda_launch_pdl(ctx, repack_copy, dim3(set.blocks), dim3(REPACK_THREADS), 0,
                                 qsdpa_cuda_pdl_ok(ctx, ptx_version[dev]), set, fn, what);
}

/* Adds the job copying rows [B, heads, len] of src_bytes (t: its data and element strides) into rows of
 * dst_bytes at the stage offset *off (lpad rows per plane, 256-aligned), and returns the copy as a tensor
 * [B, heads, len, dst elements] with the planes' strides. With base null only the bytes are counted (one
 * function sizes and fills, so they agree). false past the launch's 32-bit indices or on overflow.
 * `bytewise_ok`: where the source allows no 16-byte units but dst_bytes is whole ones, read the source a
 * byte at a time into 16-byte units (a thread per 16 bytes, not per byte: the index arithmetic was most of
 * a byte-unit copy's cost, bench/NOTES.md v45.2). */
bool add_repack_job(repack_set *s, const qsdpa_tensor &t, int64_t batch, int64_t heads, int64_t len, int64_t lpad,
                    int64_t src_bytes, int64_t dst_bytes, char *base, size_t *off, qsdpa_tensor *copy,
                    int from_bits = 0, bool bytewise_ok = false) {
    const size_t es = qsdpa_dtype_size(t.dtype);
    auto aligned = [&](unsigned unit) {
        return !(src_bytes % unit || dst_bytes % unit || (uintptr_t)t.data % unit || (size_t)t.stride[0] * es % unit ||
                 (size_t)t.stride[1] * es % unit || (size_t)t.stride[2] * es % unit);
    };
    if (dst_bytes > INT32_MAX) return false; /* rows_bytes and the unit counts below are 32-bit */
    unsigned unit = 16;
    const int to_bits = widened_bits(from_bits);
    if (from_bits) { /* widening (repack_copy's widen_unit set): a thread per 16-byte destination unit, source
                      * rows read as words */
        if (to_bits == from_bits || dst_bytes % 16 || !aligned(4)) return false;
    } else {
        while (unit > 1 && !aligned(unit)) unit /= 2;
    }
    const bool bytewise = !from_bits && bytewise_ok && unit < 16 && dst_bytes % 16 == 0 && src_bytes <= dst_bytes;
    if (bytewise) unit = 16;
    const int64_t threads_limit = (int64_t)UINT32_MAX - 2 * REPACK_THREADS;
    size_t rows, bytes;
    if (s->count == REPACK_JOBS || len < 1 || !qsdpa_mul_size((size_t)batch, (size_t)heads, &rows) ||
        rows > (size_t)threads_limit / (size_t)lpad || !rows_bytes(rows * (size_t)lpad, (int)dst_bytes, 1, &bytes) ||
        bytes > SIZE_MAX - *off || (int64_t)(rows * (size_t)len) > threads_limit / (dst_bytes / unit))
        return false;
    repack_job &jb = s->job[s->count++];
    jb.src = (const char *)t.data;
    for (int d = 0; d < 3; d++) jb.ss[d] = (int64_t)((uint64_t)t.stride[d] * es); /* a size-1 dim's stride may be any */
    jb.dst = base ? base + *off : nullptr;
    jb.heads = (unsigned)heads;
    jb.len = (unsigned)len;
    jb.lpad = (unsigned)lpad;
    jb.unit = unit;
    /* a widening job's source units: the destination units that hold codes */
    jb.src_units = (unsigned)(from_bits ? src_bytes * 8 / from_bits * to_bits / 128
                                        : bytewise ? (src_bytes + 15) / 16 : src_bytes / unit);
    jb.bytewise = bytewise;
    jb.src_bytes = bytewise ? (unsigned)src_bytes : 0u;
    jb.dst_units = (unsigned)(dst_bytes / unit);
    jb.from_bits = (unsigned char)from_bits;
    jb.total = (unsigned)(rows * (size_t)len * jb.dst_units);
    jb.block0 = s->blocks;
    const unsigned blocks = (jb.total + REPACK_THREADS - 1) / REPACK_THREADS;
    if (blocks > (unsigned)INT32_MAX - s->blocks) return false;
    s->blocks += blocks;
    if (copy) {
        const int64_t n = dst_bytes / (int64_t)es;
        *copy = qsdpa_tensor_4d(jb.dst, t.dtype, batch, heads, len, n);
        copy->stride[1] = lpad * n;
        copy->stride[0] = heads * lpad * n;
    }
    *off += bytes;
    return true;
}

/* K or V repacked to head dim w, zero-padded: codes, scales and biases, each [B, H, L, its width at w] in
 * planes of Lk rounded up to 16 keys, so every (b, h) plane starts 16-byte aligned and the decode kernel
 * copies a chunk's scale rows as one block at any Lk. Zero codes with zero scales and biases are 0.0 in
 * every format, so the pad dims add nothing to q.k (q's pad is zero too) and make output dims that are
 * dropped. `view` (when base is set) is the repacked tensor. */
bool repack_tensor(repack_set *s, const qsdpa_qtensor *t, int64_t batch, int64_t heads, int64_t len, int w,
                   char *base, size_t *off, qsdpa_qtensor *view) {
    const bool plain = t->format.mode == QSDPA_MODE_PLAIN;
    const int64_t lpad = (len + 15) / 16 * 16;
    if (view) {
        *view = *t;
        view->dim = w;
    }
    /* codes: the row's bytes (bits per value, or the f16 values of plain rows), affine 2/3/5/6 bits widened */
    const int bits = plain ? 16 : t->format.bits, to_bits = plain ? 16 : repack_bits(t->format);
    if (view) view->format.bits = to_bits;
    if (!add_repack_job(s, t->codes, batch, heads, len, lpad, t->dim * bits / 8, (int64_t)w * to_bits / 8, base, off,
                        view ? &view->codes : nullptr, to_bits != bits ? bits : 0))
        return false;
    if (plain) return true;
    const qsdpa_tensor *planes[2] = {&t->scales, &t->biases};
    qsdpa_tensor *views[2] = {view ? &view->scales : nullptr, view ? &view->biases : nullptr};
    for (int i = 0; i < 2; i++) {
        if (!planes[i]->data) continue;
        const int64_t es = (int64_t)qsdpa_dtype_size(planes[i]->dtype);
        if (!add_repack_job(s, *planes[i], batch, heads, len, lpad, t->dim / t->format.group * es,
                            w / t->format.group * es, base, off, views[i]))
            return false;
    }
    return true;
}

/* Whether the fast row of head dim w takes the repacked layout with its decode kernel: the D 256 rows'
 * decode kernel (their only one) reads affine scales as f16 or bf16 only. Otherwise the row would hand
 * the call to the generic kernel after the copy, and the generic kernel is taken directly. */
bool repacked_layout_ok(const qsdpa_problem *p, int w) {
    const qsdpa_qtensor *ts[2] = {&p->k, &p->v};
    for (const qsdpa_qtensor *t : ts)
        if (w > 128 && t->format.mode == QSDPA_MODE_AFFINE && t->scales.dtype == QSDPA_DTYPE_F32) return false;
    return true;
}

/* The repacked call's copies (K, V, q where Dk is not the row's width) and the stage offset of its
 * output (where Dv is not the width): with base null only sized. */
struct repack_plan {
    repack_set set;
    qsdpa_qtensor k, v;
    qsdpa_tensor q;
    size_t out_off, bytes;
};

bool repack_plan_of(const qsdpa_problem *p, int w, char *base, repack_plan *rp) {
    memset(&rp->set, 0, sizeof rp->set);
    size_t off = 0;
    if (!repack_tensor(&rp->set, &p->k, p->batch, p->heads_kv, p->len_k, w, base, &off, &rp->k) ||
        !repack_tensor(&rp->set, &p->v, p->batch, p->heads_kv, p->len_k, w, base, &off, &rp->v))
        return false;
    if (p->dim_k != w) { /* q zero-padded to w, its rows contiguous */
        qsdpa_tensor q = qsdpa_tensor_4d((void *)p->q, p->q_dtype, p->batch, p->heads_q, p->len_q, p->dim_k);
        for (int d = 0; d < 4; d++) q.stride[d] = p->q_stride[d];
        if (!add_repack_job(&rp->set, q, p->batch, p->heads_q, p->len_q, p->len_q, p->dim_k * 2, (int64_t)w * 2, base,
                            &off, &rp->q))
            return false;
    }
    rp->out_off = off;
    size_t q_rows, ob = 0;
    if (!qsdpa_mul_size((size_t)p->batch, (size_t)p->heads_q, &q_rows) ||
        !qsdpa_mul_size(q_rows, (size_t)p->len_q, &q_rows) ||
        (p->dim_v != w && !rows_bytes(q_rows, w, qsdpa_dtype_size(p->out_dtype), &ob)) || ob > SIZE_MAX - off)
        return false;
    rp->bytes = off + ob;
    return rp->bytes <= SIZE_MAX / 4;
}

/* The repacked path's fast row and plan for p, false where it cannot take p. */
bool repack_need(const qsdpa_problem *p, const fast_row **row, repack_plan *rp) {
    if (!stageable(p) || p->group_ratio * p->len_q > STAGED_MIN_ROWS) return false; /* long: the f16 stage */
    if (!(*row = repack_row(p))) return false;
    const int w = (*row)->d;
    const bool widens = repack_bits(p->k.format) != p->k.format.bits || repack_bits(p->v.format) != p->v.format.bits;
    if (p->dim_k == w && p->dim_v == w && !widens) return false; /* nothing to do: a call forced onto cuda.generic keeps it */
    return repacked_layout_ok(p, w) && repack_plan_of(p, w, nullptr, rp);
}

/* The stage's cap (QSDPA_CUDA_STAGE_LIMIT_MB, 1024 MiB of need) */
double stage_limit_bytes() {
    static const double limit_mb = qsdpa_cuda_env("QSDPA_CUDA_STAGE_LIMIT_MB", 1024);
    return limit_mb * 1048576.0;
}

} // namespace

void qsdpa_cuda_k_shift(const qsdpa_qtensor *k, int64_t batch, int64_t heads, int64_t len, int w, float *dst,
                        cudaStream_t stream) {
    const int groups = k->format.mode == QSDPA_MODE_AFFINE ? (int)(k->dim / k->format.group) : 1;
    const dim3 grid((unsigned)heads, (unsigned)batch, (unsigned)(groups < 32 ? groups : 32));
    k_shift_means<<<grid, K_SHIFT_THREADS, 0, stream>>>(qd_qtensor_make(k), heads, len, w, dst);
}

void qsdpa_cuda_q_shift(const qsdpa_problem *p, const float *shift, int w, float *dst, cudaStream_t stream) {
    const int64_t rows = p->group_ratio * p->len_q, bhkv = p->batch * p->heads_kv;
    const dim3 block(32, 8), grid((unsigned)((rows + 7) / 8), (unsigned)bhkv);
    q_shift_rows<<<grid, block, 0, stream>>>(p->q, p->q_dtype, p->q_stride[0], p->q_stride[1], p->q_stride[2],
                                               p->q_stride[3], p->heads_kv, p->group_ratio, rows, p->dim_k,
                                               p->scale * 1.4426950408889634f, shift, w, dst);
}

qsdpa_status qsdpa_cuda_k_shift_call(qsdpa_context *ctx, const qsdpa_problem *p, int w, const float **k_shift,
                                     const float **row_shift) {
    const bool rows_meet_outside = p->sinks || p->lse;
    const size_t heads = (size_t)(p->batch * p->heads_kv),
                 per_head = (size_t)w + (rows_meet_outside ? (size_t)(p->group_ratio * p->len_q) : 0);
    void *buf;
    const qsdpa_status st = qsdpa_cuda_kshift_buffer(ctx, heads * per_head * 4, &buf);
    if (st != QSDPA_OK) return st;
    float *shift = (float *)buf, *rows = rows_meet_outside ? shift + heads * (size_t)w : nullptr;
    cudaStream_t stream = qsdpa_cuda_stream(ctx);
    qsdpa_cuda_k_shift(&p->k, p->batch, p->heads_kv, p->len_k, w, shift, stream);
    if (rows) qsdpa_cuda_q_shift(p, shift, w, rows, stream);
    *k_shift = shift, *row_shift = rows;
    return QSDPA_OK;
}

/* Whether a call takes K's shift (qsdpa_cuda_k_shift): affine K or f32 rows (the stage and the wide kernel round
 * both to 16 bits; the prefill kernel reads only affine K of these), keys to average */
bool qsdpa_cuda_k_shift_takes(const qsdpa_problem *p) {
    static const bool enabled = qsdpa_cuda_env("QSDPA_CUDA_K_SHIFT", 1) != 0;
    const qsdpa_format &f = p->k.format;
    const bool f32_rows = f.mode == QSDPA_MODE_PLAIN && f.plain_dtype == QSDPA_DTYPE_F32;
    return enabled && (f.mode == QSDPA_MODE_AFFINE || f32_rows) && p->len_k > 0;
}

bool qsdpa_cuda_staged_takes(const qsdpa_context *ctx, const qsdpa_problem *p) {
    double bytes;
    return stage_need(ctx, p, &bytes) && bytes <= stage_limit_bytes();
}

/* Run 100 (H200, D 128, GQA 4): staged onto the f16 row, a 4K causal prefill took 465 us against the
 * prefill kernel's 550 (4-bit; 462-470 against 502-566 for every format, f16 rows 439), Lq 1024 over 32K
 * 1.53 ms against 1.82, Lq 512 over 32K 944 against 997; at 1024 folded rows (Lq 256 over 8K) staging
 * lost, 186 against 164. Both costs grow with Lk, so the rule is on rows. The stage is a speed choice
 * here, not a necessity, so it has its own, lower cap: 256 MiB (a 16K prefill at B 1 stages 64 MiB). */
bool qsdpa_cuda_staged_prefill(const qsdpa_context *ctx, const qsdpa_problem *p) {
    static const double min_rows = qsdpa_cuda_env("QSDPA_CUDA_STAGE_PREFILL_ROWS", 2048);
    static const double limit_mb = qsdpa_cuda_env("QSDPA_CUDA_STAGE_PREFILL_MB", 256);
    double bytes;
    return min_rows > 0 && (double)(p->group_ratio * p->len_q) >= min_rows && stage_need(ctx, p, &bytes) &&
           bytes <= limit_mb * 1048576.0 && bytes <= stage_limit_bytes();
}

/* The first Dv dims of the staged output rows (o_s, element strides o_stride) into pr's out: the end of
 * both paths' runs where Dv is not the width they ran at. */
static qsdpa_status copy_out(qsdpa_context *ctx, const qsdpa_problem *pr, const void *o_s, const int64_t *o_stride,
                             const char *what) {
    copy_rows_any(o_s, o_stride, pr->out, pr->out_stride, qsdpa_dtype_size(pr->out_dtype), pr->batch, pr->heads_q,
                  pr->len_q, (int)pr->dim_v, (int)pr->dim_v, qsdpa_cuda_stream(ctx));
    return qsdpa_cuda_launch_status(pr->function, what);
}

/* The context buffer a path copies into (qsdpa_cuda_stage, qsdpa_cuda_realign_buffer) */
typedef qsdpa_status (*stage_buffer_fn)(qsdpa_context *ctx, size_t bytes, void **out);

/* The entry of every copying path's run: pr's device and pointers checked, then `bytes` of `buffer` at
 * *base. false where the call ends here with *st: an error, or `fallback`'s run where the buffer cannot be
 * allocated. */
static bool stage_enter(qsdpa_context *ctx, const qsdpa_problem *pr, size_t bytes, stage_buffer_fn buffer,
                        qsdpa_cuda_run_fn fallback, void **base, qsdpa_status *st) {
    *st = qsdpa_cuda_enter(ctx, pr->function);
    if (*st == QSDPA_OK) *st = qsdpa_cuda_check_problem(ctx, pr, pr->function);
    if (*st != QSDPA_OK) return false;
    const qsdpa_status grown = buffer(ctx, bytes, base);
    if (grown == QSDPA_ERR_OUT_OF_MEMORY) { /* no room for the copy: the caller's kernel */
        qsdpa_clear_error();
        *st = fallback(ctx, pr);
        return false;
    }
    *st = grown; /* a buffer that must grow inside a graph capture: refused, not silently rerouted */
    return grown == QSDPA_OK;
}

qsdpa_status qsdpa_cuda_staged_run(qsdpa_context *ctx, const qsdpa_problem *pr, qsdpa_cuda_run_fn fallback) {
    const char *fn = pr->function;
    stage_plan plan; /* stage_need checked both */
    stage_layout lay;
    plan_of(ctx, pr, &plan);
    layout_of(pr, plan, &lay);
    void *base;
    qsdpa_status st;
    if (!stage_enter(ctx, pr, lay.total, qsdpa_cuda_stage, fallback, &base, &st)) return st;
    char *k_s = (char *)base, *v_s = k_s + lay.k, *q_s = v_s + lay.v, *o_s = q_s + lay.q;
    const int wk = plan.wk, wv = plan.kernel->wv, wvt = plan.wvt;
    cudaStream_t stream = qsdpa_cuda_stream(ctx);

    /* q and out are staged only where their head dims are not already the staged widths */
    const bool q_staged = pr->dim_k != wk, out_staged = pr->dim_v != wvt;
    const int64_t q_rows_stride[4] = {pr->heads_q * pr->len_q * wk, pr->len_q * wk, wk, 1};
    const int64_t o_rows_stride[4] = {pr->heads_q * pr->len_q * wvt, pr->len_q * wvt, wvt, 1};
    /* SPEC 8.1's mend: K shifted before its f16 rounding (qsdpa_cuda_k_shift); where the scores meet a sink or
     * the lse, each row's constant (qsdpa_cuda_q_shift) after the shift in the same buffer, for the f16 row to
     * take back (score_shift; the generic kernel it may hand off to does too) */
    const float *kshift = nullptr, *score_shift = nullptr;
    if (qsdpa_cuda_k_shift_takes(pr) && (st = qsdpa_cuda_k_shift_call(ctx, pr, wk, &kshift, &score_shift)) != QSDPA_OK)
        return st;
    stage_tensor(&pr->k, pr->batch, pr->heads_kv, pr->len_k, wk, (__half *)k_s, stream, kshift);
    stage_tensor(&pr->v, pr->batch, pr->heads_kv, pr->len_k, wvt, (__half *)v_s, stream);
    if (q_staged)
        copy_rows_any(pr->q, pr->q_stride, q_s, q_rows_stride, 2, pr->batch, pr->heads_q, pr->len_q, (int)pr->dim_k,
                      wk, stream);
    if ((st = qsdpa_cuda_launch_status(fn, "staging K, V and q")) != QSDPA_OK) return st;

    qsdpa_problem sp = *pr;
    sp.device_checked = true; /* pr's pointers were checked above; the rest are the stage's */
    sp.dim_k = wk;
    sp.dim_v = wv;
    sp.k = plain_f16(k_s, pr->batch, pr->heads_kv, pr->len_k, wk);
    sp.score_shift = score_shift;
    if (q_staged) {
        sp.q = q_s;
        for (int d = 0; d < 4; d++) sp.q_stride[d] = q_rows_stride[d];
    }
    char *out = (char *)(out_staged ? o_s : pr->out);
    if (out_staged)
        for (int d = 0; d < 4; d++) sp.out_stride[d] = o_rows_stride[d];
    const size_t out_esize = qsdpa_dtype_size(pr->out_dtype);
    /* pass j: V columns [j wv, (j + 1) wv) of the staged V rows (wvt apart) into the same output columns */
    for (int j = 0; j < plan.passes; j++) {
        sp.v = plain_f16(v_s + (size_t)j * wv * 2, pr->batch, pr->heads_kv, pr->len_k, wv);
        const int64_t v_stride[4] = {pr->heads_kv * pr->len_k * wvt, pr->len_k * wvt, wvt, 1};
        for (int d = 0; d < 4; d++) sp.v.codes.stride[d] = v_stride[d];
        sp.out = out + (size_t)j * wv * out_esize;
        if ((st = plan.kernel->run(ctx, &sp)) != QSDPA_OK) return st;
    }
    qsdpa_set_route(ctx, "cuda.staged:", ctx->last_route);
    return out_staged ? copy_out(ctx, pr, o_s, o_rows_stride, "copying the staged output") : QSDPA_OK;
}

bool qsdpa_cuda_repacked_takes(const qsdpa_problem *p) {
    const fast_row *row;
    repack_plan rp;
    return repack_need(p, &row, &rp) && (double)rp.bytes <= stage_limit_bytes();
}

bool qsdpa_cuda_padded_takes(const qsdpa_problem *p) { return padded_row_of(p) != nullptr; }

qsdpa_status qsdpa_cuda_padded_run(qsdpa_context *ctx, const qsdpa_problem *pr) {
    const padded_row *row = padded_row_of(pr); /* qsdpa_cuda_padded_takes (or the realigned copy's plan) checked it */
    if (!row) return qsdpa_cuda_generic_run(ctx, pr);
    const qsdpa_status st = row->run(ctx, pr);
    qsdpa_set_route(ctx, "cuda.padded:", ctx->last_route);
    return st;
}

qsdpa_status qsdpa_cuda_repacked_run(qsdpa_context *ctx, const qsdpa_problem *pr, qsdpa_cuda_run_fn fallback) {
    const char *fn = pr->function;
    const fast_row *row;
    repack_plan rp;
    repack_need(pr, &row, &rp); /* qsdpa_cuda_repacked_takes checked it */
    void *base;
    qsdpa_status st;
    if (!stage_enter(ctx, pr, rp.bytes, qsdpa_cuda_stage, fallback, &base, &st)) return st;
    const int w = row->d;
    repack_plan_of(pr, w, (char *)base, &rp); /* the same plan, now with the stage's addresses */
    if ((st = launch_repack(ctx, rp.set, fn, "repacking K, V and q")) != QSDPA_OK) return st;
    qsdpa_problem sp = *pr;
    sp.device_checked = true; /* pr's pointers were checked above; the rest are the stage's */
    sp.dim_k = sp.dim_v = w;
    sp.k = rp.k;
    sp.v = rp.v;
    if (pr->dim_k != w) {
        sp.q = rp.q.data;
        for (int d = 0; d < 4; d++) sp.q_stride[d] = rp.q.stride[d];
    }
    const int64_t rows_stride[4] = {pr->heads_q * pr->len_q * w, pr->len_q * w, w, 1};
    char *o_s = (char *)base + rp.out_off;
    const bool out_staged = pr->dim_v != w;
    if (out_staged) {
        sp.out = o_s;
        for (int d = 0; d < 4; d++) sp.out_stride[d] = rows_stride[d];
    }
    st = row->run(ctx, &sp);
    qsdpa_set_route(ctx, "cuda.repacked:", ctx->last_route);
    if (st != QSDPA_OK || !out_staged) return st;
    return copy_out(ctx, pr, o_s, rows_stride, "copying the repacked call's output");
}

/* ---- The realigned path: scale planes the decode kernel cannot copy as one block ---- */
namespace {

/* f32 affine scales are left as they are: the decode kernel reads f16/bf16 ones only, and the prefill
 * kernel copies 4-byte rows wherever they are. */
bool realignable(const qsdpa_qtensor *t) {
    return t->format.mode != QSDPA_MODE_PLAIN && t->scales.dtype != QSDPA_DTYPE_F32;
}

bool needs_realign(const qsdpa_qtensor *t) {
    return realignable(t) && !qsdpa_cuda_scales_one_block(t);
}

/* The copies of p's planes that need it, into [B, Hkv, Lk rounded up to 16, groups] planes at base (null:
 * only sized), and the problem that reads them. */
bool realign_plan_of(const qsdpa_problem *p, char *base, repack_set *set, qsdpa_problem *sp, size_t *bytes) {
    memset(set, 0, sizeof *set);
    *sp = *p;
    size_t off = 0;
    const int64_t lpad = (p->len_k + 15) / 16 * 16;
    qsdpa_qtensor *ts[2] = {&sp->k, &sp->v};
    for (qsdpa_qtensor *t : ts) {
        if (!needs_realign(t)) continue;
        qsdpa_tensor *planes[2] = {&t->scales, &t->biases};
        for (qsdpa_tensor *plane : planes) {
            if (!plane->data) continue;
            const int64_t groups = t->dim / t->format.group, row = groups * (int64_t)qsdpa_dtype_size(plane->dtype);
            qsdpa_tensor copy;
            if (plane->stride[2] == groups && lpad * row <= INT32_MAX) {
                /* rows back to back: each (b, head) plane is one run of Lk rows, copied as one row of Lk * row
                 * bytes into lpad * row (3- and 6-byte rows at odd offsets: 16-byte units read byte-wise) */
                if (!add_repack_job(set, *plane, p->batch, p->heads_kv, 1, 1, p->len_k * row, lpad * row, base, &off,
                                    &copy, 0, true))
                    return false;
                copy = qsdpa_tensor_4d(copy.data, plane->dtype, p->batch, p->heads_kv, p->len_k, groups);
                copy.stride[1] = lpad * groups;
                copy.stride[0] = p->heads_kv * lpad * groups;
            } else if (!add_repack_job(set, *plane, p->batch, p->heads_kv, p->len_k, lpad, row, row, base, &off, &copy)) {
                return false;
            }
            *plane = copy;
        }
    }
    *bytes = off;
    return true;
}

/* The problem p becomes once its unaligned planes are copied aligned (planned at a stand-in 256-aligned
 * base: the copy's alignment is what decides); false where the realigned path cannot take p at all. */
bool realigned_view(const qsdpa_problem *p, qsdpa_problem *sp) {
    if (!staging_enabled() || rows_hand_off(p) || !(needs_realign(&p->k) || needs_realign(&p->v))) return false;
    repack_set set;
    size_t bytes;
    return realign_plan_of(p, (char *)256, &set, sp, &bytes) && (double)bytes <= stage_limit_bytes();
}

} // namespace

bool qsdpa_cuda_realign_takes(const qsdpa_problem *p) {
    qsdpa_problem sp;
    return realigned_view(p, &sp) && !qsdpa_cuda_fast_hands_off(&sp);
}

/* A D 96 cache whose scale planes are not one aligned block (a tensor of exactly Lk keys, Lk not a multiple
 * of 16, with 3- or 6-byte scale rows): its planes copied aligned (about 1/16 of the cache at 4 bits) make it
 * one the padded path takes, where the repacked path would copy all of it. */
bool qsdpa_cuda_padded_realign_takes(const qsdpa_problem *p) {
    qsdpa_problem sp; /* the formats and dims first: most calls here have no padded kernel at all */
    return padded_kernel_of(p) && realigned_view(p, &sp) && padded_row_of(&sp) != nullptr;
}

qsdpa_status qsdpa_cuda_realigned_run(qsdpa_context *ctx, const qsdpa_problem *pr, qsdpa_cuda_run_fn run) {
    const char *fn = pr->function;
    repack_set set;
    qsdpa_problem sp;
    size_t bytes;
    realign_plan_of(pr, nullptr, &set, &sp, &bytes); /* qsdpa_cuda_realign_takes checked it */
    void *base;
    qsdpa_status st;
    /* no room: the generic kernel, not `run`, which would come back here */
    if (!stage_enter(ctx, pr, bytes, qsdpa_cuda_realign_buffer, qsdpa_cuda_generic_run, &base, &st)) return st;
    realign_plan_of(pr, (char *)base, &set, &sp, &bytes);
    sp.device_checked = true; /* pr's pointers were checked above; the rest are the buffer's */
    if ((st = launch_repack(ctx, set, fn, "realigning K and V scale planes")) != QSDPA_OK) return st;
    st = run(ctx, &sp);
    qsdpa_set_route(ctx, "cuda.realigned:", ctx->last_route);
    return st;
}
