/* `qsdpa demo`: quantize a random KV cache, run attention with the automatic
 * kernel, and report its error (vs the reference and vs unquantized
 * attention) and its speed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define CMD "demo"

static void help(void) {
    printf("usage: qsdpa demo [options]\n\n"
           "Builds a random KV cache (affine 4-bit unless --format says otherwise), quantizes it with\n"
           "qsdpa_quantize, runs qsdpa_attention (automatic kernel choice), and prints the kernel, the\n"
           "max error against the reference kernel and against unquantized attention (in units of\n"
           "max|V|), the median time, and the cache bytes read per call in GB/s. Exit 1 if the error\n"
           "exceeds SPEC section 4.\n\n"
           "  --batch N          batch B (1)\n"
           "  --heads-q N        query heads Hq (32)\n"
           "  --heads-kv N       KV heads Hkv (8); Hq must be a multiple\n"
           "  --dim D            head dim of K and V (128); or --dim-k / --dim-v\n"
           "  --context N        keys in the cache, Lk (4096)\n"
           "  --lq N             query rows, Lq (1 = decode)\n"
           "  --format F         K and V format (affine:4:64); or --k-format / --v-format\n"
           "                     (affine:BITS:GROUP, mxfp4, mxfp8, nvfp4, f16, f32, bf16)\n"
           "  --dtype T          q/out dtype and affine scale dtype: f32 (default), f16, bf16\n"
           "  --causal           causal mask (bottom-right aligned)\n"
           "  --window W         sliding window of W keys (needs --causal)\n"
           "  --threads N        CPU threads (0 = all cores)\n"
           "  --backend B        cpu (default) or cuda\n"
           "  --kernel NAME      force a kernel-table row (see qsdpa info) instead of the automatic choice\n"
           "  --runs N           timed runs, the median is printed (default: about 0.5 s worth)\n"
           "  --seed S           random seed (default: from the clock, printed)\n");
}

typedef struct {
    cli_case c;
    int threads, runs;
    qsdpa_backend backend;
    const char *kernel; /* forced kernel-table row, NULL = automatic */
    uint64_t seed;
} demo_options;

