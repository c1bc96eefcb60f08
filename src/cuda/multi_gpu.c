/* Sequence-parallel attention over NCCL: partial on the local key slice,
 * all-gather of the (out, lse) partials, exact log-sum-exp merge.
 *
 * NCCL is loaded with dlopen so that libqsdpa never needs libnccl to load:
 * a machine without it gets QSDPA_ERR_UNSUPPORTED from this one call. The
 * partials are tiny (B*Hq*Lq*(Dv+1) floats per rank: 16.5 KB at B=1, Hq=32,
 * Lq=1, Dv=128), so one all-gather and a local merge beat a reduce-scatter
 * design in both simplicity and latency. */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>

#include "cuda/cuda_backend.h"

void qsdpa_multi_gpu_release(qsdpa_context *ctx) {
    if (ctx->multi_gpu_scratch) cudaFree(ctx->multi_gpu_scratch);
    ctx->multi_gpu_scratch = NULL;
    ctx->multi_gpu_scratch_bytes = 0;
}

#ifndef QSDPA_HAVE_NCCL
int qsdpa_nccl_available(void) { return 0; }
qsdpa_status qsdpa_attention_nccl(qsdpa_context *ctx, void *nccl_comm, const qsdpa_tensor *q,
                                  const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                  const qsdpa_attention_params *params, qsdpa_tensor *out, int root) {
    qsdpa_clear_error();
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, "qsdpa_attention_nccl", "this build found no nccl.h");
}
#else
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>

typedef struct nccl_api {
    ncclResult_t (*all_gather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*count)(const ncclComm_t, int *);
    ncclResult_t (*user_rank)(const ncclComm_t, int *);
    ncclResult_t (*cu_device)(const ncclComm_t, int *);
    const char *(*error_string)(ncclResult_t);
    int loaded; /* 1 ok, -1 failed */
} nccl_api;

static nccl_api nccl;
static pthread_once_t nccl_once = PTHREAD_ONCE_INIT;

static void nccl_load(void) {
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { nccl.loaded = -1; return; }
    /* POSIX guarantees object/function pointer round trips through dlsym. */
    *(void **)&nccl.all_gather = dlsym(lib, "ncclAllGather");
    *(void **)&nccl.count = dlsym(lib, "ncclCommCount");
    *(void **)&nccl.user_rank = dlsym(lib, "ncclCommUserRank");
    *(void **)&nccl.cu_device = dlsym(lib, "ncclCommCuDevice");
    *(void **)&nccl.error_string = dlsym(lib, "ncclGetErrorString");
    nccl.loaded = nccl.all_gather && nccl.count && nccl.user_rank && nccl.cu_device && nccl.error_string ? 1 : -1;
}

int qsdpa_nccl_available(void) {
    pthread_once(&nccl_once, nccl_load);
    return nccl.loaded == 1;
}

/* Device scratch owned by ctx (grow-only): allocation happens on the first
 * call of a shape, never in the steady state, so graph capture stays legal. */
static qsdpa_status device_scratch(qsdpa_context *ctx, size_t bytes, void **out) {
    if (bytes > ctx->multi_gpu_scratch_bytes) {
        qsdpa_multi_gpu_release(ctx);
        cudaError_t err = cudaMalloc(&ctx->multi_gpu_scratch, bytes);
        if (err != cudaSuccess) {
            ctx->multi_gpu_scratch = NULL;
            return qsdpa_fail(QSDPA_ERR_DEVICE, "qsdpa_attention_nccl", "cudaMalloc(%zu) failed: %s", bytes,
                              cudaGetErrorString(err));
        }
        ctx->multi_gpu_scratch_bytes = bytes;
    }
    *out = ctx->multi_gpu_scratch;
    return QSDPA_OK;
}

static qsdpa_status nccl_check(ncclResult_t r, const char *what) {
    if (r == ncclSuccess) return QSDPA_OK;
    return qsdpa_fail(QSDPA_ERR_DEVICE, "qsdpa_attention_nccl", "%s failed: %s", what, nccl.error_string(r));
}

