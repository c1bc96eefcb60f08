/* Host side of the tensor-core kernel: checks that route a request to the
 * generic kernel, the row-block / split-K configuration, scratch. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/fast_kernel.cuh"

/* Scales of a tile: one 16-byte-aligned block (1), 4-byte rows (0), or neither (-1). */
static int scale_mode(const qsdpa_qtensor *t) {
    if (t->format.mode == QSDPA_MODE_PLAIN) return 1;
    size_t es = qsdpa_dtype_size(t->scales.dtype);
    int64_t g = t->dim / t->format.group;
    bool vec = true, rows4 = ((size_t)g * es) % 4 == 0;
    const qsdpa_tensor *ts[2] = {&t->scales, &t->biases};
    for (int i = 0; i < 2; i++) {
        if (!ts[i]->data) continue;
        if (ts[i]->stride[2] != g || !qsdpa_cuda_aligned16(ts[i]->data, ts[i]->stride, 2, es)) vec = false;
        if ((uintptr_t)ts[i]->data % 4 || ((size_t)ts[i]->stride[0] * es) % 4 || ((size_t)ts[i]->stride[1] * es) % 4 ||
            ((size_t)ts[i]->stride[2] * es) % 4)
            rows4 = false;
    }
    return vec ? 1 : rows4 ? 0 : -1;
}

bool qsdpa_cuda_scales_one_block(const qsdpa_qtensor *t) { return scale_mode(t) == 1; }

int qsdpa_cuda_dec_prefetch(void) {
    static const int n = (int)qsdpa_cuda_env("QSDPA_CUDA_DEC_PREFETCH", 2);
    return n;
}

bool qsdpa_cuda_fused_merge(void) {
    static const bool on = qsdpa_cuda_env("QSDPA_CUDA_FUSED_MERGE", 1) != 0;
    return on;
}

double qsdpa_cuda_split_waves(void) {
    static const double w = qsdpa_cuda_env("QSDPA_CUDA_SPLIT_WAVES", 1.0);
    return w > 0.0 && w <= 64.0 ? w : 1.0;
}

qsdpa_cuda_split_bounds qsdpa_cuda_split_limits(const qsdpa_context *ctx, const qsdpa_problem *pr, int ctas_per_sm,
                                                int bn, int block_rows) {
    qsdpa_cuda_split_bounds s;
    const int64_t rows = pr->group_ratio * pr->len_q;
    s.tiles = (pr->len_k + bn - 1) / bn;
    s.base = pr->batch * pr->heads_kv * ((rows + block_rows - 1) / block_rows);
    s.want = (int64_t)((double)ctas_per_sm * ctx->cuda->sm_count * qsdpa_cuda_split_waves() + 0.5);
    if (s.want < 1) s.want = 1;
    s.n_max = s.base >= s.want ? 1 : (s.want + s.base - 1) / s.base;
    if (s.n_max > s.tiles) s.n_max = s.tiles;
    if (s.n_max > 65535) s.n_max = 65535;
    return s;
}

bool qsdpa_cuda_fast_hands_off(const qsdpa_problem *pr, int k_plain, int v_plain) {
    int ks = scale_mode(&pr->k), vs = scale_mode(&pr->v);
    bool plain_ok = (pr->k.format.mode != QSDPA_MODE_PLAIN || (int)pr->k.format.plain_dtype == k_plain) &&
                    (pr->v.format.mode != QSDPA_MODE_PLAIN || (int)pr->v.format.plain_dtype == v_plain);
    bool codes_ok =
        qsdpa_cuda_aligned16(pr->k.codes.data, pr->k.codes.stride, 3, qsdpa_dtype_size(pr->k.codes.dtype)) &&
        qsdpa_cuda_aligned16(pr->v.codes.data, pr->v.codes.stride, 3, qsdpa_dtype_size(pr->v.codes.dtype));
    /* key indices are 32-bit in the kernels, rounded up to whole 64-key tiles (kend + 63):
     * longer contexts take the generic kernel */
    const int64_t key_limit = 0x7fffffff - 64;
    return ks < 0 || vs < 0 || ks != vs || !plain_ok || !codes_ok || !qsdpa_cuda_every_row_sees_a_key(pr) ||
           (pr->lse && pr->mask_kind == QSDPA_MASK_BOOL) || pr->batch * pr->heads_kv > 65535 ||
           pr->len_k > key_limit || pr->key_total > key_limit;
}

