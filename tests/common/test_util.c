#include "test_util.h"

#include <math.h>
#include <string.h>
#include <time.h>

int test_failures = 0;

uint64_t test_seed(void) {
    static uint64_t seed = 0;
    if (seed) return seed;
    const char *env = getenv("QSDPA_TEST_SEED");
    seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    if (!seed) seed = 1;
    fprintf(stderr, "seed: QSDPA_TEST_SEED=%llu\n", (unsigned long long)seed);
    return seed;
}

double test_spec_tolerance(qsdpa_dtype dtype) {
    return dtype == QSDPA_DTYPE_F32 ? 2e-5 : dtype == QSDPA_DTYPE_F16 ? 2e-3 : 1.6e-2;
}

double test_spec_bound(qsdpa_dtype q, qsdpa_dtype out, double max_abs_v) {
    const double step = out == QSDPA_DTYPE_F16 ? 0x1p-24 : out == QSDPA_DTYPE_BF16 ? 0x1p-133 : 0x1p-149;
    const double bound = test_spec_tolerance(q) * max_abs_v;
    return bound > step ? bound : step;
}

void test_rng_init(test_rng *rng, uint64_t seed) { rng->state = seed ? seed : 0x9e3779b97f4a7c15ull; }

uint64_t test_rng_next(test_rng *rng) { /* splitmix64 */
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double test_rng_uniform(test_rng *rng) { return (double)(test_rng_next(rng) >> 11) * 0x1.0p-53; }

double test_rng_normal(test_rng *rng) {
    double u1 = test_rng_uniform(rng), u2 = test_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int64_t test_rng_int(test_rng *rng, int64_t lo, int64_t hi) {
    return lo + (int64_t)(test_rng_next(rng) % (uint64_t)(hi - lo + 1));
}

void test_fill_normal(test_rng *rng, void *data, qsdpa_dtype dtype, int64_t n, double sigma) {
    for (int64_t i = 0; i < n; i++) qsdpa_store_float(data, dtype, i, (float)(sigma * test_rng_normal(rng)));
}

void test_outlier_channel(float *x, int64_t rows, int64_t dim, int64_t group, float value, double spread, test_rng *rng) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < dim / group; g++)
            x[r * dim + g * group + (r * 7 + g * 3) % group] =
                spread > 0.0 ? (float)(value * (1.0 + spread * (2.0 * test_rng_uniform(rng) - 1.0))) : value;
}

void test_poison(void *data, size_t bytes) { memset(data, 0xFF, bytes); }

int test_finish(const char *name) {
    if (test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

void *test_alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_alloc: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

bool test_skip_without_cuda(void) {
    if (qsdpa_backend_available(QSDPA_BACKEND_CUDA)) return false;
    printf("SKIP: no CUDA device\n");
    return true;
}
