/* qsdpa_merge for CUDA contexts (src/core/merge.c validates and calls
 * qsdpa_cuda_merge). The arithmetic is merge.c's, in double:
 *   lse = max + ln sum_k exp(lse_k - max),  out = sum_k exp(lse_k - lse) out_k,
 * and rows whose lse_k are all -inf sum their out_k (the reference's
 * all-masked slices). The partials' descriptors travel as one kernel
 * parameter block (CUDA 12.1+ allows 32 KB of parameters), so a call
 * allocates and copies nothing: up to MERGE_MAX partials (GPUs of a node
 * times slices), more give QSDPA_ERR_UNSUPPORTED. */
#include <math.h>
#include <string.h>

#include "cuda/cuda_internal.cuh"

namespace {

constexpr int MERGE_MAX = 128;

struct part_desc {
    const float *out;    /* [B,Hq,Lq,Dv] f32 */
    const float *lse;    /* [B,Hq,Lq] f32 */
    int64_t os[3], ls[3];
};

struct merge_params {
    part_desc parts[MERGE_MAX];
    int n;
    int64_t hq, lq, dv, rows;
    void *out;           /* [B,Hq,Lq,Dv] of out_dtype */
    int out_dtype;
    int64_t os[3];
    float *lse_out;      /* [B,Hq,Lq] or NULL */
    int64_t ls[3];
};

__global__ void merge_kernel(const merge_params p) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.rows * p.dv) return;
    int64_t row = t / p.dv, d = t % p.dv;
    int64_t i = row % p.lq, h = (row / p.lq) % p.hq, b = row / (p.lq * p.hq);
    double max = -INFINITY, total = 0.0;
    for (int k = 0; k < p.n; k++) {
        const part_desc &q = p.parts[k];
        double l = q.lse[b * q.ls[0] + h * q.ls[1] + i * q.ls[2]];
        if (l > max || isnan(l)) max = l;
    }
    for (int k = 0; k < p.n; k++) {
        const part_desc &q = p.parts[k];
        total += max == -INFINITY ? 1.0 : exp(q.lse[b * q.ls[0] + h * q.ls[1] + i * q.ls[2]] - max);
    }
    double sum = 0.0;
    for (int k = 0; k < p.n; k++) {
        const part_desc &q = p.parts[k];
        double l = q.lse[b * q.ls[0] + h * q.ls[1] + i * q.ls[2]];
        double w = max == -INFINITY ? 1.0 : exp(l - max) / total;
        if (w == 0.0) continue; /* a slice of weight 0 may hold NaN (all -inf additive mask) */
        sum += w * q.out[b * q.os[0] + h * q.os[1] + i * q.os[2] + d];
    }
    qd_store_float(p.out, p.out_dtype, b * p.os[0] + h * p.os[1] + i * p.os[2] + d, (float)sum);
    if (p.lse_out && d == 0)
        p.lse_out[b * p.ls[0] + h * p.ls[1] + i * p.ls[2]] = (float)(max == -INFINITY ? -INFINITY : max + log(total));
}

part_desc desc_of(const qsdpa_tensor *o, const qsdpa_tensor *l) {
    part_desc q;
    q.out = (const float *)o->data;
    q.lse = (const float *)l->data;
    for (int d = 0; d < 3; d++) { q.os[d] = o->stride[d]; q.ls[d] = l->stride[d]; }
    return q;
}

} // namespace

extern "C" qsdpa_status qsdpa_cuda_merge(qsdpa_context *ctx, int n, const qsdpa_tensor *outs, const qsdpa_tensor *lses,
                                         qsdpa_tensor *out, qsdpa_tensor *lse_out) {
    const char *fn = "qsdpa_merge";
    qsdpa_status st = qsdpa_cuda_enter(ctx, fn);
    if (st != QSDPA_OK) return st;
    for (int k = 0; k < n; k++) {
        if ((st = qsdpa_cuda_check_device_ptr(ctx, outs[k].data, fn, "outs[k].data")) != QSDPA_OK) return st;
        if ((st = qsdpa_cuda_check_device_ptr(ctx, lses[k].data, fn, "lses[k].data")) != QSDPA_OK) return st;
    }
    if ((st = qsdpa_cuda_check_device_ptr(ctx, out->data, fn, "out->data")) != QSDPA_OK) return st;
    if (lse_out && (st = qsdpa_cuda_check_device_ptr(ctx, lse_out->data, fn, "lse_out->data")) != QSDPA_OK) return st;

    merge_params p;
    memset(&p, 0, sizeof p);
    p.hq = out->shape[1]; p.lq = out->shape[2]; p.dv = out->shape[3];
    p.rows = out->shape[0] * p.hq * p.lq;
    int64_t elems = p.rows * p.dv;
    unsigned blocks = (unsigned)((elems + 255) / 256);
    cudaStream_t stream = qsdpa_cuda_stream(ctx);

    if (n > MERGE_MAX)
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "n = %d partials: the CUDA merge takes at most %d per call", n,
                          MERGE_MAX);
    p.n = n;
    for (int k = 0; k < n; k++) p.parts[k] = desc_of(&outs[k], &lses[k]);
    p.out = out->data;
    p.out_dtype = out->dtype;
    for (int d = 0; d < 3; d++) p.os[d] = out->stride[d];
    p.lse_out = lse_out ? (float *)lse_out->data : NULL;
    if (lse_out)
        for (int d = 0; d < 3; d++) p.ls[d] = lse_out->stride[d];
    merge_kernel<<<blocks, 256, 0, stream>>>(p);
    return qsdpa_cuda_launch_status(fn, "merge_kernel");
}