qsdpa_status qsdpa_cuda_fast_launch_setup(qsdpa_context *ctx, const qsdpa_problem *pr, int smem_bytes,
                                          int ctas_per_sm, int bn, int block_rows, bool partials, int kernel_dv,
                                          int k_plain, int v_plain, qfast::fast_params *p, dim3 *grid,
                                          bool *use_generic) {
    const char *fn = pr->lse ? "qsdpa_attention_partial" : "qsdpa_attention";
    qsdpa_status st = qsdpa_cuda_enter(ctx, fn);
    if (st == QSDPA_OK) st = qsdpa_cuda_check_problem(ctx, pr, fn);
    if (st != QSDPA_OK) return st;
    *use_generic = false;

    int64_t rows = pr->group_ratio * pr->len_q;
    int64_t nrb = (rows + block_rows - 1) / block_rows; /* row blocks of the kernel's block_rows */
    const int64_t bhkv = pr->batch * pr->heads_kv;
    const int ks = scale_mode(&pr->k);
    if (qsdpa_cuda_fast_hands_off(pr, k_plain, v_plain) || smem_bytes > ctx->cuda->smem_optin || nrb > 0x7fffffff) {
        *use_generic = true;
        return QSDPA_OK;
    }

    memset(p, 0, sizeof *p);
    qd_io_fill(p, pr);
    p->hkv = pr->heads_kv; p->lq = pr->len_q; p->lk = pr->len_k; p->ratio = pr->group_ratio;
    p->key_offset = pr->key_offset; p->key_total = pr->key_total; p->window = pr->window;
    p->causal = pr->causal;
    p->rows = rows;
    p->nrb = (int)nrb;
    p->dv_out = (int)pr->dim_v; /* <= kernel_dv: a narrower cache on a wider kernel (pad_from) */
    p->scales_vec = ks;
    p->dec_prefetch = qsdpa_cuda_dec_prefetch();
    const float log2e = 1.4426950408889634f;
    p->scale_log2 = pr->scale * log2e;
    /* NVFP4's global factor G / 2688 taken out of the tiles: fp4 x e4m3 is exact in f16 (at most 6 significant
     * bits, 2^-10 to 2688), e4m3 x G / 2688 rarely is, and rounded to f16 it moved each 16-value group together
     * (SPEC 8.3). K's factor multiplies the Q K^T sums, V's the outputs (every merge is linear in them). */
    p->v_factor = 1.0f;
    /* global_scale too: qd_element / qd_group_scale read it, so every decoder of p.k / p.v sees factor 1 */
    if (p->k.mode == QSDPA_MODE_NVFP4) p->scale_log2 *= p->k.nv_factor, p->k.nv_factor = 1.0f, p->k.global_scale = 0.0f;
    if (p->v.mode == QSDPA_MODE_NVFP4) p->v_factor = p->v.nv_factor, p->v.nv_factor = 1.0f, p->v.global_scale = 0.0f;
    float ml = pr->masked_score * log2e;
    p->masked_log2 = ml < -FLT_MAX ? -FLT_MAX : ml;

    /* Split-K: one full wave of CTAs at the kernel's occupancy. The split count with the
     * least (waves of CTAs) x (tiles per CTA), up to the count that first fills a wave: a
     * last wave filled only in part costs about a whole one (B=8 8K: 5 splits = 320 CTAs,
     * 1.2 waves of 264, against 4 splits in one wave), and at equal cost the larger count
     * (shorter CTAs). */
    const qsdpa_cuda_split_bounds lim = qsdpa_cuda_split_limits(ctx, pr, ctas_per_sm, bn, block_rows);
    const int64_t tiles = lim.tiles, base = lim.base, want = lim.want;
    int64_t nsplit = 1, tps = tiles, best = INT64_MAX;
    for (int64_t n = 1; n <= lim.n_max; n++) {
        const int64_t t = (tiles + n - 1) / n, nn = (tiles + t - 1) / t;
        const int64_t cost = (base * nn + want - 1) / want * t;
        if (cost < best || (cost == best && nn > nsplit)) best = cost, nsplit = nn, tps = t;
    }
    p->nsplit = (int)nsplit;
    p->tiles_per_split = (int)tps;
    if (nsplit > 1 || partials) {
        size_t per = (size_t)rows * (size_t)(kernel_dv + 2), bytes; /* partial rows are the kernel's DV */
        if (!qsdpa_mul_size(per * sizeof(float), (size_t)(nsplit * bhkv), &bytes))
            return qsdpa_fail(QSDPA_ERR_OVERFLOW, fn, "split-K scratch overflows size_t");
        void *scratch;
        if ((st = qsdpa_cuda_scratch(ctx, bytes, &scratch)) != QSDPA_OK) return st;
        p->part_o = (float *)scratch;
        p->part_ml = p->part_o + (size_t)nsplit * (size_t)bhkv * (size_t)rows * (size_t)kernel_dv;
    }
    *grid = dim3((unsigned)nrb, (unsigned)nsplit, (unsigned)bhkv);
    return QSDPA_OK;
}

