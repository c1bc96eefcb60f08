/* Probe of the Hopper wgmma conventions a wgmma prefill kernel would rely on
 * (bench/NOTES.md, "Research note: a wgmma prefill"), checked exactly against
 * the host on small integers before any kernel is built on them:
 *   1. S = Q K^T: m64n64k16 with A (Q [64][128]) and B (K [64 keys][128]) both
 *      K-major in shared memory, 128-byte swizzle, two 64-column halves, the
 *      k-step walked by advancing the descriptor's start address;
 *   2. O = P V: m64n128k16 with A (P [64][64]) from registers in the mma.sync
 *      fragment layout and B (V [64 keys][128 dv]) MN-major (trans-b), its two
 *      64-column halves LBO apart;
 *   3. the accumulator layout d[4j + 2h + e] = (row 16w + l/4 + 8h, col 8j + 2(l%4) + e).
 * One warpgroup (128 threads); values are small integers so every product and
 * sum is exact in f16/f32 and the comparison is equality. It calls the kernels' own
 * descriptor, layout and wrappers (src/cuda/wgmma.cuh), plus the n = 64 register-A
 * form of a Dv 64 kernel. Skips without an
 * sm_90 device. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROWS 64
#define DK 128
#define KEYS 64
#define DV 128

#include "cuda/wgmma.cuh" /* the kernel's own descriptor, layout and wrappers under test */

using qfast::tile_chunk;

/* byte offset of element (r, c) in a swizzled tile of `rows` rows */
__host__ __device__ static inline uint32_t swz(int r, int c, int rows) { return tile_chunk(r, c / 8, rows) + 2 * (c % 8); }

#if defined(QSDPA_CUDA_HAVE_WGMMA)
/* accumulator d of warp w, lane l -> out[64][cols] row-major, by the layout under test (3.) */
__device__ static void store_accumulator(float *out, const float *d, int cols, int w, int l) {
    for (int j = 0; j < cols / 8; j++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++)
                out[(16 * w + l / 4 + 8 * h) * cols + 8 * j + 2 * (l % 4) + e] = d[4 * j + 2 * h + e];
}
#endif

__global__ void probe(const __half *q, const __half *k, const __half *pm, const __half *v, float *s_out,
                      float *o_out, float *o64_out) {
#if defined(QSDPA_CUDA_HAVE_WGMMA)
    using namespace qfast;
    __shared__ __align__(1024) unsigned char sq[ROWS * DK * 2];
    __shared__ __align__(1024) unsigned char sk[KEYS * DK * 2];
    __shared__ __align__(1024) unsigned char sv[KEYS * DV * 2];
    const int t = threadIdx.x, w = t / 32, l = t % 32;
    for (int i = t; i < ROWS * DK; i += 128) *(__half *)(sq + swz(i / DK, i % DK, ROWS)) = q[i];
    for (int i = t; i < KEYS * DK; i += 128) *(__half *)(sk + swz(i / DK, i % DK, KEYS)) = k[i];
    for (int i = t; i < KEYS * DV; i += 128) *(__half *)(sv + swz(i / DV, i % DV, KEYS)) = v[i];
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* generic stores -> async proxy */
    __syncthreads();

    /* 1. S = Q K^T: k step s = 16 dims: half s / 4, 32 bytes per step inside the 128-byte row */
    float d[64];
    for (int i = 0; i < 64; i++) d[i] = 0.0f;
    wg_fence();
#pragma unroll
    for (int s = 0; s < DK / 16; s++) {
        const uint32_t off_q = (s / 4) * ROWS * 128 + (s % 4) * 32, off_k = (s / 4) * KEYS * 128 + (s % 4) * 32;
        wg_64x64_ss(d, wg_desc(sq + off_q, 16, 1024), wg_desc(sk + off_k, 16, 1024), s > 0);
    }
    wg_commit();
    wg_wait0();
    store_accumulator(s_out, d, KEYS, w, l);

    /* 2. O = P V: A from registers (mma.sync A fragment layout per warp), V MN-major,
     * k step kk = 16 keys at 2048 bytes, the two 64-dv halves KEYS * 128 bytes apart (LBO) */
    /* every A fragment is loaded before the batch: registers of an issued wgmma stay untouched */
    uint32_t a[KEYS / 16][4];
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++)
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int r = 16 * w + l / 4 + 8 * (x & 1), c = 16 * kk + 2 * (l % 4) + 8 * (x >> 1);
            __half2 h2 = __halves2half2(pm[r * KEYS + c], pm[r * KEYS + c + 1]);
            a[kk][x] = *(uint32_t *)&h2;
        }
    for (int i = 0; i < 64; i++) d[i] = 0.0f;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) wg_64x128_rs_tb(d, a[kk], wg_desc(sv + kk * 2048, KEYS * 128, 1024), kk > 0);
    wg_commit();
    wg_wait0();
    store_accumulator(o_out, d, DV, w, l);

    /* 3. O64 = P V[:, 0:64]: the n = 64 register-A form (a Dv = 64 kernel), first half of V */
    for (int i = 0; i < 64; i++) d[i] = 0.0f;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) wg_64x64_rs_tb(d, a[kk], wg_desc(sv + kk * 2048, KEYS * 128, 1024), kk > 0);
    wg_commit();
    wg_wait0();
    store_accumulator(o64_out, d, 64, w, l);
