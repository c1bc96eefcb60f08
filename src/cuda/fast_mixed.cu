/* Tensor-core kernel instantiations of unit "mixed": the rows of the kernel
 * table (kernels_cuda.def) whose unit column is mixed (mixed K8/V4 and unquantized f16 rows).
 * One file per unit so the instantiations compile in parallel. */
#define QSDPA_CUDA_UNIT_mixed(row) row
#include "cuda/fast_instantiate.cuh"
