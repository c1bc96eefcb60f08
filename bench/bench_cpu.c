/* `qsdpa bench`: the CPU benchmark matrix.
 *
 * Shape B=1, Hq=32, Hkv=8, D=128 (GQA 4); contexts 2K..128K; K/V formats
 * affine 4/g64, affine 8/g64, mxfp4, nvfp4 and K8V4; Lq 1, 4, 16 and a 4K causal
 * prefill. Baselines measured in the same run: the library's own unquantized f16
 * path (format f16) and the double-precision reference. Error is max|out - ref| /
 * max|V| on the first KV group (and the last 64 query rows of a prefill), which
 * keeps the reference affordable at 128K. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#include "bench_cpu.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "qsdpa.h"

typedef struct opts {
    int json, threads, repeats;
    int64_t contexts[8];
    int ncontexts;
    int no_reference, no_prefill;
    const char *only; /* run only this format (NULL = all): a row's name or any K/V format text */
    qsdpa_dtype dtype; /* q and out (f32, f16, bf16) */
    int64_t dim, dim_v, hkv; /* head dims (K's; V's, 0: K's) and KV heads of the shape; Hq is 32 */
    char shape[48];          /* "B1 Hq32 Hkv8 D128" (Dk576/512 where they differ) */
} opts;

typedef struct kv {
    qsdpa_qtensor t;
    void *codes, *scales, *biases;
    size_t bytes; /* bytes a full read of the cache touches */
    float maxabs;
} kv;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the whole process (all threads): a load-robust companion of wall time. */
static double cpu_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rng_normal(void) { /* Box-Muller over xorshift64* */
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
        u[i] = ((double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* QSDPA_BENCH_HUGEPAGES=1: buffers of 2 MiB and more 2 MiB-aligned and advised for transparent huge
 * pages (Linux; where THP is "madvise", malloc'd buffers get 4 KiB pages), to see what the TLB costs */
static void *xmalloc(size_t n) {
    void *p = NULL;
#ifdef MADV_HUGEPAGE
    static int huge = -1;
    if (huge < 0) {
        const char *e = getenv("QSDPA_BENCH_HUGEPAGES");
        huge = e && atoi(e) == 1;
    }
    const size_t hp = (size_t)2 << 20, len = (n + hp - 1) / hp * hp;
    if (huge && n >= hp && posix_memalign(&p, hp, len) == 0) madvise(p, len, MADV_HUGEPAGE);
#endif
    if (!p) p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "qsdpa bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void free_kv(kv *x) {
    free(x->codes), free(x->scales), free(x->biases);
    memset(x, 0, sizeof *x);
}

/* A [1, H, L, D] cache of N(0,1) values in format `fmt` (f16 scales for affine). */
static int make_kv(const char *fmt, int64_t H, int64_t L, int64_t D, kv *out) {
    memset(out, 0, sizeof *out);
    qsdpa_format f;
    if (qsdpa_format_parse(fmt, &f) != QSDPA_OK) return -1;
    int64_t rows = H * L, words = D, ng = 0;
    qsdpa_dtype sdt = f.mode == QSDPA_MODE_AFFINE ? QSDPA_DTYPE_F16 : QSDPA_DTYPE_U8;
    out->t.format = f;
    out->t.dim = D;
    if (f.mode == QSDPA_MODE_PLAIN) {
        out->codes = xmalloc((size_t)(rows * D) * qsdpa_dtype_size(f.plain_dtype));
        out->t.codes = qsdpa_tensor_4d(out->codes, f.plain_dtype, 1, H, L, D);
        out->bytes = (size_t)(rows * D) * qsdpa_dtype_size(f.plain_dtype);
    } else {
        if (qsdpa_format_row_words(&f, D, &words) != QSDPA_OK || qsdpa_format_row_scales(&f, D, &ng) != QSDPA_OK)
            return -1; /* D not a multiple of the group, or of a word */
        out->codes = xmalloc((size_t)(rows * words) * 4);
        out->scales = xmalloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
        if (f.mode == QSDPA_MODE_AFFINE) out->biases = xmalloc((size_t)(rows * ng) * qsdpa_dtype_size(sdt));
        out->t.codes = qsdpa_tensor_4d(out->codes, QSDPA_DTYPE_U32, 1, H, L, words);
        out->t.scales = qsdpa_tensor_4d(out->scales, sdt, 1, H, L, ng);
        out->t.biases = qsdpa_tensor_4d(out->biases, sdt, 1, H, L, ng);
        out->bytes = (size_t)(rows * words) * 4 + (size_t)(rows * ng) * qsdpa_dtype_size(sdt) * (out->biases ? 2 : 1);
    }
    /* Quantize in chunks of rows so 128K contexts need no full f32 copy. */
    const int64_t chunk = 4096;
    float *x = xmalloc((size_t)(chunk * D) * sizeof(float));
    float *deq = xmalloc((size_t)(chunk * D) * sizeof(float));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        for (int64_t i = 0; i < n * D; i++) x[i] = (float)rng_normal();
        if (f.mode == QSDPA_MODE_PLAIN) { /* qsdpa_quantize converts plain rows to their dtype */
            size_t es = qsdpa_dtype_size(f.plain_dtype);
            qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, n, D, (uint32_t *)((char *)out->codes + (size_t)(r0 * D) * es), NULL,
                           NULL, QSDPA_DTYPE_F32);
            for (int64_t i = 0; i < n * D; i++) out->maxabs = fabsf(x[i]) > out->maxabs ? fabsf(x[i]) : out->maxabs;
            continue;
        }
        size_t ss = qsdpa_dtype_size(sdt);
        uint32_t *c = (uint32_t *)out->codes + r0 * words;
        void *s = (char *)out->scales + (size_t)(r0 * ng) * ss;
        void *b = out->biases ? (char *)out->biases + (size_t)(r0 * ng) * ss : NULL;
        if (qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, n, D, c, s, b, sdt) != QSDPA_OK ||
            qsdpa_dequantize(&f, c, s, b, sdt, n, D, deq, QSDPA_DTYPE_F32) != QSDPA_OK) {
            fprintf(stderr, "qsdpa bench: %s\n", qsdpa_last_error());
            free(x), free(deq);
            return -1;
        }
        for (int64_t i = 0; i < n * D; i++) out->maxabs = fabsf(deq[i]) > out->maxabs ? fabsf(deq[i]) : out->maxabs;
    }
    free(x), free(deq);
    if (!out->biases) out->t.biases.data = NULL;
    return 0;
}

/* The same tensor restricted to kv head 0 (for the reference slice). */
static qsdpa_qtensor head0(const qsdpa_qtensor *t) {
    qsdpa_qtensor s = *t;
    s.codes.shape[1] = 1;
    s.scales.shape[1] = 1;
    s.biases.shape[1] = 1;
    return s;
}

typedef struct result {
    const char *format;
    int64_t lq, lk;
    int threads;
    double ms, gbs, err, ref_ms;
    double cpu_ms; /* median process CPU time per call, all threads summed */
    char kernel[64]; /* the route the timed calls took (qsdpa_context_last_route: the entry, "+bf16" on bf16 tiles) */
} result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median time of repeated qsdpa_attention calls (after one warm-up call). */
static double time_attention(qsdpa_context *ctx, const qsdpa_tensor *q, const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                             const qsdpa_attention_params *prm, qsdpa_tensor *out, int repeats, double *cpu_ms) {
    double times[64], cpu[64];
    if (qsdpa_attention(ctx, q, k, v, prm, out) != QSDPA_OK) return -1.0;
    double budget_start = now_s();
    int n = 0;
    while (n < repeats && n < 64) {
        double t0 = now_s(), c0 = cpu_now_s();
        qsdpa_attention(ctx, q, k, v, prm, out);
        cpu[n] = cpu_now_s() - c0;
        times[n++] = now_s() - t0;
        if (n >= 3 && now_s() - budget_start > 2.0) break; /* long cases: 3 repeats */
    }
    qsort(times, (size_t)n, sizeof times[0], cmp_double);
    qsort(cpu, (size_t)n, sizeof cpu[0], cmp_double);
    *cpu_ms = 1e3 * cpu[n / 2];
    return 1e3 * times[n / 2];
}

/* n floats <-> a plain f16/bf16 buffer, through the library's own plain-format codec. */
static void *to_dtype(qsdpa_dtype dt, const float *x, int64_t n) {
    if (dt == QSDPA_DTYPE_F32) return (void *)x;
    qsdpa_format f;
    qsdpa_format_parse(qsdpa_dtype_name(dt), &f);
    void *y = xmalloc((size_t)n * qsdpa_dtype_size(dt));
    qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, 1, n, y, NULL, NULL, QSDPA_DTYPE_F32);
    return y;
}
static void from_dtype(qsdpa_dtype dt, const void *y, int64_t n, float *x) {
    if (dt == QSDPA_DTYPE_F32) return;
    qsdpa_format f;
    qsdpa_format_parse(qsdpa_dtype_name(dt), &f);
    qsdpa_dequantize(&f, y, NULL, NULL, QSDPA_DTYPE_F32, 1, n, x, QSDPA_DTYPE_F32);
}

