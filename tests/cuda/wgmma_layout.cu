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
 * sum is exact in f16/f32 and the comparison is equality. Skips without an
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

/* byte offset of element (r, c) of a [rows][cols] f16 tile stored as 64-column
 * halves of [rows][128 B] with the 128-byte swizzle (16-byte chunk ^= row & 7) */
__host__ __device__ static inline uint32_t swz(int r, int c, int rows) {
    return (uint32_t)((c / 64) * rows * 128 + r * 128 + ((((c % 64) / 8) ^ (r & 7)) << 4) + 2 * (c % 8));
}

/* shared-memory matrix descriptor: start, leading and stride byte offsets, 128-byte swizzle */
__device__ static inline uint64_t desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | ((uint64_t)1 << 62);
}

__device__ static inline void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ static inline void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ static inline void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

#define R8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
              "+f"(d[i + 6]), "+f"(d[i + 7])

/* d (32 f32) += A(smem, K-major) * B(smem, K-major), m64n64k16 */
__device__ static inline void wgmma_64x64_ss(float *d, uint64_t da, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : R8(0), R8(8), R8(16), R8(24)
        : "l"(da), "l"(db), "r"(accumulate));
}

/* d (64 f32) += A(registers) * B(smem, MN-major: trans-b), m64n128k16 */
__device__ static inline void wgmma_64x128_rs_tb(float *d, const uint32_t *a, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
        " {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
        : R8(0), R8(8), R8(16), R8(24), R8(32), R8(40), R8(48), R8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

__global__ void probe(const __half *q, const __half *k, const __half *pm, const __half *v, float *s_out,
                      float *o_out) {
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
        wgmma_64x64_ss(d, desc(sq + off_q, 16, 1024), desc(sk + off_k, 16, 1024), s > 0);
    }
    wg_commit();
    wg_wait0();
    for (int j = 0; j < KEYS / 8; j++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++)
                s_out[(16 * w + l / 4 + 8 * h) * KEYS + 8 * j + 2 * (l % 4) + e] = d[4 * j + 2 * h + e];

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
    for (int kk = 0; kk < KEYS / 16; kk++) wgmma_64x128_rs_tb(d, a[kk], desc(sv + kk * 2048, KEYS * 128, 1024), kk > 0);
    wg_commit();
    wg_wait0();
    for (int j = 0; j < DV / 8; j++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++)
                o_out[(16 * w + l / 4 + 8 * h) * DV + 8 * j + 2 * (l % 4) + e] = d[4 * j + 2 * h + e];
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
    float *ds, *dout;
    cudaMalloc(&dq, sizeof hq); cudaMalloc(&dk, sizeof hk); cudaMalloc(&dp, sizeof hp); cudaMalloc(&dv, sizeof hv);
    cudaMalloc(&ds, sizeof want_s / 2); cudaMalloc(&dout, sizeof want_o / 2);
    cudaMemcpy(dq, hq, sizeof hq, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, hk, sizeof hk, cudaMemcpyHostToDevice);
    cudaMemcpy(dp, hp, sizeof hp, cudaMemcpyHostToDevice);
    cudaMemcpy(dv, hv, sizeof hv, cudaMemcpyHostToDevice);
    cudaMemset(ds, 0xFF, sizeof want_s / 2); /* poison: NaN */
    cudaMemset(dout, 0xFF, sizeof want_o / 2);
    probe<<<1, 128>>>(dq, dk, dp, dv, ds, dout);
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        printf("FAIL: kernel: %s\n", cudaGetErrorString(err));
        return 1;
    }
    static float got_s[ROWS * KEYS], got_o[ROWS * DV];
    cudaMemcpy(got_s, ds, sizeof got_s, cudaMemcpyDeviceToHost);
    cudaMemcpy(got_o, dout, sizeof got_o, cudaMemcpyDeviceToHost);
    int bad = check("S = Q K^T (SS, K-major, 128B swizzle, 2 halves)", got_s, want_s, ROWS * KEYS, KEYS) +
              check("O = P V (RS, V MN-major trans-b, LBO between halves)", got_o, want_o, ROWS * DV, DV);
    return bad ? 1 : 0;
}
