/* KV cache round trips: random formats (K and V differ), random chunk sizes
 * and input dtypes (strided inputs too), growth in small steps, a residual
 * window, trims. After every append the stored bytes must equal
 * qsdpa_quantize of the rows as they entered the quantizer, and the window
 * must hold the newest rows; attend must match the double-precision
 * reference over the dequantized layer (causal, window, sinks, masks). */
#include "cache_fixture.h"

#define MAX_TOKENS 160

typedef struct shadow {
    float *rows;           /* [B,H,MAX_TOKENS,D] every appended row, as f32 */
    qsdpa_dtype *src;      /* [MAX_TOKENS] dtype the row had when it was quantized */
} shadow;

static const qsdpa_dtype float_dtypes[3] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};

/* Expected stored bytes of one row, checked against the quantized view. */
static void check_quantized_row(const qsdpa_qtensor *t, const float *raw, qsdpa_dtype src, int64_t b, int64_t h,
                                int64_t l, const char *side) {
    int64_t D = t->dim;
    unsigned char x[1024 * 4], codes[1024 * 4], scales[64 * 4], biases[64 * 4];
    for (int64_t d = 0; d < D; d++) qsdpa_store_float(x, src, d, raw[d]);
    size_t code_bytes = (size_t)t->codes.shape[3] * qsdpa_dtype_size(t->codes.dtype);
    if (t->format.mode == QSDPA_MODE_PLAIN) {
        for (int64_t d = 0; d < D; d++) qsdpa_store_float(codes, t->codes.dtype, d, qsdpa_load_float(x, src, d));
        CHECK(memcmp(codes, qsdpa_row_ptr(&t->codes, b, h, l), code_bytes) == 0, "%s plain row %lld differs", side,
              (long long)l);
        return;
    }
    qsdpa_status st = qsdpa_quantize(&t->format, x, src, 1, D, (uint32_t *)(void *)codes, scales,
                                     t->biases.data ? biases : NULL, t->scales.dtype);
    CHECK(st == QSDPA_OK, "quantize: %s", qsdpa_last_error());
    size_t scale_bytes = (size_t)t->scales.shape[3] * qsdpa_dtype_size(t->scales.dtype);
    CHECK(memcmp(codes, qsdpa_row_ptr(&t->codes, b, h, l), code_bytes) == 0, "%s codes of row %lld differ", side,
          (long long)l);
    CHECK(memcmp(scales, qsdpa_row_ptr(&t->scales, b, h, l), scale_bytes) == 0, "%s scales of row %lld differ", side,
          (long long)l);
    if (t->biases.data)
        CHECK(memcmp(biases, qsdpa_row_ptr(&t->biases, b, h, l), scale_bytes) == 0, "%s biases of row %lld differ",
              side, (long long)l);
}

static void check_side(const qsdpa_cache *c, const qsdpa_qtensor *q, const qsdpa_qtensor *r, const shadow *s,
                       int64_t D, const char *side) {
    qsdpa_cache_options o;
    qsdpa_cache_get_options(c, &o);
    int64_t lq = q->codes.shape[2];
    CHECK(q->codes.stride[1] % (o.step * q->codes.shape[3]) == 0 && q->codes.stride[1] >= lq * q->codes.shape[3],
          "%s capacity stride %lld is not a multiple of step %lld", side, (long long)q->codes.stride[1],
          (long long)o.step);
    for (int64_t b = 0; b < o.batch; b++)
        for (int64_t h = 0; h < o.heads_kv; h++) {
            const float *rows = s->rows + (b * o.heads_kv + h) * MAX_TOKENS * D;
            for (int64_t l = 0; l < lq; l++) check_quantized_row(q, rows + l * D, s->src[l], b, h, l, side);
            for (int64_t l = 0; l < r->codes.shape[2]; l++) {
                const void *row = qsdpa_row_ptr(&r->codes, b, h, l);
                for (int64_t d = 0; d < D; d++) {
                    unsigned char tmp[4]; /* the row rounded to the window's dtype */
                    qsdpa_store_float(tmp, o.residual_dtype, 0, rows[(lq + l) * D + d]);
                    float want = qsdpa_load_float(tmp, o.residual_dtype, 0);
                    if (qsdpa_load_float(row, r->codes.dtype, d) != want) {
                        CHECK(0, "%s window row %lld (global %lld) differs", side, (long long)l, (long long)(lq + l));
                        return;
                    }
                }
            }
        }
}

