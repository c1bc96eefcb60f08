/* Tensor-core kernel instantiations: K 8-bit / V 4-bit affine, and unquantized f16 K/V (the fp16 baseline), D 64 and 128.
 * One file per format family so the instantiations compile in parallel. */
#include "cuda/fast_kernel.cuh"

#define QSDPA_CUDA_FAST(name, DK, DV, FK, FV)                                    \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);  \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) { \
        return qsdpa_cuda_fast_run<DK, DV, FK, FV>(ctx, p);                     \
    }

using k_k8v4g64 = qfast::affine_fmt<8, 64>;
using v_k8v4g64 = qfast::affine_fmt<4, 64>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_k8v4g64_d64, 64, 64, k_k8v4g64, v_k8v4g64)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_k8v4g64_d128, 128, 128, k_k8v4g64, v_k8v4g64)
using k_f16 = qfast::plain_f16_fmt;
using v_f16 = qfast::plain_f16_fmt;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_f16_d64, 64, 64, k_f16, v_f16)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_f16_d128, 128, 128, k_f16, v_f16)
