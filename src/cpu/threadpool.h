/* Persistent worker pool owned by a context: no thread creation per call. */
#ifndef QSDPA_THREADPOOL_H
#define QSDPA_THREADPOOL_H

#include "internal.h"

typedef struct qsdpa_threadpool qsdpa_threadpool;

/* task(arg, index, thread) for index in [0, count), spread over the workers and the caller;
 * returns when every index has run. `thread` is in [0, threads) for per-thread scratch. */
typedef void (*qsdpa_task_fn)(void *arg, int64_t index, int thread);

/* `function` names the public entry point in an error message. */
qsdpa_status qsdpa_threadpool_create(int threads, const char *function, qsdpa_threadpool **out);
void qsdpa_threadpool_destroy(qsdpa_threadpool *pool);
int qsdpa_threadpool_size(const qsdpa_threadpool *pool);
void qsdpa_threadpool_run(qsdpa_threadpool *pool, int64_t count, qsdpa_task_fn task, void *arg);

/* The context's pool, created on first use with ctx->num_threads threads. */
qsdpa_status qsdpa_context_pool(qsdpa_context *ctx, const char *function, qsdpa_threadpool **out);

#endif