/* Append T random rows of dtype dt to one side's shadow and a (maybe
 * strided) input tensor; returns the malloc'd buffer behind *t. */
static void *make_input(test_rng *rng, const qsdpa_cache_options *o, int64_t D, int64_t T, qsdpa_dtype dt,
                        shadow *s, int64_t len, qsdpa_tensor *t) {
    int64_t B = o->batch, H = o->heads_kv, padT = test_rng_int(rng, 0, 1) ? 3 : 0, padD = padT ? 5 : 0;
    int64_t sh[4] = {B, H, T + padT, D + padD};
    size_t n = (size_t)(B * H * (T + padT) * (D + padD));
    void *buf = test_alloc(n * qsdpa_dtype_size(dt));
    test_fill_normal(rng, buf, dt, (int64_t)n, 1.0);
    *t = qsdpa_tensor_make(buf, dt, 4, sh);
    t->shape[2] = T; /* a view of the first T rows and D columns */
    t->shape[3] = D;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < T; i++)
                for (int64_t d = 0; d < D; d++)
                    s->rows[((b * H + h) * MAX_TOKENS + len + i) * D + d] =
                        qsdpa_load_float(buf, dt, b * t->stride[0] + h * t->stride[1] + i * t->stride[2] + d);
    return buf;
}

