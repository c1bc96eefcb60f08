/* Random attention problems for `qsdpa demo` and `qsdpa verify`: fresh data,
 * quantized with the library's own qsdpa_quantize, viewed as qsdpa tensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Fill n values of dtype with sigma * N(0,1). */
static void fill_normal(uint64_t *rng, void *data, qsdpa_dtype dtype, int64_t n, double sigma) {
    for (int64_t i = 0; i < n; i++) cli_store(data, dtype, i, (float)(sigma * cli_rng_normal(rng)));
}

static qsdpa_dtype scale_dtype_of(const qsdpa_format *f, qsdpa_dtype affine_dtype) {
    return f->mode == QSDPA_MODE_AFFINE ? affine_dtype : QSDPA_DTYPE_U8;
}

/* One quantized K or V: rows [B,H,cap,dim] of x quantized (or converted, for
 * PLAIN) into freshly allocated codes/scales/biases; the view covers L of cap rows. */
static int quantize_side(const cli_case *c, const qsdpa_format *f, int64_t dim, int64_t cap, const float *x,
                         void **codes, void **scales, void **biases, size_t *codes_bytes,
                         size_t *scale_bytes, qsdpa_qtensor *t) {
    int64_t rows = c->batch * c->heads_kv * cap, words = 0, groups = 0;
    qsdpa_status st = qsdpa_format_row_words(f, dim, &words);
    if (st != QSDPA_OK) return cli_library_error("problem", "qsdpa_format_row_words", st);
    memset(t, 0, sizeof *t);
    t->format = *f;
    t->dim = dim;
    if (f->mode == QSDPA_MODE_PLAIN) {
        /* PLAIN rows are the values themselves, in plain_dtype. */
        *codes_bytes = (size_t)(rows * dim) * qsdpa_dtype_size(f->plain_dtype);
        *codes = cli_alloc(*codes_bytes);
        if (!*codes) return CLI_EXIT_FAIL;
        for (int64_t i = 0; i < rows * dim; i++) cli_store(*codes, f->plain_dtype, i, x[i]);
        *scales = *biases = NULL;
        *scale_bytes = 0;
        t->codes = qsdpa_tensor_4d(*codes, f->plain_dtype, c->batch, c->heads_kv, cap, dim);
        t->codes.shape[2] = c->len_k;
        return 0;
    }
    st = qsdpa_format_row_scales(f, dim, &groups);
    if (st != QSDPA_OK) return cli_library_error("problem", "qsdpa_format_row_scales", st);
    qsdpa_dtype sd = scale_dtype_of(f, c->scale_dtype);
    int affine = qsdpa_format_has_biases(f);
    *codes_bytes = (size_t)(rows * words) * sizeof(uint32_t);
    *scale_bytes = (size_t)(rows * groups) * qsdpa_dtype_size(sd);
    *codes = cli_alloc(*codes_bytes);
    *scales = cli_alloc(*scale_bytes);
    *biases = affine ? cli_alloc(*scale_bytes) : NULL;
    if (!*codes || !*scales || (affine && !*biases)) return CLI_EXIT_FAIL;
    st = qsdpa_quantize(f, x, QSDPA_DTYPE_F32, rows, dim, *codes, *scales, *biases, sd);
    if (st != QSDPA_OK) return cli_library_error("problem", "qsdpa_quantize", st);
    t->codes = qsdpa_tensor_4d(*codes, QSDPA_DTYPE_U32, c->batch, c->heads_kv, cap, words);
    t->scales = qsdpa_tensor_4d(*scales, sd, c->batch, c->heads_kv, cap, groups);
    t->codes.shape[2] = t->scales.shape[2] = c->len_k;
    if (affine) {
        t->biases = qsdpa_tensor_4d(*biases, sd, c->batch, c->heads_kv, cap, groups);
        t->biases.shape[2] = c->len_k;
    } else {
        t->biases.dtype = sd;
    }
    return 0;
}

/* max |V| over the dequantized rows the view covers. */
static int max_abs_dequantized(const cli_problem *p, int64_t cap, float *out) {
    const qsdpa_qtensor *v = &p->tv;
    int64_t rows = p->c.batch * p->c.heads_kv * cap, n = rows * v->dim;
    float *w = cli_alloc((size_t)n * sizeof(float));
    if (!w) return CLI_EXIT_FAIL;
    if (v->format.mode == QSDPA_MODE_PLAIN) {
        for (int64_t i = 0; i < n; i++) w[i] = cli_load(p->v_codes, v->format.plain_dtype, i);
    } else {
        qsdpa_status st = qsdpa_dequantize(&v->format, p->v_codes, p->v_scales, p->v_biases, v->scales.dtype,
                                           rows, v->dim, w, QSDPA_DTYPE_F32);
        if (st != QSDPA_OK) {
            free(w);
            return cli_library_error("problem", "qsdpa_dequantize", st);
        }
    }
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(w[i]));
    free(w);
    *out = m;
    return 0;
}

