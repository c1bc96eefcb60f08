/* `qsdpa verify`: every kernel-table row that serves a random case is forced
 * on it and compared with the reference kernel at SPEC §4 tolerances.
 * Cases sweep formats x q dtypes (every pair), and at random: head dims,
 * Lk, Lq, GQA ratio, masks, causal/window, sinks, strided K/V views. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define CMD "verify"
#define MAX_KERNELS 128
#define GUARD_BYTES 64 /* poisoned bytes after out: a write past the end shows */

static void help(void) {
    printf("usage: qsdpa verify [--quick] [--cases N] [--seed S] [--verbose]\n\n"
           "Randomized check of every usable kernel-table row against the double-precision\n"
           "reference (cpu.reference): formats (every affine bits x group, mxfp4, mxfp8, nvfp4\n"
           "with and without a global scale (+G), plain f32/f16/bf16, mixed K/V formats) x q dtypes\n"
           "f32/f16/bf16, with random head dims (64/96/128/192/256, Dk 192/Dv 128), Lk, Lq\n"
           "(1/4/16/37), GQA 1/4/8, masks (none, bool, additive, broadcast), causal, window, sinks,\n"
           "K/V as views of a larger cache. Pass: max|out - ref| <= tol x max|V| with\n"
           "tol 2e-5 (f32), 2e-3 (f16), 1.6e-2 (bf16). CUDA rows run when a device exists.\n"
           "Prints one line per K format x V format x q dtype x kernel; exit 1 on any failure.\n\n"
           "  --quick       one small case per format x dtype (a few seconds)\n"
           "  --cases N     random cases per format x dtype (default 5)\n"
           "  --seed S      random seed (default: from the clock, printed)\n"
           "  --verbose     print every case\n");
}

typedef struct { const char *k, *v; } format_pair;

static const format_pair format_pairs[] = {
    {"affine:2:32", "affine:2:32"},   {"affine:2:64", "affine:2:64"},   {"affine:2:128", "affine:2:128"},
    {"affine:3:32", "affine:3:32"},   {"affine:3:64", "affine:3:64"},   {"affine:3:128", "affine:3:128"},
    {"affine:4:32", "affine:4:32"},   {"affine:4:64", "affine:4:64"},   {"affine:4:128", "affine:4:128"},
    {"affine:5:32", "affine:5:32"},   {"affine:5:64", "affine:5:64"},   {"affine:5:128", "affine:5:128"},
    {"affine:6:32", "affine:6:32"},   {"affine:6:64", "affine:6:64"},   {"affine:6:128", "affine:6:128"},
    {"affine:8:32", "affine:8:32"},   {"affine:8:64", "affine:8:64"},   {"affine:8:128", "affine:8:128"},
    {"mxfp4", "mxfp4"},               {"mxfp8", "mxfp8"},               {"nvfp4", "nvfp4"},
    {"f32", "f32"},                   {"f16", "f16"},                   {"bf16", "bf16"},
    {"affine:8:64", "affine:4:64"},   {"mxfp8", "mxfp4"},               {"affine:4:32", "nvfp4"},
    {"f16", "affine:4:64"},           {"nvfp4+G", "nvfp4+G"},
};
/* "+G": nvfp4 with a per-tensor global scale (SPEC 2). 0.45 is about the largest
 * |value| of 0.1*N(0,1) data, the amax a caller would pass. */
#define GLOBAL_SCALE 0.45f

static qsdpa_status parse_label(const char *label, qsdpa_format *f) {
    char text[32];
    size_t n = strcspn(label, "+");
    snprintf(text, sizeof text, "%.*s", (int)n, label);
    qsdpa_status st = qsdpa_format_parse(text, f);
    if (st == QSDPA_OK && strcmp(label + n, "+G") == 0) f->global_scale = GLOBAL_SCALE;
    return st;
}

#define PAIR_COUNT ((int)(sizeof format_pairs / sizeof format_pairs[0]))
static const qsdpa_dtype q_dtypes[3] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};

/* Results of one (format pair, q dtype, kernel) cell of the table. */
typedef struct { int count, failures; double worst; } cell;

/* Semantics the sweep covers, counted per comparison, so the output shows that
 * masks, sinks, causal, window, GQA ratios and query lengths were all checked. */
