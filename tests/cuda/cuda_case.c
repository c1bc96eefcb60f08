/* See cuda_case.h. Compiled into the CUDA tests by tests/cuda/tests.cmake
 * (only when the CUDA backend is built). */
#include "cuda_case.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

cuda_case cuda_case_default(void) {
    cuda_case c;
    memset(&c, 0, sizeof c);
    c.batch = 1; c.hq = 4; c.hkv = 1; c.lq = 1; c.lk = 300; c.dk = 128; c.dv = 128;
    qsdpa_format_parse("affine:4:64", &c.kf);
    c.vf = c.kf;
    c.scale_dtype = QSDPA_DTYPE_F16;
    c.q_dtype = QSDPA_DTYPE_F16;
    c.mask_rank = 4;
    return c;
}

/* host + device copies of one buffer */
typedef struct { void *h, *d; size_t bytes; } buf;

static int buf_make(buf *b, size_t bytes) {
    b->bytes = bytes;
    b->h = test_alloc(bytes ? bytes : 1);
    b->d = NULL;
    if (cudaMalloc(&b->d, bytes ? bytes : 1) != cudaSuccess) return -1;
    return 0;
}
static int buf_up(buf *b) { return cudaMemcpy(b->d, b->h, b->bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1; }
static int buf_down(buf *b) { return cudaMemcpy(b->h, b->d, b->bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1; }
static void buf_free(buf *b) {
    free(b->h);
    if (b->d) cudaFree(b->d);
    b->h = b->d = NULL;
}

/* A K or V cache [B, H, cap, dim] quantized on the host from N(offset, sigma) rows,
 * clipped to [-clamp, clamp] when clamp > 0. */
typedef struct {
    buf codes, scales, biases;
    int64_t words, groups;
    qsdpa_dtype sdt;
} kv_buf;

static int kv_make(test_rng *rng, kv_buf *kv, const qsdpa_format *f, qsdpa_dtype scale_dtype, int64_t rows,
                   int64_t dim, double sigma, double clamp, double offset, double outlier, double outlier_spread) {
    memset(kv, 0, sizeof *kv);
    qsdpa_format_row_words(f, dim, &kv->words);
    bool plain = f->mode == QSDPA_MODE_PLAIN, affine = f->mode == QSDPA_MODE_AFFINE;
    kv->groups = plain ? 0 : dim / f->group;
    kv->sdt = affine ? scale_dtype : QSDPA_DTYPE_U8;
    qsdpa_dtype xdt = affine ? scale_dtype : QSDPA_DTYPE_F32;
    float *x = test_alloc((size_t)(rows * dim) * sizeof(float));
    void *xt = test_alloc((size_t)(rows * dim) * 4);
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, rows * dim, sigma);
    if (clamp > 0)
        for (int64_t i = 0; i < rows * dim; i++) x[i] = x[i] > clamp ? (float)clamp : x[i] < -clamp ? (float)-clamp : x[i];
    for (int64_t i = 0; i < rows * dim && offset != 0.0; i++) x[i] += (float)offset;
    if (outlier != 0.0 && affine) /* k_outlier, k_outlier_spread */
        test_outlier_channel(x, rows, dim, f->group, (float)(-outlier * sigma), outlier_spread, rng);
    for (int64_t i = 0; i < rows * dim; i++) qsdpa_store_float(xt, xdt, i, x[i]);
    size_t sz = qsdpa_dtype_size(kv->sdt);
    if (buf_make(&kv->codes, (size_t)(rows * kv->words) * 4) ||
        buf_make(&kv->scales, plain ? 0 : (size_t)(rows * kv->groups) * sz) ||
        buf_make(&kv->biases, affine ? (size_t)(rows * kv->groups) * sz : 0))
        return -1;
    qsdpa_status st = qsdpa_quantize(f, xt, xdt, rows, dim, kv->codes.h, plain ? NULL : kv->scales.h,
                                     affine ? kv->biases.h : NULL, kv->sdt);
    free(x);
    free(xt);
    if (st != QSDPA_OK) {
        fprintf(stderr, "qsdpa_quantize: %s\n", qsdpa_last_error());
        return -1;
    }
    if (buf_up(&kv->codes) || buf_up(&kv->scales) || buf_up(&kv->biases)) return -1;
    return 0;
}

/* View [B, H, L, dim] of a cache [B, H, cap, dim]; device or host pointers. */
static qsdpa_qtensor kv_view(const kv_buf *kv, const qsdpa_format *f, int64_t b, int64_t h, int64_t cap, int64_t len,
                             int64_t dim, bool device) {
    qsdpa_qtensor t;
    memset(&t, 0, sizeof t);
    t.format = *f;
    t.dim = dim;
    bool plain = f->mode == QSDPA_MODE_PLAIN;
    qsdpa_dtype cdt = plain ? f->plain_dtype : QSDPA_DTYPE_U32;
    int64_t celems = plain ? dim : kv->words;
    t.codes = qsdpa_tensor_4d(device ? kv->codes.d : kv->codes.h, cdt, b, h, cap, celems);
    t.codes.shape[2] = len;
    if (!plain) {
        t.scales = qsdpa_tensor_4d(device ? kv->scales.d : kv->scales.h, kv->sdt, b, h, cap, kv->groups);
        t.scales.shape[2] = len;
    }
    if (f->mode == QSDPA_MODE_AFFINE) {
        t.biases = qsdpa_tensor_4d(device ? kv->biases.d : kv->biases.h, kv->sdt, b, h, cap, kv->groups);
        t.biases.shape[2] = len;
    }
    return t;
}

static double max_abs_v(const kv_buf *kv, const qsdpa_format *f, int64_t rows, int64_t dim) {
    float *v = test_alloc((size_t)(rows * dim) * sizeof(float));
    bool plain = f->mode == QSDPA_MODE_PLAIN;
    qsdpa_dequantize(f, kv->codes.h, plain ? NULL : kv->scales.h, f->mode == QSDPA_MODE_AFFINE ? kv->biases.h : NULL,
                     kv->sdt, rows, dim, v, QSDPA_DTYPE_F32);
    double m = 0.0;
    for (int64_t i = 0; i < rows * dim; i++) m = fabs(v[i]) > m ? fabs(v[i]) : m;
    free(v);
    return m;
}

/* The routes of the GPU calls run so far (distinct routes, a count each): what proves every path reachable. */
enum { ROUTE_KINDS = 64 };
static char route_seen[ROUTE_KINDS][64];
static int route_calls[ROUTE_KINDS];

static void route_tally(const char *route) {
    for (int i = 0; i < ROUTE_KINDS; i++) {
        if (!route_seen[i][0]) snprintf(route_seen[i], sizeof route_seen[i], "%s", route);
        if (strcmp(route_seen[i], route) == 0) {
            route_calls[i]++;
            return;
        }
    }
}

int cuda_route_count(const char *prefix) {
    int n = 0;
    for (int i = 0; i < ROUTE_KINDS && route_seen[i][0]; i++)
        if (strncmp(route_seen[i], prefix, strlen(prefix)) == 0) n += route_calls[i];
    return n;
}

double cuda_case_run(test_rng *rng, const cuda_case *c, const char *label) {
    /* QSDPA_CUDA_SHAPE=text: only cases whose label contains text (compute-sanitizer subsets); QSDPA_CUDA_CASE_ERRORS
     * set: each case's error printed */
    const char *only_shape = getenv("QSDPA_CUDA_SHAPE");
    if (only_shape && !strstr(label, only_shape)) return 0.0;
    double sigma = c->sigma > 0 ? c->sigma : 1.0;
    int64_t cap = c->lk + c->cap_extra;
    double result = -1.0;
    kv_buf kb, vb;
    buf q, mask, sinks, out, lse;
    memset(&q, 0, sizeof q); mask = sinks = out = lse = q;
    memset(&kb, 0, sizeof kb); vb = kb;
    qsdpa_context *gpu = NULL, *cpu = NULL;
    if (kv_make(rng, &kb, &c->kf, c->scale_dtype, c->batch * c->hkv * cap, c->dk, sigma, 0.0, c->k_offset, c->k_outlier,
                c->k_outlier_spread) ||
        kv_make(rng, &vb, &c->vf, c->scale_dtype, c->batch * c->hkv * cap, c->dv, c->v_sigma > 0 ? c->v_sigma : sigma,
                c->v_clamp, 0.0, 0.0, 0.0)) {
        CHECK(0, "%s: building K/V failed", label);
        goto done;
    }
    size_t qn = (size_t)(c->batch * c->hq * c->lq * c->dk), on = (size_t)(c->batch * c->hq * c->lq * c->dv);
    size_t rows = (size_t)(c->batch * c->hq * c->lq);
    qsdpa_dtype out_dt = c->partial ? QSDPA_DTYPE_F32 : c->q_dtype;
    buf_make(&q, qn * qsdpa_dtype_size(c->q_dtype));
    test_fill_normal(rng, q.h, c->q_dtype, (int64_t)qn, sigma);
    buf_up(&q);
    buf_make(&out, on * qsdpa_dtype_size(out_dt));
    buf_make(&lse, rows * sizeof(float));

    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = c->scale != 0.0f ? c->scale : (float)(1.0 / sqrt((double)c->dk));
    params.causal = c->causal;
    params.window = c->window;
    params.key_offset = c->key_offset;
    params.key_total = c->key_total;
    qsdpa_tensor mask_h, mask_d, sinks_h, sinks_d;
    memset(&mask_h, 0, sizeof mask_h); mask_d = sinks_h = sinks_d = mask_h;
    if (c->mask) {
        int64_t n = c->mask_rank == 4 ? c->batch * c->hq * c->lq * c->lk : c->lq * c->lk;
        qsdpa_dtype mdt = c->mask == 1 ? QSDPA_DTYPE_BOOL : QSDPA_DTYPE_F32;
        buf_make(&mask, (size_t)n * qsdpa_dtype_size(mdt));
        for (int64_t i = 0; i < n; i++) {
            if (c->mask == 1) ((uint8_t *)mask.h)[i] = test_rng_uniform(rng) >= 0.2;
            else if (c->mask == 2) ((float *)mask.h)[i] = (float)test_rng_normal(rng);
            else if (c->mask == 4) /* query row 0 of every head: -inf on every key (MLX: NaN row) */
                ((float *)mask.h)[i] = (i / c->lk) % c->lq == 0 ? -INFINITY : (float)test_rng_normal(rng);
            else ((float *)mask.h)[i] = test_rng_uniform(rng) < 0.2 ? -1e9f : 0.0f;
        }
        buf_up(&mask);
        if (c->mask_rank == 4) {
            mask_h = qsdpa_tensor_4d(mask.h, mdt, c->batch, c->hq, c->lq, c->lk);
        } else {
            int64_t shape[2] = {c->lq, c->lk};
            mask_h = qsdpa_tensor_make(mask.h, mdt, 2, shape);
        }
        mask_d = mask_h;
        mask_d.data = mask.d;
    }
    if (c->sinks) {
        buf_make(&sinks, (size_t)c->hq * sizeof(float));
        for (int64_t h = 0; h < c->hq; h++)
            ((float *)sinks.h)[h] = c->sinks == 2 && h % 2 == 0 ? -INFINITY
                                   : c->sinks == 3 && h == 0 ? NAN
                                                             : (float)test_rng_normal(rng);
        buf_up(&sinks);
        int64_t shape[1] = {c->hq};
        sinks_h = qsdpa_tensor_make(sinks.h, QSDPA_DTYPE_F32, 1, shape);
        sinks_d = sinks_h;
        sinks_d.data = sinks.d;
    }

    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.kernel = c->kernel;
    qsdpa_status st = qsdpa_context_create(&o, &gpu);
    CHECK(st == QSDPA_OK, "%s: CUDA context: %s", label, qsdpa_last_error());
    o = qsdpa_context_default_options();
    o.kernel = "cpu.reference";
    o.num_threads = 1;
    st = qsdpa_context_create(&o, &cpu);
    CHECK(st == QSDPA_OK, "%s: CPU context: %s", label, qsdpa_last_error());
    if (!gpu || !cpu) goto done;

    /* GPU run on poisoned outputs */
    cudaMemset(out.d, 0xFF, out.bytes);
    cudaMemset(lse.d, 0xFF, lse.bytes);
    qsdpa_tensor qd = qsdpa_tensor_4d(q.d, c->q_dtype, c->batch, c->hq, c->lq, c->dk);
    qsdpa_tensor od = qsdpa_tensor_4d(out.d, out_dt, c->batch, c->hq, c->lq, c->dv);
    int64_t lshape[3] = {c->batch, c->hq, c->lq};
    qsdpa_tensor ld = qsdpa_tensor_make(lse.d, QSDPA_DTYPE_F32, 3, lshape);
    qsdpa_qtensor kd = kv_view(&kb, &c->kf, c->batch, c->hkv, cap, c->lk, c->dk, true);
    qsdpa_qtensor vd = kv_view(&vb, &c->vf, c->batch, c->hkv, cap, c->lk, c->dv, true);
    params.mask = c->mask ? &mask_d : NULL;
    params.sinks = c->sinks ? &sinks_d : NULL;
    const char *name = "?";
    qsdpa_attention_select(gpu, &qd, &kd, &vd, &params, &od, &name);
    st = c->partial ? qsdpa_attention_partial(gpu, &qd, &kd, &vd, &params, &od, &ld)
                    : qsdpa_attention(gpu, &qd, &kd, &vd, &params, &od);
    CHECK(st == QSDPA_OK, "%s: GPU attention (%s): %s", label, name, qsdpa_last_error());
    cudaError_t err = cudaDeviceSynchronize();
    CHECK(err == cudaSuccess, "%s: device error %s", label, cudaGetErrorString(err));
    const char *route = qsdpa_context_last_route(gpu);
    if (st == QSDPA_OK) route_tally(route);
    CHECK(!c->route || strncmp(route, c->route, strlen(c->route)) == 0, "%s [%s]: took route '%s', expected '%s'",
          label, name, route, c->route ? c->route : "");
    CHECK(!c->route_not || !strstr(route, c->route_not), "%s [%s]: took route '%s'", label, name, route);
    if (st != QSDPA_OK || err != cudaSuccess) goto done;
    buf_down(&out);
    buf_down(&lse);

    /* CPU reference on the same bytes */
    void *ref = test_alloc(out.bytes);
    float *ref_lse = test_alloc(lse.bytes);
    qsdpa_tensor qh = qsdpa_tensor_4d(q.h, c->q_dtype, c->batch, c->hq, c->lq, c->dk);
    qsdpa_tensor oh = qsdpa_tensor_4d(ref, out_dt, c->batch, c->hq, c->lq, c->dv);
    qsdpa_tensor lh = qsdpa_tensor_make(ref_lse, QSDPA_DTYPE_F32, 3, lshape);
    qsdpa_qtensor kh = kv_view(&kb, &c->kf, c->batch, c->hkv, cap, c->lk, c->dk, false);
    qsdpa_qtensor vh = kv_view(&vb, &c->vf, c->batch, c->hkv, cap, c->lk, c->dv, false);
    params.mask = c->mask ? &mask_h : NULL;
    params.sinks = c->sinks ? &sinks_h : NULL;
    st = c->partial ? qsdpa_attention_partial(cpu, &qh, &kh, &vh, &params, &oh, &lh)
                    : qsdpa_attention(cpu, &qh, &kh, &vh, &params, &oh);
    CHECK(st == QSDPA_OK, "%s: reference: %s", label, qsdpa_last_error());
    if (st == QSDPA_OK) {
        /* the unit: max|V| over the rows of the cache */
        double vmax = max_abs_v(&vb, &c->vf, c->batch * c->hkv * cap, c->dv);
        double worst = 0.0;
        int64_t at = -1;
        for (size_t i = 0; i < on; i++) {
            double a = qsdpa_load_float(out.h, out_dt, (int64_t)i), b = qsdpa_load_float(ref, out_dt, (int64_t)i);
            double e = isnan(a) && isnan(b) ? 0.0 : fabs(a - b); /* NaN rows must match NaN rows */
            if (!(e <= worst)) { worst = isnan(e) ? INFINITY : e; at = (int64_t)i; }
        }
        double rel = vmax > 0 ? worst / vmax : worst;
        double tol = test_spec_tolerance(c->q_dtype) * (c->bound_scale > 0 ? c->bound_scale : 1.0);
        if (getenv("QSDPA_CUDA_CASE_ERRORS") && !c->known) /* every case's error (diagnosis runs, bench/gpu.sh) */
            printf("case %s [%s]: max error %.3g x max|V| (bound %.3g)\n", label, name, rel, tol);
        if (c->known)
            printf("KNOWN (%s) %s [%s]: max error %.3g x max|V| against the bound %.3g (%s)\n", c->known, label, name, rel,
                   tol, rel <= tol ? "within it this time" : "past it, a known departure");
        CHECK(c->known || rel <= tol, "%s [%s]: max error %.3g x max|V| > %.3g at element %lld (gpu %g, ref %g)", label, name, rel,
              tol, (long long)at, at >= 0 ? qsdpa_load_float(out.h, out_dt, at) : 0.0,
              at >= 0 ? qsdpa_load_float(ref, out_dt, at) : 0.0);
        if (c->partial)
            for (size_t i = 0; i < rows; i++) {
                float a = ((float *)lse.h)[i], b = ref_lse[i];
                bool same = (isinf(a) && isinf(b) && a == b) || (isnan(a) && isnan(b)) ||
                            fabsf(a - b) <= 1e-3f * (1.0f + fabsf(b));
                if (!same && c->known) /* the known departure's score error reaches the lse too */
                    printf("KNOWN (%s) %s [%s]: lse[%zu] gpu %g ref %g\n", c->known, label, name, i, a, b);
                CHECK(same || c->known, "%s [%s]: lse[%zu] gpu %g ref %g", label, name, i, a, b);
                if (!same) break;
            }
        result = rel;
    }
    free(ref);
    free(ref_lse);
done:
    qsdpa_context_destroy(gpu);
    qsdpa_context_destroy(cpu);
    buf_free(&kb.codes); buf_free(&kb.scales); buf_free(&kb.biases);
    buf_free(&vb.codes); buf_free(&vb.scales); buf_free(&vb.biases);
    buf_free(&q); buf_free(&mask); buf_free(&sinks); buf_free(&out); buf_free(&lse);
    return result;
}
