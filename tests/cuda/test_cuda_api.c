/* CUDA API behaviour: device quantize/dequantize bit-exact with the host
 * functions (every format, every input dtype, appended into a cache view),
 * host pointers rejected as QSDPA_ERR_INVALID_ARGUMENT without writing, a
 * CUDA-graph capture of qsdpa_attention replaying to the same bytes, the
 * device qsdpa_merge against the CPU merge, and an MLA latent cache whose V is
 * a view of K's first 512 dims. */
#include "test_util.h"

#ifndef QSDPA_TEST_CUDA
int main(void) {
    printf("SKIP: no CUDA device (this build has no CUDA backend)\n");
    return 77;
}
#else
#include <cuda_runtime.h>
#include <math.h>
#include <string.h>

#include "cuda_case.h"

static void *dev(const void *host, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (host) cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    return d;
}

static qsdpa_context *cuda_ctx(void *stream) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.stream = stream;
    qsdpa_context *ctx = NULL;
    qsdpa_status st = qsdpa_context_create(&o, &ctx);
    CHECK(st == QSDPA_OK, "CUDA context: %s", qsdpa_last_error());
    return ctx;
}

/* quantize + dequantize of rows on the device == on the host, bit for bit */
static void quantize_roundtrip(test_rng *rng, qsdpa_context *ctx, const char *text, qsdpa_dtype xdt) {
    qsdpa_format f;
    CHECK(qsdpa_format_parse(text, &f) == QSDPA_OK, "format %s", text);
    if (f.mode == QSDPA_MODE_NVFP4 && xdt == QSDPA_DTYPE_BF16) f.global_scale = 3.5f; /* the G path too */
    const int64_t rows = 37, dim = 256, at = 5; /* rows appended at row `at` of a 50-row cache */
    int64_t words, groups = f.mode == QSDPA_MODE_PLAIN ? 0 : dim / f.group;
    qsdpa_format_row_words(&f, dim, &words);
    bool affine = f.mode == QSDPA_MODE_AFFINE, plain = f.mode == QSDPA_MODE_PLAIN;
    qsdpa_dtype sdt = affine ? xdt : QSDPA_DTYPE_U8;
    size_t xs = qsdpa_dtype_size(xdt), ss = qsdpa_dtype_size(sdt);
    void *x = test_alloc((size_t)(rows * dim) * xs);
    test_fill_normal(rng, x, xdt, rows * dim, 2.0);
    /* an edge: a constant group and a zero group */
    for (int64_t j = 0; j < 64; j++) qsdpa_store_float(x, xdt, j, 0.75f);
    for (int64_t j = 64; j < 128; j++) qsdpa_store_float(x, xdt, j, 0.0f);
    size_t cb = (size_t)(50 * words) * 4, sb = (size_t)(50 * groups) * ss;
    uint32_t *hc = test_alloc(cb), *gc = test_alloc(cb);
    void *hs = test_alloc(sb + 1), *hb = test_alloc(sb + 1), *gs = test_alloc(sb + 1), *gb = test_alloc(sb + 1);
    memset(hc, 0, cb); memset(hs, 0, sb + 1); memset(hb, 0, sb + 1);
    qsdpa_status st = qsdpa_quantize(&f, x, xdt, rows, dim, hc + at * words, plain ? NULL : (char *)hs + at * groups * ss,
                                     affine ? (char *)hb + at * groups * ss : NULL, sdt);
    CHECK(st == QSDPA_OK, "host quantize %s: %s", text, qsdpa_last_error());
    void *dx = dev(x, (size_t)(rows * dim) * xs);
    uint32_t *dc = dev(hc, cb);
    void *ds = dev(hs, sb + 1), *db = dev(hb, sb + 1);
    cudaMemset(dc, 0, cb);
    cudaMemset(ds, 0, sb + 1);
    cudaMemset(db, 0, sb + 1);
    st = qsdpa_quantize_device(ctx, &f, dx, xdt, rows, dim, dc + at * words, plain ? NULL : (char *)ds + at * groups * ss,
                               affine ? (char *)db + at * groups * ss : NULL, sdt);
    CHECK(st == QSDPA_OK, "device quantize %s: %s", text, qsdpa_last_error());
    cudaDeviceSynchronize();
    cudaMemcpy(gc, dc, cb, cudaMemcpyDeviceToHost);
    cudaMemcpy(gs, ds, sb + 1, cudaMemcpyDeviceToHost);
    cudaMemcpy(gb, db, sb + 1, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (size_t i = 0; i < cb / 4 && bad < 3; i++)
        if (gc[i] != hc[i]) { bad++; CHECK(0, "%s x %s: code word %zu: device %08x host %08x", text, qsdpa_dtype_name(xdt), i, gc[i], hc[i]); }
    CHECK(memcmp(gs, hs, sb + 1) == 0, "%s x %s: scales differ", text, qsdpa_dtype_name(xdt));
    CHECK(memcmp(gb, hb, sb + 1) == 0, "%s x %s: biases differ", text, qsdpa_dtype_name(xdt));

    /* dequantize of the appended rows, every output dtype */
    const qsdpa_dtype outs[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
    for (int o = 0; o < 3; o++) {
        size_t ob = (size_t)(rows * dim) * qsdpa_dtype_size(outs[o]);
        void *ho = test_alloc(ob), *go = test_alloc(ob);
        void *dout = dev(NULL, ob);
        st = qsdpa_dequantize(&f, hc + at * words, plain ? NULL : (char *)hs + at * groups * ss,
                              affine ? (char *)hb + at * groups * ss : NULL, sdt, rows, dim, ho, outs[o]);
        CHECK(st == QSDPA_OK, "host dequantize: %s", qsdpa_last_error());
        st = qsdpa_dequantize_device(ctx, &f, dc + at * words, plain ? NULL : (char *)ds + at * groups * ss,
                                     affine ? (char *)db + at * groups * ss : NULL, sdt, rows, dim, dout, outs[o]);
        CHECK(st == QSDPA_OK, "device dequantize: %s", qsdpa_last_error());
        cudaMemcpy(go, dout, ob, cudaMemcpyDeviceToHost);
        CHECK(memcmp(go, ho, ob) == 0, "%s x %s -> %s: dequantized bytes differ", text, qsdpa_dtype_name(xdt),
              qsdpa_dtype_name(outs[o]));
        cudaFree(dout);
        free(ho);
        free(go);
    }
    /* a host pointer is an invalid argument */
    st = qsdpa_quantize_device(ctx, &f, x, xdt, rows, dim, dc, plain ? NULL : ds, affine ? db : NULL, sdt);
    CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "host x gave %s", qsdpa_status_string(st));
    cudaFree(dx); cudaFree(dc); cudaFree(ds); cudaFree(db);
    free(x); free(hc); free(gc); free(hs); free(hb); free(gs); free(gb);
}

/* One f16 decode problem on the device, for the pointer and graph tests. */
typedef struct {
    void *q, *codes, *scales, *biases, *out;
    qsdpa_tensor qt, ot;
    qsdpa_qtensor k;
    size_t out_bytes;
} decode_problem;

/* Affine K = V of `format` at head dim `dim`, scales and biases in scale_dtype, Lk keys (exactly: no spare
 * capacity, so for most Lk the scale planes are not 16-byte aligned) */
static void decode_make_lq(test_rng *rng, decode_problem *d, int64_t lk, int64_t lq, const char *format, int64_t dim,
                           qsdpa_dtype scale_dtype) {
    qsdpa_format f;
    qsdpa_format_parse(format, &f);
    const int64_t hq = 32, hkv = 8, words = dim * f.bits / 32, groups = dim / f.group;
    const size_t es = qsdpa_dtype_size(scale_dtype);
    size_t qb = (size_t)(hq * lq * dim) * 2;
    d->out_bytes = qb;
    void *hq_data = test_alloc(qb);
    test_fill_normal(rng, hq_data, QSDPA_DTYPE_F16, hq * lq * dim, 1.0);
    float *x = test_alloc((size_t)(hkv * lk * dim) * 4);
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, hkv * lk * dim, 1.0);
    uint32_t *c = test_alloc((size_t)(hkv * lk * words) * 4);
    void *s = test_alloc((size_t)(hkv * lk * groups) * es), *b = test_alloc((size_t)(hkv * lk * groups) * es);
    qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, hkv * lk, dim, c, s, b, scale_dtype);
    d->q = dev(hq_data, qb);
    d->codes = dev(c, (size_t)(hkv * lk * words) * 4);
    d->scales = dev(s, (size_t)(hkv * lk * groups) * es);
    d->biases = dev(b, (size_t)(hkv * lk * groups) * es);
    d->out = dev(NULL, qb);
    d->qt = qsdpa_tensor_4d(d->q, QSDPA_DTYPE_F16, 1, hq, lq, dim);
    d->ot = qsdpa_tensor_4d(d->out, QSDPA_DTYPE_F16, 1, hq, lq, dim);
    memset(&d->k, 0, sizeof d->k);
    d->k.format = f;
    d->k.dim = dim;
    d->k.codes = qsdpa_tensor_4d(d->codes, QSDPA_DTYPE_U32, 1, hkv, lk, words);
    d->k.scales = qsdpa_tensor_4d(d->scales, scale_dtype, 1, hkv, lk, groups);
    d->k.biases = qsdpa_tensor_4d(d->biases, scale_dtype, 1, hkv, lk, groups);
    free(hq_data); free(x); free(c); free(s); free(b);
}

