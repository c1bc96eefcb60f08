/* Internal interface of the CPU backend.
 *
 * The attention driver (cpu_driver.c) is written once over a small per-format
 * interface, cpu_kv_ops: score a block of K rows against a set of query rows,
 * accumulate weights x a block of V rows, unpack rows to floats. Each ISA (portable
 * C, AVX2) provides those three functions per format; the driver never looks at codes.
 */
#ifndef QSDPA_CPU_ATTENTION_H
#define QSDPA_CPU_ATTENTION_H

#include "internal.h"

/* Keys per block of the online softmax, at most: the block's scores ([128][4] for GQA 4
 * decode) and the K/V codes it touches stay in L1; per-block work (group-scale prep,
 * softmax) is amortised over more keys than at 64 (-2% at 2K keys, 1 thread). Decode over
 * codes uses fewer keys where rows are wide (cpu_driver.c, decode_block). */
#define CPU_BLOCK 128

/* The rows of one (batch, kv head) slice of a K or V tensor, resolved to bytes. */
typedef struct cpu_rows {
    const char *codes;       /* row j at codes + j * code_stride: u32 words, or plain elements */
    int64_t code_stride;     /* bytes between rows */
    const char *scales;      /* row j at scales + j * scale_stride: [dim/group] */
    int64_t scale_stride;    /* bytes */
    const char *biases;      /* affine only, else NULL; same layout and dtype as scales */
    int64_t bias_stride;     /* bytes */
    qsdpa_dtype scale_dtype; /* affine: f32/f16/bf16; fp modes: u8 */
    qsdpa_format format;     /* plain rows have group == dim */
    int64_t dim;             /* logical values per row */
    int64_t group;           /* values per scale (dim for plain) */
    float global;            /* nvfp4: G/2688 (1 when no global scale); else 1 */
} cpu_rows;

/* Per-format kernels of one ISA. Layouts (all float, dense):
 *   q      [nq][dim]        query rows already multiplied by the softmax scale
 *   qsum   [dim/group][nq]  sum of q over each K group (read only for affine K), + 4 floats
 *   scores [n][nq]          key-major: the nq scores of key j are contiguous, + 4 floats
 *   w      [n][nq]          softmax weights, same layout as scores, + 4 floats
 * (the "+ 4 floats" padding lets a kernel read 4 rows at r0 = nq - 1 and ignore lanes)
 *   acc    [nq][dim]        unnormalised output rows
 *   tmp    [CPU_BLOCK][dim] scratch the kernel may use (the AMX tier's: CPU_AMX_TMP_EXTRA bytes more)
 *   dst    [n][dim]         unpacked rows */
typedef struct cpu_kv_ops {
    const char *name; /* "affine4", "fp4", "f16", "generic", ... for `qsdpa info` and notes */
    void (*score)(const cpu_rows *k, int64_t j0, int64_t n, const float *q, const float *qsum, int nq,
                  float *scores, float *tmp);
    void (*accum)(const cpu_rows *v, int64_t j0, int64_t n, const float *w, int nq, float *acc, float *tmp);
    void (*unpack)(const cpu_rows *t, int64_t j0, int64_t n, float *dst);
    /* Optional (NULL = identity): a kernel may read q and write acc in its own
     * element order (a permutation with power-of-two lane scales, exact):
     * prep_q maps one natural q row [dim] to that order, fix_acc maps one acc row back. */
    void (*prep_q)(const float *q, int64_t dim, float *dst);
    void (*fix_acc)(float *acc, int64_t dim);
    /* Optional integer K path (NULL = none), taken for f16/bf16 q and out with finite q
     * only: their SPEC 4 bounds (2e-3 and 1.6e-2 max|V|) leave room for q as int16 per row, whose error is
     * at most max|q_row| / 65534 per element, on rows whose max|q| is within a few times their rms (a row
     * with one large channel takes the float kernels: prepare_q16 in cpu_driver.c); f32 q
     * (2e-5) keeps the float kernels. Layouts: q16 [nq][dim] int16 in the kernel's
     * element order (order_q16 maps one natural row to it; NULL = natural), qscale[nq]
     * with q = q16 * qscale, qsum as for score but summed over q16 * qscale, so the
     * bias term sees the same q as the codes. */
    void (*score_q16)(const cpu_rows *k, int64_t j0, int64_t n, const int16_t *q16, const float *qscale,
                      const float *qsum, int nq, float *scores);
    void (*order_q16)(const int16_t *q, int64_t dim, int16_t *dst);
    /* Optional (NULL = none; the AMX tier's): q rows [nq][dim] (nq <= 16) written once per task as the tiles
     * score reads, into qt of CPU_QT_BYTES(dim); score is then passed qt in place of q. false (qt
     * unspecified): q the tiles cannot carry exactly (not finite, or past 2^100), for the base ISA's kernels. */
    bool (*tile_q)(const float *q, int nq, int64_t dim, uint16_t *qt);
    /* The AMX tier's tile kernels: whether they take 1-8 rows too (int8 tiles, where the CPU has AMX-INT8), or
     * pay only from CPU_AMX_BF16_MIN_ROWS on (bf16 tiles alone: amx_fp4.inc) */
    bool tile_int8;
} cpu_kv_ops;

/* The AMX tier's tiles serve up to CPU_AMX_ROWS query rows a KV head: all of them on int8 tiles (amx_int8.inc)
 * where the CPU has AMX-INT8 (qsdpa_cpu_amx_int8_available), else from CPU_AMX_BF16_MIN_ROWS on bf16 tiles
 * (fewer rows run the AVX-512 kernels: bf16 tiles' fixed work a block does not pay there) */
