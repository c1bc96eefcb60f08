/* A cache on a CUDA device against the same cache on the host: the same rows
 * appended (device copies for the device cache) in random chunks must give
 * the same stored bytes (qsdpa_quantize_device is bit-exact with the host
 * quantizer), attend on the device must match the CPU reference over those
 * bytes (SPEC §4), and trim/save/load must round-trip between host and
 * device. Skips (77) without a CUDA build or device. */
#include "cache_fixture.h"

#ifndef QSDPA_TEST_CUDA
int main(void) {
    printf("SKIP: built without the CUDA backend\n");
    return 77;
}
#else
#include <cuda_runtime.h>

static void *to_device(const void *host, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(2);
    }
    cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    return d;
}

/* Bytes of a [B,H,L,W] slab-strided view, device or host, into a dense host buffer. */
static unsigned char *dense(const qsdpa_tensor *t, int device) {
    size_t es = qsdpa_dtype_size(t->dtype), row = (size_t)t->shape[3] * es, n = row * (size_t)t->shape[2];
    size_t total = n * (size_t)(t->shape[0] * t->shape[1]);
    unsigned char *out = test_alloc(total + 1);
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t h = 0; h < t->shape[1]; h++) {
            const char *src = (const char *)t->data + (size_t)(b * t->stride[0] + h * t->stride[1]) * es;
            unsigned char *dst = out + (size_t)(b * t->shape[1] + h) * n;
            if (n == 0) continue;
            if (device) cudaMemcpy2D(dst, row, src, (size_t)t->stride[2] * es, row, (size_t)t->shape[2], cudaMemcpyDeviceToHost);
            else
                for (int64_t l = 0; l < t->shape[2]; l++) memcpy(dst + (size_t)l * row, src + (size_t)(l * t->stride[2]) * es, row);
        }
    return out;
}

static size_t tensor_bytes(const qsdpa_tensor *t) {
    return (size_t)(t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3]) * qsdpa_dtype_size(t->dtype);
}

static void same_tensor(const qsdpa_tensor *a, int adev, const qsdpa_tensor *b, int bdev, const char *what) {
    if (!a->data && !b->data) return;
    CHECK(a->shape[2] == b->shape[2], "%s: %lld vs %lld rows", what, (long long)a->shape[2], (long long)b->shape[2]);
    if (a->shape[2] != b->shape[2]) return;
    unsigned char *x = dense(a, adev), *y = dense(b, bdev);
    CHECK(memcmp(x, y, tensor_bytes(a)) == 0, "%s: stored bytes differ between host and device caches", what);
    free(x);
    free(y);
}

static void same_layer(const qsdpa_cache *a, int adev, const qsdpa_cache *b, int bdev, int64_t layer) {
    for (int part = 0; part < 2; part++) {
        qsdpa_qtensor ak, av, bk, bv;
        qsdpa_cache_view(a, layer, (qsdpa_cache_part)part, &ak, &av);
        qsdpa_cache_view(b, layer, (qsdpa_cache_part)part, &bk, &bv);
        const qsdpa_qtensor *x[2] = {&ak, &av}, *y[2] = {&bk, &bv};
        for (int s = 0; s < 2; s++) {
            same_tensor(&x[s]->codes, adev, &y[s]->codes, bdev, part ? "window" : "codes");
            if (x[s]->scales.rank) same_tensor(&x[s]->scales, adev, &y[s]->scales, bdev, "scales");
            if (x[s]->biases.rank) same_tensor(&x[s]->biases, adev, &y[s]->biases, bdev, "biases");
        }
    }
}