static void decode_make_as(test_rng *rng, decode_problem *d, int64_t lk, const char *format, int64_t dim,
                           qsdpa_dtype scale_dtype) {
    decode_make_lq(rng, d, lk, 1, format, dim, scale_dtype);
}

static void decode_make(test_rng *rng, decode_problem *d, int64_t lk) {
    decode_make_as(rng, d, lk, "affine:4:64", 128, QSDPA_DTYPE_F32);
}

static void decode_free(decode_problem *d) {
    cudaFree(d->q); cudaFree(d->codes); cudaFree(d->scales); cudaFree(d->biases); cudaFree(d->out);
}

/* The first of n device bytes at dev that is not `fill` (n if all are): poisoned memory left untouched. */
static size_t device_bytes_unlike(const void *dev, size_t n, uint8_t fill) {
    uint8_t *h = test_alloc(n ? n : 1);
    cudaMemcpy(h, dev, n, cudaMemcpyDeviceToHost);
    size_t i = 0;
    while (i < n && h[i] == fill) i++;
    free(h);
    return i;
}

static void host_pointer_rejected(test_rng *rng) {
    qsdpa_context *ctx = cuda_ctx(NULL);
    if (!ctx) return;
    decode_problem d;
    decode_make(rng, &d, 300);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    cudaMemset(d.out, 0x5A, d.out_bytes);
    void *host_q = test_alloc(d.out_bytes);
    qsdpa_tensor hq = d.qt;
    hq.data = host_q;
    qsdpa_status st = qsdpa_attention(ctx, &hq, &d.k, &d.k, &p, &d.ot);
    CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "host q gave %s", qsdpa_status_string(st));
    CHECK(strstr(qsdpa_last_error(), "q->data") != NULL, "message does not name q: %s", qsdpa_last_error());
    qsdpa_qtensor hk = d.k;
    hk.scales.data = host_q;
    st = qsdpa_attention(ctx, &d.qt, &hk, &d.k, &p, &d.ot);
    CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "host k scales gave %s", qsdpa_status_string(st));
    const size_t at = device_bytes_unlike(d.out, 64, 0x5A);
    CHECK(at == 64, "out written at byte %zu after an error", at);
    free(host_q);
    decode_free(&d);
    qsdpa_context_destroy(ctx);
}

