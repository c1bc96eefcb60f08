/* Sequence-parallel decode benchmark: a 4-bit affine:4:64 cache of B=1, Hq=32,
 * Hkv=8, D=128 at 128K / 512K / 1M tokens, split over 1, 2, 4, 8 GPUs (as many
 * as the machine has). One thread per GPU; every rank times
 * qsdpa_attention_nccl with CUDA events (median of --iters), and separately the
 * partial attention alone, so the collective's share of the time is
 * (full - partial) / full. 1 GPU runs plain qsdpa_attention. The caches are
 * > 2x L2 at every context, so no rotation is needed.
 * Usage: bench_multi_gpu [--contexts 131072,524288,1048576] [--iters 50] [--max-gpus 8] */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qsdpa.h"

enum { HEADS_Q = 32, HEADS_KV = 8, DIM = 128, GROUP = 64, WORDS = DIM * 4 / 32, GROUPS = DIM / GROUP };

typedef struct rank_state {
    int rank, ranks, iters;
    int64_t context;   /* global keys */
    ncclComm_t comm;
    double full_us, partial_us; /* medians */
    char error[256];
} rank_state;

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Fill `bytes` of device memory with pseudo-random words (codes). */
static void fill_random(void *dst, size_t bytes, unsigned seed) {
    size_t chunk = 1 << 22;
    uint32_t *host = malloc(chunk);
    for (size_t i = 0; i < chunk / 4; i++) host[i] = (seed = seed * 1664525u + 1013904223u);
    for (size_t off = 0; off < bytes; off += chunk)
        cudaMemcpy((char *)dst + off, host, bytes - off < chunk ? bytes - off : chunk, cudaMemcpyHostToDevice);
    free(host);
}

/* Scales/biases in f16, all equal to `bits` (a sane small value): content does not change the timing. */
static void fill_half(void *dst, size_t count, uint16_t bits) {
    uint16_t *host = malloc(count * 2);
    for (size_t i = 0; i < count; i++) host[i] = bits;
    cudaMemcpy(dst, host, count * 2, cudaMemcpyHostToDevice);
    free(host);
}

static qsdpa_qtensor device_cache(int64_t len, unsigned seed, void **owned) {
    qsdpa_qtensor t;
    memset(&t, 0, sizeof t);
    qsdpa_format_parse("affine:4:64", &t.format);
    t.dim = DIM;
    size_t rows = (size_t)HEADS_KV * (size_t)len;
    char *base = NULL;
    cudaMalloc((void **)&base, rows * (WORDS * 4 + GROUPS * 4));
    *owned = base;
    uint32_t *codes = (uint32_t *)base;
    uint16_t *scales = (uint16_t *)(codes + rows * WORDS), *biases = scales + rows * GROUPS;
    fill_random(codes, rows * WORDS * 4, seed);
    fill_half(scales, rows * GROUPS, 0x2266); /* 0.0125 */
    fill_half(biases, rows * GROUPS, 0xa400); /* -0.0156 */
    t.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, 1, HEADS_KV, len, WORDS);
    t.scales = qsdpa_tensor_4d(scales, QSDPA_DTYPE_F16, 1, HEADS_KV, len, GROUPS);
    t.biases = qsdpa_tensor_4d(biases, QSDPA_DTYPE_F16, 1, HEADS_KV, len, GROUPS);
    return t;
}

