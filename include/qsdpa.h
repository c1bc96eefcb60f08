/*
 * qsdpa.h: scaled dot-product attention over a quantized KV cache.
 *
 * One plain-C11 header. Everything public starts with qsdpa_ / QSDPA_.
 * The semantics are those of MLX's mx.fast.quantized_scaled_dot_product_attention
 * over K/V produced by mx.quantize (see docs and SPEC): formats bit for bit,
 * GQA, boolean/additive masks, causal aligned bottom-right, sinks.
 *
 * Conventions
 *  - Every entry point returns a qsdpa_status. On any error nothing is written
 *    through an output pointer, and qsdpa_last_error() returns a message naming
 *    the function, the argument and the offending value (per thread).
 *  - Tensors are described by pointer, dtype, rank, shape and *element* strides;
 *    the last dimension must be contiguous (stride 1) unless its size is 1.
 *    Stride 0 broadcasts (meant for masks; q, K and V accept it too).
 *  - Head dims are logical dims: a 4-bit K row of D = 128 is 16 uint32 words,
 *    but D is 128 everywhere in this API.
 */
#ifndef QSDPA_H
#define QSDPA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------------ */
#define QSDPA_VERSION_MAJOR 0
#define QSDPA_VERSION_MINOR 1
#define QSDPA_VERSION_PATCH 0
#define QSDPA_VERSION_STRING "0.1.0"
/* Packed as major*10000 + minor*100 + patch, for compile-time comparisons. */
#define QSDPA_VERSION_NUMBER \
    (QSDPA_VERSION_MAJOR * 10000 + QSDPA_VERSION_MINOR * 100 + QSDPA_VERSION_PATCH)

/* The version of the library actually linked (may differ from the header's). */
const char *qsdpa_version(void);

/* ---- status and errors ------------------------------------------------- */
typedef enum qsdpa_status {
    QSDPA_OK = 0,
    QSDPA_ERR_INVALID_ARGUMENT = 1, /* a null pointer, bad size, bad shape, bad value */
    QSDPA_ERR_UNSUPPORTED = 2,      /* valid request that this build/backend cannot serve */
    QSDPA_ERR_OUT_OF_MEMORY = 3,
    QSDPA_ERR_OVERFLOW = 4,         /* a byte count would overflow size_t (tensor extents: ptrdiff_t) */
    QSDPA_ERR_DEVICE = 5,           /* a CUDA/NCCL call failed; message has the device error */
    QSDPA_ERR_IO = 6,               /* file read/write failed or file corrupt */
    QSDPA_ERR_PARSE = 7             /* a format or option string could not be parsed */
} qsdpa_status;

/* Short fixed name of a status ("QSDPA_ERR_INVALID_ARGUMENT"). Never NULL. */
const char *qsdpa_status_string(qsdpa_status status);

/* Message of the most recent status-returning qsdpa call on this thread: what
 * failed and why, or "" if that call succeeded (each such call clears it on
 * entry, so read it right after the failing call). The pointer stays valid
 * until the next qsdpa call on this thread. */
const char *qsdpa_last_error(void);

/* ---- element types ------------------------------------------------------ */
typedef enum qsdpa_dtype {
    QSDPA_DTYPE_F32 = 0,
    QSDPA_DTYPE_F16 = 1,
    QSDPA_DTYPE_BF16 = 2,
    QSDPA_DTYPE_U8 = 3,   /* scales of fp formats (E8M0 / E4M3 bytes) */
    QSDPA_DTYPE_BOOL = 4, /* one byte, 0 = false (masked out), nonzero = true */
    QSDPA_DTYPE_U32 = 5   /* packed codes */
} qsdpa_dtype;

/* Bytes per element (4, 2, 2, 1, 1, 4); 0 for an unknown value. */
size_t qsdpa_dtype_size(qsdpa_dtype dtype);
/* "f32", "f16", "bf16", "u8", "bool", "u32"; "?" for an unknown value. */
const char *qsdpa_dtype_name(qsdpa_dtype dtype);
/* Parse one of the names above. */
qsdpa_status qsdpa_dtype_parse(const char *text, qsdpa_dtype *out);