/* Memory of another device is refused by name (it would fault inside the kernel); runs where two devices are. */
static void other_device_pointer_rejected(test_rng *rng) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) {
        printf("other_device_pointer_rejected: SKIP (one CUDA device)\n");
        return;
    }
    qsdpa_context *ctx = cuda_ctx(NULL); /* device 0 */
    if (!ctx) return;
    decode_problem d;
    decode_make(rng, &d, 300);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    cudaMemset(d.out, 0x5A, d.out_bytes);
    void *other_q = NULL;
    cudaSetDevice(1);
    CHECK(cudaMalloc(&other_q, d.out_bytes) == cudaSuccess, "cudaMalloc on device 1");
    cudaSetDevice(0);
    qsdpa_tensor oq = d.qt;
    oq.data = other_q;
    qsdpa_status st = qsdpa_attention(ctx, &oq, &d.k, &d.k, &p, &d.ot);
    CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "q on device 1 gave %s", qsdpa_status_string(st));
    CHECK(strstr(qsdpa_last_error(), "q->data") && strstr(qsdpa_last_error(), "device 1"),
          "message does not name q and its device: %s", qsdpa_last_error());
    const size_t at = device_bytes_unlike(d.out, 64, 0x5A);
    CHECK(at == 64, "out written at byte %zu after an error", at);
    st = qsdpa_attention(ctx, &d.qt, &d.k, &d.k, &p, &d.ot);
    CHECK(st == QSDPA_OK, "the same call with q on device 0 gave %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    cudaFree(other_q);
    decode_free(&d);
    qsdpa_context_destroy(ctx);
}

/* Capture one qsdpa_attention call of d on `stream`, instantiate the graph and replay it `replays` times
 * (synchronised); *st is the captured call's status, the return the CUDA status of it all. */
static cudaError_t capture_and_replay(cudaStream_t stream, qsdpa_context *ctx, decode_problem *d,
                                      const qsdpa_attention_params *p, int replays, qsdpa_status *st) {
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    *st = qsdpa_attention(ctx, &d->qt, &d->k, &d->k, p, &d->ot);
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &graph);
    if (err == cudaSuccess && *st == QSDPA_OK) err = cudaGraphInstantiate(&exec, graph, 0);
    for (int r = 0; r < replays && err == cudaSuccess && exec; r++) err = cudaGraphLaunch(exec, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    return err;
}

/* Capture qsdpa_attention into a graph on the caller's stream; a replay gives
 * the bytes of a direct call (no allocation or sync inside the call), on each
 * route with a buffer of its own: f32 scales (the prefill kernel), f16 scales at
 * an aligned and at an unaligned Lk (the decode kernel, its 4-byte scale pieces),
 * D 64 at an unaligned Lk (the realigned copy), 5-bit D 96 (the repacked copy), D 96 at an
 * aligned Lk (the padded path: no copy, the D 128 decode kernel) and at an unaligned
 * one (its scale planes realigned, then the padded path). `route`
 * is what qsdpa_context_last_route must start with: the host decides it, unless a
 * knob reroutes (QSDPA_CUDA_TILE_DECODE, QSDPA_CUDA_STAGED, QSDPA_CUDA_STAGE_LIMIT_MB). */