/* wdt: dtype of the appended rows, and of the window (a device window takes rows as given). */
static void run(test_rng *rng, qsdpa_context *cpu, qsdpa_context *ref, qsdpa_context *gpu, const char *kf,
                const char *vf, int64_t residual, qsdpa_dtype wdt) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.layers = 2;
    o.batch = 2;
    o.heads_kv = 2;
    o.dim_k = 128;
    o.dim_v = 128;
    o.step = 32;
    o.residual = residual;
    o.residual_dtype = wdt;
    qsdpa_format_parse(kf, &o.k_format);
    qsdpa_format_parse(vf, &o.v_format);
    qsdpa_cache *hc = NULL, *dc = NULL;
    CHECK(qsdpa_cache_create(cpu, &o, &hc) == QSDPA_OK, "create host: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_create(gpu, &o, &dc) == QSDPA_OK, "create device: %s", qsdpa_last_error());
    if (!hc || !dc) return;
    int64_t len = 0;
    for (int step = 0; step < 14; step++) {
        int64_t T = step == 0 ? 45 : test_rng_int(rng, 1, 3);
        for (int64_t l = 0; l < o.layers; l++) {
            size_t n = (size_t)(o.batch * o.heads_kv * T * 128), es = qsdpa_dtype_size(wdt);
            void *k = test_alloc(n * es), *v = test_alloc(n * es);
            test_fill_normal(rng, k, wdt, (int64_t)n, 1.0);
            test_fill_normal(rng, v, wdt, (int64_t)n, 1.0);
            void *dk = to_device(k, n * es), *dv = to_device(v, n * es);
            qsdpa_tensor hk = qsdpa_tensor_4d(k, wdt, o.batch, o.heads_kv, T, 128);
            qsdpa_tensor hv = qsdpa_tensor_4d(v, wdt, o.batch, o.heads_kv, T, 128);
            qsdpa_tensor tk = hk, tv = hv;
            tk.data = dk;
            tv.data = dv;
            CHECK(qsdpa_cache_append(cpu, hc, l, &hk, &hv) == QSDPA_OK, "host append: %s", qsdpa_last_error());
            CHECK(qsdpa_cache_append(gpu, dc, l, &tk, &tv) == QSDPA_OK, "device append: %s", qsdpa_last_error());
            if (step == 0)
                CHECK(qsdpa_cache_append(gpu, dc, l, &hk, &hv) == QSDPA_ERR_INVALID_ARGUMENT,
                      "host rows appended to a device cache");
            cudaDeviceSynchronize();
            cudaFree(dk);
            cudaFree(dv);
            free(k);
            free(v);
        }
        len += T;
        if (step == 7) {
            CHECK(qsdpa_cache_trim(hc, 2) == QSDPA_OK && qsdpa_cache_trim(dc, 2) == QSDPA_OK, "trim");
            len -= 2;
        }
        int64_t layer = test_rng_int(rng, 0, 1);
        same_layer(hc, 0, dc, 1, layer);
        /* Attend: device cache vs the CPU reference over the host cache's (equal) bytes. */
        int64_t Hq = 8, Lq = step == 0 ? 5 : 1;
        size_t nq = (size_t)(o.batch * Hq * Lq * 128);
        uint16_t *q = test_alloc(nq * 2), *out = test_alloc(nq * 2), *want = test_alloc(nq * 2);
        test_fill_normal(rng, q, QSDPA_DTYPE_F16, (int64_t)nq, 1.0);
        void *dq = to_device(q, nq * 2), *dout = NULL;
        cudaMalloc(&dout, nq * 2);
        qsdpa_tensor hq = qsdpa_tensor_4d(q, QSDPA_DTYPE_F16, o.batch, Hq, Lq, 128), tq = hq;
        qsdpa_tensor ho = qsdpa_tensor_4d(want, QSDPA_DTYPE_F16, o.batch, Hq, Lq, 128), to = ho;
        tq.data = dq;
        to.data = dout;
        qsdpa_attention_params p = qsdpa_attention_default_params();
        p.scale = 0.08838834764f;
        p.causal = 1;
        p.window = step % 3 == 0 ? 20 : 0;
        float sinks[8];
        test_fill_normal(rng, sinks, QSDPA_DTYPE_F32, 8, 1.0);
        void *dsinks = to_device(sinks, sizeof sinks);
        qsdpa_tensor ts = qsdpa_tensor_make(dsinks, QSDPA_DTYPE_F32, 1, &Hq), hs = ts;
        hs.data = sinks;
        if (step % 2) p.sinks = &hs;
        CHECK(qsdpa_cache_attend(ref, hc, layer, &hq, &p, &ho) == QSDPA_OK, "host attend: %s", qsdpa_last_error());
        if (step % 2) p.sinks = &ts;
        CHECK(qsdpa_cache_attend(gpu, dc, layer, &tq, &p, &to) == QSDPA_OK, "device attend: %s", qsdpa_last_error());
        CHECK(qsdpa_cache_attend(cpu, dc, layer, &hq, &p, &ho) == QSDPA_ERR_INVALID_ARGUMENT,
              "a CPU context attended over a device cache");
        cudaMemcpy(out, dout, nq * 2, cudaMemcpyDeviceToHost);
        double err = 0, vmax = 0;
        float *kf32, *vf32;
        int64_t L = fixture_layer_f32(hc, layer, &kf32, &vf32);
        vmax = fixture_max_abs(vf32, (size_t)(o.batch * o.heads_kv * L * 128));
        for (size_t i = 0; i < nq; i++) {
            double d = fabs((double)qsdpa_f16_to_f32(out[i]) - qsdpa_f16_to_f32(want[i]));
            err = d > err || d != d ? d : err;
        }
        CHECK(err <= 2e-3 * vmax, "K %s V %s R %lld step %d: device attend error %.3g > %.3g", kf, vf,
              (long long)residual, step, err, 2e-3 * vmax);
        free(kf32);
        free(vf32);
        cudaFree(dq);
        cudaFree(dout);
        cudaFree(dsinks);
        free(q);
        free(out);
        free(want);
    }
    /* Save from the device; load on the host and on the device. */
    char path[256];
    snprintf(path, sizeof path, "/tmp/qsdpa_cuda_cache_%llu.kv", (unsigned long long)test_seed());
    CHECK(qsdpa_cache_save(dc, path) == QSDPA_OK, "device save: %s", qsdpa_last_error());
    qsdpa_cache *lh = NULL, *ld = NULL;
    CHECK(qsdpa_cache_load(cpu, path, &lh) == QSDPA_OK, "host load: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_load(gpu, path, &ld) == QSDPA_OK, "device load: %s", qsdpa_last_error());
    for (int64_t l = 0; l < o.layers && lh && ld; l++) {
        same_layer(hc, 0, lh, 0, l);
        same_layer(hc, 0, ld, 1, l);
    }
    remove(path);
    qsdpa_cache_destroy(lh);
    qsdpa_cache_destroy(ld);
    qsdpa_cache_destroy(hc);
    qsdpa_cache_destroy(dc);
}

/* A [1,2,T,128] f16 tensor of fresh normal rows in memory of CUDA device `device` (made current for the copy). */
static qsdpa_tensor rows_on(test_rng *rng, int device, int64_t T) {
    size_t n = (size_t)(2 * T * 128);
    uint16_t *h = test_alloc(n * 2);
    test_fill_normal(rng, h, QSDPA_DTYPE_F16, (int64_t)n, 1.0);
    cudaSetDevice(device);
    void *d = to_device(h, n * 2);
    free(h);
    return qsdpa_tensor_4d(d, QSDPA_DTYPE_F16, 1, 2, T, 128);
}

static qsdpa_cache_options small_options(void) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.heads_kv = 2;
    o.step = 16;
    o.residual = 8; /* the window is allocated at create: it must land on the cache's device too */
    return o;
}