/* ---- quantization formats ---------------------------------------------- */
typedef enum qsdpa_mode {
    QSDPA_MODE_PLAIN = 0,  /* unquantized f32/f16/bf16 rows (baseline path); dtype in plain_dtype */
    QSDPA_MODE_AFFINE = 1, /* w = scale*code + bias; bits 2,3,4,5,6,8; group 32,64,128 */
    QSDPA_MODE_MXFP4 = 2,  /* FP4 E2M1 codes, E8M0 scale per 32 */
    QSDPA_MODE_MXFP8 = 3,  /* FP8 E4M3 codes, E8M0 scale per 32 */
    QSDPA_MODE_NVFP4 = 4   /* FP4 E2M1 codes, E4M3 scale per 16, optional global scale */
} qsdpa_mode;

typedef struct qsdpa_format {
    qsdpa_mode mode;
    int bits;               /* bits per code: affine 2..8, fp4 4, fp8 8, plain 16/32 */
    int group;              /* values sharing one scale (and bias); 0 for plain */
    qsdpa_dtype plain_dtype; /* PLAIN only: f32, f16 or bf16 element type of the rows */
    float global_scale;     /* NVFP4 only: per-tensor G (0 = none); w = fp4*e4m3(s)*G/2688 */
} qsdpa_format;

/* Parse "affine:4:64" (mode:bits:group), "affine:8" (group 64, mlx-lm's
 * default), "mxfp4", "mxfp8", "nvfp4", "f32", "f16", "bf16". Validates the
 * combination: text that is not of this form gives QSDPA_ERR_PARSE, a
 * well-formed one with bits or group not allowed for its mode ("affine:7:64")
 * QSDPA_ERR_INVALID_ARGUMENT. */
qsdpa_status qsdpa_format_parse(const char *text, qsdpa_format *out);
/* Canonical text of a format ("affine:4:64", "mxfp4", "f16"); writes at most
 * capacity bytes including the terminator (truncating, as snprintf). Returns
 * the text's length without the terminator, so a return >= capacity means it
 * was truncated. */
size_t qsdpa_format_string(const qsdpa_format *format, char *buf, size_t capacity);
/* Check a format for validity (mode/bits/group allowed). */
qsdpa_status qsdpa_format_check(const qsdpa_format *format);

/* uint32 words in one packed row of `dim` logical values (dim*bits/32). For
 * PLAIN formats this is the row's byte size / 4; their codes tensors are
 * indexed in elements of plain_dtype (dim per row), not in words.
 * Fails if dim is not a multiple of the group or the bits do not fill words. */
qsdpa_status qsdpa_format_row_words(const qsdpa_format *format, int64_t dim, int64_t *words);
/* Scales (and biases, for affine) per row of `dim` values: dim / group. */
qsdpa_status qsdpa_format_row_scales(const qsdpa_format *format, int64_t dim, int64_t *count);
/* 1 for affine (scales and biases), 0 otherwise. Scales are U8 for the fp
 * modes and F32/F16/BF16 for affine (mx.quantize uses the input's dtype). */
int qsdpa_format_has_biases(const qsdpa_format *format);

/* ---- tensors ------------------------------------------------------------ */
#define QSDPA_MAX_RANK 4

typedef struct qsdpa_tensor {
    void *data;                     /* base pointer (host or device, per context), aligned to the
                                       dtype's size (else QSDPA_ERR_INVALID_ARGUMENT) */
    qsdpa_dtype dtype;
    int rank;                       /* 1..QSDPA_MAX_RANK */
    int64_t shape[QSDPA_MAX_RANK];  /* sizes, outermost first */
    int64_t stride[QSDPA_MAX_RANK]; /* in elements; 0 broadcasts (meant for masks; q/K/V accept it too) */
} qsdpa_tensor;

/* A contiguous (row-major) tensor view of `data`. */
qsdpa_tensor qsdpa_tensor_make(void *data, qsdpa_dtype dtype, int rank, const int64_t *shape);
/* Convenience for the common 4-D case [d0, d1, d2, d3]. */
qsdpa_tensor qsdpa_tensor_4d(void *data, qsdpa_dtype dtype, int64_t d0, int64_t d1, int64_t d2,
                             int64_t d3);

