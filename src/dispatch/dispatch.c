/* Kernel selection from the one table, and the public attention entry points. */
#include "internal.h"

#include <string.h>

#include "cuda/cuda_backend.h"

bool qsdpa_always_available(void);
bool qsdpa_always_available(void) { return true; }

/* Declare every kernel function named in the table. */
#define QSDPA_KERNEL(name, backend, isa, path, qd, dk, dv, km, kb, kg, vm, vb, vg, mlq, mdim, fn, avail) \
    qsdpa_status fn(qsdpa_context *ctx, const qsdpa_problem *p);                                         \
    bool avail(void);
#include "dispatch/kernels.def"
#undef QSDPA_KERNEL

static const qsdpa_kernel_entry kernel_table[] = {
#define QSDPA_KERNEL(name, backend, isa, path, qd, dk, dv, km, kb, kg, vm, vb, vg, mlq, mdim, fn, avail) \
    {{name, backend, isa, path, qd, dk, dv, km, kb, kg, vm, vb, vg, mlq, mdim, 0}, fn, avail},
#include "dispatch/kernels.def"
#undef QSDPA_KERNEL
};

#define KERNEL_COUNT ((int)(sizeof kernel_table / sizeof kernel_table[0]))

int qsdpa_kernel_count(void) { return KERNEL_COUNT; }

qsdpa_status qsdpa_kernel_get(int index, qsdpa_kernel_info *out) {
    qsdpa_clear_error();
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    if (index < 0 || index >= KERNEL_COUNT)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "index = %d is outside [0, %d)", index,
                          KERNEL_COUNT);
    *out = kernel_table[index].info;
    out->usable = kernel_table[index].available() ? 1 : 0;
    return QSDPA_OK;
}

static bool field_matches(int want, int64_t have) { return want == QSDPA_ANY || want == have; }

static bool format_matches(int mode, int bits, int group, const qsdpa_format *f) {
    return field_matches(mode, f->mode) && field_matches(bits, f->bits) && field_matches(group, f->group);
}

/* Does this entry serve this problem (formats, logical dims, q dtype, Lq)? */
static bool kernel_matches(const qsdpa_kernel_entry *e, const qsdpa_problem *p) {
    const qsdpa_kernel_info *k = &e->info;
    return field_matches(k->q_dtype, p->q_dtype) && field_matches(k->dk, p->dim_k) &&
           field_matches(k->dv, p->dim_v) && p->dim_k <= k->max_dim && p->dim_v <= k->max_dim &&
           format_matches(k->k_mode, k->k_bits, k->k_group, &p->k.format) &&
           format_matches(k->v_mode, k->v_bits, k->v_group, &p->v.format) &&
           (k->max_lq == QSDPA_ANY || p->len_q <= k->max_lq);
}

static bool entry_usable(const qsdpa_context *ctx, const qsdpa_kernel_entry *e) {
    if (e->info.backend != ctx->options.backend) return false;
    if (ctx->options.disable_simd && strcmp(e->info.isa, "c") != 0 && e->info.backend == QSDPA_BACKEND_CPU)
        return false;
    return e->available();
}

/* Messages name p->function, the public entry point (qsdpa_attention,
 * qsdpa_attention_partial or qsdpa_attention_select). */
qsdpa_status qsdpa_kernel_select(qsdpa_context *ctx, const qsdpa_problem *p, const qsdpa_kernel_entry **out) {
    const char *forced = ctx->forced_kernel, *function = p->function;
    for (int i = 0; i < KERNEL_COUNT; i++) {
        const qsdpa_kernel_entry *e = &kernel_table[i];
        if (forced[0]) {
            if (strcmp(e->info.name, forced) != 0) continue;
            if (e->info.backend != ctx->options.backend || !e->available())
                return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, function,
                                  "forced kernel '%s' is not usable on this context/machine", forced);
            if (!kernel_matches(e, p))
                return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, function,
                                  "forced kernel '%s' does not serve this request (Dk=%lld Dv=%lld Lq=%lld)",
                                  forced, (long long)p->dim_k, (long long)p->dim_v, (long long)p->len_q);
            *out = e;
            return QSDPA_OK;
        }
        if (kernel_matches(e, p) && entry_usable(ctx, e)) { /* the cheap test first */
            *out = e;
            return QSDPA_OK;
        }
    }
    char kf[32], vf[32];
    qsdpa_format_string(&p->k.format, kf, sizeof kf);
    qsdpa_format_string(&p->v.format, vf, sizeof vf);
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, function,
                      "no %s kernel serves q %s, Dk=%lld, Dv=%lld, K %s, V %s, Lq=%lld",
                      ctx->options.backend == QSDPA_BACKEND_CUDA ? "CUDA" : "CPU", qsdpa_dtype_name(p->q_dtype),
                      (long long)p->dim_k, (long long)p->dim_v, kf, vf, (long long)p->len_q);
}

static qsdpa_status prepare(const char *function, qsdpa_context *ctx, const qsdpa_tensor *q,
                            const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                            const qsdpa_attention_params *params, const qsdpa_tensor *out,
                            const qsdpa_tensor *lse, qsdpa_problem *p, const qsdpa_kernel_entry **kernel) {
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "ctx is NULL");
    qsdpa_status st = qsdpa_validate_attention(function, q, k, v, params, out, lse, p);
    if (st != QSDPA_OK) return st;
    return qsdpa_kernel_select(ctx, p, kernel);
}

/* Validate, select, run: the body of both attention entry points. */
static qsdpa_status run_attention(const char *function, qsdpa_context *ctx, const qsdpa_tensor *q,
                                  const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                  const qsdpa_attention_params *params, const qsdpa_tensor *out,
                                  const qsdpa_tensor *lse) {
    qsdpa_problem p;
    const qsdpa_kernel_entry *kernel;
    qsdpa_status st = prepare(function, ctx, q, k, v, params, out, lse, &p, &kernel);
    if (st != QSDPA_OK) return st;
    qsdpa_set_route(ctx, NULL, kernel->info.name);
    return kernel->run(ctx, &p);
}

const char *qsdpa_context_last_route(const qsdpa_context *ctx) {
    return ctx ? ctx->last_route : "";
}

qsdpa_status qsdpa_attention(qsdpa_context *ctx, const qsdpa_tensor *q, const qsdpa_qtensor *k,
                             const qsdpa_qtensor *v, const qsdpa_attention_params *params,
                             qsdpa_tensor *out) {
    qsdpa_clear_error();
    return run_attention(__func__, ctx, q, k, v, params, out, NULL);
}

qsdpa_status qsdpa_attention_partial(qsdpa_context *ctx, const qsdpa_tensor *q,
                                     const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                     const qsdpa_attention_params *params, qsdpa_tensor *out,
                                     qsdpa_tensor *lse) {
    qsdpa_clear_error();
    if (!lse) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "lse is NULL");
    return run_attention(__func__, ctx, q, k, v, params, out, lse);
}

qsdpa_status qsdpa_attention_select(qsdpa_context *ctx, const qsdpa_tensor *q,
                                    const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                    const qsdpa_attention_params *params, const qsdpa_tensor *out,
                                    const char **name) {
    qsdpa_clear_error();
    if (!name) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "name is NULL");
    qsdpa_problem p;
    const qsdpa_kernel_entry *kernel;
    qsdpa_status st = prepare(__func__, ctx, q, k, v, params, out, NULL, &p, &kernel);
    if (st != QSDPA_OK) return st;
    *name = kernel->info.name;
    return QSDPA_OK;
}