static int device_of(const void *p) {
    struct cudaPointerAttributes a;
    return cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeDevice ? a.device : -1;
}

/* A cache made on device 1 while the thread has device 0 current stays on device 1 (storage, growth, load);
 * a context of device 0 and rows on device 0 are refused by name. Runs where two devices are. */
static void cache_on_second_device(test_rng *rng) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) {
        printf("cache_on_second_device: SKIP (one CUDA device)\n");
        return;
    }
    qsdpa_context_options o0 = qsdpa_context_default_options(), o1;
    o0.backend = QSDPA_BACKEND_CUDA;
    o1 = o0;
    o1.device = 1;
    qsdpa_context *c0 = NULL, *c1 = NULL;
    CHECK(qsdpa_context_create(&o0, &c0) == QSDPA_OK && qsdpa_context_create(&o1, &c1) == QSDPA_OK, "contexts: %s",
          qsdpa_last_error());
    qsdpa_cache_options co = small_options();
    qsdpa_cache *c = NULL;
    cudaSetDevice(0);
    CHECK(qsdpa_cache_create(c1, &co, &c) == QSDPA_OK, "create on device 1: %s", qsdpa_last_error());
    if (!c0 || !c1 || !c) return;
    qsdpa_tensor k1 = rows_on(rng, 1, 40), v1 = rows_on(rng, 1, 40), k0 = rows_on(rng, 0, 3), v0 = rows_on(rng, 0, 3);
    cudaSetDevice(0);
    CHECK(qsdpa_cache_append(c1, c, 0, &k1, &v1) == QSDPA_OK, "append on device 1: %s", qsdpa_last_error());
    qsdpa_qtensor qk, qv, rk, rv;
    CHECK(qsdpa_cache_view(c, 0, QSDPA_CACHE_QUANTIZED, &qk, &qv) == QSDPA_OK &&
              qsdpa_cache_view(c, 0, QSDPA_CACHE_RESIDUAL, &rk, &rv) == QSDPA_OK, "views: %s", qsdpa_last_error());
    CHECK(device_of(qk.codes.data) == 1 && device_of(qv.scales.data) == 1 && device_of(rk.codes.data) == 1,
          "storage on devices %d / %d / %d, not 1", device_of(qk.codes.data), device_of(qv.scales.data), device_of(rk.codes.data));
    cudaSetDevice(0);
    CHECK(qsdpa_cache_append(c0, c, 0, &k1, &v1) == QSDPA_ERR_INVALID_ARGUMENT &&
              strstr(qsdpa_last_error(), "device 0") && strstr(qsdpa_last_error(), "device 1"),
          "a device 0 context appended to a device 1 cache: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_append(c1, c, 0, &k0, &v0) == QSDPA_ERR_INVALID_ARGUMENT &&
              strstr(qsdpa_last_error(), "k = ") && strstr(qsdpa_last_error(), "device 0"),
          "rows on device 0 appended to a device 1 cache: %s", qsdpa_last_error());
    int64_t len = 0;
    CHECK(qsdpa_cache_length(c, 0, &len) == QSDPA_OK && len == 40, "length %lld after refused appends, want 40",
          (long long)len);
    /* save with device 0 current: it must wait for device 1's appends */
    char path[256];
    snprintf(path, sizeof path, "/tmp/qsdpa_cuda_cache_dev1_%llu.kv", (unsigned long long)test_seed());
    cudaSetDevice(0);
    CHECK(qsdpa_cache_save(c, path) == QSDPA_OK, "save: %s", qsdpa_last_error());
    int current = -1;
    CHECK(cudaGetDevice(&current) == cudaSuccess && current == 0, "save left device %d current, not the caller's 0",
          current);
    qsdpa_cache *l = NULL;
    cudaSetDevice(0);
    CHECK(qsdpa_cache_load(c1, path, &l) == QSDPA_OK, "load on device 1: %s", qsdpa_last_error());
    if (l) {
        same_layer(c, 1, l, 1, 0);
        CHECK(qsdpa_cache_view(l, 0, QSDPA_CACHE_QUANTIZED, &qk, &qv) == QSDPA_OK && device_of(qk.codes.data) == 1,
              "a load on device 1 stored on device %d", device_of(qk.codes.data));
    }
    remove(path);
    cudaSetDevice(0);
    qsdpa_cache_destroy(l);
    qsdpa_cache_destroy(c);
    CHECK(cudaGetDevice(&current) == cudaSuccess && current == 0, "destroy left device %d current, not the caller's 0",
          current);
    cudaFree(k1.data);
    cudaFree(v1.data);
    cudaFree(k0.data);
    cudaFree(v0.data);
    qsdpa_context_destroy(c0);
    qsdpa_context_destroy(c1);
    cudaSetDevice(0);
}