/* A quantized K or V tensor of logical shape [B, H, L, dim]. */
typedef struct qsdpa_qtensor {
    qsdpa_format format;
    qsdpa_tensor codes;  /* [B, H, L, row_words] u32; PLAIN: [B, H, L, dim] plain_dtype */
    qsdpa_tensor scales; /* [B, H, L, dim/group]: u8 for fp modes, f32/f16/bf16 for affine */
    qsdpa_tensor biases; /* [B, H, L, dim/group], affine only, dtype == scales.dtype; data NULL otherwise */
    int64_t dim;         /* logical head dim D (codes hold dim*bits/32 words per row) */
} qsdpa_qtensor;

/* ---- quantize / dequantize (host memory, contiguous rows) --------------- */
/* x: [rows, dim] of x_dtype (f32/f16/bf16) -> codes [rows, row_words] u32,
 * scales [rows, dim/group] of scale_dtype (affine: f32/f16/bf16, MLX uses the
 * input's dtype; fp modes: must be U8), biases likewise (affine only, else NULL).
 * Bit-exact with mx.quantize on CPU. */
qsdpa_status qsdpa_quantize(const qsdpa_format *format, const void *x, qsdpa_dtype x_dtype,
                            int64_t rows, int64_t dim, uint32_t *codes, void *scales,
                            void *biases, qsdpa_dtype scale_dtype);
/* Inverse: codes/scales/biases -> out [rows, dim] of out_dtype. Bit-exact with
 * mx.dequantize on CPU, including its rounding in the scales' dtype for f16/bf16
 * scales (docs/SPEC.md §7); attention kernels dequantize in f32 instead, so
 * with narrow scales the two may differ by one ulp of the scale dtype. */
qsdpa_status qsdpa_dequantize(const qsdpa_format *format, const uint32_t *codes,
                              const void *scales, const void *biases, qsdpa_dtype scale_dtype,
                              int64_t rows, int64_t dim, void *out, qsdpa_dtype out_dtype);

/* ---- context ------------------------------------------------------------- */
typedef enum qsdpa_backend {
    QSDPA_BACKEND_CPU = 0,
    QSDPA_BACKEND_CUDA = 1
} qsdpa_backend;

typedef struct qsdpa_context qsdpa_context;

typedef struct qsdpa_context_options {
    qsdpa_backend backend;
    int num_threads;     /* CPU: worker threads, 0 = one per core the process may run on (its affinity) */
    int device;          /* CUDA: device ordinal */
    void *stream;        /* CUDA: cudaStream_t to run on (NULL = default stream) */
    const char *kernel;  /* force one kernel-table entry by name (tests, benchmarks); NULL = auto */
    int disable_simd;    /* CPU: 1 = use the portable C kernels even where AVX2 exists */
} qsdpa_context_options;

/* Defaults: CPU, all cores, auto kernel.
 * CPU worker threads poll for the next call for QSDPA_SPIN_US microseconds (environment,
 * read when the pool starts; default 100, 0 = block at once) before they sleep: waking a
 * sleeping thread costs about as much as a short call. Set 0 where other work shares the
 * cores between attention calls. A pool with more threads than the process may run on
 * (its CPU affinity) never polls. */
qsdpa_context_options qsdpa_context_default_options(void);
/* Create a context; it owns the thread pool / device state and scratch memory,
 * so repeated calls with the same shapes allocate nothing. Because a call uses that
 * pool and scratch, calls on one context must not overlap: give each calling thread
 * its own context (distinct contexts are independent).
 * CUDA contexts: every call (attention, partial, merge, quantize/dequantize on the
 * device, cache append/attend) is queued on the context's stream and returns before
 * the work is done: inputs must stay alive and unchanged, and outputs are ready only
 * once that stream is synchronised; a fault inside a kernel surfaces as
 * QSDPA_ERR_DEVICE on a later call. The context does not own its stream (destroy it
 * after the context). Creating a context and every call on it make the context's
 * device current (cudaSetDevice) and leave it so. Pointers must be memory of the
 * context's device (or managed memory): host memory, or memory of another device,
 * gives QSDPA_ERR_INVALID_ARGUMENT. */
