/* Random API calls on the CUDA backend for a time budget: test_random_api's
 * attention cases (tests/robustness: shapes, every format, strided views,
 * masks, sinks, causal/window, partial calls, deliberate faults) plus
 * model-like shapes (fuzz_gpu_shapes: the head dims, GQA ratios and long
 * contexts the fast rows serve), each run on the CPU reference and then, with
 * every buffer copied to the device whole (guards included), on an auto CUDA
 * context and one forced to cuda.generic; and test_random_api's qsdpa_merge
 * cases on the auto CUDA context. The buffers come back after each
 * call, so the same checks hold: a rejected call writes nothing and says why,
 * a valid one agrees with the reference within SPEC 4 and writes nothing
 * outside its output elements.
 * QSDPA_FUZZ_SECONDS (default 20), QSDPA_TEST_SEED and QSDPA_FUZZ_CASE as in
 * test_random_api. */
#include "test_util.h"

#ifndef QSDPA_TEST_CUDA
int main(void) {
    printf("SKIP: no CUDA device (this build has no CUDA backend)\n");
    return 77;
}
#else
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "fuzz_attn.h"

fuzz_stats_t fuzz_stats;
qsdpa_context *fuzz_ctx_ref, *fuzz_ctx_auto;
qsdpa_context *fuzz_ctx_forced[FUZZ_MAX_CTX];
const char *fuzz_forced_name[FUZZ_MAX_CTX];
int fuzz_n_forced;

/* ---- the device's memory for the case buffers' twins (fuzz_twin_ops) ------------------- */
static void device_fatal(const char *what, cudaError_t e) {
    fprintf(stderr, "%s: %s: %s (case %lld: %s)\n  replay: QSDPA_TEST_SEED=%llu QSDPA_FUZZ_CASE=%lld ./%s\n",
            fuzz_program, what, cudaGetErrorString(e), (long long)fuzz_case_index, fuzz_case_desc,
            (unsigned long long)fuzz_seed, (long long)fuzz_case_index, fuzz_program);
    exit(1); /* a device fault leaves the context unusable: nothing after it would mean anything */
}

static void *device_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) device_fatal("cudaMalloc", e);
    return p;
}

static void device_copy(void *dst, const void *src, size_t bytes, bool to_twin) {
    cudaError_t e = cudaMemcpy(dst, src, bytes, to_twin ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) device_fatal(to_twin ? "copy to the device" : "copy from the device", e);
}

static void device_release(void *p) { cudaFree(p); }

static void device_sync(void) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) device_fatal("device error after the call", e);
}

static const fuzz_memory cuda_memory = {device_alloc, device_copy, device_release, device_sync};

int main(void) {
    if (test_skip_without_cuda()) return TEST_SKIPPED;
    fuzz_seed = test_seed();
    fuzz_program = "test_cuda_random";
    fuzz_trap_kill();
    fuzz_twin_memory = &cuda_memory;
    fuzz_device = &fuzz_twin_ops;
    fuzz_16bit_contexts = true;
    fuzz_check_slices = false;
    fuzz_gpu_shapes = true;
    const char *env = getenv("QSDPA_FUZZ_SECONDS"), *one = getenv("QSDPA_FUZZ_CASE");
    double budget = env ? atof(env) : 20.0;
    int64_t only = one ? (int64_t)strtoll(one, NULL, 0) : -1;
    fuzz_ctx_ref = fuzz_make_ctx(QSDPA_BACKEND_CPU, "cpu.reference", 1);
    fuzz_ctx_auto = fuzz_make_ctx(QSDPA_BACKEND_CUDA, NULL, 1);
    fuzz_forced_name[0] = "cuda.generic";
    fuzz_ctx_forced[fuzz_n_forced++] = fuzz_make_ctx(QSDPA_BACKEND_CUDA, "cuda.generic", 1);
    fprintf(stderr, "test_cuda_random: budget %.0f s (QSDPA_FUZZ_SECONDS), seed %llu, CUDA contexts: auto, cuda.generic\n",
            budget, (unsigned long long)fuzz_seed);
    double t0 = fuzz_now_seconds();
    int64_t cases = 0, merges = 0;
    for (int64_t i = only >= 0 ? only : 0;; i++) {
        fuzz_begin_case(i);
        test_rng r;
        fuzz_case_rng(&r, fuzz_seed, i);
        const double t_case = fuzz_now_seconds();
        if (test_rng_int(&r, 0, 99) < 85) run_attention_case(&r, i, only >= 0), cases++;
        else run_merge_case(&r, i, only >= 0), merges++;
        /* a case past 10 s is named (runs 182 and 212 lost minutes in the test's own overlap oracle, session 33) */
        if (fuzz_now_seconds() - t_case > 10.0)
            fprintf(stderr, "slow case %lld (%.1f s): %s\n", (long long)i, fuzz_now_seconds() - t_case, fuzz_case_desc);
        if (only >= 0 || fuzz_now_seconds() - t0 > budget) break;
    }
    fprintf(stderr, "test_cuda_random: %lld attention and %lld merge cases in %.1f s: %lld valid attention calls "
            "(reference OK), %lld rejected; %lld GPU runs compared (%lld past SPEC 4 as docs/SPEC.md 8.1 explains); "
            "%lld GPU merges checked\n", (long long)cases, (long long)merges, fuzz_now_seconds() - t0,
            (long long)fuzz_stats.ok, (long long)fuzz_stats.rejected, (long long)fuzz_stats.kernel_runs,
            (long long)fuzz_stats.known, (long long)fuzz_stats.merged);
    fuzz_report();
    qsdpa_context_destroy(fuzz_ctx_ref);
    qsdpa_context_destroy(fuzz_ctx_auto);
    qsdpa_context_destroy(fuzz_ctx_forced[0]);
    return test_finish("test_cuda_random");
}
#endif
