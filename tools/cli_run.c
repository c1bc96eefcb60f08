/* `qsdpa run`: attention over tensors read from .npy files, written to out.npy.
 * Shapes come from the .npy headers; the library validates them against each
 * other and its message is printed on error (exit 1). */
#define _POSIX_C_SOURCE 200809L /* strdup, stat */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

#define CMD "run"

static void help(void) {
    printf("usage: qsdpa run --q Q.npy --k K.npy --k-scales S.npy [--k-biases B.npy]\n"
           "                 --v V.npy --v-scales S.npy [--v-biases B.npy] --format F | --k-format F --v-format F\n"
           "                 [--mask M.npy] [--sinks S.npy] [--causal] [--window W] [--scale S]\n"
           "                 [--kernel NAME] [--threads N] [--backend cpu|cuda] --out OUT.npy\n"
           "       qsdpa run --dir D --format F [...] --out OUT.npy\n\n"
           "Computes softmax(scale * q K^T + mask) V over quantized K/V (as mx.quantize writes\n"
           "them) and writes out [B,Hq,Lq,Dv] in q's dtype.\n"
           "  q         [B,Hq,Lq,Dk] f32 or f16 (bf16: uint16 with --q-dtype bf16)\n"
           "  k, v      [B,Hkv,Lk,words] uint32 packed codes (plain formats: [B,Hkv,Lk,D] values)\n"
           "  scales    [B,Hkv,Lk,D/group]: affine f32/f16 (bf16: uint16 with --scale-dtype bf16),\n"
           "            fp formats uint8; biases: affine only, same dtype as scales\n"
           "  mask      bool (false = masked out) or float (added), rank <= 4, broadcastable\n"
           "            to [B,Hq,Lq,Lk]\n"
           "  sinks     [Hq] float\n"
           "  --dir D   reads D/q.npy, D/k.npy, D/k_scales.npy, D/v.npy, D/v_scales.npy and,\n"
           "            when present, D/k_biases.npy, D/v_biases.npy, D/mask.npy, D/sinks.npy\n"
           "  --format F       K and V format: affine:BITS:GROUP, mxfp4, mxfp8, nvfp4, f32, f16, bf16\n"
           "  --scale S        default 1/sqrt(Dk)\n"
           "  --k-global-scale G, --v-global-scale G   nvfp4 per-tensor global scale (SPEC 2)\n"
           "  --window W       sliding window (with --causal)\n"
           "  --kernel NAME    force a kernel-table row (see qsdpa info), e.g. cpu.reference\n"
           "exit: 0 ok, 1 library or file error (message printed), 2 bad usage\n");
}

enum { T_Q, T_K, T_KS, T_KB, T_V, T_VS, T_VB, T_MASK, T_SINKS, T_COUNT };
static const char *const tensor_flags[T_COUNT] = {"--q", "--k", "--k-scales", "--k-biases", "--v",
                                                  "--v-scales", "--v-biases", "--mask", "--sinks"};
static const char *const dir_files[T_COUNT] = {"q.npy", "k.npy", "k_scales.npy", "k_biases.npy", "v.npy",
                                               "v_scales.npy", "v_biases.npy", "mask.npy", "sinks.npy"};

typedef struct {
    char *path[T_COUNT]; /* owned copies, NULL = not given */
    const char *out, *k_format, *v_format, *kernel;
    qsdpa_format kf, vf;
    bool causal, have_scale, q_bf16, scale_bf16;
    int64_t window;
    float scale;
    float k_global, v_global; /* nvfp4 per-tensor global scales G (0 = none) */
    int threads;
    qsdpa_backend backend;
} run_options;

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char *join(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", dir, file);
    return s;
}