static int build_mask(cli_problem *p, uint64_t *rng) {
    const cli_case *c = &p->c;
    int64_t n = c->batch * c->heads_q * c->len_q * c->len_k;
    if (c->mask == CLI_MASK_NONE) return 0;
    if (c->mask == CLI_MASK_BROADCAST) n = c->len_q * c->len_k;
    qsdpa_dtype dt = c->mask == CLI_MASK_ADDITIVE ? c->mask_dtype : QSDPA_DTYPE_BOOL;
    p->mask_bytes = (size_t)n * qsdpa_dtype_size(dt);
    p->mask = cli_alloc(p->mask_bytes);
    if (!p->mask) return CLI_EXIT_FAIL;
    for (int64_t i = 0; i < n; i++) {
        bool keep = cli_rng_uniform(rng) >= 0.2;
        if (dt == QSDPA_DTYPE_BOOL) ((uint8_t *)p->mask)[i] = keep;
        else cli_store(p->mask, dt, i, keep ? (float)cli_rng_normal(rng) : -1e4f);
    }
    /* An additive row of only -1e4 entries is ill-conditioned in f32 (score + mask
     * keeps ~3 decimals), so the f32 kernels and the double reference rightly
     * differ there: keep one entry of each such row. Bool rows may be fully masked. */
    for (int64_t r = 0; dt != QSDPA_DTYPE_BOOL && r < n / c->len_k; r++) {
        bool any = false;
        for (int64_t j = 0; j < c->len_k; j++) any |= cli_load(p->mask, dt, r * c->len_k + j) > -1e3f;
        if (!any) cli_store(p->mask, dt, r * c->len_k + (int64_t)(cli_rng_next(rng) % (uint64_t)c->len_k), 0.0f);
    }
    if (c->mask != CLI_MASK_BROADCAST) {
        p->tmask = qsdpa_tensor_4d(p->mask, dt, c->batch, c->heads_q, c->len_q, c->len_k);
    } else if (cli_rng_next(rng) & 1) { /* rank-2 [Lq, Lk]: broadcast by rank */
        int64_t shape[2] = {c->len_q, c->len_k};
        p->tmask = qsdpa_tensor_make(p->mask, dt, 2, shape);
    } else { /* rank-4 view with zero strides on B and H */
        p->tmask = qsdpa_tensor_4d(p->mask, dt, c->batch, c->heads_q, c->len_q, c->len_k);
        p->tmask.stride[0] = p->tmask.stride[1] = 0;
    }
    p->params.mask = &p->tmask;
    return 0;
}

int cli_problem_build(const cli_case *c, uint64_t seed, cli_problem *p) {
    memset(p, 0, sizeof *p);
    p->c = *c;
    uint64_t rng = seed;
    /* Half the problems view K/V inside a larger cache (capacity > Lk), as
     * MLX and mlx-lm do, so strides are exercised. */
    int64_t cap = c->len_k;
    if (cli_rng_next(&rng) & 1) cap += (int64_t)(cli_rng_next(&rng) % 37);
    p->capacity = cap;
    int64_t nq = c->batch * c->heads_q * c->len_q * c->dim_k;
    int64_t nk = c->batch * c->heads_kv * cap * c->dim_k, nv = c->batch * c->heads_kv * cap * c->dim_v;
    p->q_bytes = (size_t)nq * qsdpa_dtype_size(c->q_dtype);
    p->out_bytes = (size_t)(c->batch * c->heads_q * c->len_q * c->dim_v) * qsdpa_dtype_size(c->q_dtype);
    p->q = cli_alloc(p->q_bytes);
    p->k_f32 = cli_alloc((size_t)nk * sizeof(float));
    p->v_f32 = cli_alloc((size_t)nv * sizeof(float));
    if (!p->q || !p->k_f32 || !p->v_f32) return CLI_EXIT_FAIL;
    fill_normal(&rng, p->q, c->q_dtype, nq, 0.1);
    fill_normal(&rng, p->k_f32, QSDPA_DTYPE_F32, nk, 0.1);
    fill_normal(&rng, p->v_f32, QSDPA_DTYPE_F32, nv, 0.1);
    p->tq = qsdpa_tensor_4d(p->q, c->q_dtype, c->batch, c->heads_q, c->len_q, c->dim_k);
    int rc = quantize_side(c, &c->k_format, c->dim_k, cap, p->k_f32, &p->k_codes, &p->k_scales, &p->k_biases,
                           &p->k_codes_bytes, &p->k_scale_bytes, &p->tk);
    if (!rc)
        rc = quantize_side(c, &c->v_format, c->dim_v, cap, p->v_f32, &p->v_codes, &p->v_scales, &p->v_biases,
                           &p->v_codes_bytes, &p->v_scale_bytes, &p->tv);
    if (!rc) rc = max_abs_dequantized(p, cap, &p->max_abs_v);
    if (rc) return rc;

    p->params = qsdpa_attention_default_params();
    p->params.scale = c->scale;
    p->params.causal = c->causal;
    p->params.window = c->window;
    if ((rc = build_mask(p, &rng))) return rc;
    if (c->sinks) {
        float *sinks = cli_alloc((size_t)c->heads_q * sizeof(float));
        if (!sinks) return CLI_EXIT_FAIL;
        for (int64_t h = 0; h < c->heads_q; h++) sinks[h] = (float)(2.0 * cli_rng_uniform(&rng) - 1.0);
        p->sinks = sinks;
        int64_t hq = c->heads_q;
        p->tsinks = qsdpa_tensor_make(p->sinks, QSDPA_DTYPE_F32, 1, &hq);
        p->params.sinks = &p->tsinks;
    }
    return 0;
}

