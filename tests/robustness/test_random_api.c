/* Random API calls on the CPU backend for a time budget (QSDPA_FUZZ_SECONDS,
 * default 20; QSDPA_TEST_SEED replays a run, QSDPA_FUZZ_CASE one case of it).
 *
 * Each case draws an attention call (shapes, K/V formats of SPEC 2 and plain,
 * q dtype, masks of rank 1..4 with broadcasts, sinks, causal/window, strided
 * views of larger buffers, the partial API), usually valid, often with one
 * deliberate fault (attn_mutate) whose validity this file decides on its own.
 * Every call runs on the forced reference kernel, the auto-selected kernel and
 * each usable forced CPU kernel:
 *  - an error must come with a message "<function>: ..." and leave every
 *    output byte (and guard byte) as it was; an invalid call must fail and a
 *    valid one must succeed, with the same status on every context;
 *  - a success must leave inputs, guards and the bytes between output
 *    elements alone, contain no NaN, and agree with the reference within
 *    SPEC 4 (units of max|V|); partial slices merged by qsdpa_merge must give
 *    the unsplit result.
 * qsdpa_quantize / qsdpa_dequantize and qsdpa_merge get the same treatment
 * (fuzz_rows.c, fuzz_merge.c). Failures are grouped by kind and printed
 * with a replay line. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_attn.h"

fuzz_stats_t fuzz_stats;

/* ---- contexts -------------------------------------------------------------- */
qsdpa_context *fuzz_ctx_ref, *fuzz_ctx_auto;
qsdpa_context *fuzz_ctx_forced[FUZZ_MAX_CTX];
const char *fuzz_forced_name[FUZZ_MAX_CTX];
int fuzz_n_forced;

static void make_contexts(void) {
    fuzz_ctx_ref = fuzz_make_ctx(QSDPA_BACKEND_CPU, "cpu.reference", 1);
    fuzz_ctx_auto = fuzz_make_ctx(QSDPA_BACKEND_CPU, NULL, 3); /* 3 threads on 2 cores: uneven splits */
    for (int i = 0; i < qsdpa_kernel_count() && fuzz_n_forced < FUZZ_MAX_CTX; i++) {
        qsdpa_kernel_info info;
        if (qsdpa_kernel_get(i, &info) != QSDPA_OK) continue;
        if (info.backend != QSDPA_BACKEND_CPU || !info.usable || strcmp(info.name, "cpu.reference") == 0) continue;
        fuzz_forced_name[fuzz_n_forced] = info.name;
        fuzz_ctx_forced[fuzz_n_forced++] = fuzz_make_ctx(QSDPA_BACKEND_CPU, info.name, 2);
    }
}


/* ---- the shadow run (QSDPA_FUZZ_SHADOW=1) ---------------------------------------------
 * Every call but the reference's reads and writes twins of the case's buffers in
 * fresh host memory, through the hooks test_cuda_random uses for the GPU, so that
 * path runs in CI without one; the cases also draw model-like shapes. */
static void *host_alloc(size_t bytes) { return test_alloc(bytes); }
static void host_copy(void *dst, const void *src, size_t bytes, bool to_twin) { (void)to_twin, memcpy(dst, src, bytes); }
static const fuzz_memory host_memory = {host_alloc, host_copy, free, NULL};

/* ---- main ---------------------------------------------------------------------------------- */
int main(void) {
    fuzz_seed = test_seed();
    fuzz_trap_kill();
    const char *env = getenv("QSDPA_FUZZ_SECONDS"), *one = getenv("QSDPA_FUZZ_CASE");
    double budget = env ? atof(env) : 20.0;
    int64_t only = one ? (int64_t)strtoll(one, NULL, 0) : -1;
    const char *shadow = getenv("QSDPA_FUZZ_SHADOW");
    if (shadow && shadow[0] == '1') {
        fuzz_program = "test_random_api (QSDPA_FUZZ_SHADOW=1)";
        fuzz_twin_memory = &host_memory;
        fuzz_device = &fuzz_twin_ops;
        fuzz_gpu_shapes = true;
    }
    make_contexts();
    fprintf(stderr, "test_random_api: budget %.0f s (QSDPA_FUZZ_SECONDS), kernels: cpu.reference, auto", budget);
    for (int i = 0; i < fuzz_n_forced; i++) fprintf(stderr, ", %s", fuzz_forced_name[i]);
    fprintf(stderr, "\n");
    double t0 = fuzz_now_seconds();
    int64_t counts[3] = {0, 0, 0};
    for (int64_t i = only >= 0 ? only : 0;; i++) {
        fuzz_begin_case(i);
        test_rng r;
        fuzz_case_rng(&r, fuzz_seed, i);
        int64_t kind = test_rng_int(&r, 0, 99);
        if (kind < 70) run_attention_case(&r, i, only >= 0), counts[0]++;
        else if (kind < 85) run_rows_case(&r, i, only >= 0), counts[1]++;
        else run_merge_case(&r, i, only >= 0), counts[2]++;
        if (only >= 0 || fuzz_now_seconds() - t0 > budget) break;
    }
    fprintf(stderr, "test_random_api: %lld attention, %lld quantize/dequantize, %lld merge cases in %.1f s\n",
            (long long)counts[0], (long long)counts[1], (long long)counts[2], fuzz_now_seconds() - t0);
    fprintf(stderr, "  attention calls: %lld valid (reference OK), %lld rejected; %lld kernel runs compared, %lld split+merge "
            "checks; %lld quantize round trips, %lld merges checked\n", (long long)fuzz_stats.ok, (long long)fuzz_stats.rejected,
            (long long)fuzz_stats.kernel_runs, (long long)fuzz_stats.slices, (long long)fuzz_stats.quantized, (long long)fuzz_stats.merged);
    fuzz_report();
    qsdpa_context_destroy(fuzz_ctx_ref);
    qsdpa_context_destroy(fuzz_ctx_auto);
    for (int i = 0; i < fuzz_n_forced; i++) qsdpa_context_destroy(fuzz_ctx_forced[i]);
    return test_finish("test_random_api");
}
