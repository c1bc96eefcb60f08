/* The CPU attention driver, written once over cpu_kv_ops (see cpu_attention.h).
 *
 * Work is cut into tasks (batch, kv head, query tile, key chunk). A task holds all
 * Hq/Hkv query heads of its group and all rows of its query tile, so each K/V row
 * is read once per task and serves every query row of the group. Decode (Lq small)
 * splits the keys into chunks across threads and merges the partial states
 * {m, l, acc} (natural-log base: l = sum exp(s - m)) afterwards; prefill tiles the
 * queries and unpacks each K/V block to floats once per tile.
 */
#include "cpu/cpu_attention.h"
#include "cpu/threadpool.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct plan {
    const qsdpa_problem *p;
    const cpu_isa *isa;
    bool prefill;
    bool rows_on_tiles;    /* an AMX tier's K and V tile kernels serve every task (q_tile: at most CPU_AMX_ROWS rows) */
    bool tiles_int8;       /* an AMX tier's tile kernels of K and V (those that have one) all take 1-8 rows too */
    int64_t ratio;         /* query heads per kv head */
    int64_t h_tile;        /* query heads of a KV head's group per task (ratio, or fewer on the AMX tiles) */
    int64_t n_htiles;      /* ceil(ratio / h_tile) */
    int64_t q_tile;        /* query positions per task */
    int64_t n_qtiles;      /* ceil(Lq / q_tile) */
    int64_t n_split;       /* key chunks per row tile (b, kv head, head tile, query tile) */
    int64_t chunk;         /* keys per chunk (multiple of CPU_BLOCK) */
    int64_t block;         /* keys per online-softmax block over codes (<= CPU_BLOCK, divides it) */
    int64_t rows_max;      /* h_tile * q_tile */
    int64_t key_total;     /* global key count for causal/window */
    bool bf16;             /* float tiles' P V through the ISA's bf16 kernel (bf16_tiles) */
    bool bf16_k;           /* and their Q K^T: K's values exact in bf16 (bf16_exact_k) */
    char *scratch;         /* [threads][thread_bytes] */
    size_t thread_bytes;
    float *part_m, *part_l; /* split decode: [tasks][rows_max] */
    float *part_acc;        /* split decode: [tasks][rows_max][Dv] */
} plan;

/* Per-thread buffers carved from the scratch. */
typedef struct buffers {
    float *q;      /* [rows][Dk] */
    float *qk;     /* [rows][Dk] q in the K kernel's element order (prep_q) */
    float *qsum;   /* [Dk / k group][rows] + 4 */
    float *s;      /* [CPU_BLOCK][rows] + 4 */
    float *m, *l, *mnew; /* [rows] */
    int64_t *lo, *hi;    /* [rows] visible key range, local indices */
    float *acc;    /* [rows][Dv] */
    float *tmp;    /* [CPU_BLOCK][max(Dk, Dv)] */
    float *kf;     /* [CPU_BLOCK][Dk] prefill tiles */
    float *vf;     /* [CPU_BLOCK][Dv] */
    int16_t *q16;  /* [rows][Dk] q as int16 in the K kernel's order (score_q16) */
    float *qscale; /* [rows] + 4: q = q16 * qscale */
    uint32_t *vb;  /* [CPU_BLOCK / 2][Dv + rows] bf16 tiles: V and weight pairs */
    uint16_t *qb;  /* [rows][Dk] bf16 Q K^T: q as given (unscaled, bf16) */
    float qb_max;  /* max |q| over qb (NaN counts as large) */
    int score_exp; /* the rows in q are 2^-score_exp of q times the scale (prepare_rows): scores are scaled back */
    uint16_t *kb;  /* [CPU_BLOCK][Dk] bf16 Q K^T: the K block */
    uint16_t *qt;  /* CPU_QT_BYTES(Dk): q as an AMX kernel's tiles (tile_q) */
} buffers;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Carve (or, with base NULL, size) the per-thread buffers. */
static size_t carve(const plan *pl, char *base, buffers *b) {
    const qsdpa_problem *p = pl->p;
    size_t R = (size_t)pl->rows_max, dk = (size_t)p->dim_k, dv = (size_t)p->dim_v;
    size_t gk = p->k.format.mode == QSDPA_MODE_AFFINE ? dk / (size_t)p->k.format.group : 1;
    size_t dmax = dk > dv ? dk : dv;
    size_t sizes[] = {R * dk * 4, R * dk * 4, R * gk * 4 + 16, CPU_BLOCK * R * 4 + 16, R * 4, R * 4, R * 4, R * 8, R * 8,
                      R * dv * 4, CPU_BLOCK * dmax * 4 + (pl->isa->base ? CPU_AMX_TMP_EXTRA : 0), CPU_BLOCK * dk * 4,
                      CPU_BLOCK * dv * 4, R * dk * 2, R * 4 + 16,
                      pl->bf16 ? CPU_BLOCK / 2 * (dv + R) * 4 : 0, pl->bf16_k ? R * dk * 2 : 0,
                      pl->bf16_k ? CPU_BLOCK * dk * 2 : 0, pl->isa->base ? CPU_QT_BYTES(dk) : 0};
    void **slots[] = {(void **)&b->q, (void **)&b->qk, (void **)&b->qsum, (void **)&b->s,  (void **)&b->m,
                      (void **)&b->l,  (void **)&b->mnew, (void **)&b->lo, (void **)&b->hi,
                      (void **)&b->acc, (void **)&b->tmp, (void **)&b->kf,
                      (void **)&b->vf,  (void **)&b->q16, (void **)&b->qscale, (void **)&b->vb,
                      (void **)&b->qb,  (void **)&b->kb, (void **)&b->qt};
    size_t off = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (base) *slots[i] = base + off;
        off += align64(sizes[i]);
    }
    return off;
}

/* dst[d] = element d of a q row (dtype, element stride): contiguous rows in whole-row conversions (one call
 * per value cost 40% of a 16-key decode, bench/NOTES.md session 17) */
