/* The context's persistent pool: every index runs exactly once, thread ids stay in
 * range, the same pool serves many runs (no thread creation per call), and a pool of
 * one thread runs inline; with the workers polling between runs (QSDPA_SPIN_US: the
 * default, a short poll that often runs out between runs, and none) and blocking. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "test_util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/threadpool.h"

typedef struct job {
    atomic_int *hits; /* [count] */
    int threads;
    atomic_int bad_thread;
} job;

static void task(void *arg, int64_t index, int thread) {
    job *j = arg;
    atomic_fetch_add(&j->hits[index], 1);
    if (thread < 0 || thread >= j->threads) atomic_store(&j->bad_thread, 1);
}

/* 200 runs of random sizes on a fresh pool of `threads` polling for `spin` us (NULL: the default). */
static void check_pool(test_rng *rng, int threads, const char *spin) {
    if (spin) setenv("QSDPA_SPIN_US", spin, 1);
    else unsetenv("QSDPA_SPIN_US");
    const char *label = spin ? spin : "default";
    qsdpa_threadpool *pool = NULL;
    CHECK(qsdpa_threadpool_create(threads, "test_threadpool", &pool) == QSDPA_OK, "create %d: %s", threads, qsdpa_last_error());
    if (!pool) return;
    CHECK(qsdpa_threadpool_size(pool) == threads, "size %d != %d", qsdpa_threadpool_size(pool), threads);
    for (int run = 0; run < 200; run++) {
        int64_t count = test_rng_int(rng, 0, 300);
        atomic_int *hits = test_alloc((size_t)(count + 1) * sizeof *hits);
        for (int64_t i = 0; i <= count; i++) atomic_init(&hits[i], 0);
        job j = {hits, threads, 0};
        qsdpa_threadpool_run(pool, count, task, &j);
        if (run % 50 == 49) { /* a pause past the poll: the workers block, the next run wakes them */
            struct timespec pause = {0, 3000000};
            nanosleep(&pause, NULL);
        }
        int64_t wrong = 0;
        for (int64_t i = 0; i < count; i++) wrong += atomic_load(&hits[i]) != 1;
        CHECK(wrong == 0, "spin %s, threads %d, run %d: %lld of %lld indices not run exactly once", label, threads, run,
              (long long)wrong, (long long)count);
        CHECK(atomic_load(&hits[count]) == 0, "index past count ran");
        CHECK(!atomic_load(&j.bad_thread), "thread id outside [0, %d)", threads);
        free(hits);
    }
    qsdpa_threadpool_destroy(pool);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    /* the default poll, one that often runs out between runs, and none */
    const char *spins[] = {NULL, "2", "0"};
    for (int sp = 0; sp < 3; sp++)
        for (int threads = 1; threads <= 5; threads++) check_pool(&rng, threads, spins[sp]);
    unsetenv("QSDPA_SPIN_US");
    /* The context creates its pool once, on first use, and keeps it. */
    qsdpa_context_options o = qsdpa_context_default_options();
    o.num_threads = 3;
    qsdpa_context *ctx;
    CHECK(qsdpa_context_create(&o, &ctx) == QSDPA_OK, "context: %s", qsdpa_last_error());
    qsdpa_threadpool *a = NULL, *b = NULL;
    CHECK(qsdpa_context_pool(ctx, "test_threadpool", &a) == QSDPA_OK && qsdpa_context_pool(ctx, "test_threadpool", &b) == QSDPA_OK, "context pool");
    CHECK(a && a == b && qsdpa_threadpool_size(a) == 3, "the context's pool is not persistent");
    qsdpa_context_destroy(ctx);
    return test_finish("test_threadpool");
}
