/* The generic row's tensor-core kernel: f16 or bf16 q over caches the fast rows do not take, Dk up
 * to what shared memory holds (1024 on an H100 at 16 and 32 rows a block), Dv up to 512, 16, 32 or
 * 64 folded rows a block, any Lq. By default it takes the generic row's calls with 16 or more
 * folded rows a KV head that the one-warp decode kernel does not (wide_choice): DeepSeek-style MLA
 * (Dk 576 / Dv 512 over one KV head), many rows past the staged path's Dk 256, long queries there.
 *
 * Why: generic_attention decodes and multiplies in f32 on CUDA cores; at Dk 576 / Dv 512,
 * 32 heads over one 4-bit KV head, 32K keys, it took 493 us on an H100 for a 20 MB cache
 * (1.3% of copy bandwidth). This kernel takes it to 145 us (runs 170-172; still 4-5% of copy:
 * each block waits on a tile's loads, then on its mma chain, bench/NOTES.md v52-v53). With f16/bf16
 * q, SPEC §4 allows f16/bf16 products, as every tensor-core row uses.
 *
 * One block per (b, kv head, 16 * WM folded rows, key split), 4 * WM warps; warp w holds row
 * tile w / 4 and quarter w % 4. Per tile of WIDE_T = 32 keys:
 *   decode  the block's threads turn the tile's K and V rows into E (f16 or bf16) in shared
 *           memory, each value as qd_element computes it, then rounded once (wide_rows);
 *   Q K^T   warp (rt, kt) scores keys 8kt..8kt+7 of its 16 rows over all of Dk by mma.sync
 *           m16n8k16 (q and K fragments by ldmatrix);
 *   softmax the rows' tile max and sums meet in shared memory; every warp of a row tile keeps
 *           the same m and l, and writes its weights, rounded to E, for the P V step;
 *   P V     warp (rt, kt) owns dims [8 NTW kt, 8 NTW (kt + 1)) of its rows for all 32 keys
 *           (V fragments by ldmatrix.trans).
 * Partials and their merge are generic_attention's ([split][row][4 + Dv], natural-log units,
 * generic_combine), so masks, sinks, lse and fully masked rows finish the same way.
 * K and V values round once to E, P to E; sums are f32. Values past E's range (f16: 65504)
 * overflow, the limit of every f16 tensor-core row. */

#include <type_traits>

#include "cuda/cuda_generic.cuh"
#include "cuda/mma_sync.cuh"

namespace qgen {

/* Elements a staged K or V row of the wide kernel: the dims up to a multiple of 16, then 8 more, so rows start
 * 16 bytes apart modulo 32 and ldmatrix's 8 rows fall in distinct banks. */
constexpr int wide_pitch(int d) { return (d + 15) / 16 * 16 + 8; }

constexpr int WIDE_PPITCH = 40; /* weights' row pitch (elements): 80 bytes, ldmatrix rows in distinct banks */

/* E's conversions and its mma.sync */
template <class E>
struct wide_elt;
template <>
struct wide_elt<__half> {
    static __device__ __forceinline__ __half of(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        const __half2 h = __floats2half2_rn(a, b);
        return *(const uint32_t *)&h;
    }
    static __device__ __forceinline__ float2 unpack(uint32_t w) { return __half22float2(*(const __half2 *)&w); }
    static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        mma16816(c, a, b0, b1);
    }
};
template <>
struct wide_elt<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 of(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        return *(const uint32_t *)&h;
    }
    static __device__ __forceinline__ float2 unpack(uint32_t w) {
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
    }
    static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        mma16816_bf16(c, a, b0, b1);
    }
};

/* Element i of a scale or bias plane of dtype dt (f32, f16, bf16 or u8) as raw bits, not converted. */
__device__ __forceinline__ uint32_t wide_raw(const void *base, int dt, int64_t i) {
    if (dt == QSDPA_DTYPE_F32) return ((const uint32_t *)base)[i];
    if (dt == QSDPA_DTYPE_U8) return ((const uint8_t *)base)[i];
    return ((const uint16_t *)base)[i];
}
/* Raw bits of an f32, f16 or bf16 value as a float (qd_load_float's value). */
__device__ __forceinline__ float wide_raw_float(uint32_t r, int dt) {
    if (dt == QSDPA_DTYPE_F32) return __uint_as_float(r);
    if (dt == QSDPA_DTYPE_F16) return __half2float(__ushort_as_half((unsigned short)r));
    return __uint_as_float(r << 16);
}
/* A group's scale from its raw bits: qd_group_scale's value. */
template <int MODE>
__device__ __forceinline__ float wide_scale(const qd_qtensor &t, uint32_t r) {
    if constexpr (MODE == QSDPA_MODE_AFFINE) {
        return wide_raw_float(r, t.scale_dtype);
    } else {
        if (t.mode == QSDPA_MODE_NVFP4) {
            const float s = qd_fp8(r);
            return t.global_scale != 0.0f ? __fmul_rn(s, t.nv_factor) : s;
        }
        return qd_e8m0(r);
    }
}

