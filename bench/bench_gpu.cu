/* GPU benchmark of qsdpa_attention on a CUDA context (bench/gpu.sh runs it).
 *
 * Shape S: Hq 32, Hkv 8, D 128, f16 q; contexts 2K..128K, B 1 and 8, Lq 1/4/16,
 * formats affine 4/g64, affine 8/g64, mxfp4, mxfp8, nvfp4, K8V4 and f16 (the
 * same kernel over unquantized rows); prefill Lq = Lk = 4096 causal.
 * Method (bench/NOTES.md): caches are quantized on the device from random
 * data; enough copies rotate to exceed twice the L2, so every call streams
 * its cache from HBM; CUDA events time batches of 10 back-to-back calls,
 * median of 15 batches; bytes = the packed codes + scales + biases read once.
 * Beside that time each decode row prints the host's enqueue time per call and
 * the time per call of the same batch replayed from a CUDA graph (no host in
 * the loop), which separate launch cost from GPU time.
 * A device-to-device copy measured in the same run is the bandwidth ceiling.
 * Output: human-readable lines and machine-readable "RESULT," lines. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_check.h"
#include "qsdpa.h"
/* weak: gpu.sh links this benchmark against an earlier build of the library too, which may predate it */
#pragma weak qsdpa_context_last_route

#define QK(x)                                                                                          \
    do {                                                                                               \
        qsdpa_status s_ = (x);                                                                         \
        if (s_ != QSDPA_OK) {                                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, qsdpa_last_error());           \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* N(0,1)-ish f16 values from a hash (Box-Muller), never zeros */
__global__ void fill_random(__half *x, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed * 0x9E3779B9u;
        h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
        unsigned g = h * 0x27d4eb2du + 0x165667b1u;
        g ^= g >> 15;
        float u1 = ((h >> 8) + 1.0f) / 16777217.0f, u2 = (g >> 8) / 16777216.0f;
        x[i] = __float2half(sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2));
    }
}

/* the first n halves of buf rewritten as n floats over the same bytes (from the end, so no
 * value is overwritten before it is read; one thread: q is small) */
