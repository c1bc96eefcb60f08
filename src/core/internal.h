/* Internal declarations shared by every part of the library (not installed). */
#ifndef QSDPA_INTERNAL_H
#define QSDPA_INTERNAL_H

#include "qsdpa.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors --------------------------------------------------------------
 * qsdpa_fail records "function: message" in the per-thread buffer and returns
 * status, so a check reads: if (bad) return qsdpa_fail(ST, __func__, "...", ...);
 * qsdpa_clear_error() is called at each public entry. */
qsdpa_status qsdpa_fail(qsdpa_status status, const char *function, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void qsdpa_clear_error(void);
/* Cores this process may run on (its CPU affinity where the OS says, else the online count): the default
 * thread count, and the bound past which a pool does not poll. */
int qsdpa_usable_cores(void);

/* ---- scalar conversions (round to nearest even, as MLX) ----------------- */
/* f16 -> f32 in the header too: exact, and a few bit operations once inlined into a row's loop */
static inline float qsdpa_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13); /* inf / nan */
    else if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    } else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t qsdpa_f32_to_f16(float f);
/* bf16 in the header: a shift and a rounding add, which loops over whole rows vectorise once inlined */
static inline float qsdpa_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t qsdpa_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
/* Element i of a buffer of dtype (F32/F16/BF16) as float. */
float qsdpa_load_float(const void *base, qsdpa_dtype dtype, int64_t i);
void qsdpa_store_float(void *base, qsdpa_dtype dtype, int64_t i, float value);
/* The same for n contiguous elements: one dtype branch a row, the conversion inlined in its loop. */
void qsdpa_load_floats(const void *src, qsdpa_dtype dtype, int64_t n, float *dst);
void qsdpa_store_floats(void *dst, qsdpa_dtype dtype, int64_t n, const float *src);
/* Lowest finite value of q's dtype (MLX's finfo.min), the score of a masked key. */
float qsdpa_dtype_lowest(qsdpa_dtype dtype);

/* ---- checked size arithmetic -------------------------------------------- */
/* *out = a * b; false on overflow or negative operands. */
bool qsdpa_mul_size(size_t a, size_t b, size_t *out);

/* ---- the validated problem ----------------------------------------------
 * Filled once by qsdpa_validate_attention; kernels trust every field.
 * Shapes: q [B,Hq,Lq,Dk], k/v [B,Hkv,Lk,*], out [B,Hq,Lq,Dv]. */
typedef enum qsdpa_mask_kind {
    QSDPA_MASK_NONE = 0,
    QSDPA_MASK_BOOL = 1,    /* false -> score = masked_score */
    QSDPA_MASK_ADDITIVE = 2 /* score += mask value */
} qsdpa_mask_kind;

typedef struct qsdpa_problem {
    const char *function; /* the public entry point, for messages ("qsdpa_attention_partial") */
    int64_t batch, heads_q, heads_kv, len_q, len_k, dim_k, dim_v;
    int64_t group_ratio; /* heads_q / heads_kv: query head h reads KV head h / group_ratio */

    const void *q;       /* [B,Hq,Lq,Dk] of q_dtype */
    qsdpa_dtype q_dtype;
    int64_t q_stride[4];

    qsdpa_qtensor k, v;  /* as given, checked against the shapes above */

    qsdpa_mask_kind mask_kind;
    const void *mask;       /* element (b,h,i,j) at b*ms[0]+h*ms[1]+i*ms[2]+j*ms[3] */
    qsdpa_dtype mask_dtype; /* BOOL or F32/F16/BF16 */
    int64_t mask_stride[4]; /* broadcast to 4-D: 0 on broadcast dims */

    float scale;
    float masked_score; /* lowest finite value of q's dtype */
    bool causal;
    int64_t window;     /* 0 = none */
    /* Global position of key 0 and the global key count, for causal/window:
     * key j (local) is kept iff key_offset + j <= i + key_total - Lq (and the window test). */
    int64_t key_offset, key_total;

    const void *sinks;  /* [Hq] or NULL */
    qsdpa_dtype sinks_dtype;

    void *out;          /* [B,Hq,Lq,Dv] of out_dtype */
    qsdpa_dtype out_dtype;
    int64_t out_stride[4];
    float *lse;         /* partial mode only: [B,Hq,Lq] natural-log sum-exp, else NULL */
    int64_t lse_stride[3];
    /* CUDA: a problem the library made from a checked one (the staged path's problem over its own
     * stage buffer), so qsdpa_cuda_check_problem skips its pointers (interior pointers of the
     * stage would only thrash its cache) */
    bool device_checked;
    /* CUDA: where the staged path rounded a shifted K (SPEC 8.1, qsdpa_cuda_k_shift), the constant every
     * score of each folded row moved by, log2 units, [B*Hkv][ratio*Lq] (qsdpa_cuda_q_shift); the kernels
     * take it back where a score meets the sink or the lse. NULL on every problem the caller made. */
    const float *score_shift;
} qsdpa_problem;

/* Validate the public arguments of qsdpa_attention (partial: out must be F32
 * and lse given) and fill *p. Writes nothing else. `function` names the public
 * entry point in messages. */
