/* CUDA backend: device discovery, per-context state and scratch, pointer
 * checks, and the bridge from CUDA errors to qsdpa statuses. */
#include <atomic>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.cuh"

qsdpa_status qsdpa_cuda_error(cudaError_t err, const char *function, const char *what) {
    return qsdpa_fail(QSDPA_ERR_DEVICE, function, "%s failed: %s (%s)", what, cudaGetErrorString(err),
                      cudaGetErrorName(err));
}

extern "C" int qsdpa_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free error of "no driver" */
        return 0;
    }
    return n > 0;
}

/* Asked for every CUDA row the kernel selection passes, on every call: the answer (the runtime's
 * device count, fixed once it has enumerated the devices) is kept after the first. */
extern "C" bool qsdpa_cuda_kernels_available(void) {
    static std::atomic<int> known{0}; /* 0: not asked yet, 1: yes, 2: no */
    int k = known.load(std::memory_order_relaxed);
    if (!k) known.store(k = qsdpa_cuda_available() ? 1 : 2, std::memory_order_relaxed);
    return k == 1;
}

extern "C" qsdpa_status qsdpa_cuda_context_init(qsdpa_context *ctx) {
    const char *fn = "qsdpa_context_create";
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) return qsdpa_cuda_error(err, fn, "cudaGetDeviceCount");
    int dev = ctx->options.device;
    if (dev < 0 || dev >= n)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "options->device = %d but %d CUDA device(s) exist", dev, n);
    if ((err = cudaSetDevice(dev)) != cudaSuccess) return qsdpa_cuda_error(err, fn, "cudaSetDevice");
    struct qsdpa_cuda_state *st = (struct qsdpa_cuda_state *)calloc(1, sizeof *st);
    if (!st) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate the CUDA state");
    st->device = dev;
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&st->sm_count, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&st->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&st->smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    st->cc = major * 10 + minor;
    ctx->cuda = st;
    return QSDPA_OK;
}

extern "C" void qsdpa_cuda_context_destroy(qsdpa_context *ctx) {
    struct qsdpa_cuda_state *st = ctx->cuda;
    if (!st) return;
    cudaSetDevice(st->device);
    if (st->scratch) cudaFree(st->scratch);
    if (st->stage) cudaFree(st->stage);
    if (st->realign) cudaFree(st->realign);
    if (st->kshift) cudaFree(st->kshift);
    if (st->arrivals) cudaFree(st->arrivals);
    for (struct qsdpa_cuda_retired *r = st->retired, *next; r; r = next) {
        next = r->next;
        cudaFree(r->ptr);
        free(r);
    }
    free(st);
    ctx->cuda = NULL;
}

qsdpa_status qsdpa_cuda_enter(qsdpa_context *ctx, const char *function) {
    if (!ctx->cuda) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "ctx has no CUDA state");
    cudaError_t err = cudaSetDevice(ctx->cuda->device);
    if (err != cudaSuccess) return qsdpa_cuda_error(err, function, "cudaSetDevice");
    return QSDPA_OK;
}

extern "C" bool qsdpa_cuda_stream_capturing(void *stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t query = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
    if (query == cudaSuccess) return capture != cudaStreamCaptureStatusNone;
    (void)cudaGetLastError();
    return query == cudaErrorStreamCaptureImplicit; /* the legacy stream while another stream captures */
}

/* Grow *buf (of *have bytes) to at least bytes. The outgrown buffer is kept,
 * not freed, until the context is destroyed: a CUDA graph captured at a smaller
 * shape holds its address, and freeing it would make that graph's replays write
 * freed memory. Growth is at least twofold, so what is kept stays below the
 * live buffer's size (at most about three times the need is held). Allocating
 * inside a stream capture would invalidate the capture, so there growth is
 * refused with a message that says what to do. */
static qsdpa_status grow_buffer(qsdpa_context *ctx, void **buf, size_t *have, size_t bytes, const char *what,
                                void **out) {
    struct qsdpa_cuda_state *st = ctx->cuda;
    if (bytes > *have) {
        if (qsdpa_cuda_stream_capturing(ctx->options.stream))
            return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_attention",
                              "%s must grow from %zu to %zu bytes, but its stream is being captured "
                              "into a CUDA graph, where allocating would invalidate the capture: make one call of "
                              "this shape (or the largest one the graph will hold) before capturing",
                              what, *have, bytes);
        size_t grown = bytes + bytes / 4 + 4096;
        if (*have <= SIZE_MAX / 2 && grown < 2 * *have) grown = 2 * *have;
        struct qsdpa_cuda_retired *keep = NULL;
        if (*buf && !(keep = (struct qsdpa_cuda_retired *)malloc(sizeof *keep)))
            return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, "qsdpa_attention", "cannot allocate a list node");
        void *p = NULL;
        cudaError_t err = cudaMalloc(&p, grown);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            free(keep);
            /* another thread's global-mode capture forbids the allocation: not out of memory (the copying
             * paths fall back to the generic kernel only on that) */
            const bool captured = err == cudaErrorStreamCaptureUnsupported || err == cudaErrorStreamCaptureInvalidated ||
                                  err == cudaErrorStreamCaptureImplicit;
            return qsdpa_fail(captured ? QSDPA_ERR_UNSUPPORTED : QSDPA_ERR_OUT_OF_MEMORY, "qsdpa_attention",
                              "cudaMalloc(%zu) of %s failed: %s", grown, what, cudaGetErrorString(err));
        }
        if (keep) {
            keep->ptr = *buf;
            keep->next = st->retired;
            st->retired = keep;
        }
        *buf = p;
        *have = grown;
    }
    *out = *buf;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cuda_scratch(qsdpa_context *ctx, size_t bytes, void **out) {
    return grow_buffer(ctx, &ctx->cuda->scratch, &ctx->cuda->scratch_bytes, bytes, "the context's split-K scratch", out);
}

