/* Shared declarations of the CUDA backend's translation units (not installed).
 * Host side: the per-context state, device scratch, pointer checks, the
 * error-to-status bridge. Device side: small numeric helpers. */
#ifndef QSDPA_CUDA_INTERNAL_CUH
#define QSDPA_CUDA_INTERNAL_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "cuda/cuda_backend.h"

/* Per-context CUDA state (ctx->cuda). Scratch grows on the first call of a
 * larger shape and is reused afterwards, so steady-state calls allocate
 * nothing and can be captured in a CUDA graph. */
#define QSDPA_CUDA_PTR_CACHE 1024

/* An outgrown buffer, kept until the context is destroyed (graphs captured earlier still use it) */
struct qsdpa_cuda_retired {
    void *ptr;
    struct qsdpa_cuda_retired *next;
};

struct qsdpa_cuda_state {
    int device;          /* CUDA ordinal the context was created on */
    int sm_count;        /* multiprocessors */
    int smem_optin;      /* largest dynamic shared memory per block (bytes) */
    int smem_per_sm;     /* shared memory of a multiprocessor (bytes) */
    int cc;              /* compute capability, major*10 + minor */
    void *scratch;       /* device scratch: split-K partials */
    size_t scratch_bytes;
    void *stage;         /* device scratch of the staged path: padded f16 K/V, q and out (cuda_staged.cu) */
    size_t stage_bytes;
    void *realign;       /* device scratch of the realigned path: K/V scale and bias planes (cuda_staged.cu) */
    size_t realign_bytes;
    void *kshift;        /* K's shift of the prefill kernel (qsdpa_cuda_k_shift): [B * Hkv][DK] floats */
    size_t kshift_bytes;
    void *arrivals;      /* the decode kernel's per-(b, head, row block) arrival counters: zero between calls */
    size_t arrivals_bytes;
    bool arrivals_cleared; /* the live arrivals buffer has been set to zero (on the context's stream) */
    struct qsdpa_cuda_retired *retired; /* outgrown scratch, stage and realign buffers */
    /* Pointers already found to be device memory: cudaPointerGetAttributes
     * costs about a microsecond and a call checks up to 11 pointers, which
     * would dominate short decode calls. Direct-mapped by address. */
    const void *device_ptrs[QSDPA_CUDA_PTR_CACHE];
};


/* Device error -> QSDPA_ERR_DEVICE with the CUDA message. */
qsdpa_status qsdpa_cuda_error(cudaError_t err, const char *function, const char *what);
/* Grow-only device scratch of at least bytes (cudaMalloc only when it grows). */
qsdpa_status qsdpa_cuda_scratch(qsdpa_context *ctx, size_t bytes, void **out);
/* The same for the staged path's buffer, which lives beside the split-K scratch of the kernel it feeds. */
qsdpa_status qsdpa_cuda_stage(qsdpa_context *ctx, size_t bytes, void **out);
/* The realigned path's buffer: its own, because the row it feeds may stage (a long query). */
qsdpa_status qsdpa_cuda_realign_buffer(qsdpa_context *ctx, size_t bytes, void **out);
/* K's shift and the rows' constants of the call under way (qsdpa_cuda_k_shift, qsdpa_cuda_q_shift: the prefill
 * kernel, the staged path, the wide kernel); its own buffer, as the staged and realigned paths feed those. */
qsdpa_status qsdpa_cuda_kshift_buffer(qsdpa_context *ctx, size_t bytes, void **out);
/* SPEC 8.1's mend for affine or f32 K rounded to 16 bits (the prefill kernel's tiles, the staged path's copy, the
 * wide kernel's tiles): dst[(b Hkv + h) w + d] = the mean m of the values of d's group (f32 rows: of dim d) over
 * 256 keys spread over the cache, where m^2 is at least half their mean square (an offset that dominates their
 * spread), else 0; 0 past K's dim. The kernels subtract it from every key's bias (f32 rows: value) before the
 * rounding, so a value errs by 2^-11 |k - shift| in place of
 * 2^-11 |k|: the same for every key of a row, it changes each score by q . shift, a constant of the row that the
 * softmax cancels. Where a score meets a value outside the softmax (a sink, the lse of partial mode), the kernel
 * takes that constant back (qsdpa_cuda_q_shift; the staged path passes it to the f16 row as
 * qsdpa_problem.score_shift). Launched on the context's stream. */
void qsdpa_cuda_k_shift(const qsdpa_qtensor *k, int64_t batch, int64_t heads, int64_t len, int w, float *dst,
                        cudaStream_t stream);
/* The constant each score of a row moved by under K's shift, in log2 units: dst[(b Hkv + g) rows + f] = scale
 * log2(e) (q[b, h, i] . shift[b Hkv + g]) for folded row f = i ratio + h % ratio of KV head g (rows = ratio Lq),
 * shift as qsdpa_cuda_k_shift wrote it (w floats a KV head, zero past Dk). */