qsdpa_status qsdpa_validate_attention(const char *function, const qsdpa_tensor *q,
                                      const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                      const qsdpa_attention_params *params, const qsdpa_tensor *out,
                                      const qsdpa_tensor *lse, qsdpa_problem *p);

/* ---- argument checks shared by the validators (src/dispatch/validate.c) ----
 * One tensor argument: data non-NULL, rank, positive sizes, non-negative
 * strides, contiguous last dim (stride 0 too for QSDPA_ROLE_MASK), an output
 * that never maps two elements to one address, byte extent within size_t.
 * `name` prefixes messages ("q->", "k->codes."). *span: bytes it touches. */
typedef struct qsdpa_span { uintptr_t begin, end; } qsdpa_span; /* [begin, end) */
typedef enum qsdpa_tensor_role {
    QSDPA_ROLE_INPUT = 0,
    QSDPA_ROLE_MASK = 1,  /* input that may broadcast through stride 0 */
    QSDPA_ROLE_OUTPUT = 2 /* must not overlap itself */
} qsdpa_tensor_role;
qsdpa_status qsdpa_check_tensor(const char *function, const char *name, const qsdpa_tensor *t, int rank,
                                qsdpa_tensor_role role, qsdpa_span *span);
bool qsdpa_spans_overlap(qsdpa_span a, qsdpa_span b);

/* Is key j visible to query row i under causal/window? (true when not causal) */
static inline bool qsdpa_key_visible(const qsdpa_problem *p, int64_t i, int64_t j) {
    if (!p->causal) return true;
    int64_t last = i + p->key_total - p->len_q; /* last visible global position */
    int64_t pos = p->key_offset + j;
    if (pos > last) return false;
    if (p->window > 0 && pos <= last - p->window) return false;
    return true;
}

/* ---- context ------------------------------------------------------------ */
struct qsdpa_threadpool;
struct qsdpa_cuda_state;

struct qsdpa_context {
    qsdpa_context_options options;
    char forced_kernel[64];        /* copy of options.kernel ("" = auto) */
    int num_threads;               /* resolved */
    struct qsdpa_threadpool *pool; /* CPU workers, created lazily */
    void *scratch;                 /* grow-only host scratch */
    size_t scratch_bytes;
    struct qsdpa_cuda_state *cuda; /* CUDA backend state or NULL */
    void *multi_gpu_scratch;       /* device: partials of qsdpa_attention_nccl (grow-only) */
    size_t multi_gpu_scratch_bytes;
    char last_route[64];           /* qsdpa_context_last_route: set as an attention call runs */
};

/* Records the route an attention call takes (qsdpa_context_last_route): the kernel-table entry's
 * name first, then a backend's own path inside it; `prefix` (may be NULL) goes before `route`. */
static inline void qsdpa_set_route(qsdpa_context *ctx, const char *prefix, const char *route) {
    char buf[sizeof ctx->last_route]; /* route may be ctx->last_route itself */
    size_t n = 0;
    for (const char *s = prefix ? prefix : ""; *s && n + 1 < sizeof buf; s++) buf[n++] = *s;
    for (const char *s = route; *s && n + 1 < sizeof buf; s++) buf[n++] = *s;
    buf[n] = '\0';
    memcpy(ctx->last_route, buf, n + 1);
}

/* Host scratch of at least `bytes`, owned by ctx (grows, never shrinks);
 * `function` names the public entry point in an out-of-memory message. */
qsdpa_status qsdpa_scratch(qsdpa_context *ctx, const char *function, size_t bytes, void **out);

/* ---- kernel table ------------------------------------------------------- */
typedef qsdpa_status (*qsdpa_kernel_fn)(qsdpa_context *ctx, const qsdpa_problem *p);

typedef struct qsdpa_kernel_entry {
    qsdpa_kernel_info info; /* public description (usable filled at run time) */
    qsdpa_kernel_fn run;
    bool (*available)(void); /* CPU features / device present */
} qsdpa_kernel_entry;

/* First usable entry of the table serving p (or the forced one). */
qsdpa_status qsdpa_kernel_select(qsdpa_context *ctx, const qsdpa_problem *p,
                                 const qsdpa_kernel_entry **out);

/* ---- format internals (src/format) --------------------------------------
 * Dequantize one row of a K/V tensor (row base pointers already resolved)
 * into dim floats. Kernels written over this interface serve every format. */
void qsdpa_dequantize_row(const qsdpa_format *format, const uint32_t *codes, const void *scales,
                          const void *biases, qsdpa_dtype scale_dtype, int64_t dim, float *out);

/* Byte address of element (b, h, l, 0) of a rank-4 tensor. */
static inline const void *qsdpa_row_ptr(const qsdpa_tensor *t, int64_t b, int64_t h, int64_t l) {
    return (const char *)t->data +
           (size_t)(b * t->stride[0] + h * t->stride[1] + l * t->stride[2]) * qsdpa_dtype_size(t->dtype);
}

#ifdef __cplusplus
}
#endif
#endif /* QSDPA_INTERNAL_H */
