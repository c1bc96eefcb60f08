/* Sequence-parallel attention: the keys split into slices must give the
 * unsplit result (SPEC §4 tolerances).
 *  1. one device: qsdpa_attention_partial per slice + qsdpa_merge on the GPU;
 *  2. every device count n in {2, 4, 8} the machine has: qsdpa_attention_nccl,
 *     one thread per GPU, one slice per rank, root -1 and a chosen root.
 * Reference: the CPU reference kernel on the same bytes. */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <string.h>

#include "test_util.h"

enum { BATCH = 1, HEADS_Q = 8, HEADS_KV = 2, LEN_Q = 3, DIM = 128 };

typedef struct host_cache {
    qsdpa_format format;
    int64_t len, words, groups;
    uint32_t *codes; /* [B, Hkv, len, words] */
    float *scales, *biases; /* [B, Hkv, len, groups] */
} host_cache;

static void make_cache(test_rng *rng, const char *format, int64_t len, host_cache *c) {
    qsdpa_format_parse(format, &c->format);
    c->len = len;
    qsdpa_format_row_words(&c->format, DIM, &c->words);
    qsdpa_format_row_scales(&c->format, DIM, &c->groups);
    int64_t rows = (int64_t)BATCH * HEADS_KV * len;
    float *x = test_alloc(sizeof(float) * (size_t)(rows * DIM));
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, rows * DIM, 1.0);
    c->codes = test_alloc(sizeof(uint32_t) * (size_t)(rows * c->words));
    c->scales = test_alloc(sizeof(float) * (size_t)(rows * c->groups));
    c->biases = test_alloc(sizeof(float) * (size_t)(rows * c->groups));
    qsdpa_status st = qsdpa_quantize(&c->format, x, QSDPA_DTYPE_F32, rows, DIM, c->codes, c->scales,
                                     qsdpa_format_has_biases(&c->format) ? c->biases : NULL, QSDPA_DTYPE_F32);
    CHECK(st == QSDPA_OK, "quantize: %s", qsdpa_last_error());
    free(x);
}

/* A view of keys [first, first+len) of the cache, on the host or copied to the current device. */
static qsdpa_qtensor slice_view(const host_cache *c, int64_t first, int64_t len, bool device, void **owned) {
    qsdpa_qtensor t;
    memset(&t, 0, sizeof t);
    t.format = c->format;
    t.dim = DIM;
    size_t code_bytes = sizeof(uint32_t) * (size_t)(len * c->words);
    size_t scale_bytes = sizeof(float) * (size_t)(len * c->groups);
    uint32_t *codes = c->codes + first * c->words;
    float *scales = c->scales + first * c->groups, *biases = c->biases + first * c->groups;
    if (device) { /* BATCH*HEADS_KV == rows of a slice are not contiguous across heads: copy per head */
        char *base = NULL;
        size_t per_head = code_bytes + 2 * scale_bytes;
        cudaMalloc((void **)&base, per_head * BATCH * HEADS_KV);
        *owned = base;
        uint32_t *dc = (uint32_t *)base;
        float *ds = (float *)(base + code_bytes * BATCH * HEADS_KV);
        float *db = ds + (size_t)(len * c->groups) * BATCH * HEADS_KV;
        for (int64_t h = 0; h < BATCH * HEADS_KV; h++) {
            cudaMemcpy(dc + h * len * c->words, c->codes + (h * c->len + first) * c->words, code_bytes,
                       cudaMemcpyHostToDevice);
            cudaMemcpy(ds + h * len * c->groups, c->scales + (h * c->len + first) * c->groups, scale_bytes,
                       cudaMemcpyHostToDevice);
            cudaMemcpy(db + h * len * c->groups, c->biases + (h * c->len + first) * c->groups, scale_bytes,
                       cudaMemcpyHostToDevice);
        }
        t.codes = qsdpa_tensor_4d(dc, QSDPA_DTYPE_U32, BATCH, HEADS_KV, len, c->words);
        t.scales = qsdpa_tensor_4d(ds, QSDPA_DTYPE_F32, BATCH, HEADS_KV, len, c->groups);
        t.biases = qsdpa_tensor_4d(db, QSDPA_DTYPE_F32, BATCH, HEADS_KV, len, c->groups);
    } else { /* host: a strided view into the full cache */
        *owned = NULL;
        t.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, BATCH, HEADS_KV, len, c->words);
        t.codes.stride[1] = c->len * c->words;
        t.codes.stride[0] = HEADS_KV * t.codes.stride[1];
        t.scales = qsdpa_tensor_4d(scales, QSDPA_DTYPE_F32, BATCH, HEADS_KV, len, c->groups);
        t.scales.stride[1] = c->len * c->groups;
        t.scales.stride[0] = HEADS_KV * t.scales.stride[1];
        t.biases = t.scales;
        t.biases.data = biases;
    }
    return t; /* affine only: the slicing logic is format-independent */
}