static void load_row(const cpu_isa *isa, const char *src, qsdpa_dtype dtype, int64_t stride, int64_t n, float *dst) {
    if (stride != 1) {
        for (int64_t d = 0; d < n; d++) dst[d] = qsdpa_load_float(src, dtype, d * stride);
        return;
    }
    if (dtype == QSDPA_DTYPE_F16) isa->f16_to_f32((const uint16_t *)src, n, dst);
    else qsdpa_load_floats(src, dtype, n, dst);
}

/* Element d of an output row (dtype, element stride) = acc[d] * inv; acc is scaled in place. */
static void store_row(const cpu_isa *isa, float *acc, float inv, int64_t n, char *o, qsdpa_dtype dtype,
                      int64_t stride) {
    for (int64_t d = 0; d < n; d++) acc[d] *= inv;
    if (stride != 1)
        for (int64_t d = 0; d < n; d++) qsdpa_store_float(o, dtype, d * stride, acc[d]);
    else if (dtype == QSDPA_DTYPE_F16) isa->f32_to_f16(acc, n, (uint16_t *)o);
    else qsdpa_store_floats(o, dtype, n, acc);
}

/* The query rows of one task (and of its merge): heads h0..h0 + nh - 1 of KV head hkv's group at positions
 * i0..i0 + ni - 1; row r is head h0 + r / ni at position i0 + r % ni. */
typedef struct row_tile {
    int64_t b, hkv, h0, nh, i0, ni, nr;
} row_tile;

/* Rows of group g = ((b Hkv + hkv) n_htiles + head tile) n_qtiles + query tile (a task is g n_split + split) */
static row_tile task_rows(const plan *pl, int64_t g) {
    const qsdpa_problem *p = pl->p;
    row_tile rt;
    const int64_t qt = g % pl->n_qtiles, ht = (g / pl->n_qtiles) % pl->n_htiles, bh = g / (pl->n_qtiles * pl->n_htiles);
    rt.b = bh / p->heads_kv, rt.hkv = bh % p->heads_kv;
    rt.h0 = rt.hkv * pl->ratio + ht * pl->h_tile;
    rt.nh = pl->ratio - ht * pl->h_tile < pl->h_tile ? pl->ratio - ht * pl->h_tile : pl->h_tile;
    rt.i0 = qt * pl->q_tile;
    rt.ni = p->len_q - rt.i0 < pl->q_tile ? p->len_q - rt.i0 : pl->q_tile;
    rt.nr = rt.nh * rt.ni;
    return rt;
}

/* Row r's q (head h0 + r / ni at position i0 + r % ni) */
static const char *q_row(const qsdpa_problem *p, const row_tile *rt, int64_t r) {
    const int64_t h = rt->h0 + r / rt->ni, i = rt->i0 + r % rt->ni;
    return (const char *)p->q +
           (size_t)(rt->b * p->q_stride[0] + h * p->q_stride[1] + i * p->q_stride[2]) * qsdpa_dtype_size(p->q_dtype);
}

static void prepare_rows(const plan *pl, buffers *bf, const row_tile *rt) {
    const qsdpa_problem *p = pl->p;
    const int64_t ni = rt->ni;
    int64_t nr = rt->nr, dk = p->dim_k;
    bool affine = p->k.format.mode == QSDPA_MODE_AFFINE;
    int64_t G = affine ? p->k.format.group : dk;
    /* q times the scale, less a power of two where their largest finite product passes 2^64: the kernels that
     * score over codes sum q c (c up to 255, so up to 2^82 at Dk 1024) and the integer K path's int32 sums
     * times the row's step before K's scale applies, and q times the scale itself can pass FLT_MAX, where
     * K's small scales would have made the scores ordinary (session 37) */
    double q_max = 0.0;
    for (int64_t r = 0; r < nr; r++) {
        float *dst = bf->q + r * dk;
        load_row(pl->isa, q_row(p, rt, r), p->q_dtype, p->q_stride[3], dk, dst);
        for (int64_t d = 0; d < dk; d++) {
            const double a = fabs((double)dst[d]);
            if (a <= FLT_MAX && a > q_max) q_max = a; /* inf and NaN stay what they are */
        }
    }
    const double scaled_max = q_max * fabs((double)p->scale);
    bf->score_exp = scaled_max > 0x1p64 ? ilogb(scaled_max) - 63 : 0;
    const float q_factor = (float)ldexp((double)p->scale, -bf->score_exp);
    for (int64_t r = 0; r < nr; r++) {
        const int64_t i = rt->i0 + r % ni;
        const char *src = q_row(p, rt, r);
        float *dst = bf->q + r * dk;
        for (int64_t d = 0; d < dk; d++) dst[d] *= q_factor;
        if (pl->bf16_k) { /* bf16 q as given: the scale goes on the scores */
            uint16_t *qb = bf->qb + r * dk;
            if (p->q_stride[3] == 1) memcpy(qb, src, (size_t)dk * 2);
            else
                for (int64_t d = 0; d < dk; d++) qb[d] = ((const uint16_t *)src)[d * p->q_stride[3]];
            uint32_t top = 0; /* bf16 magnitudes order as integers (NaN above inf) */
            for (int64_t d = 0; d < dk; d++) {
                const uint32_t a = qb[d] & 0x7FFFu;
                top = a > top ? a : top;
            }
            const uint32_t bits = top << 16;
            float m;
            memcpy(&m, &bits, 4);
            if (r == 0 || !(m <= bf->qb_max)) bf->qb_max = m;
        }
        if (affine)
            for (int64_t g = 0; g < dk / G; g++) {
                float s = 0.0f;
                for (int64_t d = g * G; d < (g + 1) * G; d++) s += dst[d];
                bf->qsum[g * nr + r] = s;
            }
        /* Visible keys: causal/window ranges in local indices (SPEC 3). */
        int64_t lo = 0, hi = p->len_k - 1;
        if (p->causal) {
            int64_t last = i + pl->key_total - p->len_q - p->key_offset;
            hi = last < hi ? last : hi;
            if (p->window > 0 && last - p->window + 1 > lo) lo = last - p->window + 1;
        }
        bf->lo[r] = lo;
        bf->hi[r] = hi;
        bf->m[r] = -INFINITY;
        bf->l[r] = 0.0f;
    }
    memset(bf->acc, 0, (size_t)nr * (size_t)p->dim_v * sizeof(float));
}