/* Rows [0, n) of keys l0 + j of t (words path: qd_word_path, 1, 2, 4, 8 or 16 values a word) into dst rows
 * of `pitch` elements, dims [0, dim); shift: K's (qsdpa_cuda_k_shift, [dim]: a constant a group for affine
 * codes, a dim for f32 rows) taken from each value before its rounding, or null. The block's threads share
 * (row, piece) items, a piece VEC words (4: one 16-byte load where rows are whole 16-byte pieces at 16-byte
 * alignment), IPT items a thread a pass, all of a pass's loads issued before any is converted. A piece's values
 * are stored 16 bytes at a time where it has that many (run 170: 4-byte stores 64 bytes apart met 16-way bank
 * conflicts). */
template <class E, int MODE, int VEC, int IPT>
__device__ __forceinline__ void wide_rows_words(const qd_qtensor &t, int64_t b, int64_t h, int64_t l0, int n, E *dst,
                                                int pitch, const float *shift) {
    const bool f32 = t.plain_dtype == QSDPA_DTYPE_F32, bf16 = t.plain_dtype == QSDPA_DTYPE_BF16;
    const int per = MODE == QSDPA_MODE_PLAIN ? (f32 ? 1 : 2) : 32 / t.bits;
    const int npieces = t.dim / per / VEC, items = n * npieces;
    /* groups are powers of two (SPEC §2): a word's group by a shift; one scale a piece where a group spans it */
    const int gshift = MODE == QSDPA_MODE_PLAIN ? 0 : __ffs(t.group) - 1;
    const bool one_group = MODE != QSDPA_MODE_PLAIN && t.group >= VEC * per;
    const char *base = (const char *)t.codes + b * t.cs[0] + h * t.cs[1];
    const int64_t sbase = b * t.ss[0] + h * t.ss[1], zbase = b * t.bs[0] + h * t.bs[1];
    const int nthreads = blockDim.x;
    /* the thread's item (row j, piece pc) stepped by additions: one division a call, not one an item */
    const int dj = nthreads / npieces, dpc = nthreads - dj * npieces;
    int j_next = (int)threadIdx.x / npieces, pc_next = (int)threadIdx.x - j_next * npieces;
    for (int i0 = 0; i0 < items; i0 += nthreads * IPT) {
        uint32_t word[IPT][VEC], sraw[IPT][VEC], zraw[IPT][VEC];
        float s[IPT][VEC], z[IPT][VEC], zs[IPT][VEC]; /* zs: the group's K shift (affine) */
        int at[IPT], dim0[IPT]; /* the item's first element in dst (-1: none), and its first dim */
#pragma unroll
        for (int k = 0; k < IPT; k++) {
            const int idx = i0 + (int)threadIdx.x + nthreads * k, j = j_next, pc = pc_next;
            pc_next += dpc, j_next += dj;
            if (pc_next >= npieces) pc_next -= npieces, j_next++;
            at[k] = -1, dim0[k] = 0;
#pragma unroll
            for (int v = 0; v < VEC; v++)
                word[k][v] = 0, sraw[k][v] = 0, zraw[k][v] = 0, s[k][v] = 1.0f, z[k][v] = 0.0f, zs[k][v] = 0.0f;
            if (idx >= items) continue;
            const int64_t l = l0 + j;
            const int w0 = pc * VEC;
            at[k] = j * pitch + w0 * per, dim0[k] = w0 * per;
            const uint32_t *src = (const uint32_t *)(base + l * t.cs[2]) + w0;
            if constexpr (VEC == 4) {
                const uint4 x = *(const uint4 *)src;
                word[k][0] = x.x, word[k][1] = x.y, word[k][2] = x.z, word[k][3] = x.w;
            } else {
                word[k][0] = src[0];
            }
            if constexpr (MODE != QSDPA_MODE_PLAIN) {
                /* raw bits only: a conversion right after a load makes the thread wait for it there, which
                 * serialized every item's scale and bias loads (review of run 172's SASS) */
#pragma unroll
                for (int v = 0; v < VEC; v++) {
                    if (v > 0 && one_group) break;
                    const int gi = ((w0 + v) * per) >> gshift;
                    sraw[k][v] = wide_raw(t.scales, t.scale_dtype, sbase + l * t.ss[2] + gi);
                    if (MODE == QSDPA_MODE_AFFINE) {
                        zraw[k][v] = wide_raw(t.biases, t.scale_dtype, zbase + l * t.bs[2] + gi);
                        if (shift) zs[k][v] = shift[gi << gshift];
                    }
                }
            }
        }
        /* the loads are in flight: scales and biases to floats */
#pragma unroll
        for (int k = 0; k < IPT; k++) {
            if constexpr (MODE != QSDPA_MODE_PLAIN) {
#pragma unroll
                for (int v = 0; v < VEC; v++) {
                    /* selects, not a run-time index (which would put the arrays in local memory) */
                    const uint32_t sr = one_group ? sraw[k][0] : sraw[k][v], zr = one_group ? zraw[k][0] : zraw[k][v];
                    s[k][v] = wide_scale<MODE>(t, sr);
                    if (MODE == QSDPA_MODE_AFFINE)
                        z[k][v] = wide_raw_float(zr, t.scale_dtype) - (one_group ? zs[k][0] : zs[k][v]);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < IPT; k++) {
            if (at[k] < 0) continue;
            E *row = dst + at[k];
            if constexpr (MODE == QSDPA_MODE_PLAIN) {
                if (f32) { /* one value a word */
#pragma unroll
                    for (int v = 0; v < VEC; v++)
                        row[v] = wide_elt<E>::of(__uint_as_float(word[k][v]) - (shift ? shift[dim0[k] + v] : 0.0f));
                } else {
                    uint32_t out[VEC];
#pragma unroll
                    for (int v = 0; v < VEC; v++) {
                        const uint32_t w = word[k][v];
                        const float2 f = bf16 ? make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u))
                                              : __half22float2(*(const __half2 *)&w);
                        out[v] = wide_elt<E>::pack(f.x, f.y);
                    }
                    if constexpr (VEC == 4) *(uint4 *)row = make_uint4(out[0], out[1], out[2], out[3]);
                    else *(uint32_t *)row = out[0];
                }
            } else {
#pragma unroll
                for (int v = 0; v < VEC; v++) {
                    uint32_t *out = (uint32_t *)(row + v * per); /* per: 4, 8 or 16 values, 8 or 16 bytes aligned */
                    if (per == 4) {
                        uint32_t o2[2];
#pragma unroll
                        for (int c = 0; c < 4; c += 2)
                            o2[c / 2] = wide_elt<E>::pack(qd_word_value<MODE>(word[k][v], t.bits, c, s[k][v], z[k][v]),
                                                          qd_word_value<MODE>(word[k][v], t.bits, c + 1, s[k][v], z[k][v]));
                        *(uint2 *)out = make_uint2(o2[0], o2[1]);
                    } else {
                        for (int c0 = 0; c0 < per; c0 += 8) {
                            uint32_t o4[4];
#pragma unroll
                            for (int c = 0; c < 8; c += 2)
                                o4[c / 2] = wide_elt<E>::pack(
                                    qd_word_value<MODE>(word[k][v], t.bits, c0 + c, s[k][v], z[k][v]),
                                    qd_word_value<MODE>(word[k][v], t.bits, c0 + c + 1, s[k][v], z[k][v]));
                            *(uint4 *)(out + c0 / 2) = make_uint4(o4[0], o4[1], o4[2], o4[3]);
                        }
                    }
                }
            }
        }
    }
}

