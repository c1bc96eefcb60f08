/* Every CPU kernel row against the double-precision reference, on the same bytes:
 * formats x D (Dk may differ from Dv) x q dtypes x masks/causal/window/sinks x Lq x GQA,
 * odd Lk, K/V as strided views of a larger cache, strided outputs with guards,
 * partial mode (out + lse), and disable_simd selecting the portable C path. */
#include "cpu/cpu_attention.h"
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <string.h>

typedef struct kv_buf {
    qsdpa_qtensor t;
    void *codes, *scales, *biases;
    float maxabs; /* max |dequantized value| over the visible rows: the unit of SPEC 4 */
} kv_buf;

/* [B, H, L] rows of `dim` values, stored in a cache of `cap` >= L rows per head. outlier (affine, 0: none): one
 * value a group at -outlier (test_outlier_channel), so s (q . c) and b sum(q) are large and cancel where the
 * dequantized values are small (session 34). */
static void make_kv(test_rng *rng, const char *fmt, qsdpa_dtype sdt, int64_t B, int64_t H, int64_t L, int64_t cap,
                    int64_t dim, float global, float outlier, kv_buf *kv) {
    memset(kv, 0, sizeof *kv);
    qsdpa_format f;
    CHECK(qsdpa_format_parse(fmt, &f) == QSDPA_OK, "parse %s: %s", fmt, qsdpa_last_error());
    if (f.mode == QSDPA_MODE_NVFP4) f.global_scale = global;
    int64_t rows = B * H * cap, words = 0, ng = 0;
    float *x = test_alloc((size_t)(rows * dim) * sizeof(float));
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, rows * dim, 1.0);
    if (outlier != 0.0f && f.mode == QSDPA_MODE_AFFINE) test_outlier_channel(x, rows, dim, f.group, -outlier, 0.0, NULL);
    kv->t.format = f;
    kv->t.dim = dim;
    if (f.mode == QSDPA_MODE_PLAIN) {
        size_t es = qsdpa_dtype_size(f.plain_dtype);
        kv->codes = test_alloc((size_t)(rows * dim) * es);
        for (int64_t i = 0; i < rows * dim; i++) qsdpa_store_float(kv->codes, f.plain_dtype, i, x[i]);
        words = dim;
        kv->t.codes = qsdpa_tensor_4d(kv->codes, f.plain_dtype, B, H, L, dim);
    } else {
        qsdpa_format_row_words(&f, dim, &words);
        qsdpa_format_row_scales(&f, dim, &ng);
        if (f.mode != QSDPA_MODE_AFFINE) sdt = QSDPA_DTYPE_U8;
        kv->codes = test_alloc((size_t)(rows * words) * 4);
        kv->scales = test_alloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
        if (f.mode == QSDPA_MODE_AFFINE) kv->biases = test_alloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
        CHECK(qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, rows, dim, kv->codes, kv->scales, kv->biases, sdt) == QSDPA_OK,
              "quantize %s: %s", fmt, qsdpa_last_error());
        kv->t.codes = qsdpa_tensor_4d(kv->codes, QSDPA_DTYPE_U32, B, H, L, words);
        kv->t.scales = qsdpa_tensor_4d(kv->scales, sdt, B, H, L, ng);
        kv->t.biases = qsdpa_tensor_4d(kv->biases, sdt, B, H, L, ng);
        if (!kv->biases) kv->t.biases.data = NULL;
    }
    /* A view of L rows out of a cache of cap rows per head. */
    qsdpa_tensor *ts[3] = {&kv->t.codes, &kv->t.scales, &kv->t.biases};
    for (int i = 0; i < 3; i++) {
        if (!ts[i]->data) continue;
        int64_t w = ts[i]->shape[3];
        ts[i]->stride[0] = H * cap * w;
        ts[i]->stride[1] = cap * w;
    }
    /* The unit: max |dequantized| over the visible rows. */
    float *deq = test_alloc((size_t)(rows * dim) * sizeof(float));
    if (f.mode == QSDPA_MODE_PLAIN) {
        for (int64_t i = 0; i < rows * dim; i++) deq[i] = qsdpa_load_float(kv->codes, f.plain_dtype, i);
    } else {
        CHECK(qsdpa_dequantize(&f, kv->codes, kv->scales, kv->biases, sdt, rows, dim, deq, QSDPA_DTYPE_F32) == QSDPA_OK,
              "dequantize: %s", qsdpa_last_error());
    }
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t d = 0; d < dim; d++) {
                float a = fabsf(deq[(bh * cap + l) * dim + d]);
                if (a > kv->maxabs) kv->maxabs = a;
            }
    free(deq);
    free(x);
}

static void free_kv(kv_buf *kv) {
    free(kv->codes);
    free(kv->scales);
    free(kv->biases);
}

typedef struct test_case {
    int64_t B, Hq, Hkv, Lq, Lk, Dk, Dv;
    const char *kfmt, *vfmt;
    qsdpa_dtype qdt, sdt;
    int mask;        /* 0 none, 1 bool [Lq, Lk], 2 additive f32 [B, 1, Lq, Lk], 3 additive f16 [Lk], 4 bool [B, Hq, Lq, Lk] */
    int causal;
    int64_t window;
    int sinks;
    int partial;     /* 1: qsdpa_attention_partial; 2: partial over a slice with key_offset */
    float global;    /* nvfp4 global scale */
} test_case;

/* 1: caches hold exactly Lk rows, so the last row ends the allocation (ASan sees a read past it);
 * 0: views of a longer cache */
static int exact_cache;

static const char *kernel_names[] = {"cpu.amx.decode",  "cpu.amx.prefill", "cpu.vnni.decode", "cpu.vnni.prefill",
                                     "cpu.avx2.decode", "cpu.avx2.prefill", "cpu.c.decode",    "cpu.c.prefill"};
#define NKERNELS 8
/* the SIMD rows share the AVX2 decoders (cpu.vnni is isa_avx2.c rebuilt with 512-bit kernels, cpu.amx adds tile
 * kernels to it) */
static int simd_row(const char *name) { return strstr(name, "avx2") || strstr(name, "vnni") || strstr(name, "amx"); }
static int amx_calls, amx_int8_calls; /* cpu.amx.decode calls whose K and V both ran on tiles: bf16 ("+amx") or int8
                                      * ("+amx.i8", 1-16 rows where the CPU has AMX-INT8) */
static bool amx_int8; /* that row's int8 kernels in use (qsdpa_cpu_features bit 64, QSDPA_CPU_AMX_INT8) */

/* An affine format the AMX tier's int8 and bf16 tile kernels take (4 or 8 bits, groups of at least 32) */
static bool amx_affine(const char *fmt) {
    return (!strncmp(fmt, "affine:4:", 9) || !strncmp(fmt, "affine:8:", 9)) && strcmp(fmt + 9, "16") != 0;
}
/* A format the AMX tier's tile kernels take at head dim D: those, and MXFP4 and NVFP4 (bf16 tiles only) */
static bool amx_format(const char *fmt, int64_t D) {
    return (amx_affine(fmt) || !strcmp(fmt, "mxfp4") || !strcmp(fmt, "nvfp4")) && D % 32 == 0 && D >= 64;
}
static qsdpa_context *ctx_ref, *ctx_kernel[NKERNELS];
static int cases_run, kernel_runs;

/* 1: V, 2: K gets one E4M3 byte of magnitude 0x7F at key 3 (an mxfp8 code, or an nvfp4
 * group scale): never made by quantize, decoded as NaN by the reference (MLX 0.32.4).
 * The AVX2 mxfp8 code decoder reads it as 480 (a documented deviation, docs/SPEC.md 7):
 * its cases run on the portable kernels only. */