qsdpa_status qsdpa_context_create(const qsdpa_context_options *options, qsdpa_context **out);
void qsdpa_context_destroy(qsdpa_context *ctx);
/* The route the last qsdpa_attention / qsdpa_attention_partial call on ctx took
 * (a diagnostic for tests and benchmarks; "" before the first call, NULL ctx
 * gives ""): the kernel-table entry's name, which a CUDA context refines to the
 * kernel that ran, "cuda.decode" (split-K), "cuda.prefill" (tiled) or
 * "cuda.generic", or, where the call ran on a copy of its inputs, to
 * "cuda.staged:" (dequantized to f16 rows), "cuda.repacked:" (padded to a wider
 * head dim) or "cuda.realigned:" (scale planes copied aligned) followed by the
 * kernel that ran on the copy, or "cuda.padded:" (a wider head dim's kernel read
 * the cache in place, no copy) followed by that kernel; a cpu.vnni.* entry adds "+bf16" where its bf16
 * tiles ran P V, "+bf16k" where they ran Q K^T as well (bf16 q and output over many rows a KV head;
 * qsdpa_cpu_features bit 16). Set when the call is
 * enqueued; a failed call may leave a partial route. */
const char *qsdpa_context_last_route(const qsdpa_context *ctx);
/* CUDA: switch stream for subsequent calls (a CPU context gives
 * QSDPA_ERR_INVALID_ARGUMENT).
 * CUDA graphs: a call can be captured once a call of the same shape has run
 * on the context outside the capture, which sized the device buffers of its
 * route (split-K scratch, and the copy buffer of a staged, repacked or
 * realigned call; a larger call on another route does not size them). A call
 * that would need to grow a buffer during a capture returns
 * QSDPA_ERR_UNSUPPORTED and writes no output, but a copying route may already
 * have recorded its copy: discard that capture. Outgrown buffers stay
 * allocated until qsdpa_context_destroy (up to about 3x the largest need), so
 * a graph captured at a smaller shape stays valid after later calls grow them.
 * A context serves one stream at a time. */
qsdpa_status qsdpa_context_set_stream(qsdpa_context *ctx, void *stream);
/* Is a backend compiled in and usable on this machine (CUDA: a device exists)? */
int qsdpa_backend_available(qsdpa_backend backend);

/* ---- quantize / dequantize on a CUDA device ------------------------------ */
/* As qsdpa_quantize / qsdpa_dequantize (same arguments, same bits: bit-exact
 * with the host functions), on device memory through a CUDA context, on its
 * stream (asynchronous). To append T rows to a device cache of capacity C at
 * position L, pass codes + L*row_words, scales + L*(dim/group), ... as the
 * rows' destination. A host pointer gives QSDPA_ERR_INVALID_ARGUMENT, a CPU
 * context too; a build without CUDA gives QSDPA_ERR_UNSUPPORTED. */
qsdpa_status qsdpa_quantize_device(qsdpa_context *ctx, const qsdpa_format *format, const void *x,
                                   qsdpa_dtype x_dtype, int64_t rows, int64_t dim, uint32_t *codes,
                                   void *scales, void *biases, qsdpa_dtype scale_dtype);
qsdpa_status qsdpa_dequantize_device(qsdpa_context *ctx, const qsdpa_format *format,
                                     const uint32_t *codes, const void *scales, const void *biases,
                                     qsdpa_dtype scale_dtype, int64_t rows, int64_t dim, void *out,
                                     qsdpa_dtype out_dtype);

