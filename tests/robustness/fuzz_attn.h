/* One random attention case of the random-API test: K/V tensors quantized
 * into strided buffers, the call's descriptors, and its deliberate fault. */
#ifndef QSDPA_FUZZ_ATTN_H
#define QSDPA_FUZZ_ATTN_H

#include "fuzz_util.h"

/* K's outlier channels (SPEC 9: real K caches hold a few channels far larger than the rest, in every key):
 * count of them, each at dim % Dk, every key's value there level x the head's sigma (+-10%). */
typedef struct kv_channels {
    test_rng rng; /* their own draws: r's stream stays as it was without them */
    int count;
    int64_t dim[3];
    double level[3];
} kv_channels;

/* One K or V tensor. */
typedef struct kvdata {
    qsdpa_format f;
    qsdpa_dtype sd;  /* element type of scales (and biases) */
    int64_t words;   /* codes per row: u32 words, or plain elements */
    int64_t groups;  /* scales per row */
    gbuf codes, scales, biases;
    qsdpa_qtensor t; /* [B, H, Lk, *] view of [B, H, cap, *] buffers (ord, padding) */
} kvdata;

typedef struct acase {
    int64_t B, Hq, Hkv, Lq, Lk, cap, Dk, Dv;
    qsdpa_dtype qd;
    kvdata k, v;
    gbuf q, out, lse, mask, sinks, spare;
    qsdpa_tensor tq, tout, tlse, tmask, tsinks;
    qsdpa_attention_params prm;
    bool use_mask, use_sinks, partial, null_params, null_ctx, null_q, null_k, null_v, null_out, null_lse;
    bool v_is_k;   /* v passed as k's descriptor (aliasing inputs) */
    bool mask_inf; /* the additive mask holds -inf entries */
    bool sinks_inf; /* some head's sink is -inf */
    kv_channels k_channels;
    gbuf *out_buf; /* the buffer out points into (c->out, or an input's when aliased) */
    int expect;
    char mut[240]; /* the deliberate fault, "" when none */
} acase;

extern bool fuzz_check_slices; /* split + qsdpa_merge checks on host pointers (off on a device) */
extern bool fuzz_16bit_contexts; /* the tested contexts run f16/bf16 q in 16-bit arithmetic (CUDA): partials are
                                   * held to q's precision, failures checked against K rounded to f16
                                   * (bf16 q: or bf16) */
extern bool fuzz_gpu_shapes;   /* gen_case also draws model-like shapes (head dims, GQA, long contexts) */

size_t code_esize(const qsdpa_format *f);       /* bytes of one code element: 4, or the plain dtype's */
/* row (b, h, l) as floats; f32_affine: affine scales in f32 arithmetic (scratch: 2 * groups floats) */
void kv_row(const qsdpa_qtensor *t, int64_t b, int64_t h, int64_t l, float *row, bool f32_affine, float *scratch);
double kv_max_abs(const qsdpa_qtensor *t);      /* max |dequantized value| over the view */
void gen_case(test_rng *r, acase *c);           /* a valid call */
void gen_mask(test_rng *r, acase *c);
void attn_mutate(test_rng *r, acase *c);        /* one deliberate fault, c->expect set */
void describe(const acase *c);                  /* into fuzz_case_desc */
void acase_free(acase *c);

#endif
