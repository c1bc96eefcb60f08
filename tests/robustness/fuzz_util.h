/* Shared by the files of the random-API test (tests/robustness): guarded
 * buffers, strided layouts, random choices, the failure registry (each kind of
 * failure printed a few times with the case and its replay line), the
 * contexts, and the three case runners. */
#ifndef QSDPA_FUZZ_UTIL_H
#define QSDPA_FUZZ_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "test_util.h"

/* ---- guarded buffers -------------------------------------------------------
 * [GUARD bytes of 0xA5][body: bytes][GUARD bytes of 0xA5]; the body starts
 * poisoned (0xFF: NaN in f32/f16/bf16, NaN in FP8, 2^128 as an E8M0 scale),
 * so a kernel that reads outside a view tends to produce NaN. `snap` holds a
 * copy of the whole allocation to prove that a call wrote nothing. */
#define FUZZ_GUARD 64
#define FUZZ_GUARD_BYTE 0xA5
typedef struct gbuf {
    uint8_t *raw;  /* [GUARD + bytes + GUARD] */
    uint8_t *data; /* raw + GUARD: the body handed to qsdpa */
    uint8_t *snap; /* copy of raw taken by gb_snapshot */
    size_t bytes;  /* body size */
} gbuf;

void gb_alloc(gbuf *g, size_t bytes);
void gb_free(gbuf *g);
void gb_snapshot(gbuf *g);
void gb_restore(gbuf *g);       /* back to the snapshot */
bool gb_unchanged(const gbuf *g); /* every byte (guards too) equals the snapshot */
bool gb_guards_ok(const gbuf *g);

/* ---- layouts ------------------------------------------------------------------
 * fuzz_lay: strides of a tensor of extents ext (>= its shape: padding, cache
 * capacity) in physical order ord (ord[0] outermost, the last logical dim
 * innermost); returns the backing element count. */
int64_t fuzz_lay(int rank, const int64_t *ext, const int *ord, int64_t *stride);
void fuzz_order(test_rng *r, int rank, int *ord);                          /* random outer order */
void fuzz_extents(test_rng *r, int rank, const int64_t *shape, bool pad, int64_t *ext);
int64_t fuzz_offset(const qsdpa_tensor *t, const int64_t *idx);            /* element offset */
bool fuzz_next(const qsdpa_tensor *t, int64_t *idx);                       /* next multi-index */
bool fuzz_self_overlap(const qsdpa_tensor *t); /* brute force: two elements at one address? */

/* ---- random choices ----------------------------------------------------------- */
bool chance(test_rng *r, double p);
qsdpa_dtype any_float(test_rng *r);
qsdpa_format random_format(test_rng *r);                   /* valid, SPEC 2 or plain */
int64_t random_dim(test_rng *r, const qsdpa_format *f);    /* a valid head dim for f */
/* A tensor of `shape` in a fresh guarded buffer with a random layout; fill it. */
qsdpa_tensor alloc_tensor(test_rng *r, gbuf *g, qsdpa_dtype dt, int rank, const int64_t *shape, bool pad);
void fill_tensor(test_rng *r, const qsdpa_tensor *t, double sigma);

/* ---- contexts ---------------------------------------------------------------------- */
qsdpa_context *fuzz_make_ctx(qsdpa_backend backend, const char *kernel, int threads); /* exits on failure */
double fuzz_now_seconds(void); /* monotonic, for the time budgets */

/* ---- failures ------------------------------------------------------------------ */
enum { EXPECT_OK, EXPECT_ERR, EXPECT_ANY }; /* what this test's own reading of SPEC 5 says */
extern uint64_t fuzz_seed;
extern int64_t fuzz_case_index;
/* the loop's next case: its index, and a description that says it has none yet */
void fuzz_begin_case(int64_t index);
/* case index's generator under seed: every program that draws or replays a case seeds it here, so a seed:case
 * replay (and fuzz_dump) draws what the run drew */
void fuzz_case_rng(test_rng *r, uint64_t seed, int64_t index);
extern char fuzz_case_desc[1400]; /* the current case, printed with its failures */
extern const char *fuzz_program;  /* named in the replay line */
void fuzz_fail(const char *kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void fuzz_report(void);
/* A failing call's message must start with "<function>: " and say something. */
void fuzz_check_message(const char *function, qsdpa_status st);

/* ---- run-wide state (test_random_api.c) ------------------------------------------ */
#define FUZZ_MAX_CTX 16
extern qsdpa_context *fuzz_ctx_ref;  /* forced "cpu.reference" */
extern qsdpa_context *fuzz_ctx_auto; /* auto selection, 3 threads */
extern qsdpa_context *fuzz_ctx_forced[FUZZ_MAX_CTX]; /* every other usable CPU kernel */
extern const char *fuzz_forced_name[FUZZ_MAX_CTX];
extern int fuzz_n_forced;
typedef struct fuzz_stats_t { int64_t ok, rejected, kernel_runs, slices, quantized, merged, known; } fuzz_stats_t;
extern fuzz_stats_t fuzz_stats; /* outcome counts, printed at the end */
/* A result past SPEC 4 that a departure docs/SPEC.md 8 documents explains (the caller has checked that it does):
 * printed with its replay line and counted in fuzz_stats.known, not a failure */
void fuzz_known(const char *kind, const char *fmt, ...);
/* On SIGTERM (`timeout` ending a run) print the case under way and its replay line, then exit 124: a case can
 * take minutes where a seed has seconds (run 182; run 212's seed 1671012628 ran past its 400 s), and the kill
 * otherwise leaves no trace of which case it was */
void fuzz_trap_kill(void);

/* A test that runs its contexts on a device sets fuzz_device (NULL: the CPU
 * test): upload copies each buffer whole (guards too) to the device, at maps a
 * host pointer into an uploaded buffer to its device twin (NULL stays NULL),
 * download copies every buffer back over the host one. */
typedef struct fuzz_device_ops {
    void (*upload)(gbuf *const *g, int n);
    void *(*at)(void *host);
    void (*download)(gbuf *const *g, int n);
} fuzz_device_ops;
extern const fuzz_device_ops *fuzz_device; /* defined in fuzz_attention.c */

/* The usual ops: twins of the case's buffers in another memory, one call at a
 * time. A memory supplies alloc (exits on failure), copy (to_twin: host ->
 * twin), release and sync (before the copies back; may exit on a device
 * error). test_cuda_random's memory is the GPU's; test_random_api's shadow
 * run's is host memory at other addresses (the same path, in CI). */
typedef struct fuzz_memory {
    void *(*alloc)(size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes, bool to_twin);
    void (*release)(void *p);
    void (*sync)(void);
} fuzz_memory;
extern const fuzz_memory *fuzz_twin_memory;
extern const fuzz_device_ops fuzz_twin_ops;

/* ---- the case runners --------------------------------------------------------------- */
void run_attention_case(test_rng *r, int64_t index, bool verbose); /* fuzz_attention.c */
void run_rows_case(test_rng *r, int64_t index, bool verbose);      /* fuzz_rows.c */
void run_merge_case(test_rng *r, int64_t index, bool verbose);     /* fuzz_merge.c */

#endif
