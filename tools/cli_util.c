/* Small utilities of the qsdpa tool: clock, random numbers, element access. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t cli_time_seed(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec;
    return s ? s : 1;
}

uint64_t cli_rng_next(uint64_t *state) { /* splitmix64 */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double cli_rng_uniform(uint64_t *state) { return (double)(cli_rng_next(state) >> 11) * 0x1.0p-53; }

double cli_rng_normal(uint64_t *state) { /* Box-Muller */
    double u1 = cli_rng_uniform(state), u2 = cli_rng_uniform(state);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void *cli_alloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) fprintf(stderr, "qsdpa: out of memory allocating %zu bytes\n", bytes);
    return p;
}

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return float_of(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = (float)man * 0x1.0p-24f;
        return sign ? -v : v;
    }
    return float_of(sign | ((exp + 112) << 23) | (man << 13));
}

/* Round to nearest even; the tool only converts finite values of moderate size,
 * but overflow still goes to infinity and NaN stays NaN. */
static uint16_t f32_to_f16(float f) {
    uint32_t u = bits_of(f), abs = u & 0x7fffffffu;
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (abs < 0x38800000u) return (uint16_t)(sign | (uint16_t)nearbyintf(float_of(abs) * 0x1.0p24f));
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((rounded - 0x38000000u) >> 13));
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cli_load(const void *base, qsdpa_dtype dtype, int64_t i) {
    switch (dtype) {
    case QSDPA_DTYPE_F16: return f16_to_f32(((const uint16_t *)base)[i]);
    case QSDPA_DTYPE_BF16: return float_of((uint32_t)((const uint16_t *)base)[i] << 16);
    case QSDPA_DTYPE_U8:
    case QSDPA_DTYPE_BOOL: return (float)((const uint8_t *)base)[i];
    default: return ((const float *)base)[i];
    }
}

void cli_store(void *base, qsdpa_dtype dtype, int64_t i, float value) {
    switch (dtype) {
    case QSDPA_DTYPE_F16: ((uint16_t *)base)[i] = f32_to_f16(value); break;
    case QSDPA_DTYPE_BF16: ((uint16_t *)base)[i] = f32_to_bf16(value); break;
    case QSDPA_DTYPE_U8:
    case QSDPA_DTYPE_BOOL: ((uint8_t *)base)[i] = (uint8_t)value; break;
    default: ((float *)base)[i] = value; break;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
