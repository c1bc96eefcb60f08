/* Entry points of the CUDA backend used by the core (context, dispatch). In a
 * build without CUDA, src/core/cuda_absent.c provides versions that report it. */
#ifndef QSDPA_CUDA_BACKEND_H
#define QSDPA_CUDA_BACKEND_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

int qsdpa_cuda_available(void);                       /* compiled in and a device present */
qsdpa_status qsdpa_cuda_context_init(qsdpa_context *ctx);
void qsdpa_cuda_context_destroy(qsdpa_context *ctx);
bool qsdpa_cuda_kernels_available(void);              /* for kernel-table `available` */
void qsdpa_multi_gpu_release(qsdpa_context *ctx);     /* frees qsdpa_attention_nccl's scratch */
/* qsdpa_merge on a CUDA context, called by src/core/merge.c after its
 * validation: device pointers are checked here, the merge runs on ctx's stream. */
qsdpa_status qsdpa_cuda_merge(qsdpa_context *ctx, int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses,
                              qsdpa_tensor *out, qsdpa_tensor *lse_out);
/* QSDPA_ERR_INVALID_ARGUMENT unless ptr is device (or managed) memory usable by ctx's device
 * (the device caches check their append rows with it too). */
qsdpa_status qsdpa_cuda_check_device_ptr(qsdpa_context *ctx, const void *ptr, const char *function, const char *name);
/* Whether work on `stream` (a cudaStream_t; NULL: the legacy stream of the current device) would be
 * captured into a CUDA graph, or would break a capture: the legacy stream while another stream
 * captures. Allocations are refused then (the context's buffers, a device cache's appends). */
bool qsdpa_cuda_stream_capturing(void *stream);

#ifdef __cplusplus
}
#endif
#endif