enum {
    F_MASK_NONE, F_MASK_BOOL, F_MASK_ADDITIVE, F_MASK_BROADCAST, F_CAUSAL, F_WINDOW, F_SINKS,
    F_GQA1, F_GQA4, F_GQA8, F_LQ1, F_LQ_SHORT, F_LQ_LONG, F_DK_NE_DV, F_VIEW, F_COUNT
};
static const char *const feature_names[F_COUNT] = {
    "no mask", "bool mask", "additive mask", "broadcast mask (stride 0)", "causal", "sliding window", "sinks",
    "GQA 1 (MHA)", "GQA 4", "GQA 8", "Lq = 1 (decode)", "Lq 2..16", "Lq > 16 (prefill)", "Dk != Dv (192/128)",
    "K/V view of a larger cache"};

typedef struct {
    int cases;
    bool quick, verbose;
    uint64_t seed;
    int kernel_count;
    qsdpa_kernel_info info[MAX_KERNELS];
    qsdpa_context *ctx[MAX_KERNELS]; /* forced contexts; NULL = row not runnable here */
    int reference;                   /* index of cpu.reference */
    cell *cells;                     /* [PAIR_COUNT][3][kernel_count] */
    int comparisons, failures;
    int feature_count[F_COUNT], feature_failures[F_COUNT];
} verifier;

static void count_features(verifier *vf, const cli_case *c, bool view, bool failed) {
    bool on[F_COUNT] = {false};
    on[F_MASK_NONE + (int)c->mask] = true;
    on[F_CAUSAL] = c->causal;
    on[F_WINDOW] = c->window > 0;
    on[F_SINKS] = c->sinks;
    int64_t ratio = c->heads_q / c->heads_kv;
    on[F_GQA1] = ratio == 1, on[F_GQA4] = ratio == 4, on[F_GQA8] = ratio == 8;
    on[F_LQ1] = c->len_q == 1, on[F_LQ_SHORT] = c->len_q > 1 && c->len_q <= 16, on[F_LQ_LONG] = c->len_q > 16;
    on[F_DK_NE_DV] = c->dim_k != c->dim_v;
    on[F_VIEW] = view;
    for (int f = 0; f < F_COUNT; f++) {
        vf->feature_count[f] += on[f];
        vf->feature_failures[f] += on[f] && failed;
    }
}

static int group_of(const qsdpa_format *f) { return f->group > 0 ? f->group : 1; }

/* A random case for formats k/v and q dtype, its work bounded by `budget`
 * multiply-adds (B*Hq*Lq*Lk*(Dk+Dv)) so the double reference stays fast. */
static cli_case random_case(uint64_t *rng, const qsdpa_format *kf, const qsdpa_format *vf, qsdpa_dtype qd,
                            double budget) {
    static const int64_t dims[] = {64, 96, 128, 192, 256}, lqs[] = {1, 4, 16, 37}, ratios[] = {1, 4, 8};
    cli_case c;
    memset(&c, 0, sizeof c);
    c.k_format = *kf, c.v_format = *vf, c.q_dtype = qd;
    do {
        c.dim_k = c.dim_v = dims[cli_rng_next(rng) % 5];
        if (cli_rng_uniform(rng) < 0.2) c.dim_k = 192, c.dim_v = 128;
    } while (c.dim_k % group_of(kf) || c.dim_v % group_of(vf));
    c.heads_kv = 1 + (int64_t)(cli_rng_next(rng) % 2);
    c.heads_q = c.heads_kv * ratios[cli_rng_next(rng) % 3];
    c.batch = 1 + (int64_t)(cli_rng_next(rng) % 2);
    c.len_q = lqs[cli_rng_next(rng) % 4];
    /* Lk: mostly odd sizes that are no multiple of any tile, sometimes 1 or large. */
    double u = cli_rng_uniform(rng);
    c.len_k = u < 0.1 ? 1 : u < 0.8 ? 2 + (int64_t)(cli_rng_next(rng) % 400) : 400 + (int64_t)(cli_rng_next(rng) % 1700);
    double per_key = (double)(c.batch * c.heads_q * c.len_q * (c.dim_k + c.dim_v));
    if (per_key * (double)c.len_k > budget) c.len_k = 1 + (int64_t)(budget / per_key) / 2 * 2;
    c.mask = (cli_mask)(cli_rng_next(rng) % 4);
    c.mask_dtype = qd;
    if (c.mask == CLI_MASK_NONE && cli_rng_uniform(rng) < 0.6) {
        c.causal = true;
        if (cli_rng_uniform(rng) < 0.5) c.window = 1 + (int64_t)(cli_rng_next(rng) % (uint64_t)c.len_k);
    }
    c.sinks = cli_rng_uniform(rng) < 0.3;
    static const qsdpa_dtype scale_dtypes[3] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
    c.scale_dtype = scale_dtypes[cli_rng_next(rng) % 3];
    c.scale = (float)(1.0 / sqrt((double)c.dim_k));
    return c;
}

