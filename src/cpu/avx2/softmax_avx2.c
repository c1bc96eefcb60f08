/* AVX2 softmax helpers of the CPU driver (cpu_isa.row_max / exp_sub): block maxima,
 * exp(s - m) and row sums over a key-major block of scores; the AVX-512 tier's exp_sub
 * (a target attribute on that function alone). */
#include "cpu/cpu_attention.h"

#include <immintrin.h>
#include <math.h>

/* exp(x) for x <= 0 (Cephes polynomial, ~1 ulp); x below -87 gives exactly 0,
 * which masked keys (-inf, or the lowest finite score) need; NaN stays NaN (vmaxps
 * returns its second operand when one is NaN), so a NaN score reaches the output as
 * in the reference. EXP_POLY is the part both widths share (W: 256 or 512): x
 * clamped, fx = round(x / ln 2), y = exp(x - fx ln 2) unscaled. */
#define EXP_POLY(W, x, fx, y)                                                                                 \
    do {                                                                                                      \
        x = _mm##W##_max_ps(_mm##W##_set1_ps(-87.0f), x);                                                     \
        fx = ROUND##W(_mm##W##_mul_ps(x, _mm##W##_set1_ps(1.44269504088896341f)));                            \
        x = _mm##W##_fnmadd_ps(fx, _mm##W##_set1_ps(0.693359375f), x);                                        \
        x = _mm##W##_fnmadd_ps(fx, _mm##W##_set1_ps(-2.12194440e-4f), x);                                     \
        y = _mm##W##_set1_ps(1.9875691500e-4f);                                                               \
        y = _mm##W##_fmadd_ps(y, x, _mm##W##_set1_ps(1.3981999507e-3f));                                      \
        y = _mm##W##_fmadd_ps(y, x, _mm##W##_set1_ps(8.3334519073e-3f));                                      \
        y = _mm##W##_fmadd_ps(y, x, _mm##W##_set1_ps(4.1665795894e-2f));                                      \
        y = _mm##W##_fmadd_ps(y, x, _mm##W##_set1_ps(1.6666665459e-1f));                                      \
        y = _mm##W##_fmadd_ps(y, x, _mm##W##_set1_ps(5.0000001201e-1f));                                      \
        y = _mm##W##_fmadd_ps(y, _mm##W##_mul_ps(x, x), _mm##W##_add_ps(x, _mm##W##_set1_ps(1.0f)));          \
    } while (0)
#define ROUND256(v) _mm256_round_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define ROUND512(v) _mm512_roundscale_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m256 exp256(__m256 x) {
    __m256 zero_mask = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), fx, y;
    EXP_POLY(256, x, fx, y);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero_mask, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

#define AVX512F_TARGET __attribute__((target("avx512f")))
static inline AVX512F_TARGET __m512 exp512(__m512 x) {
    const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    __m512 fx, y;
    EXP_POLY(512, x, fx, y);
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps((__mmask16)~zero, _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
}

/* Fold the 8 lanes of v into nm (1, 2, 4 or 8) row values with op (lane l holds row l % nm). */
static __m256 fold_lanes(__m256 v, int nm, bool is_max) {
    if (nm <= 4) {
        __m256 w = _mm256_permute2f128_ps(v, v, 1);
        v = is_max ? _mm256_max_ps(v, w) : _mm256_add_ps(v, w);
    }
    if (nm <= 2) {
        __m256 w = _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2));
        v = is_max ? _mm256_max_ps(v, w) : _mm256_add_ps(v, w);
    }
    if (nm == 1) {
        __m256 w = _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1));
        v = is_max ? _mm256_max_ps(v, w) : _mm256_add_ps(v, w);
    }
    return v;
}

