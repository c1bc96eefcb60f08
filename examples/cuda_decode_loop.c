/* A decode loop on an NVIDIA GPU with the public qsdpa API: a quantized KV cache in
 * device memory, a prompt appended (quantized on the device), then one token per
 * step: append its K/V row, attend with its query. The step is captured once
 * into a CUDA graph and replayed, which removes the host's launch cost that
 * bounds short decode calls (docs/PERFORMANCE.md). Arguments: K's and V's formats
 * (default affine:4:64 for both; e.g. `mxfp8 mxfp4`). Without a CUDA device, or
 * with a qsdpa built without CUDA, it says so and exits 0.
 * Build: see examples/CMakeLists.txt (needs the CUDA toolkit's runtime), or
 *   cc cuda_decode_loop.c $(pkg-config --cflags --libs qsdpa) -I$CUDA/include -L$CUDA/lib64 -lcudart -lm */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <qsdpa.h>

enum { HEADS_Q = 32, HEADS_KV = 8, DIM = 128, PROMPT = 4000, STEPS = 64 };

static unsigned lcg(unsigned *s) { return *s = *s * 1664525u + 1013904223u; }

/* f32 -> f16 bits, round to nearest even; magnitudes below 2^-14 flush to zero (an example's data) */
static uint16_t half_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    const int32_t e = (int32_t)((x >> 23) & 0xffu) - 127 + 15;
    if (e <= 0) return (uint16_t)sign;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)h;
}

/* f16 bits -> f32 (normal numbers and zero: what half_bits makes) */
static float half_value(uint16_t h) {
    const uint32_t e = (h >> 10) & 0x1fu;
    const float m = e ? ldexpf(1.0f + (float)(h & 0x3ffu) / 1024.0f, (int)e - 15) : 0.0f;
    return (h & 0x8000u) ? -m : m;
}

