/* Helpers of the random-API test (see fuzz_util.h). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "fuzz_util.h"

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FUZZ_KINDS 96
#ifndef FUZZ_PRINT
#define FUZZ_PRINT 3 /* occurrences printed per kind of failure */
#endif

/* ---- guarded buffers -------------------------------------------------------
 * [GUARD bytes of 0xA5][body: bytes][GUARD bytes of 0xA5]; the body starts
 * poisoned (0xFF: NaN in f32/f16/bf16, NaN in FP8, 2^128 as an E8M0 scale),
 * so a kernel that reads outside a view tends to produce NaN. `snap` holds a
 * copy of the whole allocation to prove that a call wrote nothing. */


void gb_alloc(gbuf *g, size_t bytes) {
    g->bytes = bytes ? bytes : 1;
    g->raw = test_alloc(g->bytes + 2 * FUZZ_GUARD);
    g->snap = test_alloc(g->bytes + 2 * FUZZ_GUARD);
    memset(g->raw, FUZZ_GUARD_BYTE, g->bytes + 2 * FUZZ_GUARD);
    g->data = g->raw + FUZZ_GUARD;
    test_poison(g->data, g->bytes);
}

void gb_free(gbuf *g) {
    free(g->raw);
    free(g->snap);
    memset(g, 0, sizeof *g);
}

void gb_snapshot(gbuf *g) {
    if (g->raw) memcpy(g->snap, g->raw, g->bytes + 2 * FUZZ_GUARD);
}
void gb_restore(gbuf *g) {
    if (g->raw) memcpy(g->raw, g->snap, g->bytes + 2 * FUZZ_GUARD);
}
bool gb_unchanged(const gbuf *g) {
    return !g->raw || memcmp(g->raw, g->snap, g->bytes + 2 * FUZZ_GUARD) == 0;
}
bool gb_guards_ok(const gbuf *g) {
    if (!g->raw) return true;
    for (size_t i = 0; i < FUZZ_GUARD; i++)
        if (g->raw[i] != FUZZ_GUARD_BYTE || g->raw[FUZZ_GUARD + g->bytes + i] != FUZZ_GUARD_BYTE) return false;
    return true;
}

/* ---- layouts -----------------------------------------------------------------
 * Strides of a tensor of logical `shape` stored with extents ext[d] >= shape[d]
 * (padding, cache capacity) in the physical order ord (ord[0] outermost; the
 * last logical dim is always innermost so it stays contiguous). Returns the
 * element count of the backing buffer. */
int64_t fuzz_lay(int rank, const int64_t *ext, const int *ord, int64_t *stride) {
    int64_t s = 1;
    for (int i = rank - 1; i >= 0; i--) {
        stride[ord[i]] = s;
        s *= ext[ord[i]];
    }
    return s;
}

/* A random physical order of the outer dims (identity 60% of the time). */
void fuzz_order(test_rng *r, int rank, int *ord) {
    for (int d = 0; d < rank; d++) ord[d] = d;
    if (test_rng_uniform(r) < 0.6) return;
    for (int d = rank - 2; d > 0; d--) {
        int e = (int)test_rng_int(r, 0, d), t = ord[d];
        ord[d] = ord[e];
        ord[e] = t;
    }
}

/* Extents: shape plus random padding on some dims (when pad). */
void fuzz_extents(test_rng *r, int rank, const int64_t *shape, bool pad, int64_t *ext) {
    for (int d = 0; d < rank; d++) ext[d] = shape[d] + (pad && test_rng_uniform(r) < 0.4 ? test_rng_int(r, 1, 3) : 0);
}

/* Element offset of multi-index idx. */
int64_t fuzz_offset(const qsdpa_tensor *t, const int64_t *idx) {
    int64_t o = 0;
    for (int d = 0; d < t->rank; d++) o += idx[d] * t->stride[d];
    return o;
}

/* Advance a multi-index over t's shape; false after the last element. */
bool fuzz_next(const qsdpa_tensor *t, int64_t *idx) {
    for (int d = t->rank - 1; d >= 0; d--) {
        if (++idx[d] < t->shape[d]) return true;
        idx[d] = 0;
    }
    return false;
}

/* Does any element of t (rank 1..4) share an address with another? Every
 * element's offset, sorted: the independent oracle for the validator's
 * overlap rule. Not the quadratic comparison of every pair it once was: the
 * model-like shapes of the device runs give outputs of 10^5-10^6 elements,
 * which that spent hours on (the GPU fuzz "hangs" of runs 182, 212, 220). */
