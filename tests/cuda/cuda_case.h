/* One GPU attention case for the CUDA tests: fresh random data quantized on
 * the host, copied to the device, run through a CUDA context (auto dispatch or
 * a forced table row), compared with the double-precision CPU reference on
 * the same bytes at SPEC §4 tolerances (max|V| of the dequantized V as unit). */
#ifndef QSDPA_TEST_CUDA_CASE_H
#define QSDPA_TEST_CUDA_CASE_H

#include "test_util.h"

typedef struct cuda_case {
    int64_t batch, hq, hkv, lq, lk, dk, dv;
    qsdpa_format kf, vf;
    qsdpa_dtype scale_dtype; /* affine scales/biases */
    qsdpa_dtype q_dtype;
    int mask;                /* 0 none, 1 bool (20% false), 2 additive f32 N(0,1), 3 additive 0/-1e9,
                                4 additive N(0,1) with every key -inf on query row 0 */
    int mask_rank;           /* 4: [B,Hq,Lq,Lk]; 2: [Lq,Lk] broadcast */
    int causal;
    int64_t window;
    int sinks;               /* 1: N(0,1) per head; 2: -inf on even heads; 3: NaN on head 0 */
    int partial;             /* qsdpa_attention_partial over keys [key_offset, +Lk) of key_total */
    int64_t key_offset, key_total;
    int64_t cap_extra;       /* cache capacity beyond Lk (strided view) */
    float scale;             /* 0: 1/sqrt(Dk) */
    double sigma;            /* data scale; 0: 1 */
    double v_sigma, v_clamp; /* V's own scale (0: sigma) and clip (0: none) */
    double k_offset;         /* added to every K value before quantizing (SPEC 8.1: K rounded to f16 erred by
                                2^-11 |K| where |K| was large against its spread); 0: none */
    double k_outlier;        /* affine K: one value a group (its channel varying by row) at -k_outlier sigma, an
                                outlier channel whose bias cancels the group's other codes (SPEC 9); 0: none */
    double k_outlier_spread; /* each outlier value x (1 + spread u), u uniform in [-1, 1) a row; 0: all alike */
    double bound_scale;      /* the case's bound: SPEC 4's times this (0: 1); under 1 where a mend's margin is what
                                the case guards */
    const char *known;       /* a SPEC section where this case's error past the bound is a known departure: printed as
                                KNOWN, not a failure, its lse too in partial mode (a pass is printed too, so a
                                mend is seen); NULL: checked */
    const char *kernel;      /* forced CUDA kernel row, or NULL */
    const char *route;       /* what qsdpa_context_last_route must start with after the GPU call, or NULL */
    const char *route_not;   /* what it must not contain (behind a copy's prefix too), or NULL */
} cuda_case;

/* Defaults: B 1, Hq 4, Hkv 1, Lq 1, Lk 300, D 128, affine:4:64 K/V, f16. */
cuda_case cuda_case_default(void);
/* Run one case; CHECKs on mismatch. Returns the max error / max|V|, or -1 if
 * it could not run (status printed and counted as a failure). With
 * QSDPA_CUDA_SHAPE set, a case whose label lacks that text is skipped (0). */
double cuda_case_run(test_rng *rng, const cuda_case *c, const char *label);
/* GPU calls so far whose route (qsdpa_context_last_route) starts with `prefix`. */
int cuda_route_count(const char *prefix);
/* SPEC §4 tolerance of a q dtype. */

#endif