static float max_abs(const float *x, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

static float max_diff(const float *a, const float *b, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, isnan(a[i]) || isnan(b[i]) ? INFINITY : fabsf(a[i] - b[i]));
    return m;
}

/* params for the current device: the sinks (if any) copied to device memory. */
static qsdpa_attention_params device_params(const qsdpa_attention_params *host, qsdpa_tensor *sinks, void **owned) {
    qsdpa_attention_params p = *host;
    *owned = NULL;
    if (host->sinks) {
        *sinks = *host->sinks;
        cudaMalloc(owned, sizeof(float) * HEADS_Q);
        cudaMemcpy(*owned, host->sinks->data, sizeof(float) * HEADS_Q, cudaMemcpyHostToDevice);
        sinks->data = *owned;
        p.sinks = sinks;
    }
    return p;
}

#define OUT_ELEMS ((int64_t)BATCH * HEADS_Q * LEN_Q * DIM)

/* CPU reference over the whole cache. */
static void reference(const host_cache *k, const host_cache *v, const float *q,
                      const qsdpa_attention_params *params, float *out) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.kernel = "cpu.reference";
    qsdpa_context *ctx;
    qsdpa_context_create(&o, &ctx);
    void *unused;
    qsdpa_qtensor kt = slice_view(k, 0, k->len, false, &unused), vt = slice_view(v, 0, v->len, false, &unused);
    qsdpa_tensor qt = qsdpa_tensor_4d((void *)q, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    CHECK(qsdpa_attention(ctx, &qt, &kt, &vt, params, &ot) == QSDPA_OK, "reference: %s", qsdpa_last_error());
    qsdpa_context_destroy(ctx);
}

