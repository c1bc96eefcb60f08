/* Helpers shared by the C tests: fresh random data, poisoning, checks. */
#ifndef QSDPA_TEST_UTIL_H
#define QSDPA_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "qsdpa.h"

/* Random generator seeded from the clock unless QSDPA_TEST_SEED is set; the
 * seed is printed so a failure can be replayed. */
typedef struct { uint64_t state; } test_rng;
uint64_t test_seed(void);
void test_rng_init(test_rng *rng, uint64_t seed);
uint64_t test_rng_next(test_rng *rng);
double test_rng_uniform(test_rng *rng);         /* [0, 1) */
double test_rng_normal(test_rng *rng);          /* N(0, 1) */
int64_t test_rng_int(test_rng *rng, int64_t lo, int64_t hi); /* [lo, hi] */

/* Fill n values of dtype with sigma * N(0,1). */
void test_fill_normal(test_rng *rng, void *data, qsdpa_dtype dtype, int64_t n, double sigma);
/* An outlier channel in rows [rows][dim] of float values: one value a group of `group` set to `value`, its channel
 * moving with the row ((7 r + 3 g) % group), as K caches with an outlier channel have (SPEC 9): the group's affine
 * bias lands near the outlier and the other codes near the top. spread > 0: each one value x (1 + spread u), u
 * uniform in [-1, 1) from rng, so the bias changes binade from row to row (fuzz case 1657218644:442) */
void test_outlier_channel(float *x, int64_t rows, int64_t dim, int64_t group, float value, double spread, test_rng *rng);
/* Fill bytes with a NaN pattern (0xFF bytes: NaN for f32/f16/bf16). */
void test_poison(void *data, size_t bytes);

/* Failure accounting: CHECK prints and counts, tests return test_finish(). */
extern int test_failures;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            test_failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)
int test_finish(const char *name);

/* GPU tests on a machine without a usable CUDA device: true after printing
 * "SKIP: no CUDA device"; main then returns TEST_SKIPPED (CTest's skip code). */
#define TEST_SKIPPED 77
bool test_skip_without_cuda(void);

/* SPEC 4's bound on max abs error, relative to max|V|, for q/out of dtype. */
double test_spec_tolerance(qsdpa_dtype dtype);
/* SPEC 4's absolute bound for q of dtype q and output of dtype out where max|V| is max_abs_v: the relative bound of
 * q's dtype, but never under one
 * step of out's subnormal spacing (V scaled near 1e-40 gives bf16 outputs whose last step, 2^-133, is 12x the
 * relative bound: kernels and the reference round to neighbouring subnormals) */
double test_spec_bound(qsdpa_dtype q, qsdpa_dtype out, double max_abs_v);

void *test_alloc(size_t bytes); /* aborts the *test* on OOM (never the library) */

#endif