/* q rows as int16 for a K kernel's integer path (score_q16): one scale per row, and the
 * group sums recomputed from the int16 values so that the bias term sees the same q.
 * false where a row holds inf or NaN (those take the float kernels, which carry them
 * through as the reference does), and where a row is far from flat: the rounding step is
 * max|q| / 32767 for every element, so one large channel (q[0] = 1000 among N(0,1), D 128)
 * made the other channels' error 5x SPEC 4's f16 bound. A row whose max|q| is at most
 * min(6, 0.6 sqrt(Dk)) times its rms keeps the error under ~2^-14 |q| |k| per score (4x
 * below the tensor-core rows' f16 K, SPEC 8.1); Gaussian rows sit near 3 and a lone
 * outlier channel at sqrt(Dk). false too where a row's step would be under FLT_MIN
 * (max|q| under ~3.9e-34, which bf16 q reaches): 1 / step overflowed to inf and every
 * int16 value with it (session 36: bf16 q near 1e-35 against K near 1e35, 16 rows,
 * outputs off by ~half of max|V|); a subnormal step would lose bits besides. */
static bool prepare_q16(const plan *pl, buffers *bf, const cpu_kv_ops *kops, int64_t nr) {
    const qsdpa_problem *p = pl->p;
    int64_t dk = p->dim_k;
    const double flat = dk >= 100 ? 6.0 : 0.6 * sqrt((double)dk);
    /* before anything is written (qsum serves the float path too); the one comparison is
     * false for inf, NaN and bf16 values within 2x of f32's limit alike */
    for (int64_t r = 0; r < nr; r++) {
        double amax = 0.0, sumsq = 0.0;
        for (int64_t d = 0; d < dk; d++) {
            const float x = bf->q[r * dk + d];
            if (!(fabsf(x) <= FLT_MAX / 2)) return false;
            amax = fabs((double)x) > amax ? fabs((double)x) : amax;
            sumsq += (double)x * x;
        }
        if (amax * amax > flat * flat * sumsq / (double)dk) return false;
        if (amax > 0.0 && amax / 32767.0 < FLT_MIN) return false;
    }
    bool affine = p->k.format.mode == QSDPA_MODE_AFFINE;
    int64_t G = affine ? p->k.format.group : dk;
    int16_t *natural = (int16_t *)bf->tmp; /* free until the first block */
    for (int64_t r = 0; r < nr; r++) {
        const float *q = bf->q + r * dk;
        float amax = 0.0f;
        for (int64_t d = 0; d < dk; d++) amax = fabsf(q[d]) > amax ? fabsf(q[d]) : amax;
        float scale = amax > 0.0f ? amax / 32767.0f : 1.0f, inv = 1.0f / scale;
        for (int64_t d = 0; d < dk; d++) {
            long v = lrintf(q[d] * inv);
            natural[d] = (int16_t)(v > 32767 ? 32767 : v < -32767 ? -32767 : v);
        }
        bf->qscale[r] = scale;
        if (affine)
            for (int64_t g = 0; g < dk / G; g++) {
                int32_t sum = 0;
                for (int64_t d = g * G; d < (g + 1) * G; d++) sum += natural[d];
                bf->qsum[g * nr + r] = (float)sum * scale;
            }
        if (kops->order_q16)
            kops->order_q16(natural, dk, bf->q16 + r * dk);
        else
            memcpy(bf->q16 + r * dk, natural, (size_t)dk * sizeof(int16_t));
    }
    return true;
}

/* Causal/window ranges, then the array mask, on a block of scores [n][nr]. A masked
 * key gets -inf, i.e. exactly zero weight: the same as SPEC's lowest finite score
 * whenever the row keeps any key; rows that keep none are finished apart
 * (finish_row). */
static void apply_masks(const plan *pl, buffers *bf, const row_tile *rt, int64_t j0, int64_t n) {
    const qsdpa_problem *p = pl->p;
    const int64_t nr = rt->nr;
    for (int64_t r = 0; r < nr; r++) {
        float *s = bf->s + r;
        if (j0 < bf->lo[r] || j0 + n - 1 > bf->hi[r])
            for (int64_t j = 0; j < n; j++)
                if (j0 + j < bf->lo[r] || j0 + j > bf->hi[r]) s[j * nr] = -INFINITY; /* exactly 0 weight */
        if (p->mask_kind == QSDPA_MASK_NONE) continue;
        int64_t h = rt->h0 + r / rt->ni, i = rt->i0 + r % rt->ni;
        const int64_t *ms = p->mask_stride;
        int64_t base = rt->b * ms[0] + h * ms[1] + i * ms[2] + j0 * ms[3];
        if (p->mask_kind == QSDPA_MASK_BOOL) {
            const unsigned char *mk = (const unsigned char *)p->mask + base;
            for (int64_t j = 0; j < n; j++)
                if (!mk[j * ms[3]]) s[j * nr] = -INFINITY;
        } else if (p->mask_dtype == QSDPA_DTYPE_F32) {
            const float *mk = (const float *)p->mask + base;
            for (int64_t j = 0; j < n; j++) s[j * nr] += mk[j * ms[3]];
        } else {
            for (int64_t j = 0; j < n; j++) s[j * nr] += qsdpa_load_float(p->mask, p->mask_dtype, base + j * ms[3]);
        }
    }
}