/* One (format, Lq, context) row: time the fast path, error against the reference slice. */
static int run_row(const opts *o, qsdpa_context *ctx, qsdpa_context *ref, const char *name, const kv *k, const kv *v,
                   int64_t lq, int64_t lk, int causal, result *res) {
    const int64_t Hq = 32, Hkv = o->hkv, D = o->dim, DV = o->dim_v ? o->dim_v : D, ratio = Hq / Hkv;
    float *q = xmalloc((size_t)(Hq * lq * D) * sizeof(float));
    float *out = xmalloc((size_t)(Hq * lq * DV) * sizeof(float));
    for (int64_t i = 0; i < Hq * lq * D; i++) q[i] = (float)rng_normal();
    const qsdpa_dtype dt = o->dtype;
    const size_t es = qsdpa_dtype_size(dt);
    void *qd = to_dtype(dt, q, Hq * lq * D), *od = dt == QSDPA_DTYPE_F32 ? (void *)out : xmalloc((size_t)(Hq * lq * DV) * es);
    qsdpa_tensor qt = qsdpa_tensor_4d(qd, dt, 1, Hq, lq, D);
    qsdpa_tensor ot = qsdpa_tensor_4d(od, dt, 1, Hq, lq, DV);
    qsdpa_attention_params prm = qsdpa_attention_default_params();
    prm.scale = 1.0f / sqrtf((float)D);
    prm.causal = causal;
    memset(res, 0, sizeof *res);
    res->format = name, res->lq = lq, res->lk = lk, res->threads = o->threads;
    res->err = -1, res->ref_ms = -1;
    res->ms = time_attention(ctx, &qt, &k->t, &v->t, &prm, &ot, o->repeats, &res->cpu_ms);
    snprintf(res->kernel, sizeof res->kernel, "%s", qsdpa_context_last_route(ctx));
    if (res->ms < 0) {
        fprintf(stderr, "qsdpa bench: %s Lq=%lld Lk=%lld failed: %s\n", name, (long long)lq, (long long)lk,
                qsdpa_last_error());
        if (dt != QSDPA_DTYPE_F32) free(qd), free(od);
        free(q), free(out);
        return -1;
    }
    from_dtype(dt, od, Hq * lq * DV, out);
    res->gbs = (double)(k->bytes + v->bytes) / (res->ms * 1e-3) / 1e9;
    if (!o->no_reference) {
        /* Reference on kv head 0 and its query heads, last min(Lq, 64) query rows
         * (bottom-right causal alignment keeps them the same rows). */
        int64_t sl = lq < 64 ? lq : 64;
        qsdpa_qtensor ks = head0(&k->t), vs = head0(&v->t);
        qsdpa_tensor qs = qt, os;
        qs.data = (char *)qd + (size_t)((lq - sl) * D) * es;
        qs.shape[1] = ratio, qs.shape[2] = sl;
        float *ro = xmalloc((size_t)(ratio * sl * DV) * sizeof(float));
        void *rod = dt == QSDPA_DTYPE_F32 ? (void *)ro : xmalloc((size_t)(ratio * sl * DV) * es);
        os = qsdpa_tensor_4d(rod, dt, 1, ratio, sl, DV);
        double t0 = now_s();
        if (qsdpa_attention(ref, &qs, &ks, &vs, &prm, &os) == QSDPA_OK) {
            from_dtype(dt, rod, ratio * sl * DV, ro);
            /* the reference's cost scales with heads and rows: report it for the whole problem */
            res->ref_ms = 1e3 * (now_s() - t0) * (double)Hkv * (double)lq / (double)sl;
            double worst = 0;
            for (int64_t h = 0; h < ratio; h++)
                for (int64_t i = 0; i < sl; i++)
                    for (int64_t d = 0; d < DV; d++) {
                        double e = fabs((double)out[(h * lq + lq - sl + i) * DV + d] - ro[(h * sl + i) * DV + d]);
                        if (!(e <= worst)) worst = e;
                    }
            res->err = worst / v->maxabs;
        }
        if (dt != QSDPA_DTYPE_F32) free(rod);
        free(ro);
    }
    if (dt != QSDPA_DTYPE_F32) free(qd), free(od);
    free(q), free(out);
    return 0;
}

