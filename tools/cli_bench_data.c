/* `qsdpa bench --data DIR`: speed and error on *real* tensors (issue 8).
 *
 * DIR holds q.npy [B,Hq,Lq,D], k.npy / v.npy [B,Hkv,Lk,D] (f32, unquantized)
 * and meta.json (scale, causal), as tests/data/real/<layer>/ does (SmolLM2-135M,
 * exported by tools/quality/evaluate.py --export). Each format quantizes K and V
 * with qsdpa_quantize and runs the automatically chosen kernel; the table shows
 * its median time, the cache GB/s, the error against the reference kernel on
 * the same bytes (SPEC 4, in max|V| units) and the quantization error against
 * unquantized f32 attention. Random data has no outlier channels; real keys do,
 * so this is where formats differ. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "npy.h"

#define CMD "bench --data"

static const char *const default_formats[] = {"f32",   "f16",   "affine:8:64", "affine:4:64", "affine:4:32",
                                              "mxfp8", "mxfp4", "nvfp4",       "affine:8:64/affine:4:64"};
#define DEFAULT_FORMAT_COUNT ((int)(sizeof default_formats / sizeof default_formats[0]))

static void help(void) {
    printf("usage: qsdpa bench --data DIR [--format F[/VF]]... [--runs N] [--threads N]\n\n"
           "Times attention over real tensors: DIR/q.npy, DIR/k.npy, DIR/v.npy (f32) and\n"
           "DIR/meta.json (scale, causal), e.g. tests/data/real/smollm2_layer13.\n"
           "  --format F     K and V format (repeatable); F/VF gives K and V different formats.\n"
           "                 Default: f32 f16 affine:8:64 affine:4:64 affine:4:32 mxfp8 mxfp4 nvfp4 K8V4\n"
           "  --runs N       timed runs per format (median; default 20)\n"
           "  --threads N    CPU threads (default all cores)\n");
}

/* "key": value from a small flat JSON object (meta.json); false if absent. */
static bool json_value(const char *json, const char *key, const char **value) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *at = strstr(json, pattern);
    if (!at) return false;
    at = strchr(at + strlen(pattern), ':');
    if (!at) return false;
    for (at++; *at == ' ' || *at == '\t' || *at == '\n' || *at == '\r'; at++) {}
    *value = at;
    return true;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = cli_alloc(65537);
    size_t n = buf ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

typedef struct real_data {
    qsdpa_npy_array q, k, v; /* f32 [B,Hq,Lq,D], [B,Hkv,Lk,D] x2 */
    float scale;
    bool causal;
} real_data;

static int load(const char *dir, real_data *d) {
    const char *names[3] = {"q.npy", "k.npy", "v.npy"};
    qsdpa_npy_array *arrays[3] = {&d->q, &d->k, &d->v};
    char path[4096];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (qsdpa_npy_read(path, arrays[i]) != QSDPA_OK) {
            fprintf(stderr, "qsdpa %s: %s: %s\n", CMD, path, qsdpa_npy_error());
            return CLI_EXIT_FAIL; /* the caller frees what was read */
        }
        if (arrays[i]->type != QSDPA_NPY_F4 || arrays[i]->rank != 4) {
            fprintf(stderr, "qsdpa %s: %s must be a rank-4 float32 array\n", CMD, path);
            return CLI_EXIT_FAIL;
        }
    }
    snprintf(path, sizeof path, "%s/meta.json", dir);
    char *meta = read_text(path);
    const char *value;
    d->scale = 1.0f / sqrtf((float)d->q.shape[3]);
    d->causal = false;
    if (meta && json_value(meta, "scale", &value)) d->scale = strtof(value, NULL);
    if (meta && json_value(meta, "causal", &value)) d->causal = strncmp(value, "true", 4) == 0;
    if (!meta) fprintf(stderr, "qsdpa %s: no %s; using scale 1/sqrt(D), not causal\n", CMD, path);
    free(meta);
    return 0;
}