static int parse(int argc, char **argv, run_options *o, bool *help_shown) {
    const char *dir = NULL, *fmt = NULL, *v = NULL;
    qsdpa_format both = {0}; /* --format: K's and V's where --k-format / --v-format do not name them */
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int t;
        for (t = 0; t < T_COUNT; t++)
            if (cli_opt(argc, argv, &i, tensor_flags[t], &v)) break;
        if (t < T_COUNT) {
            if (!v) return cli_usage_error(CMD, "%s needs a file name", tensor_flags[t]);
            free(o->path[t]);
            o->path[t] = strdup(v);
            continue;
        }
        if (cli_is_help(a)) {
            help();
            *help_shown = true;
            return 0;
        } else if (cli_opt(argc, argv, &i, "--dir", &v)) {
            if (!(dir = v)) return cli_usage_error(CMD, "--dir needs a directory");
        } else if (cli_opt(argc, argv, &i, "--out", &v)) {
            if (!(o->out = v)) return cli_usage_error(CMD, "--out needs a file name");
        } else if (cli_opt(argc, argv, &i, "--format", &v)) {
            if (!(rc = cli_parse_format(CMD, "--format", v, &both))) fmt = v;
        } else if (cli_opt(argc, argv, &i, "--k-format", &v)) {
            if (!(rc = cli_parse_format(CMD, "--k-format", v, &o->kf))) o->k_format = v;
        } else if (cli_opt(argc, argv, &i, "--v-format", &v)) {
            if (!(rc = cli_parse_format(CMD, "--v-format", v, &o->vf))) o->v_format = v;
        } else if (cli_opt(argc, argv, &i, "--k-global-scale", &v)) {
            rc = cli_parse_float(CMD, "--k-global-scale", v, &o->k_global);
        } else if (cli_opt(argc, argv, &i, "--v-global-scale", &v)) {
            rc = cli_parse_float(CMD, "--v-global-scale", v, &o->v_global);
        } else if (strcmp(a, "--causal") == 0) o->causal = true;
        else if (cli_opt(argc, argv, &i, "--window", &v)) rc = cli_parse_i64(CMD, "--window", v, 0, INT64_MAX, &o->window);
        else if (cli_opt(argc, argv, &i, "--scale", &v)) {
            rc = cli_parse_float(CMD, "--scale", v, &o->scale);
            o->have_scale = true;
        } else if (cli_opt(argc, argv, &i, "--kernel", &v)) {
            rc = cli_parse_kernel(CMD, "--kernel", v, &o->kernel);
        } else if (cli_opt(argc, argv, &i, "--threads", &v)) rc = cli_parse_int(CMD, "--threads", v, 0, 1024, &o->threads);
        else if (cli_opt(argc, argv, &i, "--backend", &v)) rc = cli_parse_backend(CMD, "--backend", v, &o->backend);
        else if (cli_opt(argc, argv, &i, "--q-dtype", &v)) {
            if (!v) return cli_usage_error(CMD, "--q-dtype needs a value (bf16 or auto)");
            if (strcmp(v, "bf16") && strcmp(v, "auto"))
                return cli_usage_error(CMD, "--q-dtype = '%s' is not one of bf16, auto", v);
            o->q_bf16 = strcmp(v, "bf16") == 0;
        } else if (cli_opt(argc, argv, &i, "--scale-dtype", &v)) {
            if (!v) return cli_usage_error(CMD, "--scale-dtype needs a value (bf16 or auto)");
            if (strcmp(v, "bf16") && strcmp(v, "auto"))
                return cli_usage_error(CMD, "--scale-dtype = '%s' is not one of bf16, auto", v);
            o->scale_bf16 = strcmp(v, "bf16") == 0;
        } else rc = cli_unknown_arg(CMD, a);
    }
    if (rc) return rc;
    /* --k-format / --v-format win over --format whatever their order */
    if (fmt && !o->k_format) o->kf = both;
    if (fmt && !o->v_format) o->vf = both;
    o->kf.global_scale = o->k_global; /* checked by the library (nvfp4 only, > 0) */
    o->vf.global_scale = o->v_global;
    if (!fmt && !(o->k_format && o->v_format))
        return cli_usage_error(CMD, "the formats are missing: give --format F, or --k-format F and --v-format F");
    if (!o->out) return cli_usage_error(CMD, "--out OUT.npy is missing");
    if (dir) {
        for (int t = 0; t < T_COUNT; t++) {
            if (o->path[t]) continue;
            char *p = join(dir, dir_files[t]);
            if (!p) return CLI_EXIT_FAIL;
            /* scales are files of quantized formats only (plain rows have none) */
            bool required = t == T_Q || t == T_K || t == T_V || (t == T_KS && o->kf.mode != QSDPA_MODE_PLAIN) ||
                            (t == T_VS && o->vf.mode != QSDPA_MODE_PLAIN);
            if (required || file_exists(p)) o->path[t] = p;
            else free(p);
        }
    }
    for (int t = 0; t < T_COUNT; t++) {
        bool required = t == T_Q || t == T_K || t == T_V ||
                        ((t == T_KS && o->kf.mode != QSDPA_MODE_PLAIN) || (t == T_VS && o->vf.mode != QSDPA_MODE_PLAIN));
        if (required && !o->path[t])
            return cli_usage_error(CMD, "%s FILE.npy is missing (or give --dir D)", tensor_flags[t]);
    }
    if (o->window && !o->causal) return cli_usage_error(CMD, "--window = %lld needs --causal", (long long)o->window);
    return 0;
}