void qsdpa_cpu_avx2_row_max(const float *s, int64_t n, int nm, float *out) {
    int64_t i = 0;
    if (nm % 8 == 0) { /* rows in whole vectors: one running max per 8 rows, no lane folding */
        for (int r = 0; r < nm; r += 8) {
            __m256 m0 = _mm256_set1_ps(-INFINITY);
            for (int64_t i0 = 0; i0 < n; i0 += nm) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(s + i0 + r));
            _mm256_storeu_ps(out + r, m0);
        }
        return;
    }
    for (int r = 0; r < nm; r++) out[r] = -INFINITY;
    if (8 % nm == 0) { /* 1, 2, 4 rows: lane l of every vector is row l % nm */
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
        for (; i + 16 <= n; i += 16) {
            m0 = _mm256_max_ps(m0, _mm256_loadu_ps(s + i));
            m1 = _mm256_max_ps(m1, _mm256_loadu_ps(s + i + 8));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, fold_lanes(_mm256_max_ps(m0, m1), nm, true));
        for (int r = 0; r < nm; r++) out[r] = lanes[r];
        for (; i < n; i++) out[i % nm] = s[i] > out[i % nm] ? s[i] : out[i % nm];
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += nm)
        for (int r = 0; r < nm; r++) out[r] = s[i0 + r] > out[r] ? s[i0 + r] : out[r];
}

void qsdpa_cpu_avx2_exp_sub(float *s, int64_t n, const float *m, int nm, float *sums) {
    float mf[8]; /* the maxima with -inf read as 0 (a row without keys: its -inf scores stay -inf) */
    int64_t i = 0;
    if (nm % 8 == 0) { /* rows in whole vectors */
        for (int r = 0; r < nm; r += 8) {
            for (int u = 0; u < 8; u++) mf[u] = m[r + u] == -INFINITY ? 0.0f : m[r + u];
            __m256 mv = _mm256_loadu_ps(mf), acc = _mm256_setzero_ps();
            for (int64_t i0 = 0; i0 < n; i0 += nm) {
                __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i0 + r), mv));
                _mm256_storeu_ps(s + i0 + r, e);
                acc = _mm256_add_ps(acc, e);
            }
            _mm256_storeu_ps(sums + r, _mm256_add_ps(_mm256_loadu_ps(sums + r), acc));
        }
        return;
    }
    if (8 % nm == 0) { /* 1, 2, 4 rows: one vector of maxima, repeated */
        for (int r = 0; r < 8; r++) mf[r] = m[r % nm] == -INFINITY ? 0.0f : m[r % nm];
        __m256 mv = _mm256_loadu_ps(mf), acc = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
            _mm256_storeu_ps(s + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, fold_lanes(acc, nm, false));
        for (int r = 0; r < nm; r++) sums[r] += lanes[r];
        for (; i < n; i++) {
            s[i] = s[i] - mf[i % 8] < -87.0f ? 0.0f : expf(s[i] - mf[i % 8]);
            sums[i % nm] += s[i];
        }
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += nm)
        for (int r = 0; r < nm; r++) s[i0 + r] -= m[r] == -INFINITY ? 0.0f : m[r];
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(s + i, exp256(_mm256_loadu_ps(s + i)));
    for (; i < n; i++) s[i] = s[i] < -87.0f ? 0.0f : expf(s[i]);
    for (int64_t i0 = 0; i0 < n; i0 += nm)
        for (int r = 0; r < nm; r++) sums[r] += s[i0 + r];
}

AVX512F_TARGET void qsdpa_cpu_avx512_exp_sub(float *s, int64_t n, const float *m, int nm, float *sums) {
    if (16 % nm != 0) {
        qsdpa_cpu_avx2_exp_sub(s, n, m, nm, sums);
        return;
    }
    float mf[16], lanes[16]; /* the maxima with -inf read as 0 (a row without keys keeps -inf scores) */
    for (int r = 0; r < 16; r++) mf[r] = m[r % nm] == -INFINITY ? 0.0f : m[r % nm];
    const __m512 mv = _mm512_loadu_ps(mf);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), mv));
        _mm512_storeu_ps(s + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    _mm512_storeu_ps(lanes, acc);
    for (int l = 0; l < 16; l++) sums[l % nm] += lanes[l];
    for (; i < n; i++) {
        s[i] = s[i] - mf[i % 16] < -87.0f ? 0.0f : expf(s[i] - mf[i % 16]);
        sums[i % nm] += s[i];
    }
}