static int poke_nan;
static int poke_q_nan; /* q[0][0][0][1] = NaN: that row's output is NaN, the others exact */
/* >= 0: check the vnni rows' route suffix "+bf16" (bf16 tiles) is there exactly when expected: bf16_expect is 1,
 * the CPU has AVX512_BF16, and the row takes float tiles (prefill, or more than 16 rows a KV head) */
static int bf16_expect = -1;
/* plain f32 V: 1 = its last key's values +-FLT_MAX (finite, past bf16's largest: masked for the early causal rows);
 * 2 = every value times 1e-40 (subnormal) */
static int poke_v;
/* != 0: every scale and bias of an affine V (f32 scales) times this (the AMX tiles flushed the pieces of tiny
 * scales: 0.41 max|V| at 1e-37, session 28's review) */
static float poke_v_scale;
static int poke_q_big; /* q times 1e37: q K overflows f32 before the softmax scale, not after it */
/* affine K's f32 scales and biases times poke_k_huge_k (1e35 where 0) and q times poke_k_huge_q: ordinary scores
 * from K near 1e35 (the AMX int8 tiles once multiplied a group's integer sum by its scale first and overflowed: the
 * helper's review, session 29), or near 1e-36 against q near 1e36 (session 37) */
static int poke_k_huge;
static float poke_k_huge_q, poke_k_huge_k;
static float poke_scale; /* the softmax scale (0: 1 / sqrt(Dk)) */
static int poke_k_e8m0_add; /* added to every E8M0 scale byte of an MXFP8 K (at most 254) */
static float poke_q_scale; /* q times this (0: as drawn) */
static float poke_k_outlier; /* make_kv's outlier for K (0: none) */
/* MXFP4 / NVFP4 scale bytes the AMX row's bf16 tiles refuse, so those blocks take the f32 kernels (amx_fp4.inc):
 * 1 = K's scale byte of key 3, group 1, set to poke_fp4_byte (the tiles taking such a block anyway fail here); 2 =
 * every scale byte of an MXFP4 V lowered by 70 (values times 2^-70, under the tiles' 2^-60 for V: every block on
 * the f32 kernels. The flush that bound avoids needs values near 2^-100 and thousands of keys of tiny weight to
 * show, which this case does not build) */
static int poke_fp4, poke_fp4_byte;
/* > 0: channel 0 of every q row set to +-poke_q_outlier (the integer K path's one rounding step per row was
 * then coarse for every other channel: 5x the f16 bound at 1000, session 27) */
static float poke_q_outlier;

/* affine widths other than 4 and 8: the CPU driver takes float tiles from 5 rows a KV head, not 17 */
static int odd_width(const char *fmt) {
    return strncmp(fmt, "affine:", 7) == 0 && fmt[7] != '4' && fmt[7] != '8';
}

static void poke_e4m3_nan(kv_buf *kv) {
    int64_t words = kv->t.codes.shape[3], ng = kv->t.scales.shape[3];
    if (kv->t.format.mode == QSDPA_MODE_MXFP8) ((unsigned char *)kv->codes)[3 * words * 4 + 5] = 0x7F;
    if (kv->t.format.mode == QSDPA_MODE_NVFP4) ((unsigned char *)kv->scales)[3 * ng + 1] = 0xFF;
}

static void case_name(const test_case *c, char *buf, size_t n) {
    snprintf(buf, n, "B%lld Hq%lld Hkv%lld Lq%lld Lk%lld Dk%lld Dv%lld K %s V %s q %s mask%d causal%d win%lld sinks%d partial%d",
             (long long)c->B, (long long)c->Hq, (long long)c->Hkv, (long long)c->Lq, (long long)c->Lk,
             (long long)c->Dk, (long long)c->Dv, c->kfmt, c->vfmt, qsdpa_dtype_name(c->qdt), c->mask, c->causal,
             (long long)c->window, c->sinks, c->partial);
}