__global__ void widen_f16_in_place(__half *buf, size_t n) {
    float *f = (float *)buf;
    for (size_t i = n; i-- > 0;) f[i] = __half2float(buf[i]);
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* The one timing loop: `warm` unrecorded, then `reps` recorded repetitions of
 * enqueue() between two CUDA events; returns the median GPU time of a repetition
 * divided by `per` (calls per repetition) in us, and in *host_us (if given) the
 * median host time to enqueue one call. -1 if an enqueue or the events fail. */
template <class Enqueue>
static double event_median_us(cudaStream_t st, int warm, int reps, int per, Enqueue enqueue,
                              double *host_us = nullptr) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<double> gpu, host;
    bool ok = true;
    for (int rep = 0; ok && rep < warm + reps; rep++) {
        ok = cudaEventRecord(e0, st) == cudaSuccess;
        auto h0 = std::chrono::steady_clock::now();
        ok = ok && enqueue();
        auto h1 = std::chrono::steady_clock::now();
        ok = ok && cudaEventRecord(e1, st) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess;
        float ms = 0.0f;
        ok = ok && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
        if (rep < warm) continue;
        gpu.push_back(ms * 1e3 / per);
        host.push_back(std::chrono::duration<double, std::micro>(h1 - h0).count() / per);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (host_us) *host_us = ok ? median(host) : -1.0;
    return ok ? median(gpu) : -1.0;
}

struct kv_store { /* one cache copy: K and V */
    void *kc, *ks, *kb, *vc, *vs, *vb;
    qsdpa_qtensor k, v;
};

static size_t row_bytes(const qsdpa_format &f, int64_t dim) {
    int64_t words;
    qsdpa_format_row_words(&f, dim, &words);
    size_t b = (size_t)words * 4;
    if (f.mode == QSDPA_MODE_AFFINE) b += 2 * (size_t)(dim / f.group) * 2; /* f16 scale + bias */
    else if (f.mode != QSDPA_MODE_PLAIN) b += (size_t)(dim / f.group);
    return b;
}

static void make_tensor(qsdpa_context *ctx, const qsdpa_format &f, int64_t B, int64_t H, int64_t L, int64_t D,
                        __half *src, void **codes, void **scales, void **biases, qsdpa_qtensor *t) {
    int64_t words, rows = B * H * L;
    QK(qsdpa_format_row_words(&f, D, &words));
    bool plain = f.mode == QSDPA_MODE_PLAIN, affine = f.mode == QSDPA_MODE_AFFINE;
    int64_t groups = plain ? 0 : D / f.group;
    qsdpa_dtype sdt = affine ? QSDPA_DTYPE_F16 : QSDPA_DTYPE_U8;
    size_t ss = affine ? 2 : 1;
    CK(cudaMalloc(codes, (size_t)(rows * words) * 4));
    *scales = *biases = nullptr;
    if (!plain) CK(cudaMalloc(scales, (size_t)(rows * groups) * ss));
    if (affine) CK(cudaMalloc(biases, (size_t)(rows * groups) * ss));
    QK(qsdpa_quantize_device(ctx, &f, src, QSDPA_DTYPE_F16, rows, D, (uint32_t *)*codes, *scales, *biases, sdt));
    memset(t, 0, sizeof *t);
    t->format = f;
    t->dim = D;
    t->codes = qsdpa_tensor_4d(*codes, plain ? f.plain_dtype : QSDPA_DTYPE_U32, B, H, L, plain ? D : words);
    if (!plain) t->scales = qsdpa_tensor_4d(*scales, sdt, B, H, L, groups);
    if (affine) t->biases = qsdpa_tensor_4d(*biases, sdt, B, H, L, groups);
}

static double copy_bandwidth(cudaStream_t st) {
    size_t n = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    const double us = event_median_us(st, 3, 20, 1, [&] {
        return cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st) == cudaSuccess;
    });
    if (us <= 0.0) {
        fprintf(stderr, "copy timing failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        exit(1);
    }
    cudaFree(a);
    cudaFree(b);
    return 2.0 * n / (us * 1e-6) / 1e9;
}

struct result {
    double us, gbps;
    double host_us;  /* host time to enqueue one call (no synchronisation): the launch-rate floor */
    double graph_us; /* the same calls replayed from a CUDA graph: GPU time without host launches */
    const char *kernel;
    char route[64]; /* qsdpa_context_last_route: the path inside the kernel's table entry */
};

/* Per-call time of `batch` calls, call(i) for the next i of *it, captured once into a CUDA
 * graph and replayed (median of 15 replays), or -1 where capture or replay fails (reported,
 * never fatal: the stream timing above stands on its own). */
template <class Call>
static double time_graph(cudaStream_t st, Call call, int batch, int *it) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed) == cudaSuccess;
    for (int i = 0; ok && i < batch; i++) ok = call((*it)++) == QSDPA_OK;
    if (!ok) fprintf(stderr, "graph capture: %s\n", qsdpa_last_error());
    ok = cudaStreamEndCapture(st, &graph) == cudaSuccess && ok;
    ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    ok = ok && cudaGraphLaunch(exec, st) == cudaSuccess && cudaStreamSynchronize(st) == cudaSuccess;
    const double us = ok ? event_median_us(st, 0, 15, batch, [&] { return cudaGraphLaunch(exec, st) == cudaSuccess; })
                         : -1.0;
    ok = ok && us > 0.0;
    cudaError_t err = cudaGetLastError(); /* clear a capture error so later calls are unaffected */
    if (!ok) fprintf(stderr, "graph timing unavailable: %s\n", cudaGetErrorString(err));
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    return ok ? us : -1.0;
}