static int compare_offsets(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

bool fuzz_self_overlap(const qsdpa_tensor *t) {
    int64_t n = 1, idx[4] = {0, 0, 0, 0};
    for (int d = 0; d < t->rank; d++) n *= t->shape[d];
    int64_t *offs = test_alloc((size_t)n * sizeof *offs), k = 0;
    do offs[k++] = fuzz_offset(t, idx);
    while (fuzz_next(t, idx));
    qsort(offs, (size_t)n, sizeof *offs, compare_offsets);
    bool dup = false;
    for (int64_t i = 1; i < n && !dup; i++) dup = offs[i] == offs[i - 1];
    free(offs);
    return dup;
}

/* ---- twins of a case's buffers (fuzz_twin_ops) ---------------------------------- */
#define FUZZ_MAX_TWINS 16
const fuzz_memory *fuzz_twin_memory;
static struct { const gbuf *host; uint8_t *twin; size_t bytes; } twins[FUZZ_MAX_TWINS];
static int n_twins;

static void twin_upload(gbuf *const *g, int n) {
    n_twins = 0;
    for (int i = 0; i < n && i < FUZZ_MAX_TWINS; i++) {
        size_t bytes = g[i]->bytes + 2 * FUZZ_GUARD; /* guards too */
        twins[i].twin = fuzz_twin_memory->alloc(bytes);
        fuzz_twin_memory->copy(twins[i].twin, g[i]->raw, bytes, true);
        twins[i].host = g[i], twins[i].bytes = bytes, n_twins++;
    }
}

static void *twin_at(void *host) {
    if (!host) return NULL;
    for (int i = 0; i < n_twins; i++) {
        const uint8_t *raw = twins[i].host->raw;
        if ((const uint8_t *)host >= raw && (const uint8_t *)host < raw + twins[i].bytes)
            return twins[i].twin + ((const uint8_t *)host - raw);
    }
    fuzz_fail("test error: a descriptor points outside the case's buffers", "%p", host);
    return host;
}

static void twin_download(gbuf *const *g, int n) {
    if (fuzz_twin_memory->sync) fuzz_twin_memory->sync();
    for (int i = 0; i < n && i < n_twins; i++) {
        fuzz_twin_memory->copy(g[i]->raw, twins[i].twin, twins[i].bytes, false);
        fuzz_twin_memory->release(twins[i].twin);
    }
    n_twins = 0;
}

const fuzz_device_ops fuzz_twin_ops = {twin_upload, twin_at, twin_download};

double fuzz_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- contexts -------------------------------------------------------------------
 * A context of `backend` forced to `kernel` (NULL: automatic selection); exits if
 * it cannot be made (nothing else in the run would mean anything). */
qsdpa_context *fuzz_make_ctx(qsdpa_backend backend, const char *kernel, int threads) {
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = backend;
    o.kernel = kernel;
    o.num_threads = threads;
    qsdpa_context *c = NULL;
    if (qsdpa_context_create(&o, &c) != QSDPA_OK) {
        fprintf(stderr, "cannot create context (kernel %s): %s\n", kernel ? kernel : "auto", qsdpa_last_error());
        exit(1);
    }
    return c;
}

/* ---- failures ------------------------------------------------------------------
 * Each failure has a short kind; the first FUZZ_PRINT of each kind are printed
 * with the case description and the replay line, the rest only counted. */
static struct { char kind[96]; int count; char first[900]; } fuzz_kinds[FUZZ_KINDS];
static int fuzz_nkinds;
uint64_t fuzz_seed;
int64_t fuzz_case_index;
char fuzz_case_desc[1400]; /* what the current case is, for the report */
const char *fuzz_program = "test_random_api";

void fuzz_begin_case(int64_t index) {
    fuzz_case_index = index;
    /* until the case describes itself: a kill while it is drawn must not print the case before (run 221) */
    snprintf(fuzz_case_desc, sizeof fuzz_case_desc, "(not described yet: the case was being drawn)");
}

void fuzz_case_rng(test_rng *r, uint64_t seed, int64_t index) {
    test_rng_init(r, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(index + 1)));
    test_rng_next(r);
}

/* head, then the case under way and the line that replays it */
static void print_case(const char *head) {
    fprintf(stderr, "%s\n  case: %s\n  replay: QSDPA_TEST_SEED=%llu QSDPA_FUZZ_CASE=%lld ./%s\n", head, fuzz_case_desc,
            (unsigned long long)fuzz_seed, (long long)fuzz_case_index, fuzz_program);
}

void fuzz_fail(const char *kind, const char *fmt, ...) {
    test_failures++;
    int k = 0;
    while (k < fuzz_nkinds && strcmp(fuzz_kinds[k].kind, kind) != 0) k++;
    if (k == fuzz_nkinds && fuzz_nkinds < FUZZ_KINDS) {
        snprintf(fuzz_kinds[k].kind, sizeof fuzz_kinds[k].kind, "%s", kind);
        fuzz_nkinds++;
    }
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int count = k < FUZZ_KINDS ? ++fuzz_kinds[k].count : FUZZ_PRINT + 1;
    if (count == 1)
        snprintf(fuzz_kinds[k].first, sizeof fuzz_kinds[k].first, "case %lld: %s", (long long)fuzz_case_index, msg);
    if (count > FUZZ_PRINT) return;
    char head[700];
    snprintf(head, sizeof head, "FAIL [%s] %s", kind, msg);
    print_case(head);
}