qsdpa_status qsdpa_cuda_stage(qsdpa_context *ctx, size_t bytes, void **out) {
    return grow_buffer(ctx, &ctx->cuda->stage, &ctx->cuda->stage_bytes, bytes, "the context's staged-path buffer", out);
}

qsdpa_status qsdpa_cuda_kshift_buffer(qsdpa_context *ctx, size_t bytes, void **out) {
    return grow_buffer(ctx, &ctx->cuda->kshift, &ctx->cuda->kshift_bytes, bytes, "the context's K-shift buffer", out);
}

qsdpa_status qsdpa_cuda_arrivals(qsdpa_context *ctx, size_t count, unsigned **out) {
    struct qsdpa_cuda_state *st = ctx->cuda;
    const void *before = st->arrivals;
    void *p;
    qsdpa_status s = grow_buffer(ctx, &st->arrivals, &st->arrivals_bytes, count * sizeof(unsigned),
                                 "the context's arrival counters", &p);
    if (s != QSDPA_OK) return s;
    if (p != before) st->arrivals_cleared = false;
    if (!st->arrivals_cleared) { /* new: cleared before the kernel that counts on it, on the same stream */
        cudaError_t err = cudaMemsetAsync(p, 0, st->arrivals_bytes, qsdpa_cuda_stream(ctx));
        if (err != cudaSuccess) return qsdpa_cuda_error(err, "qsdpa_attention", "clearing the arrival counters");
        st->arrivals_cleared = true;
    }
    *out = (unsigned *)p;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cuda_realign_buffer(qsdpa_context *ctx, size_t bytes, void **out) {
    /* its size follows Lk, which a decode loop grows by one key a call: a power of two (at least 1 MiB)
     * makes the regrows (each a cudaMalloc, a buffer kept until the context goes, and a new address
     * for graphs captured later) logarithmic in the context length, a handful over a whole generation */
    size_t want = (size_t)1 << 20;
    while (want < bytes && want <= SIZE_MAX / 2) want *= 2;
    if (want >= bytes) bytes = want;
    return grow_buffer(ctx, &ctx->cuda->realign, &ctx->cuda->realign_bytes, bytes, "the context's realigned-scale buffer", out);
}

extern "C" qsdpa_status qsdpa_cuda_check_device_ptr(qsdpa_context *ctx, const void *ptr, const char *function,
                                                   const char *name) {
    if (!ptr) return QSDPA_OK; /* optional tensors are NULL; required ones were checked by validation */
    size_t slot = ((uintptr_t)ptr >> 8) % QSDPA_CUDA_PTR_CACHE;
    if (ctx->cuda->device_ptrs[slot] == ptr) return QSDPA_OK;
    cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function, "%s = %p is not device memory (%s)", name, ptr,
                          cudaGetErrorString(err));
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                          "%s = %p is host memory but a CUDA context needs device pointers", name, ptr);
    /* another device's memory would fault inside a kernel (or cross the link where peer access is on):
     * refused, as the header says; managed memory migrates, so any device may take it */
    if (attr.type == cudaMemoryTypeDevice && attr.device != ctx->cuda->device)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, function,
                          "%s = %p is memory of CUDA device %d but the context runs on device %d", name, ptr,
                          attr.device, ctx->cuda->device);
    if (attr.type == cudaMemoryTypeDevice) ctx->cuda->device_ptrs[slot] = ptr;
    return QSDPA_OK;
}

qsdpa_status qsdpa_cuda_check_problem(qsdpa_context *ctx, const qsdpa_problem *p, const char *function) {
    if (p->device_checked) return QSDPA_OK;
    struct { const void *ptr; const char *name; } ptrs[] = {
        {p->q, "q->data"},
        {p->k.codes.data, "k->codes.data"},   {p->k.scales.data, "k->scales.data"},
        {p->k.biases.data, "k->biases.data"}, {p->v.codes.data, "v->codes.data"},
        {p->v.scales.data, "v->scales.data"}, {p->v.biases.data, "v->biases.data"},
        {p->mask, "params->mask->data"},      {p->sinks, "params->sinks->data"},
        {p->out, "out->data"},                {p->lse, "lse->data"},
    };
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        qsdpa_status st = qsdpa_cuda_check_device_ptr(ctx, ptrs[i].ptr, function, ptrs[i].name);
        if (st != QSDPA_OK) return st;
    }
    return QSDPA_OK;
}

qsdpa_status qsdpa_cuda_launch_status(const char *function, const char *kernel) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return qsdpa_cuda_error(err, function, kernel);
    return QSDPA_OK;
}