/* x reduced over the four lanes of a quad (lanes 4i..4i+3 hold one accumulator row's columns) */
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* Rows [0, n) of keys l0 + j of t into dst as E (wide_rows_words where the layout allows, else value
 * by value through qd_element: affine 3/5/6 bits, rows off whole words); shift as wide_rows_words'. */
template <class E, int IPT>
__device__ __forceinline__ void wide_rows(const qd_qtensor &t, bool words, bool vec4, int64_t b, int64_t h,
                                          int64_t l0, int n, E *dst, int pitch, const float *shift = nullptr) {
    const bool odd = t.mode == QSDPA_MODE_AFFINE && 32 % t.bits != 0;
    if (words && !odd) {
#define WIDE_ROWS_MODE(MODE)                                                                                    \
    if (vec4) wide_rows_words<E, MODE, 4, IPT>(t, b, h, l0, n, dst, pitch, shift);                              \
    else wide_rows_words<E, MODE, 1, IPT>(t, b, h, l0, n, dst, pitch, shift);                                   \
    return;
        switch (t.mode) {
        case QSDPA_MODE_PLAIN: WIDE_ROWS_MODE(QSDPA_MODE_PLAIN)
        case QSDPA_MODE_AFFINE: WIDE_ROWS_MODE(QSDPA_MODE_AFFINE)
        case QSDPA_MODE_MXFP8: WIDE_ROWS_MODE(QSDPA_MODE_MXFP8)
        default: WIDE_ROWS_MODE(QSDPA_MODE_MXFP4) /* mxfp4, nvfp4: the scale is qd_group_scale's */
        }
#undef WIDE_ROWS_MODE
    }
    const int dim = t.dim;
    for (int e = threadIdx.x; e < n * dim; e += blockDim.x) {
        const int j = e / dim, d = e - j * dim;
        dst[j * pitch + d] = wide_elt<E>::of(qd_element(t, b, h, l0 + j, d) - (shift ? shift[d] : 0.0f));
    }
}

