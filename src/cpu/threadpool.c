/* Persistent worker pool: threads are created once per context and woken per call.
 * The caller runs tasks too (as thread 0), so a pool of n threads has n-1 workers.
 *
 * Why the workers spin before they sleep: a call's work (decode at a few thousand keys)
 * is tens of microseconds, and waking a thread parked in the kernel costs about as much
 * on a VM, twice per call (the key split, then the merge). A worker that finished a run
 * keeps polling for the next one for QSDPA_SPIN_US microseconds (default below; 0 = never
 * poll), then blocks on the condition variable; the caller, likewise, polls before it
 * blocks on the workers. Measured (bench/NOTES.md session 17, 2 threads, 4-bit decode):
 * 1K keys 130 -> 86 us a call, 16 keys 35 -> 15 us.
 * The caller only takes the lock to wake sleepers when some worker actually sleeps. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "cpu/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* Microseconds a worker polls for the next run (and the caller for the workers' end)
 * before blocking: long enough to span the gap between two attention calls of a decode
 * step's layers, short enough that an idle pool leaves the cores at once. */
#define DEFAULT_SPIN_US 100

struct qsdpa_threadpool {
    int threads;              /* workers + the caller */
    pthread_t *workers;       /* [threads - 1] */
    int64_t spin_ns;          /* how long to poll before blocking */
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* sleeping workers wait here for a new generation */
    pthread_cond_t done;      /* a blocked caller waits here for the workers */
    atomic_uint_fast64_t generation; /* bumped per run, after the job below is written */
    atomic_int busy;          /* workers still inside the current run */
    atomic_int sleepers;      /* workers blocked (or about to block) on wake */
    atomic_int caller_blocked; /* the caller blocked (or about to block) on done */
    atomic_int stop;
    /* the current job: written before generation is bumped, read after it is seen */
    qsdpa_task_fn task;
    void *arg;
    int64_t count;
    atomic_int_fast64_t next; /* next index to claim */
};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The two things a thread polls for. */
static bool run_started(qsdpa_threadpool *pool, uint64_t seen) {
    return atomic_load(&pool->generation) != seen || atomic_load(&pool->stop);
}
static bool workers_done(qsdpa_threadpool *pool, uint64_t unused) {
    (void)unused;
    return atomic_load(&pool->busy) == 0;
}

/* Poll until cond(pool, x) holds or spin_ns have passed; returns whether it holds. */
static bool spin_until(qsdpa_threadpool *pool, bool (*cond)(qsdpa_threadpool *, uint64_t), uint64_t x) {
    if (cond(pool, x)) return true;
    if (pool->spin_ns <= 0) return false;
    const int64_t deadline = now_ns() + pool->spin_ns;
    for (unsigned n = 1;; n++) {
        cpu_relax();
        if (cond(pool, x)) return true;
        if (n % 64 == 0 && now_ns() > deadline) return false;
    }
}

static void run_tasks(qsdpa_threadpool *pool, int thread) {
    for (;;) {
        int64_t i = atomic_fetch_add(&pool->next, 1);
        if (i >= pool->count) return;
        pool->task(pool->arg, i, thread);
    }
}

typedef struct { qsdpa_threadpool *pool; int thread; } worker_arg;

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    qsdpa_threadpool *pool = wa.pool;
    uint64_t seen = 0;
    for (;;) {
        if (!spin_until(pool, run_started, seen)) {
            /* sleepers is raised before generation is read again under the lock, and the caller
             * bumps generation before it reads sleepers: one of the two sees the other */
            pthread_mutex_lock(&pool->lock);
            atomic_fetch_add(&pool->sleepers, 1);
            while (!atomic_load(&pool->stop) && atomic_load(&pool->generation) == seen)
                pthread_cond_wait(&pool->wake, &pool->lock);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        run_tasks(pool, wa.thread);
        /* the last worker out wakes a caller that stopped polling (the same pairing as above) */
        if (atomic_fetch_sub(&pool->busy, 1) == 1 && atomic_load(&pool->caller_blocked)) {
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    return NULL;
}

/* Polling needs a core per thread: with more threads than the process may use a poller would
 * hold the core a thread with work is waiting for, so such a pool blocks at once. */
static int64_t spin_ns_for(int threads) {
    if (threads > qsdpa_usable_cores()) return 0;
    const char *e = getenv("QSDPA_SPIN_US");
    if (!e || !*e) return (int64_t)DEFAULT_SPIN_US * 1000;
    char *end = NULL;
    long us = strtol(e, &end, 10);
    if (*end != '\0' || us < 0) return (int64_t)DEFAULT_SPIN_US * 1000; /* not a count: keep the default */
    return us > 1000000 ? (int64_t)1000000000 : (int64_t)us * 1000;
}

qsdpa_status qsdpa_threadpool_create(int threads, const char *function, qsdpa_threadpool **out) {
    if (threads < 1) threads = 1;
    qsdpa_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate the thread pool");
    pool->threads = threads;
    pool->spin_ns = spin_ns_for(threads);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->busy, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_blocked, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->next, 0);
    if (threads > 1) {
        pool->workers = calloc((size_t)threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            pool->threads = 1; /* no worker to join */
            qsdpa_threadpool_destroy(pool);
            return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate the thread pool");
        }
    }
    for (int t = 1; t < threads; t++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){pool, t};
        if (!wa || pthread_create(&pool->workers[t - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->threads = t; /* destroy joins only the threads that exist */
            qsdpa_threadpool_destroy(pool);
            return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot start worker thread %d of %d", t,
                              threads);
        }
    }
    *out = pool;
    return QSDPA_OK;
}

void qsdpa_threadpool_destroy(qsdpa_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int t = 1; t < pool->threads; t++) pthread_join(pool->workers[t - 1], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool->workers);
    free(pool);
}

int qsdpa_threadpool_size(const qsdpa_threadpool *pool) { return pool ? pool->threads : 1; }

void qsdpa_threadpool_run(qsdpa_threadpool *pool, int64_t count, qsdpa_task_fn task, void *arg) {
    if (count <= 0) return;
    if (pool->threads == 1 || count == 1) {
        for (int64_t i = 0; i < count; i++) task(arg, i, 0);
        return;
    }
    /* every worker left the previous run (busy reached 0) before that run returned */
    pool->task = task;
    pool->arg = arg;
    pool->count = count;
    atomic_store(&pool->next, 0);
    atomic_store(&pool->busy, pool->threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    run_tasks(pool, 0);
    if (!spin_until(pool, workers_done, 0)) {
        pthread_mutex_lock(&pool->lock);
        atomic_store(&pool->caller_blocked, 1);
        while (atomic_load(&pool->busy) > 0) pthread_cond_wait(&pool->done, &pool->lock);
        atomic_store(&pool->caller_blocked, 0);
        pthread_mutex_unlock(&pool->lock);
    }
}

qsdpa_status qsdpa_context_pool(qsdpa_context *ctx, const char *function, qsdpa_threadpool **out) {
    if (!ctx->pool) {
        qsdpa_status st = qsdpa_threadpool_create(ctx->num_threads, function, &ctx->pool);
        if (st != QSDPA_OK) return st;
    }
    *out = ctx->pool;
    return QSDPA_OK;
}