static int parse(int argc, char **argv, demo_options *o, bool *help_shown) {
    memset(o, 0, sizeof *o);
    cli_case *c = &o->c;
    c->batch = 1, c->heads_q = 32, c->heads_kv = 8, c->dim_k = c->dim_v = 128, c->len_k = 4096, c->len_q = 1;
    qsdpa_format_parse("affine:4:64", &c->k_format);
    c->v_format = c->k_format;
    c->q_dtype = QSDPA_DTYPE_F32;
    o->seed = cli_time_seed();
    int rc = 0;
    int64_t dim = 0;
    const char *dim_k_flag = "--dim-k", *dim_v_flag = "--dim-v"; /* the flags that set them, for messages */
    qsdpa_format both = {0}; /* --format: K's and V's where --k-format / --v-format do not name them */
    bool have_both = false, have_k = false, have_v = false;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i], *v = NULL;
        if (cli_is_help(a)) {
            help();
            *help_shown = true;
            return 0;
        } else if (cli_opt(argc, argv, &i, "--batch", &v)) rc = cli_parse_i64(CMD, "--batch", v, 1, 4096, &c->batch);
        else if (cli_opt(argc, argv, &i, "--heads-q", &v)) rc = cli_parse_i64(CMD, "--heads-q", v, 1, 4096, &c->heads_q);
        else if (cli_opt(argc, argv, &i, "--heads-kv", &v)) rc = cli_parse_i64(CMD, "--heads-kv", v, 1, 4096, &c->heads_kv);
        else if (cli_opt(argc, argv, &i, "--dim", &v)) {
            rc = cli_parse_i64(CMD, "--dim", v, 1, 1024, &dim);
            c->dim_k = c->dim_v = dim;
            dim_k_flag = dim_v_flag = "--dim";
        } else if (cli_opt(argc, argv, &i, "--dim-k", &v)) {
            rc = cli_parse_i64(CMD, "--dim-k", v, 1, 1024, &c->dim_k);
            dim_k_flag = "--dim-k";
        } else if (cli_opt(argc, argv, &i, "--dim-v", &v)) {
            rc = cli_parse_i64(CMD, "--dim-v", v, 1, 1024, &c->dim_v);
            dim_v_flag = "--dim-v";
        }
        else if (cli_opt(argc, argv, &i, "--context", &v)) rc = cli_parse_i64(CMD, "--context", v, 1, 1 << 24, &c->len_k);
        else if (cli_opt(argc, argv, &i, "--lq", &v)) rc = cli_parse_i64(CMD, "--lq", v, 1, 1 << 20, &c->len_q);
        else if (cli_opt(argc, argv, &i, "--format", &v)) {
            rc = cli_parse_format(CMD, "--format", v, &both);
            have_both = true;
        } else if (cli_opt(argc, argv, &i, "--k-format", &v)) {
            rc = cli_parse_format(CMD, "--k-format", v, &c->k_format);
            have_k = true;
        } else if (cli_opt(argc, argv, &i, "--v-format", &v)) {
            rc = cli_parse_format(CMD, "--v-format", v, &c->v_format);
            have_v = true;
        }
        else if (cli_opt(argc, argv, &i, "--dtype", &v)) rc = cli_parse_qdtype(CMD, "--dtype", v, &c->q_dtype);
        else if (strcmp(a, "--causal") == 0) c->causal = true;
        else if (cli_opt(argc, argv, &i, "--window", &v)) rc = cli_parse_i64(CMD, "--window", v, 1, INT64_MAX, &c->window);
        else if (cli_opt(argc, argv, &i, "--threads", &v)) rc = cli_parse_int(CMD, "--threads", v, 0, 1024, &o->threads);
        else if (cli_opt(argc, argv, &i, "--runs", &v)) rc = cli_parse_int(CMD, "--runs", v, 1, 100000, &o->runs);
        else if (cli_opt(argc, argv, &i, "--backend", &v)) rc = cli_parse_backend(CMD, "--backend", v, &o->backend);
        else if (cli_opt(argc, argv, &i, "--seed", &v)) rc = cli_parse_u64(CMD, "--seed", v, &o->seed);
        else if (cli_opt(argc, argv, &i, "--kernel", &v)) rc = cli_parse_kernel(CMD, "--kernel", v, &o->kernel);
        else rc = cli_unknown_arg(CMD, a);
    }
    if (rc) return rc;
    /* --k-format / --v-format win over --format whatever their order */
    if (have_both && !have_k) c->k_format = both;
    if (have_both && !have_v) c->v_format = both;
    if (c->heads_q % c->heads_kv)
        return cli_usage_error(CMD, "--heads-q = %lld is not a multiple of --heads-kv = %lld", (long long)c->heads_q,
                               (long long)c->heads_kv);
    if (c->window && !c->causal) return cli_usage_error(CMD, "--window = %lld needs --causal", (long long)c->window);
    int64_t words;
    char f[32];
    if (qsdpa_format_row_words(&c->k_format, c->dim_k, &words) != QSDPA_OK) {
        qsdpa_format_string(&c->k_format, f, sizeof f);
        return cli_usage_error(CMD, "%s = %lld does not fit K format %s (%s)", dim_k_flag, (long long)c->dim_k, f,
                               qsdpa_last_error());
    }
    if (qsdpa_format_row_words(&c->v_format, c->dim_v, &words) != QSDPA_OK) {
        qsdpa_format_string(&c->v_format, f, sizeof f);
        return cli_usage_error(CMD, "%s = %lld does not fit V format %s (%s)", dim_v_flag, (long long)c->dim_v, f,
                               qsdpa_last_error());
    }
    c->scale = (float)(1.0 / sqrt((double)c->dim_k));
    c->scale_dtype = c->q_dtype;
    return 0;
}

/* Reference kernel ("cpu.reference") over k/v of the host problem into out. */
static int run_reference(const cli_problem *p, const qsdpa_qtensor *k, const qsdpa_qtensor *v, void *out) {
    qsdpa_context_options opt = qsdpa_context_default_options();
    opt.kernel = "cpu.reference";
    qsdpa_context *ctx = NULL;
    qsdpa_status st = qsdpa_context_create(&opt, &ctx);
    if (st != QSDPA_OK) return cli_library_error(CMD, "qsdpa_context_create(cpu.reference)", st);
    qsdpa_tensor tout = cli_problem_out(p, out);
    st = qsdpa_attention(ctx, &p->tq, k, v, &p->params, &tout);
    qsdpa_context_destroy(ctx);
    return st == QSDPA_OK ? 0 : cli_library_error(CMD, "qsdpa_attention(cpu.reference)", st);
}

/* Run the automatic (or forced) kernel: once for the output, then timed; *ms = median; `route` (route_size
 * bytes) gets qsdpa_context_last_route. */
