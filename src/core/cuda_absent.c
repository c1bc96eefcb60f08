/* The CUDA backend's entry points in a build without CUDA (QSDPA_CUDA=OFF). */
#include "cuda/cuda_backend.h"

#ifndef QSDPA_HAVE_CUDA
int qsdpa_cuda_available(void) { return 0; }
qsdpa_status qsdpa_cuda_context_init(qsdpa_context *ctx) {
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_context_create", "this build has no CUDA backend");
}
void qsdpa_cuda_context_destroy(qsdpa_context *ctx) { (void)ctx; }
bool qsdpa_cuda_kernels_available(void) { return false; }
void qsdpa_multi_gpu_release(qsdpa_context *ctx) { (void)ctx; }
int qsdpa_nccl_available(void) { return 0; }
qsdpa_status qsdpa_attention_nccl(qsdpa_context *ctx, void *nccl_comm, const qsdpa_tensor *q,
                                  const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                  const qsdpa_attention_params *params, qsdpa_tensor *out, int root) {
    qsdpa_clear_error();
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_attention_nccl",
                      "this build has no CUDA backend (QSDPA_CUDA=OFF), so no NCCL support");
}
qsdpa_status qsdpa_cuda_merge(qsdpa_context *ctx, int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses,
                              qsdpa_tensor *out, qsdpa_tensor *lse_out) {
    (void)ctx; (void)n; (void)outs; (void)lses; (void)out; (void)lse_out;
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_merge", "this build has no CUDA backend (QSDPA_CUDA=OFF)");
}
qsdpa_status qsdpa_quantize_device(qsdpa_context *ctx, const qsdpa_format *format, const void *x, qsdpa_dtype x_dtype,
                                   int64_t rows, int64_t dim, uint32_t *codes, void *scales, void *biases,
                                   qsdpa_dtype scale_dtype) {
    qsdpa_clear_error();
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_quantize_device", "this build has no CUDA backend (QSDPA_CUDA=OFF)");
}
qsdpa_status qsdpa_dequantize_device(qsdpa_context *ctx, const qsdpa_format *format, const uint32_t *codes,
                                     const void *scales, const void *biases, qsdpa_dtype scale_dtype, int64_t rows,
                                     int64_t dim, void *out, qsdpa_dtype out_dtype) {
    qsdpa_clear_error();
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_dequantize_device",
                      "this build has no CUDA backend (QSDPA_CUDA=OFF)");
}
qsdpa_status qsdpa_cuda_check_device_ptr(qsdpa_context *ctx, const void *ptr, const char *function, const char *name) {
    (void)ctx; (void)ptr; (void)name;
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, function, "this build has no CUDA backend (QSDPA_CUDA=OFF)");
}
bool qsdpa_cuda_stream_capturing(void *stream) { (void)stream; return false; }
#else
typedef int qsdpa_cuda_absent_unused; /* ISO C forbids an empty translation unit */
#endif
