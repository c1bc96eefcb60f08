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

size_t code_esize(const qsdpa_format *f) {
    return f->mode == QSDPA_MODE_PLAIN ? qsdpa_dtype_size(f->plain_dtype) : 4;
}

/* Row (b, h, l) of a valid view as floats, in `row` (t->dim values). With f32_affine,
 * affine codes are dequantized from f32 copies of the row's scales and biases, as the
 * attention kernels compute (qsdpa_dequantize rounds code x scale to a 16-bit scale
 * dtype first, as mx.dequantize does); `scratch` then holds 2 * groups floats. */
void kv_row(const qsdpa_qtensor *t, int64_t b, int64_t h, int64_t l, float *row, bool f32_affine, float *scratch) {
    const uint8_t *cp = (const uint8_t *)t->codes.data +
                        (size_t)(b * t->codes.stride[0] + h * t->codes.stride[1] + l * t->codes.stride[2]) * code_esize(&t->format);
    if (t->format.mode == QSDPA_MODE_PLAIN) {
        for (int64_t d = 0; d < t->dim; d++) row[d] = qsdpa_load_float(cp, t->format.plain_dtype, d);
        return;
    }
    size_t so = (size_t)(b * t->scales.stride[0] + h * t->scales.stride[1] + l * t->scales.stride[2]) *
                qsdpa_dtype_size(t->scales.dtype);
    const uint8_t *sp = (const uint8_t *)t->scales.data + so, *bp = t->biases.data ? (const uint8_t *)t->biases.data + so : NULL;
    qsdpa_dtype sdt = t->scales.dtype;
    if (f32_affine && t->format.mode == QSDPA_MODE_AFFINE) {
        const int64_t groups = t->dim / t->format.group;
        for (int64_t gi = 0; gi < groups; gi++)
            scratch[gi] = qsdpa_load_float(sp, sdt, gi), scratch[groups + gi] = qsdpa_load_float(bp, sdt, gi);
        sp = (const uint8_t *)scratch, bp = (const uint8_t *)(scratch + groups), sdt = QSDPA_DTYPE_F32;
    }
    qsdpa_dequantize(&t->format, (const uint32_t *)cp, sp, bp, sdt, 1, t->dim, row, QSDPA_DTYPE_F32);
}

qsdpa_qtensor kv_rounded_to_16bit(const qsdpa_qtensor *t, qsdpa_dtype dt, void **storage) {
    const int64_t B = t->codes.shape[0], H = t->codes.shape[1], L = t->codes.shape[2], D = t->dim;
    uint16_t *k16 = test_alloc((size_t)(B * H * L * D) * sizeof *k16);
    float *row = test_alloc((size_t)D * sizeof(float)), *scratch = test_alloc((size_t)(2 * D) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++) {
                kv_row(t, b, h, l, row, true, scratch);
                for (int64_t d = 0; d < D; d++) qsdpa_store_float(k16, dt, ((b * H + h) * L + l) * D + d, row[d]);
            }
    free(row), free(scratch);
    qsdpa_qtensor k;
    memset(&k, 0, sizeof k);
    k.format.mode = QSDPA_MODE_PLAIN, k.format.plain_dtype = dt, k.format.bits = 16;
    k.codes = qsdpa_tensor_4d(k16, dt, B, H, L, D);
    k.dim = D;
    *storage = k16;
    return k;
}