static void check_attend(test_rng *rng, qsdpa_context *ctx, qsdpa_context *ref, qsdpa_cache *c, int64_t layer) {
    qsdpa_cache_options o;
    qsdpa_cache_get_options(c, &o);
    float *k, *v;
    int64_t L = fixture_layer_f32(c, layer, &k, &v);
    int64_t B = o.batch, Hkv = o.heads_kv, Hq = Hkv * test_rng_int(rng, 1, 3), Lq = test_rng_int(rng, 1, 5);
    qsdpa_dtype qd = test_rng_int(rng, 0, 2) ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_F16;
    size_t nq = (size_t)(B * Hq * Lq * o.dim_k), no = (size_t)(B * Hq * Lq * o.dim_v);
    void *q = test_alloc(nq * 4), *out = test_alloc(no * 4), *want = test_alloc(no * 4);
    test_fill_normal(rng, q, qd, (int64_t)nq, 1.0);
    qsdpa_tensor tq = qsdpa_tensor_4d(q, qd, B, Hq, Lq, o.dim_k);
    qsdpa_tensor tout = qsdpa_tensor_4d(out, qd, B, Hq, Lq, o.dim_v);
    qsdpa_tensor twant = qsdpa_tensor_4d(want, qd, B, Hq, Lq, o.dim_v);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 1.0f / sqrtf((float)o.dim_k);
    float *sinks = test_alloc((size_t)Hq * sizeof(float)); /* Hq: up to 3 x Hkv */
    qsdpa_tensor tsinks = qsdpa_tensor_make(sinks, QSDPA_DTYPE_F32, 1, &Hq);
    unsigned char *mask = test_alloc((size_t)(Lq * L) * 4);
    int64_t mshape[2] = {Lq, L};
    qsdpa_tensor tmask;
    int kind = (int)test_rng_int(rng, 0, 3); /* 0 none, 1 causal (+window), 2 bool mask, 3 additive mask */
    if (kind == 1) {
        p.causal = 1;
        if (test_rng_int(rng, 0, 1)) p.window = test_rng_int(rng, 1, L);
    } else if (kind >= 2) {
        qsdpa_dtype md = kind == 2 ? QSDPA_DTYPE_BOOL : QSDPA_DTYPE_F32;
        for (int64_t i = 0; i < Lq * L; i++) {
            if (kind == 2) mask[i] = test_rng_uniform(rng) > 0.2;
            else ((float *)(void *)mask)[i] = test_rng_uniform(rng) > 0.2 ? 0.0f : -1e9f;
        }
        /* One kept key per row: a row of -1e9 additive scores is ill-conditioned in
         * f32 (the scores vanish in -1e9's ulp), unlike a false bool mask. */
        for (int64_t i = 0; i < Lq; i++) {
            int64_t j = test_rng_int(rng, 0, L - 1);
            if (kind == 2) mask[i * L + j] = 1;
            else ((float *)(void *)mask)[i * L + j] = 0.0f;
        }
        tmask = qsdpa_tensor_make(mask, md, 2, mshape);
        p.mask = &tmask;
    }
    if (test_rng_int(rng, 0, 1)) {
        test_fill_normal(rng, sinks, QSDPA_DTYPE_F32, Hq, 1.0);
        p.sinks = &tsinks;
    }
    qsdpa_qtensor kp = fixture_plain(k, B, Hkv, L, o.dim_k), vp = fixture_plain(v, B, Hkv, L, o.dim_v);
    test_poison(out, no * 4);
    qsdpa_status st = qsdpa_cache_attend(ctx, c, layer, &tq, &p, &tout);
    CHECK(st == QSDPA_OK, "attend: %s", qsdpa_last_error());
    st = qsdpa_attention(ref, &tq, &kp, &vp, &p, &twant);
    CHECK(st == QSDPA_OK, "reference: %s", qsdpa_last_error());
    double vmax = fixture_max_abs(v, (size_t)(B * Hkv * L * o.dim_v)), err = 0;
    for (size_t i = 0; i < no; i++) {
        double d = fabs((double)qsdpa_load_float(out, qd, (int64_t)i) - qsdpa_load_float(want, qd, (int64_t)i));
        err = d > err || d != d ? d : err;
    }
    double tol = (qd == QSDPA_DTYPE_F32 ? 5e-5 : 3e-3) * vmax;
    CHECK(err <= tol, "attend L=%lld Lq=%lld Hq=%lld kind=%d sinks=%d q %s: max err %.3g > %.3g", (long long)L,
          (long long)Lq, (long long)Hq, kind, p.sinks != NULL, qsdpa_dtype_name(qd), err, tol);
    free(k);
    free(v);
    free(q);
    free(out);
    free(want);
    free(mask);
    free(sinks);
}