static void print_row(const opts *o, const result *r, const result *f16, int first) {
    double vs_f16 = f16 && f16->ms > 0 ? f16->ms / r->ms : 1.0, vs_ref = r->ref_ms > 0 ? r->ref_ms / r->ms : 0;
    if (o->json) {
        printf("%s  {\"shape\": \"%s\", \"dtype\": \"%s\", \"format\": \"%s\", \"lq\": %lld, \"context\": %lld, "
               "\"threads\": %d, \"ms\": %.4f, \"cpu_ms\": %.4f, \"gbs\": %.2f, \"err\": %.3g, \"ref_ms\": %.2f, \"vs_f16\": %.3f, "
               "\"vs_ref\": %.1f, \"kernel\": \"%s\", \"causal\": %s}",
               first ? "" : ",\n", o->shape, qsdpa_dtype_name(o->dtype), r->format, (long long)r->lq, (long long)r->lk, r->threads, r->ms, r->cpu_ms, r->gbs, r->err,
               r->ref_ms, vs_f16, vs_ref, r->kernel[0] ? r->kernel : "?", r->lq == r->lk ? "true" : "false");
        return;
    }
    printf("%-21s %-4s %-13s %5lld %7lld %3d %10.3f %9.3f %7.2f %9.2e %9.3fx %9.1fx  %s\n", o->shape,
           qsdpa_dtype_name(o->dtype), r->format,
           (long long)r->lq, (long long)r->lk, r->threads, r->ms, r->cpu_ms, r->gbs, r->err, vs_f16, vs_ref,
           r->kernel[0] ? r->kernel : "?");
}

