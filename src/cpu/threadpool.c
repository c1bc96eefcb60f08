/* Persistent worker pool: threads are created once per context and woken per call.
 * The caller runs tasks too (as thread 0), so a pool of n threads has n-1 workers. */
#include "cpu/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct qsdpa_threadpool {
    int threads;              /* workers + the caller */
    pthread_t *workers;       /* [threads - 1] */
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* workers wait here for a new generation */
    pthread_cond_t done;      /* the caller waits here for the workers */
    uint64_t generation;      /* bumped per run (under lock) */
    int busy;                 /* workers still inside the current run (under lock) */
    int stop;
    /* the current job */
    qsdpa_task_fn task;
    void *arg;
    int64_t count;
    atomic_int_fast64_t next; /* next index to claim */
};

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
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stop && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stop) break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->lock);
        run_tasks(pool, wa.thread);
        pthread_mutex_lock(&pool->lock);
        if (--pool->busy == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

qsdpa_status qsdpa_threadpool_create(int threads, const char *function, qsdpa_threadpool **out) {
    if (threads < 1) threads = 1;
    qsdpa_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, function, "cannot allocate the thread pool");
    pool->threads = threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->next, 0);
    if (threads > 1) {
        pool->workers = calloc((size_t)threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
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
    pool->stop = 1;
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
    pthread_mutex_lock(&pool->lock);
    pool->task = task;
    pool->arg = arg;
    pool->count = count;
    atomic_store(&pool->next, 0);
    pool->busy = pool->threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    run_tasks(pool, 0);
    pthread_mutex_lock(&pool->lock);
    while (pool->busy > 0) pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

qsdpa_status qsdpa_context_pool(qsdpa_context *ctx, const char *function, qsdpa_threadpool **out) {
    if (!ctx->pool) {
        qsdpa_status st = qsdpa_threadpool_create(ctx->num_threads, function, &ctx->pool);
        if (st != QSDPA_OK) return st;
    }
    *out = ctx->pool;
    return QSDPA_OK;
}
