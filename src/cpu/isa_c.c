/* The portable C instruction set: every format through one unpack-then-dot path.
 * It is the scalar twin of the AVX2 kernels and what non-x86 platforms run. */
#include "cpu/cpu_attention.h"

#include <math.h>

/* scores[j][r] = q[r] . K[j0 + j] */
static void score_c(const cpu_rows *k, int64_t j0, int64_t n, const float *q, const float *qsum, int nq,
                    float *scores, float *tmp) {
    int64_t dim = k->dim;
    for (int64_t j = 0; j < n; j++) {
        qsdpa_cpu_unpack_row(k, j0 + j, tmp);
        for (int r = 0; r < nq; r++) {
            const float *qr = q + (int64_t)r * dim;
            float part[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* 8 partial sums: vectorisable, off the add latency */
            int64_t d = 0;
            for (; d + 8 <= dim; d += 8)
                for (int u = 0; u < 8; u++) part[u] += qr[d + u] * tmp[d + u];
            for (; d < dim; d++) part[0] += qr[d] * tmp[d];
            scores[j * nq + r] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        }
    }
}

/* acc[r] += sum_j w[j][r] V[j0 + j]. The block's sums go into a row of tmp first and then into acc
 * (two levels): adding every key straight into acc made one sequential f32 sum of the whole context,
 * whose rounding grew past SPEC 4's 2e-5 max|V| over 13K keys of V offset far from zero (fuzz case
 * 7775686633766:22; the SIMD kernels sum a block in registers first). */
static void accum_c(const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq, float *acc, float *tmp) {
    int64_t dim = v->dim;
    float *row = tmp, *block = tmp + dim; /* tmp: [CPU_BLOCK][dim] */
    const int two_level = nq + 1 <= CPU_BLOCK;
    if (two_level)
        for (int64_t i = 0; i < (int64_t)nq * dim; i++) block[i] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        qsdpa_cpu_unpack_row(v, j0 + j, row);
        for (int r = 0; r < nq; r++) {
            float wr = w[j * nq + r];
            if (wr == 0.0f) continue; /* masked keys: skip the row, same sum */
            float *ar = (two_level ? block : acc) + (int64_t)r * dim;
            for (int64_t d = 0; d < dim; d++) ar[d] += wr * row[d];
        }
    }
    if (two_level)
        for (int64_t i = 0; i < (int64_t)nq * dim; i++) acc[i] += block[i];
}

static void unpack_c(const cpu_rows *t, int64_t j0, int64_t n, float *dst) {
    for (int64_t j = 0; j < n; j++) qsdpa_cpu_unpack_row(t, j0 + j, dst + j * t->dim);
}

static const cpu_kv_ops ops_c = {"generic", score_c, accum_c, unpack_c, NULL, NULL, NULL, NULL, NULL, false};

static const cpu_kv_ops *ops_for_c(const cpu_rows *rows) {
    (void)rows;
    return &ops_c;
}

static void row_max_c(const float *s, int64_t n, int nm, float *out) {
    for (int r = 0; r < nm; r++) out[r] = -INFINITY;
    for (int64_t i0 = 0; i0 < n; i0 += nm)
        for (int r = 0; r < nm; r++) out[r] = s[i0 + r] > out[r] ? s[i0 + r] : out[r];
}

/* A block's weights are summed apart and then added to the row's sum: one sequential f32 sum over the
 * whole context (13K keys) erred by 3.8e-5 of the output, past SPEC 4's f32 bound (fuzz case
 * 7775686633766:22, the prefill row, which runs a call's keys in one pass) */
static void exp_sub_c(float *s, int64_t n, const float *m, int nm, float *sums) {
    for (int r = 0; r < nm; r++) {
        float block = 0.0f;
        for (int64_t i0 = 0; i0 < n; i0 += nm) {
            float *x = s + i0 + r;
            *x = *x == -INFINITY ? 0.0f : expf(*x - m[r]);
            block += *x;
        }
        sums[r] += block;
    }
}

static void f16_to_f32_c(const uint16_t *src, int64_t n, float *dst) { qsdpa_load_floats(src, QSDPA_DTYPE_F16, n, dst); }
static void f32_to_f16_c(const float *src, int64_t n, uint16_t *dst) { qsdpa_store_floats(dst, QSDPA_DTYPE_F16, n, src); }

const cpu_isa qsdpa_cpu_isa_c = {"c", ops_for_c, row_max_c, exp_sub_c, f16_to_f32_c, f32_to_f16_c, NULL, NULL, NULL, NULL, 16};

qsdpa_status qsdpa_cpu_c_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_c_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_c_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &qsdpa_cpu_isa_c, false);
}
qsdpa_status qsdpa_cpu_c_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_attention(ctx, p, &qsdpa_cpu_isa_c, true);
}