void qsdpa_cuda_q_shift(const qsdpa_problem *p, const float *shift, int w, float *dst, cudaStream_t stream);
/* What every kernel taking K's shift needs, in the K-shift buffer: *k_shift, p's shift (qsdpa_cuda_k_shift, w floats
 * a KV head), then where p's scores meet a sink or the lse, *row_shift, each folded row's constant
 * (qsdpa_cuda_q_shift); else *row_shift null. */
qsdpa_status qsdpa_cuda_k_shift_call(qsdpa_context *ctx, const qsdpa_problem *p, int w, const float **k_shift,
                                     const float **row_shift);
/* Whether a call's K takes the shift: affine K or f32 rows (sinks and lse corrected wherever it is taken) */
bool qsdpa_cuda_k_shift_takes(const qsdpa_problem *p);
/* `count` arrival counters, zero on return (a grown buffer is cleared on the context's stream; the kernel
 * that counts on them sets each back to zero when its last CTA has arrived). */
qsdpa_status qsdpa_cuda_arrivals(qsdpa_context *ctx, size_t count, unsigned **out);
/* Make ctx's device current (cudaSetDevice) for a call. */
qsdpa_status qsdpa_cuda_enter(qsdpa_context *ctx, const char *function);
/* Every data pointer of a validated problem must be on the device. */
qsdpa_status qsdpa_cuda_check_problem(qsdpa_context *ctx, const qsdpa_problem *p, const char *function);
/* Status of the launch just made (cudaGetLastError). */
qsdpa_status qsdpa_cuda_launch_status(const char *function, const char *kernel);

/* A numeric environment knob (the benchmark switches QSDPA_CUDA_*), `unset` when absent. Callers keep
 * it in a function-local static (C++: initialised once, thread-safe), so it is read once. */
static inline double qsdpa_cuda_env(const char *name, double unset) {
    const char *e = getenv(name);
    return e ? atof(e) : unset;
}

/* Every query row sees at least one key of this call's slice under causal/window (true when not
 * causal). Where one does not, the reference's fully-masked-row rule needs every key. */
static inline bool qsdpa_cuda_every_row_sees_a_key(const qsdpa_problem *p) {
    if (!p->causal) return true;
    int64_t shift = p->key_total - p->len_q - p->key_offset; /* row i: last local key i + shift */
    int64_t first_last = shift, final_last = p->len_q - 1 + shift;
    if (first_last < 0) return false;
    if (p->window > 0 && final_last - p->window + 1 > p->len_k - 1) return false;
    return true;
}

/* ptr and its first n strides (in elements of esize bytes) on 16-byte boundaries. */
static inline bool qsdpa_cuda_aligned16(const void *ptr, const int64_t *strides, int n, size_t esize) {
    if ((uintptr_t)ptr % 16) return false;
    for (int i = 0; i < n; i++)
        if (((size_t)strides[i] * esize) % 16) return false;
    return true;
}

static inline cudaStream_t qsdpa_cuda_stream(const qsdpa_context *ctx) {
    return (cudaStream_t)ctx->options.stream;
}

/* Programmatic dependent launch needs an sm_90+ device and a loaded binary of PTX 9.0+ (the
 * one that holds the kernel's griddepcontrol instructions). */
static inline bool qsdpa_cuda_pdl_ok(const qsdpa_context *ctx, int ptx_version) {
    return ctx->cuda->cc >= 90 && ptx_version >= 90;
}

#ifdef __CUDACC__
/* One launch of a one-argument kernel on the context's stream; with `pdl`, programmatic
 * dependent launch (the kernel must wait on the grid dependency before it touches global
 * memory the previous kernel writes). */
template <class P>
static qsdpa_status qsdpa_cuda_launch_pdl(qsdpa_context *ctx, void (*kernel)(P), dim3 grid, dim3 block, int smem,
                                         bool pdl, const P &args, const char *fn, const char *name) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = qsdpa_cuda_stream(ctx);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, args);
    if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, name);
    return qsdpa_cuda_launch_status(fn, name);
}
#endif

/* The generic kernel: every format, D <= 1024, dtype, mask, partial mode. */
extern "C" qsdpa_status qsdpa_cuda_generic_run(qsdpa_context *ctx, const qsdpa_problem *p);
/* The cuda.generic row's run: the staged, padded, realigned or repacked path where one takes p, else the
 * generic kernel (cuda_generic.cu) */
extern "C" qsdpa_status qsdpa_cuda_generic_kernel(qsdpa_context *ctx, const qsdpa_problem *p);
/* The staged path (cuda_staged.cu): whether it takes a problem of the cuda.generic row (or a D 256
 * row's long query), whether a fast row's long query over a quantized cache goes there rather than
 * to its own prefill kernel (QSDPA_CUDA_STAGE_PREFILL_ROWS: from how many folded rows, 0 never;
 * QSDPA_CUDA_STAGE_PREFILL_MB: its cap), and its run, which calls `fallback` where the stage buffer
 * cannot be allocated. */
