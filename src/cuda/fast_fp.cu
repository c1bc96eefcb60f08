/* Tensor-core kernel instantiations of unit "fp": the rows of the kernel
 * table (kernels_cuda.def) whose unit column is fp (mxfp4, nvfp4, mxfp8).
 * One file per unit so the instantiations compile in parallel. */
#define QSDPA_CUDA_UNIT_fp(row) row
#include "cuda/fast_instantiate.cuh"