/* Online softmax over one block: rescale the running state, turn scores into weights. */
static void softmax_block(const plan *pl, buffers *bf, int64_t nr, int64_t n, int64_t dv) {
    pl->isa->row_max(bf->s, n * nr, (int)nr, bf->mnew);
    for (int64_t r = 0; r < nr; r++) {
        float mn = bf->mnew[r] > bf->m[r] ? bf->mnew[r] : bf->m[r];
        if (mn > bf->m[r] && bf->m[r] != -INFINITY) {
            float alpha = expf(bf->m[r] - mn);
            bf->l[r] *= alpha;
            float *a = bf->acc + r * dv;
            for (int64_t d = 0; d < dv; d++) a[d] *= alpha;
        }
        bf->m[r] = mn;
        bf->mnew[r] = mn;
    }
    pl->isa->exp_sub(bf->s, n * nr, bf->mnew, (int)nr, bf->l);
}

/* Sinks, normalisation, rounding: one output row (and its lse in partial mode).
 * A row that kept no key (l == 0) is, as in the reference and MLX 0.32.4:
 *  - with a (finite) sink: the keys' mean (each at q's lowest finite score, SPEC 3) weighed against the
 *    sink, which is 0 unless the sink is within ~100 of that lowest value; a sink of -inf is no column at
 *    all; a NaN sink makes the row NaN;
 *  - boolean/causal masking: the mean of V over all keys (every score equal), and
 *    in partial mode sum(V) / key_total with lse -inf, so that merging all-masked
 *    slices gives that mean;
 *  - an additive mask of -inf on every key: NaN, as MLX's softmax gives; in
 *    partial mode out NaN with lse -inf: a merge drops it beside any real slice
 *    and gives NaN when every slice is such, as the unsplit call does. */
static void finish_row(const plan *pl, const cpu_rows *vr, int64_t b, int64_t h, int64_t i, float m, float l,
                       float *acc, float *tmp) {
    const qsdpa_problem *p = pl->p;
    float sk = p->sinks ? qsdpa_load_float(p->sinks, p->sinks_dtype, h) : -INFINITY;
    bool sink = p->sinks && sk != -INFINITY; /* a NaN sink is a column: the row is NaN, as in MLX */
    bool none = l == 0.0f; /* a NaN sum (a NaN score) is not "no key": it stays NaN, as in the reference */
    if (none) {
        /* boolean/causal masking gives the keys q's lowest finite score (SPEC 3), so with a sink the row weighs
         * the keys' mean against it: the sink wins outright unless it is within ~100 of that lowest value (an
         * f32 sink near or under -65504 with f16 q), as in the reference, partial calls included */
        const bool keys_vs_sink = sink && p->mask_kind != QSDPA_MASK_ADDITIVE;
        memset(acc, 0, (size_t)p->dim_v * sizeof(float));
        m = -INFINITY;
        if (!sink && p->mask_kind == QSDPA_MASK_ADDITIVE) {
            for (int64_t d = 0; d < p->dim_v; d++) acc[d] = NAN;
            l = 1.0f;
        } else if (!sink || keys_vs_sink) {
            for (int64_t j = 0; j < p->len_k; j++) {
                qsdpa_cpu_unpack_row(vr, j, tmp);
                for (int64_t d = 0; d < p->dim_v; d++) acc[d] += tmp[d];
            }
            l = (float)(p->lse && !sink ? pl->key_total : p->len_k);
            if (keys_vs_sink) m = p->masked_score;
        }
    }
    if (sink) {
        float mf = m > sk ? m : sk;
        float keep = m == -INFINITY ? 0.0f : expf(m - mf);
        l = l * keep + expf(sk - mf);
        m = mf;
        for (int64_t d = 0; d < p->dim_v; d++) acc[d] *= keep;
        none = false;
    }
    float inv = 1.0f / l;
    size_t osize = qsdpa_dtype_size(p->out_dtype);
    char *o = (char *)p->out + (size_t)(b * p->out_stride[0] + h * p->out_stride[1] + i * p->out_stride[2]) * osize;
    store_row(pl->isa, acc, inv, p->dim_v, o, p->out_dtype, p->out_stride[3]);
    if (p->lse)
        p->lse[b * p->lse_stride[0] + h * p->lse_stride[1] + i * p->lse_stride[2]] = none ? -INFINITY : m + logf(l);
}

/* Code bytes of one K or V row of `dim` values. */
static int64_t code_bytes(const qsdpa_format *f, int64_t dim) {
    if (f->mode == QSDPA_MODE_PLAIN) return dim * (int64_t)qsdpa_dtype_size(f->plain_dtype);
    return (dim * f->bits + 31) / 32 * 4;
}

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define PREFETCH_L2(p) ((void)(p))
#endif

/* Ask for rows [j0, j0 + n) of a K or V slice ahead of use (into L2): codes, scales,
 * biases. Only rows of >= 128 code bytes, or short_rows too (the AMX kernels, run_task): 32K decode, 2 threads, this VM (bench/NOTES.md):
 * affine 8/g64 (128 B rows) 9% faster, affine 4/g64 (64 B rows) 2-3% slower, as the
 * hardware prefetcher keeps up with the short rows and the hints cost issue slots. */
static void prefetch_rows(const cpu_rows *t, int64_t j0, int64_t n, bool short_rows) {
    const int64_t bytes = code_bytes(&t->format, t->dim);
    if (bytes < 128 && !short_rows) return;
    for (int64_t j = j0; j < j0 + n; j++) {
        const char *row = t->codes + j * t->code_stride;
        for (int64_t b = 0; b < bytes; b += 64) PREFETCH_L2(row + b);
        if (t->scales && j % 8 == 0) PREFETCH_L2(t->scales + j * t->scale_stride);
        if (t->biases && j % 8 == 0) PREFETCH_L2(t->biases + j * t->bias_stride);
    }
}

/* Affine widths other than 4 and 8 bits: their codes cost more to decode (a 64-bit load and a
 * shift per code) than a float tile costs to read, so from 5 rows on one unpack per block pays
 * (session 9: 3-bit Lq 4 at 8K) where 4- and 8-bit codes wait until 17. */