static void usage(void) {
    printf("usage: qsdpa bench [--json] [--threads N] [--repeats N] [--contexts 2048,8192,...] [--quick]\n"
           "                   [--format NAME] [--dtype f32|f16|bf16] [--no-reference] [--no-prefill]\n"
           "                   [--dim D] [--dim-v DV] [--kv-heads H]\n\n"
           "CPU benchmark: B=1, Hq=32, Hkv=8, D=128; formats affine:4:64, affine:8:64, mxfp4, nvfp4, K8V4\n"
           "against the library's own f16 path and the reference; Lq 1, 4, 16 over 2K..128K keys and a\n"
           "4K causal prefill. Time is the median of repeats; error is max|out - ref| / max|V|.\n"
           "--dtype: q and out (default f32); f16/bf16 take the integer K path where a format has one.\n"
           "--format: one of the formats above, or any format text (e.g. affine:3:32) for K and V, or K's and\n"
           "          V's apart (e.g. mxfp8/mxfp4), beside f16.\n"
           "--dim: head dim (default 128, at most 1024; a multiple of the format's group); --dim-v: V's where it\n"
           "differs (e.g. --dim 576 --dim-v 512 --kv-heads 1: a DeepSeek-style MLA latent cache, absorbed);\n"
           "--kv-heads: KV heads, dividing the 32 query heads (default 8; 32 is MHA).\n\n"
           "qsdpa bench --data DIR [--format F ...] [--runs N] [--threads N]: the same on real tensors (a folder\n"
           "of q/k/v .npy files, e.g. tests/data/real/smollm2_layer13); 'qsdpa bench --data --help' says more.\n");
}