static void graph_capture_one(test_rng *rng, int64_t lk, const char *format, int64_t dim, qsdpa_dtype scale_dtype,
                              const char *route) {
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    qsdpa_context *ctx = cuda_ctx(stream);
    if (!ctx) return;
    decode_problem d;
    decode_make_as(rng, &d, lk, format, dim, scale_dtype);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    qsdpa_status st = qsdpa_attention(ctx, &d.qt, &d.k, &d.k, &p, &d.ot); /* sizes the scratch */
    CHECK(st == QSDPA_OK, "direct call: %s", qsdpa_last_error());
    const char *took = qsdpa_context_last_route(ctx);
    const bool rerouted = getenv("QSDPA_CUDA_TILE_DECODE") || getenv("QSDPA_CUDA_STAGED") ||
                          getenv("QSDPA_CUDA_STAGE_LIMIT_MB");
    CHECK(rerouted || strncmp(took, route, strlen(route)) == 0, "%s D%lld Lk %lld: route '%s', expected '%s'", format,
          (long long)dim, (long long)lk, took, route);
    cudaStreamSynchronize(stream);
    uint8_t *direct = test_alloc(d.out_bytes), *replay = test_alloc(d.out_bytes);
    cudaMemcpy(direct, d.out, d.out_bytes, cudaMemcpyDeviceToHost);
    cudaMemset(d.out, 0xFF, d.out_bytes);
    cudaDeviceSynchronize();
    const cudaError_t err = capture_and_replay(stream, ctx, &d, &p, 3, &st);
    CHECK(st == QSDPA_OK, "captured call: %s", qsdpa_last_error());
    CHECK(err == cudaSuccess, "graph capture/replay (%s D%lld Lk %lld): %s", format, (long long)dim, (long long)lk,
          cudaGetErrorString(err));
    cudaMemcpy(replay, d.out, d.out_bytes, cudaMemcpyDeviceToHost);
    CHECK(memcmp(direct, replay, d.out_bytes) == 0, "graph replay differs from the direct call (%s D%lld Lk %lld, %s)",
          format, (long long)dim, (long long)lk, took);
    free(direct);
    free(replay);
    decode_free(&d);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
}

/* A decode call whose few splits the decode kernel merges itself, captured on a context that so far made
 * only calls of many splits (merged by split_merge): the arrival counters were sized by those calls, so the
 * capture has nothing to allocate, and its replay gives the bytes of a direct call. */
static void graph_after_many_split_call(test_rng *rng) {
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    qsdpa_context *ctx = cuda_ctx(stream);
    if (!ctx) return;
    decode_problem many, few;
    decode_make_as(rng, &many, 32768, "affine:4:64", 128, QSDPA_DTYPE_F16); /* 32 splits a head */
    decode_make_as(rng, &few, 320, "affine:4:64", 128, QSDPA_DTYPE_F16);    /* 5: merged in the kernel */
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    qsdpa_status st = qsdpa_attention(ctx, &many.qt, &many.k, &many.k, &p, &many.ot);
    CHECK(st == QSDPA_OK, "32K call: %s", qsdpa_last_error());
    cudaMemset(few.out, 0xFF, few.out_bytes);
    cudaDeviceSynchronize();
    const cudaError_t err = capture_and_replay(stream, ctx, &few, &p, 2, &st);
    const bool replayed = st == QSDPA_OK && err == cudaSuccess;
    CHECK(st == QSDPA_OK, "a 320-key call captured after a 32K one: %s", qsdpa_last_error());
    CHECK(err == cudaSuccess, "capture/replay of the 320-key call: %s", cudaGetErrorString(err));
    uint8_t *direct = test_alloc(few.out_bytes), *replay = test_alloc(few.out_bytes);
    cudaMemcpy(replay, few.out, few.out_bytes, cudaMemcpyDeviceToHost);
    st = qsdpa_attention(ctx, &few.qt, &few.k, &few.k, &p, &few.ot);
    CHECK(st == QSDPA_OK, "direct 320-key call: %s", qsdpa_last_error());
    cudaStreamSynchronize(stream);
    cudaMemcpy(direct, few.out, few.out_bytes, cudaMemcpyDeviceToHost);
    CHECK(!replayed || memcmp(direct, replay, few.out_bytes) == 0,
          "the replay of a 320-key call differs from its direct call");
    free(direct);
    free(replay);
    decode_free(&many);
    decode_free(&few);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
}

/* Buffer growth and graphs. (1) A capture on a fresh context, whose buffers must
 * grow, is refused with QSDPA_ERR_UNSUPPORTED, nothing enqueued and the capture
 * still valid. (2) A graph captured at Lq 1, 4K keys replays to its direct call's
 * bytes after an Lq 8, 64K-key call grew the context's split-K scratch (its
 * capture refused first: the proof that it must grow), with the device memory
 * the old buffer had (were it freed) taken and filled with NaN bytes. (3) below. */
