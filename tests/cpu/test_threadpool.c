/* The context's persistent pool: every index runs exactly once, thread ids stay in
 * range, the same pool serves many runs (no thread creation per call), and a pool of
 * one thread runs inline. */
#include "test_util.h"

#include <stdatomic.h>
#include <string.h>

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

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    for (int threads = 1; threads <= 5; threads++) {
        qsdpa_threadpool *pool = NULL;
        CHECK(qsdpa_threadpool_create(threads, "test_threadpool", &pool) == QSDPA_OK, "create %d: %s", threads, qsdpa_last_error());
        if (!pool) continue;
        CHECK(qsdpa_threadpool_size(pool) == threads, "size %d != %d", qsdpa_threadpool_size(pool), threads);
        for (int run = 0; run < 200; run++) {
            int64_t count = test_rng_int(&rng, 0, 300);
            atomic_int *hits = test_alloc((size_t)(count + 1) * sizeof *hits);
            for (int64_t i = 0; i <= count; i++) atomic_init(&hits[i], 0);
            job j = {hits, threads, 0};
            qsdpa_threadpool_run(pool, count, task, &j);
            int64_t wrong = 0;
            for (int64_t i = 0; i < count; i++) wrong += atomic_load(&hits[i]) != 1;
            CHECK(wrong == 0, "threads %d run %d: %lld of %lld indices not run exactly once", threads, run,
                  (long long)wrong, (long long)count);
            CHECK(atomic_load(&hits[count]) == 0, "index past count ran");
            CHECK(!atomic_load(&j.bad_thread), "thread id outside [0, %d)", threads);
            free(hits);
        }
        qsdpa_threadpool_destroy(pool);
    }
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