static int setup(verifier *vf) {
    vf->kernel_count = qsdpa_kernel_count();
    if (vf->kernel_count > MAX_KERNELS) vf->kernel_count = MAX_KERNELS;
    vf->reference = -1;
    int cuda_rows = 0, unusable = 0;
    bool cuda = qsdpa_backend_available(QSDPA_BACKEND_CUDA);
    for (int i = 0; i < vf->kernel_count; i++) {
        qsdpa_status st = qsdpa_kernel_get(i, &vf->info[i]);
        if (st != QSDPA_OK) return cli_library_error(CMD, "qsdpa_kernel_get", st);
        const qsdpa_kernel_info *k = &vf->info[i];
        if (strcmp(k->name, "cpu.reference") == 0) vf->reference = i;
        if (k->backend == QSDPA_BACKEND_CUDA) cuda_rows++;
        if (!k->usable || (k->backend == QSDPA_BACKEND_CUDA && (!cuda || !cli_device_compiled()))) {
            unusable++;
            continue;
        }
        qsdpa_context_options o = qsdpa_context_default_options();
        o.backend = k->backend;
        o.kernel = k->name;
        if ((st = qsdpa_context_create(&o, &vf->ctx[i])) != QSDPA_OK)
            return cli_library_error(CMD, "qsdpa_context_create", st);
    }
    if (vf->reference < 0 || !vf->ctx[vf->reference]) {
        fprintf(stderr, "qsdpa verify: the kernel table has no usable cpu.reference row\n");
        return CLI_EXIT_FAIL;
    }
    printf("qsdpa verify: seed %llu, %d kernel rows (%d not usable here), %d cases per format x dtype\n",
           (unsigned long long)vf->seed, vf->kernel_count, unusable, vf->cases);
    if (!cuda || !cli_device_compiled())
        printf("CUDA: skipped (%s); %d CUDA rows in the table\n",
               !cli_device_compiled() ? "not compiled into this build" : "no usable device", cuda_rows);
    vf->cells = calloc((size_t)PAIR_COUNT * 3 * (size_t)vf->kernel_count, sizeof(cell));
    return vf->cells ? 0 : CLI_EXIT_FAIL;
}

/* Run kernel row `i` with output tensor tout; CUDA rows run on dev (the
 * device copy) into tout (device memory) and the result, guard bytes
 * included, is copied back into the host buffer out. */
static qsdpa_status run_row(verifier *vf, int i, const cli_problem *p, const cli_problem *dev, qsdpa_tensor *tout,
                            void *out, size_t bytes, int *rc) {
    if (vf->info[i].backend != QSDPA_BACKEND_CUDA) return qsdpa_attention(vf->ctx[i], &p->tq, &p->tk, &p->tv, &p->params, tout);
    if ((*rc = cli_device_write(tout->data, out, bytes))) return QSDPA_OK; /* the poison */
    qsdpa_status st = qsdpa_attention(vf->ctx[i], &dev->tq, &dev->tk, &dev->tv, &dev->params, tout);
    if (st == QSDPA_OK) *rc = cli_device_sync();
    if (st == QSDPA_OK && !*rc) *rc = cli_device_download(out, tout->data, bytes);
    return st;
}