static void graph_survives_growth(test_rng *rng) {
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    qsdpa_context *ctx = cuda_ctx(stream);
    if (!ctx) return;
    decode_problem small, large;
    decode_make_as(rng, &small, 4096, "affine:4:64", 128, QSDPA_DTYPE_F16);
    decode_make_lq(rng, &large, 65536, 8, "affine:4:64", 128, QSDPA_DTYPE_F16);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    cudaMemset(small.out, 0x5A, small.out_bytes);
    cudaDeviceSynchronize();
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    qsdpa_status st = qsdpa_attention(ctx, &small.qt, &small.k, &small.k, &p, &small.ot);
    CHECK(st == QSDPA_ERR_UNSUPPORTED, "a capture that must grow the scratch gave %s", qsdpa_status_string(st));
    CHECK(strstr(qsdpa_last_error(), "captured") && strstr(qsdpa_last_error(), "before capturing"),
          "message does not say what to do: %s", qsdpa_last_error());
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &graph);
    CHECK(err == cudaSuccess, "the refused call broke the capture: %s", cudaGetErrorString(err));
    if (graph) cudaGraphDestroy(graph);
    graph = NULL;
    const size_t at = device_bytes_unlike(small.out, small.out_bytes, 0x5A);
    CHECK(at == small.out_bytes, "out written at byte %zu by a refused call", at);

    st = qsdpa_attention(ctx, &small.qt, &small.k, &small.k, &p, &small.ot);
    CHECK(st == QSDPA_OK, "direct 4K call: %s", qsdpa_last_error());
    const char *took = qsdpa_context_last_route(ctx);
    cudaStreamSynchronize(stream);
    uint8_t *direct = test_alloc(small.out_bytes), *replay = test_alloc(small.out_bytes);
    cudaMemcpy(direct, small.out, small.out_bytes, cudaMemcpyDeviceToHost);
    err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    st = qsdpa_attention(ctx, &small.qt, &small.k, &small.k, &p, &small.ot);
    CHECK(st == QSDPA_OK, "captured 4K call: %s", qsdpa_last_error());
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &graph);
    if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraph_t refused = NULL;
    if (err == cudaSuccess) err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    st = qsdpa_attention(ctx, &large.qt, &large.k, &large.k, &p, &large.ot);
    CHECK(st == QSDPA_ERR_UNSUPPORTED, "capturing the Lq 8 64K call after a 4K one gave %s (not a growth?)",
          qsdpa_status_string(st));
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &refused);
    if (refused) cudaGraphDestroy(refused);
    st = qsdpa_attention(ctx, &large.qt, &large.k, &large.k, &p, &large.ot); /* grows the scratch */
    CHECK(st == QSDPA_OK, "direct 64K call: %s", qsdpa_last_error());
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    /* device memory a freed buffer would have returned, filled with NaN bytes */
    void *grab[8] = {0};
    for (int i = 0; i < 8; i++)
        if (cudaMalloc(&grab[i], (size_t)1 << (16 + i)) == cudaSuccess) cudaMemset(grab[i], 0xFF, (size_t)1 << (16 + i));
    (void)cudaGetLastError();
    cudaMemset(small.out, 0xFF, small.out_bytes);
    if (err == cudaSuccess) err = cudaGraphLaunch(exec, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    CHECK(err == cudaSuccess, "graph replay after growth: %s", cudaGetErrorString(err));
    cudaMemcpy(replay, small.out, small.out_bytes, cudaMemcpyDeviceToHost);
    CHECK(memcmp(direct, replay, small.out_bytes) == 0,
          "a graph captured at 4K keys (%s) replays to other bytes after a 64K call grew the scratch", took);
    /* the replay wrote its (kept) old scratch, not memory that a freed buffer gave back to grab[] */
    for (int i = 0; i < 8; i++) {
        if (!grab[i]) continue;
        const size_t nb = (size_t)1 << (16 + i), bad = device_bytes_unlike(grab[i], nb, 0xFF);
        CHECK(bad == nb, "the replay wrote into memory allocated after the growth (block %d, byte %zu)", i, bad);
    }
    for (int i = 0; i < 8; i++) cudaFree(grab[i]);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    /* (3) A repacked call (3-bit codes widened; group 128 has no 3-bit row of its own) whose copy buffer must
     * grow is refused inside a capture too, though the split-K scratch is large enough: not rerouted to the
     * generic kernel in the graph. Once a direct call has sized the buffer, its capture takes the repacked route. */
    decode_problem odd;
    decode_make_as(rng, &odd, 4096, "affine:3:128", 128, QSDPA_DTYPE_F16);
    cudaGraph_t odd_graph = NULL;
    err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    st = qsdpa_attention(ctx, &odd.qt, &odd.k, &odd.k, &p, &odd.ot);
    CHECK(st == QSDPA_ERR_UNSUPPORTED, "capturing a 3-bit call before its copy buffer exists gave %s (route '%s')",
          qsdpa_status_string(st), qsdpa_context_last_route(ctx));
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &odd_graph);
    if (odd_graph) cudaGraphDestroy(odd_graph);
    odd_graph = NULL;
    st = qsdpa_attention(ctx, &odd.qt, &odd.k, &odd.k, &p, &odd.ot);
    CHECK(st == QSDPA_OK, "direct 3-bit call: %s", qsdpa_last_error());
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    if (err == cudaSuccess) err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    st = qsdpa_attention(ctx, &odd.qt, &odd.k, &odd.k, &p, &odd.ot);
    CHECK(st == QSDPA_OK && strncmp(qsdpa_context_last_route(ctx), "cuda.repacked:", 14) == 0,
          "captured 3-bit call after a direct one: %s, route '%s'", qsdpa_status_string(st),
          qsdpa_context_last_route(ctx));
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &odd_graph);
    CHECK(err == cudaSuccess, "3-bit capture: %s", cudaGetErrorString(err));
    if (odd_graph) cudaGraphDestroy(odd_graph);
    decode_free(&odd);
    free(direct); free(replay);
    decode_free(&small);
    decode_free(&large);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
}

/* Codes one byte off their 4-byte words are refused before any kernel runs (a misaligned load would fault
 * and poison the device context, as the first version of this test found on the generic kernel), and the
 * output is untouched; the aligned 3-bit cache (group 128: no 3-bit row) takes the repacked path, widened to 4 bits. */
