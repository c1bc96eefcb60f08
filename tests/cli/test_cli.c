/* The `qsdpa` tool end to end: help texts, exit code 2 with the flag named on
 * bad arguments, `info` listing every kernel-table row, `verify --quick`
 * passing, `demo --context 512` running, `run` failing cleanly on a missing
 * file, `bench --data` over the real tensors and, on .npy files written here, agreeing with the in-process
 * reference (f16 q, K affine 8-bit with bf16 scales, V mxfp4, rank-2 bool
 * mask, sinks). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#ifdef QSDPA_CLI_HAVE_NPY
#include "npy.h"
#endif

#ifndef QSDPA_CLI_EXE
/* tests/cli/tests.cmake passes the executable's path; without the tool
 * (QSDPA_BUILD_TOOLS=OFF) there is nothing to test. */
int main(void) {
    printf("SKIP: the qsdpa tool is not built (QSDPA_BUILD_TOOLS=OFF)\n");
    return 77;
}
#else

/* Run `qsdpa <args>` (stderr folded into stdout); returns the exit code and
 * the output in *out (caller frees). */
static int run(const char *args, char **out) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", QSDPA_CLI_EXE, args);
    FILE *f = popen(cmd, "r");
    if (!f) {
        *out = NULL;
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = test_alloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (!grown) break;
            buf = grown;
        }
    }
    buf[n] = '\0';
    int status = pclose(f);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Expect exit code `code` and every needle in the output. */
static void expect(const char *args, int code, const char *needle1, const char *needle2) {
    char *out;
    int rc = run(args, &out);
    CHECK(rc == code, "qsdpa %s: exit %d, want %d; output:\n%s", args, rc, code, out ? out : "");
    if (out && needle1) CHECK(strstr(out, needle1), "qsdpa %s: output lacks '%s':\n%s", args, needle1, out);
    if (out && needle2) CHECK(strstr(out, needle2), "qsdpa %s: output lacks '%s':\n%s", args, needle2, out);
    free(out);
}

static void test_help(void) {
    expect("--help", 0, "usage: qsdpa", "verify");
    const char *subs[] = {"demo", "verify", "run", "info", "bench"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        char args[64], needle[64];
        snprintf(args, sizeof args, "%s --help", subs[i]);
        snprintf(needle, sizeof needle, "usage: qsdpa %s", subs[i]);
        expect(args, 0, needle, NULL);
    }
}