/* n values in [-1, 1), f32 or (half) f16, in a new device buffer */
static void *device_random(size_t n, int half, unsigned *seed) {
    const size_t es = half ? 2 : 4;
    unsigned char *h = malloc(n * es);
    void *d = NULL;
    if (!h) return NULL;
    for (size_t i = 0; i < n; i++) {
        const float x = (float)(lcg(seed) >> 8) / 8388608.0f - 1.0f;
        if (half) {
            const uint16_t b = half_bits(x);
            memcpy(h + 2 * i, &b, 2);
        } else {
            memcpy(h + 4 * i, &x, 4);
        }
    }
    if (cudaMalloc(&d, n * es) != cudaSuccess || cudaMemcpy(d, h, n * es, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(d);
        d = NULL;
    }
    free(h);
    return d;
}

static int fail(const char *what, qsdpa_status st) {
    fprintf(stderr, "%s failed (%s): %s\n", what, qsdpa_status_string(st), qsdpa_last_error());
    return 1;
}

int main(int argc, char **argv) {
    printf("qsdpa %s\n", qsdpa_version());
    /* K's and V's formats: mlx-lm's default (affine 4-bit, group 64) unless named, e.g. `mxfp8 mxfp4` */
    const char *k_text = argc > 1 ? argv[1] : "affine:4:64", *v_text = argc > 2 ? argv[2] : k_text;
    if (!qsdpa_backend_available(QSDPA_BACKEND_CUDA)) {
        printf("SKIP: no CUDA device (or qsdpa was built without CUDA)\n");
        return 0;
    }
    cudaStream_t stream;
    if (cudaStreamCreate(&stream) != cudaSuccess) return 1;
    qsdpa_context_options opts = qsdpa_context_default_options();
    opts.backend = QSDPA_BACKEND_CUDA;
    opts.stream = stream; /* every call is enqueued on it, asynchronously */
    qsdpa_context *ctx = NULL;
    qsdpa_status st = qsdpa_context_create(&opts, &ctx);
    if (st != QSDPA_OK) return fail("qsdpa_context_create", st);

    /* one layer of a cache in those formats; capacity grows in steps of 256 tokens */
    qsdpa_cache_options co = qsdpa_cache_default_options();
    co.heads_kv = HEADS_KV;
    co.dim_k = co.dim_v = DIM;
    if ((st = qsdpa_format_parse(k_text, &co.k_format)) != QSDPA_OK) return fail("qsdpa_format_parse (K)", st);
    if ((st = qsdpa_format_parse(v_text, &co.v_format)) != QSDPA_OK) return fail("qsdpa_format_parse (V)", st);
    if (co.k_format.mode == QSDPA_MODE_PLAIN || co.v_format.mode == QSDPA_MODE_PLAIN) {
        /* a device cache stores plain rows as given, so it takes rows of its plain_dtype only (qsdpa.h) */
        fprintf(stderr, "this example appends f32 rows to a quantized cache; name quantized formats, not %s / %s\n",
                k_text, v_text);
        return 2;
    }
    co.step = 256;
    qsdpa_cache *cache = NULL;
    if ((st = qsdpa_cache_create(ctx, &co, &cache)) != QSDPA_OK) return fail("qsdpa_cache_create", st);

    unsigned seed = 2024u;
    /* the prompt's K/V rows [1, Hkv, PROMPT, D] (f32 here; f16/bf16 work the same: a quantized cache
     * converts them as it quantizes) */
    void *k_prompt = device_random((size_t)HEADS_KV * PROMPT * DIM, 0, &seed);
    void *v_prompt = device_random((size_t)HEADS_KV * PROMPT * DIM, 0, &seed);
    /* each step's new K/V row [1, Hkv, 1, D]; its query [1, Hq, 1, D] and output in f16, which the
     * tensor-core kernels take (f32 q runs the generic kernel, f32 throughout: much slower) */
    void *k_new = device_random((size_t)HEADS_KV * DIM, 0, &seed), *v_new = device_random((size_t)HEADS_KV * DIM, 0, &seed);
    void *q = device_random((size_t)HEADS_Q * DIM, 1, &seed), *out = NULL;
    if (!k_prompt || !v_prompt || !k_new || !v_new || !q || cudaMalloc(&out, 2 * HEADS_Q * DIM) != cudaSuccess)
        return 1;
    qsdpa_tensor kp = qsdpa_tensor_4d(k_prompt, QSDPA_DTYPE_F32, 1, HEADS_KV, PROMPT, DIM);
    qsdpa_tensor vp = qsdpa_tensor_4d(v_prompt, QSDPA_DTYPE_F32, 1, HEADS_KV, PROMPT, DIM);
    qsdpa_tensor kn = qsdpa_tensor_4d(k_new, QSDPA_DTYPE_F32, 1, HEADS_KV, 1, DIM);
    qsdpa_tensor vn = qsdpa_tensor_4d(v_new, QSDPA_DTYPE_F32, 1, HEADS_KV, 1, DIM);
    qsdpa_tensor qt = qsdpa_tensor_4d(q, QSDPA_DTYPE_F16, 1, HEADS_Q, 1, DIM);
    qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F16, 1, HEADS_Q, 1, DIM);
    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = 1.0f / sqrtf((float)DIM);

    if ((st = qsdpa_cache_append(ctx, cache, 0, &kp, &vp)) != QSDPA_OK) return fail("qsdpa_cache_append", st);

    /* the decode loop, called directly: append the token, attend over everything stored */
    for (int step = 0; step < STEPS; step++) {
        if ((st = qsdpa_cache_append(ctx, cache, 0, &kn, &vn)) != QSDPA_OK) return fail("qsdpa_cache_append", st);
        if ((st = qsdpa_cache_attend(ctx, cache, 0, &qt, &params, &ot)) != QSDPA_OK)
            return fail("qsdpa_cache_attend", st);
    }
    int64_t length = 0;
    qsdpa_cache_length(cache, 0, &length);
    printf("K %s, V %s: tokens stored: %lld, last call ran %s\n", k_text, v_text, (long long)length,
           qsdpa_context_last_route(ctx));

    /* The same attention captured into a graph. A graph replays fixed arguments, so it suits a step whose
     * shapes do not change (here: attending over the current length again); the buffers the call needs
     * have grown during the direct calls above, so the capture allocates nothing. */
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    if (cudaStreamSynchronize(stream) != cudaSuccess ||
        cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) != cudaSuccess)
        return 1;
    st = qsdpa_cache_attend(ctx, cache, 0, &qt, &params, &ot);
    if (cudaStreamEndCapture(stream, &graph) != cudaSuccess || st != QSDPA_OK ||
        cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
        fprintf(stderr, "graph capture failed: %s\n", st != QSDPA_OK ? qsdpa_last_error() : "CUDA error");
        return 1;
    }
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    cudaEventRecord(t0, stream);
    for (int r = 0; r < 100; r++) cudaGraphLaunch(exec, stream);
    cudaEventRecord(t1, stream);
    if (cudaEventSynchronize(t1) != cudaSuccess) return 1;
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, t0, t1);
    printf("graph replay: %.2f us per attention over %lld tokens\n", 1000.0f * ms / 100, (long long)length);

    uint16_t host_out[4];
    cudaMemcpy(host_out, out, sizeof host_out, cudaMemcpyDeviceToHost);
    printf("out[0, 0, 0, 0:4] = %.5f %.5f %.5f %.5f\n", half_value(host_out[0]), half_value(host_out[1]),
           half_value(host_out[2]), half_value(host_out[3]));

    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    qsdpa_cache_destroy(cache);
    qsdpa_context_destroy(ctx);
    cudaFree(k_prompt); cudaFree(v_prompt); cudaFree(k_new); cudaFree(v_new); cudaFree(q); cudaFree(out);
    cudaStreamDestroy(stream);
    return 0;
}