static bool odd_width(const qsdpa_format *f) { return f->mode == QSDPA_MODE_AFFINE && f->bits != 4 && f->bits != 8; }

/* Float tiles for prefill, and for decode with many query rows: past the ISA's code_rows_max the
 * decode of each code is repeated per pass of rows and one unpack per block is cheaper (2K keys,
 * GQA 4, Lq 16, 1 thread: 8.1 ms tiles vs 9.1 ms codes; AVX2 at Lq 4: session 41). */
static bool uses_tiles(const plan *pl, int64_t nr) {
    if (pl->rows_on_tiles) return false;
    const qsdpa_format *kf = &pl->p->k.format, *vf = &pl->p->v.format;
    /* unquantized rows convert in a step per vector: a tile's copy costs more than the passes save (f16 rows,
     * Lq 4 at GQA 4 on AVX2, 8K: 7.5-8.0 ms on the rows against 8.5-9.2 on tiles, session 41) */
    const bool plain = kf->mode == QSDPA_MODE_PLAIN && vf->mode == QSDPA_MODE_PLAIN;
    return pl->prefill || nr > (odd_width(kf) || odd_width(vf) ? 4 : plain ? 16 : pl->isa->code_rows_max);
}

/* Whether the float tiles' P V runs through the ISA's bf16 kernel: bf16 q and output (a partial call's f32
 * output stays f32 throughout), Dv a multiple of its 16-value vectors, not turned off (QSDPA_CPU_BF16=0, a
 * benchmark knob). V and the weights rounded to bf16 err by at most 2^-8 max|V| in all. Q K^T follows only
 * where K is exact in bf16 (bf16_exact_k): rounding K erred by |score| x 2^-8, past bf16's bound at the fuzzer's
 * large scores (session 23). */
static bool bf16_tiles(const qsdpa_problem *p, const cpu_isa *isa) {
    static _Atomic int knob = -1; /* read once; threads racing here store the same value */
    int on = atomic_load_explicit(&knob, memory_order_relaxed);
    if (on < 0) {
        const char *env = getenv("QSDPA_CPU_BF16");
        on = env && env[0] == '0' ? 0 : 1;
        atomic_store_explicit(&knob, on, memory_order_relaxed);
    }
    return on && isa->bf16_accum && (qsdpa_cpu_features() & 16u) && p->q_dtype == QSDPA_DTYPE_BF16 &&
           p->out_dtype == QSDPA_DTYPE_BF16 && p->dim_v % 16 == 0;
}

/* Whether the bf16 tiles' Q K^T may run in bf16 too: every value of K is exact in bf16, so with bf16 q each
 * product is exact and only the f32 sums round, as on the f32 tiles. mxfp4 / mxfp8 (a code of at most 4
 * significant bits times a power of two), nvfp4 without a global scale (2 bits times an E4M3 scale's 4), bf16
 * rows; not affine (s c + z rounded), f16 or f32 rows. bf16's instructions flush values below 2^-126 (q's
 * and K's): run_task takes this path only while both stay under 2^100, so a flushed product is under 2^-26. */
static bool bf16_exact_k(const qsdpa_problem *p) {
    const qsdpa_format *f = &p->k.format;
    const bool exact = f->mode == QSDPA_MODE_MXFP4 || f->mode == QSDPA_MODE_MXFP8 ||
                       (f->mode == QSDPA_MODE_NVFP4 && f->global_scale == 0.0f) ||
                       (f->mode == QSDPA_MODE_PLAIN && f->plain_dtype == QSDPA_DTYPE_BF16);
    return exact && p->dim_k % 32 == 0;
}

/* Whether an AMX tier's tile kernels serve a task of nr rows: 1 to 16 rows on int8 tiles where the CPU has them
 * and the tiled formats have int8 kernels (affine; MXFP4 and NVFP4 have bf16 tiles only), else 9 to 16 on bf16
 * tiles. At 4 rows (Lq 1, GQA 4) the bf16 tiles' fixed work a block (codes to bf16, weights
 * in three pieces, product latency) cost more than the AVX-512 kernels (32K, affine 4/g64, session 28's VM: 6.2
 * against 3.9 ms), at 8 about the same, at 16 0.55x; int8 tiles take codes as they are, 0.88x the bf16 tiles' time
 * at 16 rows (bench/NOTES.md sessions 28-30). */
static bool amx_rows(const plan *pl, int64_t nr) {
    return !uses_tiles(pl, nr) && (nr >= CPU_AMX_BF16_MIN_ROWS || (pl->tiles_int8 && qsdpa_cpu_amx_int8_rows(nr)));
}
/* Whether rows of this format get a tile kernel of their own from an ISA built on a base */
static bool amx_format(const cpu_isa *isa, const cpu_rows *r) { return isa->ops_for(r) != isa->base->ops_for(r); }

/* Scores of q rows scaled down by 2^score_exp (prepare_rows) back to their size; in double, where 2^score_exp
 * itself may pass FLT_MAX and a score that does is inf, as its f32 product would be */
static void unscale_scores(buffers *bf, int64_t n) {
    if (bf->score_exp == 0) return;
    const double f = ldexp(1.0, bf->score_exp);
    for (int64_t e = 0; e < n; e++) bf->s[e] = (float)((double)bf->s[e] * f);
}