/* Shared memory of a wide block: q rows, the K and V tiles, the weights, then the rows' tile maxima,
 * sums and kept flags per quarter (floats). */
size_t wide_smem_bytes(int wm, int kpitch, int vpitch) {
    return (size_t)2 * (16 * wm * kpitch + WIDE_T * kpitch + WIDE_T * vpitch + 16 * wm * WIDE_PPITCH) +
           sizeof(float) * 3 * 4 * 16 * wm;
}

/* E: f16 or bf16 (q's dtype); NTW: 8-dim tiles of V a warp owns (8 up to Dv 256, 16 up to 512);
 * WM: 16-row tiles a block takes. */
template <class E, int NTW, int WM>
__global__ void __launch_bounds__(128 * WM, WM == 2 ? 2 : 1) generic_wide(const gen_params p) {
    constexpr int ROWS = 16 * WM;
    /* decode items in flight a thread: 4 pieces at 128 threads (two blocks an SM); one at 256 and 512 threads,
     * which have 128 registers a thread (two blocks an SM at 256, one at 512) */
    constexpr int IPT = WM == 1 ? 4 : 1;
    extern __shared__ float4 wide_sm4[];
    const int kp = p.kpitch, vp = p.vpitch; /* elements a staged K (and q) / V row */
    E *q_s = (E *)wide_sm4;                 /* [ROWS][kp], zero past dk and past nrows */
    E *k_s = q_s + ROWS * kp;               /* [WIDE_T][kp], zero past dk */
    E *v_s = k_s + WIDE_T * kp;             /* [WIDE_T][vp], zero past dv */
    E *p_s = v_s + WIDE_T * vp;             /* [ROWS][WIDE_PPITCH] */
    float *red_m = (float *)(p_s + ROWS * WIDE_PPITCH), *red_l = red_m + 4 * ROWS, *red_k = red_l + 4 * ROWS;
    __shared__ int64_t last_s[ROWS], mrow_s[ROWS], qrow_s[ROWS], range_s[2]; /* qrow_s: each row's first q element */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, rt = warp >> 2, kt = warp & 3;
    const int gq = lane >> 2, c4 = lane & 3;
    const int64_t hkv = p.hq / p.ratio;
    const int64_t chunk = blockIdx.x % p.row_chunks, g = (blockIdx.x / p.row_chunks) % hkv,
                  b = blockIdx.x / (p.row_chunks * hkv);
    const int64_t f0 = chunk * ROWS;
    const int nrows = (int)min((int64_t)ROWS, p.ratio * p.lq - f0);
    if (tid < ROWS) { /* per row: q's offset, the last visible global key, the mask row */
        const int64_t f = f0 + min(tid, nrows - 1), h = g * p.ratio + f / p.lq, i = f % p.lq;
        qrow_s[tid] = b * p.qs[0] + h * p.qs[1] + i * p.qs[2];
        last_s[tid] = i + p.key_total - p.lq;
        mrow_s[tid] = b * p.ms[0] + h * p.ms[1] + i * p.ms[2];
    }
    __syncthreads();
    /* q rows as raw 16-bit values (E is q's dtype), QB loads a thread in flight before any is stored: a
     * conversion after each load serialized them (review of run 172's SASS) */
    /* a row a warp, lanes along the row: no index division (a division an element was 17% of the
     * kernel's instructions at MLA decode, run 174's profile) */
    constexpr int QB = 8;
    const uint16_t *q16 = (const uint16_t *)p.q;
    uint16_t *qs16 = (uint16_t *)q_s;
    for (int r = warp; r < ROWS; r += 4 * WM) {
        const uint16_t *src = q16 + qrow_s[r];
        uint16_t *dst = qs16 + r * kp;
        const int live = r < nrows ? p.dk : 0; /* rows past nrows and dims past dk: zero */
        for (int d0 = lane; d0 < kp; d0 += 32 * QB) {
            uint16_t x[QB];
#pragma unroll
            for (int k = 0; k < QB; k++) x[k] = d0 + 32 * k < live ? src[d0 + 32 * k] : (uint16_t)0;
#pragma unroll
            for (int k = 0; k < QB; k++)
                if (d0 + 32 * k < kp) dst[d0 + 32 * k] = x[k];
        }
    }
    /* K and V pads, 16 bytes a store (pitches are multiples of 8 elements) */
    for (int e = tid; e < WIDE_T * (kp + vp) / 8; e += blockDim.x) ((uint4 *)k_s)[e] = make_uint4(0, 0, 0, 0);
    gen_split_range(p, last_s, nrows, range_s);
    __syncthreads();
    const int64_t j0 = range_s[0], j1 = range_s[1];
    const bool k_vec4 = p.k_vec4, v_vec4 = p.v_vec4;
    const float *k_shift = p.k_shift ? p.k_shift + (b * hkv + g) * p.dk : nullptr; /* SPEC 8.1's mend */

    /* this thread's rows (accumulator rows gq and gq + 8 of row tile rt) */
    const int ra = rt * 16 + gq, rb = ra + 8;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, kept[2] = {0.0f, 0.0f};
    float o[NTW][4];
#pragma unroll
    for (int nt = 0; nt < NTW; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    const int dvp = vp - 8, d_first = kt * 8 * NTW; /* this warp's V dims: [d_first, d_first + 8 NTW) */
    const int ksteps = (kp - 8) / 16;
    /* ldmatrix row addresses: A (q, P) rows lane % 16 at column 8 (lane / 16); K keys lane % 8 at
     * dims 8 ((lane / 8) % 2); V keys lane % 8 + 8 ((lane / 8) % 2) at dims 8 (lane / 16) */
    const E *qa = q_s + (rt * 16 + (lane & 15)) * kp + (lane >> 4) * 8;
    const E *kb = k_s + (kt * 8 + (lane & 7)) * kp + ((lane >> 3) & 1) * 8;
    const E *pa = p_s + (rt * 16 + (lane & 15)) * WIDE_PPITCH + (lane >> 4) * 8;
    const E *vb = v_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * vp + d_first + (lane >> 4) * 8;

    for (int64_t jt = j0; jt < j1; jt += WIDE_T) {
        const int n = (int)min((int64_t)WIDE_T, j1 - jt);
        __syncthreads(); /* the previous tile's K, V and weights consumed */
        wide_rows<E, IPT>(p.k, p.k_words, k_vec4, b, g, jt, n, k_s, kp, k_shift);
        wide_rows<E, IPT>(p.v, p.v_words, v_vec4, b, g, jt, n, v_s, vp);
        if (n < WIDE_T) /* rows past n: zero, so a stale value times a zero weight is zero */
            for (int e = tid; e < (WIDE_T - n) * vp / 8; e += blockDim.x)
                ((uint4 *)(v_s + n * vp))[e] = make_uint4(0, 0, 0, 0);
        __syncthreads();

        /* scores of keys 8kt + 2c4 + (0, 1) for rows ra (acc 0, 1) and rb (acc 2, 3) */
        /* two accumulators (even and odd k steps): half the chain of dependent mma.sync at Dk 576 */
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int ks = 0;
        for (; ks + 1 < ksteps; ks += 2) {
            uint32_t a[4], bk[2], a1[4], bk1[2];
            ldmatrix_x4(a, qa + ks * 16);
            ldmatrix_x2(bk, kb + ks * 16);
            ldmatrix_x4(a1, qa + ks * 16 + 16);
            ldmatrix_x2(bk1, kb + ks * 16 + 16);
            wide_elt<E>::mma(acc, a, bk[0], bk[1]);
            wide_elt<E>::mma(acc1, a1, bk1[0], bk1[1]);
        }
        if (ks < ksteps) {
            uint32_t a[4], bk[2];
            ldmatrix_x4(a, qa + ks * 16);
            ldmatrix_x2(bk, kb + ks * 16);
            wide_elt<E>::mma(acc, a, bk[0], bk[1]);
        }
#pragma unroll
        for (int e = 0; e < 4; e++) acc[e] += acc1[e];
        float s[4], tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e < 2 ? ra : rb, t = kt * 8 + 2 * c4 + (e & 1);
            float keep_flag = 0.0f;
            s[e] = r < nrows && t < n ? gen_key_score(p, acc[e], jt + t, last_s[r], mrow_s[r], keep_flag) : -INFINITY;
            kept[e >> 1] = fmaxf(kept[e >> 1], keep_flag);
            tmax[e >> 1] = fmaxf(tmax[e >> 1], s[e]);
        }
#pragma unroll
        for (int x = 0; x < 2; x++) tmax[x] = quad_max(tmax[x]);
        if (c4 == 0) red_m[kt * ROWS + ra] = tmax[0], red_m[kt * ROWS + rb] = tmax[1];
        __syncthreads();
        float corr[2], psum[2];
#pragma unroll
        for (int x = 0; x < 2; x++) {
            const int r = x == 0 ? ra : rb;
            float mt = red_m[r];
#pragma unroll
            for (int q = 1; q < 4; q++) mt = fmaxf(mt, red_m[q * ROWS + r]);
            const float mn = fmaxf(m[x], mt);
            corr[x] = mn == -INFINITY ? 1.0f : __expf(m[x] - mn);
            m[x] = mn;
            const float w0 = s[2 * x] == -INFINITY ? 0.0f : __expf(s[2 * x] - mn);
            const float w1 = s[2 * x + 1] == -INFINITY ? 0.0f : __expf(s[2 * x + 1] - mn);
            const uint32_t pw = wide_elt<E>::pack(w0, w1);
            *(uint32_t *)(p_s + r * WIDE_PPITCH + kt * 8 + 2 * c4) = pw;
            const float2 wr = wide_elt<E>::unpack(pw); /* l sums the weights P V multiplies */
            psum[x] = quad_sum(wr.x + wr.y);
        }
        if (c4 == 0) red_l[kt * ROWS + ra] = psum[0], red_l[kt * ROWS + rb] = psum[1];
#pragma unroll
        for (int nt = 0; nt < NTW; nt++) {
            o[nt][0] *= corr[0], o[nt][1] *= corr[0];
            o[nt][2] *= corr[1], o[nt][3] *= corr[1];
        }
        __syncthreads();
#pragma unroll
        for (int x = 0; x < 2; x++) {
            const int r = x == 0 ? ra : rb;
            l[x] = l[x] * corr[x] + (red_l[r] + red_l[ROWS + r] + red_l[2 * ROWS + r] + red_l[3 * ROWS + r]);
        }
        /* P V over the tile's two 16-key steps, this warp's dims in pairs of 8-dim tiles */
#pragma unroll
        for (int ks = 0; ks < WIDE_T / 16; ks++) {
            uint32_t a[4];
            ldmatrix_x4(a, pa + ks * 16);
#pragma unroll
            for (int nt = 0; nt < NTW; nt += 2) {
                if (d_first + nt * 8 >= dvp) break; /* warp-uniform; dvp is a multiple of 16 */
                uint32_t bv[4];
                ldmatrix_x4_trans(bv, vb + ks * 16 * vp + nt * 8);
                wide_elt<E>::mma(o[nt], a, bv[0], bv[1]);
                wide_elt<E>::mma(o[nt + 1], a, bv[2], bv[3]);
            }
        }
    }

    /* partials: o from every warp; m, l from quarter 0 (every quarter holds the same); kept over the quarters */
#pragma unroll
    for (int x = 0; x < 2; x++) kept[x] = quad_max(kept[x]);
    if (c4 == 0) red_k[kt * ROWS + ra] = kept[0], red_k[kt * ROWS + rb] = kept[1];
    __syncthreads();
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int r = x == 0 ? ra : rb;
        if (r >= nrows) continue;
        const int64_t f = f0 + r, h = g * p.ratio + f / p.lq, i = f % p.lq;
        const int64_t row = (b * p.hq + h) * p.lq + i;
        float *dst = p.part + ((int64_t)blockIdx.y * p.rows + row) * (4 + p.dv);
        if (kt == 0 && c4 == 0) {
            const float K = fmaxf(fmaxf(red_k[r], red_k[ROWS + r]), fmaxf(red_k[2 * ROWS + r], red_k[3 * ROWS + r]));
            dst[0] = m[x], dst[1] = l[x], dst[2] = K, dst[3] = 0.0f;
        }
#pragma unroll
        for (int nt = 0; nt < NTW; nt++) {
            const int d = d_first + nt * 8 + 2 * c4;
            if (d < p.dv) dst[4 + d] = o[nt][2 * x];
            if (d + 1 < p.dv) dst[4 + d + 1] = o[nt][2 * x + 1];
        }
    }
}