/* A whole decimal integer in [lo, hi] from text (the flag named in the message), or -1 after saying why. */
static int int_arg(const char *flag, const char *text, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) {
        fprintf(stderr, "qsdpa bench: %s = '%s' is not an integer in [%lld, %lld]\n", flag, text, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->repeats = 15;
    o->dtype = QSDPA_DTYPE_F32;
    o->dim = 128;
    o->hkv = 8;
    const int64_t defaults[] = {2048, 8192, 32768, 131072};
    memcpy(o->contexts, defaults, sizeof defaults);
    o->ncontexts = 4;
    static const char *const with_value[] = {"--threads", "--repeats", "--format", "--dim-v", "--dim",
                                             "--kv-heads", "--dtype",   "--contexts"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long long n = 0;
        for (size_t f = 0; f < sizeof with_value / sizeof with_value[0]; f++)
            if (!strcmp(a, with_value[f]) && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
                fprintf(stderr, "qsdpa bench: %s needs a value (see --help)\n", a);
                return -1;
            }
        if (!strcmp(a, "--json")) o->json = 1;
        else if (!strcmp(a, "--quick")) o->ncontexts = 2, o->repeats = 5;
        else if (!strcmp(a, "--no-reference")) o->no_reference = 1;
        else if (!strcmp(a, "--no-prefill")) o->no_prefill = 1;
        else if (!strcmp(a, "--threads")) {
            if (int_arg(a, argv[++i], 0, 1024, &n)) return -1;
            o->threads = (int)n;
        } else if (!strcmp(a, "--repeats")) {
            if (int_arg(a, argv[++i], 1, 100000, &n)) return -1;
            o->repeats = (int)n;
        } else if (!strcmp(a, "--format")) o->only = argv[++i];
        else if (!strcmp(a, "--dim-v")) {
            if (int_arg(a, argv[++i], 1, 1024, &n)) return -1;
            o->dim_v = n;
        } else if (!strcmp(a, "--dim")) {
            if (int_arg(a, argv[++i], 1, 1024, &n)) return -1;
            o->dim = n;
        } else if (!strcmp(a, "--kv-heads")) {
            if (int_arg(a, argv[++i], 1, 32, &n)) return -1;
            if (32 % n != 0) {
                fprintf(stderr, "qsdpa bench: --kv-heads = %lld: expected a divisor of the 32 query heads\n", n);
                return -1;
            }
            o->hkv = n;
        } else if (!strcmp(a, "--dtype")) {
            const char *t = argv[++i];
            if (qsdpa_dtype_parse(t, &o->dtype) != QSDPA_OK ||
                (o->dtype != QSDPA_DTYPE_F32 && o->dtype != QSDPA_DTYPE_F16 && o->dtype != QSDPA_DTYPE_BF16)) {
                fprintf(stderr, "qsdpa bench: --dtype '%s': expected f32, f16 or bf16\n", t);
                return -1;
            }
        } else if (!strcmp(a, "--contexts")) {
            /* a comma-separated list of up to 8 key counts, each a whole number in [1, 2^26] */
            char list[256];
            const char *arg = argv[++i];
            const size_t len = strlen(arg);
            if (len >= sizeof list || !len || arg[0] == ',' || arg[len - 1] == ',' || strstr(arg, ",,")) {
                fprintf(stderr, "qsdpa bench: --contexts '%s': expected N[,N...] (at most 8, no empty items)\n", arg);
                return -1;
            }
            memcpy(list, arg, len + 1);
            o->ncontexts = 0;
            for (char *item = strtok(list, ","); item; item = strtok(NULL, ",")) {
                if (o->ncontexts == 8) {
                    fprintf(stderr, "qsdpa bench: --contexts '%s': at most 8 contexts\n", argv[i]);
                    return -1;
                }
                if (int_arg("--contexts", item, 1, (long long)1 << 26, &n)) return -1;
                o->contexts[o->ncontexts++] = n;
            }
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 1;
        } else {
            fprintf(stderr, "qsdpa bench: unknown option '%s' (see --help)\n", a);
            return -1;
        }
    }
    if (o->repeats < 1) o->repeats = 1;
    if (o->dim_v && o->dim_v != o->dim)
        snprintf(o->shape, sizeof o->shape, "B1 Hq32 Hkv%lld D%lld/%lld", (long long)o->hkv, (long long)o->dim,
                 (long long)o->dim_v);
    else snprintf(o->shape, sizeof o->shape, "B1 Hq32 Hkv%lld D%lld", (long long)o->hkv, (long long)o->dim);
    return 0;
}

int qsdpa_bench_cpu_main(int argc, char **argv) {
    opts o;
    int pr = parse(argc, argv, &o);
    if (pr) return pr > 0 ? 0 : 2;
    qsdpa_context_options co = qsdpa_context_default_options();
    co.num_threads = o.threads;
    qsdpa_context *ctx, *ref;
    if (qsdpa_context_create(&co, &ctx) != QSDPA_OK) {
        fprintf(stderr, "qsdpa bench: %s\n", qsdpa_last_error());
        return 1;
    }
    co.kernel = "cpu.reference";
    if (qsdpa_context_create(&co, &ref) != QSDPA_OK) {
        fprintf(stderr, "qsdpa bench: %s\n", qsdpa_last_error());
        return 1;
    }
    if (o.threads <= 0) { /* the context's default: one thread per online core */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = cores > 0 ? (int)cores : 1;
    }
    struct { const char *name, *k, *v; } formats[] = {
        {"f16", "f16", "f16"},           {"affine:4:64", "affine:4:64", "affine:4:64"},
        {"affine:8:64", "affine:8:64", "affine:8:64"}, {"mxfp4", "mxfp4", "mxfp4"},
        {"nvfp4", "nvfp4", "nvfp4"},     {"K8V4", "affine:8:64", "affine:4:64"},
    };
    int nformats = (int)(sizeof formats / sizeof formats[0]);
    char only_k[64];
    if (o.only) { /* a format not in the list: it alone beside the f16 baseline; "K/V" names K's and V's apart */
        int listed = 0;
        for (int fi = 0; fi < nformats; fi++) listed |= !strcmp(o.only, formats[fi].name);
        if (!listed) {
            const char *slash = strchr(o.only, '/');
            snprintf(only_k, sizeof only_k, "%.*s", slash ? (int)(slash - o.only) : (int)sizeof only_k - 1, o.only);
            formats[1].name = o.only;
            formats[1].k = only_k;
            formats[1].v = slash ? slash + 1 : o.only;
            nformats = 2;
        }
    }
    static const int64_t lqs[] = {1, 4, 16};
    const char *lq_env = getenv("QSDPA_BENCH_LQ"); /* one of the decode query lengths alone (profiles) */
    const int64_t only_lq = lq_env ? atoll(lq_env) : 0;
    if (o.json) printf("[\n");
    else
        printf("%-21s %-4s %-13s %5s %7s %3s %10s %9s %7s %9s %10s %10s  %s\n", "shape", "q", "format", "Lq", "context", "thr",
               "ms(median)", "cpu ms", "GB/s", "err/max|V|", "vs own f16", "vs ref", "kernel");
    int first = 1, status = 0;
    for (int ci = 0; ci < o.ncontexts + !o.no_prefill; ci++) {
        int prefill = ci == o.ncontexts;
        int64_t lk = prefill ? 4096 : o.contexts[ci];
        result f16res[3];
        memset(f16res, 0, sizeof f16res);
        for (int fi = 0; fi < nformats; fi++) {
            if (o.only && fi > 0 && strcmp(o.only, formats[fi].name)) continue;
            kv k, v;
            memset(&v, 0, sizeof v);
            if (make_kv(formats[fi].k, o.hkv, lk, o.dim, &k) ||
                make_kv(formats[fi].v, o.hkv, lk, o.dim_v ? o.dim_v : o.dim, &v)) {
                fprintf(stderr, "qsdpa bench: cannot build the %s cache at D %lld: %s\n", formats[fi].name,
                        (long long)o.dim, qsdpa_last_error());
                free_kv(&k), free_kv(&v);
                qsdpa_context_destroy(ctx);
                qsdpa_context_destroy(ref);
                return 1;
            }
            for (int li = 0; li < (prefill ? 1 : 3); li++) {
                result r;
                int64_t lq = prefill ? lk : lqs[li];
                if (!prefill && only_lq > 0 && lq != only_lq) continue;
                if (run_row(&o, ctx, ref, formats[fi].name, &k, &v, lq, lk, prefill, &r)) {
                    status = 1;
                    continue;
                }
                if (fi == 0) f16res[li] = r;
                print_row(&o, &r, fi == 0 ? NULL : &f16res[li], first);
                first = 0;
                fflush(stdout);
            }
            free_kv(&k), free_kv(&v);
        }
    }
    if (o.json) printf("\n]\n");
    qsdpa_context_destroy(ctx);
    qsdpa_context_destroy(ref);
    return status;
}