static void *rank_main(void *arg) {
    rank_state *s = arg;
    cudaSetDevice(s->rank);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    o.device = s->rank;
    o.stream = stream;
    qsdpa_context *ctx = NULL;
    if (qsdpa_context_create(&o, &ctx) != QSDPA_OK) {
        snprintf(s->error, sizeof s->error, "%s", qsdpa_last_error());
        return NULL;
    }
    int64_t first = s->context * s->rank / s->ranks, len = s->context * (s->rank + 1) / s->ranks - first;
    void *kown, *vown;
    qsdpa_qtensor k = device_cache(len, 1u + (unsigned)s->rank, &kown), v = device_cache(len, 99u + (unsigned)s->rank, &vown);
    uint16_t *q, *out, *part;
    cudaMalloc((void **)&q, HEADS_Q * DIM * 2);
    cudaMalloc((void **)&out, HEADS_Q * DIM * 2);
    cudaMalloc((void **)&part, HEADS_Q * (DIM + 1) * 4);
    fill_half(q, HEADS_Q * DIM, 0x3000); /* 0.125 */
    qsdpa_tensor qt = qsdpa_tensor_4d(q, QSDPA_DTYPE_F16, 1, HEADS_Q, 1, DIM);
    qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F16, 1, HEADS_Q, 1, DIM);
    qsdpa_tensor pt = qsdpa_tensor_4d(part, QSDPA_DTYPE_F32, 1, HEADS_Q, 1, DIM);
    int64_t lse_shape[3] = {1, HEADS_Q, 1};
    qsdpa_tensor lt = qsdpa_tensor_make((float *)part + HEADS_Q * DIM, QSDPA_DTYPE_F32, 3, lse_shape);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.scale = 0.08838834764f;
    p.key_offset = first;
    p.key_total = s->context;

    float *times = malloc(sizeof(float) * (size_t)s->iters);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int pass = 0; pass < 2; pass++) { /* 0: full (with collective), 1: partial only */
        for (int i = -5; i < s->iters; i++) {
            cudaEventRecord(start, stream);
            qsdpa_status st;
            if (pass == 1) st = qsdpa_attention_partial(ctx, &qt, &k, &v, &p, &pt, &lt);
            else if (s->ranks == 1) st = qsdpa_attention(ctx, &qt, &k, &v, &p, &ot);
            else st = qsdpa_attention_nccl(ctx, s->comm, &qt, &k, &v, &p, &ot, -1);
            cudaEventRecord(stop, stream);
            cudaEventSynchronize(stop);
            if (st != QSDPA_OK) {
                snprintf(s->error, sizeof s->error, "%s", qsdpa_last_error());
                break;
            }
            if (i >= 0) {
                float ms;
                cudaEventElapsedTime(&ms, start, stop);
                times[i] = ms * 1000.0f;
            }
        }
        qsort(times, (size_t)s->iters, sizeof(float), cmp_float);
        (pass == 0 ? &s->full_us : &s->partial_us)[0] = times[s->iters / 2];
    }
    free(times);
    cudaFree(q);
    cudaFree(out);
    cudaFree(part);
    cudaFree(kown);
    cudaFree(vown);
    qsdpa_context_destroy(ctx);
    cudaStreamDestroy(stream);
    return NULL;
}

int main(int argc, char **argv) {
    int64_t contexts[8] = {131072, 524288, 1048576};
    int n_contexts = 3, iters = 50, max_gpus = 8;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--contexts") && a + 1 < argc) {
            n_contexts = 0;
            for (char *tok = strtok(argv[++a], ","); tok && n_contexts < 8; tok = strtok(NULL, ","))
                contexts[n_contexts++] = strtoll(tok, NULL, 10);
        } else if (!strcmp(argv[a], "--iters") && a + 1 < argc) {
            iters = atoi(argv[++a]);
        } else if (!strcmp(argv[a], "--max-gpus") && a + 1 < argc) {
            max_gpus = atoi(argv[++a]);
        } else {
            fprintf(stderr, "bench_multi_gpu: unknown argument '%s'\n", argv[a]);
            return 2;
        }
    }
    if (iters < 1) iters = 1;
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    void *lib = dlopen("libnccl.so.2", RTLD_NOW);
    ncclResult_t (*init_all)(ncclComm_t *, int, const int *) = NULL;
    ncclResult_t (*destroy)(ncclComm_t) = NULL;
    if (lib) {
        *(void **)&init_all = dlsym(lib, "ncclCommInitAll");
        *(void **)&destroy = dlsym(lib, "ncclCommDestroy");
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %d x %s; 4-bit affine:4:64 cache, B=1 Hq=32 Hkv=8 D=128, Lq=1, f16 q\n", gpus, prop.name);
    printf("%9s %5s %11s %11s %9s %11s\n", "context", "gpus", "time_us", "speedup", "effic.", "collective");
    for (int c = 0; c < n_contexts; c++) {
        double one_gpu = 0;
        for (int n = 1; n <= gpus && n <= max_gpus; n *= 2) {
            ncclComm_t comms[8] = {0};
            int devices[8];
            for (int r = 0; r < n; r++) devices[r] = r;
            if (n > 1 && (!init_all || init_all(comms, n, devices) != ncclSuccess)) {
                printf("%9lld %5d   NCCL unavailable\n", (long long)contexts[c], n);
                continue;
            }
            rank_state states[8];
            pthread_t threads[8];
            for (int r = 0; r < n; r++) {
                states[r] = (rank_state){.rank = r, .ranks = n, .iters = iters, .context = contexts[c], .comm = comms[r]};
                pthread_create(&threads[r], NULL, rank_main, &states[r]);
            }
            double full = 0, partial = 0;
            for (int r = 0; r < n; r++) {
                pthread_join(threads[r], NULL);
                if (states[r].error[0]) printf("rank %d: %s\n", r, states[r].error);
                if (states[r].full_us > full) full = states[r].full_us;
                if (states[r].partial_us > partial) partial = states[r].partial_us;
                if (n > 1) destroy(comms[r]);
            }
            if (n == 1) one_gpu = full;
            printf("%9lld %5d %11.1f %10.2fx %8.0f%% %10.0f%%\n", (long long)contexts[c], n, full,
                   one_gpu / full, 100.0 * one_gpu / full / n, n > 1 ? 100.0 * (full - partial) / full : 0.0);
        }
    }
    return 0;
}