static void run_trial(test_rng *rng, qsdpa_context *ctx, qsdpa_context *ref, int trial) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.layers = 2;
    o.batch = test_rng_int(rng, 1, 2);
    o.heads_kv = test_rng_int(rng, 1, 2);
    qsdpa_format_parse(fixture_formats[test_rng_int(rng, 0, FIXTURE_NFORMATS - 1)], &o.k_format);
    qsdpa_format_parse(fixture_formats[test_rng_int(rng, 0, FIXTURE_NFORMATS - 1)], &o.v_format);
    o.dim_k = 128;
    o.dim_v = o.v_format.group == 128 || test_rng_int(rng, 0, 1) ? 128 : 64; /* Dk != Dv */
    o.scale_dtype = float_dtypes[test_rng_int(rng, 0, 2)];
    o.step = (int64_t[]){8, 16, 256}[test_rng_int(rng, 0, 2)];
    o.residual = (int64_t[]){0, 0, 5, 16}[test_rng_int(rng, 0, 3)];
    o.residual_dtype = float_dtypes[test_rng_int(rng, 0, 2)];
    char kf[32], vf[32];
    qsdpa_format_string(&o.k_format, kf, sizeof kf);
    qsdpa_format_string(&o.v_format, vf, sizeof vf);
    qsdpa_cache *c = NULL;
    qsdpa_status st = qsdpa_cache_create(ctx, &o, &c);
    CHECK(st == QSDPA_OK, "trial %d: create K %s V %s: %s", trial, kf, vf, qsdpa_last_error());
    if (st != QSDPA_OK) return;
    qsdpa_cache_get_options(c, &o);
    shadow sk[2], sv[2];
    qsdpa_dtype src[2][MAX_TOKENS];
    for (int l = 0; l < 2; l++) {
        sk[l].rows = test_alloc((size_t)(o.batch * o.heads_kv * MAX_TOKENS * o.dim_k) * 4);
        sv[l].rows = test_alloc((size_t)(o.batch * o.heads_kv * MAX_TOKENS * o.dim_v) * 4);
        sk[l].src = sv[l].src = src[l];
    }
    int64_t len = 0;
    while (len < MAX_TOKENS - 40) {
        int64_t T = test_rng_int(rng, 0, 3) ? test_rng_int(rng, 1, 3) : test_rng_int(rng, 4, 40);
        qsdpa_dtype dt = float_dtypes[test_rng_int(rng, 0, 2)];
        for (int l = 0; l < 2; l++) {
            qsdpa_tensor tk, tv;
            void *bk = make_input(rng, &o, o.dim_k, T, dt, &sk[l], len, &tk);
            void *bv = make_input(rng, &o, o.dim_v, T, dt, &sv[l], len, &tv);
            st = qsdpa_cache_append(ctx, c, l, &tk, &tv);
            CHECK(st == QSDPA_OK, "append: %s", qsdpa_last_error());
            /* Row p of this chunk is quantized straight from the input iff it
             * is not among the newest R after the append. */
            for (int64_t i = 0; i < T; i++) src[l][len + i] = len + i < len + T - o.residual ? dt : o.residual_dtype;
            free(bk);
            free(bv);
        }
        len += T;
        for (int l = 0; l < 2; l++) {
            int64_t got = -1;
            qsdpa_cache_length(c, l, &got);
            CHECK(got == len, "layer %d length %lld, expected %lld", l, (long long)got, (long long)len);
            qsdpa_qtensor kq, vq, kr, vr;
            qsdpa_cache_view(c, l, QSDPA_CACHE_QUANTIZED, &kq, &vq);
            qsdpa_cache_view(c, l, QSDPA_CACHE_RESIDUAL, &kr, &vr);
            int64_t want_r = len < o.residual ? len : o.residual;
            CHECK(kr.codes.shape[2] <= want_r, "window holds %lld > %lld", (long long)kr.codes.shape[2],
                  (long long)want_r);
            check_side(c, &kq, &kr, &sk[l], o.dim_k, "K");
            check_side(c, &vq, &vr, &sv[l], o.dim_v, "V");
        }
        check_attend(rng, ctx, ref, c, test_rng_int(rng, 0, 1));
        if (test_rng_int(rng, 0, 4) == 0) {
            int64_t n = test_rng_int(rng, 0, len < 12 ? len : 12);
            CHECK(qsdpa_cache_trim(c, n) == QSDPA_OK, "trim %lld: %s", (long long)n, qsdpa_last_error());
            len -= n;
        }
    }
    size_t alloc = 0, used = 0;
    CHECK(qsdpa_cache_memory(c, &alloc, &used) == QSDPA_OK && used > 0 && used <= alloc, "memory %zu of %zu", used,
          alloc);
    if (test_failures) fprintf(stderr, "trial %d: K %s, V %s, R %lld, step %lld\n", trial, kf, vf,
                               (long long)o.residual, (long long)o.step);
    for (int l = 0; l < 2; l++) {
        free(sk[l].rows);
        free(sv[l].rows);
    }
    qsdpa_cache_destroy(c);
}