static int run_fast(const demo_options *o, const cli_problem *host, void *out, const char **kernel, char *route,
                    size_t route_size, double *ms) {
    qsdpa_context_options opt = qsdpa_context_default_options();
    opt.backend = o->backend;
    opt.num_threads = o->threads;
    opt.kernel = o->kernel;
    qsdpa_context *ctx = NULL;
    qsdpa_status st = qsdpa_context_create(&opt, &ctx);
    if (st != QSDPA_OK) return cli_library_error(CMD, "qsdpa_context_create", st);
    cli_problem dev;
    const cli_problem *p = host;
    void *dout = out;
    bool cuda = o->backend == QSDPA_BACKEND_CUDA;
    int rc = 0;
    if (cuda) {
        if ((rc = cli_problem_upload(host, &dev))) goto done;
        p = &dev;
        if (!(dout = cli_device_upload(out, host->out_bytes))) { rc = CLI_EXIT_FAIL; goto done_dev; }
    }
    qsdpa_tensor tout = cli_problem_out(p, dout);
    if ((st = qsdpa_attention_select(ctx, &p->tq, &p->tk, &p->tv, &p->params, &tout, kernel)) != QSDPA_OK) {
        rc = cli_library_error(CMD, "qsdpa_attention_select", st);
        goto done_out;
    }
    double times[256];
    int runs = o->runs, n = 0;
    double t_end = cli_now() + 0.5;
    for (int r = -1; r < (runs ? runs : 256); r++) { /* r = -1: the checked output, untimed warm-up */
        double t0 = cli_now();
        st = qsdpa_attention(ctx, &p->tq, &p->tk, &p->tv, &p->params, &tout);
        if (st != QSDPA_OK) {
            rc = cli_library_error(CMD, "qsdpa_attention", st);
            goto done_out;
        }
        if (cuda && (rc = cli_device_sync())) goto done_out;
        if (r < 0) continue;
        if (n < 256) times[n++] = cli_now() - t0;
        if (!runs && n >= 5 && cli_now() > t_end) break;
    }
    *ms = 1e3 * cli_median(times, n);
    snprintf(route, route_size, "%s", qsdpa_context_last_route(ctx));
    if (cuda) rc = cli_device_download(out, dout, host->out_bytes);
done_out:
    if (cuda) cli_device_free(dout);
done_dev:
    if (cuda) cli_problem_device_free(&dev);
done:
    qsdpa_context_destroy(ctx);
    return rc;
}

int cli_demo(int argc, char **argv) {
    demo_options o;
    bool help_shown = false;
    int rc = parse(argc, argv, &o, &help_shown);
    if (rc || help_shown) return rc;
    const cli_case *c = &o.c;
    char kf[32], vf[32];
    qsdpa_format_string(&c->k_format, kf, sizeof kf);
    qsdpa_format_string(&c->v_format, vf, sizeof vf);
    printf("qsdpa demo: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld Dk=%lld Dv=%lld, K %s, V %s, q %s%s, seed %llu\n",
           (long long)c->batch, (long long)c->heads_q, (long long)c->heads_kv, (long long)c->len_q,
           (long long)c->len_k, (long long)c->dim_k, (long long)c->dim_v, kf, vf, qsdpa_dtype_name(c->q_dtype),
           c->causal ? (c->window ? ", causal+window" : ", causal") : "", (unsigned long long)o.seed);
    cli_problem p;
    void *out = NULL, *ref = NULL, *plain = NULL;
    if ((rc = cli_problem_build(c, o.seed, &p))) goto done;
    out = cli_alloc(p.out_bytes), ref = cli_alloc(p.out_bytes), plain = cli_alloc(p.out_bytes);
    if (!out || !ref || !plain) { rc = CLI_EXIT_FAIL; goto done; }
    memset(out, 0xFF, p.out_bytes); /* NaN poison: an element never written shows as an error */
    const char *kernel = "?";
    double ms = 0.0;
    char route[64] = "?";
    if ((rc = run_fast(&o, &p, out, &kernel, route, sizeof route, &ms))) goto done;
    if ((rc = run_reference(&p, &p.tk, &p.tv, ref))) goto done;
    qsdpa_qtensor pk, pv;
    cli_problem_plain(&p, &pk, &pv);
    if ((rc = run_reference(&p, &pk, &pv, plain))) goto done;

    int64_t n = (int64_t)(p.out_bytes / qsdpa_dtype_size(c->q_dtype));
    double unit = p.max_abs_v > 0 ? p.max_abs_v : 1.0, tol = cli_tolerance(c->q_dtype);
    double e_ref = cli_max_abs_diff(out, ref, c->q_dtype, n), e_plain = cli_max_abs_diff(out, plain, c->q_dtype, n);
    size_t bytes = cli_problem_cache_bytes(&p);
    printf("kernel: %s (%s; ran %s)\n", kernel, o.backend == QSDPA_BACKEND_CUDA ? "cuda" : "cpu", route);
    printf("time: %.4f ms (median)   KV cache %.2f MB read -> %.1f GB/s\n", ms, bytes / 1e6, bytes / (ms * 1e6));
    printf("max error vs reference (cpu.reference): %.3g = %.3g x max|V| (tolerance %.3g x max|V|) %s\n", e_ref,
           e_ref / unit, tol, e_ref <= tol * unit ? "OK" : "FAIL");
    printf("max error vs unquantized attention:     %.3g = %.3g x max|V| (quantization error, max|V| = %.3g)\n",
           e_plain, e_plain / unit, unit);
    rc = e_ref <= tol * unit ? 0 : CLI_EXIT_FAIL;
done:
    free(out);
    free(ref);
    free(plain);
    cli_problem_free(&p);
    return rc;
}