static void misaligned_codes_refused(test_rng *rng) {
    qsdpa_context *ctx = cuda_ctx(NULL);
    if (!ctx) return;
    decode_problem d;
    decode_make_as(rng, &d, 701, "affine:3:128", 128, QSDPA_DTYPE_F16);
    const size_t code_bytes = (size_t)(8 * 701 * 12) * 4;
    char *shifted = dev(NULL, code_bytes + 4);
    cudaMemcpy(shifted + 1, d.codes, code_bytes, cudaMemcpyDeviceToDevice);
    qsdpa_qtensor k_off = d.k;
    k_off.codes.data = shifted + 1;
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    qsdpa_status st = qsdpa_attention(ctx, &d.qt, &d.k, &d.k, &p, &d.ot);
    CHECK(st == QSDPA_OK, "3-bit call: %s", qsdpa_last_error());
    CHECK(strncmp(qsdpa_context_last_route(ctx), "cuda.repacked:", 14) == 0, "3-bit route '%s'",
          qsdpa_context_last_route(ctx));
    cudaMemset(d.out, 0x5A, d.out_bytes);
    st = qsdpa_attention(ctx, &d.qt, &k_off, &k_off, &p, &d.ot);
    CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "codes one byte off gave %s", qsdpa_status_string(st));
    CHECK(strstr(qsdpa_last_error(), "k->codes.data") && strstr(qsdpa_last_error(), "not aligned"),
          "message does not name the misaligned codes: %s", qsdpa_last_error());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "device error after a refused call");
    const size_t at = device_bytes_unlike(d.out, d.out_bytes, 0x5A);
    CHECK(at == d.out_bytes, "out written at byte %zu by a refused call", at);
    cudaFree(shifted);
    decode_free(&d);
    qsdpa_context_destroy(ctx);
}

/* device merge of partials == CPU merge of the same partials */
static void merge_matches_cpu(test_rng *rng) {
    qsdpa_context *ctx = cuda_ctx(NULL);
    qsdpa_context *cpu = NULL;
    qsdpa_context_create(NULL, &cpu);
    if (!ctx || !cpu) return;
    const int n = 3;
    const int64_t b = 2, h = 4, l = 3, dv = 64, on = b * h * l * dv, ln = b * h * l;
    float *ho = test_alloc((size_t)(n * on) * 4), *hl = test_alloc((size_t)(n * ln) * 4);
    test_fill_normal(rng, ho, QSDPA_DTYPE_F32, n * on, 1.0);
    test_fill_normal(rng, hl, QSDPA_DTYPE_F32, n * ln, 3.0);
    hl[0] = hl[ln] = hl[2 * ln] = -INFINITY; /* a row masked in every slice */
    hl[1] = -INFINITY;                       /* a row masked in one slice */
    float *dout = dev(ho, (size_t)(n * on) * 4), *dl = dev(hl, (size_t)(n * ln) * 4);
    float *res = dev(NULL, (size_t)(on + ln) * 4), *ref = test_alloc((size_t)(on + ln) * 4);
    float *got = test_alloc((size_t)(on + ln) * 4);
    qsdpa_tensor ho_t[3], hl_t[3], do_t[3], dl_t[3];
    int64_t ls[3] = {b, h, l};
    for (int i = 0; i < n; i++) {
        ho_t[i] = qsdpa_tensor_4d(ho + i * on, QSDPA_DTYPE_F32, b, h, l, dv);
        hl_t[i] = qsdpa_tensor_make(hl + i * ln, QSDPA_DTYPE_F32, 3, ls);
        do_t[i] = qsdpa_tensor_4d(dout + i * on, QSDPA_DTYPE_F32, b, h, l, dv);
        dl_t[i] = qsdpa_tensor_make(dl + i * ln, QSDPA_DTYPE_F32, 3, ls);
    }
    qsdpa_tensor ro = qsdpa_tensor_4d(ref, QSDPA_DTYPE_F32, b, h, l, dv);
    qsdpa_tensor rl = qsdpa_tensor_make(ref + on, QSDPA_DTYPE_F32, 3, ls);
    qsdpa_tensor go = qsdpa_tensor_4d(res, QSDPA_DTYPE_F32, b, h, l, dv);
    qsdpa_tensor gl = qsdpa_tensor_make(res + on, QSDPA_DTYPE_F32, 3, ls);
    qsdpa_status st = qsdpa_merge(cpu, n, ho_t, hl_t, &ro, &rl);
    CHECK(st == QSDPA_OK, "CPU merge: %s", qsdpa_last_error());
    st = qsdpa_merge(ctx, n, do_t, dl_t, &go, &gl);
    CHECK(st == QSDPA_OK, "CUDA merge: %s", qsdpa_last_error());
    cudaMemcpy(got, res, (size_t)(on + ln) * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int64_t i = 0; i < on + ln && bad < 3; i++) {
        bool same = (isinf(ref[i]) && got[i] == ref[i]) || fabsf(got[i] - ref[i]) <= 1e-6f * (1.0f + fabsf(ref[i]));
        if (!same) { bad++; CHECK(0, "merge element %lld: cuda %g cpu %g", (long long)i, got[i], ref[i]); }
    }
    cudaFree(dout); cudaFree(dl); cudaFree(res);
    free(ho); free(hl); free(ref); free(got);
    qsdpa_context_destroy(ctx);
    qsdpa_context_destroy(cpu);
}