/* Time qsdpa_attention over `copies` rotating caches: median of 15 batches of 10 calls. */
static result time_attention(qsdpa_context *ctx, cudaStream_t st, const qsdpa_format &kf, const qsdpa_format &vf,
                             int64_t B, int64_t L, int64_t lq, bool causal, size_t l2, int64_t D = 128,
                             int64_t hkv_row = 0, int64_t dv_row = 0) {
    /* KV heads: hkv_row where given, else QSDPA_BENCH_HKV (1-32, dividing 32), 8 by default (32: MHA) */
    const char *hkv_env = getenv("QSDPA_BENCH_HKV");
    const int64_t hq = 32, hkv_set = hkv_row > 0 ? hkv_row : hkv_env ? atoll(hkv_env) : 8;
    const int64_t hkv = hkv_set >= 1 && hkv_set <= 32 && 32 % hkv_set == 0 ? hkv_set : 8;
    /* V's head dim where it differs from K's: dv_row where given, else QSDPA_BENCH_DV (e.g. 128 under D 192,
     * 512 under D 576: MLA-like caches) */
    const char *dv_env = getenv("QSDPA_BENCH_DV");
    const int64_t DV = dv_row > 0 ? dv_row : dv_env && atoll(dv_env) > 0 ? atoll(dv_env) : D;
    size_t cache_bytes = (size_t)(B * hkv * L) * (row_bytes(kf, D) + row_bytes(vf, DV));
    int copies = (int)std::min<size_t>(64, 2 * l2 / cache_bytes + 2);
    if (cache_bytes > ((size_t)8 << 30)) copies = 1;
    size_t src_n = (size_t)(B * hkv * L * std::max(D, DV));
    __half *src;
    CK(cudaMalloc(&src, src_n * 2));
    std::vector<kv_store> kv(copies);
    for (int c = 0; c < copies; c++) {
        fill_random<<<1024, 256, 0, st>>>(src, src_n, 17u + 2 * c);
        make_tensor(ctx, kf, B, hkv, L, D, src, &kv[c].kc, &kv[c].ks, &kv[c].kb, &kv[c].k);
        fill_random<<<1024, 256, 0, st>>>(src, src_n, 18u + 2 * c);
        make_tensor(ctx, vf, B, hkv, L, DV, src, &kv[c].vc, &kv[c].vs, &kv[c].vb, &kv[c].v);
    }
    /* QSDPA_BENCH_QDTYPE=f32: f32 q and out (the same values as the f16 ones), else f16 */
    const char *qdt_env = getenv("QSDPA_BENCH_QDTYPE");
    const bool q32 = qdt_env && !strcmp(qdt_env, "f32");
    const size_t qn = (size_t)(B * hq * lq * D), on = (size_t)(B * hq * lq * DV);
    __half *q, *out;
    CK(cudaMalloc(&q, qn * (q32 ? 4 : 2)));
    CK(cudaMalloc(&out, on * (q32 ? 4 : 2)));
    fill_random<<<256, 256, 0, st>>>(q, qn, 99u);
    if (q32) widen_f16_in_place<<<1, 1, 0, st>>>(q, qn);
    const qsdpa_dtype qdt = q32 ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_F16;
    qsdpa_tensor qt = qsdpa_tensor_4d(q, qdt, B, hq, lq, D);
    qsdpa_tensor ot = qsdpa_tensor_4d(out, qdt, B, hq, lq, DV);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 1.0f / sqrtf((float)D);
    p.causal = causal;
    result r;
    QK(qsdpa_attention_select(ctx, &qt, &kv[0].k, &kv[0].v, &p, &ot, &r.kernel));
    /* call i reads cache copy i % copies */
    auto call = [&](int i) { return qsdpa_attention(ctx, &qt, &kv[i % copies].k, &kv[i % copies].v, &p, &ot); };
    for (int i = 0; i < 3 * copies; i++) QK(call(i));
    snprintf(r.route, sizeof r.route, "%s", qsdpa_context_last_route ? qsdpa_context_last_route(ctx) : "");
    CK(cudaStreamSynchronize(st));
    int it = 0, batch = causal ? 3 : 10;
    r.us = event_median_us(st, 0, 15, batch, [&] {
        for (int i = 0; i < batch; i++)
            if (call(it++) != QSDPA_OK) return false;
        return true;
    }, &r.host_us);
    if (r.us <= 0.0) {
        fprintf(stderr, "attention timing failed: %s / %s\n", qsdpa_last_error(), cudaGetErrorString(cudaGetLastError()));
        exit(1);
    }
    r.gbps = cache_bytes / (r.us * 1e-6) / 1e9;
    /* the same batch captured once and replayed: what the GPU needs when the host
     * launches ahead of it (a serving loop with CUDA graphs) */
    r.graph_us = -1.0;
    if (!causal) r.graph_us = time_graph(st, call, batch, &it);
    for (auto &c : kv) {
        cudaFree(c.kc); cudaFree(c.ks); cudaFree(c.kb); cudaFree(c.vc); cudaFree(c.vs); cudaFree(c.vb);
    }
    cudaFree(src);
    cudaFree(q);
    cudaFree(out);
    return r;
}