/* Buffers of 2 MiB and more are the cache's own mappings (cache_mem.c), smaller ones heap blocks:
 * f16 rows, B 2, 8 KV heads, D 128, step 512 make 2 MiB sides that grow to 4 MiB (a mapping copied
 * into a larger one and unmapped), then a trim and more appends. The stored rows must be the input's,
 * and attend must match the reference. */
static void run_large(test_rng *rng, qsdpa_context *ctx, qsdpa_context *ref) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.batch = 2;
    o.heads_kv = 8;
    qsdpa_format_parse("f16", &o.k_format);
    o.v_format = o.k_format;
    o.step = 512;
    qsdpa_cache *c = NULL;
    if (qsdpa_cache_create(ctx, &o, &c) != QSDPA_OK) {
        CHECK(0, "large: create: %s", qsdpa_last_error());
        return;
    }
    const int64_t B = o.batch, H = o.heads_kv, D = 128, chunk = 250, total = 1100;
    uint16_t *rows = test_alloc((size_t)(B * H * total * D) * 2); /* every K row appended, [B,H,total,D] */
    int64_t len = 0;
    for (int round = 0; round < 5; round++) {
        if (round == 4) { /* drop 150, then append again over them */
            CHECK(qsdpa_cache_trim(c, 150) == QSDPA_OK, "large: trim: %s", qsdpa_last_error());
            len -= 150;
        }
        const int64_t T = len + chunk <= total ? chunk : total - len;
        uint16_t *in = test_alloc((size_t)(B * H * T * D) * 2);
        test_fill_normal(rng, in, QSDPA_DTYPE_F16, B * H * T * D, 1.0);
        for (int64_t bh = 0; bh < B * H; bh++)
            memcpy(rows + (bh * total + len) * D, in + bh * T * D, (size_t)(T * D) * 2);
        qsdpa_tensor t = qsdpa_tensor_4d(in, QSDPA_DTYPE_F16, B, H, T, D);
        CHECK(qsdpa_cache_append(ctx, c, 0, &t, &t) == QSDPA_OK, "large: append: %s", qsdpa_last_error());
        free(in);
        len += T;
        qsdpa_qtensor kq, vq;
        qsdpa_cache_view(c, 0, QSDPA_CACHE_QUANTIZED, &kq, &vq);
        CHECK(kq.codes.shape[2] == len, "large: %lld rows stored, expected %lld", (long long)kq.codes.shape[2],
              (long long)len);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t l = 0; l < len; l += 37) {
                    const void *want = rows + ((b * H + h) * total + l) * D;
                    CHECK(memcmp(qsdpa_row_ptr(&kq.codes, b, h, l), want, (size_t)D * 2) == 0 &&
                              memcmp(qsdpa_row_ptr(&vq.codes, b, h, l), want, (size_t)D * 2) == 0,
                          "large: row %lld of head %lld differs after %lld tokens", (long long)l, (long long)h,
                          (long long)len);
                }
        check_attend(rng, ctx, ref, c, 0);
    }
    size_t alloc = 0, used = 0;
    CHECK(qsdpa_cache_memory(c, &alloc, &used) == QSDPA_OK && used >= (size_t)(2 * B * H * len * D * 2) &&
              used <= alloc, "large: memory %zu of %zu", used, alloc);
    free(rows);
    qsdpa_cache_destroy(c);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *ctx = NULL, *ref = NULL;
    qsdpa_context_options ro = qsdpa_context_default_options();
    ro.kernel = "cpu.reference";
    ro.num_threads = 1;
    if (qsdpa_context_create(NULL, &ctx) != QSDPA_OK || qsdpa_context_create(&ro, &ref) != QSDPA_OK) {
        fprintf(stderr, "context: %s\n", qsdpa_last_error());
        return 1;
    }
    for (int trial = 0; trial < 16 && !test_failures; trial++) run_trial(&rng, ctx, ref, trial);
    if (!test_failures) run_large(&rng, ctx, ref);
    qsdpa_context_destroy(ctx);
    qsdpa_context_destroy(ref);
    return test_finish("test_cache");
}