/* One K or V tensor in `format`, quantized from the f32 rows [B,H,L,D]. */
typedef struct built {
    qsdpa_qtensor t;
    void *codes, *scales, *biases;
    size_t bytes; /* cache bytes read by attention */
} built;

static int build(const qsdpa_npy_array *x, const qsdpa_format *f, built *b) {
    memset(b, 0, sizeof *b);
    int64_t B = x->shape[0], H = x->shape[1], L = x->shape[2], D = x->shape[3], rows = B * H * L;
    int64_t words = 0, groups = 0;
    if (qsdpa_format_row_words(f, D, &words) != QSDPA_OK) return CLI_EXIT_FAIL;
    qsdpa_format_row_scales(f, D, &groups);
    b->t.format = *f;
    b->t.dim = D;
    if (f->mode == QSDPA_MODE_PLAIN) {
        size_t elem = qsdpa_dtype_size(f->plain_dtype);
        b->codes = cli_alloc(elem * (size_t)(rows * D));
        if (!b->codes) return CLI_EXIT_FAIL;
        for (int64_t i = 0; i < rows * D; i++) cli_store(b->codes, f->plain_dtype, i, ((const float *)x->data)[i]);
        b->t.codes = qsdpa_tensor_4d(b->codes, f->plain_dtype, B, H, L, D);
        b->bytes = elem * (size_t)(rows * D);
        return 0;
    }
    /* scales in f16, as an f16/bf16 model's cache stores them (mlx-lm) */
    qsdpa_dtype sd = f->mode == QSDPA_MODE_AFFINE ? QSDPA_DTYPE_F16 : QSDPA_DTYPE_U8;
    size_t sbytes = qsdpa_dtype_size(sd) * (size_t)(rows * groups);
    b->codes = cli_alloc(4 * (size_t)(rows * words));
    b->scales = cli_alloc(sbytes);
    b->biases = qsdpa_format_has_biases(f) ? cli_alloc(sbytes) : NULL;
    if (!b->codes || !b->scales || (qsdpa_format_has_biases(f) && !b->biases)) return CLI_EXIT_FAIL; /* caller releases */
    qsdpa_status st = qsdpa_quantize(f, x->data, QSDPA_DTYPE_F32, rows, D, b->codes, b->scales, b->biases, sd);
    if (st != QSDPA_OK) return cli_library_error(CMD, "qsdpa_quantize", st);
    b->t.codes = qsdpa_tensor_4d(b->codes, QSDPA_DTYPE_U32, B, H, L, words);
    b->t.scales = qsdpa_tensor_4d(b->scales, sd, B, H, L, groups);
    b->t.biases = qsdpa_tensor_4d(b->biases, sd, B, H, L, groups);
    b->bytes = 4 * (size_t)(rows * words) + sbytes * (b->biases ? 2 : 1);
    return 0;
}

static void release(built *b) { /* and zero it: releasing twice is harmless */
    free(b->codes);
    free(b->scales);
    free(b->biases);
    memset(b, 0, sizeof *b);
}

/* max |x| of a built V, through the library's dequantize (what the kernels see). */
static float max_abs_of(const qsdpa_npy_array *x, const built *b) {
    int64_t n = x->count;
    float *deq = cli_alloc(sizeof(float) * (size_t)n), m = 0.0f;
    if (!deq) return 0.0f;
    const qsdpa_format *f = &b->t.format;
    if (f->mode == QSDPA_MODE_PLAIN)
        for (int64_t i = 0; i < n; i++) deq[i] = cli_load(b->codes, f->plain_dtype, i);
    else
        qsdpa_dequantize(f, b->codes, b->scales, b->biases, b->t.scales.dtype, n / x->shape[3], x->shape[3], deq,
                         QSDPA_DTYPE_F32);
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(deq[i]));
    free(deq);
    return m;
}

typedef struct bench_opts {
    const char *dir;
    const char *formats[32];
    int n_formats, runs, threads;
} bench_opts;

static int parse_pair(const char *text, qsdpa_format *kf, qsdpa_format *vf);

