/* Where a cache's storage lives: the host heap, or CUDA device memory when
 * the cache was created on a CUDA context (builds with QSDPA_HAVE_CUDA only).
 * Copies take the context's stream, so they are ordered with the device
 * quantizer and the attention kernels that read the same buffers. */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS, madvise */
#endif
#include "cache/cache_internal.h"
#include "cuda/cuda_backend.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#ifdef QSDPA_HAVE_CUDA
#include <cuda_runtime.h>

static qsdpa_status device_fail(cudaError_t err, const char *function, const char *what) {
    return qsdpa_fail(QSDPA_ERR_DEVICE, function, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

/* The cache's device made current before its allocations and copies: cudaMalloc allocates on the thread's
 * current device and cudaDeviceSynchronize waits for that one alone, and the caller may have any current. */
static qsdpa_status enter_device(const qsdpa_cache *c, const char *function) {
    cudaError_t err = cudaSetDevice(c->cuda_device);
    if (err == cudaSuccess) return QSDPA_OK;
    (void)cudaGetLastError();
    return device_fail(err, function, "cudaSetDevice");
}

/* The same for the calls that take no context (destroy, save), which give the caller's current device back:
 * the header promises a current device only of calls on a context */
static int visit_device(const qsdpa_cache *c) {
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    if (cudaSetDevice(c->cuda_device) != cudaSuccess) (void)cudaGetLastError();
    return previous;
}
static void leave_device(int previous) {
    if (previous >= 0 && cudaSetDevice(previous) != cudaSuccess) (void)cudaGetLastError();
}
#endif

/* Host storage: a HOST_HEADER-byte header in front of the caller's bytes says how it was made.
 * Buffers of HUGE_MIN and more are their own anonymous mappings advised for transparent huge
 * pages (zeroed lazily, like calloc): where THP is "madvise" (common), a heap buffer gets 4 KiB
 * pages, and the memory-bound attention rows (f16 / f32 rows, 8-bit codes) spend ~10-20% of
 * their time on page walks at long contexts (bench/NOTES.md session 16). */
#define HOST_HEADER 64
#define HUGE_MIN ((size_t)2 << 20)

static qsdpa_status host_alloc(const char *function, size_t bytes, void **out) {
    if (bytes > SIZE_MAX - 2 * HUGE_MIN)
        return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate %zu bytes", bytes);
    const size_t total = bytes + HOST_HEADER;
    unsigned char *base = NULL;
    size_t mapped = 0; /* 0: calloc'd */
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (total >= HUGE_MIN) {
        const size_t len = (total + HUGE_MIN - 1) / HUGE_MIN * HUGE_MIN;
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED) {
#ifdef MADV_HUGEPAGE
            (void)madvise(m, len, MADV_HUGEPAGE); /* advice only: without THP the pages stay small */
#endif
            base = (unsigned char *)m;
            mapped = len;
        }
    }
#endif
    if (!base) base = (unsigned char *)calloc(1, total);
    if (!base) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate %zu bytes", bytes);
    memcpy(base, &mapped, sizeof mapped);
    *out = base + HOST_HEADER;
    return QSDPA_OK;
}

static void host_free(void *p) {
    unsigned char *base = (unsigned char *)p - HOST_HEADER;
    size_t mapped;
    memcpy(&mapped, base, sizeof mapped);
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (mapped) {
        munmap(base, mapped);
        return;
    }
#endif
    free(base);
}

qsdpa_status qsdpa_cache_mem_alloc(const qsdpa_cache *c, void *stream, const char *function, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return QSDPA_OK;
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        qsdpa_status st = enter_device(c, function);
        if (st != QSDPA_OK) return st;
        cudaError_t err = cudaMalloc(out, bytes);
        /* on the context's stream, waited for: a plain cudaMemset runs on the legacy stream, which a non-blocking
         * context stream does not wait for, and load fills buffers with cudaMemcpy on the legacy stream, so the
         * zeroing must be done before either writes (allocations are rare: capacity grows by doubling, and
         * none happens inside a capture) */
        if (err == cudaSuccess) err = cudaMemsetAsync(*out, 0, bytes, (cudaStream_t)stream);
        if (err == cudaSuccess) err = cudaStreamSynchronize((cudaStream_t)stream);
        if (err != cudaSuccess) {
            if (*out) cudaFree(*out);
            *out = NULL;
            (void)cudaGetLastError(); /* clear the sticky-free error state of a failed allocation */
            return err == cudaErrorMemoryAllocation
                       ? qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate %zu bytes of device memory", bytes)
                       : device_fail(err, function, "cudaMalloc");
        }
        return QSDPA_OK;
    }
#endif
    (void)c;
    (void)stream;
    return host_alloc(function, bytes, out);
}