/* ---- attention ---------------------------------------------------------- */
typedef struct qsdpa_attention_params {
    float scale;                /* multiplies q.k (usually 1/sqrt(Dk)) */
    const qsdpa_tensor *mask;   /* NULL, or rank<=4 broadcastable to [B, Hq, Lq, Lk]:
                                   BOOL (false -> lowest finite value of q's dtype)
                                   or F32/F16/BF16 (added to the score) */
    int causal;                 /* key j kept iff j <= i + (Lk - Lq) (bottom-right) */
    int64_t window;             /* with causal: also j > i + (Lk - Lq) - window; 0 = none */
    const qsdpa_tensor *sinks;  /* NULL, or [Hq] F32/F16/BF16 logits: an extra softmax column */
    /* Sequence-parallel slices (qsdpa_attention_partial): the keys given are
     * global positions [key_offset, key_offset + Lk) of a context of
     * key_total keys; causal and window use global positions. key_total = 0
     * means the keys given are the whole context. */
    int64_t key_offset;
    int64_t key_total;
} qsdpa_attention_params;

/* Defaults: scale 1, no mask, not causal, no window, no sinks, whole context. */
qsdpa_attention_params qsdpa_attention_default_params(void);

/* out[B,Hq,Lq,Dv] = softmax(scale * q K^T + mask) V, with K/V dequantized
 * per their formats; q [B,Hq,Lq,Dk] f32/f16/bf16; out same dtype as q.
 * k, v: [B,Hkv,Lk,*]; Hq % Hkv == 0; Dk and Dv (may differ) in [1, 1024] and
 * multiples of their formats' groups. params NULL means the defaults (scale 1,
 * not 1/sqrt(Dk)). A mask together with causal is QSDPA_ERR_INVALID_ARGUMENT
 * (fold the causal part into the mask), and so is window > 0 without causal.
 * A row with no key left (causal with Lq > Lk: its first Lq - Lk rows; a
 * boolean mask false on every key) gets the mean of V over the keys (with a
 * sink, 0), as MLX gives; a row whose additive mask is -inf on every key gets
 * NaN. Precision: docs/SPEC.md 4. On the CUDA backend f16/bf16 q run in f16
 * tensor-core arithmetic (SPEC 8): values past f16's 65504 (bf16 q, or K/V
 * from bf16/f32 scales) overflow there; f32 q keeps f32 throughout. */
qsdpa_status qsdpa_attention(qsdpa_context *ctx, const qsdpa_tensor *q, const qsdpa_qtensor *k,
                             const qsdpa_qtensor *v, const qsdpa_attention_params *params,
                             qsdpa_tensor *out);

/* As qsdpa_attention over one slice of the keys, producing a partial result
 * for an exact merge: out [B,Hq,Lq,Dv] F32 (normalised
 * within the slice) and lse [B,Hq,Lq] F32, the natural-log sum-exp of the
 * slice's scores (including the sink column if params->sinks is given; pass
 * sinks to exactly one slice). A row whose keys in the slice are all masked
 * (false / causal / window) and that has no sink in this slice has lse -inf
 * and out = (sum of the slice's V rows) / key_total: in a merge it weighs
 * nothing beside any real slice, and a row masked in every slice merges to
 * the mean of V over all keys, as the unsplit call gives. A row whose
 * additive mask is -inf on every key of the slice (and no finite sink) has
 * lse -inf and out NaN: the merge drops it beside any finite slice, and a row
 * that is -inf everywhere merges to NaN, as the unsplit softmax (and MLX) give.
 * A sink of -inf is no column at all.
 * Precision (SPEC 4) is that of q's dtype, as for qsdpa_attention: the CPU
 * backend computes every partial in f32 (f32's bound for any q), the CUDA
 * backend f16/bf16 q in 16-bit tensor-core arithmetic (their bounds). There
 * dequantized K is rounded to f16 before Q K^T, so lse is exact to about
 * 2^-11 scale sum_d |q_d| max|K| beyond that bound (relative to 1 + |lse|):
 * large K outliers cost lse digits, as they would in any f16 pipeline. */
qsdpa_status qsdpa_attention_partial(qsdpa_context *ctx, const qsdpa_tensor *q,
                                     const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                     const qsdpa_attention_params *params, qsdpa_tensor *out,
                                     qsdpa_tensor *lse);

/* Exact merge of n partials: out = sum_i exp(lse_i - lse) out_i with
 * lse = log sum_i exp(lse_i). outs[i]: [B,Hq,Lq,Dv] F32, lses[i]: [B,Hq,Lq] F32;
 * out: F32/F16/BF16; lse_out optional (NULL). Partials of weight 0 are
 * skipped (they may hold NaN); a row whose lse_i are all -inf gets
 * out = sum_i out_i and lse -inf (see qsdpa_attention_partial). */
