/* Hopper warpgroup matrix multiply (wgmma, sm_90a only): shared-memory matrix
 * descriptors for 128-byte-swizzled f16 tiles and the three shapes the prefill
 * kernel uses. Conventions (checked by tests/cuda/wgmma_layout.cu): a tile
 * [rows][cols] of f16 is stored as 64-column halves of [rows][128 B], 16-byte
 * chunk c of row r at chunk (c ^ (r & 7)) (tile_chunk below); a K-major
 * operand's k step of 16 advances the descriptor start by 32 bytes inside a
 * half and by rows * 128 bytes to the next half; an MN-major B (trans-b) steps
 * 16 keys by 2048 bytes, its 64-column halves LBO = rows * 128 apart.
 * Accumulators: d[4j + 2h + e] = (row 16 * warp + lane / 4 + 8h,
 * col 8j + 2 (lane % 4) + e): the mma.sync C layout of each warp. */
#ifndef QSDPA_CUDA_WGMMA_CUH
#define QSDPA_CUDA_WGMMA_CUH

#include <stdint.h>

namespace qfast {

/* byte offset of 16-byte chunk c (8 f16) of row r in a swizzled tile of `rows` rows */
__host__ __device__ constexpr uint32_t tile_chunk(int r, int c, int rows) {
    return (uint32_t)((c / 8) * rows * 128 + r * 128 + (((c % 8) ^ (r & 7)) << 4));
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QSDPA_CUDA_HAVE_WGMMA 1

__device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | ((uint64_t)1 << 62);
}
/* the descriptor of `desc`'s operand moved by `bytes` (a multiple of 16): the start field is
 * address / 16 in 14 bits, and shared addresses stay below 256 KB, so no carry leaves it */
__device__ __forceinline__ uint64_t wg_desc_add(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* shared memory written by ordinary stores or cp.async, read next by wgmma */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* Keep the compiler from moving reads or writes of wgmma operand registers across the
 * fence / wait that order them (the hardware reads and writes them asynchronously). */
__device__ __forceinline__ void wg_hold(float *r, int n) {
#pragma unroll
    for (int i = 0; i < n; i++) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void wg_hold_regs(uint32_t *r, int n) {
#pragma unroll
    for (int i = 0; i < n; i++) asm volatile("" : "+r"(r[i])::"memory");
}

#define QSDPA_WG_R8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                       "+f"(d[i + 6]), "+f"(d[i + 7])

/* d[32] (+)= A (smem, K-major) B (smem, K-major), m64n64k16 */
__device__ __forceinline__ void wg_64x64_ss(float *d, uint64_t da, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : QSDPA_WG_R8(0), QSDPA_WG_R8(8), QSDPA_WG_R8(16), QSDPA_WG_R8(24)
        : "l"(da), "l"(db), "r"(accumulate));
}

/* d[32] (+)= A (registers) B (smem, MN-major), m64n64k16 */
__device__ __forceinline__ void wg_64x64_rs_tb(float *d, const uint32_t *a, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
        : QSDPA_WG_R8(0), QSDPA_WG_R8(8), QSDPA_WG_R8(16), QSDPA_WG_R8(24)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

/* d[64] (+)= A (registers) B (smem, MN-major), m64n128k16 */
__device__ __forceinline__ void wg_64x128_rs_tb(float *d, const uint32_t *a, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
        " {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
        : QSDPA_WG_R8(0), QSDPA_WG_R8(8), QSDPA_WG_R8(16), QSDPA_WG_R8(24), QSDPA_WG_R8(32), QSDPA_WG_R8(40),
          QSDPA_WG_R8(48), QSDPA_WG_R8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}
#undef QSDPA_WG_R8
#endif

} // namespace qfast

#endif