/* One case: the reference, then every runnable row that serves it. */
static int check_case(verifier *vf, int pair, int dt, const cli_case *c, uint64_t seed) {
    cli_problem p;
    cli_problem dev;
    bool dev_ready = false;
    int rc = cli_problem_build(c, seed, &p);
    void *ref = NULL, *out = NULL, *dout = NULL; /* dout: device out + guard, CUDA rows only */
    char text[200];
    cli_case_string(c, text, sizeof text);
    if (rc) goto done;
    if (p.capacity > c->len_k) /* K/V are a view of the first Lk rows of a larger cache */
        snprintf(text + strlen(text), sizeof text - strlen(text), " view-of-%lld-rows", (long long)p.capacity);
    ref = cli_alloc(p.out_bytes);
    out = cli_alloc(p.out_bytes + GUARD_BYTES);
    if (!ref || !out) { rc = CLI_EXIT_FAIL; goto done; }
    memset(ref, 0xFF, p.out_bytes);
    qsdpa_tensor tref = cli_problem_out(&p, ref);
    qsdpa_status st = qsdpa_attention(vf->ctx[vf->reference], &p.tq, &p.tk, &p.tv, &p.params, &tref);
    if (st != QSDPA_OK) {
        fprintf(stderr, "FAIL reference on %s / %s %s %s: %s\n", format_pairs[pair].k, format_pairs[pair].v,
                qsdpa_dtype_name(c->q_dtype), text, qsdpa_last_error());
        vf->failures++;
        goto done;
    }
    int64_t n = (int64_t)(p.out_bytes / qsdpa_dtype_size(c->q_dtype));
    double tol = cli_tolerance(c->q_dtype) * (p.max_abs_v > 0 ? p.max_abs_v : 1.0);
    for (int i = 0; i < vf->kernel_count && !rc; i++) {
        if (!vf->ctx[i] || i == vf->reference) continue;
        const char *name;
        bool on_device = vf->info[i].backend == QSDPA_BACKEND_CUDA;
        if (on_device && !dev_ready) { /* one device copy per case, made on first need */
            if ((rc = cli_problem_upload(&p, &dev))) break;
            dev_ready = true;
            if (!(dout = cli_device_upload(NULL, p.out_bytes + GUARD_BYTES))) {
                rc = CLI_EXIT_FAIL;
                break;
            }
        }
        const cli_problem *rp = on_device ? &dev : &p;
        qsdpa_tensor tout = cli_problem_out(rp, on_device ? dout : out);
        st = qsdpa_attention_select(vf->ctx[i], &rp->tq, &rp->tk, &rp->tv, &rp->params, &tout, &name);
        if (st == QSDPA_ERR_UNSUPPORTED) continue; /* the row does not serve this case */
        cell *cl = &vf->cells[((size_t)pair * 3 + (size_t)dt) * (size_t)vf->kernel_count + (size_t)i];
        cl->count++;
        vf->comparisons++;
        memset(out, 0xFF, p.out_bytes + GUARD_BYTES);
        if (st == QSDPA_OK) st = run_row(vf, i, &p, &dev, &tout, out, p.out_bytes + GUARD_BYTES, &rc);
        double err = INFINITY;
        bool guard_ok = true;
        for (size_t g = 0; g < GUARD_BYTES; g++) guard_ok &= ((unsigned char *)out)[p.out_bytes + g] == 0xFF;
        if (st == QSDPA_OK && !rc) err = cli_max_abs_diff(out, ref, c->q_dtype, n);
        double ratio = err / tol;
        if (ratio > cl->worst || isnan(ratio)) cl->worst = ratio;
        bool pass = st == QSDPA_OK && !rc && ratio <= 1.0 && guard_ok;
        count_features(vf, c, p.capacity > c->len_k, !pass);
        if (!pass) {
            cl->failures++;
            vf->failures++;
            fprintf(stderr, "FAIL %s on K %s V %s q %s %s: %s\n", vf->info[i].name, format_pairs[pair].k,
                    format_pairs[pair].v, qsdpa_dtype_name(c->q_dtype), text,
                    st != QSDPA_OK ? qsdpa_last_error()
                    : !guard_ok    ? "wrote past the end of out"
                                   : "error above tolerance");
            if (st == QSDPA_OK && guard_ok)
                fprintf(stderr, "     max error %.3g = %.3g x tolerance (max|V| %.3g)\n", err, ratio, p.max_abs_v);
        } else if (vf->verbose) {
            printf("  ok %-24s K %-12s V %-12s q %-4s %s: err/tol %.3g\n", vf->info[i].name, format_pairs[pair].k,
                   format_pairs[pair].v, qsdpa_dtype_name(c->q_dtype), text, ratio);
        }
    }
done:
    if (dev_ready) cli_problem_device_free(&dev);
    cli_device_free(dout);
    free(ref);
    free(out);
    cli_problem_free(&p);
    return rc;
}