#define CPU_AMX_ROWS 16
#define CPU_AMX_BF16_MIN_ROWS 9
/* Whether the AMX tier takes nr rows a KV head on int8 tiles */
bool qsdpa_cpu_amx_int8_rows(int64_t nr);
/* The AMX tier's scratch beyond tmp's CPU_BLOCK x dim floats: amx8_accum at 16 rows (3 piece tiles) needs about
 * 364 dim + 33 KB bytes (its code tiles 128 dim, weight digits 192 dim, C buffers 24 KB, weights 8 KB), which
 * 512 dim covers only from dim 232 */
#define CPU_AMX_TMP_EXTRA 40960

/* tile_q's buffer: three bf16 pieces of each q value (their sum is the f32 value exactly), or (int8) three
 * digits of each and the rows' digit weights */
#define CPU_QT_BYTES(dim) ((size_t)3 * 16 * (size_t)(dim) * 2)

/* One instruction set: its format kernels and its softmax helper. */
typedef struct cpu_isa {
    const char *name; /* "c", "avx2" */
    const cpu_kv_ops *(*ops_for)(const cpu_rows *rows); /* never NULL */
    /* Softmax helpers over a key-major block s[n / nm][nm] (n a multiple of nm):
     * row_max: out[r] = max_i s[i] over i % nm == r;
     * exp_sub: s[i] = exp(s[i] - m[i % nm]) and sums[i % nm] += s[i]; m[r] may be -inf
     * only where every s of row r is -inf (those give 0). */
    void (*row_max)(const float *s, int64_t n, int nm, float *out);
    void (*exp_sub)(float *s, int64_t n, const float *m, int nm, float *sums);
    /* n contiguous f16 values -> f32, and f32 -> f16 rounded to nearest even (q rows in,
     * output rows out: per value through qsdpa_f16_to_f32 these were 40% of a 16-key call) */
    void (*f16_to_f32)(const uint16_t *src, int64_t n, float *dst);
    void (*f32_to_f16)(const float *src, int64_t n, uint16_t *dst);
    /* Optional (NULL = none; the AVX-512 tier's, used where the CPU has AVX512_BF16): the P V of bf16 q and out
     * over float tiles (cpu_driver.c): acc [nq][dim] += w [n][nq]^T v [n][dim] (dim % 16 == 0), V and w rounded
     * to bf16; scratch of (n + 1) / 2 * (dim + nq) words. false, acc untouched: this block's V is too small for
     * bf16 (subnormals flush), use the f32 kernel. */
    bool (*bf16_accum)(const float *v, int64_t n, int64_t dim, const float *w, int nq, float *acc, uint32_t *scratch);
    /* Optional likewise, for the Q K^T of those calls where q and K's values are exact in bf16 (so each product
     * is exact): bf16_pack: n floats to bf16 (nearest even), returning max |src| (NaN ignored); bf16_score:
     * scores [n][nq] (key-major) of bf16 K rows kb [n][dim] against bf16 q rows qb [nq][dim], dim % 32 == 0, f32
     * sums. */
    float (*bf16_pack)(const float *src, int64_t n, uint16_t *dst);
    void (*bf16_score)(const uint16_t *kb, int64_t n, int64_t dim, const uint16_t *qb, int nq, float *scores);
    /* The ISA this one builds on (NULL = none): its kernels serve the calls whose rows the tiles do not pay
     * for (cpu_driver.c amx_rows) and the q a tile_q refuses. */
    const struct cpu_isa *base;
    /* Query rows a KV head up to which decode works on the codes of quantized K/V; more take float tiles, one
     * unpack per block (cpu_driver.c uses_tiles). The codes kernels decode each value once per pass of rows:
     * 4 rows a pass on AVX2 (16 registers), 8 on the AVX-512 tier, so AVX2 hands over earlier. */
    int code_rows_max;
} cpu_isa;

extern const cpu_isa qsdpa_cpu_isa_c;
#ifdef QSDPA_HAVE_AVX2_KERNELS
extern const cpu_isa qsdpa_cpu_isa_avx2;
void qsdpa_cpu_avx2_row_max(const float *s, int64_t n, int nm, float *out);                 /* softmax_avx2.c */
void qsdpa_cpu_avx2_exp_sub(float *s, int64_t n, const float *m, int nm, float *sums);
/* the AVX-512 tier's (16 lanes where the rows divide 16, else the AVX2 helper); AVX512F only */
void qsdpa_cpu_avx512_exp_sub(float *s, int64_t n, const float *m, int nm, float *sums);
#endif

/* The driver. prefill: tile over queries, unpack each K/V block to floats once
 * per query tile; else split the keys across threads (decode / short queries). */
qsdpa_status qsdpa_cpu_attention(qsdpa_context *ctx, const qsdpa_problem *p, const cpu_isa *isa, bool prefill);

/* Resolve the (b, h) slice of a K or V tensor. */
void qsdpa_cpu_rows(const qsdpa_qtensor *t, int64_t b, int64_t h, cpu_rows *out);

/* Scalar decoding shared by both ISAs. */
float qsdpa_cpu_group_scale(const cpu_rows *t, const char *scale_row, int64_t g);
float qsdpa_cpu_group_bias(const cpu_rows *t, const char *bias_row, int64_t g);
/* Dequantize row j of t into dst[dim] (any format, portable). */
void qsdpa_cpu_unpack_row(const cpu_rows *t, int64_t j, float *dst);

/* Kernel-table entry points (src/cpu/kernels_cpu.def). */
bool qsdpa_cpu_avx2_available(void);
bool qsdpa_cpu_vnni_available(void);
bool qsdpa_cpu_amx_available(void);
bool qsdpa_cpu_amx_int8_available(void);
bool qsdpa_cpu_c_available(void);

#endif
