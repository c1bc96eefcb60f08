/* The floor under every decode timing: what a kernel that does nothing but read N bytes
 * costs on this card, timed the way bench_gpu times qsdpa_attention (buffers rotated past
 * twice the L2, CUDA events over batches, median; the batch also replayed from a graph).
 * No attention here: a read-only stream (16-byte loads, an XOR kept live by a store that
 * never happens) over a grid of SMs x blocks_per_sm CTAs, each a contiguous slice, as the
 * decode kernel's splits are. Variants:
 *   plain      one launch per call;
 *   pdl        launched with programmatic dependent launch, griddepcontrol.wait before the
 *              loads and launch_dependents at entry (the decode kernel's chain);
 *   pdl+merge  the same plus a second PDL kernel that reads every CTA's 4-byte partial
 *              (the split-K merge's launch and dependency, with none of its work).
 * Sizes are the issue's decode caches: 4-bit g64 D 128 Hkv 8 at 2K/8K/32K/128K and B 8 8K.
 * Usage: gpu_floor [blocks_per_sm ...]   (default 2 4) */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_check.h"


constexpr int THREADS = 256, UNROLL = 4;

__device__ __forceinline__ uint4 load_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* each CTA reads [blockIdx.x * per, +per) of src; `partial` gets its XOR only when it equals
 * `never` (the host passes a value the data cannot give), so the loads stay live */
/* programmatic dependent launch (sm_90): let the next grid launch now, then wait for the previous one */
__device__ __forceinline__ void pdl_chain() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__global__ void __launch_bounds__(THREADS) read_stream(const uint4 *src, size_t n16, size_t per, unsigned *partial,
                                                       unsigned never, int pdl) {
    if (pdl) pdl_chain();
    const size_t lo = blockIdx.x * per, hi = min(n16, lo + per);
    unsigned acc = 0;
    for (size_t i = lo + threadIdx.x; i < hi; i += (size_t)THREADS * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const size_t j = i + (size_t)u * THREADS;
            v[u] = j < hi ? load_stream(src + j) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0 && acc == never) partial[blockIdx.x] = acc;
}