/* An append on a stream being captured is refused and records nothing: the capture ends cleanly, the lengths
 * are unchanged, and the same append outside the capture works. */
static void append_capture_refused(test_rng *rng) {
    cudaStream_t stream = NULL;
    cudaSetDevice(0);
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess, "stream");
    qsdpa_context_options go = qsdpa_context_default_options();
    go.backend = QSDPA_BACKEND_CUDA;
    go.stream = stream;
    qsdpa_context *ctx = NULL;
    qsdpa_cache *c = NULL;
    qsdpa_cache_options co = small_options();
    CHECK(qsdpa_context_create(&go, &ctx) == QSDPA_OK && qsdpa_cache_create(ctx, &co, &c) == QSDPA_OK,
          "context and cache: %s", qsdpa_last_error());
    if (!ctx || !c) return;
    qsdpa_tensor k = rows_on(rng, 0, 5), v = rows_on(rng, 0, 5);
    CHECK(qsdpa_cache_append(ctx, c, 0, &k, &v) == QSDPA_OK, "append: %s", qsdpa_last_error());
    cudaStreamSynchronize(stream);
    cudaGraph_t graph = NULL;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    qsdpa_status st = qsdpa_cache_append(ctx, c, 0, &k, &v);
    cudaError_t end = cudaStreamEndCapture(stream, &graph);
    CHECK(st == QSDPA_ERR_UNSUPPORTED && strstr(qsdpa_last_error(), "captured"),
          "an append inside a capture gave %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    CHECK(end == cudaSuccess, "the capture was broken by the refused append: %s", cudaGetErrorString(end));
    if (graph) cudaGraphDestroy(graph);
    int64_t len = 0;
    CHECK(qsdpa_cache_length(c, 0, &len) == QSDPA_OK && len == 5, "length %lld after a refused append, want 5",
          (long long)len);
    CHECK(qsdpa_cache_append(ctx, c, 0, &k, &v) == QSDPA_OK && qsdpa_cache_length(c, 0, &len) == QSDPA_OK && len == 10,
          "append after the capture: %s (length %lld)", qsdpa_last_error(), (long long)len);
    cudaStreamSynchronize(stream);
    /* 10 tokens over a window of 8: attend merges two partials through the cache's scratch, which must not
     * grow inside a capture; once a direct call has sized it, a captured attend replays the direct result */
    const int64_t Hq = 4, Lq = 2, nq = Hq * Lq * 128;
    uint16_t *hq = test_alloc((size_t)nq * 2), *want = test_alloc((size_t)nq * 2), *got = test_alloc((size_t)nq * 2);
    test_fill_normal(rng, hq, QSDPA_DTYPE_F16, nq, 1.0);
    void *dq = to_device(hq, (size_t)nq * 2), *dout = NULL;
    cudaMalloc(&dout, (size_t)nq * 2);
    qsdpa_tensor tq = qsdpa_tensor_4d(dq, QSDPA_DTYPE_F16, 1, Hq, Lq, 128), to = tq;
    to.data = dout;
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    st = qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to);
    end = cudaStreamEndCapture(stream, &graph);
    CHECK(st == QSDPA_ERR_UNSUPPORTED && strstr(qsdpa_last_error(), "scratch"),
          "an attend that grows the scratch inside a capture gave %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    CHECK(end == cudaSuccess, "the refused attend broke the capture: %s", cudaGetErrorString(end));
    if (graph) cudaGraphDestroy(graph);
    graph = NULL;
    CHECK(qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to) == QSDPA_OK, "direct attend: %s", qsdpa_last_error());
    cudaStreamSynchronize(stream);
    cudaMemcpy(want, dout, (size_t)nq * 2, cudaMemcpyDeviceToHost);
    cudaMemset(dout, 0x7F, (size_t)nq * 2);
    cudaGraphExec_t exec = NULL;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    st = qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to);
    end = cudaStreamEndCapture(stream, &graph);
    CHECK(st == QSDPA_OK && end == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess &&
              cudaGraphLaunch(exec, stream) == cudaSuccess && cudaStreamSynchronize(stream) == cudaSuccess,
          "captured attend: %s / %s", qsdpa_last_error(), cudaGetErrorString(end));
    cudaMemcpy(got, dout, (size_t)nq * 2, cudaMemcpyDeviceToHost);
    CHECK(memcmp(got, want, (size_t)nq * 2) == 0, "the graph's attend differs from the direct call");
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    graph = NULL;
    /* a load under capture is refused too (it allocates and copies synchronously) */
    char path[256];
    snprintf(path, sizeof path, "/tmp/qsdpa_cuda_cache_capture_%llu.kv", (unsigned long long)test_seed());
    qsdpa_cache *loaded = NULL;
    CHECK(qsdpa_cache_save(c, path) == QSDPA_OK, "save: %s", qsdpa_last_error());
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    st = qsdpa_cache_load(ctx, path, &loaded);
    end = cudaStreamEndCapture(stream, &graph);
    CHECK(st == QSDPA_ERR_UNSUPPORTED && !loaded && end == cudaSuccess, "a load inside a capture gave %s (%s), %s",
          qsdpa_status_string(st), qsdpa_last_error(), cudaGetErrorString(end));
    if (graph) cudaGraphDestroy(graph);
    qsdpa_cache_destroy(loaded);
    remove(path);
    cudaFree(dq);
    cudaFree(dout);
    free(hq);
    free(want);
    free(got);
    cudaFree(k.data);
    cudaFree(v.data);
    qsdpa_cache_destroy(c);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
}