static void run_case(test_rng *rng, const test_case *c) {
    char name[256];
    case_name(c, name, sizeof name);
    int64_t cap = exact_cache ? c->Lk : c->Lk + 5; /* K/V are views of a longer cache */
    kv_buf k, v;
    make_kv(rng, c->kfmt, c->sdt, c->B, c->Hkv, c->Lk, cap, c->Dk, c->global, poke_k_outlier, &k);
    make_kv(rng, c->vfmt, c->sdt, c->B, c->Hkv, c->Lk, cap, c->Dv, c->global, 0.0f, &v);
    if (poke_nan) poke_e4m3_nan(poke_nan == 1 ? &v : &k);
    if (poke_v && !strcmp(c->vfmt, "f32")) {
        float *vals = v.codes;
        v.maxabs = 0.0f;
        for (int64_t bh = 0; bh < c->B * c->Hkv; bh++)
            for (int64_t l = 0; l < c->Lk; l++)
                for (int64_t d = 0; d < c->Dv; d++) {
                    float *x = &vals[(bh * cap + l) * c->Dv + d];
                    if (poke_v == 1 && l == c->Lk - 1) *x = d % 2 ? FLT_MAX : -FLT_MAX;
                    if (poke_v == 2) *x *= 1e-40f;
                    if (fabsf(*x) > v.maxabs) v.maxabs = fabsf(*x);
                }
    }
    if (poke_v_scale != 0.0f && !strncmp(c->vfmt, "affine:", 7) && c->sdt == QSDPA_DTYPE_F32) {
        const int64_t values = c->B * c->Hkv * cap * (c->Dv / v.t.format.group);
        for (int64_t i = 0; i < values; i++) ((float *)v.scales)[i] *= poke_v_scale, ((float *)v.biases)[i] *= poke_v_scale;
        v.maxabs *= poke_v_scale;
    }
    if (poke_fp4 == 1 && (!strcmp(c->kfmt, "mxfp4") || !strcmp(c->kfmt, "nvfp4")))
        ((unsigned char *)k.scales)[3 * k.t.scales.shape[3] + 1] = (unsigned char)poke_fp4_byte;
    if (poke_k_e8m0_add && !strcmp(c->kfmt, "mxfp8")) {
        const int64_t bytes = c->B * c->Hkv * cap * k.t.scales.shape[3];
        for (int64_t i = 0; i < bytes; i++) {
            unsigned char *e = (unsigned char *)k.scales + i;
            *e = (unsigned char)(*e + poke_k_e8m0_add > 254 ? 254 : *e + poke_k_e8m0_add);
        }
    }
    if (poke_fp4 == 2 && !strcmp(c->vfmt, "mxfp4")) {
        const int64_t bytes = c->B * c->Hkv * cap * v.t.scales.shape[3];
        for (int64_t i = 0; i < bytes; i++) {
            unsigned char *e = (unsigned char *)v.scales + i;
            CHECK(*e > 70, "poke_fp4 2: scale byte %u", (unsigned)*e);
            *e = (unsigned char)(*e - 70);
        }
        v.maxabs = ldexpf(v.maxabs, -70);
    }
    if (poke_k_huge && !strncmp(c->kfmt, "affine:", 7) && c->sdt == QSDPA_DTYPE_F32) {
        const int64_t values = c->B * c->Hkv * cap * (c->Dk / k.t.format.group);
        const float f = poke_k_huge_k != 0.0f ? poke_k_huge_k : 1e35f;
        for (int64_t i = 0; i < values; i++) ((float *)k.scales)[i] *= f, ((float *)k.biases)[i] *= f;
    }
    int64_t nq = c->B * c->Hq * c->Lq * c->Dk;
    void *q = test_alloc((size_t)nq * qsdpa_dtype_size(c->qdt));
    test_fill_normal(rng, q, c->qdt, nq, 1.0);
    if (poke_k_huge)
        for (int64_t i = 0; i < nq; i++) qsdpa_store_float(q, c->qdt, i, qsdpa_load_float(q, c->qdt, i) * poke_k_huge_q);
    if (poke_q_nan) qsdpa_store_float(q, c->qdt, 1, NAN);
    if (poke_q_scale != 0.0f)
        for (int64_t i = 0; i < nq; i++) qsdpa_store_float(q, c->qdt, i, qsdpa_load_float(q, c->qdt, i) * poke_q_scale);
    if (poke_q_big)
        for (int64_t i = 0; i < nq; i++) qsdpa_store_float(q, c->qdt, i, qsdpa_load_float(q, c->qdt, i) * 1e37f);
    for (int64_t i = 0; poke_q_outlier > 0 && i < nq; i += c->Dk)
        qsdpa_store_float(q, c->qdt, i, (i / c->Dk) % 2 ? -poke_q_outlier : poke_q_outlier);
    qsdpa_tensor qt = qsdpa_tensor_4d(q, c->qdt, c->B, c->Hq, c->Lq, c->Dk);

    qsdpa_attention_params prm = qsdpa_attention_default_params();
    prm.scale = poke_scale != 0.0f ? poke_scale : 1.0f / sqrtf((float)c->Dk);
    prm.causal = c->causal;
    prm.window = c->window;
    void *mask = NULL;
    qsdpa_tensor mt;
    if (c->mask == 1) {
        mask = test_alloc((size_t)(c->Lq * c->Lk));
        for (int64_t i = 0; i < c->Lq * c->Lk; i++) ((unsigned char *)mask)[i] = test_rng_uniform(rng) >= 0.2;
        int64_t shape[2] = {c->Lq, c->Lk};
        mt = qsdpa_tensor_make(mask, QSDPA_DTYPE_BOOL, 2, shape);
        prm.mask = &mt;
    } else if (c->mask == 2) {
        int64_t n = c->B * c->Lq * c->Lk;
        mask = test_alloc((size_t)n * 4);
        /* key 0 of each row is never -1e9: a row of -1e9 scores is ill-conditioned in f32 (the scores vanish
         * in -1e9's ulp of 64, so f32 kernels, MLX's among them, give the mean of V where the double reference
         * keeps the scores), as test_cache.c and test_reference.c already avoid */
        for (int64_t i = 0; i < n; i++)
            ((float *)mask)[i] = i % c->Lk != 0 && test_rng_uniform(rng) < 0.2 ? -1e9f : (float)test_rng_normal(rng);
        mt = qsdpa_tensor_4d(mask, QSDPA_DTYPE_F32, c->B, 1, c->Lq, c->Lk);
        mt.stride[1] = 0;
        prm.mask = &mt;
    } else if (c->mask == 4) { /* a head's own mask: row tiles of a group's heads must read their own */
        const int64_t n = c->B * c->Hq * c->Lq * c->Lk;
        mask = test_alloc((size_t)n);
        for (int64_t i = 0; i < n; i++) ((unsigned char *)mask)[i] = test_rng_uniform(rng) >= 0.3;
        mt = qsdpa_tensor_4d(mask, QSDPA_DTYPE_BOOL, c->B, c->Hq, c->Lq, c->Lk);
        prm.mask = &mt;
    } else if (c->mask == 3) {
        mask = test_alloc((size_t)c->Lk * 2);
        test_fill_normal(rng, mask, QSDPA_DTYPE_F16, c->Lk, 2.0);
        int64_t shape[1] = {c->Lk};
        mt = qsdpa_tensor_make(mask, QSDPA_DTYPE_F16, 1, shape);
        prm.mask = &mt;
    }
    float sinks[64];
    qsdpa_tensor st;
    if (c->sinks) {
        for (int64_t h = 0; h < c->Hq; h++) sinks[h] = (float)test_rng_normal(rng);
        if (c->sinks == 2) sinks[0] = NAN;                                       /* head 0's rows NaN, as MLX */
        if (c->sinks == 3) for (int64_t h = 0; h < c->Hq; h++) sinks[h] = -1e5f; /* under f16's lowest */
        if (c->sinks == 4) for (int64_t h = 0; h < c->Hq; h++) sinks[h] = -65504.0f + (float)h; /* at it, just over */
        int64_t shape[1] = {c->Hq};
        st = qsdpa_tensor_make(sinks, QSDPA_DTYPE_F32, 1, shape);
        prm.sinks = &st;
    }
    if (c->partial == 2) { /* this call holds keys [7, 7 + Lk) of a context of Lk + 20 */
        prm.key_offset = 7;
        prm.key_total = c->Lk + 20;
    }

    /* Outputs with 3 guard elements after every row (strided rows). */
    qsdpa_dtype odt = c->partial ? QSDPA_DTYPE_F32 : c->qdt;
    size_t es = qsdpa_dtype_size(odt);
    int64_t pitch = c->Dv + 3, rows = c->B * c->Hq * c->Lq;
    size_t obytes = (size_t)(rows * pitch) * es;
    void *ref = test_alloc(obytes), *out = test_alloc(obytes);
    float *ref_lse = test_alloc((size_t)rows * 4), *lse = test_alloc((size_t)rows * 4);
    qsdpa_tensor rt = qsdpa_tensor_4d(ref, odt, c->B, c->Hq, c->Lq, c->Dv), ot;
    for (int d = 0; d < 3; d++) rt.stride[d] = rt.stride[d] / c->Dv * pitch;
    rt.stride[0] = c->Hq * c->Lq * pitch, rt.stride[1] = c->Lq * pitch, rt.stride[2] = pitch;
    ot = rt;
    ot.data = out;
    qsdpa_tensor rlt = qsdpa_tensor_4d(ref_lse, QSDPA_DTYPE_F32, c->B, c->Hq, c->Lq, 1), lt;
    rlt.rank = 3;
    lt = rlt;
    lt.data = lse;

    test_poison(ref, obytes);
    qsdpa_status s = c->partial ? qsdpa_attention_partial(ctx_ref, &qt, &k.t, &v.t, &prm, &rt, &rlt)
                                : qsdpa_attention(ctx_ref, &qt, &k.t, &v.t, &prm, &rt);
    CHECK(s == QSDPA_OK, "%s: reference failed: %s", name, qsdpa_last_error());
    float unit = v.maxabs > 0 ? v.maxabs : 1.0f, tol = (float)test_spec_bound(c->qdt, odt, unit);
    for (int kn = 0; kn < NKERNELS && s == QSDPA_OK; kn++) {
        if (!ctx_kernel[kn]) continue;
        if (c->Lq > 16 && strstr(kernel_names[kn], "decode")) continue;
        if (poke_nan && simd_row(kernel_names[kn]) &&
            (!strcmp(poke_nan == 1 ? c->vfmt : c->kfmt, "mxfp8")))
            continue;
        test_poison(out, obytes);
        test_poison(lse, (size_t)rows * 4);
        qsdpa_status ks = c->partial ? qsdpa_attention_partial(ctx_kernel[kn], &qt, &k.t, &v.t, &prm, &ot, &lt)
                                     : qsdpa_attention(ctx_kernel[kn], &qt, &k.t, &v.t, &prm, &ot);
        CHECK(ks == QSDPA_OK, "%s: %s failed: %s", name, kernel_names[kn], qsdpa_last_error());
        if (ks != QSDPA_OK) continue;
        kernel_runs++;
        if (strstr(kernel_names[kn], "amx")) { /* the tiles serve 1-16 rows a KV head on int8, else 9-16 on bf16 (the route: the plan's) */
            /* where K and V both have tiles, both paths take row tiles: a group's heads at at most 16 / ratio
             * positions, or past 16 heads, even head tiles of at most 16 at one position; else the prefill unpacks
             * to float tiles and a decode's rows are its GQA ratio x Lq */
            const int64_t ratio = c->Hq / c->Hkv, cuts = (ratio + 15) / 16;
            const bool both = amx_format(c->kfmt, c->Dk) && amx_format(c->vfmt, c->Dv);
            const bool prefill = strstr(kernel_names[kn], "prefill") != NULL;
            const int64_t nr = !both       ? ratio * c->Lq
                               : ratio > 16 ? (ratio + cuts - 1) / cuts
                                            : ratio * (c->Lq < 16 / ratio ? c->Lq : 16 / ratio);
            /* 1-8 rows only where every tiled format has int8 kernels; the route says ".i8" where one ran */
            const bool k_int8 = amx_affine(c->kfmt), v_int8 = amx_affine(c->vfmt);
            const bool few_rows = (!amx_format(c->kfmt, c->Dk) || k_int8) && (!amx_format(c->vfmt, c->Dv) || v_int8);
            const bool rows_ok = (nr > 8 || (amx_int8 && few_rows)) &&
                                 nr <= (odd_width(c->kfmt) || odd_width(c->vfmt) ? 4 : 16) && (both || !prefill);
            const bool want_k = rows_ok && amx_format(c->kfmt, c->Dk), want_v = rows_ok && amx_format(c->vfmt, c->Dv);
            const bool int8 = amx_int8 && nr <= 16 && ((want_k && k_int8) || (want_v && v_int8));
            const char *route = qsdpa_context_last_route(ctx_kernel[kn]);
            const char *want = want_k && want_v ? (int8 ? "+amx.i8" : "+amx")
                               : want_k         ? (int8 ? "+amx.i8.k" : "+amx.k")
                               : want_v         ? (int8 ? "+amx.i8.v" : "+amx.v")
                                                : NULL;
            const char *got = strstr(route, "+amx");
            CHECK(want ? got && !strcmp(got, want) : !got, "%s: %s took route '%s', expected %s", name,
                  kernel_names[kn], route, want ? want : "no tiles");
            amx_calls += want_k && want_v && !int8;
            amx_int8_calls += want_k && want_v && int8;
        }
        if (bf16_expect >= 0 && strstr(kernel_names[kn], "vnni")) {
            const bool tiles = strstr(kernel_names[kn], "prefill") ||
                               c->Hq / c->Hkv * c->Lq > (odd_width(c->kfmt) || odd_width(c->vfmt) ? 4 : 16);
            const bool want = bf16_expect && tiles && (qsdpa_cpu_features() & 16u);
            const char *route = qsdpa_context_last_route(ctx_kernel[kn]);
            CHECK((strstr(route, "+bf16") != NULL) == want, "%s: %s took route '%s', bf16 tiles %s", name,
                  kernel_names[kn], route, want ? "expected" : "not expected");
            /* Q K^T in bf16 too where every K value is exact in bf16 */
            const bool exact_k = (!strcmp(c->kfmt, "mxfp4") || !strcmp(c->kfmt, "mxfp8") || !strcmp(c->kfmt, "bf16") ||
                                  (!strcmp(c->kfmt, "nvfp4") && c->global == 0.0f)) && c->Dk % 32 == 0;
            CHECK((strstr(route, "+bf16k") != NULL) == (want && exact_k), "%s: %s took route '%s', bf16 Q K^T %s",
                  name, kernel_names[kn], route, want && exact_k ? "expected" : "not expected");
        }
        double worst = 0, worst_lse = 0;
        int guards_ok = 1;
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t d = 0; d < c->Dv; d++) {
                float a = qsdpa_load_float(out, odt, r * pitch + d), b = qsdpa_load_float(ref, odt, r * pitch + d);
                /* NaN where the reference has NaN (and the same infinity) match; else any
                 * non-finite value on either side fails */
                double e = isnan(a) && isnan(b) ? 0.0 : isfinite(a) && isfinite(b) ? fabs((double)a - b) : a == b ? 0.0 : INFINITY;
                if (e > worst) worst = e;
            }
            for (int64_t d = c->Dv; d < pitch; d++) {
                const unsigned char *g = (const unsigned char *)out + (size_t)(r * pitch + d) * es;
                for (size_t bi = 0; bi < es; bi++) guards_ok &= g[bi] == 0xFF;
            }
            if (c->partial) {
                double e = (isinf(lse[r]) && isinf(ref_lse[r]) && lse[r] == ref_lse[r]) ? 0.0 : fabs((double)lse[r] - ref_lse[r]);
                if (!(e <= worst_lse)) worst_lse = isnan(e) ? INFINITY : e;
            }
        }
        CHECK(worst <= tol, "%s: %s max error %.3g > %.3g (unit %.3g)", name, kernel_names[kn], worst, tol, unit);
        CHECK(guards_ok, "%s: %s wrote outside the output rows", name, kernel_names[kn]);
        if (c->partial)
            CHECK(worst_lse <= 1e-4, "%s: %s lse error %.3g", name, kernel_names[kn], worst_lse);
    }
    cases_run++;
    free(ref), free(out), free(ref_lse), free(lse), free(q), free(mask);
    free_kv(&k);
    free_kv(&v);
}