/* the merge's shape without its work: 8 CTAs (one per KV head) read every partial */
__global__ void merge_partials(const unsigned *partial, int n, unsigned *out) {
    pdl_chain();
    unsigned acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc ^= partial[i];
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

struct plan {
    const char *name;
    size_t bytes;
};

int main(int argc, char **argv) {
    std::vector<int> bps_list;
    for (int i = 1; i < argc; i++) bps_list.push_back(atoi(argv[i]));
    if (bps_list.empty()) bps_list = {2, 4};
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount;
    printf("card: %s, %d SMs, L2 %.1f MB\n", prop.name, sms, prop.l2CacheSize / 1e6);

    /* 4-bit g64 D 128: 64 code bytes + 2 x 2 x 2 scale/bias bytes per row, K and V, Hkv 8 */
    const size_t per_key = 8 * 2 * (64 + 8);
    const plan plans[] = {{"2K", 2048 * per_key},   {"8K", 8192 * per_key},       {"32K", 32768 * per_key},
                          {"B8 8K", 8 * 8192 * per_key}, {"128K", 131072 * per_key}};
    const size_t pool_bytes = (size_t)1536 << 20;
    char *pool;
    CK(cudaMalloc(&pool, pool_bytes));
    CK(cudaMemset(pool, 0x5A, pool_bytes));
    unsigned *partial, *merged;
    CK(cudaMalloc(&partial, 64 * 1024 * sizeof(unsigned)));
    CK(cudaMalloc(&merged, 64 * sizeof(unsigned)));
    CK(cudaMemset(partial, 0, 64 * 1024 * sizeof(unsigned))); /* merge_partials reads every slot */
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    /* a 1 GiB device-to-device copy, counted as bytes read + written (bench_gpu's ceiling) */
    {
        const size_t n = (size_t)512 << 20;
        std::vector<double> t;
        for (int r = 0; r < 13; r++) {
            CK(cudaEventRecord(e0, st));
            CK(cudaMemcpyAsync(pool + n, pool, n, cudaMemcpyDeviceToDevice, st));
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (r >= 3) t.push_back(ms * 1e3);
        }
        printf("d2d copy of 512 MiB: %.0f GB/s (read + write)\n", 2.0 * n / (median(t) * 1e-6) / 1e9);
    }
    printf("%-6s %9s %4s %-9s | %8s %8s | %8s %8s\n", "shape", "MB", "bps", "variant", "us", "GB/s", "graph us",
           "GB/s");
    for (const plan &pl : plans)
        for (int bps : bps_list)
            for (int variant = 0; variant < 3; variant++) {
                const size_t n16 = pl.bytes / 16;
                /* copies: enough to pass twice the L2, spaced through the pool */
                const int copies = (int)std::min<size_t>(pool_bytes / pl.bytes, 2 * prop.l2CacheSize / pl.bytes + 2);
                const int blocks = sms * bps;
                const size_t per = (n16 + blocks - 1) / blocks;
                const bool pdl = variant > 0, merge = variant == 2;
                auto launch = [&](int i) {
                    const uint4 *src = (const uint4 *)(pool + (size_t)(i % copies) * pl.bytes);
                    cudaLaunchAttribute attr;
                    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
                    attr.val.programmaticStreamSerializationAllowed = 1;
                    cudaLaunchConfig_t cfg = {};
                    cfg.gridDim = dim3(blocks);
                    cfg.blockDim = dim3(THREADS);
                    cfg.stream = st;
                    cfg.attrs = pdl ? &attr : nullptr;
                    cfg.numAttrs = pdl ? 1 : 0;
                    bool ok = cudaLaunchKernelEx(&cfg, read_stream, src, n16, per, partial, 0xDEADBEEFu, (int)pdl) ==
                              cudaSuccess;
                    if (merge) {
                        cfg.gridDim = dim3(8);
                        cfg.blockDim = dim3(128);
                        ok = ok && cudaLaunchKernelEx(&cfg, merge_partials, (const unsigned *)partial, blocks,
                                                      merged) == cudaSuccess;
                    }
                    return ok;
                };
                const int batch = 10;
                int it = 0;
                for (int i = 0; i < 3 * copies; i++)
                    if (!launch(it++)) CK(cudaGetLastError());
                CK(cudaStreamSynchronize(st));
                /* median over 15 repetitions of enqueue(), per call of the batch, us */
                auto per_call_us = [&](auto enqueue) {
                    std::vector<double> t;
                    for (int r = 0; r < 15; r++) {
                        CK(cudaEventRecord(e0, st));
                        enqueue();
                        CK(cudaEventRecord(e1, st));
                        CK(cudaEventSynchronize(e1));
                        float ms;
                        CK(cudaEventElapsedTime(&ms, e0, e1));
                        t.push_back(ms * 1e3 / batch);
                    }
                    return median(t);
                };
                const double us = per_call_us([&] {
                    for (int i = 0; i < batch; i++) launch(it++);
                });
                /* the same batch from a graph */
                cudaGraph_t graph;
                cudaGraphExec_t exec;
                CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
                for (int i = 0; i < batch; i++) launch(it++);
                CK(cudaStreamEndCapture(st, &graph));
                CK(cudaGraphInstantiate(&exec, graph, 0));
                CK(cudaGraphLaunch(exec, st));
                CK(cudaStreamSynchronize(st));
                const double gus = per_call_us([&] { CK(cudaGraphLaunch(exec, st)); });
                cudaGraphExecDestroy(exec);
                cudaGraphDestroy(graph);
                static const char *names[] = {"plain", "pdl", "pdl+merge"};
                printf("%-6s %9.1f %4d %-9s | %8.2f %8.0f | %8.2f %8.0f\n", pl.name, pl.bytes / 1e6, bps,
                       names[variant], us, pl.bytes / (us * 1e-6) / 1e9, gus, pl.bytes / (gus * 1e-6) / 1e9);
                printf("RESULT,floor,%s,%d,%s,%.3f,%.3f\n", pl.name, bps, names[variant], us, gus);
            }
    return 0;
}