static int parse(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->runs = 20;
    for (int i = 1; i < argc; i++) /* help wherever it is, even as --data's would-be value */
        if (cli_is_help(argv[i])) {
            help();
            return -1;
        }
    for (int i = 1; i < argc; i++) {
        const char *v;
        int rc;
        if (cli_opt(argc, argv, &i, "--data", &v)) {
            if (!v) return cli_usage_error(CMD, "--data needs a folder");
            o->dir = v;
        } else if (cli_opt(argc, argv, &i, "--format", &v)) {
            if (!v) return cli_usage_error(CMD, "--format needs a value");
            if (o->n_formats == 32) return cli_usage_error(CMD, "at most 32 --format options");
            qsdpa_format kf, vf; /* checked now, before the data is read and its reference computed */
            if ((rc = parse_pair(v, &kf, &vf))) return rc;
            o->formats[o->n_formats++] = v;
        } else if (cli_opt(argc, argv, &i, "--runs", &v)) {
            if (!v) return cli_usage_error(CMD, "--runs needs a value");
            if ((rc = cli_parse_int(CMD, "--runs", v, 1, 100000, &o->runs))) return rc;
        } else if (cli_opt(argc, argv, &i, "--threads", &v)) {
            if (!v) return cli_usage_error(CMD, "--threads needs a value");
            if ((rc = cli_parse_int(CMD, "--threads", v, 0, 4096, &o->threads))) return rc;
        } else {
            return cli_unknown_arg(CMD, argv[i]);
        }
    }
    if (!o->dir) return cli_usage_error(CMD, "--data DIR is required");
    if (!o->n_formats) {
        for (int i = 0; i < DEFAULT_FORMAT_COUNT; i++) o->formats[i] = default_formats[i];
        o->n_formats = DEFAULT_FORMAT_COUNT;
    }
    return 0;
}

/* "F" or "KF/VF" -> K and V formats. */
static int parse_pair(const char *text, qsdpa_format *kf, qsdpa_format *vf) {
    char k[64], *slash;
    snprintf(k, sizeof k, "%s", text);
    slash = strchr(k, '/');
    if (slash) *slash = '\0';
    int rc = cli_parse_format(CMD, "--format", k, kf);
    if (!rc) rc = cli_parse_format(CMD, "--format", slash ? slash + 1 : k, vf);
    return rc;
}

static qsdpa_status attend(qsdpa_context *ctx, const real_data *d, const built *k, const built *v,
                           qsdpa_tensor *q, float *out) {
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = d->scale;
    p.causal = d->causal;
    qsdpa_tensor o = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, d->q.shape[0], d->q.shape[1], d->q.shape[2],
                                     d->v.shape[3]);
    return qsdpa_attention(ctx, q, &k->t, &v->t, &p, &o);
}

