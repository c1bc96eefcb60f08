// What the host pays per CUDA runtime call on this machine, beside what one qsdpa_attention
// call pays in all (bench_gpu's "host us/call" column): tells how much of a decode call's
// host time is the library's own and how much the launches it makes.
// Usage (device): gpu_host [iterations]; prints one line per call kind, median of 7 rounds, then
// qsdpa_attention_select (validation and kernel choice) and qsdpa_attention on a CUDA context
// (B 1, Hq 32, Hkv 8, D 128, affine 4/g64 with f16 scales, f16 q and out, Lq 1, 2K keys).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#include <qsdpa.h>

__global__ void empty_kernel(int x) {
    if (x == 12345) asm volatile("griddepcontrol.wait;");
}

template <class F>
static double per_call_us(int n, F f) {
    std::vector<double> rounds;
    for (int r = 0; r < 7; r++) {
        // in runs of 256 with a sync between them, outside the timed part: the launch queue never fills
        double total = 0;
        for (int done = 0; done < n; done += 256) {
            auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < 256; i++) f();
            auto t1 = std::chrono::steady_clock::now();
            total += std::chrono::duration<double, std::micro>(t1 - t0).count();
            cudaDeviceSynchronize();
        }
        rounds.push_back(total / ((n + 255) / 256 * 256));
    }
    std::sort(rounds.begin(), rounds.end());
    return rounds[3];
}

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 8192;
    cudaStream_t st;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    empty_kernel<<<1, 32, 0, st>>>(0);
    cudaDeviceSynchronize();
    auto launch_ex = [&](int nattr, dim3 grid, int smem) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = dim3(128);
        cfg.dynamicSmemBytes = (size_t)smem;
        cfg.stream = st;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = (unsigned)nattr;
        cudaLaunchKernelEx(&cfg, empty_kernel, 0);
    };
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, dev);
    printf("device %s, %d iterations a round, median of 7 rounds, host us per call\n", prop.name, n);
    printf("%-44s %8.3f\n", "empty_kernel<<<1,32>>>", per_call_us(n, [&] { empty_kernel<<<1, 32, 0, st>>>(0); }));
    printf("%-44s %8.3f\n", "cudaLaunchKernelEx, grid 1", per_call_us(n, [&] { launch_ex(0, dim3(1), 0); }));
    printf("%-44s %8.3f\n", "cudaLaunchKernelEx, grid (1,32,8)", per_call_us(n, [&] { launch_ex(0, dim3(1, 32, 8), 0); }));
    printf("%-44s %8.3f\n", "cudaLaunchKernelEx + PDL, grid (1,32,8)", per_call_us(n, [&] { launch_ex(1, dim3(1, 32, 8), 0); }));
    printf("%-44s %8.3f\n", "cudaLaunchKernelEx + PDL, 40 KB smem", per_call_us(n, [&] { launch_ex(1, dim3(1, 32, 8), 40000); }));
    printf("%-44s %8.3f\n", "cudaSetDevice (current)", per_call_us(n, [&] { cudaSetDevice(dev); }));
    printf("%-44s %8.3f\n", "cudaGetDevice", per_call_us(n, [&] { int d; cudaGetDevice(&d); }));
    printf("%-44s %8.3f\n", "cudaGetLastError", per_call_us(n, [&] { (void)cudaGetLastError(); }));
    cudaStreamCaptureStatus cs;
    printf("%-44s %8.3f\n", "cudaStreamIsCapturing", per_call_us(n, [&] { cudaStreamIsCapturing(st, &cs); }));
    printf("%-44s %8.3f\n", "two PDL launches + SetDevice + 2 GetLastError", per_call_us(n, [&] {
               cudaSetDevice(dev);
               launch_ex(1, dim3(1, 32, 8), 40000);
               (void)cudaGetLastError();
               launch_ex(1, dim3(8, 4, 1), 0);
               (void)cudaGetLastError();
           }));

    /* the library: a 2K 4-bit decode call's validation and choice, then the whole call */
    const int64_t B = 1, Hq = 32, Hkv = 8, L = 2048, D = 128, words = D * 4 / 32, groups = D / 64;
    qsdpa_format f;
    qsdpa_format_parse("affine:4:64", &f);
    void *buf[8];
    const size_t bytes[8] = {(size_t)(B * Hkv * L * words * 4), (size_t)(B * Hkv * L * groups * 2),
                             (size_t)(B * Hkv * L * groups * 2), (size_t)(B * Hkv * L * words * 4),
                             (size_t)(B * Hkv * L * groups * 2), (size_t)(B * Hkv * L * groups * 2),
                             (size_t)(B * Hq * D * 2),           (size_t)(B * Hq * D * 2)};
    for (int i = 0; i < 8; i++) {
        cudaMalloc(&buf[i], bytes[i]);
        cudaMemset(buf[i], 0x3a, bytes[i]); /* f16 0x3a3a = 0.78: finite scales, biases and q */
    }
    qsdpa_qtensor kv[2];
    for (int t = 0; t < 2; t++) {
        kv[t].format = f;
        kv[t].dim = D;
        kv[t].codes = qsdpa_tensor_4d(buf[3 * t], QSDPA_DTYPE_U32, B, Hkv, L, words);
        kv[t].scales = qsdpa_tensor_4d(buf[3 * t + 1], QSDPA_DTYPE_F16, B, Hkv, L, groups);
        kv[t].biases = qsdpa_tensor_4d(buf[3 * t + 2], QSDPA_DTYPE_F16, B, Hkv, L, groups);
    }
    qsdpa_tensor q = qsdpa_tensor_4d(buf[6], QSDPA_DTYPE_F16, B, Hq, 1, D);
    qsdpa_tensor out = qsdpa_tensor_4d(buf[7], QSDPA_DTYPE_F16, B, Hq, 1, D);
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.stream = st;
    qsdpa_context *ctx = nullptr;
    if (qsdpa_context_create(&o, &ctx) != QSDPA_OK) {
        printf("qsdpa_context_create: %s\n", qsdpa_last_error());
        return 1;
    }
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.088f;
    const char *name = "";
    if (qsdpa_attention(ctx, &q, &kv[0], &kv[1], &p, &out) != QSDPA_OK) {
        printf("qsdpa_attention: %s\n", qsdpa_last_error());
        return 1;
    }
    printf("%-44s %8.3f\n", "qsdpa_attention_select (2K 4-bit decode)",
           per_call_us(n, [&] { qsdpa_attention_select(ctx, &q, &kv[0], &kv[1], &p, &out, &name); }));
    printf("%-44s %8.3f  (%s)\n", "qsdpa_attention (2K 4-bit decode)",
           per_call_us(n, [&] { qsdpa_attention(ctx, &q, &kv[0], &kv[1], &p, &out); }), name);
    qsdpa_context_destroy(ctx);
    for (int i = 0; i < 8; i++) cudaFree(buf[i]);
    cudaStreamDestroy(st);
    return 0;
}