/* 1. slices on one device, merged with qsdpa_merge on the GPU. */
static void single_device_slices(const host_cache *k, const host_cache *v, const float *q,
                                 const qsdpa_attention_params *params, const float *expected, int slices) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    qsdpa_context *ctx;
    if (qsdpa_context_create(&o, &ctx) != QSDPA_OK) {
        CHECK(0, "CUDA context: %s", qsdpa_last_error());
        return;
    }
    float *dq, *dout, *dparts;
    size_t out_bytes = sizeof(float) * OUT_ELEMS, lse_bytes = sizeof(float) * BATCH * HEADS_Q * LEN_Q;
    cudaMalloc((void **)&dq, out_bytes);
    cudaMalloc((void **)&dout, out_bytes);
    cudaMalloc((void **)&dparts, (out_bytes + lse_bytes) * (size_t)slices);
    cudaMemcpy(dq, q, out_bytes, cudaMemcpyHostToDevice);
    qsdpa_tensor qt = qsdpa_tensor_4d(dq, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    qsdpa_tensor outs[8], lses[8];
    int64_t lse_shape[3] = {BATCH, HEADS_Q, LEN_Q};
    for (int s = 0; s < slices; s++) {
        int64_t first = k->len * s / slices, last = k->len * (s + 1) / slices;
        void *kown, *vown;
        qsdpa_qtensor kt = slice_view(k, first, last - first, true, &kown);
        qsdpa_qtensor vt = slice_view(v, first, last - first, true, &vown);
        qsdpa_tensor dsinks;
        void *sinks_owned;
        qsdpa_attention_params sp = device_params(params, &dsinks, &sinks_owned);
        sp.key_offset = first;
        sp.key_total = k->len;
        if (s != 0) sp.sinks = NULL;
        char *base = (char *)dparts + (out_bytes + lse_bytes) * (size_t)s;
        outs[s] = qsdpa_tensor_4d(base, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
        lses[s] = qsdpa_tensor_make(base + out_bytes, QSDPA_DTYPE_F32, 3, lse_shape);
        CHECK(qsdpa_attention_partial(ctx, &qt, &kt, &vt, &sp, &outs[s], &lses[s]) == QSDPA_OK,
              "partial slice %d: %s", s, qsdpa_last_error());
        cudaDeviceSynchronize();
        cudaFree(kown);
        cudaFree(vown);
        cudaFree(sinks_owned);
    }
    cudaMemset(dout, 0xFF, out_bytes); /* poison */
    qsdpa_tensor ot = qsdpa_tensor_4d(dout, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    CHECK(qsdpa_merge(ctx, slices, outs, lses, &ot, NULL) == QSDPA_OK, "merge: %s", qsdpa_last_error());
    float *got = test_alloc(out_bytes);
    cudaMemcpy(got, dout, out_bytes, cudaMemcpyDeviceToHost);
    float err = max_diff(got, expected, OUT_ELEMS), tol = 2e-5f * max_abs(expected, OUT_ELEMS) + 1e-6f;
    CHECK(err <= tol, "one device, %d slices, causal=%d window=%lld: max error %g > %g", slices, params->causal,
          (long long)params->window, err, tol);
    printf("one device, %d slices, causal=%d window=%lld: max error %.3g (tol %.3g)\n", slices, params->causal,
           (long long)params->window, err, tol);
    free(got);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dparts);
    qsdpa_context_destroy(ctx);
}

/* 2. one thread per GPU through qsdpa_attention_nccl. */
typedef struct rank_job {
    int rank, ranks, root;
    ncclComm_t comm;
    const host_cache *k, *v;
    const float *q;
    qsdpa_attention_params params;
    float *result; /* [OUT_ELEMS] host, written when this rank gets the output */
    qsdpa_status status;
    char message[256];
} rank_job;

static void *rank_main(void *arg) {
    rank_job *job = arg;
    cudaSetDevice(job->rank);
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.device = job->rank;
    qsdpa_context *ctx;
    job->status = qsdpa_context_create(&o, &ctx);
    if (job->status != QSDPA_OK) {
        snprintf(job->message, sizeof job->message, "%s", qsdpa_last_error());
        return NULL;
    }
    int64_t first = job->k->len * job->rank / job->ranks, last = job->k->len * (job->rank + 1) / job->ranks;
    void *kown, *vown;
    qsdpa_qtensor kt = slice_view(job->k, first, last - first, true, &kown);
    qsdpa_qtensor vt = slice_view(job->v, first, last - first, true, &vown);
    float *dq, *dout;
    size_t out_bytes = sizeof(float) * OUT_ELEMS;
    cudaMalloc((void **)&dq, out_bytes);
    cudaMalloc((void **)&dout, out_bytes);
    cudaMemcpy(dq, job->q, out_bytes, cudaMemcpyHostToDevice);
    cudaMemset(dout, 0xFF, out_bytes);
    qsdpa_tensor qt = qsdpa_tensor_4d(dq, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    qsdpa_tensor ot = qsdpa_tensor_4d(dout, QSDPA_DTYPE_F32, BATCH, HEADS_Q, LEN_Q, DIM);
    qsdpa_tensor dsinks;
    void *sinks_owned;
    qsdpa_attention_params p = device_params(&job->params, &dsinks, &sinks_owned);
    p.key_offset = first;
    p.key_total = job->k->len;
    job->status = qsdpa_attention_nccl(ctx, job->comm, &qt, &kt, &vt, &p, &ot, job->root);
    if (job->status != QSDPA_OK) snprintf(job->message, sizeof job->message, "%s", qsdpa_last_error());
    cudaDeviceSynchronize();
    cudaMemcpy(job->result, dout, out_bytes, cudaMemcpyDeviceToHost);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(kown);
    cudaFree(vown);
    cudaFree(sinks_owned);
    qsdpa_context_destroy(ctx);
    return NULL;
}

static void multi_device(int ranks, int root, const host_cache *k, const host_cache *v, const float *q,
                         const qsdpa_attention_params *params, const float *expected) {
    void *lib = dlopen("libnccl.so.2", RTLD_NOW);
    ncclResult_t (*init_all)(ncclComm_t *, int, const int *);
    ncclResult_t (*destroy)(ncclComm_t);
    *(void **)&init_all = lib ? dlsym(lib, "ncclCommInitAll") : NULL;
    *(void **)&destroy = lib ? dlsym(lib, "ncclCommDestroy") : NULL;
    if (!init_all || !destroy) {
        CHECK(0, "libnccl.so.2 not loadable on a %d-GPU machine", ranks);
        return;
    }
    ncclComm_t comms[8];
    int devices[8];
    for (int r = 0; r < ranks; r++) devices[r] = r;
    CHECK(init_all(comms, ranks, devices) == ncclSuccess, "ncclCommInitAll(%d)", ranks);
    rank_job jobs[8];
    pthread_t threads[8];
    for (int r = 0; r < ranks; r++) {
        jobs[r] = (rank_job){.rank = r, .ranks = ranks, .root = root, .comm = comms[r], .k = k, .v = v, .q = q,
                             .params = *params, .result = test_alloc(sizeof(float) * OUT_ELEMS)};
        pthread_create(&threads[r], NULL, rank_main, &jobs[r]);
    }
    for (int r = 0; r < ranks; r++) pthread_join(threads[r], NULL);
    float tol = 2e-5f * max_abs(expected, OUT_ELEMS) + 1e-6f;
    for (int r = 0; r < ranks; r++) {
        CHECK(jobs[r].status == QSDPA_OK, "rank %d/%d: %s", r, ranks, jobs[r].message);
        if (root < 0 || r == root) {
            float err = max_diff(jobs[r].result, expected, OUT_ELEMS);
            CHECK(err <= tol, "%d GPUs rank %d root %d: max error %g > %g", ranks, r, root, err, tol);
            printf("%d GPUs, rank %d, root %d, causal=%d: max error %.3g\n", ranks, r, root, params->causal, err);
        }
        free(jobs[r].result);
        destroy(comms[r]);
    }
}

int main(void) {
    if (test_skip_without_cuda()) return TEST_SKIPPED;
    test_rng rng;
    test_rng_init(&rng, test_seed());
    int64_t len = 3000 + test_rng_int(&rng, 0, 97); /* not a multiple of any tile */
    host_cache k, v;
    make_cache(&rng, "affine:4:64", len, &k);
    make_cache(&rng, "affine:4:64", len, &v);
    float *q = test_alloc(sizeof(float) * OUT_ELEMS), *expected = test_alloc(sizeof(float) * OUT_ELEMS);
    test_fill_normal(&rng, q, QSDPA_DTYPE_F32, OUT_ELEMS, 1.0);
    float sinks[HEADS_Q];
    test_fill_normal(&rng, sinks, QSDPA_DTYPE_F32, HEADS_Q, 1.0);
    qsdpa_tensor sinks_t = qsdpa_tensor_make(sinks, QSDPA_DTYPE_F32, 1, (int64_t[]){HEADS_Q});

    int gpus = 0;
    cudaGetDeviceCount(&gpus);
    for (int variant = 0; variant < 3; variant++) {
        qsdpa_attention_params params = qsdpa_attention_default_params();
        params.scale = 1.0f / sqrtf((float)DIM);
        params.causal = variant >= 1;
        params.window = variant == 2 ? 700 : 0;
        params.sinks = variant == 2 ? &sinks_t : NULL;
        reference(&k, &v, q, &params, expected);
        for (int slices = 1; slices <= 4; slices++) single_device_slices(&k, &v, q, &params, expected, slices);
        for (int n = 2; n <= 8 && n <= gpus; n *= 2) {
            if (!qsdpa_nccl_available()) {
                CHECK(0, "%d GPUs but NCCL not available", gpus);
                break;
            }
            multi_device(n, -1, &k, &v, q, &params, expected);
            multi_device(n, n - 1, &k, &v, q, &params, expected);
        }
    }
    if (gpus < 2) printf("multi-GPU part not run: %d GPU(s) on this machine\n", gpus);
    return test_finish("multigpu.nccl_slices");
}