void qsdpa_cache_mem_free(const qsdpa_cache *c, void *p) {
    if (!p) return;
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        const int previous = visit_device(c);
        cudaFree(p);
        leave_device(previous);
        return;
    }
#endif
    (void)c;
    host_free(p);
}

qsdpa_status qsdpa_cache_mem_copy2d(const qsdpa_cache *c, void *stream, void *dst, size_t dpitch, const void *src,
                                    size_t spitch, size_t width, size_t rows) {
    if (rows == 0 || width == 0) return QSDPA_OK;
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        qsdpa_status st = enter_device(c, "qsdpa_cache");
        if (st != QSDPA_OK) return st;
        cudaError_t err = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDefault,
                                            (cudaStream_t)stream);
        return err == cudaSuccess ? QSDPA_OK : device_fail(err, "qsdpa_cache", "cudaMemcpy2DAsync");
    }
#endif
    (void)c;
    (void)stream;
    for (size_t r = 0; r < rows; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_mem_move(const qsdpa_cache *c, void *stream, void *dst, const void *src, size_t bytes) {
    if (bytes == 0 || dst == src) return QSDPA_OK;
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        qsdpa_status st = enter_device(c, "qsdpa_cache");
        if (st != QSDPA_OK) return st;
        /* Device copies must not overlap: move forward in chunks no longer
         * than the distance between the two regions (dst < src here). */
        size_t gap = dst < src ? (size_t)((const char *)src - (char *)dst) : (size_t)((char *)dst - (const char *)src);
        if (dst > src && gap < bytes)
            return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, "qsdpa_cache", "internal: backward overlapping move");
        for (size_t done = 0; done < bytes; done += gap) {
            size_t n = bytes - done < gap ? bytes - done : gap;
            cudaError_t err = cudaMemcpyAsync((char *)dst + done, (const char *)src + done, n, cudaMemcpyDefault,
                                              (cudaStream_t)stream);
            if (err != cudaSuccess) return device_fail(err, "qsdpa_cache", "cudaMemcpyAsync");
        }
        return QSDPA_OK;
    }
#endif
    (void)c;
    (void)stream;
    memmove(dst, src, bytes);
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_mem_to_host(const qsdpa_cache *c, void *dst, const void *src, size_t bytes) {
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        const int previous = visit_device(c);
        cudaError_t err = cudaDeviceSynchronize(); /* appends may be in flight on any stream */
        if (err == cudaSuccess) err = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
        leave_device(previous);
        return err == cudaSuccess ? QSDPA_OK : device_fail(err, "qsdpa_cache_save", "cudaMemcpy to host");
    }
#endif
    (void)c;
    memcpy(dst, src, bytes);
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_mem_from_host(const qsdpa_cache *c, void *dst, const void *src, size_t bytes) {
#ifdef QSDPA_HAVE_CUDA
    if (c->device) {
        qsdpa_status st = enter_device(c, "qsdpa_cache_load");
        if (st != QSDPA_OK) return st;
        cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
        return err == cudaSuccess ? QSDPA_OK : device_fail(err, "qsdpa_cache_load", "cudaMemcpy to device");
    }
#endif
    (void)c;
    memcpy(dst, src, bytes);
    return QSDPA_OK;
}

qsdpa_status qsdpa_cache_mem_refuse_capture(const qsdpa_cache *c, void *stream, const char *function,
                                            const char *why) {
#ifdef QSDPA_HAVE_CUDA
    if (!c->device) return QSDPA_OK;
    qsdpa_status st = enter_device(c, function); /* the legacy and per-thread streams are the current device's */
    if (st != QSDPA_OK) return st;
    if (qsdpa_cuda_stream_capturing(stream))
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, function, "ctx's stream is being captured into a CUDA graph: %s", why);
#endif
    (void)c;
    (void)stream;
    (void)function;
    (void)why;
    return QSDPA_OK;
}