/* The wide kernels: (E, NTW, WM), one table for instantiation and choice */
#define GEN_WIDE_KERNELS(X)                                                                                    \
    X(__half, 8, 1) X(__half, 8, 2) X(__half, 8, 4) X(__half, 16, 1) X(__half, 16, 2) X(__half, 16, 4)          \
    X(__nv_bfloat16, 8, 1) X(__nv_bfloat16, 8, 2) X(__nv_bfloat16, 8, 4) X(__nv_bfloat16, 16, 1)               \
    X(__nv_bfloat16, 16, 2) X(__nv_bfloat16, 16, 4)

void (*wide_kernel(int q_dtype, int dv, int wm))(const gen_params) {
    const bool bf16 = q_dtype == QSDPA_DTYPE_BF16;
    if ((q_dtype != QSDPA_DTYPE_F16 && !bf16) || dv > 512) return nullptr;
    const int ntw = dv <= 256 ? 8 : 16;
#define GEN_WIDE_PICK(E, NTW, WM)                                                                              \
    if (bf16 == std::is_same<E, __nv_bfloat16>::value && ntw == NTW && wm == WM) return generic_wide<E, NTW, WM>;
    GEN_WIDE_KERNELS(GEN_WIDE_PICK)
#undef GEN_WIDE_PICK
    return nullptr;
}