static const char *formats[] = {"affine:4:64", "affine:4:32", "affine:4:128", "affine:8:64", "affine:8:32",
                                "affine:2:32", "affine:3:64", "affine:5:32", "affine:6:64", "mxfp4",
                                "mxfp8",       "nvfp4",       "f32",          "f16",         "bf16"};
#define NFORMATS ((int)(sizeof formats / sizeof formats[0]))

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = "cpu.reference";
    CHECK(qsdpa_context_create(&o, &ctx_ref) == QSDPA_OK, "reference context: %s", qsdpa_last_error());
    int avx2 = (qsdpa_cpu_features() & 7u) == 7u, vnni = (qsdpa_cpu_features() & 15u) == 15u;
    int amx = 0; /* the row's own availability (CPU, OS grant, QSDPA_CPU_AMX) */
    for (int i = 0; i < qsdpa_kernel_count(); i++) {
        qsdpa_kernel_info info;
        if (qsdpa_kernel_get(i, &info) == QSDPA_OK && !strcmp(info.name, "cpu.amx.decode")) amx = info.usable;
    }
    if (!vnni) printf("cpu.vnni.*: not run (this CPU lacks AVX512 F/BW/VL/VNNI)\n");
    if (!amx) printf("cpu.amx.*: not run (this CPU, or its OS, lacks AMX-TILE/AMX-BF16, or QSDPA_CPU_AMX=0)\n");
    amx_int8 = amx && qsdpa_cpu_amx_int8_available();
    if (amx && !amx_int8) printf("cpu.amx.* int8 tiles: not run (no AMX-INT8, or QSDPA_CPU_AMX_INT8=0)\n");
    for (int kn = 0; kn < NKERNELS; kn++) {
        if (!avx2 && strstr(kernel_names[kn], "avx2")) continue;
        if (!vnni && strstr(kernel_names[kn], "vnni")) continue;
        if (!amx && strstr(kernel_names[kn], "amx")) continue;
        o = qsdpa_context_default_options();
        o.kernel = kernel_names[kn];
        o.num_threads = 3; /* more threads than this machine's cores: exercises the pool */
        CHECK(qsdpa_context_create(&o, &ctx_kernel[kn]) == QSDPA_OK, "context %s: %s", kernel_names[kn],
              qsdpa_last_error());
    }

    /* 1. Every format, K = V, decode and prefill shapes, GQA 4, the common D. */
    static const int64_t dims[] = {64, 96, 128, 192, 256, 512};
    for (int fi = 0; fi < NFORMATS; fi++)
        for (int di = 0; di < 6; di++) {
            int64_t D = dims[di];
            if (D % 64 && strstr(formats[fi], ":64")) continue;
            if (D % 128 && strstr(formats[fi], ":128")) continue;
            int64_t lq = di % 3 == 0 ? 1 : di % 3 == 1 ? 4 : 19;
            test_case c = {1, 8, 2, lq, 77 + 64 * di, D, D, formats[fi], formats[fi], QSDPA_DTYPE_F32,
                           QSDPA_DTYPE_F16, 0, di == 2, 0, 0, 0, 0.0f};
            run_case(&rng, &c);
            /* f16/bf16 q on the decode shapes: the integer K path of the 4-bit, 8-bit and
             * FP4 kernels (q as int16), and the float kernels of the other formats */
            if (lq != 19)
                for (int qi = 0; qi < 2; qi++) {
                    c.qdt = qi ? QSDPA_DTYPE_BF16 : QSDPA_DTYPE_F16;
                    c.sdt = c.qdt;
                    run_case(&rng, &c);
                }
        }
    /* 1b. The shortest rows, D 32 (8 bytes of 2-bit codes), in caches of exactly Lk rows: a load of
     * eight codes must stay inside the row (ASan builds catch a read past the last one). */
    static const char *short_rows[] = {"affine:2:32", "affine:5:32", "affine:4:32", "affine:8:32", "mxfp4", "mxfp8"};
    for (int fi = 0; fi < 6; fi++)
        for (int li = 0; li < 2; li++) {
            test_case c = {1, 8, 2, li ? 4 : 1, 45, 32, 32, short_rows[fi], short_rows[fi], QSDPA_DTYPE_F32,
                           QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0.0f};
            exact_cache = 1;
            run_case(&rng, &c);
            exact_cache = 0;
        }
    /* 1c. The 4-bit decoders' tails (pair lanes for affine 4-bit and mxfp4, perm16 for nvfp4): 1..16 query
     * rows per KV head (the 4- and 8-row passes and their remainders), 1..9 keys (the 4/2/1-key passes),
     * head dims that are odd multiples of 32 and the largest, in caches of exactly Lk rows */
    static const struct { const char *f; int64_t d[3]; } nibble[] = {
        {"affine:4:32", {160, 224, 1024}}, {"mxfp4", {96, 1024, 0}}, {"nvfp4", {224, 0, 0}}, {"affine:4:64", {192, 0, 0}}};
    static const int64_t nib_rows[] = {1, 2, 3, 5, 8, 12, 16};
    for (int fi = 0; fi < 4; fi++)
        for (int di = 0; di < 3 && nibble[fi].d[di]; di++)
            for (int ri = 0; ri < 7; ri++) {
                const int64_t rows = nib_rows[ri], hq = rows > 8 ? 4 : rows, lq = rows / hq;
                test_case c = {1, hq, 1, lq, 1 + (ri + 3 * di + fi) % 9, nibble[fi].d[di], nibble[fi].d[di],
                               nibble[fi].f, nibble[fi].f, ri % 3 ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_F16,
                               QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0.0f};
                exact_cache = 1;
                run_case(&rng, &c);
                exact_cache = 0;
            }
    /* 1d. More rows a KV head than the tiles take, K and V both tile formats: the cpu.amx rows run row tiles of
     * 16 / ratio positions (or head tiles past 16 heads), each over every key (a last tile shorter; masks, causal,
     * window, sinks and the partial outputs across the tiles' boundaries; ratio 1 at 16 rows and ratio 2 at 18
     * on either side) */
    test_case tiled[] = {
        {1, 8, 2, 16, 300, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 1, 0, 0, 0, 0, 0},
        {1, 8, 2, 16, 300, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 1, 0, 0, 0, 0},
        {1, 8, 1, 5, 257, 64, 64, "affine:8:64", "affine:4:32", QSDPA_DTYPE_F16, QSDPA_DTYPE_F32, 2, 0, 0, 1, 0, 0},
        {2, 6, 2, 7, 150, 192, 192, "affine:4:64", "affine:8:32", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 0, 1, 20, 0, 1, 0},
        {1, 16, 1, 3, 100, 256, 128, "affine:8:128", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 0, 1, 0, 0, 2, 0},
        {1, 16, 1, 3, 100, 256, 128, "affine:8:128", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 3, 0, 0, 0, 1, 0},
        {1, 4, 2, 9, 77, 96, 96, "affine:4:32", "affine:4:32", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 1, 10, 1, 0, 0},
        {1, 4, 4, 16, 60, 128, 128, "affine:8:64", "affine:8:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 1, 0, 0, 0, 1, 0},
        /* groups of more than 16 heads (MQA): head tiles of 12 (24), 16 (32), 12, 12, 10 (34) and 9, 8 (17) */
        {1, 24, 1, 1, 400, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 1, 0, 0},
        {1, 24, 1, 2, 333, 128, 128, "affine:4:64", "affine:8:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 4, 0, 0, 1, 1, 0},
        {2, 34, 2, 19, 150, 64, 64, "affine:8:64", "affine:8:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 4, 0, 0, 0, 0, 0},
        {1, 17, 1, 3, 600, 128, 128, "affine:4:32", "affine:4:32", QSDPA_DTYPE_BF16, QSDPA_DTYPE_F16, 4, 0, 0, 1, 0, 0},
        /* query tiles and key splits together (1500 keys: several chunks a task), causal partial over a slice */
        {1, 8, 2, 16, 1500, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 1, 0, 1, 2, 0},
        {1, 8, 2, 7, 1500, 128, 128, "affine:8:64", "affine:4:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F32, 4, 0, 0, 0, 1, 0},
        {1, 4, 1, 40, 1300, 64, 64, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 0, 1, 300, 0, 0, 0},
        {2, 64, 2, 3, 90, 64, 64, "affine:8:32", "affine:4:64", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 1, 0, 0, 0, 1, 0},
        {1, 34, 1, 20, 70, 96, 96, "affine:4:32", "affine:4:32", QSDPA_DTYPE_F16, QSDPA_DTYPE_F32, 0, 1, 9, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof tiled / sizeof tiled[0]; i++) run_case(&rng, &tiled[i]);
    /* 2. Features across formats: masks, causal, window, sinks, q dtypes, partial, GQA ratios. */
    static const qsdpa_dtype qdts[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
    for (int it = 0; it < 60; it++) {
        test_case c;
        memset(&c, 0, sizeof c);
        c.kfmt = formats[test_rng_int(&rng, 0, NFORMATS - 1)];
        c.vfmt = it % 3 == 0 ? formats[test_rng_int(&rng, 0, NFORMATS - 1)] : c.kfmt;
        c.B = test_rng_int(&rng, 1, 2);
        static const int64_t hs[][2] = {{2, 2}, {4, 1}, {8, 2}, {8, 1}, {6, 3}, {16, 2}};
        int hi = (int)test_rng_int(&rng, 0, 5);
        c.Hq = hs[hi][0], c.Hkv = hs[hi][1];
        static const int64_t lqs[] = {1, 2, 3, 4, 9, 16, 17, 70};
        c.Lq = lqs[test_rng_int(&rng, 0, 7)];
        c.Lk = test_rng_int(&rng, 1, 700);
        static const int64_t dd[][2] = {{128, 128}, {64, 64}, {192, 128}, {128, 256}, {256, 256}, {576, 512}};
        int di = (int)test_rng_int(&rng, 0, 5);
        c.Dk = dd[di][0], c.Dv = dd[di][1];
        if (strstr(c.kfmt, ":128") || strstr(c.vfmt, ":128")) c.Dk = c.Dv = 256;
        c.qdt = qdts[it % 3];
        c.sdt = qdts[(it / 3) % 3];
        int feature = it % 6;
        c.mask = feature == 1 ? (int)test_rng_int(&rng, 1, 3) : 0;
        c.causal = feature == 2 || feature == 3;
        c.window = feature == 3 ? test_rng_int(&rng, 1, 40) : 0;
        c.sinks = feature == 4 || (feature == 1 && it % 4 == 1);
        c.partial = feature == 5 ? (int)test_rng_int(&rng, 1, 2) : 0;
        if (c.partial == 2) c.causal = 1;
        c.global = it % 4 == 0 ? 3.5f : 0.0f;
        run_case(&rng, &c);
    }
    /* 3. Edge cases: Lk = 1; Lq > Lk causal (early rows see nothing); every key masked
     * by a window in partial mode; MQA (Hkv = 1) with GQA 16; plain odd widths. */
    test_case edge[] = {
        {1, 4, 1, 1, 1, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
        {1, 4, 2, 12, 5, 64, 64, "mxfp4", "nvfp4", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 0, 1, 0, 0, 0, 0},
        {1, 4, 2, 12, 5, 64, 64, "affine:8:64", "affine:4:32", QSDPA_DTYPE_F16, QSDPA_DTYPE_F32, 0, 1, 0, 1, 0, 0},
        {1, 4, 2, 6, 300, 64, 64, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 1, 3, 0, 2, 0},
        {1, 16, 1, 16, 1000, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
        {2, 2, 1, 5, 200, 40, 24, "f16", "f32", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 1, 0, 0, 0, 0, 0},
        {1, 4, 4, 3, 130, 1024, 1024, "affine:8:128", "mxfp8", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 0, 1, 0, 0, 1, 0},
        {1, 2, 1, 4, 300, 128, 128, "f16", "f16", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32, 1, 0, 0, 1, 1, 0},
    };
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) run_case(&rng, &edge[i]);
    /* 4. E4M3 magnitude 0x7F in a V code, a K code, an nvfp4 scale: NaN where the reference has it */
    for (poke_nan = 1; poke_nan <= 2; poke_nan++) {
        test_case nan_cases[] = {
            {1, 4, 1, 2, 40, 64, 64, "mxfp8", "mxfp8", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 4, 1, 2, 40, 64, 64, "nvfp4", "nvfp4", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 4, 1, 20, 40, 128, 128, "mxfp8", "nvfp4", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
        };
        for (size_t i = 0; i < sizeof nan_cases / sizeof nan_cases[0]; i++) run_case(&rng, &nan_cases[i]);
    }
    poke_nan = 0;
    /* 5. a NaN in q (f16, bf16: the integer K path quantizes q; a NaN row takes the float kernels) */
    poke_q_nan = 1;
    {
        test_case nan_q[] = {
            {1, 8, 2, 1, 300, 128, 128, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 8, 2, 3, 300, 64, 64, "mxfp4", "affine:8:32", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 0, 0, 0, 0, 0, 0},
        };
        for (size_t i = 0; i < sizeof nan_q / sizeof nan_q[0]; i++) run_case(&rng, &nan_q[i]);
    }
    poke_q_nan = 0;
    /* 5b. an outlier channel in q (f16, bf16) on the decode shapes of the integer K path's formats: such rows
     * take the float kernels (prepare_q16's flatness test) */
    for (int big = 0; big < 3; big++) {
        poke_q_outlier = (float[]){30.0f, 300.0f, 1000.0f}[big];
        test_case outlier[] = {
            {1, 8, 2, 1, 512, 128, 128, "affine:8:64", "affine:8:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 8, 2, 2, 300, 128, 128, "affine:4:64", "mxfp4", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 0, 0, 0, 0},
            {1, 4, 1, 1, 257, 64, 64, "mxfp4", "nvfp4", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 0, 0, 0, 0, 0, 0},
            {1, 8, 2, 1, 200, 256, 256, "nvfp4", "affine:4:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 4, 1, 1, 200, 32, 32, "affine:8:32", "affine:8:32", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
        };
        for (size_t i = 0; i < sizeof outlier / sizeof outlier[0]; i++) run_case(&rng, &outlier[i]);
    }
    poke_q_outlier = 0;
    /* 5c. sinks that are NaN (that head's rows NaN: a column like any other), and sinks below, at and just
     * over f16 q's lowest finite value with rows that keep no key (the keys' mean weighed against the sink),
     * whole calls and partial ones */
    {
        test_case odd_sinks[] = {
            {1, 4, 2, 3, 100, 64, 64, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, 0, 0, 0, 2, 0, 0},
            {1, 4, 1, 1, 300, 128, 128, "affine:8:64", "mxfp4", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 2, 0, 0},
            {1, 8, 2, 40, 90, 64, 64, "nvfp4", "f16", QSDPA_DTYPE_BF16, QSDPA_DTYPE_BF16, 1, 0, 0, 2, 0, 0},
            {1, 4, 2, 50, 20, 64, 64, "affine:4:64", "affine:8:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 0, 3, 0, 0},
            {1, 4, 1, 8, 60, 128, 128, "mxfp8", "affine:4:32", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 16, 3, 0, 0},
            {1, 4, 2, 50, 20, 64, 64, "affine:4:64", "affine:8:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 0, 4, 0, 0},
            {1, 4, 2, 50, 20, 64, 64, "affine:8:64", "f16", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 0, 4, 1, 0},
            {1, 4, 2, 50, 20, 64, 64, "mxfp4", "affine:4:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 1, 0, 3, 1, 0},
        };
        for (size_t i = 0; i < sizeof odd_sinks / sizeof odd_sinks[0]; i++) run_case(&rng, &odd_sinks[i]);
    }

    /* 6. bf16 tiles (the AVX-512 tier on CPUs with AVX512_BF16: the P V of bf16 q and out over float tiles,
     * Dv % 16 == 0): MLA latent shapes (Dk 576 / Dv 512 over one KV head) at 16 and 48 rows, a causal prefill
     * with sinks, GQA 8 decode over 32 rows (tiles) and over 8 (codes), odd key counts (a last key pair of one),
     * row counts off the 8-row passes, a mask, Dv 80 (a last 16-value step), Dk 80; Q K^T in bf16 too where K's
     * values are exact in bf16 (mxfp4/mxfp8/bf16 K, nvfp4 K without a global scale, Dk % 32 == 0: route "+bf16k"),
     * f32 otherwise; and the shapes that keep f32 tiles: Dv 72, f16 q, f32 out (partial) */
    {
        if (!(qsdpa_cpu_features() & 16u)) printf("bf16 tiles: only their fallbacks run (this CPU lacks AVX512_BF16)\n");
        const qsdpa_dtype B16 = QSDPA_DTYPE_BF16;
        test_case bf16_cases[] = {
            {1, 16, 1, 1, 301, 576, 512, "affine:4:64", "affine:4:64", B16, B16, 0, 0, 0, 0, 0, 0},
            {1, 16, 1, 3, 257, 576, 512, "mxfp8", "affine:8:64", B16, B16, 0, 0, 0, 0, 0, 0},
            {1, 4, 2, 70, 333, 128, 128, "affine:4:32", "nvfp4", B16, B16, 0, 1, 0, 1, 0, 0},
            {2, 8, 1, 4, 129, 64, 64, "mxfp4", "f16", B16, B16, 2, 0, 0, 0, 0, 0},
            {1, 8, 1, 1, 200, 64, 64, "affine:8:64", "affine:8:64", B16, B16, 0, 0, 0, 0, 0, 0},
            {1, 6, 3, 11, 97, 96, 208, "bf16", "nvfp4", B16, B16, 0, 1, 9, 0, 0, 0},
            {1, 5, 1, 5, 77, 1024, 1024, "affine:2:32", "affine:5:32", B16, B16, 0, 0, 0, 0, 0, 0},
            {1, 4, 1, 9, 150, 128, 80, "affine:4:32", "f16", B16, B16, 0, 1, 0, 0, 0, 0}, /* Dv: 2 vectors and 1 */
            {1, 4, 1, 9, 150, 80, 128, "f16", "affine:4:32", B16, B16, 0, 1, 0, 0, 0, 0},   /* any Dk */
            {1, 8, 1, 3, 140, 128, 64, "nvfp4", "mxfp4", B16, B16, 0, 0, 0, 0, 0, 0},      /* bf16 Q K^T */
            {1, 8, 1, 3, 140, 128, 64, "nvfp4", "mxfp4", B16, B16, 0, 0, 0, 0, 0, 3.5f},   /* G: f32 Q K^T */
            {1, 8, 1, 3, 140, 80, 64, "bf16", "mxfp4", B16, B16, 0, 0, 0, 0, 0, 0},        /* Dk 80: f32 Q K^T */
        };
        test_case f32_tiles[] = {
            {1, 4, 1, 9, 150, 128, 72, "affine:4:32", "f16", B16, B16, 0, 1, 0, 0, 0, 0},
            {1, 16, 1, 3, 120, 576, 512, "affine:4:64", "affine:4:64", QSDPA_DTYPE_F16, QSDPA_DTYPE_F16, 0, 0, 0, 0, 0, 0},
            {1, 16, 1, 3, 120, 576, 512, "affine:4:64", "affine:4:64", B16, B16, 0, 0, 0, 0, 1, 0},
        };
        bf16_expect = 1;
        for (size_t i = 0; i < sizeof bf16_cases / sizeof bf16_cases[0]; i++) run_case(&rng, &bf16_cases[i]);
        /* odd widths take tiles from 5 rows: 8 rows on the decode row */
        test_case odd = {1, 8, 1, 1, 200, 64, 64, "affine:3:64", "affine:8:64", B16, B16, 0, 0, 0, 0, 0, 0};
        run_case(&rng, &odd);
        /* V past bf16's range (clamped: a masked key's weight 0 must not make NaN) and subnormal V (blocks under
         * 2^-100 take f32: bf16 flushes subnormals) */
        test_case edges[] = {
            {1, 4, 1, 8, 8, 16, 16, "f32", "f32", B16, B16, 0, 1, 0, 0, 0, 0},
            {1, 8, 2, 12, 40, 64, 32, "f16", "f32", B16, B16, 0, 1, 0, 1, 0, 0},
        };
        for (poke_v = 1; poke_v <= 2; poke_v++)
            for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) run_case(&rng, &edges[i]);
        poke_v = 0;
        /* q near bf16's range: the unscaled bf16 Q K^T would overflow where q scaled first does not (the block
         * takes the f32 score) */
        test_case big_q = {1, 8, 1, 4, 64, 128, 128, "bf16", "f16", B16, B16, 0, 0, 0, 0, 0, 0};
        poke_q_big = 1;
        run_case(&rng, &big_q);
        poke_q_big = 0;
        /* bf16 q in its subnormal range (x 2^-128) against MXFP8 K near 2^96 at scale 2^30 (scores of a few units):
         * vdpbf16ps flushes such q, so bf16 Q K^T would score every key 0; the guard must count the scale, which
         * multiplies the sums after the product (session 37, a helper's review). The route runs only with
         * AVX512_BF16: there, without the guard's scale term, this case failed (run 244: 2.25 against 0.064) */
        test_case flushed_q = {1, 32, 1, 1, 100, 128, 128, "mxfp8", "affine:4:64", B16, B16, 0, 0, 0, 0, 0, 0};
        poke_q_scale = 0x1p-128f, poke_k_e8m0_add = 96, poke_scale = 0x1p30f;
        run_case(&rng, &flushed_q);
        poke_q_scale = 0.0f, poke_k_e8m0_add = 0, poke_scale = 0.0f;
        bf16_expect = 0;
        for (size_t i = 0; i < sizeof f32_tiles / sizeof f32_tiles[0]; i++) run_case(&rng, &f32_tiles[i]);
        bf16_expect = -1;
    }

    /* 5d. affine V with tiny and large scales over 16, 4 and 8 rows a KV head (the AMX row's bf16 tiles take V
     * scales from 2^-60 to 2^100, its int8 tiles weights times scales from 2^-100 to FLT_MAX; others the
     * AVX-512 kernel; 1e35: the AVX2 build's 4-bit V lanes times 4096 overflowed, session 30) */
    {
        static const float v_scales[] = {1e-37f, 1e-20f, 1e30f, 1e35f};
        static const int64_t lqs[] = {4, 1, 2};
        for (size_t i = 0; i < sizeof v_scales / sizeof v_scales[0]; i++)
            for (size_t l = 0; l < sizeof lqs / sizeof lqs[0]; l++) {
                poke_v_scale = v_scales[i];
                test_case tiny = {1, 8, 2, lqs[l], 100, 128, 128, "affine:4:32", "affine:4:32", QSDPA_DTYPE_F32,
                                  QSDPA_DTYPE_F32, 0, 0, 0, 0, 0, 0};
                run_case(&rng, &tiny);
                tiny.vfmt = tiny.kfmt = "affine:8:64";
                run_case(&rng, &tiny);
            }
        poke_v_scale = 0.0f;
        /* 5e. MXFP4 / NVFP4 on the bf16 tiles (Lq 4: 16 rows a KV head) and beside them (Lq 1: 4 rows), with scales
         * they refuse: K's E8M0 bytes 0 (2^-127), 20 (2^-107), 240 (2^113) and 255 (inf), NVFP4's E4M3 0 and NaN;
         * an MXFP4 V at 2^-70 of its scales */
        static const int k_bytes[][2] = {{0, 'm'}, {20, 'm'}, {240, 'm'}, {255, 'm'}, {0, 'n'}, {0x7F, 'n'}, {0xFF, 'n'}};
        for (size_t i = 0; i < sizeof k_bytes / sizeof k_bytes[0]; i++)
            for (size_t l = 0; l < 2; l++) {
                poke_fp4 = 1, poke_fp4_byte = k_bytes[i][0];
                const char *fmt = k_bytes[i][1] == 'm' ? "mxfp4" : "nvfp4";
                test_case fp4 = {1, 8, 2, l ? 1 : 4, 150, 128, 128, fmt, fmt, QSDPA_DTYPE_F32, QSDPA_DTYPE_F32,
                                 0, 0, 0, 0, 0, 0};
                run_case(&rng, &fp4);
            }
        poke_fp4 = 2;
        for (size_t l = 0; l < 2; l++) {
            test_case tiny = {1, 8, 2, l ? 1 : 4, 150, 128, 128, "mxfp4", "mxfp4", QSDPA_DTYPE_F32, QSDPA_DTYPE_F32,
                              0, 0, 0, 0, 0, 0};
            run_case(&rng, &tiny);
            tiny.kfmt = "nvfp4", tiny.qdt = QSDPA_DTYPE_BF16;
            run_case(&rng, &tiny);
        }
        poke_fp4 = 0;
        /* K near 1e35 against q near 1e-35 and 2e-34, at 16, 4 and 8 rows, f32 and bf16 q (cpu.avx2.decode's 4-bit K
         * took the scale before q and gave inf, session 30). Scores of 1 and 20 rms: session 30-35's q of 1e-22 made
         * them ~1e13, a one-hot softmax that a near tie flipped (bf16 q on the integer K path, CI of session 36: 0.85
         * max|V|), where SPEC 4 promises nothing. Under ~3.9e-34 the integer K path's step 1 / (max|q| / 32767)
         * overflowed (session 36, prepare_q16); 2e-34 keeps bf16 q on that path */
        poke_k_huge = 1;
        static const char *huge_k[] = {"affine:8:64", "affine:4:32", "affine:4:128"};
        static const qsdpa_dtype huge_q[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_BF16};
        for (int qi = 0; qi < 2; qi++)
            for (size_t l = 0; l < sizeof lqs / sizeof lqs[0]; l++)
                for (size_t f = 0; f < sizeof huge_k / sizeof huge_k[0]; f++)
                    for (size_t d = 0; d < sizeof huge_q / sizeof huge_q[0]; d++) {
                        poke_k_huge_q = qi ? 2e-34f : 1e-35f;
                        test_case huge = {1, 8, 2, lqs[l], 100, 128, 128, huge_k[f], "affine:4:64", huge_q[d],
                                          QSDPA_DTYPE_F32, 0, 0, 0, 0, 0, 0};
                        run_case(&rng, &huge);
                    }
        /* The mirror: q near 1e36 (f32 and bf16) against K scales near 1e-36, then f32 q near 1e35 at softmax scale
         * 1000 against K near 1e-39 (scores of ~1 rms both). The decode kernels score over codes (q . c up to 255
         * q Dk) and the integer K path's int32 sum times its row step overflowed to inf there, and q times the
         * scale before any product (session 37, a helper's review); the rows are now scaled by a power of two
         * (prepare_rows) */
        static const struct { float k, q, scale; } mirror[] = {{1e-36f, 1e36f, 0.0f}, {1e-39f, 1e35f, 1000.0f}};
        static const char *mirror_k[] = {"affine:8:64", "affine:4:64"};
        for (size_t mi = 0; mi < sizeof mirror / sizeof mirror[0]; mi++)
            for (size_t l = 0; l < 2; l++)
                for (size_t f = 0; f < sizeof mirror_k / sizeof mirror_k[0]; f++)
                    for (size_t d = 0; d < sizeof huge_q / sizeof huge_q[0]; d++) {
                        poke_k_huge_k = mirror[mi].k, poke_k_huge_q = mirror[mi].q, poke_scale = mirror[mi].scale;
                        test_case mirrored = {1, 8, 2, lqs[l], 100, 128, 128, mirror_k[f], "affine:4:64", huge_q[d],
                                              QSDPA_DTYPE_F32, 0, 0, 0, 0, 0, 0};
                        run_case(&rng, &mirrored);
                    }
        poke_k_huge = 0, poke_k_huge_k = 0.0f, poke_scale = 0.0f;
    }
    /* 5f. K with an outlier channel (poke_k_outlier, at 1000, 300, 100 and 30 times the other values' rms, q scaled
     * by 1/2, 1, 3 and 8): every affine width, 1, 2 and 4 positions a head at GQA 4, f32 and f16 scales, f32 q.
     * Scores as s (q . c) + b sum(q) erred by 1.3-5x SPEC 4's f32 bound here on cpu.avx2.decode (session 34: the
     * codes are shifted by z = round(-b / s) now, affine_k_params; with the shift off every seed of 40 failed). The
     * settings keep the scores where SPEC 4's f32 bound holds: session 34's (1000, 1) and (30, 16) reach |s| 300-550
     * and in 150 seeds the first failed 3 on the dequantize-first paths too (cpu.c 1.23x), the second came within 4%
     * of the bound there; these stay under 0.7x on every path (300 seeds, session 35). f16 and bf16 q at 4 positions
     * (16 rows: the integer K path, unshifted, whose q rounded to int16 meets the outlier's size): up to 0.56x
     * of their bounds over 60 seeds (0.79x at session 34's (1000, 1), f16 q) */
    {
        static const char *outlier_k[] = {"affine:8:64", "affine:4:64", "affine:8:32", "affine:4:32", "affine:6:64",
                                          "affine:3:64", "affine:5:32", "affine:2:32", "affine:8:128"};
        static const float outlier[][2] = {{1000.0f, 0.5f}, {300.0f, 1.0f}, {100.0f, 3.0f}, {30.0f, 8.0f}};
        static const struct { int64_t lq; qsdpa_dtype qdt, sdt; } runs[] = {
            {1, QSDPA_DTYPE_F32, QSDPA_DTYPE_F32}, {2, QSDPA_DTYPE_F32, QSDPA_DTYPE_F16}, {4, QSDPA_DTYPE_F32, QSDPA_DTYPE_F32},
            {4, QSDPA_DTYPE_F16, QSDPA_DTYPE_F32}, {4, QSDPA_DTYPE_BF16, QSDPA_DTYPE_F16}};
        for (size_t o2 = 0; o2 < sizeof outlier / sizeof outlier[0]; o2++)
            for (size_t f = 0; f < sizeof outlier_k / sizeof outlier_k[0]; f++)
                for (size_t ru = 0; ru < sizeof runs / sizeof runs[0]; ru++) {
                    poke_k_outlier = outlier[o2][0], poke_q_scale = outlier[o2][1];
                    test_case oc = {1, 8, 2, runs[ru].lq, 200, strstr(outlier_k[f], ":128") ? 256 : 128, 128, outlier_k[f],
                                    "affine:8:64", runs[ru].qdt, runs[ru].sdt, 0, 0, 0, 0, 0, 0};
                    run_case(&rng, &oc);
                }
        poke_k_outlier = 0.0f;
        poke_q_scale = 0.0f;
    }

    /* 4. disable_simd picks the portable kernels; auto picks AVX2 where the CPU has it. */
    {
        kv_buf k, v;
        make_kv(&rng, "affine:4:64", QSDPA_DTYPE_F16, 1, 2, 100, 100, 128, 0.0f, 0.0f, &k);
        make_kv(&rng, "affine:4:64", QSDPA_DTYPE_F16, 1, 2, 100, 100, 128, 0.0f, 0.0f, &v);
        float q[8 * 128], out[8 * 128];
        test_fill_normal(&rng, q, QSDPA_DTYPE_F32, 8 * 128, 1.0);
        qsdpa_tensor qt = qsdpa_tensor_4d(q, QSDPA_DTYPE_F32, 1, 8, 1, 128);
        qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, 1, 8, 1, 128);
        qsdpa_attention_params prm = qsdpa_attention_default_params();
        for (int simd_off = 0; simd_off < 2; simd_off++) {
            qsdpa_context *cx;
            o = qsdpa_context_default_options();
            o.disable_simd = simd_off;
            CHECK(qsdpa_context_create(&o, &cx) == QSDPA_OK, "context: %s", qsdpa_last_error());
            const char *sel = NULL;
            CHECK(qsdpa_attention_select(cx, &qt, &k.t, &v.t, &prm, &ot, &sel) == QSDPA_OK, "select: %s",
                  qsdpa_last_error());
            const char *want = simd_off || !avx2 ? "cpu.c.decode"
                               : amx              ? "cpu.amx.decode"
                               : vnni             ? "cpu.vnni.decode"
                                                  : "cpu.avx2.decode";
            CHECK(sel && strcmp(sel, want) == 0, "disable_simd=%d selected %s, want %s", simd_off, sel ? sel : "?", want);
            qsdpa_context_destroy(cx);
        }
        free_kv(&k);
        free_kv(&v);
    }

    for (int kn = 0; kn < NKERNELS; kn++) qsdpa_context_destroy(ctx_kernel[kn]);
    qsdpa_context_destroy(ctx_ref);
    printf("%d cases, %d kernel runs, %d on AMX bf16 tiles, %d on int8 tiles\n", cases_run, kernel_runs, amx_calls,
           amx_int8_calls);
    CHECK(!ctx_kernel[0] || amx_int8 || amx_calls > 0, "cpu.amx.decode: no call ran on bf16 tiles");
    CHECK(!ctx_kernel[0] || !amx_int8 || amx_int8_calls > 0, "cpu.amx.decode: no call ran on int8 tiles");
    return test_finish("test_cpu_kernels");
}