static void run_task(void *arg, int64_t t, int thread) {
    const plan *pl = arg;
    const qsdpa_problem *p = pl->p;
    buffers bf;
    carve(pl, pl->scratch + (size_t)thread * pl->thread_bytes, &bf);
    const int64_t sp = t % pl->n_split;
    const row_tile rt = task_rows(pl, t / pl->n_split);
    const int64_t b = rt.b, hkv = rt.hkv, nr = rt.nr, dk = p->dim_k, dv = p->dim_v;
    prepare_rows(pl, &bf, &rt);

    cpu_rows kr, vr, kf, vf;
    qsdpa_cpu_rows(&p->k, b, hkv, &kr);
    qsdpa_cpu_rows(&p->v, b, hkv, &vr);
    const bool tiles = uses_tiles(pl, nr), bf16 = tiles && pl->bf16;
    const cpu_kv_ops *kops = pl->isa->ops_for(&kr), *vops = pl->isa->ops_for(&vr), *fops = NULL, *vfops = NULL;
    const float *qk = bf.q;
    const bool on_amx = pl->isa->base && amx_rows(pl, nr);
    if (pl->isa->base && !on_amx) kops = pl->isa->base->ops_for(&kr), vops = pl->isa->base->ops_for(&vr);
    /* An AMX kernel takes q as tiles, made once here; q they cannot carry goes to the base ISA's kernels */
    bool qtiles = false;
    if (kops->tile_q) qtiles = kops->tile_q(bf.q, (int)nr, dk, bf.qt);
    if (kops->tile_q && !qtiles) kops = pl->isa->base->ops_for(&kr);
    /* f16/bf16 q and out: K scored through the kernel's integer path where it has one
     * (cpu_attention.h). Partial results are f32 and held to f32's bound: float kernels. */
    const bool q16 = !tiles && kops->score_q16 && p->q_dtype != QSDPA_DTYPE_F32 && p->out_dtype != QSDPA_DTYPE_F32 &&
                     prepare_q16(pl, &bf, kops, nr);
    if (!tiles && !q16 && kops->prep_q) {
        for (int64_t r = 0; r < nr; r++) kops->prep_q(bf.q + r * dk, dk, bf.qk + r * dk);
        qk = bf.qk;
    }
    if (qtiles) qk = (const float *)bf.qt; /* score reads it as tile_q left it (cpu_attention.h) */
    if (tiles) { /* float tiles read through the plain f32 kernels */
        memset(&kf, 0, sizeof kf);
        kf.format.mode = QSDPA_MODE_PLAIN;
        kf.format.plain_dtype = QSDPA_DTYPE_F32;
        kf.global = 1.0f;
        vf = kf;
        kf.codes = (const char *)bf.kf, kf.code_stride = dk * 4, kf.dim = kf.group = dk;
        vf.codes = (const char *)bf.vf, vf.code_stride = dv * 4, vf.dim = vf.group = dv;
        fops = pl->isa->ops_for(&kf); /* Dk and Dv may differ: an AVX2 f32 kernel needs its dim % 16 == 0 */
        vfops = pl->isa->ops_for(&vf);
    }

    int64_t c0 = sp * pl->chunk, c1 = c0 + pl->chunk < p->len_k ? c0 + pl->chunk : p->len_k;
    int64_t kmin = c1, kmax = c0 - 1; /* union of the rows' visible ranges within the chunk */
    for (int64_t r = 0; r < nr; r++) {
        if (bf.lo[r] > bf.hi[r]) continue;
        kmin = bf.lo[r] < kmin ? bf.lo[r] : kmin;
        kmax = bf.hi[r] > kmax ? bf.hi[r] : kmax;
    }
    kmin = kmin < c0 ? c0 : kmin;
    kmax = kmax >= c1 ? c1 - 1 : kmax;
    /* The int8 tile kernels stage a block's codes before they use any, so they want whole blocks (their fixed work
     * a call) and the next block's rows asked for however short (32K affine 4/g64 Lq 1, session 29: 64-key blocks
     * 10.5 against 9.5 ms on one thread; the prefetch 3.7-4.0 against 3.3-4.4 ms on two). The bf16 tiles keep the
     * decode block (no difference measured at Lq 4). */
    const bool int8_tiles = on_amx && qsdpa_cpu_amx_int8_rows(nr) && (kops->tile_int8 || vops->tile_int8);
    const int64_t block = tiles || int8_tiles ? CPU_BLOCK : pl->block;
    for (int64_t j0 = kmin; j0 <= kmax; j0 += block) {
        int64_t n = kmax + 1 - j0 < block ? kmax + 1 - j0 : block;
        bool seen = false; /* skip blocks no row sees (causal and window tiles) */
        for (int64_t r = 0; r < nr && !seen; r++) seen = bf.lo[r] <= j0 + n - 1 && bf.hi[r] >= j0;
        if (!seen) continue;
        if (j0 + n <= kmax) { /* the next block streams in while this one is computed */
            int64_t nn = kmax + 1 - (j0 + n) < block ? kmax + 1 - (j0 + n) : block;
            prefetch_rows(&kr, j0 + n, nn, int8_tiles);
            prefetch_rows(&vr, j0 + n, nn, int8_tiles);
        }
        if (tiles) {
            kops->unpack(&kr, j0, n, bf.kf);
            /* bf16 Q K^T where no sum can overflow before the scale (which the f32 tiles apply to q first) and
             * bf16's flush of values under 2^-126 costs at most 2^-26 Dk of a score: both operands times the
             * scale, which multiplies the sums afterwards, under 2^100 (before session 37 the operands alone: bf16
             * q near 2^-128 against mxfp8 K near 2^96 at scale 2^30 lost every score, a helper's review) */
            const float kbig = pl->bf16_k ? pl->isa->bf16_pack(bf.kf, n * dk, bf.kb) : 0.0f;
            const float operand_max = kbig > bf.qb_max ? kbig : bf.qb_max; /* NaN where qb_max is */
            if (pl->bf16_k && operand_max < 0x1p100f && fabsf(p->scale) * operand_max < 0x1p100f &&
                kbig * bf.qb_max * (float)dk < 0x1p120f) {
                pl->isa->bf16_score(bf.kb, n, dk, bf.qb, (int)nr, bf.s);
                for (int64_t e = 0; e < n * nr; e++) bf.s[e] *= p->scale;
            } else {
                fops->score(&kf, 0, n, bf.q, bf.qsum, (int)nr, bf.s, bf.tmp);
                unscale_scores(&bf, n * nr);
            }
        } else if (q16) {
            kops->score_q16(&kr, j0, n, bf.q16, bf.qscale, bf.qsum, (int)nr, bf.s);
            unscale_scores(&bf, n * nr);
        } else {
            kops->score(&kr, j0, n, qk, bf.qsum, (int)nr, bf.s, bf.tmp);
            unscale_scores(&bf, n * nr);
        }
        apply_masks(pl, &bf, &rt, j0, n);
        softmax_block(pl, &bf, nr, n, dv);
        if (tiles) {
            vops->unpack(&vr, j0, n, bf.vf);
            if (!bf16 || !pl->isa->bf16_accum(bf.vf, n, dv, bf.s, (int)nr, bf.acc, bf.vb))
                vfops->accum(&vf, 0, n, bf.s, (int)nr, bf.acc, bf.tmp);
        } else {
            vops->accum(&vr, j0, n, bf.s, (int)nr, bf.acc, bf.tmp);
        }
    }

    if (!tiles && vops->fix_acc)
        for (int64_t r = 0; r < nr; r++) vops->fix_acc(bf.acc + r * dv, dv);
    if (pl->n_split > 1) { /* keep the partial state for the merge */
        memcpy(pl->part_m + t * pl->rows_max, bf.m, (size_t)nr * sizeof(float));
        memcpy(pl->part_l + t * pl->rows_max, bf.l, (size_t)nr * sizeof(float));
        memcpy(pl->part_acc + t * pl->rows_max * dv, bf.acc, (size_t)(nr * dv) * sizeof(float));
        return;
    }
    for (int64_t r = 0; r < nr; r++)
        finish_row(pl, &vr, b, rt.h0 + r / rt.ni, rt.i0 + r % rt.ni, bf.m[r], bf.l[r], bf.acc + r * dv, bf.tmp);
}