typedef qsdpa_status (*qsdpa_cuda_run_fn)(qsdpa_context *ctx, const qsdpa_problem *p);
bool qsdpa_cuda_staged_takes(const qsdpa_context *ctx, const qsdpa_problem *p);
bool qsdpa_cuda_staged_prefill(const qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cuda_staged_run(qsdpa_context *ctx, const qsdpa_problem *p, qsdpa_cuda_run_fn fallback);
/* Whether the fast kernels hand pr to the generic kernel whatever its row count (layouts, plain
 * rows that are not f16, rows that see no key, partial mode with a bool mask, sizes past the
 * kernels' 32-bit indices). */
/* k_plain / v_plain: the element type of unquantized rows the kernel reads (f16 for every table row;
 * bf16 for the bf16-row decode kernel): a cache of other rows is handed off. */
bool qsdpa_cuda_fast_hands_off(const qsdpa_problem *pr, int k_plain = QSDPA_DTYPE_F16, int v_plain = QSDPA_DTYPE_F16);
/* Whether pr's K and V are both bf16 plain rows and the bf16 twin of the decode kernel may read them
 * (QSDPA_CUDA_BF16_ROWS=0, read once, says no: an A/B knob); the caller checks the row count. */
bool qsdpa_cuda_bf16_rows(const qsdpa_problem *pr);
/* Whether t's scale and bias planes are rows of its groups back to back, each (b, head) plane 16-byte
 * aligned: what the decode kernel copies as one block per chunk (fast_setup.cu's scale_mode 1). */
bool qsdpa_cuda_scales_one_block(const qsdpa_qtensor *t);
/* The realigned path (cuda_staged.cu): a tensor-core row's call whose K or V scale and bias planes are not
 * the one 16-byte-aligned block per (b, head) the decode kernel copies (and, with rows of under 4 bytes,
 * that no fast kernel copies) runs its row on a copy of those planes, padded to 16 keys per plane; the
 * codes are read in place. `run` is the row's own entry, which the copy no longer sends here. */
bool qsdpa_cuda_realign_takes(const qsdpa_problem *p);
qsdpa_status qsdpa_cuda_realigned_run(qsdpa_context *ctx, const qsdpa_problem *p, qsdpa_cuda_run_fn run);
/* Whether the decode kernel takes pr's K/V layouts at any row count (scale dtypes and blocks, strides;
 * QSDPA_CUDA_TILE_DECODE=1 says no; fast_setup.cu). */
bool qsdpa_cuda_decode_layouts_ok(const qsdpa_problem *pr);
/* The padded path (cuda_staged.cu): short queries (at most 32 folded rows, f16/bf16 q) over a cache whose
 * head dim has a padded decode kernel (kernels_cuda.def's QSDPA_CUDA_PAD_ROWS: D 96 on the D 128 kernels),
 * read in place, no copy; whether it takes p, and its run. */
bool qsdpa_cuda_padded_takes(const qsdpa_problem *p);
qsdpa_status qsdpa_cuda_padded_run(qsdpa_context *ctx, const qsdpa_problem *p);
/* Whether p's scale planes, copied aligned by the realigned path, make it a call the padded path takes
 * (then qsdpa_cuda_realigned_run(ctx, p, qsdpa_cuda_padded_run) runs it). */
bool qsdpa_cuda_padded_realign_takes(const qsdpa_problem *p);
/* The repacked path (cuda_staged.cu): short queries (at most 32 folded rows, f16/bf16 q) at head dims
 * or affine widths (2/3/5/6 bits, widened to 4/8) without a fast row, K and V repacked zero-padded to
 * the narrowest fast row's head dim that takes their formats; whether it takes p, and its run
 * (`fallback` where the buffer cannot be allocated). */
bool qsdpa_cuda_repacked_takes(const qsdpa_problem *p);
qsdpa_status qsdpa_cuda_repacked_run(qsdpa_context *ctx, const qsdpa_problem *p, qsdpa_cuda_run_fn fallback);

/* ---- device helpers ----------------------------------------------------- */
#ifdef __CUDACC__
/* Element i of a float-typed (F32/F16/BF16) buffer as float. */
__device__ __forceinline__ float qd_load_float(const void *base, int dtype, int64_t i) {
    if (dtype == QSDPA_DTYPE_F32) return ((const float *)base)[i];
    if (dtype == QSDPA_DTYPE_F16) return __half2float(((const __half *)base)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
}

/* Round once to dtype (nearest even) and store. */
__device__ __forceinline__ void qd_store_float(void *base, int dtype, int64_t i, float v) {
    if (dtype == QSDPA_DTYPE_F32) ((float *)base)[i] = v;
    else if (dtype == QSDPA_DTYPE_F16) ((__half *)base)[i] = __float2half_rn(v);
    else ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn(v);
}
#endif

#endif