/* A DeepSeek-style MLA latent cache on the device: rows [c_kv 512 | k_rope 64] of one KV head are K (Dk 576),
 * and V is a view of their first 512 dims (K's pointers and strides, narrower shapes), no copy. 32 heads, f16
 * q: the generic row's wide kernel. The view's output equals a contiguous copy's bit for bit, a graph replay
 * equals the direct call, and the CPU's automatic kernel agrees within SPEC §4 (f16). */
static void latent_view_matches_copy(test_rng *rng) {
    enum { HQ = 32, LK = 1500, DKL = 576, DVL = 512 };
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    qsdpa_context *ctx = cuda_ctx(stream);
    if (!ctx) return;
    qsdpa_format f;
    qsdpa_format_parse("affine:4:64", &f);
    const int64_t kw = DKL * 4 / 32, kg = DKL / 64, vw = DVL * 4 / 32, vg = DVL / 64;
    float *x = test_alloc((size_t)LK * DKL * 4);
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, (int64_t)LK * DKL, 0.5);
    uint32_t *c = test_alloc((size_t)LK * kw * 4);
    uint16_t *sc = test_alloc((size_t)LK * kg * 2), *bi = test_alloc((size_t)LK * kg * 2);
    CHECK(qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, LK, DKL, c, sc, bi, QSDPA_DTYPE_F16) == QSDPA_OK, "quantize: %s",
          qsdpa_last_error());
    /* V's rows copied out contiguously, for the comparison */
    uint32_t *vc = test_alloc((size_t)LK * vw * 4);
    uint16_t *vs = test_alloc((size_t)LK * vg * 2), *vb = test_alloc((size_t)LK * vg * 2);
    for (int64_t l = 0; l < LK; l++) {
        memcpy(vc + l * vw, c + l * kw, (size_t)vw * 4);
        memcpy(vs + l * vg, sc + l * kg, (size_t)vg * 2);
        memcpy(vb + l * vg, bi + l * kg, (size_t)vg * 2);
    }
    const size_t qn = (size_t)HQ * DKL, on = (size_t)HQ * DVL;
    uint16_t *hq = test_alloc(qn * 2);
    test_fill_normal(rng, hq, QSDPA_DTYPE_F16, (int64_t)qn, 1.0);
    void *dq = dev(hq, qn * 2), *dc = dev(c, (size_t)LK * kw * 4), *ds = dev(sc, (size_t)LK * kg * 2),
         *db = dev(bi, (size_t)LK * kg * 2), *dvc = dev(vc, (size_t)LK * vw * 4), *dvs = dev(vs, (size_t)LK * vg * 2),
         *dvb = dev(vb, (size_t)LK * vg * 2), *dout[3] = {dev(NULL, on * 2), dev(NULL, on * 2), dev(NULL, on * 2)};
    qsdpa_qtensor k = {0}, view, copy;
    k.format = f;
    k.dim = DKL;
    k.codes = qsdpa_tensor_4d(dc, QSDPA_DTYPE_U32, 1, 1, LK, kw);
    k.scales = qsdpa_tensor_4d(ds, QSDPA_DTYPE_F16, 1, 1, LK, kg);
    k.biases = qsdpa_tensor_4d(db, QSDPA_DTYPE_F16, 1, 1, LK, kg);
    view = k;
    view.dim = DVL;
    view.codes.shape[3] = vw;
    view.scales.shape[3] = vg;
    view.biases.shape[3] = vg;
    copy = view;
    copy.codes = qsdpa_tensor_4d(dvc, QSDPA_DTYPE_U32, 1, 1, LK, vw);
    copy.scales = qsdpa_tensor_4d(dvs, QSDPA_DTYPE_F16, 1, 1, LK, vg);
    copy.biases = qsdpa_tensor_4d(dvb, QSDPA_DTYPE_F16, 1, 1, LK, vg);
    qsdpa_tensor qt = qsdpa_tensor_4d(dq, QSDPA_DTYPE_F16, 1, HQ, 1, DKL);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 1.0f / sqrtf(192.0f);
    uint16_t *out[3];
    for (int i = 0; i < 3; i++) {
        out[i] = test_alloc(on * 2);
        cudaMemset(dout[i], 0xFF, on * 2);
    }
    for (int i = 0; i < 2; i++) {
        qsdpa_tensor ot = qsdpa_tensor_4d(dout[i], QSDPA_DTYPE_F16, 1, HQ, 1, DVL);
        CHECK(qsdpa_attention(ctx, &qt, &k, i ? &copy : &view, &p, &ot) == QSDPA_OK, "latent call %d: %s", i,
              qsdpa_last_error());
        const char *route = qsdpa_context_last_route(ctx);
        CHECK(getenv("QSDPA_CUDA_GENERIC_WIDE") || strcmp(route, "cuda.generic.wide") == 0,
              "latent call %d took route '%s', expected cuda.generic.wide", i, route);
    }
    /* the view's call captured in a graph and replayed */
    cudaStreamSynchronize(stream);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    qsdpa_tensor ot2 = qsdpa_tensor_4d(dout[2], QSDPA_DTYPE_F16, 1, HQ, 1, DVL);
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    const qsdpa_status st = qsdpa_attention(ctx, &qt, &k, &view, &p, &ot2);
    if (err == cudaSuccess) err = cudaStreamEndCapture(stream, &graph);
    if (err == cudaSuccess && st == QSDPA_OK) err = cudaGraphInstantiate(&exec, graph, 0);
    if (err == cudaSuccess && exec) err = cudaGraphLaunch(exec, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    CHECK(st == QSDPA_OK && err == cudaSuccess, "latent graph: %s / %s", qsdpa_last_error(), cudaGetErrorString(err));
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    for (int i = 0; i < 3; i++) cudaMemcpy(out[i], dout[i], on * 2, cudaMemcpyDeviceToHost);
    CHECK(memcmp(out[0], out[1], on * 2) == 0, "the latent V view differs from its copy on the GPU");
    CHECK(memcmp(out[0], out[2], on * 2) == 0, "the latent call's graph replay differs from the direct call");
    /* the CPU on the host copies of the same tensors, within SPEC §4 (f16) */
    qsdpa_context *cpu = NULL;
    CHECK(qsdpa_context_create(NULL, &cpu) == QSDPA_OK, "CPU context: %s", qsdpa_last_error());
    if (cpu) {
        qsdpa_qtensor hk = k, hv;
        hk.codes.data = c, hk.scales.data = sc, hk.biases.data = bi;
        hv = hk;
        hv.dim = DVL;
        hv.codes.shape[3] = vw;
        hv.scales.shape[3] = vg;
        hv.biases.shape[3] = vg;
        uint16_t *ho = test_alloc(on * 2);
        qsdpa_tensor hqt = qsdpa_tensor_4d(hq, QSDPA_DTYPE_F16, 1, HQ, 1, DKL);
        qsdpa_tensor hot = qsdpa_tensor_4d(ho, QSDPA_DTYPE_F16, 1, HQ, 1, DVL);
        CHECK(qsdpa_attention(cpu, &hqt, &hk, &hv, &p, &hot) == QSDPA_OK, "CPU latent call: %s", qsdpa_last_error());
        double vmax = 0.0, e = 0.0;
        for (int64_t l = 0; l < LK; l++)
            for (int64_t g = 0; g < vg; g++) {
                const double s = qsdpa_load_float(sc, QSDPA_DTYPE_F16, l * kg + g);
                const double z = qsdpa_load_float(bi, QSDPA_DTYPE_F16, l * kg + g);
                vmax = fmax(vmax, fmax(fabs(z), fabs(z + 15.0 * s)));
            }
        for (size_t i = 0; i < on; i++)
            e = fmax(e, fabs((double)qsdpa_load_float(out[0], QSDPA_DTYPE_F16, (int64_t)i) -
                             (double)qsdpa_load_float(ho, QSDPA_DTYPE_F16, (int64_t)i)));
        CHECK(e <= 2e-3 * vmax, "latent view: GPU against CPU %.3g x max|V| (SPEC 2e-3)", e / vmax);
        free(ho);
        qsdpa_context_destroy(cpu);
    }
    cudaFree(dq); cudaFree(dc); cudaFree(ds); cudaFree(db); cudaFree(dvc); cudaFree(dvs); cudaFree(dvb);
    for (int i = 0; i < 3; i++) cudaFree(dout[i]), free(out[i]);
    free(x); free(c); free(sc); free(bi); free(vc); free(vs); free(vb); free(hq);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
}