/* The decode kernel's own limits: affine scales in f16/bf16 (it reads them as
 * 2-byte elements); a chunk's scale and bias rows one 16-byte-aligned block
 * (scale_mode 1: it copies them whole) or 4-byte rows back to back (scale_mode 0:
 * 4-byte pieces), the same mode for K and V (the copier takes one); per-key strides above 2^27 bytes stay on
 * the prefill kernel (a conservative bound from its first version, never timed on
 * such layouts). */
static bool decode_layout_ok(const qsdpa_qtensor *t) {
    const int64_t limit = ((int64_t)1 << 31) / 16;
    if (t->format.mode == QSDPA_MODE_AFFINE && t->scales.dtype != QSDPA_DTYPE_F16 && t->scales.dtype != QSDPA_DTYPE_BF16)
        return false;
    /* 4-byte rows back to back in planes that are only 4-byte aligned (a tensor of exactly Lk keys): the
     * copier takes a chunk's block as 4-byte pieces (scale_mode 0, v38); other 4-byte rows do not */
    const int64_t groups = t->format.mode == QSDPA_MODE_PLAIN ? 0 : t->dim / t->format.group;
    const bool rows_back_to_back = t->format.mode == QSDPA_MODE_PLAIN ||
                                   (t->scales.stride[2] == groups && (!t->biases.data || t->biases.stride[2] == groups));
    const int mode = scale_mode(t);
    if (mode != 1 && !(mode == 0 && rows_back_to_back)) return false;
    if (t->codes.stride[2] * (int64_t)qsdpa_dtype_size(t->codes.dtype) >= limit) return false;
    if (t->scales.data && t->scales.stride[2] * 4 >= limit) return false;
    if (t->biases.data && t->biases.stride[2] * 4 >= limit) return false;
    return true;
}


bool qsdpa_cuda_use_decode_kernel(const qsdpa_problem *pr, bool wgmma_prefill) {
    /* The decode kernel takes up to 32 folded rows of a quantized cache. Past 32 rows the
     * prefill kernel wins at every context since v17's split counts (run 56, H200, Lq 16 at
     * GQA 4, 128K: 4-bit 218 vs 244 us, 8-bit 226 vs 284, mxfp4 174 vs 288; Lq 8 stays on the
     * decode kernel: 32K 42.6 vs 63.7, 128K 129 vs 217). f16 rows go to the prefill kernel
     * whenever its wgmma build runs, as it reads them in place, unconverted, and won at every
     * shape measured (run 57: Lq 1 32K 40.8 vs 45.1 us, 128K 127 vs 146, B=8 32K 243 vs 266;
     * Lq 4 2K 12.9 vs 16.9); the sm_80 path keeps them on the decode kernel (not measured). */
    const bool quantized = pr->k.format.mode != QSDPA_MODE_PLAIN || pr->v.format.mode != QSDPA_MODE_PLAIN;
    if (!quantized && wgmma_prefill) return false;
    /* QSDPA_CUDA_DEC_FOLDED: the most folded rows the decode kernel takes (past DEC_MAX_ROWS in row blocks of one
     * launch), a knob for session 31's sweep */
    static const int64_t most = (int64_t)qsdpa_cuda_env("QSDPA_CUDA_DEC_FOLDED", qfast::DEC_MAX_ROWS);
    return pr->group_ratio * pr->len_q <= most && qsdpa_cuda_decode_layouts_ok(pr);
}

