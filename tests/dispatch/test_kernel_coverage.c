/* Coverage of the kernel table: every usable row runs every concrete case its
 * wildcards cover (formats x head dims x q dtypes x Lq) and matches the
 * reference kernel on the same bytes; and every row but the reference is
 * *reachable*: automatic dispatch (with and without SIMD) picks it for at least
 * one case, so no kernel exists that nothing can select. Dispatch works on
 * logical head dims: the case list holds D values whose packed width differs
 * from D (e.g. 4-bit D=128 is 16 words). */
#include <math.h>
#include <string.h>

#include "test_util.h"

enum { HEADS_Q = 4, HEADS_KV = 2, MAX_DIM = 1024, MAX_LQ = 37 };

static const char *const formats[] = {
    "affine:2:32", "affine:2:64", "affine:2:128", "affine:3:32", "affine:3:64", "affine:3:128",
    "affine:4:32", "affine:4:64", "affine:4:128", "affine:5:32", "affine:5:64", "affine:5:128",
    "affine:6:32", "affine:6:64", "affine:6:128", "affine:8:32", "affine:8:64", "affine:8:128",
    "mxfp4",       "mxfp8",       "nvfp4",        "f32",         "f16",         "bf16",
};
#define FORMAT_COUNT ((int)(sizeof formats / sizeof formats[0]))
static const int dims[] = {64, 96, 128, 192, 256, 512, 576, 1024};
#define DIM_COUNT ((int)(sizeof dims / sizeof dims[0]))
static const qsdpa_dtype q_dtypes[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};

/* One quantized K or V of shape [1, HEADS_KV, len, dim] built from fresh data. */
typedef struct built_qtensor {
    qsdpa_qtensor t;
    float max_abs; /* max |dequantized value|: the unit of SPEC §4 tolerances */
} built_qtensor;

static bool build_qtensor(test_rng *rng, const qsdpa_format *f, int64_t len, int64_t dim, built_qtensor *out) {
    int64_t words, groups;
    if (qsdpa_format_row_words(f, dim, &words) != QSDPA_OK) return false; /* D not allowed for this format */
    qsdpa_format_row_scales(f, dim, &groups);
    int64_t rows = HEADS_KV * len;
    qsdpa_dtype x_dtype = f->mode == QSDPA_MODE_PLAIN ? f->plain_dtype : QSDPA_DTYPE_F32;
    qsdpa_dtype scale_dtype = f->mode == QSDPA_MODE_AFFINE ? QSDPA_DTYPE_F16 : QSDPA_DTYPE_U8;
    float *x = test_alloc(sizeof(float) * (size_t)(rows * dim));
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, rows * dim, 1.0);
    memset(out, 0, sizeof *out);
    out->t.format = *f;
    out->t.dim = dim;
    if (f->mode == QSDPA_MODE_PLAIN) {
        size_t elem = qsdpa_dtype_size(x_dtype);
        void *codes = test_alloc(elem * (size_t)(rows * dim));
        for (int64_t i = 0; i < rows * dim; i++) qsdpa_store_float(codes, x_dtype, i, x[i]);
        out->t.codes = qsdpa_tensor_4d(codes, x_dtype, 1, HEADS_KV, len, dim);
    } else {
        uint32_t *codes = test_alloc(sizeof(uint32_t) * (size_t)(rows * words));
        size_t sbytes = qsdpa_dtype_size(scale_dtype) * (size_t)(rows * groups);
        void *scales = test_alloc(sbytes), *biases = qsdpa_format_has_biases(f) ? test_alloc(sbytes) : NULL;
        qsdpa_status st = qsdpa_quantize(f, x, QSDPA_DTYPE_F32, rows, dim, codes, scales, biases, scale_dtype);
        CHECK(st == QSDPA_OK, "quantize: %s", qsdpa_last_error());
        out->t.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, 1, HEADS_KV, len, words);
        out->t.scales = qsdpa_tensor_4d(scales, scale_dtype, 1, HEADS_KV, len, groups);
        out->t.biases = qsdpa_tensor_4d(biases, scale_dtype, 1, HEADS_KV, len, groups);
    }
    /* max |V| from the dequantized rows, through the library's public dequantize. */
    float *deq = test_alloc(sizeof(float) * (size_t)(rows * dim));
    if (f->mode == QSDPA_MODE_PLAIN) {
        for (int64_t i = 0; i < rows * dim; i++) deq[i] = qsdpa_load_float(out->t.codes.data, x_dtype, i);
    } else {
        qsdpa_dequantize(f, out->t.codes.data, out->t.scales.data, out->t.biases.data, scale_dtype, rows, dim, deq,
                         QSDPA_DTYPE_F32);
    }
    for (int64_t i = 0; i < rows * dim; i++) out->max_abs = fmaxf(out->max_abs, fabsf(deq[i]));
    free(deq);
    free(x);
    return true;
}

static void free_qtensor(built_qtensor *b) {
    free(b->t.codes.data);
    free(b->t.scales.data);
    free(b->t.biases.data);
}