qsdpa_status qsdpa_attention_nccl(qsdpa_context *ctx, void *nccl_comm, const qsdpa_tensor *q,
                                  const qsdpa_qtensor *k, const qsdpa_qtensor *v,
                                  const qsdpa_attention_params *params, qsdpa_tensor *out, int root) {
    const char *fn = __func__;
    qsdpa_clear_error();
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is NULL");
    if (ctx->options.backend != QSDPA_BACKEND_CUDA)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is a CPU context; a CUDA context is required");
    if (!nccl_comm) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "nccl_comm is NULL");
    if (!qsdpa_nccl_available())
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "NCCL could not be loaded (libnccl.so.2 not found)");
    if (!q || !v) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "%s is NULL", q ? "v" : "q");
    if (q->rank != 4) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "q->rank = %d, expected 4", q->rank);

    ncclComm_t comm = (ncclComm_t)nccl_comm;
    int ranks = 0, rank = 0, comm_device = 0, ctx_device = 0;
    qsdpa_status st = nccl_check(nccl.count(comm, &ranks), "ncclCommCount");
    if (st == QSDPA_OK) st = nccl_check(nccl.user_rank(comm, &rank), "ncclCommUserRank");
    if (st == QSDPA_OK) st = nccl_check(nccl.cu_device(comm, &comm_device), "ncclCommCuDevice");
    if (st != QSDPA_OK) return st;
    ctx_device = ctx->options.device;
    if (comm_device != ctx_device)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "nccl_comm is on device %d but ctx on device %d",
                          comm_device, ctx_device);
    if (root < -1 || root >= ranks)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "root = %d is outside [-1, %d)", root, ranks);
    bool writes_out = root < 0 || rank == root;
    if (writes_out && !out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "out is NULL on rank %d", rank);

    /* Partial layout per rank: out [B,Hq,Lq,Dv] f32, then lse [B,Hq,Lq] f32. */
    int64_t b = q->shape[0], hq = q->shape[1], lq = q->shape[2], dv = v->dim;
    if (b <= 0 || hq <= 0 || lq <= 0 || dv <= 0 || dv > 1024)
        return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "q shape [%lld,%lld,%lld,*] / v->dim %lld invalid",
                          (long long)b, (long long)hq, (long long)lq, (long long)dv);
    size_t rows, out_floats, part_floats, gathered_bytes;
    if (!qsdpa_mul_size((size_t)b * (size_t)hq, (size_t)lq, &rows) ||
        !qsdpa_mul_size(rows, (size_t)dv, &out_floats) || !qsdpa_mul_size(rows, (size_t)dv + 1, &part_floats) ||
        !qsdpa_mul_size(part_floats * sizeof(float), (size_t)ranks + 1, &gathered_bytes))
        return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "partial buffers of %d ranks overflow size_t", ranks);

    void *scratch = NULL;
    if ((st = device_scratch(ctx, gathered_bytes, &scratch)) != QSDPA_OK) return st;
    float *local = (float *)scratch;               /* this rank's partial */
    float *gathered = local + part_floats;         /* ranks x partial */

    qsdpa_attention_params local_params = params ? *params : qsdpa_attention_default_params();
    if (rank != 0) local_params.sinks = NULL; /* the sink column belongs to the softmax once */
    qsdpa_tensor part_out = qsdpa_tensor_4d(local, QSDPA_DTYPE_F32, b, hq, lq, dv);
    int64_t lse_shape[3] = {b, hq, lq};
    qsdpa_tensor part_lse = qsdpa_tensor_make(local + out_floats, QSDPA_DTYPE_F32, 3, lse_shape);
    if ((st = qsdpa_attention_partial(ctx, q, k, v, &local_params, &part_out, &part_lse)) != QSDPA_OK) return st;

    cudaStream_t stream = (cudaStream_t)ctx->options.stream;
    if ((st = nccl_check(nccl.all_gather(local, gathered, part_floats, ncclFloat32, comm, stream),
                         "ncclAllGather")) != QSDPA_OK)
        return st;
    if (!writes_out) return QSDPA_OK;

    /* Host-side views of the gathered partials, kept in ctx's host scratch. */
    void *host = NULL;
    if ((st = qsdpa_scratch(ctx, fn, 2 * sizeof(qsdpa_tensor) * (size_t)ranks, &host)) != QSDPA_OK) return st;
    qsdpa_tensor *outs = host, *lses = outs + ranks;
    for (int r = 0; r < ranks; r++) {
        float *base = gathered + (size_t)r * part_floats;
        outs[r] = qsdpa_tensor_4d(base, QSDPA_DTYPE_F32, b, hq, lq, dv);
        lses[r] = qsdpa_tensor_make(base + out_floats, QSDPA_DTYPE_F32, 3, lse_shape);
    }
    st = qsdpa_merge(ctx, ranks, outs, lses, out, NULL);
    if (st != QSDPA_OK) return st;
    return QSDPA_OK;
}
#endif /* QSDPA_HAVE_NCCL */