static int execute(const run_options *o);

int cli_run(int argc, char **argv) {
    run_options o;
    memset(&o, 0, sizeof o);
    bool help_shown = false;
    int rc = parse(argc, argv, &o, &help_shown);
    if (!rc && !help_shown) rc = execute(&o);
    for (int t = 0; t < T_COUNT; t++) free(o.path[t]);
    return rc;
}

/* ---- execution ------------------------------------------------------------ */
#ifdef QSDPA_CLI_HAVE_NPY
#include <math.h>

#include "npy.h"

typedef struct {
    qsdpa_npy_array a[T_COUNT]; /* data NULL = not given */
    qsdpa_tensor t[T_COUNT];    /* views of the arrays (device pointers for CUDA) */
    void *device[T_COUNT];      /* CUDA copies, NULL on the host path */
} run_inputs;

static int file_error(const char *what, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static int file_error(const char *what, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qsdpa run: %s: ", what);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EXIT_FAIL;
}

/* qsdpa dtype of an array as its role reads it; uint16 only where bf16 was asked for. */
static int dtype_of(const run_options *o, int t, const qsdpa_npy_array *a, qsdpa_dtype *out) {
    bool bf16_ok = (t == T_Q && o->q_bf16) || ((t == T_KS || t == T_KB || t == T_VS || t == T_VB) && o->scale_bf16) ||
                   t == T_MASK || t == T_SINKS || (t == T_K && o->kf.mode == QSDPA_MODE_PLAIN) ||
                   (t == T_V && o->vf.mode == QSDPA_MODE_PLAIN);
    if (a->type == QSDPA_NPY_U2 && !bf16_ok)
        return cli_usage_error(CMD, "%s '%s' is uint16: for bf16 data pass %s bf16", tensor_flags[t], o->path[t],
                               t == T_Q ? "--q-dtype" : "--scale-dtype");
    int d = qsdpa_npy_type_dtype(a->type);
    if (d < 0) return file_error(o->path[t], "has an element type (%s) qsdpa cannot use", qsdpa_npy_type_descr(a->type));
    *out = (qsdpa_dtype)d;
    return 0;
}

static int load(const run_options *o, run_inputs *in) {
    for (int t = 0; t < T_COUNT; t++) {
        if (!o->path[t]) continue;
        if (qsdpa_npy_read(o->path[t], &in->a[t]) != QSDPA_OK)
            return file_error(tensor_flags[t], "cannot read '%s': %s", o->path[t], qsdpa_npy_error());
        qsdpa_dtype dt = QSDPA_DTYPE_F32;
        int rc = dtype_of(o, t, &in->a[t], &dt);
        if (rc) return rc;
        if (in->a[t].rank < 1)
            return file_error(o->path[t], "is a scalar (rank 0); %s needs an array", tensor_flags[t]);
        in->t[t] = qsdpa_tensor_make(in->a[t].data, dt, in->a[t].rank, in->a[t].shape);
    }
    const qsdpa_npy_array *q = &in->a[T_Q];
    if (q->rank != 4) return file_error(o->path[T_Q], "q has rank %d; it must be [B,Hq,Lq,Dk]", q->rank);
    return 0;
}

/* Logical head dim of K or V from its packed width (PLAIN: the last dim). */
static int64_t logical_dim(const qsdpa_format *f, const qsdpa_tensor *codes) {
    int64_t last = codes->shape[codes->rank - 1];
    if (f->mode == QSDPA_MODE_PLAIN || f->bits <= 0) return last;
    return last * 32 / f->bits;
}

static int upload(const run_options *o, run_inputs *in) {
    for (int t = 0; t < T_COUNT; t++) {
        if (!in->a[t].data) continue;
        size_t bytes = (size_t)in->a[t].count * qsdpa_npy_type_size(in->a[t].type);
        if (!(in->device[t] = cli_device_upload(in->a[t].data, bytes)))
            return file_error(tensor_flags[t], "cannot copy '%s' to the device", o->path[t]);
        in->t[t].data = in->device[t];
    }
    return 0;
}

static int execute(const run_options *o) {
    run_inputs in;
    memset(&in, 0, sizeof in);
    void *out = NULL, *dout = NULL;
    qsdpa_context *ctx = NULL;
    bool cuda = o->backend == QSDPA_BACKEND_CUDA;
    int rc = load(o, &in);
    if (rc) goto done;
    /* the context first: without a usable device it says so, where an upload would fail obscurely */
    qsdpa_context_options opt = qsdpa_context_default_options();
    opt.backend = o->backend;
    opt.num_threads = o->threads;
    opt.kernel = o->kernel;
    qsdpa_status st = qsdpa_context_create(&opt, &ctx);
    if (st != QSDPA_OK) { rc = cli_library_error(CMD, "qsdpa_context_create", st); goto done; }
    if (cuda && (rc = upload(o, &in))) goto done;

    qsdpa_qtensor k, v;
    memset(&k, 0, sizeof k);
    memset(&v, 0, sizeof v);
    k.format = o->kf, v.format = o->vf;
    k.codes = in.t[T_K], k.scales = in.t[T_KS], k.biases = in.t[T_KB];
    v.codes = in.t[T_V], v.scales = in.t[T_VS], v.biases = in.t[T_VB];
    if (!k.biases.data) k.biases.dtype = k.scales.dtype;
    if (!v.biases.data) v.biases.dtype = v.scales.dtype;
    const qsdpa_tensor *tq = &in.t[T_Q];
    k.dim = tq->shape[3];
    v.dim = logical_dim(&o->vf, &v.codes);

    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = o->have_scale ? o->scale : (float)(1.0 / sqrt((double)k.dim));
    params.causal = o->causal;
    params.window = o->window;
    params.mask = in.a[T_MASK].data ? &in.t[T_MASK] : NULL;
    params.sinks = in.a[T_SINKS].data ? &in.t[T_SINKS] : NULL;

    int64_t shape[4] = {tq->shape[0], tq->shape[1], tq->shape[2], v.dim};
    size_t out_bytes = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]) * qsdpa_dtype_size(tq->dtype);
    if (!(out = cli_alloc(out_bytes))) { rc = CLI_EXIT_FAIL; goto done; }
    memset(out, 0xFF, out_bytes);
    if (cuda && !(dout = cli_device_upload(out, out_bytes))) { rc = CLI_EXIT_FAIL; goto done; }
    qsdpa_tensor tout = qsdpa_tensor_make(cuda ? dout : out, tq->dtype, 4, shape);

    st = qsdpa_attention(ctx, tq, &k, &v, &params, &tout);
    if (st != QSDPA_OK) { rc = cli_library_error(CMD, "qsdpa_attention", st); goto done; }
    if (cuda && ((rc = cli_device_sync()) || (rc = cli_device_download(out, dout, out_bytes)))) goto done;

    qsdpa_npy_type type = tq->dtype == QSDPA_DTYPE_F32 ? QSDPA_NPY_F4 : tq->dtype == QSDPA_DTYPE_F16 ? QSDPA_NPY_F2 : QSDPA_NPY_U2;
    if (qsdpa_npy_write(o->out, type, 4, shape, out) != QSDPA_OK)
        rc = file_error("--out", "cannot write '%s': %s", o->out, qsdpa_npy_error());
    else
        printf("wrote %s [%lld, %lld, %lld, %lld] %s (kernel %s)\n", o->out, (long long)shape[0], (long long)shape[1],
               (long long)shape[2], (long long)shape[3], qsdpa_dtype_name(tq->dtype), qsdpa_context_last_route(ctx));
done:
    qsdpa_context_destroy(ctx);
    cli_device_free(dout);
    free(out);
    for (int t = 0; t < T_COUNT; t++) {
        cli_device_free(in.device[t]);
        qsdpa_npy_free(&in.a[t]);
    }
    return rc;
}
#else
static int execute(const run_options *o) {
    (void)o;
    fprintf(stderr, "qsdpa run: this binary was built without the .npy reader (tools/npy.cmake)\n");
    return CLI_EXIT_FAIL;
}
#endif
