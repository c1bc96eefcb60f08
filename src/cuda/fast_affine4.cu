/* Tensor-core kernel instantiations: affine 4-bit (groups 32, 64, 128), D 64 and 128 (group 128: D 128 only).
 * One file per format family so the instantiations compile in parallel. */
#include "cuda/fast_kernel.cuh"

#define QSDPA_CUDA_FAST(name, DK, DV, FK, FV)                                    \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);  \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) { \
        return qsdpa_cuda_fast_run<DK, DV, FK, FV>(ctx, p);                     \
    }

using k_a4g32 = qfast::affine_fmt<4, 32>;
using v_a4g32 = qfast::affine_fmt<4, 32>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_a4g32_d64, 64, 64, k_a4g32, v_a4g32)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_a4g32_d128, 128, 128, k_a4g32, v_a4g32)
using k_a4g64 = qfast::affine_fmt<4, 64>;
using v_a4g64 = qfast::affine_fmt<4, 64>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_a4g64_d64, 64, 64, k_a4g64, v_a4g64)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_a4g64_d128, 128, 128, k_a4g64, v_a4g64)
using k_a4g128 = qfast::affine_fmt<4, 128>;
using v_a4g128 = qfast::affine_fmt<4, 128>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_a4g128_d128, 128, 128, k_a4g128, v_a4g128)