/* Merge the key chunks of one row tile by their log-sum-exp. */
static void merge_task(void *arg, int64_t bhq, int thread) {
    const plan *pl = arg;
    const qsdpa_problem *p = pl->p;
    buffers bf;
    carve(pl, pl->scratch + (size_t)thread * pl->thread_bytes, &bf);
    const row_tile rt = task_rows(pl, bhq);
    const int64_t nr = rt.nr, dv = p->dim_v, t0 = bhq * pl->n_split;
    cpu_rows vr;
    qsdpa_cpu_rows(&p->v, rt.b, rt.hkv, &vr);
    for (int64_t r = 0; r < nr; r++) {
        float M = -INFINITY, L = 0.0f;
        for (int64_t s = 0; s < pl->n_split; s++) M = pl->part_m[(t0 + s) * pl->rows_max + r] > M ? pl->part_m[(t0 + s) * pl->rows_max + r] : M;
        float *acc = bf.acc;
        memset(acc, 0, (size_t)dv * sizeof(float));
        for (int64_t s = 0; s < pl->n_split && M != -INFINITY; s++) {
            float ms = pl->part_m[(t0 + s) * pl->rows_max + r];
            if (ms == -INFINITY) continue; /* an empty chunk: guards (-inf) - (-inf) */
            float w = expf(ms - M);
            L += w * pl->part_l[(t0 + s) * pl->rows_max + r];
            const float *a = pl->part_acc + ((t0 + s) * pl->rows_max + r) * dv;
            for (int64_t d = 0; d < dv; d++) acc[d] += w * a[d];
        }
        finish_row(pl, &vr, rt.b, rt.h0 + r / rt.ni, rt.i0 + r % rt.ni, M, L, acc, bf.tmp);
    }
}

/* Keys per block when decode works on codes. A long cache streams from memory: the
 * block's K and V code rows are kept within about 8 KB, so they stay in L1 between the
 * score and the accumulate pass and beside the next block's prefetch (8K-32K decode, this
 * VM, bench/NOTES.md: 4-bit rows 3-12% faster at 64 keys than at 128, 8-bit 12% at 32).
 * A slice of at most 512 KB sits in L2 anyway and keeps CPU_BLOCK keys, where the
 * per-block work weighs more (2K keys: 64 cost 2% against 128). */
static int64_t decode_block(const qsdpa_problem *p) {
    int64_t bytes = code_bytes(&p->k.format, p->k.dim) + code_bytes(&p->v.format, p->v.dim), block = CPU_BLOCK;
    if (p->len_k * bytes <= ((int64_t)512 << 10)) return block;
    while (block > 16 && block * bytes > 8192) block /= 2;
    return block;
}

/* Run count tasks on the pool, or on the caller alone for small calls: waking a
 * worker costs more than the work below about 2 M multiply-adds (2026-11-25,
 * 2 idle cores, qsdpa demo: Hq 8, D 64, 64 keys 3.7 us on 1 thread vs 38 us on 2;
 * 1K keys 45 vs 74 us; Hq 32, D 128, 512 keys (4.2 M) 127 vs 103 us; on the
 * loaded machine a tiny cache attend took 0.78 ms through the pool, 0.06 alone). */
static void run_all(qsdpa_threadpool *pool, bool caller_only, int64_t count, qsdpa_task_fn task, void *arg) {
    if (!caller_only) {
        qsdpa_threadpool_run(pool, count, task, arg);
        return;
    }
    for (int64_t i = 0; i < count; i++) task(arg, i, 0);
}