qsdpa_status qsdpa_merge(qsdpa_context *ctx, int n, const qsdpa_tensor *outs,
                         const qsdpa_tensor *lses, qsdpa_tensor *out, qsdpa_tensor *lse_out);

/* ---- multi-GPU: sequence-parallel attention over NCCL ------------------ */
/* Each rank holds one slice of the keys (global positions params->key_offset
 * .. +Lk of params->key_total) on its own GPU. Every rank computes a partial
 * result on its slice, the partials (out + lse, f32) are all-gathered over
 * `nccl_comm` (an ncclComm_t) on ctx's stream, and merged exactly. root = -1:
 * every rank writes out; else only rank `root` writes out (out may be NULL
 * elsewhere). Sinks are applied once (by rank 0). ctx must be a CUDA context
 * on the communicator's device. NCCL is loaded at run time (libnccl.so.2);
 * without it the call returns QSDPA_ERR_UNSUPPORTED. Collective: every rank
 * must call it with the same B, Hq, Lq, Dv. */
qsdpa_status qsdpa_attention_nccl(qsdpa_context *ctx, void *nccl_comm, const qsdpa_tensor *q,
                                  const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                  const qsdpa_attention_params *params, qsdpa_tensor *out,
                                  int root);
/* 1 when this build has the CUDA backend and libnccl.so.2 can be loaded. */
int qsdpa_nccl_available(void);

/* ---- kernel table ------------------------------------------------------- */
/* One row of the table that drives dispatch. QSDPA_ANY (-1) fields match anything; 0 is a
 * real value (QSDPA_DTYPE_F32, QSDPA_MODE_PLAIN). */
#define QSDPA_ANY (-1)
typedef struct qsdpa_kernel_info {
    const char *name;     /* unique, e.g. "cpu.avx2.decode" */
    qsdpa_backend backend;
    const char *isa;      /* "c", "avx2", "sm_90a", ... */
    const char *path;     /* "decode", "prefill", "generic", "reference" */
    int q_dtype;          /* qsdpa_dtype or QSDPA_ANY */
    int dk, dv;           /* logical head dims, or QSDPA_ANY (any valid D <= max_dim) */
    int k_mode, k_bits, k_group; /* QSDPA_ANY wildcards */
    int v_mode, v_bits, v_group;
    int max_lq;           /* largest Lq served, QSDPA_ANY = unlimited */
    int max_dim;          /* largest head dim served */
    int usable;           /* compiled in and runnable on this machine now */
} qsdpa_kernel_info;

int qsdpa_kernel_count(void);
qsdpa_status qsdpa_kernel_get(int index, qsdpa_kernel_info *out);
/* Name of the kernel qsdpa_attention would run for these arguments (validates
 * them as qsdpa_attention does). *name points to static storage. */
qsdpa_status qsdpa_attention_select(qsdpa_context *ctx, const qsdpa_tensor *q,
                                    const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                    const qsdpa_attention_params *params, const qsdpa_tensor *out,
                                    const char **name);

/* ---- CPU features (for `qsdpa info`) ----------------------------------- */
/* Bit set: 1 = AVX2, 2 = FMA, 4 = F16C (each only if the OS saves YMM state),
 * 8 = the AVX-512 tier: AVX512 F, BW, VL and VNNI (only if the OS saves the ZMM and opmask
 * state); the cpu.vnni.* kernel rows need it. 16 = AVX512_BF16 as well (with 8): those rows
 * then run the P V of bf16 q and output over many query rows a KV head on bf16 dot products,
 * and Q K^T too where K's values are exact in bf16 (route suffix "+bf16" / "+bf16k"). 32 = AMX
 * (AMX-TILE and AMX-BF16, with 16, the OS saving tile state and granting it to the process; asking
 * for that grant is part of the first call): the cpu.amx.* rows need it. 64 = AMX-INT8 and
 * AVX512-VBMI as well (with 32): those rows then run query tiles of 1-16 rows a KV head on int8 tiles
 * (route "+amx.i8"; without it, 9-16 rows on bf16 tiles, "+amx"). */