bool qsdpa_cuda_bf16_rows(const qsdpa_problem *pr) {
    static const bool enabled = qsdpa_cuda_env("QSDPA_CUDA_BF16_ROWS", 1) != 0;
    const auto bf16 = [](const qsdpa_qtensor &t) {
        return t.format.mode == QSDPA_MODE_PLAIN && t.format.plain_dtype == QSDPA_DTYPE_BF16;
    };
    return enabled && bf16(pr->k) && bf16(pr->v);
}

bool qsdpa_cuda_decode_layouts_ok(const qsdpa_problem *pr) {
    static const bool tile_only = qsdpa_cuda_env("QSDPA_CUDA_TILE_DECODE", 0) == 1;
    return !tile_only && decode_layout_ok(&pr->k) && decode_layout_ok(&pr->v) && scale_mode(&pr->k) == scale_mode(&pr->v);
}

#if QSDPA_CUDA_DEC_TRACE
#include <stdio.h>

/* The diagnostic build's trace (fast_kernel.cuh): two slots, so the summary shows a call
 * and the gap after the call before it. Process-wide and unsynchronised: a benchmark
 * tool on one context, never a library feature. */
static struct {
    unsigned long long *buf; /* 2 slots of TRACE_CTAS * (TRACE_DEC_WORDS + TRACE_MERGE_WORDS) */
    int64_t ctas[2], merges[2];
    long calls;
} g_trace;
static const size_t TRACE_SLOT = (size_t)qfast::TRACE_CTAS * (qfast::TRACE_DEC_WORDS + qfast::TRACE_MERGE_WORDS);

unsigned long long *qsdpa_cuda_trace_slot(qsdpa_context *ctx, dim3 grid, int64_t merge_blocks) {
    (void)ctx;
    if (!g_trace.buf && cudaMalloc(&g_trace.buf, 2 * TRACE_SLOT * sizeof(unsigned long long)) != cudaSuccess) {
        g_trace.buf = nullptr;
        return nullptr;
    }
    const int s = (int)(g_trace.calls & 1);
    g_trace.ctas[s] = (int64_t)grid.x * grid.y * grid.z;
    g_trace.merges[s] = merge_blocks;
    return g_trace.buf + s * TRACE_SLOT;
}