int main(int argc, char **argv) {
    /* "quick": 32K only; "one FMT B L LQ [D [causal]]": a single configuration, any L and Lq (for ncu),
     * head dim D (default 128), causal if asked, FMT a name below, a format spec for both K and V
     * (qsdpa_format_parse: e.g. affine:3:64) or K's and V's specs apart (mxfp8/mxfp4);
     * "prefill [FMT]": the 4K causal prefill rows only (one format if named) */
    bool quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    bool one = argc > 5 && strcmp(argv[1], "one") == 0;
    bool prefill_only = argc > 1 && strcmp(argv[1], "prefill") == 0;
    const int64_t one_lq = one ? atoll(argv[5]) : 0, one_d = one && argc > 6 ? atoll(argv[6]) : 128;
    const bool one_causal = one && argc > 7 && strcmp(argv[7], "causal") == 0;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.stream = st;
    qsdpa_context *ctx;
    QK(qsdpa_context_create(&o, &ctx));
    double copy = copy_bandwidth(st);
    printf("# %s SMs=%d L2=%dMB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    printf("RESULT,copy,%.0f\n", copy);
    printf("d2d copy: %.0f GB/s\n", copy);

    struct fmt_row { const char *name, *k, *v; };
    std::vector<fmt_row> fmts = {
        {"affine4g64", "affine:4:64", "affine:4:64"}, {"affine8g64", "affine:8:64", "affine:8:64"},
        {"mxfp4", "mxfp4", "mxfp4"},                  {"mxfp8", "mxfp8", "mxfp8"},
        {"nvfp4", "nvfp4", "nvfp4"},                  {"k8v4g64", "affine:8:64", "affine:4:64"},
        {"f16", "f16", "f16"},
    };
    /* a name not above is a format spec for both K and V, or "KSPEC/VSPEC" (e.g. mxfp8/mxfp4) */
    static char kv_spec[2][64];
    if (one && std::none_of(fmts.begin(), fmts.end(), [&](const fmt_row &f) { return !strcmp(f.name, argv[2]); })) {
        const char *slash = strchr(argv[2], '/');
        snprintf(kv_spec[0], sizeof kv_spec[0], "%.*s", slash ? (int)(slash - argv[2]) : 63, argv[2]);
        snprintf(kv_spec[1], sizeof kv_spec[1], "%s", slash ? slash + 1 : argv[2]);
        fmts = {{argv[2], kv_spec[0], kv_spec[1]}};
    }
    const std::vector<int64_t> Ls = one ? std::vector<int64_t>{atoll(argv[4])} : std::vector<int64_t>{2048, 8192, 32768, 131072};
    printf("%-11s %2s %7s %3s | %9s %8s %6s | %7s %8s | kernel\n", "format", "B", "L", "Lq", "us", "GB/s", "%copy",
           "host us", "graph us");
    for (auto &f : fmts) {
        qsdpa_format kf, vf;
        QK(qsdpa_format_parse(f.k, &kf));
        QK(qsdpa_format_parse(f.v, &vf));
        for (int64_t B : {1, 8})
            for (int64_t L : Ls)
                for (int64_t lq : one ? std::vector<int64_t>{one_lq} : std::vector<int64_t>{1, 4, 16}) {
                    if (prefill_only) continue;
                    if (B == 8 && lq != 1) continue;
                    if (quick && (L != 32768 || lq == 16)) continue;
                    if (one && (strcmp(argv[2], f.name) || B != atoll(argv[3]) || L != atoll(argv[4]) ||
                                lq != atoll(argv[5])))
                        continue;
                    result r = time_attention(ctx, st, kf, vf, B, L, lq, one_causal, prop.l2CacheSize, one ? one_d : 128);
                    if (one && one_d != 128) printf("D=%lld ", (long long)one_d);
                    if (one_causal) printf("causal ");
                    printf("%-11s %2lld %7lld %3lld | %9.2f %8.0f %5.1f%% | %7.2f %8.2f | %s %s\n", f.name, (long long)B,
                           (long long)L, (long long)lq, r.us, r.gbps, 100.0 * r.gbps / copy, r.host_us, r.graph_us,
                           r.kernel, r.route);
                    printf("RESULT,decode,%s,%lld,%lld,%lld,%.3f,%.1f,%.2f,%s,%.3f,%.3f\n", f.name, (long long)B,
                           (long long)L, (long long)lq, r.us, r.gbps, 100.0 * r.gbps / copy, r.kernel, r.host_us,
                           r.graph_us);
                    fflush(stdout);
                }
    }
    /* Other head dims and a cache of exactly Lk keys (the full matrix only): the routes the D 128 matrix never
     * takes (padded D 96 at 32768 keys, realigned then padded at 32769, D 256, realigned and 4-byte-piece
     * scale planes at 32769 keys, affine 3 and 6 bits widened on the repacked path, nvfp4 at D 256, bf16 rows
     * padded at D 96, DeepSeek-like MLA: Dk 576 / Dv 512 over one KV head on the generic row's wide kernel),
     * so a regression there shows in the standard table. Human lines only: the RESULT lines key rows by
     * format, B, L and Lq. */
    if (!one && !quick && !prefill_only) {
        struct other_row { const char *name, *fmt; int64_t L, d, hkv = 0, dv = 0; };
        const other_row others[] = {{"affine4g64", "affine:4:64", 32769, 128}, {"affine4g64", "affine:4:64", 32769, 64},
                                    {"affine4g64", "affine:4:64", 32768, 256}, {"mxfp4", "mxfp4", 32768, 96},
                                    {"mxfp4", "mxfp4", 32769, 96},           {"affine4g32", "affine:4:32", 32768, 96},
                                    {"f16", "f16", 32768, 96},
                                    {"affine3g64", "affine:3:64", 32768, 128}, {"affine6g64", "affine:6:64", 32768, 128},
                                    {"nvfp4", "nvfp4", 32768, 256},          {"bf16", "bf16", 32768, 96},
                                    {"affine4g64", "affine:4:64", 32768, 576, 1, 512},
                                    {"f16", "f16", 32768, 576, 1, 512}};
        for (const other_row &o : others) {
            qsdpa_format f;
            QK(qsdpa_format_parse(o.fmt, &f));
            result r = time_attention(ctx, st, f, f, 1, o.L, 1, false, prop.l2CacheSize, o.d, o.hkv, o.dv);
            if (o.dv) printf("Dv=%lld Hkv=%lld ", (long long)o.dv, (long long)o.hkv);
            printf("D=%lld %-11s %2d %7lld %3d | %9.2f %8.0f %5.1f%% | %7.2f %8.2f | %s %s\n", (long long)o.d, o.name, 1,
                   (long long)o.L, 1, r.us, r.gbps, 100.0 * r.gbps / copy, r.host_us, r.graph_us, r.kernel, r.route);
            fflush(stdout);
        }
    }
    /* prefill: Lq = Lk = 4096, causal */
    for (auto &f : fmts) {
        if (one) break;
        if (strcmp(f.name, "affine4g64") && strcmp(f.name, "f16") && strcmp(f.name, "affine8g64")) continue;
        if (prefill_only && argc > 2 && strcmp(f.name, argv[2])) continue;
        qsdpa_format kf, vf;
        QK(qsdpa_format_parse(f.k, &kf));
        QK(qsdpa_format_parse(f.v, &vf));
        result r = time_attention(ctx, st, kf, vf, 1, 4096, 4096, true, prop.l2CacheSize);
        double flops = 4.0 * 32 * 4096.0 * 4096.0 * 128 / 2;
        printf("prefill 4K causal %-11s %9.1f us %6.0f TFLOP/s | %s %s\n", f.name, r.us, flops / (r.us * 1e-6) / 1e12,
               r.kernel, r.route);
        printf("RESULT,prefill,%s,1,4096,4096,%.3f,%.1f,0,%s\n", f.name, r.us, flops / (r.us * 1e-6) / 1e12, r.kernel);
        fflush(stdout);
    }
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(st);
    return 0;
}