unsigned qsdpa_cpu_features(void);

/* ---- KV cache ------------------------------------------------------------
 * A quantized KV cache for decode loops (the object mlx-lm's QuantizedKVCache
 * and llama.cpp's KV cache play). Per layer it holds K [B,Hkv,L,Dk] and
 * V [B,Hkv,L,Dv] in chosen formats (K and V may differ), quantizes rows as
 * they are appended, and runs attention for new queries over everything
 * stored. Storage of one layer (mlx-lm's layout, so views are plain strided
 * qsdpa_qtensors): codes [B,Hkv,capacity,row_words], scales/biases
 * [B,Hkv,capacity,D/group]; capacity grows in multiples of `step` tokens by
 * copying the stored bytes, never re-quantizing them.
 *
 * Residual window (KIVI): with residual R > 0, the newest min(L, R) tokens of
 * each layer stay unquantized (residual_dtype) and the older ones are
 * quantized as they leave the window. Attend computes a partial over the
 * quantized part and one over the window and merges them by log-sum-exp,
 * which is exact. Trimming past the window leaves fewer than R unquantized
 * tokens until new appends refill it (quantized rows are never expanded back).
 * The window's storage grows with it, doubling up to 2R rows a layer, so a
 * large R costs memory only as tokens arrive.
 *
 * Memory: a cache created on a CPU context lives in host memory; one created
 * on a CUDA context lives in that device's memory, quantizes appended rows on
 * the device (qsdpa_quantize_device, same bytes as the host) and must then be
 * used with a CUDA context and device pointers. A device cache takes window
 * rows (and PLAIN-format rows) only in their stored dtype (residual_dtype /
 * plain_dtype): other dtypes give QSDPA_ERR_UNSUPPORTED. Save/load go
 * through host memory; a file loads onto either kind of context.
 * A cache is not thread-safe; distinct caches are. */
typedef struct qsdpa_cache qsdpa_cache;

typedef struct qsdpa_cache_options {
    int64_t layers;             /* number of layers, >= 1 */
    int64_t batch;              /* B, >= 1 */
    int64_t heads_kv;           /* Hkv, >= 1 */
    int64_t dim_k, dim_v;       /* logical head dims Dk, Dv (multiples of their groups) */
    qsdpa_format k_format;      /* any valid format, PLAIN included */
    qsdpa_format v_format;
    qsdpa_dtype scale_dtype;    /* affine scales and biases: F32, F16 or BF16 (fp modes use U8) */
    int64_t step;               /* capacity grows in multiples of step tokens; 0 = 256 (mlx-lm) */
    int64_t residual;           /* R: newest tokens kept unquantized; 0 = none */
    qsdpa_dtype residual_dtype; /* F32, F16 or BF16: element type of the residual rows */
} qsdpa_cache_options;

/* Defaults: 1 layer, B 1, Hkv 1, Dk = Dv = 128, K and V "affine:4:64",
 * F16 scales, step 256, no residual window (residual_dtype F16). */
qsdpa_cache_options qsdpa_cache_default_options(void);

/* Create an empty cache in ctx's memory (host for CPU, device for CUDA). */
qsdpa_status qsdpa_cache_create(qsdpa_context *ctx, const qsdpa_cache_options *options,
                                qsdpa_cache **out);
void qsdpa_cache_destroy(qsdpa_cache *cache);
/* The options the cache was created (or loaded) with, step resolved. */
qsdpa_status qsdpa_cache_get_options(const qsdpa_cache *cache, qsdpa_cache_options *out);