static void print_features(const verifier *vf) {
    printf("\n%-28s %11s %9s  %s\n", "covered semantics", "comparisons", "failures", "result");
    for (int f = 0; f < F_COUNT; f++)
        printf("%-28s %11d %9d  %s\n", feature_names[f], vf->feature_count[f], vf->feature_failures[f],
               vf->feature_failures[f] ? "FAIL" : vf->feature_count[f] ? "PASS" : "not drawn (raise --cases)");
}

static void print_table(const verifier *vf) {
    printf("\n%-13s %-13s %-5s %-26s %6s %13s  %s\n", "K format", "V format", "q", "kernel", "cases", "worst err/tol",
           "result");
    for (int pair = 0; pair < PAIR_COUNT; pair++)
        for (int dt = 0; dt < 3; dt++)
            for (int i = 0; i < vf->kernel_count; i++) {
                const cell *cl = &vf->cells[((size_t)pair * 3 + (size_t)dt) * (size_t)vf->kernel_count + (size_t)i];
                if (!cl->count) continue;
                printf("%-13s %-13s %-5s %-26s %6d %13.3g  %s\n", format_pairs[pair].k, format_pairs[pair].v,
                       qsdpa_dtype_name(q_dtypes[dt]), vf->info[i].name, cl->count, cl->worst,
                       cl->failures ? "FAIL" : "PASS");
            }
}

int cli_verify(int argc, char **argv) {
    verifier vf;
    memset(&vf, 0, sizeof vf);
    vf.cases = 5;
    vf.seed = cli_time_seed();
    int rc = 0;
    bool cases_given = false;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i], *v = NULL;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (strcmp(a, "--quick") == 0) vf.quick = true;
        else if (strcmp(a, "--verbose") == 0) vf.verbose = true;
        else if (cli_opt(argc, argv, &i, "--cases", &v)) {
            rc = cli_parse_int(CMD, "--cases", v, 1, 100000, &vf.cases);
            cases_given = true;
        } else if (cli_opt(argc, argv, &i, "--seed", &v)) rc = cli_parse_u64(CMD, "--seed", v, &vf.seed);
        else rc = cli_unknown_arg(CMD, a);
    }
    if (rc) return rc;
    if (vf.quick && !cases_given) vf.cases = 1;
    double budget = vf.quick ? 2e6 : 2e7; /* multiply-adds per case, B*Hq*Lq*Lk*(Dk+Dv) */
    if ((rc = setup(&vf))) goto done;
    double t0 = cli_now();
    uint64_t rng = vf.seed;
    for (int pair = 0; pair < PAIR_COUNT && !rc; pair++) {
        qsdpa_format kf, vfmt;
        if (parse_label(format_pairs[pair].k, &kf) != QSDPA_OK || parse_label(format_pairs[pair].v, &vfmt) != QSDPA_OK) {
            rc = cli_library_error(CMD, "qsdpa_format_parse", QSDPA_ERR_PARSE);
            break;
        }
        for (int dt = 0; dt < 3 && !rc; dt++)
            for (int k = 0; k < vf.cases && !rc; k++) {
                cli_case c = random_case(&rng, &kf, &vfmt, q_dtypes[dt], budget);
                rc = check_case(&vf, pair, dt, &c, cli_rng_next(&rng));
            }
    }
    if (rc) goto done;
    print_table(&vf);
    print_features(&vf);
    printf("\nverify: %d comparisons, %d failures, %.1f s (seed %llu)\n", vf.comparisons, vf.failures,
           cli_now() - t0, (unsigned long long)vf.seed);
    if (vf.comparisons == 0) {
        fprintf(stderr, "qsdpa verify: no kernel row other than the reference ran: nothing was checked\n");
        rc = CLI_EXIT_FAIL;
    } else if (vf.failures) {
        rc = CLI_EXIT_FAIL;
    }
    printf("%s\n", rc ? "FAIL" : "PASS");
done:
    for (int i = 0; i < vf.kernel_count; i++) qsdpa_context_destroy(vf.ctx[i]);
    free(vf.cells);
    return rc;
}
