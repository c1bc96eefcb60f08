/* Tensor-core kernel instantiations: MXFP4, NVFP4, MXFP8, D 64 and 128.
 * One file per format family so the instantiations compile in parallel. */
#include "cuda/fast_kernel.cuh"

#define QSDPA_CUDA_FAST(name, DK, DV, FK, FV)                                    \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);  \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) { \
        return qsdpa_cuda_fast_run<DK, DV, FK, FV>(ctx, p);                     \
    }

using k_mxfp4 = qfast::fp4_fmt<QSDPA_MODE_MXFP4>;
using v_mxfp4 = qfast::fp4_fmt<QSDPA_MODE_MXFP4>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_mxfp4_d64, 64, 64, k_mxfp4, v_mxfp4)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_mxfp4_d128, 128, 128, k_mxfp4, v_mxfp4)
using k_nvfp4 = qfast::fp4_fmt<QSDPA_MODE_NVFP4>;
using v_nvfp4 = qfast::fp4_fmt<QSDPA_MODE_NVFP4>;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_nvfp4_d64, 64, 64, k_nvfp4, v_nvfp4)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_nvfp4_d128, 128, 128, k_nvfp4, v_nvfp4)
using k_mxfp8 = qfast::mxfp8_fmt;
using v_mxfp8 = qfast::mxfp8_fmt;
QSDPA_CUDA_FAST(qsdpa_cuda_mma_mxfp8_d64, 64, 64, k_mxfp8, v_mxfp8)
QSDPA_CUDA_FAST(qsdpa_cuda_mma_mxfp8_d128, 128, 128, k_mxfp8, v_mxfp8)