void fuzz_known(const char *kind, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (++fuzz_stats.known > FUZZ_PRINT) return;
    char head[700];
    snprintf(head, sizeof head, "KNOWN [%s] %s", kind, msg);
    print_case(head);
}

static void fuzz_on_kill(int sig) {
    (void)sig;
    char head[64];
    snprintf(head, sizeof head, "\nKILLED during case %lld (SIGTERM)", (long long)fuzz_case_index);
    print_case(head);
    _Exit(124);
}

void fuzz_trap_kill(void) { signal(SIGTERM, fuzz_on_kill); }

void fuzz_report(void) {
    if (!fuzz_nkinds) return;
    fprintf(stderr, "\n==== robustness failures by kind ====\n");
    for (int k = 0; k < fuzz_nkinds; k++)
        fprintf(stderr, "%6d x [%s]\n         first: %s\n", fuzz_kinds[k].count, fuzz_kinds[k].kind,
                fuzz_kinds[k].first);
}

/* The checks every failing call must pass: a message that starts with
 * "<function>: " and says something. */
void fuzz_check_message(const char *function, qsdpa_status st) {
    const char *m = qsdpa_last_error();
    size_t n = strlen(function);
    if (!m || strncmp(m, function, n) != 0 || m[n] != ':' || strlen(m) < n + 4)
        fuzz_fail("error message does not start with the function name",
                  "%s returned %s with message \"%s\"", function, qsdpa_status_string(st), m ? m : "(null)");
}

/* ---- random choices ---------------------------------------------------------- */
bool chance(test_rng *r, double p) { return test_rng_uniform(r) < p; }
const qsdpa_dtype float_dtypes[3] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16, QSDPA_DTYPE_BF16};
qsdpa_dtype any_float(test_rng *r) { return float_dtypes[test_rng_int(r, 0, 2)]; }

/* A valid format of SPEC 2 (or plain). */
qsdpa_format random_format(test_rng *r) {
    static const int bits[6] = {2, 3, 4, 5, 6, 8}, groups[4] = {32, 64, 64, 128};
    qsdpa_format f;
    memset(&f, 0, sizeof f);
    switch (test_rng_int(r, 0, 9)) {
    case 0: case 1: case 2: case 3:
        f.mode = QSDPA_MODE_AFFINE, f.bits = bits[test_rng_int(r, 0, 5)], f.group = groups[test_rng_int(r, 0, 3)];
        break;
    case 4: f.mode = QSDPA_MODE_MXFP4, f.bits = 4, f.group = 32; break;
    case 5: f.mode = QSDPA_MODE_MXFP8, f.bits = 8, f.group = 32; break;
    case 6:
        f.mode = QSDPA_MODE_NVFP4, f.bits = 4, f.group = 16;
        if (chance(r, 0.4)) f.global_scale = (float)(0.5 + 500.0 * test_rng_uniform(r));
        break;
    default:
        f.mode = QSDPA_MODE_PLAIN, f.plain_dtype = any_float(r);
        f.bits = 8 * (int)qsdpa_dtype_size(f.plain_dtype);
        break;
    }
    return f;
}

/* A head dim valid for f: a multiple of its group, small most of the time. */
int64_t random_dim(test_rng *r, const qsdpa_format *f) {
    int64_t most = chance(r, 0.03) ? 1024 : 256;
    if (f->mode == QSDPA_MODE_PLAIN) return chance(r, 0.8) ? test_rng_int(r, 1, 96) : test_rng_int(r, 1, most);
    int64_t m = most / f->group;
    return f->group * (chance(r, 0.7) ? test_rng_int(r, 1, m < 2 ? m : 2) : test_rng_int(r, 1, m));
}

/* A tensor of `shape` in a fresh guarded buffer with a random layout. */
qsdpa_tensor alloc_tensor(test_rng *r, gbuf *g, qsdpa_dtype dt, int rank, const int64_t *shape, bool pad) {
    int ord[4];
    int64_t ext[4], st[4];
    fuzz_order(r, rank, ord);
    fuzz_extents(r, rank, shape, pad, ext);
    gb_alloc(g, (size_t)fuzz_lay(rank, ext, ord, st) * qsdpa_dtype_size(dt));
    qsdpa_tensor t = qsdpa_tensor_make(g->data, dt, rank, shape);
    memcpy(t.stride, st, sizeof st);
    return t;
}

void fill_tensor(test_rng *r, const qsdpa_tensor *t, double sigma) {
    int64_t idx[4] = {0, 0, 0, 0};
    do qsdpa_store_float(t->data, t->dtype, fuzz_offset(t, idx), (float)(sigma * test_rng_normal(r)));
    while (fuzz_next(t, idx));
}


