/* Tensor-core kernel instantiations of unit "affine8": the rows of the kernel
 * table (kernels_cuda.def) whose unit column is affine8 (affine 8-bit (groups 32, 64, 128)).
 * One file per unit so the instantiations compile in parallel. */
#define QSDPA_CUDA_UNIT_affine8(row) row
#include "cuda/fast_instantiate.cuh"