static int cmp_u64(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

/* min / median / max of n values, in us from t0 (ns values) or raw (cycles) */
static void trace_stats(const char *label, unsigned long long *v, int64_t n, unsigned long long t0, bool ns) {
    if (n <= 0) return;
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    const double k = ns ? 1e-3 : 1.0;
    fprintf(stderr, "  %-34s min %9.2f  p50 %9.2f  max %9.2f%s\n", label, (double)(v[0] - t0) * k,
            (double)(v[n / 2] - t0) * k, (double)(v[n - 1] - t0) * k, ns ? " us" : " cycles");
}

static void trace_print(const unsigned long long *h, int64_t ctas, int64_t merges, const char *title,
                        unsigned long long prev_merge_end) {
    const int64_t nd = ctas < qfast::TRACE_CTAS ? ctas : qfast::TRACE_CTAS;
    const int64_t nm = merges < qfast::TRACE_CTAS ? merges : qfast::TRACE_CTAS;
    unsigned long long *v = (unsigned long long *)malloc(sizeof *v * (size_t)(nd > nm ? nd : nm) + 8);
    if (!v) return;
    unsigned long long t0 = ~0ull, tmin_chunks = ~0ull, tmax_chunks = 0;
    for (int64_t i = 0; i < nd; i++) {
        const unsigned long long *t = h + i * qfast::TRACE_DEC_WORDS;
        if (t[1] < t0) t0 = t[1];
        if (t[13] < tmin_chunks) tmin_chunks = t[13];
        if (t[13] > tmax_chunks) tmax_chunks = t[13];
    }
    static const bool per_cta = qsdpa_cuda_env("QSDPA_CUDA_TRACE_CTAS", 0) != 0;
    if (per_cta)
        for (int64_t i = 0; i < nd; i++) {
            const unsigned long long *t = h + i * qfast::TRACE_DEC_WORDS;
            const double us = 1e-3;
            fprintf(stderr, "CTA %lld split %llu bh %llu sm %llu | q %.2f first %.2f loop %.2f end %.2f\n", (long long)i,
                    t[14], t[15], t[12], ((double)t[2] - (double)t0) * us, t[3] ? ((double)t[3] - (double)t0) * us : -1.0,
                    ((double)t[4] - (double)t0) * us, ((double)t[5] - (double)t0) * us);
        }
    fprintf(stderr, "TRACE %s: %lld decode CTAs (chunks per warp %llu-%llu), %lld merge blocks; us from the first "
                    "pdl_wait return\n", title, (long long)ctas, tmin_chunks, tmax_chunks, (long long)merges);
    if (prev_merge_end)
        fprintf(stderr, "  previous call's last merge block end -> first pdl_wait return: %.2f us\n",
                ((double)t0 - (double)prev_merge_end) * 1e-3);
    static const char *gt_names[6] = {"decode entry", "decode pdl_wait returned", "decode q staged",
                                      "decode first chunk (warp 0)", "decode loop ended", "decode partials written"};
    for (int m = 0; m < 6; m++) {
        int64_t n = 0;
        for (int64_t i = 0; i < nd; i++) {
            const unsigned long long x = h[i * qfast::TRACE_DEC_WORDS + m];
            if (x) v[n++] = x < t0 ? t0 : x; /* entry precedes the wait: clamp, the phase below shows it */
        }
        trace_stats(gt_names[m], v, n, t0, true);
    }
    static const char *clk_names[5] = {"cycles entry -> pdl_wait return", "cycles pdl_wait -> q staged",
                                       "cycles q staged -> first chunk", "cycles first chunk -> loop end",
                                       "cycles loop end -> partials"};
    for (int m = 1; m < 6; m++) {
        int64_t n = 0;
        for (int64_t i = 0; i < nd; i++) {
            const unsigned long long *t = h + i * qfast::TRACE_DEC_WORDS;
            if (t[m] && t[m - 1]) v[n++] = t[6 + m] - t[6 + m - 1];
        }
        trace_stats(clk_names[m - 1], v, n, 0, false);
    }
    const unsigned long long *hm = h + (size_t)qfast::TRACE_CTAS * qfast::TRACE_DEC_WORDS;
    static const char *m_names[3] = {"merge entry", "merge pdl_wait returned", "merge end"};
    for (int m = 0; m < 3 && nm > 0; m++) {
        for (int64_t i = 0; i < nm; i++) v[i] = hm[i * qfast::TRACE_MERGE_WORDS + m] < t0 ? t0 : hm[i * qfast::TRACE_MERGE_WORDS + m];
        trace_stats(m_names[m], v, nm, t0, true);
    }
    free(v);
}

void qsdpa_cuda_trace_after_call(qsdpa_context *ctx) {
    static const long at = (long)qsdpa_cuda_env("QSDPA_CUDA_TRACE_CALL", 200);
    if (!g_trace.buf || ++g_trace.calls != at) return;
    if (cudaStreamSynchronize(qsdpa_cuda_stream(ctx)) != cudaSuccess) return;
    unsigned long long *h = (unsigned long long *)malloc(2 * TRACE_SLOT * sizeof *h);
    if (!h || cudaMemcpy(h, g_trace.buf, 2 * TRACE_SLOT * sizeof *h, cudaMemcpyDeviceToHost) != cudaSuccess) {
        free(h);
        return;
    }
    const int cur = (int)((g_trace.calls - 1) & 1), prev = 1 - cur;
    const unsigned long long *hp = h + prev * TRACE_SLOT, *hc = h + cur * TRACE_SLOT;
    unsigned long long prev_end = 0;
    const int64_t pm = g_trace.merges[prev] < qfast::TRACE_CTAS ? g_trace.merges[prev] : qfast::TRACE_CTAS;
    for (int64_t i = 0; i < pm; i++) {
        const unsigned long long x = hp[(size_t)qfast::TRACE_CTAS * qfast::TRACE_DEC_WORDS + i * qfast::TRACE_MERGE_WORDS + 2];
        if (x > prev_end) prev_end = x;
    }
    int clock_khz = 0, dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev);
    fprintf(stderr, "TRACE call %ld (SM clock attribute %d MHz)\n", g_trace.calls, clock_khz / 1000);
    trace_print(hp, g_trace.ctas[prev], g_trace.merges[prev], "call before", 0);
    trace_print(hc, g_trace.ctas[cur], g_trace.merges[cur], "this call", prev_end);
    free(h);
}
#endif