qsdpa_status qsdpa_cpu_attention(qsdpa_context *ctx, const qsdpa_problem *p, const cpu_isa *isa, bool prefill) {
    qsdpa_threadpool *pool;
    qsdpa_status st = qsdpa_context_pool(ctx, p->function, &pool);
    if (st != QSDPA_OK) return st;
    int threads = qsdpa_threadpool_size(pool);
    plan pl;
    memset(&pl, 0, sizeof pl);
    pl.p = p;
    pl.isa = isa;
    pl.prefill = prefill;
    pl.ratio = p->group_ratio;
    pl.key_total = p->key_total > 0 ? p->key_total : p->len_k;
    /* Whether K's and V's rows have tile kernels of their own (an AMX tier; else its base's kernels serve them) */
    bool k_tiles = false, v_tiles = false, k_int8 = false, v_int8 = false;
    if (isa->base) {
        cpu_rows kr, vr;
        qsdpa_cpu_rows(&p->k, 0, 0, &kr);
        qsdpa_cpu_rows(&p->v, 0, 0, &vr);
        k_tiles = amx_format(isa, &kr), v_tiles = amx_format(isa, &vr);
        k_int8 = k_tiles && isa->ops_for(&kr)->tile_int8, v_int8 = v_tiles && isa->ops_for(&vr)->tile_int8;
        pl.tiles_int8 = (!k_tiles || k_int8) && (!v_tiles || v_int8);
    }
    pl.h_tile = pl.ratio;
    if (k_tiles && v_tiles) {
        /* Row tiles of at most CPU_AMX_ROWS rows on the tiles, each reading K and V again, beat one pass that
         * unpacks every block to floats for more rows (affine 4/g64, GQA 4, 2 threads, session 31: decode Lq 16
         * at 2K 1.58 against 2.80 ms, at 32K 24.8 against 41.3; GQA 8 8K Lq 4 1.51 against 2.82; the bf16 tiles
         * 2.17 against 2.77 at 2K Lq 16; 4K causal prefill in bench/NOTES.md session 31): a GQA group's heads
         * at as many positions as fit, or a group of more than CPU_AMX_ROWS heads (MQA) cut into head tiles as
         * even as ceil(ratio / tiles) makes them (17 heads: 9 and 8; a tile under 9 rows runs the base kernels
         * where only the bf16 tiles are on), a position at a time. Keys split across threads as in decode. */
        pl.rows_on_tiles = true;
        if (pl.ratio <= CPU_AMX_ROWS) {
            pl.q_tile = CPU_AMX_ROWS / pl.ratio < p->len_q ? CPU_AMX_ROWS / pl.ratio : p->len_q;
        } else {
            const int64_t cuts = (pl.ratio + CPU_AMX_ROWS - 1) / CPU_AMX_ROWS;
            pl.h_tile = (pl.ratio + cuts - 1) / cuts;
            pl.q_tile = 1;
        }
    } else if (prefill) { /* about 64 query rows per tile: one K/V block unpack serves all of them */
        pl.q_tile = 64 / pl.ratio > 0 ? 64 / pl.ratio : 1;
        if (pl.q_tile > p->len_q) pl.q_tile = p->len_q;
    } else {
        pl.q_tile = p->len_q;
    }
    pl.n_qtiles = (p->len_q + pl.q_tile - 1) / pl.q_tile;
    pl.block = decode_block(p);
    pl.n_htiles = (pl.ratio + pl.h_tile - 1) / pl.h_tile;
    pl.rows_max = pl.h_tile * pl.q_tile;
    pl.bf16 = bf16_tiles(p, isa);
    pl.bf16_k = pl.bf16 && isa->bf16_score && bf16_exact_k(p) && uses_tiles(&pl, pl.rows_max);
    if (pl.bf16 && uses_tiles(&pl, pl.rows_max)) qsdpa_set_route(ctx, ctx->last_route, pl.bf16_k ? "+bf16k" : "+bf16");
    if (isa->base && amx_rows(&pl, pl.rows_max)) { /* which of K and V ran on tiles (the rest: the base's kernels) */
        if (k_tiles || v_tiles) {
            char suffix[16];
            const bool int8 = qsdpa_cpu_amx_int8_rows(pl.rows_max) && (k_int8 || v_int8);
            snprintf(suffix, sizeof suffix, "+amx%s%s", int8 ? ".i8" : "",
                     k_tiles && v_tiles ? "" : k_tiles ? ".k" : ".v");
            qsdpa_set_route(ctx, ctx->last_route, suffix);
        }
    }
    int64_t groups = p->batch * p->heads_kv * pl.n_htiles * pl.n_qtiles;
    /* Enough tasks for dynamic balance (8 per thread), but chunks of at least 512 keys
     * so the merge stays negligible. */
    int64_t want = prefill && !pl.rows_on_tiles ? 1 : (8 * (int64_t)threads + groups - 1) / groups;
    int64_t most = (p->len_k + 511) / 512;
    pl.n_split = want < most ? want : most;
    if (pl.n_split < 1) pl.n_split = 1;
    pl.chunk = (p->len_k + pl.n_split - 1) / pl.n_split;
    pl.chunk = (pl.chunk + CPU_BLOCK - 1) / CPU_BLOCK * CPU_BLOCK;
    pl.n_split = (p->len_k + pl.chunk - 1) / pl.chunk;
    int64_t tasks = groups * pl.n_split;

    buffers dummy;
    pl.thread_bytes = carve(&pl, NULL, &dummy);
    size_t part = pl.n_split > 1 ? align64((size_t)tasks * (size_t)pl.rows_max * 4) : 0;
    size_t part_acc = pl.n_split > 1 ? (size_t)tasks * (size_t)pl.rows_max * (size_t)p->dim_v * 4 : 0;
    size_t total = pl.thread_bytes * (size_t)threads + 2 * part + part_acc;
    void *mem;
    st = qsdpa_scratch(ctx, p->function, total, &mem);
    if (st != QSDPA_OK) return st;
    pl.scratch = mem;
    char *rest = (char *)mem + pl.thread_bytes * (size_t)threads;
    pl.part_m = (float *)rest;
    pl.part_l = (float *)(rest + part);
    pl.part_acc = (float *)(rest + 2 * part);

    double work = (double)p->batch * (double)p->heads_q * (double)p->len_q * (double)p->len_k *
                  (double)(p->dim_k + p->dim_v);
    /* Only with the automatic thread count: a count the caller asked for is used
     * as given (the tests ask for 3 threads to exercise the pool on small cases). */
    bool caller_only = ctx->options.num_threads == 0 && work < 2e6;
    run_all(pool, caller_only, tasks, run_task, &pl);
    if (pl.n_split > 1) run_all(pool, caller_only, groups, merge_task, &pl);
    return QSDPA_OK;
}