static bool field_ok(int want, int have) { return want == QSDPA_ANY || want == have; }

static bool row_takes_format(int mode, int bits, int group, const qsdpa_format *f) {
    return field_ok(mode, f->mode) && field_ok(bits, f->bits) && field_ok(group, f->group);
}

/* Runs the case on `kernel` (NULL = automatic) and returns the chosen name through *chosen. */
static qsdpa_status run_case(const char *kernel, int disable_simd, const qsdpa_tensor *q, const qsdpa_qtensor *k,
                             const qsdpa_qtensor *v, const qsdpa_attention_params *params, qsdpa_tensor *out,
                             const char **chosen) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = kernel;
    o.disable_simd = disable_simd;
    qsdpa_context *ctx;
    qsdpa_status st = qsdpa_context_create(&o, &ctx);
    if (st != QSDPA_OK) return st;
    if (chosen) st = qsdpa_attention_select(ctx, q, k, v, params, out, chosen);
    if (st == QSDPA_OK) st = qsdpa_attention(ctx, q, k, v, params, out);
    /* the entry that ran is the one selection named (a CPU entry's only paths inside it: its bf16 tiles, "+bf16"
     * for P V, "+bf16k" for Q K^T as well; the AMX row's tiles, "+amx" for K and V, "+amx.k" / "+amx.v" for one,
     * "+amx.i8..." the same on int8 tiles) */
    if (st == QSDPA_OK && chosen) {
        const char *route = qsdpa_context_last_route(ctx);
        const size_t n = strlen(*chosen);
        static const char *const suffixes[] = {"", "+bf16", "+bf16k", "+amx", "+amx.k", "+amx.v", "+amx.i8", "+amx.i8.k", "+amx.i8.v"};
        bool known = false;
        for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
            known = known || (strncmp(route, *chosen, n) == 0 && strcmp(route + n, suffixes[i]) == 0);
        CHECK(known, "ran '%s', selection named '%s'", route, *chosen);
    }
    qsdpa_context_destroy(ctx);
    return st;
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    int rows = qsdpa_kernel_count();
    int *reached = calloc((size_t)rows, sizeof(int)), *cases = calloc((size_t)rows, sizeof(int));
    size_t out_capacity = sizeof(float) * HEADS_Q * MAX_LQ * MAX_DIM;
    void *out = test_alloc(out_capacity), *expected = test_alloc(out_capacity);
    void *q = test_alloc(out_capacity);

    for (int fi = 0; fi < FORMAT_COUNT; fi++) {
        qsdpa_format f;
        CHECK(qsdpa_format_parse(formats[fi], &f) == QSDPA_OK, "parse %s: %s", formats[fi], qsdpa_last_error());
        for (int di = 0; di < DIM_COUNT; di++) {
            int64_t dim = dims[di], len = test_rng_int(&rng, 1, 70);
            built_qtensor k, v;
            if (!build_qtensor(&rng, &f, len, dim, &k)) continue;
            /* Every other D, V gets a different random format (K and V formats may differ). */
            qsdpa_format vf = f;
            if (di % 2) qsdpa_format_parse(formats[test_rng_int(&rng, 0, FORMAT_COUNT - 1)], &vf);
            if (!build_qtensor(&rng, &vf, len, dim, &v)) {
                vf = f;
                build_qtensor(&rng, &vf, len, dim, &v);
            }
            for (int qi = 0; qi < 3; qi++) {
                for (int lq_pick = 0; lq_pick < 3; lq_pick++) { /* decode, short (<= 16), long */
                    int64_t lq = lq_pick == 0 ? 1 : lq_pick == 1 ? test_rng_int(&rng, 2, 16) : test_rng_int(&rng, 17, MAX_LQ);
                    qsdpa_dtype dt = q_dtypes[qi];
                    test_fill_normal(&rng, q, dt, HEADS_Q * lq * dim, 1.0);
                    qsdpa_tensor qt = qsdpa_tensor_4d(q, dt, 1, HEADS_Q, lq, dim);
                    qsdpa_tensor ot = qsdpa_tensor_4d(out, dt, 1, HEADS_Q, lq, dim);
                    qsdpa_tensor et = qsdpa_tensor_4d(expected, dt, 1, HEADS_Q, lq, dim);
                    qsdpa_attention_params params = qsdpa_attention_default_params();
                    params.scale = 1.0f / sqrtf((float)dim);
                    params.causal = lq_pick && (fi & 1);
                    size_t out_bytes = qsdpa_dtype_size(dt) * (size_t)(HEADS_Q * lq * dim);
                    test_poison(expected, out_bytes);
                    qsdpa_status st = run_case("cpu.reference", 0, &qt, &k.t, &v.t, &params, &et, NULL);
                    CHECK(st == QSDPA_OK, "reference %s D=%lld: %s", formats[fi], (long long)dim, qsdpa_last_error());

                    /* Reachability: which row does automatic dispatch pick, with and without SIMD? */
                    for (int simd_off = 0; simd_off < 2; simd_off++) {
                        const char *name = NULL;
                        test_poison(out, out_bytes);
                        st = run_case(NULL, simd_off, &qt, &k.t, &v.t, &params, &ot, &name);
                        CHECK(st == QSDPA_OK, "auto dispatch %s D=%lld %s: %s", formats[fi], (long long)dim,
                              qsdpa_dtype_name(dt), qsdpa_last_error());
                        for (int r = 0; st == QSDPA_OK && r < rows; r++) {
                            qsdpa_kernel_info info;
                            qsdpa_kernel_get(r, &info);
                            if (strcmp(info.name, name) == 0) reached[r]++;
                        }
                    }
                    /* Correctness: every usable CPU row that serves the case. */
                    for (int r = 0; r < rows; r++) {
                        qsdpa_kernel_info info;
                        qsdpa_kernel_get(r, &info);
                        if (!info.usable || info.backend != QSDPA_BACKEND_CPU) continue;
                        if (!field_ok(info.q_dtype, dt) || !field_ok(info.dk, (int)dim) || !field_ok(info.dv, (int)dim) ||
                            dim > info.max_dim || (info.max_lq != QSDPA_ANY && lq > info.max_lq) ||
                            !row_takes_format(info.k_mode, info.k_bits, info.k_group, &f) ||
                            !row_takes_format(info.v_mode, info.v_bits, info.v_group, &vf))
                            continue;
                        test_poison(out, out_bytes);
                        st = run_case(info.name, 0, &qt, &k.t, &v.t, &params, &ot, NULL);
                        CHECK(st == QSDPA_OK, "%s on K %s D=%lld %s Lq=%lld: %s", info.name, formats[fi],
                              (long long)dim, qsdpa_dtype_name(dt), (long long)lq, qsdpa_last_error());
                        if (st != QSDPA_OK) continue;
                        cases[r]++;
                        float worst = 0;
                        for (int64_t i = 0; i < HEADS_Q * lq * dim; i++) {
                            float a = qsdpa_load_float(out, dt, i), b = qsdpa_load_float(expected, dt, i);
                            float d = isnan(a) ? INFINITY : fabsf(a - b);
                            worst = fmaxf(worst, d);
                        }
                        float tol = (float)test_spec_tolerance(dt) * v.max_abs;
                        CHECK(worst <= tol, "%s on %s D=%lld %s Lq=%lld causal=%d: max error %g > %g", info.name,
                              formats[fi], (long long)dim, qsdpa_dtype_name(dt), (long long)lq, params.causal,
                              worst, tol);
                    }
                }
            }
            free_qtensor(&k);
            free_qtensor(&v);
        }
    }

    for (int a = 0; a < rows; a++) /* names are how users and tests force a kernel: unique */
        for (int b = a + 1; b < rows; b++) {
            qsdpa_kernel_info ia, ib;
            qsdpa_kernel_get(a, &ia);
            qsdpa_kernel_get(b, &ib);
            CHECK(strcmp(ia.name, ib.name) != 0, "kernel name %s appears twice in the table", ia.name);
        }
    printf("%-28s %-6s %-10s %8s %8s\n", "kernel", "isa", "path", "cases", "auto");
    for (int r = 0; r < rows; r++) {
        qsdpa_kernel_info info;
        qsdpa_kernel_get(r, &info);
        printf("%-28s %-6s %-10s %8d %8d%s\n", info.name, info.isa, info.path, cases[r], reached[r],
               info.usable ? "" : "  (not usable here)");
        if (!info.usable || info.backend != QSDPA_BACKEND_CPU) continue;
        CHECK(cases[r] > 0, "kernel %s serves none of the cases", info.name);
        /* The reference serves only when forced (or when nothing else does). A row can also
         * be shadowed on this CPU by an earlier usable row of the same path and a wider ISA
         * that serves as many cases and is chosen (cpu.vnni.* over cpu.avx2.* where the
         * AVX-512 tier exists; a prefill row also serves decode shapes that the decode row
         * takes first); the forced runs above still checked it. */
        int shadowed = 0;
        for (int e = 0; e < r; e++) {
            qsdpa_kernel_info ie;
            qsdpa_kernel_get(e, &ie);
            /* only a SIMD row, only behind another ISA: a C row is always reachable (disable_simd) */
            if (strcmp(info.isa, "c") != 0 && strcmp(ie.isa, info.isa) != 0 && ie.usable && ie.backend == info.backend &&
                strcmp(ie.path, info.path) == 0 && cases[e] >= cases[r] && reached[e] > 0)
                shadowed = 1;
        }
        if (strcmp(info.path, "reference") != 0 && !shadowed)
            CHECK(reached[r] > 0, "kernel %s is never chosen by automatic dispatch", info.name);
        if (shadowed && reached[r] == 0) printf("  (%s: shadowed on this CPU by an earlier row of its path)\n", info.name);
    }
    free(reached);
    free(cases);
    free(out);
    free(expected);
    free(q);
    return test_finish("dispatch.kernel_coverage");
}