int main(void) {
    if (test_skip_without_cuda()) return TEST_SKIPPED;
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *ctx = cuda_ctx(NULL);
    if (ctx) {
        const char *formats[] = {"affine:2:32", "affine:3:64", "affine:4:64", "affine:5:32", "affine:6:128",
                                 "affine:8:64", "mxfp4",       "mxfp8",       "nvfp4",       "f16"};
        const qsdpa_dtype xdts[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
        for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++)
            for (int x = 0; x < 3; x++) quantize_roundtrip(&rng, ctx, formats[f], xdts[x]);
        qsdpa_context_destroy(ctx);
    }
    host_pointer_rejected(&rng);
    other_device_pointer_rejected(&rng);
    graph_capture_one(&rng, 20000, "affine:4:64", 128, QSDPA_DTYPE_F32, "cuda.prefill");
    graph_capture_one(&rng, 20000, "affine:4:64", 128, QSDPA_DTYPE_F16, "cuda.decode");
    graph_capture_one(&rng, 20001, "affine:4:64", 128, QSDPA_DTYPE_F16, "cuda.decode"); /* 4-byte scale pieces */
    graph_capture_one(&rng, 20001, "affine:4:64", 64, QSDPA_DTYPE_F16, "cuda.realigned:");
    graph_capture_one(&rng, 20001, "affine:5:32", 96, QSDPA_DTYPE_F16, "cuda.repacked:"); /* widened to 8 bits */
    graph_capture_one(&rng, 20000, "affine:4:32", 96, QSDPA_DTYPE_F16, "cuda.padded:");
    graph_capture_one(&rng, 20001, "affine:4:32", 96, QSDPA_DTYPE_F16, "cuda.realigned:cuda.padded:");
    graph_capture_one(&rng, 320, "affine:4:64", 128, QSDPA_DTYPE_F16, "cuda.decode"); /* 5 splits, merged in the kernel */
    graph_after_many_split_call(&rng);
    graph_survives_growth(&rng);
    misaligned_codes_refused(&rng);
    merge_matches_cpu(&rng);
    latent_view_matches_copy(&rng);
    return test_finish("test_cuda_api");
}
#endif
