/* Context lifetime, scratch memory, version, tensor helpers, CPU features. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#if defined(__linux__)
#include <sched.h>
#endif

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/threadpool.h"
#include "cuda/cuda_backend.h"

const char *qsdpa_version(void) { return QSDPA_VERSION_STRING; }

int qsdpa_usable_cores(void) {
#if defined(__linux__)
    cpu_set_t set; /* the cores this process may run on (taskset, a container's cpuset), not the machine's */
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

qsdpa_tensor qsdpa_tensor_make(void *data, qsdpa_dtype dtype, int rank, const int64_t *shape) {
    qsdpa_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = rank;
    if (rank < 1 || rank > QSDPA_MAX_RANK || !shape) return t; /* rejected later by validation */
    int64_t stride = 1;
    for (int d = rank - 1; d >= 0; d--) {
        t.shape[d] = shape[d];
        t.stride[d] = stride;
        stride *= shape[d] > 0 ? shape[d] : 1;
    }
    return t;
}

qsdpa_tensor qsdpa_tensor_4d(void *data, qsdpa_dtype dtype, int64_t d0, int64_t d1, int64_t d2,
                             int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return qsdpa_tensor_make(data, dtype, 4, shape);
}

qsdpa_context_options qsdpa_context_default_options(void) {
    qsdpa_context_options o;
    memset(&o, 0, sizeof o);
    o.backend = QSDPA_BACKEND_CPU;
    return o;
}

qsdpa_attention_params qsdpa_attention_default_params(void) {
    qsdpa_attention_params p;
    memset(&p, 0, sizeof p);
    p.scale = 1.0f;
    return p;
}

int qsdpa_backend_available(qsdpa_backend backend) {
    if (backend == QSDPA_BACKEND_CPU) return 1;
    if (backend == QSDPA_BACKEND_CUDA) return qsdpa_cuda_available();
    return 0;
}

qsdpa_status qsdpa_context_create(const qsdpa_context_options *options, qsdpa_context **out) {
    qsdpa_clear_error();
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "out is NULL");
    qsdpa_context_options o = options ? *options : qsdpa_context_default_options();
    if (o.backend != QSDPA_BACKEND_CPU && o.backend != QSDPA_BACKEND_CUDA)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "options->backend = %d is not a backend",
                          (int)o.backend);
    if (o.num_threads < 0)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "options->num_threads = %d is negative",
                          o.num_threads);
    if (o.kernel && strlen(o.kernel) >= sizeof(((qsdpa_context *)0)->forced_kernel))
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "options->kernel '%s' is too long", o.kernel);
    if (o.kernel && o.kernel[0]) {
        int found = 0;
        for (int i = 0; i < qsdpa_kernel_count(); i++) {
            qsdpa_kernel_info info;
            qsdpa_kernel_get(i, &info);
            if (strcmp(info.name, o.kernel) == 0) found = 1;
        }
        if (!found)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__,
                              "options->kernel '%s' is not in the kernel table (see `qsdpa info`)", o.kernel);
    }
    if (o.backend == QSDPA_BACKEND_CUDA && !qsdpa_cuda_available())
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, __func__,
#ifdef QSDPA_HAVE_CUDA
                          "options->backend = CUDA but no CUDA device is usable"
#else
                          "options->backend = CUDA but this build has no CUDA backend (QSDPA_CUDA=OFF)"
#endif
        );

    qsdpa_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, __func__, "cannot allocate the context");
    ctx->options = o;
    if (o.kernel) strcpy(ctx->forced_kernel, o.kernel);
    ctx->options.kernel = ctx->forced_kernel;
    ctx->num_threads = o.num_threads > 0 ? o.num_threads : qsdpa_usable_cores();
    if (o.backend == QSDPA_BACKEND_CUDA) {
        qsdpa_status st = qsdpa_cuda_context_init(ctx);
        if (st != QSDPA_OK) { free(ctx); return st; }
    }
    *out = ctx;
    return QSDPA_OK;
}

void qsdpa_context_destroy(qsdpa_context *ctx) {
    if (!ctx) return;
    qsdpa_multi_gpu_release(ctx);
    if (ctx->cuda) qsdpa_cuda_context_destroy(ctx);
    if (ctx->pool) qsdpa_threadpool_destroy(ctx->pool);
    free(ctx->scratch);
    free(ctx);
}

qsdpa_status qsdpa_context_set_stream(qsdpa_context *ctx, void *stream) {
    qsdpa_clear_error();
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "ctx is NULL");
    if (ctx->options.backend != QSDPA_BACKEND_CUDA)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, __func__, "ctx is a CPU context; streams are CUDA only");
    ctx->options.stream = stream;
    return QSDPA_OK;
}

qsdpa_status qsdpa_scratch(qsdpa_context *ctx, const char *function, size_t bytes, void **out) {
    if (bytes > ctx->scratch_bytes) {
        size_t grown = bytes + bytes / 4 + 4096;
        void *p = NULL;
        if (posix_memalign(&p, 64, grown) != 0)
            return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate %zu bytes of scratch", grown);
        free(ctx->scratch);
        ctx->scratch = p;
        ctx->scratch_bytes = grown;
    }
    *out = ctx->scratch;
    return QSDPA_OK;
}