#endif
}

static int check(const char *what, const float *got, const double *want, int n, int cols) {
    int bad = 0;
    for (int i = 0; i < n; i++)
        if ((double)got[i] != want[i]) {
            if (bad < 5) printf("FAIL %s (%d, %d): got %g want %g\n", what, i / cols, i % cols, got[i], want[i]);
            bad++;
        }
    printf("%s: %s (%d of %d elements differ)\n", what, bad ? "FAIL" : "ok", bad, n);
    return bad;
}

int main(void) {
    int dev = 0, n = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0 || cudaGetDeviceProperties(&prop, dev) != cudaSuccess ||
        prop.major != 9) {
        printf("SKIP: no CUDA device of compute capability 9.x\n");
        return 77;
    }
    const unsigned seed = getenv("QSDPA_TEST_SEED") ? (unsigned)atoll(getenv("QSDPA_TEST_SEED")) : (unsigned)time(NULL);
    printf("seed: QSDPA_TEST_SEED=%u\n", seed);
    srand(seed);
    /* small integers: every f16 product and f32 sum below is exact */
    static __half hq[ROWS * DK], hk[KEYS * DK], hp[ROWS * KEYS], hv[KEYS * DV];
    static float fq[ROWS * DK], fk[KEYS * DK], fp[ROWS * KEYS], fv[KEYS * DV];
    struct { __half *h; float *f; int n; } arrays[] = {{hq, fq, ROWS * DK}, {hk, fk, KEYS * DK},
                                                       {hp, fp, ROWS * KEYS}, {hv, fv, KEYS * DV}};
    for (int a = 0; a < 4; a++)
        for (int i = 0; i < arrays[a].n; i++) {
            arrays[a].f[i] = (float)(rand() % 9 - 4);
            arrays[a].h[i] = __float2half(arrays[a].f[i]);
        }
    static double want_s[ROWS * KEYS], want_o[ROWS * DV];
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < KEYS; c++) {
            double acc = 0.0;
            for (int x = 0; x < DK; x++) acc += (double)fq[r * DK + x] * fk[c * DK + x];
            want_s[r * KEYS + c] = acc;
        }
        for (int c = 0; c < DV; c++) {
            double acc = 0.0;
            for (int x = 0; x < KEYS; x++) acc += (double)fp[r * KEYS + x] * fv[x * DV + c];
            want_o[r * DV + c] = acc;
        }
    }
    __half *dq, *dk, *dp, *dv;
    float *ds, *dout, *do64;
    cudaMalloc(&dq, sizeof hq); cudaMalloc(&dk, sizeof hk); cudaMalloc(&dp, sizeof hp); cudaMalloc(&dv, sizeof hv);
    cudaMalloc(&ds, sizeof want_s / 2); cudaMalloc(&dout, sizeof want_o / 2); cudaMalloc(&do64, ROWS * 64 * sizeof(float));
    cudaMemcpy(dq, hq, sizeof hq, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, hk, sizeof hk, cudaMemcpyHostToDevice);
    cudaMemcpy(dp, hp, sizeof hp, cudaMemcpyHostToDevice);
    cudaMemcpy(dv, hv, sizeof hv, cudaMemcpyHostToDevice);
    cudaMemset(ds, 0xFF, sizeof want_s / 2); /* poison: NaN */
    cudaMemset(dout, 0xFF, sizeof want_o / 2);
    cudaMemset(do64, 0xFF, ROWS * 64 * sizeof(float));
    probe<<<1, 128>>>(dq, dk, dp, dv, ds, dout, do64);
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        printf("FAIL: kernel: %s\n", cudaGetErrorString(err));
        return 1;
    }
    static float got_s[ROWS * KEYS], got_o[ROWS * DV];
    cudaMemcpy(got_s, ds, sizeof got_s, cudaMemcpyDeviceToHost);
    cudaMemcpy(got_o, dout, sizeof got_o, cudaMemcpyDeviceToHost);
    static float got_o64[ROWS * 64];
    static double want_o64[ROWS * 64];
    cudaMemcpy(got_o64, do64, sizeof got_o64, cudaMemcpyDeviceToHost);
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < 64; c++) want_o64[r * 64 + c] = want_o[r * DV + c];
    int bad = check("S = Q K^T (SS, K-major, 128B swizzle, 2 halves)", got_s, want_s, ROWS * KEYS, KEYS) +
              check("O = P V (RS, V MN-major trans-b, LBO between halves)", got_o, want_o, ROWS * DV, DV) +
              check("O64 = P V[:, :64] (RS, n 64)", got_o64, want_o64, ROWS * 64, 64);
    return bad ? 1 : 0;
}