void cli_problem_free(cli_problem *p) {
    free(p->q);
    free(p->k_f32);
    free(p->v_f32);
    free(p->k_codes);
    free(p->v_codes);
    free(p->k_scales);
    free(p->k_biases);
    free(p->v_scales);
    free(p->v_biases);
    free(p->mask);
    free(p->sinks);
    memset(p, 0, sizeof *p);
}

void cli_problem_plain(const cli_problem *p, qsdpa_qtensor *k, qsdpa_qtensor *v) {
    const cli_case *c = &p->c;
    float *data[2] = {p->k_f32, p->v_f32};
    int64_t dims[2] = {c->dim_k, c->dim_v};
    qsdpa_qtensor *side[2] = {k, v};
    for (int s = 0; s < 2; s++) {
        memset(side[s], 0, sizeof *side[s]);
        side[s]->format.mode = QSDPA_MODE_PLAIN;
        side[s]->format.bits = 32;
        side[s]->format.plain_dtype = QSDPA_DTYPE_F32;
        side[s]->dim = dims[s];
        side[s]->codes = qsdpa_tensor_4d(data[s], QSDPA_DTYPE_F32, c->batch, c->heads_kv, p->capacity, dims[s]);
        side[s]->codes.shape[2] = c->len_k;
    }
}

qsdpa_tensor cli_problem_out(const cli_problem *p, void *data) {
    const cli_case *c = &p->c;
    return qsdpa_tensor_4d(data, c->q_dtype, c->batch, c->heads_q, c->len_q, c->dim_v);
}

/* Bytes of the rows the view covers (not the unused capacity). */
size_t cli_problem_cache_bytes(const cli_problem *p) {
    const cli_case *c = &p->c;
    size_t bytes = 0;
    const qsdpa_qtensor *side[2] = {&p->tk, &p->tv};
    for (int s = 0; s < 2; s++) {
        const qsdpa_qtensor *t = side[s];
        size_t rows = (size_t)(c->batch * c->heads_kv * c->len_k);
        bytes += rows * (size_t)t->codes.shape[3] * qsdpa_dtype_size(t->codes.dtype);
        if (t->scales.data) bytes += rows * (size_t)t->scales.shape[3] * qsdpa_dtype_size(t->scales.dtype);
        if (t->biases.data) bytes += rows * (size_t)t->biases.shape[3] * qsdpa_dtype_size(t->biases.dtype);
    }
    return bytes;
}

double cli_max_abs_diff(const void *a, const void *b, qsdpa_dtype dtype, int64_t n) {
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)cli_load(a, dtype, i) - (double)cli_load(b, dtype, i));
        if (isnan(d)) return INFINITY; /* a poisoned element never written, or a NaN produced */
        if (d > worst) worst = d;
    }
    return worst;
}

double cli_tolerance(qsdpa_dtype dtype) {
    return dtype == QSDPA_DTYPE_F32 ? 2e-5 : dtype == QSDPA_DTYPE_F16 ? 2e-3 : 1.6e-2;
}

void cli_case_string(const cli_case *c, char *buf, size_t capacity) {
    static const char *masks[] = {"", " bool-mask", " additive-mask", " broadcast-mask"};
    snprintf(buf, capacity, "B%lld Hq%lld Hkv%lld Lq%lld Lk%lld D%lld/%lld%s%s%s%s", (long long)c->batch,
             (long long)c->heads_q, (long long)c->heads_kv, (long long)c->len_q, (long long)c->len_k,
             (long long)c->dim_k, (long long)c->dim_v, masks[c->mask], c->causal ? " causal" : "",
             c->window ? " window" : "", c->sinks ? " sinks" : "");
}