/* Append T new tokens to one layer: k [B,Hkv,T,Dk], v [B,Hkv,T,Dv], both
 * F32/F16/BF16 (may differ), any strides with the last dim contiguous.
 * Rows are quantized on the way in (bit-exact with qsdpa_quantize), on the
 * host or the device per the cache; the residual window, if any, takes the
 * newest ones. ctx must be of the cache's kind (CPU or CUDA) and, for a
 * device cache, on the device the cache was created on (its storage stays
 * there; k and v must be memory of that device). A device cache
 * with residual > 0 takes k and v of residual_dtype only, quantized formats
 * included; one of PLAIN format, rows of its plain_dtype only (other dtypes:
 * QSDPA_ERR_UNSUPPORTED).
 * CUDA graphs: an append is never captured: on a stream being captured it
 * returns QSDPA_ERR_UNSUPPORTED and records nothing (it keeps the lengths on
 * the host and may allocate: capacity grows by reallocation, and the old
 * storage is freed). A graph over
 * qsdpa_cache_attend reads the storage it was captured on, so it is valid only
 * until the next append or trim of that cache: capture it again after them.
 * Attend over a cache with both a quantized part and a window needs a scratch
 * for two partials that grows with B x Hq x Lq: make one call of the largest
 * shape before capturing (growth inside a capture is QSDPA_ERR_UNSUPPORTED);
 * outgrown scratch is kept until the cache is destroyed, so earlier graphs stay
 * valid. */
qsdpa_status qsdpa_cache_append(qsdpa_context *ctx, qsdpa_cache *cache, int64_t layer,
                                const qsdpa_tensor *k, const qsdpa_tensor *v);

/* Attention of new queries q [B,Hq,Lq,Dk] over the L tokens of one layer,
 * into out [B,Hq,Lq,Dv] (q's dtype), as qsdpa_attention over the whole
 * context: params->scale, mask ([..., Lk = L] broadcastable), causal
 * (the queries are the newest Lq positions), window and sinks apply;
 * params->key_offset and key_total must be 0 (the cache sets them). */
qsdpa_status qsdpa_cache_attend(qsdpa_context *ctx, qsdpa_cache *cache, int64_t layer,
                                const qsdpa_tensor *q, const qsdpa_attention_params *params,
                                qsdpa_tensor *out);

/* Drop the newest `tokens` tokens of every layer (speculative-decoding
 * roll-back). Fails, changing nothing, if a layer holds fewer. */
qsdpa_status qsdpa_cache_trim(qsdpa_cache *cache, int64_t tokens);
/* Tokens stored in one layer (quantized part plus residual window). */
qsdpa_status qsdpa_cache_length(const qsdpa_cache *cache, int64_t layer, int64_t *length);

/* Views of one layer's storage, valid until the next append/trim/destroy:
 * part QSDPA_CACHE_QUANTIZED gives the quantized tokens [0, Lquant) in the
 * cache formats (strided: stride[2] spans the capacity), part
 * QSDPA_CACHE_RESIDUAL gives the window tokens [Lquant, L) as PLAIN
 * residual_dtype tensors. A part may hold 0 tokens (shape[2] == 0). */
typedef enum qsdpa_cache_part {
    QSDPA_CACHE_QUANTIZED = 0,
    QSDPA_CACHE_RESIDUAL = 1
} qsdpa_cache_part;
qsdpa_status qsdpa_cache_view(const qsdpa_cache *cache, int64_t layer, qsdpa_cache_part part,
                              qsdpa_qtensor *k, qsdpa_qtensor *v);

/* Bytes held (capacity included; device memory for a device cache) and bytes that the stored
 * tokens occupy (codes, scales, biases, residual rows). Either may be NULL. */
qsdpa_status qsdpa_cache_memory(const qsdpa_cache *cache, size_t *allocated_bytes,
                                size_t *used_bytes);

/* Save to / load from a file (format: docs/CACHE_FORMAT.md; versioned header,
 * CRC-32 per section). Save writes PATH in place (a failed save leaves a file
 * that load rejects). Load creates a new cache; a truncated,
 * corrupted or foreign file, or a path that is not a regular file, gives
 * QSDPA_ERR_IO (or UNSUPPORTED for a newer version), checked before anything is
 * allocated beyond the header. */
qsdpa_status qsdpa_cache_save(const qsdpa_cache *cache, const char *path);
qsdpa_status qsdpa_cache_load(qsdpa_context *ctx, const char *path, qsdpa_cache **out);

#ifdef __cplusplus
}
#endif
#endif /* QSDPA_H */