int main(void) {
    if (test_skip_without_cuda()) return TEST_SKIPPED;
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *cpu = NULL, *ref = NULL, *gpu = NULL;
    qsdpa_context_options ro = qsdpa_context_default_options(), go = qsdpa_context_default_options();
    ro.kernel = "cpu.reference";
    go.backend = QSDPA_BACKEND_CUDA;
    if (qsdpa_context_create(NULL, &cpu) != QSDPA_OK || qsdpa_context_create(&ro, &ref) != QSDPA_OK ||
        qsdpa_context_create(&go, &gpu) != QSDPA_OK) {
        fprintf(stderr, "context: %s\n", qsdpa_last_error());
        return 1;
    }
    run(&rng, cpu, ref, gpu, "affine:4:64", "affine:4:64", 0, QSDPA_DTYPE_F16);
    run(&rng, cpu, ref, gpu, "affine:8:64", "mxfp4", 16, QSDPA_DTYPE_F32);
    run(&rng, cpu, ref, gpu, "nvfp4", "f32", 5, QSDPA_DTYPE_F32);
    run(&rng, cpu, ref, gpu, "mxfp8", "affine:4:32", 64, QSDPA_DTYPE_F16); /* f16 window: PLAIN f16 on the device */
    append_capture_refused(&rng);
    cache_on_second_device(&rng);
    qsdpa_context_destroy(cpu);
    qsdpa_context_destroy(ref);
    qsdpa_context_destroy(gpu);
    return test_finish("test_cache_cuda");
}
#endif