int cli_bench_data(int argc, char **argv) {
    bench_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    /* everything below is released at `done`, whichever step fails */
    real_data d;
    memset(&d, 0, sizeof d);
    qsdpa_context *ctx = NULL, *ref = NULL;
    float *out = NULL, *expect = NULL, *exact = NULL;
    built k32, v32, kb, vb;
    memset(&k32, 0, sizeof k32);
    memset(&v32, 0, sizeof v32);
    memset(&kb, 0, sizeof kb);
    memset(&vb, 0, sizeof vb);
    int failures = 0;
    if ((rc = load(o.dir, &d))) goto done;
    qsdpa_context_options co = qsdpa_context_default_options();
    co.num_threads = o.threads;
    qsdpa_status st = qsdpa_context_create(&co, &ctx);
    co.kernel = "cpu.reference";
    if (st == QSDPA_OK) st = qsdpa_context_create(&co, &ref);
    if (st != QSDPA_OK) {
        rc = cli_library_error(CMD, "qsdpa_context_create", st);
        goto done;
    }

    qsdpa_tensor q = qsdpa_tensor_4d(d.q.data, QSDPA_DTYPE_F32, d.q.shape[0], d.q.shape[1], d.q.shape[2], d.q.shape[3]);
    int64_t n_out = d.q.shape[0] * d.q.shape[1] * d.q.shape[2] * d.v.shape[3];
    out = cli_alloc(sizeof(float) * (size_t)n_out);
    expect = cli_alloc(sizeof(float) * (size_t)n_out);
    exact = cli_alloc(sizeof(float) * (size_t)n_out);
    qsdpa_format f32;
    qsdpa_format_parse("f32", &f32);
    if (!out || !expect || !exact || build(&d.k, &f32, &k32) || build(&d.v, &f32, &v32)) {
        rc = CLI_EXIT_FAIL;
        goto done;
    }
    if ((st = attend(ref, &d, &k32, &v32, &q, exact)) != QSDPA_OK) {
        rc = cli_library_error(CMD, "qsdpa_attention", st);
        goto done;
    }

    printf("real data %s: q [%lld,%lld,%lld,%lld], K/V [%lld,%lld,%lld,%lld], scale %g, causal %d, %d runs\n", o.dir,
           (long long)d.q.shape[0], (long long)d.q.shape[1], (long long)d.q.shape[2], (long long)d.q.shape[3],
           (long long)d.k.shape[0], (long long)d.k.shape[1], (long long)d.k.shape[2], (long long)d.k.shape[3],
           (double)d.scale, d.causal, o.runs);
    printf("%-24s %-18s %10s %9s %8s %14s %14s\n", "format (K/V)", "kernel", "time_ms", "KV_MB", "GB/s",
           "err/ref(|V|)", "err/f32(|V|)");
    for (int fi = 0; fi < o.n_formats; fi++) {
        qsdpa_format kf, vf;
        if ((rc = parse_pair(o.formats[fi], &kf, &vf))) goto done;
        if (build(&d.k, &kf, &kb) || build(&d.v, &vf, &vb)) {
            printf("%-24s   not applicable at D=%lld\n", o.formats[fi], (long long)d.k.shape[3]);
            release(&kb);
            release(&vb);
            continue;
        }
        float vmax = max_abs_of(&d.v, &vb);
        const char *kernel = "?";
        qsdpa_attention_params p = qsdpa_attention_default_params();
        p.scale = d.scale;
        p.causal = d.causal;
        qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, d.q.shape[0], d.q.shape[1], d.q.shape[2], d.v.shape[3]);
        qsdpa_attention_select(ctx, &q, &kb.t, &vb.t, &p, &ot, &kernel);
        double times[1024];
        int n = o.runs < 1024 ? o.runs : 1024;
        st = attend(ref, &d, &kb, &vb, &q, expect);
        for (int r = -1; st == QSDPA_OK && r < n; r++) { /* r = -1: warm-up */
            double t0 = cli_now();
            st = attend(ctx, &d, &kb, &vb, &q, out);
            if (r >= 0) times[r] = cli_now() - t0;
        }
        if (st != QSDPA_OK) {
            rc = cli_library_error(CMD, "qsdpa_attention", st);
            goto done;
        }
        double ms = 1e3 * cli_median(times, n), mb = (double)(kb.bytes + vb.bytes) / 1e6;
        double err_ref = cli_max_abs_diff(out, expect, QSDPA_DTYPE_F32, n_out) / vmax;
        double err_f32 = cli_max_abs_diff(out, exact, QSDPA_DTYPE_F32, n_out) / vmax;
        bool ok = err_ref <= cli_tolerance(QSDPA_DTYPE_F32);
        failures += !ok;
        printf("%-24s %-18s %10.4f %9.3f %8.2f %14.3g %14.3g%s\n", o.formats[fi], kernel, ms, mb, mb / ms, err_ref,
               err_f32, ok ? "" : "  FAIL (SPEC 4)");
        release(&kb);
        release(&vb);
    }
    rc = failures ? CLI_EXIT_FAIL : 0;
done:
    release(&kb);
    release(&vb);
    release(&k32);
    release(&v32);
    free(out);
    free(expect);
    free(exact);
    qsdpa_npy_free(&d.q);
    qsdpa_npy_free(&d.k);
    qsdpa_npy_free(&d.v);
    qsdpa_context_destroy(ctx);
    qsdpa_context_destroy(ref);
    return rc;
}
