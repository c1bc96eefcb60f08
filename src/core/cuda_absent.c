/* The CUDA backend's entry points in a build without CUDA (QSDPA_CUDA=OFF). */
#include "cuda/cuda_backend.h"

#ifndef QSDPA_HAVE_CUDA
int qsdpa_cuda_available(void) { return 0; }
qsdpa_status qsdpa_cuda_context_init(qsdpa_context *ctx) {
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_context_create", "this build has no CUDA backend");
}
void qsdpa_cuda_context_destroy(qsdpa_context *ctx) { (void)ctx; }
bool qsdpa_cuda_kernels_available(void) { return false; }
#else
typedef int qsdpa_cuda_absent_unused; /* ISO C forbids an empty translation unit */
#endif