/* Each bad invocation: its exit status and what the message must name. */
static void test_bad_arguments(void) {
    static const struct {
        const char *args;
        int code;
        const char *needle1, *needle2;
    } cases[] = {
        {"", 2, "usage", NULL},
        {"nosuch", 2, "nosuch", NULL},
        {"demo --bogus", 2, "--bogus", NULL},
        {"demo --context abc", 2, "--context", "abc"},
        {"demo --context 0", 2, "--context", NULL},
        {"demo --context", 2, "--context", NULL},
        {"demo --format affine:7:64", 2, "--format", "affine:7:64"},
        {"demo --dtype f64", 2, "--dtype", "f64"},
        {"demo --backend tpu", 2, "--backend", "tpu"},
        {"demo --heads-q 6 --heads-kv 4", 2, "--heads-q", NULL},
        {"demo --window 8", 2, "--window", NULL},
        {"demo --dim 96 --format affine:4:64", 2, "--dim", NULL},
        {"demo --kernel cpu.nosuch", 2, "--kernel", "cpu.nosuch"},
        {"run --dir /tmp --format mxfp4 --kernel cpu.nosuch --out /tmp/x.npy", 2, "--kernel", "cpu.nosuch"},
        {"verify --cases 0", 2, "--cases", NULL},
        {"verify --seed x1", 2, "--seed", "x1"},
        {"info --bogus", 2, "--bogus", NULL},
        {"run --format affine:4:64 --out /tmp/x.npy", 2, "--q", NULL},
        {"run --dir /tmp --out /tmp/x.npy", 2, "--format", NULL},
        {"run --dir /tmp --format nvfp5 --out /tmp/x.npy", 2, "--format", "nvfp5"},
        /* a flag where a value belongs is a missing value (it once became a file named --causal, exit 0) */
        {"run --dir /tmp --format affine:4:64 --out --causal", 2, "--out needs a file name", NULL},
        {"run --q-dtype", 2, "--q-dtype needs a value", NULL},
        {"demo --dim 100", 2, "--dim = 100", NULL}, /* the flag the user gave, not --dim-k */
        {"bench --contexts 64 --repeats abc", 2, "--repeats", "abc"},
        {"bench --contexts -64", 2, "--contexts", "-64"},
        {"bench --contexts 2305843009213693953", 2, "--contexts", NULL},
        {"bench --dim 12x", 2, "--dim", "12x"},
        {"bench --contexts ,,64,", 2, "--contexts", "no empty items"},
        {"bench --threads", 2, "--threads needs a value", NULL},
        {"bench --data --help", 0, "usage: qsdpa bench --data", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect(cases[i].args, cases[i].code, cases[i].needle1, cases[i].needle2);
}

static void test_info(void) {
    char *out;
    int rc = run("info", &out);
    CHECK(rc == 0, "qsdpa info: exit %d:\n%s", rc, out ? out : "");
    if (!out) return;
    CHECK(strstr(out, qsdpa_version()), "qsdpa info does not print the version %s", qsdpa_version());
    CHECK(strstr(out, "CPU features"), "qsdpa info does not print the CPU features");
    /* Every row of the one kernel table appears, by name. */
    for (int i = 0; i < qsdpa_kernel_count(); i++) {
        qsdpa_kernel_info k;
        CHECK(qsdpa_kernel_get(i, &k) == QSDPA_OK, "qsdpa_kernel_get(%d) failed", i);
        CHECK(strstr(out, k.name), "qsdpa info does not list kernel %s", k.name);
    }
    CHECK(qsdpa_kernel_count() > 0, "the kernel table is empty");
    free(out);
}

static void test_verify_demo_run(void) {
    char args[256];
    unsigned long long seed = (unsigned long long)test_seed();
    snprintf(args, sizeof args, "verify --quick --seed %llu", seed);
    expect(args, 0, "PASS", "worst err/tol");
    snprintf(args, sizeof args, "demo --context 512 --seed %llu", seed);
    expect(args, 0, "kernel:", "max error vs reference");
    expect("demo --context 64 --seed 010", 0, "seed 10", NULL); /* decimal, not octal */
    expect("run --dir /nonexistent-qsdpa-dir --format affine:4:64 --out /tmp/qsdpa_cli_test_out.npy", 1,
           "/nonexistent-qsdpa-dir", NULL);
    /* real tensors (SmolLM2, tests/data/real): every default format within SPEC 4 of the reference */
    expect("bench --data tests/data/real/smollm2_layer27 --runs 2", 0, "affine:4:64", "nvfp4");
    expect("bench --data /nonexistent-qsdpa-dir", 1, "/nonexistent-qsdpa-dir", NULL);
    expect("bench --data tests/data/real/smollm2_layer27 --runs 0", 2, "--runs", NULL);
    /* a folder with q.npy and no k.npy: the error names k.npy, and what was read is freed (LSan in CI) */
    if (system("mkdir -p /tmp/qsdpa_cli_data_q_only && cp tests/data/real/smollm2_layer27/q.npy "
               "/tmp/qsdpa_cli_data_q_only/ && rm -f /tmp/qsdpa_cli_data_q_only/k.npy") == 0)
        expect("bench --data /tmp/qsdpa_cli_data_q_only", 1, "k.npy", NULL);
    /* the CPU matrix at another shape and any format: MHA at D 96, 3-bit affine beside f16 */
    expect("bench --contexts 256 --no-prefill --repeats 1 --threads 1 --dim 96 --kv-heads 32 --format affine:3:32", 0,
           "B1 Hq32 Hkv32 D96", "affine:3:32");
    /* K and V in different formats, and a bad one named back */
    expect("bench --contexts 256 --no-prefill --repeats 1 --threads 1 --format mxfp8/mxfp4", 0, "mxfp8/mxfp4", "cpu.");
    expect("bench --contexts 256 --no-prefill --repeats 1 --format mxfp8/bogus", 1, "'bogus'", NULL);
    expect("bench --dim 2000", 2, "--dim", NULL);
    expect("bench --kv-heads 5", 2, "--kv-heads", NULL);
    expect("bench --contexts 256 --no-prefill --repeats 1 --dim 96 --format affine:4:64", 1, "group 64", NULL);
}


#ifdef QSDPA_CLI_HAVE_NPY
/* Write q/k/v/mask/sinks as .npy in dir, run `qsdpa run --dir`, compare out.npy
 * with qsdpa_attention through the reference kernel on the same bytes. */
static void test_run_roundtrip(void) {
    enum { B = 1, HQ = 4, HKV = 2, LQ = 3, LK = 77, D = 128, KW = D * 8 / 32, VW = D * 4 / 32 };
    test_rng rng;
    test_rng_init(&rng, test_seed() + 17);
    char dir[] = "/tmp/qsdpa_cli_run_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp failed");
    uint16_t *q = test_alloc(sizeof(uint16_t) * B * HQ * LQ * D);
    float *k = test_alloc(sizeof(float) * B * HKV * LK * D), *v = test_alloc(sizeof(float) * B * HKV * LK * D);
    uint32_t *kc = test_alloc(4 * B * HKV * LK * KW), *vc = test_alloc(4 * B * HKV * LK * VW);
    uint16_t *ks = test_alloc(2 * B * HKV * LK * (D / 64)), *kb = test_alloc(2 * B * HKV * LK * (D / 64));
    uint8_t *vs = test_alloc(B * HKV * LK * (D / 32)), *mask = test_alloc(LQ * LK);
    float sinks[HQ];
    test_fill_normal(&rng, q, QSDPA_DTYPE_F16, B * HQ * LQ * D, 0.1);
    test_fill_normal(&rng, k, QSDPA_DTYPE_F32, B * HKV * LK * D, 0.1);
    test_fill_normal(&rng, v, QSDPA_DTYPE_F32, B * HKV * LK * D, 0.1);
    for (int i = 0; i < LQ * LK; i++) mask[i] = test_rng_uniform(&rng) >= 0.2;
    for (int h = 0; h < HQ; h++) sinks[h] = (float)test_rng_normal(&rng);
    qsdpa_format kf, vf;
    CHECK(qsdpa_format_parse("affine:8:64", &kf) == QSDPA_OK && qsdpa_format_parse("mxfp4", &vf) == QSDPA_OK,
          "format parse failed");
    CHECK(qsdpa_quantize(&kf, k, QSDPA_DTYPE_F32, B * HKV * LK, D, kc, ks, kb, QSDPA_DTYPE_BF16) == QSDPA_OK,
          "quantize K: %s", qsdpa_last_error());
    CHECK(qsdpa_quantize(&vf, v, QSDPA_DTYPE_F32, B * HKV * LK, D, vc, vs, NULL, QSDPA_DTYPE_U8) == QSDPA_OK,
          "quantize V: %s", qsdpa_last_error());
    struct { const char *name; qsdpa_npy_type type; int rank; int64_t shape[4]; const void *data; } files[] = {
        {"q.npy", QSDPA_NPY_F2, 4, {B, HQ, LQ, D}, q},
        {"k.npy", QSDPA_NPY_U4, 4, {B, HKV, LK, KW}, kc},
        {"k_scales.npy", QSDPA_NPY_U2, 4, {B, HKV, LK, D / 64}, ks},
        {"k_biases.npy", QSDPA_NPY_U2, 4, {B, HKV, LK, D / 64}, kb},
        {"v.npy", QSDPA_NPY_U4, 4, {B, HKV, LK, VW}, vc},
        {"v_scales.npy", QSDPA_NPY_U1, 4, {B, HKV, LK, D / 32}, vs},
        {"mask.npy", QSDPA_NPY_B1, 2, {LQ, LK}, mask},
        {"sinks.npy", QSDPA_NPY_F4, 1, {HQ}, sinks},
    };
    char path[256], args[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
        CHECK(qsdpa_npy_write(path, files[i].type, files[i].rank, files[i].shape, files[i].data) == QSDPA_OK,
              "writing %s: %s", path, qsdpa_npy_error());
    }
    snprintf(args, sizeof args, "run --dir %s --k-format affine:8:64 --v-format mxfp4 --out %s/out.npy", dir, dir);
    expect(args, 2, "--scale-dtype", NULL); /* bf16 scales travel as uint16: the flag is required */
    snprintf(args, sizeof args,
             "run --dir %s --k-format affine:8:64 --v-format mxfp4 --scale-dtype bf16 --threads 2 --out %s/out.npy",
             dir, dir);
    expect(args, 0, NULL, NULL);
    /* plain rows from a folder: no scale files to find */
    {
        char pdir[] = "/tmp/qsdpa_cli_plain_XXXXXX";
        CHECK(mkdtemp(pdir) != NULL, "mkdtemp failed");
        const int64_t qs[4] = {B, HQ, LQ, D}, kvs[4] = {B, HKV, LK, D};
        const char *names[] = {"q.npy", "k.npy", "v.npy", "out.npy"};
        float *qf = test_alloc(sizeof(float) * B * HQ * LQ * D);
        test_fill_normal(&rng, qf, QSDPA_DTYPE_F32, B * HQ * LQ * D, 0.1);
        for (int f = 0; f < 3; f++) {
            snprintf(path, sizeof path, "%s/%s", pdir, names[f]);
            CHECK(qsdpa_npy_write(path, QSDPA_NPY_F4, 4, f ? kvs : qs, f == 0 ? (void *)qf : f == 1 ? (void *)k : (void *)v) ==
                      QSDPA_OK,
                  "writing %s: %s", path, qsdpa_npy_error());
        }
        snprintf(args, sizeof args, "run --dir %s --format f32 --out %s/out.npy", pdir, pdir);
        expect(args, 0, NULL, NULL);
        for (int f = 0; f < 4; f++) {
            snprintf(path, sizeof path, "%s/%s", pdir, names[f]);
            remove(path);
        }
        rmdir(pdir);
        free(qf);
    }

    /* The same problem in process, through the reference kernel. */
    qsdpa_tensor tq = qsdpa_tensor_4d(q, QSDPA_DTYPE_F16, B, HQ, LQ, D);
    qsdpa_qtensor tk = {kf, qsdpa_tensor_4d(kc, QSDPA_DTYPE_U32, B, HKV, LK, KW),
                        qsdpa_tensor_4d(ks, QSDPA_DTYPE_BF16, B, HKV, LK, D / 64),
                        qsdpa_tensor_4d(kb, QSDPA_DTYPE_BF16, B, HKV, LK, D / 64), D};
    qsdpa_qtensor tv = {vf, qsdpa_tensor_4d(vc, QSDPA_DTYPE_U32, B, HKV, LK, VW),
                        qsdpa_tensor_4d(vs, QSDPA_DTYPE_U8, B, HKV, LK, D / 32), {0}, D};
    tv.biases.dtype = QSDPA_DTYPE_U8;
    int64_t mshape[2] = {LQ, LK}, hq = HQ;
    qsdpa_tensor tmask = qsdpa_tensor_make(mask, QSDPA_DTYPE_BOOL, 2, mshape);
    qsdpa_tensor tsinks = qsdpa_tensor_make(sinks, QSDPA_DTYPE_F32, 1, &hq);
    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = 1.0f / sqrtf((float)D);
    params.mask = &tmask;
    params.sinks = &tsinks;
    uint16_t *ref = test_alloc(2 * B * HQ * LQ * D);
    test_poison(ref, 2 * B * HQ * LQ * D);
    qsdpa_tensor tref = qsdpa_tensor_4d(ref, QSDPA_DTYPE_F16, B, HQ, LQ, D);
    qsdpa_context_options opt = qsdpa_context_default_options();
    opt.kernel = "cpu.reference";
    qsdpa_context *ctx = NULL;
    CHECK(qsdpa_context_create(&opt, &ctx) == QSDPA_OK, "context: %s", qsdpa_last_error());
    CHECK(ctx && qsdpa_attention(ctx, &tq, &tk, &tv, &params, &tref) == QSDPA_OK, "reference: %s",
          qsdpa_last_error());
    qsdpa_context_destroy(ctx);

    qsdpa_npy_array out = {0};
    snprintf(path, sizeof path, "%s/out.npy", dir);
    CHECK(qsdpa_npy_read(path, &out) == QSDPA_OK, "reading %s: %s", path, qsdpa_npy_error());
    if (out.data) {
        CHECK(out.type == QSDPA_NPY_F2 && out.rank == 4 && out.shape[0] == B && out.shape[1] == HQ &&
                  out.shape[2] == LQ && out.shape[3] == D,
              "out.npy has type %d rank %d, want f16 [%d,%d,%d,%d]", (int)out.type, out.rank, B, HQ, LQ, D);
        double worst = 0.0, max_v = 0.0;
        float *vd = test_alloc(sizeof(float) * B * HKV * LK * D);
        qsdpa_dequantize(&vf, vc, vs, NULL, QSDPA_DTYPE_U8, B * HKV * LK, D, vd, QSDPA_DTYPE_F32);
        for (int i = 0; i < B * HKV * LK * D; i++) max_v = fmax(max_v, fabs(vd[i]));
        for (int64_t i = 0; i < out.count && i < B * HQ * LQ * D; i++) {
            double e = fabs((double)qsdpa_load_float(out.data, QSDPA_DTYPE_F16, i) - qsdpa_load_float(ref, QSDPA_DTYPE_F16, i));
            worst = isnan(e) || e > worst ? (isnan(e) ? INFINITY : e) : worst;
        }
        CHECK(worst <= 2e-3 * max_v, "qsdpa run vs reference: max error %g > 2e-3 * max|V| = %g", worst, 2e-3 * max_v);
        printf("run round trip: max error %.3g (tolerance %.3g)\n", worst, 2e-3 * max_v);
        free(vd);
    }
    qsdpa_npy_free(&out);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
        remove(path);
    }
    snprintf(path, sizeof path, "%s/out.npy", dir);
    remove(path);
    rmdir(dir);
    free(q), free(k), free(v), free(kc), free(vc), free(ks), free(kb), free(vs), free(mask), free(ref);
}
#else
static void test_run_roundtrip(void) { printf("run round trip: not built (no tools/npy)\n"); }
#endif

int main(void) {
    test_help();
    test_bad_arguments();
    test_info();
    test_verify_demo_run();
    test_run_roundtrip();
    return test_finish("test_cli");
}
#endif