/* Row tiles (16 folded rows each) of the wide kernel for this call, 0 where it does not take it (else p's
 * pitches and vec4 flags are set for it):
 * f16/bf16 q, Dv <= 512; by default where the one-warp decode kernel does not take the call
 * (`decode_taken`) and a KV head has at least 16 folded rows (run 172: at Dk 576 / Dv 512 over 32
 * rows 3.4x faster than generic_attention at 32K keys, 9.7x on a prefill; at D 512 over 4 rows
 * 1.17x slower, a 16-row tile three-quarters empty; 5-15 rows not measured). 1, 2 or 4 tiles by
 * the folded rows, fewer where the block's shared memory exceeds the device's.
 * QSDPA_CUDA_GENERIC_WIDE=0 turns it off; 2 takes every call it can (any rows, and what the decode
 * kernel would): a benchmark and test knob. */
int wide_choice(const qsdpa_context *ctx, gen_params *p, int64_t folded, bool decode_taken) {
    static const int knob = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_WIDE", 1);
    if (knob == 0 || !wide_kernel(p->q_dtype, p->dv, 1)) return 0;
    if (knob != 2 && (decode_taken || folded < 16)) return 0;
    /* the dynamic part must leave room for the static arrays (per-row keys, mask rows and q offsets: < 2 KB) */
    const size_t room = (size_t)ctx->cuda->smem_optin - 2048;
    const int kpitch = wide_pitch(p->dk), vpitch = wide_pitch(p->dv);
    int wm = folded <= 16 ? 1 : folded <= 32 ? 2 : 4;
    while (wm > 1 && wide_smem_bytes(wm, kpitch, vpitch) > room) wm /= 2;
    if (wide_smem_bytes(wm, kpitch, vpitch) > room) return 0;
    p->kpitch = kpitch, p->vpitch = vpitch;
    p->k_vec4 = gen_rows_vec4(&p->k, p->k_words);
    p->v_vec4 = gen_rows_vec4(&p->v, p->v_words);
    return wm;
}

} // namespace qgen
