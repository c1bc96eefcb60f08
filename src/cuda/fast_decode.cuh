/* The split-K decode kernel: short queries (ratio * Lq <= DEC_MAX_ROWS folded rows)
 * over a quantized cache, one template over (Dk, Dv, K format, V format,
 * NR = row tiles of 8).
 *
 * Why a kernel of its own: a tile kernel puts the folded rows on mma's M side
 * (16 rows, 4 of them real at GQA 4) and stages every tile through shared
 * memory with block-wide barriers; at decode the first one was issue-bound at
 * 8 warps per SM (bench/NOTES.md, run 4). Here the roles swap:
 *   S^T = K Q^T   K is the A operand (16 keys x 16 dims), Q^T the B operand
 *                 (16 dims x 8 rows), so a row tile is 8 folded rows;
 *   O^T = V^T P^T V^T is the A operand (16 dims x 16 keys); P^T comes from
 *                 the S^T accumulator by one movmatrix transpose per 8 keys.
 * Each warp streams its own chunks of 16 keys through its own ring of
 * shared-memory stages (cp.async, 2-3 chunks in flight, no block barrier in
 * the loop: only the warp waits for its copies), so the bytes in flight do not
 * cost registers. Both inner products may permute their reduction index
 * freely, so each lane reads whole contiguous runs of codes:
 *   K: lane (gq, c4) owns keys gq and gq + 8 and dims [c4 * Dk/4, +Dk/4)
 *      (16 bytes at 4-bit D=128); q is loaded in the same permuted order;
 *   V: lane (gq, c4) owns keys 2c4, 2c4+1, 2c4+8, 2c4+9 and dims
 *      [gq * Dv/8, +Dv/8) (8 bytes at 4-bit D=128), or with folded V (affine,
 *      see dec_geom) one run of group/8 dims in every group; the output keeps
 *      that permutation until it is stored.
 * The four warps of a CTA take interleaved chunks of the CTA's split and
 * merge through shared memory at the end; every CTA writes an (m, l, o)
 * partial, and the last CTA of each (b, head, row block) to do so merges them
 * (dec_merge_rows: sinks, lse, dtype), or split_merge (fast_kernel.cuh) does
 * where the launch has no arrival counters. */
#ifndef QSDPA_CUDA_FAST_DECODE_CUH
#define QSDPA_CUDA_FAST_DECODE_CUH

namespace qfast {

/* CTAs per SM the register budget of the 8-row kernel is cut for (3 = 168
 * registers; 16 rows: 2). At 4 (128 registers) the 4-bit D128 kernels spill
 * since K is folded (v9), and split-K is sized for 2 CTAs per SM anyway; a
 * compile-time knob so the device script can time variants (bench/NOTES.md). */
#ifndef QSDPA_CUDA_DEC_MIN_BLOCKS
#define QSDPA_CUDA_DEC_MIN_BLOCKS 3
#endif
/* ring stages of the small (<= 3 KB) stages: 4-bit rows, mxfp4, nvfp4 (even, >= 4: the paired
 * kernels refill two at a time); a compile-time knob for the device script's variants */
#ifndef QSDPA_CUDA_DEC_SMALL_STAGES
#define QSDPA_CUDA_DEC_SMALL_STAGES 4
#endif
static_assert(QSDPA_CUDA_DEC_SMALL_STAGES >= 4 && QSDPA_CUDA_DEC_SMALL_STAGES % 2 == 0, "an even ring of 4 or more");
/* the largest stage (bytes of one chunk) that takes the small stages' deeper ring (and so, for folded
 * affine K and V, two chunks a warp step); wider stages keep 3 */
#ifndef QSDPA_CUDA_DEC_SMALL_BYTES
#define QSDPA_CUDA_DEC_SMALL_BYTES 3072
#endif
/* two chunks a warp step in the 8-row kernel with 4-stage rings (dec_pairing); 0 keeps one */
#ifndef QSDPA_CUDA_DEC_PAIR
#define QSDPA_CUDA_DEC_PAIR 1
#endif
/* marks: 0 entry, 1 pdl_wait returned, 2 q staged, 3 first chunk in warp 0, 4 loop ended, 5 partials written */
#if QSDPA_CUDA_DEC_TRACE
#define DEC_TRACE(i) (trace_c[i] = clock64(), trace_g[i] = dec_globaltimer())
#else
#define DEC_TRACE(i) ((void)0)
#endif
constexpr int DEC_WARPS = 4;
/* folded rows the decode kernel serves, as row blocks of 16 (qsdpa_cuda_use_decode_kernel:
 * past 32 the prefill kernel is faster everywhere, run 56) */
constexpr int DEC_MAX_ROWS = 32;
constexpr int DEC_CHUNK = 16;                    /* keys per warp step */
constexpr int DEC_TILE = DEC_WARPS * DEC_CHUNK;  /* keys per CTA step: the split unit */

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
    uint32_t y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

template <int DK, int DV, class FK, class FV>
struct dec_geom {
    static constexpr int KT = DK / 4;                     /* K dims per lane per key */
    static constexpr int KW = KT * FK::bits / 32;         /* K words per lane per key */
    static constexpr int KG = FK::has_scales && KT > FK::group ? KT / FK::group : 1; /* K groups per lane */
    static constexpr int VT = DV / 8;                     /* V dims per lane per key */
    static constexpr int VW = VT * FV::bits / 32;
    static constexpr int KSTEPS = DK / 16, MT = DV / 16;
    /* Folded V (affine 4/8-bit, a lane's run per group is whole words): a lane owns one
     * run of group/8 dims in EVERY group, so each m tile lies in one group; the codes
     * enter mma as raw offset integers (1024 + c, or 64 + c for the odd nibbles) and
     * the group's scale multiplies P instead; sum(P s) and sum(P z) per group come from
     * G + 1 small extra mma and correct the output once at the end. */
    static constexpr bool FOLD = FV::mode == QSDPA_MODE_AFFINE && (FV::bits == 4 || FV::bits == 8) &&
                                 DV % FV::group == 0 && FV::group * FV::bits % 256 == 0 && DV / FV::group <= 8;
    static constexpr int NG = FOLD ? DV / FV::group : 1; /* V groups a lane reads per key */
    static constexpr int RUN = FOLD ? FV::group / 8 : VT; /* V dims per lane per group run */
    static constexpr int RW = RUN * FV::bits / 32;        /* words per run */
    static constexpr int TPW = FV::bits == 4 ? 4 : 2;      /* folded m tiles per run word */
    static constexpr int NGW = NG > 1 ? NG / 2 : 1;       /* words of a key's NG 16-bit scales (one load) */
    /* Unfolded V: groups a lane's VT dims span (nvfp4's 16 at D 256: 2), a scale each */
    static constexpr int VGL = !FOLD && FV::has_scales && VT > FV::group ? VT / FV::group : 1;
    static constexpr int VSW = NGW > VGL ? NGW : VGL;     /* scale words per V key in a lane's chunk */
    /* Folded K (affine 4/8-bit, a lane's run per group whole words, at most 4 / 2 groups):
     * lane c4 owns dims [g * group + c4 * group/4, +group/4) of every group g, so each
     * k step lies in one group; the codes enter mma as offset integers and the key's
     * scale and bias apply to the f32 group sums: S = sum_g s_g acc_g + z_g Q_g, where
     * acc_g starts at -sum(offset * q) and Q_g = sum(q) over the group (both from mma
     * once per warp). */
    static constexpr bool FOLDK = FK::mode == QSDPA_MODE_AFFINE && (FK::bits == 4 || FK::bits == 8) &&
                                  DK % FK::group == 0 && (FK::group / 4) % FK::U == 0 &&
                                  DK / FK::group <= (FK::bits == 4 ? 4 : 2); /* a8g32 D128: 4 groups spill */
    static constexpr int NGK = FOLDK ? DK / FK::group : 1;     /* K groups a lane reads per key */
    static constexpr int KRUN = FOLDK ? FK::group / 4 : KT;    /* K dims per lane run */
    static constexpr int KRW = KRUN * FK::bits / 32;           /* words per K run */
    static constexpr int NKACC = FOLDK && NGK >= 2 ? NGK : 2;  /* S^T accumulators: per group, or even/odd steps */
    static constexpr int NGKW = NGK > 1 ? NGK / 2 : 1;         /* words of a key's NGK 16-bit scales */
    /* accumulator of k step s (a group's steps are consecutive in the lane's word order) */
    __host__ __device__ static constexpr int kacc(int s) { return FOLDK && NGK >= 2 ? s / (KSTEPS / NGK) : s & 1; }
    static_assert(KW >= 1 && VW >= 1 && KT % FK::U == 0 && VT % FV::U == 0, "lane runs must be whole words");
    static_assert(stored_bits_of<FK>::value * KRUN % 8 == 0 && stored_bits_of<FV>::value * RUN % 8 == 0,
                  "lane runs of codes stored narrower (stored_as) start at whole bytes");
    static_assert(!FK::has_scales || KT <= FK::group || KT % FK::group == 0, "K groups per lane");
    static_assert(FOLD || !FV::has_scales || VT <= FV::group || (VT % FV::group == 0 && FV::group % FV::U == 0),
                  "a lane's V dims: part of one group, or whole groups of whole words");
};

/* Folded V: element of a run word in slot sigma (0: A row gq, 1: row gq + 8) of the
 * word's m tile t, and the tile's integer offset. 4-bit: tiles {0,2} {4,6} hold the
 * even nibbles (1024 + c), {1,3} {5,7} the odd ones (64 + c); 8-bit: {0,1} {2,3}. */
template <int BITS>
__host__ __device__ constexpr int fold_elem(int t, int sigma) {
    return BITS == 4 ? (t & 1) * 4 + (t >> 1) + 2 * sigma : 2 * t + sigma;
}
template <int BITS>
__host__ __device__ constexpr float fold_offset(int t) { return BITS == 4 && t >= 2 ? 64.0f : 1024.0f; }

/* The same run word of two keys -> offset integers {key a, key b} per element (f16 pairs). */
template <int BITS>
__device__ __forceinline__ void fold_words(uint32_t a, uint32_t b, uint32_t *x) {
    if constexpr (BITS == 4) {
        const uint32_t lo = prmt(a, b, 0x5410), hi = prmt(a, b, 0x7632), los = lo >> 8, his = hi >> 8;
        x[0] = and_or(lo, 0x000F000Fu, 0x64006400u);  x[1] = and_or(lo, 0x00F000F0u, 0x54005400u);
        x[2] = and_or(los, 0x000F000Fu, 0x64006400u); x[3] = and_or(los, 0x00F000F0u, 0x54005400u);
        x[4] = and_or(hi, 0x000F000Fu, 0x64006400u);  x[5] = and_or(hi, 0x00F000F0u, 0x54005400u);
        x[6] = and_or(his, 0x000F000Fu, 0x64006400u); x[7] = and_or(his, 0x00F000F0u, 0x54005400u);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++) x[e] = and_or(prmt(a, b, (uint32_t)(e | ((4 + e) << 8))), 0x00FF00FFu, 0x64006400u);
    }
}

/* Half `hi` of two words of raw 16-bit scales (f16 or bf16) -> one f16 pair (both
 * conversions are computed and one selected: no branch per group). */
__device__ __forceinline__ uint32_t pack_scales(uint32_t a, uint32_t b, int hi, bool bf16) {
    const uint32_t h = prmt(a, b, hi ? 0x7632 : 0x5410);
    const uint32_t f = h2u(__floats2half2_rn(__uint_as_float(hi ? a & 0xFFFF0000u : a << 16),
                                             __uint_as_float(hi ? b & 0xFFFF0000u : b << 16)));
    return bf16 ? f : h;
}

/* The affine scale and bias words of a chunk that feed f16 arithmetic (all of V's,
 * K's unless K is folded: folded K reads its scales exactly as f32) from bf16 to
 * f16, so pack_scales and dec_scale_bias see f16 only. */
template <class C, class G>
__device__ __forceinline__ void dec_scales_to_f16(C &r, bool k_bf16, bool v_bf16) {
    if (v_bf16) {
#pragma unroll
        for (int vv = 0; vv < 4; vv++)
#pragma unroll
            for (int w = 0; w < (int)(sizeof r.vs[0] / sizeof r.vs[0][0]); w++) {
                r.vs[vv][w] = bf16x2_to_f16x2(r.vs[vv][w]);
                r.vz[vv][w] = bf16x2_to_f16x2(r.vz[vv][w]);
            }
    }
    if (!G::FOLDK && k_bf16) {
#pragma unroll
        for (int kk = 0; kk < 2; kk++)
#pragma unroll
            for (int kg = 0; kg < G::KG; kg++) {
                r.ks[kk][kg] = bf16x2_to_f16x2(r.ks[kk][kg]);
                r.kz[kk][kg] = bf16x2_to_f16x2(r.kz[kk][kg]);
            }
    }
}

/* Half `hi` of a word of raw 16-bit scales (f16 or bf16) -> f32 */
__device__ __forceinline__ float scale_f32(uint32_t w, int hi, bool bf16) {
    const uint32_t h = hi ? w >> 16 : w & 0xFFFFu;
    return bf16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
}

/* Bytes of a stored scale element in the decode kernel: affine scales must be
 * f16 or bf16 there (the host sends f32 scales to the prefill kernel), the fp
 * formats' scales are bytes; a compile-time size keeps the reads branch-free. */
template <class F>
__host__ __device__ constexpr int dec_scale_bytes() { return F::mode == QSDPA_MODE_AFFINE ? 2 : 1; }

/* Raw scale (and bias) bits of one group -> half2 {scale, bias}. */
template <class F>
__device__ __forceinline__ half2 dec_scale_bias(uint32_t s, uint32_t z, bool bf16, float nv_factor) {
    if constexpr (F::mode == QSDPA_MODE_AFFINE) {
        return u2h(pack_scales(s, z, 0, bf16));
    } else {
        return F::scale_bias_raw(s, z, 0, nv_factor);
    }
}

/* The raw data of one 16-key chunk held by a lane. */
template <int DK, int DV, class FK, class FV>
struct dec_chunk {
    using G = dec_geom<DK, DV, FK, FV>;
    uint32_t kw[2][G::KW];       /* keys gq, gq + 8 */
    uint32_t ks[2][G::KG], kz[2][G::KG];
    uint32_t kfs[2][G::NGKW], kfz[2][G::NGKW]; /* folded K: raw 16-bit scales / biases, two per word */
    uint32_t vw[4][G::VW];       /* keys 2c4, 2c4 + 1, 2c4 + 8, 2c4 + 9 (folded: run words of group 0, 1, ...) */
    uint32_t vs[4][G::VSW], vz[4][G::VSW]; /* raw scales / biases: folded, two 16-bit ones per word; else per group */
};

/* One 16-key chunk in a warp's shared-memory ring: code rows (padded so the lanes'
 * reads are free of bank conflicts), then the chunk's [16][groups] scale and bias
 * blocks, copied whole (the host requires scale rows back to back, in planes that are
 * 16-byte aligned, or 4-byte aligned with rows of whole 4-byte words: scales_vec 0).
 * A cache stored narrower than the kernel (pad_from: D 96 on the D 128 kernel) fills
 * the code rows' missing 16-byte pieces with zeros and keeps its scale blocks as
 * stored, [16][its groups]; dec_read gives the missing groups zero scales. */
template <int DK, int DV, class FK, class FV>
struct dec_stage {
    static constexpr int DKS = src_dim_of<FK>::value ? src_dim_of<FK>::value : DK; /* head dims as stored */
    static constexpr int DVS = src_dim_of<FV>::value ? src_dim_of<FV>::value : DV;
    static constexpr int KBITS = stored_bits_of<FK>::value, VBITS = stored_bits_of<FV>::value; /* as stored */
    static constexpr int KROW = DK * KBITS / 8, VROW = DV * VBITS / 8;
    static constexpr int KROW_SRC = DKS * KBITS / 8, VROW_SRC = DVS * VBITS / 8;
    static constexpr int KGS = FK::has_scales ? DKS / FK::group : 0, VGS = FV::has_scales ? DVS / FV::group : 0;
    /* pitches that keep the lanes' fragment reads free of bank conflicts: a lane reads
     * W-byte runs (W <= 16), 32/W rows per phase, so the pitch must be an odd multiple
     * of 4W modulo 128; wider runs (two 16-byte reads) want 16 modulo 32 */
    static constexpr int KRUNB = dec_geom<DK, DV, FK, FV>::KRW * 4;
    static constexpr int KPITCH = KBITS != FK::bits ? KROW + 16 /* widened runs: 4-byte reads at any offset */
                                  : dec_geom<DK, DV, FK, FV>::FOLDK && KRUNB <= 16
                                      ? KROW + ((4 * KRUNB - KROW % (8 * KRUNB)) + 8 * KRUNB) % (8 * KRUNB)
                                      : (KROW >= 128 ? KROW + 16 : KROW);
    static constexpr int VPITCH = VROW + 16;
    static constexpr int KSROW = KGS * dec_scale_bytes<FK>(), VSROW = VGS * dec_scale_bytes<FV>(); /* stored */
    static constexpr int KSB = (DEC_CHUNK * KSROW + 15) / 16 * 16, VSB = (DEC_CHUNK * VSROW + 15) / 16 * 16;
    static constexpr int V_OFF = DEC_CHUNK * KPITCH, KS_OFF = V_OFF + DEC_CHUNK * VPITCH;
    static constexpr int KZ_OFF = KS_OFF + KSB, VS_OFF = KZ_OFF + (FK::has_biases ? KSB : 0);
    static constexpr int VZ_OFF = VS_OFF + VSB, BYTES = VZ_OFF + (FV::has_biases ? VSB : 0);
    /* chunks in flight per warp: about 7 KB of codes for the 4-bit rows, 3 stages of wider ones */
    static constexpr int STAGES = BYTES <= QSDPA_CUDA_DEC_SMALL_BYTES ? QSDPA_CUDA_DEC_SMALL_STAGES : 3;
    static_assert(KROW % 16 == 0 && VROW % 16 == 0, "code rows of whole 16-byte pieces");
    static_assert(KROW_SRC % 16 == 0 && VROW_SRC % 16 == 0 && DKS <= DK && DVS <= DV &&
                      (!FK::has_scales || DKS % FK::group == 0) && (!FV::has_scales || DVS % FV::group == 0),
                  "a narrower cache: stored rows of whole 16-byte pieces and whole groups");
};

/* A lane's share of copying its warp's chunks into the ring (cp.async, zero-filled
 * past the cache end), set up once: lane l copies 16-byte pieces l, l + 32, ... of the
 * chunk's code rows, so one copy instruction reads 512 contiguous bytes where rows are
 * contiguous (v9's half-row-per-lane plan touched 16 lines per instruction and cost
 * 8-20% on rows of >= 128 bytes, bench/NOTES.md v9.3), and, if l < NSP, one 16-byte
 * piece of the chunk's scale blocks. */
template <int DK, int DV, class FK, class FV>
struct dec_copier {
    using R = dec_stage<DK, DV, FK, FV>;
    static constexpr int KC = R::KROW / 16, VC = R::VROW / 16;               /* pieces (= lanes) per code row */
    static constexpr int KCS = R::KROW_SRC / 16, VCS = R::VROW_SRC / 16;     /* of them stored (pad_from: fewer) */
    /* Rows of 2^n pieces: a lane's pieces lie KR rows apart, one stride. Other rows (3, 5, 6, 12 pieces:
     * 3-, 5- and 6-bit codes, stored_as) number the chunk's pieces lane, lane + 32, ... and keep each
     * piece's offsets (the "irregular" copy; the last may be past the chunk's pieces) */
    static constexpr bool KREG = 32 % KC == 0, VREG = 32 % VC == 0;
    static constexpr int KN = (DEC_CHUNK * KC + 31) / 32, VN = (DEC_CHUNK * VC + 31) / 32; /* code pieces per lane */
    static constexpr int KSP = FK::has_scales ? R::KSB / 16 : 0, VSP = FV::has_scales ? R::VSB / 16 : 0;
    static constexpr int KZP = FK::has_biases ? KSP : 0, VZP = FV::has_biases ? VSP : 0;
    static constexpr int NSP = KSP + KZP + VSP + VZP;                        /* scale pieces per chunk */
    static_assert(DEC_CHUNK == 16 && (!KREG || KC % 2 == 0) && (!VREG || VC % 2 == 0) && NSP <= 32,
                  "copy split: whole pieces per lane");
    static_assert((KREG || KCS == KC) && (VREG || VCS == VC), "an irregular copy reads rows as wide as the kernel's");
    int k_off[KREG ? 1 : KN], k_to[KREG ? 1 : KN]; /* irregular: piece t's source bytes past the chunk's first
                                                    * row (-1: none), its stage offset */
    int v_off[VREG ? 1 : VN], v_to[VREG ? 1 : VN];
    const char *k, *v, *s; /* lane's first K / V code piece, its scale piece (if has_scale) */
    int k_step, v_step;    /* bytes between a lane's pieces of one chunk (KR / VR keys; < 2^31: the host
                            * sends per-key strides of 2^27 bytes and more to the prefill kernel) */
    int k_dst, v_dst;      /* the lane's first piece in a stage */
    int s_row, s_off;      /* its scale block's bytes per key, the piece's offset in that block */
    bool has_scale;        /* lane < NSP */
    bool k_real, v_real;   /* the lane's code pieces are stored (false: a narrower cache's zero pad) */
    bool s_words;          /* the planes are 4-byte aligned only (scales_vec 0): a piece is 4 copies of 4 bytes */
    static constexpr int KR = 32 / KC, VR = 32 / VC; /* keys between a lane's pieces */

    __device__ __forceinline__ dec_copier(const fast_params &p, int64_t b, int64_t g, int chunk, int lane) {
        const int64_t j0 = (int64_t)chunk * DEC_CHUNK;
        k_real = lane % KC < KCS;
        v_real = lane % VC < VCS;
        /* a pad lane keeps its row's first piece as an in-bounds source of zero bytes */
        k = (const char *)p.k.codes + b * p.k.cs[0] + g * p.k.cs[1] + (j0 + (KREG ? lane / KC : 0)) * p.k.cs[2] +
            (KREG && k_real ? (lane % KC) * 16 : 0);
        v = (const char *)p.v.codes + b * p.v.cs[0] + g * p.v.cs[1] + (j0 + (VREG ? lane / VC : 0)) * p.v.cs[2] +
            (VREG && v_real ? (lane % VC) * 16 : 0);
        k_step = (int)(KR * p.k.cs[2]);
        v_step = (int)(VR * p.v.cs[2]);
        k_dst = (lane / KC) * R::KPITCH + (lane % KC) * 16;
        v_dst = R::V_OFF + (lane / VC) * R::VPITCH + (lane % VC) * 16;
        if constexpr (!KREG)
#pragma unroll
            for (int t = 0; t < KN; t++) {
                const int i = lane + 32 * t, row = i / KC, col = i % KC;
                k_off[t] = i < DEC_CHUNK * KC ? (int)(row * p.k.cs[2]) + col * 16 : -1;
                k_to[t] = row * R::KPITCH + col * 16;
            }
        if constexpr (!VREG)
#pragma unroll
            for (int t = 0; t < VN; t++) {
                const int i = lane + 32 * t, row = i / VC, col = i % VC;
                v_off[t] = i < DEC_CHUNK * VC ? (int)(row * p.v.cs[2]) + col * 16 : -1;
                v_to[t] = R::V_OFF + row * R::VPITCH + col * 16;
            }
        /* the four scale blocks lie back to back in a stage (KS, KZ, VS, VZ), so lane i
         * copies piece i of the whole run; its source is piece `piece` of block `blk` */
        int piece = lane, blk = 0;
        if (piece >= KSP) { piece -= KSP; blk = 1; }
        if (blk == 1 && piece >= KZP) { piece -= KZP; blk = 2; }
        if (blk == 2 && piece >= VSP) { piece -= VSP; blk = 3; }
        const qd_qtensor &t = blk < 2 ? p.k : p.v;
        const int es = blk < 2 ? dec_scale_bytes<FK>() : dec_scale_bytes<FV>();
        const void *base = (blk & 1) ? t.biases : t.scales;
        const int64_t *st = (blk & 1) ? t.bs : t.ss;
        has_scale = lane < NSP;
        s_words = p.scales_vec == 0;
        s_row = has_scale ? (blk < 2 ? R::KSROW : R::VSROW) : 0;
        s_off = piece * 16;
        s = has_scale ? (const char *)base + (b * st[0] + g * st[1]) * es + j0 * s_row + piece * 16 : nullptr;
    }

    /* before pdl_wait: pull into L2 the pieces issue() will copy for the chunk `ahead`
     * steps of DEC_WARPS chunks past the pointers' one (`chunk`), keys past the cache
     * end left out */
    __device__ __forceinline__ void prefetch(const fast_params &p, int chunk, int ahead, int lane) const {
        const int j0 = (chunk + ahead * DEC_WARPS) * DEC_CHUNK, lk = (int)p.lk;
        const int64_t rows = (int64_t)ahead * (DEC_WARPS * DEC_CHUNK);
#pragma unroll
        for (int i = 0; i < KN; i++) {
            if constexpr (KREG) {
                if (k_real && j0 + lane / KC + i * KR < lk) prefetch_l2(k + rows * p.k.cs[2] + i * k_step);
            } else if (k_off[i] >= 0 && j0 + (lane + 32 * i) / KC < lk) {
                prefetch_l2(k + rows * p.k.cs[2] + k_off[i]);
            }
        }
#pragma unroll
        for (int i = 0; i < VN; i++) {
            if constexpr (VREG) {
                if (v_real && j0 + lane / VC + i * VR < lk) prefetch_l2(v + rows * p.v.cs[2] + i * v_step);
            } else if (v_off[i] >= 0 && j0 + (lane + 32 * i) / VC < lk) {
                prefetch_l2(v + rows * p.v.cs[2] + v_off[i]);
            }
        }
        if (has_scale && (int64_t)(lk - j0) * s_row - s_off > 0) prefetch_l2(s + rows * s_row);
    }

    /* One side's (K or V) code pieces of a whole chunk into `stage`: regular rows (C pieces dividing 32) from
     * src + i * step, zero pieces where the side is stored narrower (CS < C); irregular ones at their own
     * offsets (off -1: past the chunk's pieces) */
    template <bool REG, int C, int CS, int N, int RS, int PITCH>
    __device__ __forceinline__ static void codes_whole(char *stage, const char *src, int step, int dst, bool real,
                                                       const int *off, const int *to) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            if constexpr (!REG) {
                if (DEC_CHUNK * C % 32 == 0 || off[i] >= 0) cp_async16(stage + to[i], src + off[i]);
            } else if constexpr (CS == C) {
                cp_async16(stage + dst + i * RS * PITCH, src + i * step);
            } else {
                cp_async16(stage + dst + i * RS * PITCH, src + i * step, real ? 16 : 0);
            }
        }
    }
    /* The same for the cache's last chunk: rows past the cache end (and pad pieces) zero-filled from src, the
     * chunk's first row, which is in bounds */
    template <bool REG, int C, int N, int RS, int PITCH>
    __device__ __forceinline__ static void codes_last(char *stage, const char *src, int step, int dst, bool real,
                                                      const int *off, const int *to, int lane, int j0, int lk) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            if constexpr (!REG) {
                const bool ok = j0 + (lane + 32 * i) / C < lk;
                if (off[i] >= 0) cp_async16(stage + to[i], ok ? src + off[i] : src, ok ? 16 : 0);
            } else {
                const bool ok = real && j0 + lane / C + i * RS < lk;
                cp_async16(stage + dst + i * RS * PITCH, ok ? src + i * step : src, ok ? 16 : 0);
            }
        }
    }

    /* copy the chunk the pointers are at into `stage`, then step them DEC_WARPS chunks on.
     * Whole chunks (all but the cache's last) take the short path: offsets set up once,
     * no per-piece checks (run 71: the copy was 62 of 374 instructions per chunk and a
     * fifth of the stall samples while it recomputed them) */
    __device__ __forceinline__ void issue(const fast_params &p, int chunk, char *stage, int lane) {
        const int j0 = chunk * DEC_CHUNK, lk = (int)p.lk; /* the host keeps Lk < 2^31 */
        if (j0 + DEC_CHUNK <= lk) {
            codes_whole<KREG, KC, KCS, KN, KR, R::KPITCH>(stage, k, k_step, k_dst, k_real, k_off, k_to);
            codes_whole<VREG, VC, VCS, VN, VR, R::VPITCH>(stage, v, v_step, v_dst, v_real, v_off, v_to);
            if (has_scale) {
                if (!s_words) {
                    cp_async16(stage + R::KS_OFF + lane * 16, s);
                } else {
#pragma unroll
                    for (int w = 0; w < 4; w++) cp_async4(stage + R::KS_OFF + lane * 16 + 4 * w, s + 4 * w, 4);
                }
            }
        } else {
            codes_last<KREG, KC, KN, KR, R::KPITCH>(stage, k, k_step, k_dst, k_real, k_off, k_to, lane, j0, lk);
            codes_last<VREG, VC, VN, VR, R::VPITCH>(stage, v, v_step, v_dst, v_real, v_off, v_to, lane, j0, lk);
            if (has_scale) { /* cut at the last key */
                const int left = (lk - j0) * s_row - s_off, nb = left >= 16 ? 16 : left > 0 ? left : 0;
                if (!s_words) {
                    cp_async16(stage + R::KS_OFF + lane * 16, nb ? s : (const char *)p.k.codes, nb);
                } else { /* rows are whole 4-byte words, so the bytes left are too */
#pragma unroll
                    for (int w = 0; w < 4; w++) {
                        const bool ok = nb >= 4 * (w + 1);
                        cp_async4(stage + R::KS_OFF + lane * 16 + 4 * w, ok ? s + 4 * w : (const char *)p.k.codes,
                                  ok ? 4 : 0);
                    }
                }
            }
        }
        if (has_scale) s += (int64_t)s_row * (DEC_WARPS * DEC_CHUNK);
        k += p.k.cs[2] * (DEC_WARPS * DEC_CHUNK);
        v += p.v.cs[2] * (DEC_WARPS * DEC_CHUNK);
    }
};

/* N contiguous 32-bit words from shared memory (16-, 8- or 4-byte reads). */
template <int N>
__device__ __forceinline__ void lds_words(const char *src, uint32_t *w) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; i++) {
            const uint4 x = ((const uint4 *)src)[i];
            w[4 * i] = x.x; w[4 * i + 1] = x.y; w[4 * i + 2] = x.z; w[4 * i + 3] = x.w;
        }
    } else if constexpr (N == 2) {
        const uint2 x = *(const uint2 *)src;
        w[0] = x.x; w[1] = x.y;
    } else {
        static_assert(N == 1, "words per lane");
        w[0] = *(const uint32_t *)src;
    }
}

/* Bits [START, START + LEN) of a bit stream held in words s (LEN <= 32), in the low bits (higher bits:
 * what follows in the stream) */
template <int START, int LEN, int NS>
__device__ __forceinline__ uint32_t stream_bits(const uint32_t (&s)[NS]) {
    constexpr int i = START / 32, sh = START % 32;
    static_assert(i < NS && (sh + LEN <= 32 || i + 1 < NS), "bits inside the stream words");
    if constexpr (sh + LEN <= 32) return s[i] >> sh;
    else return __funnelshift_r(s[i], s[i + 1], sh);
}

/* Four SB-bit codes (SB 3 or 6: 12 or 24 bits, low bits of x; for SB 3 a second four at bit 16) spread
 * to W-bit fields (4 or 8) */
template <int SB, int W>
__device__ __forceinline__ uint32_t spread4(uint32_t x) {
    constexpr uint32_t m = (1u << SB) - 1u, r = W == 4 ? 0x00010001u : 1u; /* SB 3: both halves at once */
    return (x & m * r) | ((x & (m << SB) * r) << (W - SB)) | ((x & (m << 2 * SB) * r) << 2 * (W - SB)) |
           ((x & (m << 3 * SB) * r) << 3 * (W - SB));
}

/* Output word K of a run of SB-bit codes (stream words s) widened to 8-bit (SB 5, 6) or 4-bit (SB 2, 3) fields */
template <int SB, int K, int NS>
__device__ __forceinline__ uint32_t widen_word(const uint32_t (&s)[NS]) {
    if constexpr (SB == 6) { /* 4 codes, 24 bits, to bytes */
        return spread4<6, 8>(stream_bits<24 * K, 24>(s));
    } else if constexpr (SB == 3) { /* 8 codes, 24 bits: codes 0-3 and 4-7 into the halves, then nibbles */
        const uint32_t x = stream_bits<24 * K, 24>(s);
        return spread4<3, 4>((x & 0xFFFu) | (x & 0xFFF000u) << 4);
    } else if constexpr (SB == 5) { /* 4 codes, 20 bits, to bytes */
        const uint32_t x = stream_bits<20 * K, 20>(s);
        return (x & 0x1Fu) | (x & 0x3E0u) << 3 | (x & 0x7C00u) << 6 | (x & 0xF8000u) << 9;
    } else { /* 8 codes, 16 bits, to nibbles */
        static_assert(SB == 2, "stored widths 2, 3, 5, 6");
        uint32_t x = stream_bits<16 * K, 16>(s) & 0xFFFFu;
        x = (x | x << 8) & 0x00FF00FFu;
        x = (x | x << 4) & 0x0F0F0F0Fu;
        return (x | x << 2) & 0x33333333u;
    }
}
template <int SB, int NS, int... K>
__device__ __forceinline__ void widen_words(const uint32_t (&s)[NS], uint32_t *w, std::integer_sequence<int, K...>) {
    ((w[K] = widen_word<SB, K>(s)), ...);
}

/* N words of F's codes from a row of a stage, the run starting at code c: at p (the run's byte address)
 * where the cache stores F's own codes; otherwise (stored_as) the run's stored bits from row, widened */
template <class F, int N>
__device__ __forceinline__ void lds_codes(const char *p, const char *row, int c, uint32_t *w) {
    constexpr int SB = stored_bits_of<F>::value, W = F::bits, CODES = N * 32 / W;
    if constexpr (SB == W) {
        lds_words<N>(p, w);
    } else {
        /* the run's bytes at any offset within a word (raw), and after the shift whole stream words (s) */
        constexpr int BYTES = CODES * SB / 8, NW = (BYTES + 3) / 4 + 1;
        const int o = c * SB / 8; /* every run starts at a whole byte (4 or 8 codes) */
        const uint32_t *src = (const uint32_t *)(row + (o & ~3));
        uint32_t raw[NW], s[NW - 1];
#pragma unroll
        for (int i = 0; i < NW; i++) raw[i] = src[i]; /* up to 7 bytes past the run: a row's 16-byte pad */
#pragma unroll
        for (int i = 0; i < NW - 1; i++) s[i] = __funnelshift_r(raw[i], raw[i + 1], (o & 3) * 8);
        widen_words<SB>(s, w, std::make_integer_sequence<int, N>{});
    }
}

template <int BYTES>
__device__ __forceinline__ uint32_t lds_scale(const char *p) {
    if constexpr (BYTES == 2) return *(const unsigned short *)p;
    else return *(const unsigned char *)p;
}

/* A key's N 16-bit scales (N = 1, 2, 4, 8) in one read. */
template <int N>
__device__ __forceinline__ void lds_scale_row(const char *src, uint32_t *w) {
    if constexpr (N == 1) w[0] = *(const unsigned short *)src;
    else if constexpr (N == 2) w[0] = *(const uint32_t *)src;
    else lds_words<N / 2>(src, w);
}

/* A key's N 16-bit scales of which the first NS are stored (a narrower cache, pad_from): the
 * stored ones element by element (its rows, e.g. 6 bytes, are not word-aligned), zeros past them. */
template <int N, int NS>
__device__ __forceinline__ void lds_scale_row_stored(const char *src, uint32_t *w) {
    if constexpr (N == NS) {
        lds_scale_row<N>(src, w);
    } else {
#pragma unroll
        for (int i = 0; i < (N + 1) / 2; i++) {
            const uint32_t lo = 2 * i < NS ? *(const unsigned short *)(src + 4 * i) : 0u;
            const uint32_t hi = 2 * i + 1 < NS ? *(const unsigned short *)(src + 4 * i + 2) : 0u;
            w[i] = lo | hi << 16;
        }
    }
}

/* A lane's fragments of one staged chunk -> registers. */
template <int DK, int DV, class FK, class FV>
__device__ __forceinline__ void dec_read(const char *stage, int gq, int c4, dec_chunk<DK, DV, FK, FV> &r) {
    using G = dec_geom<DK, DV, FK, FV>;
    using R = dec_stage<DK, DV, FK, FV>;
    constexpr int KSB = dec_scale_bytes<FK>(), VSB = dec_scale_bytes<FV>();
    const int kgi = FK::has_scales ? c4 * G::KT / FK::group : 0;
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        const int key = gq + 8 * kk;
        if constexpr (G::FOLDK) { /* the lane's run in every group, then the key's scale and bias rows */
#pragma unroll
            for (int gr = 0; gr < G::NGK; gr++)
                lds_codes<FK, G::KRW>(stage + key * R::KPITCH + (gr * FK::group + c4 * G::KRUN) * FK::bits / 8,
                                      stage + key * R::KPITCH, gr * FK::group + c4 * G::KRUN, &r.kw[kk][gr * G::KRW]);
            lds_scale_row_stored<G::NGK, R::KGS>(stage + R::KS_OFF + key * R::KSROW, r.kfs[kk]);
            lds_scale_row_stored<G::NGK, R::KGS>(stage + R::KZ_OFF + key * R::KSROW, r.kfz[kk]);
            continue;
        }
        lds_codes<FK, G::KW>(stage + key * R::KPITCH + c4 * (G::KW * 4), stage + key * R::KPITCH, c4 * G::KT, r.kw[kk]);
        if constexpr (FK::has_scales) {
#pragma unroll
            for (int kg = 0; kg < G::KG; kg++) {
                const bool stored = R::DKS == DK || kgi + kg < R::KGS; /* else a pad group: zero scale */
                r.ks[kk][kg] = stored ? lds_scale<KSB>(stage + R::KS_OFF + key * R::KSROW + (kgi + kg) * KSB) : 0u;
                r.kz[kk][kg] = FK::has_biases && stored
                                   ? lds_scale<KSB>(stage + R::KZ_OFF + key * R::KSROW + (kgi + kg) * KSB)
                                   : 0u;
            }
        }
    }
    const int vgi = FV::has_scales && !G::FOLD ? gq * G::VT / FV::group : 0;
#pragma unroll
    for (int vv = 0; vv < 4; vv++) {
        const int key = 2 * c4 + (vv & 1) + 8 * (vv >> 1);
        const char *row = stage + R::V_OFF + key * R::VPITCH;
        if constexpr (G::FOLD) {
#pragma unroll
            for (int gr = 0; gr < G::NG; gr++)
                lds_codes<FV, G::RW>(row + gr * (FV::group * FV::bits / 8) + gq * (G::RW * 4), row,
                                     gr * FV::group + gq * G::RUN, &r.vw[vv][gr * G::RW]);
            lds_scale_row_stored<G::NG, R::VGS>(stage + R::VS_OFF + key * R::VSROW, r.vs[vv]);
            lds_scale_row_stored<G::NG, R::VGS>(stage + R::VZ_OFF + key * R::VSROW, r.vz[vv]);
        } else {
            lds_codes<FV, G::VW>(row + gq * (G::VW * 4), row, gq * G::VT, r.vw[vv]);
            if constexpr (FV::has_scales) {
#pragma unroll
                for (int vg = 0; vg < G::VGL; vg++) {
                    const int gi = vgi + vg;
                    const bool stored = R::DVS == DV || gi < R::VGS; /* else a pad group: zero scale */
                    r.vs[vv][vg] = stored ? lds_scale<VSB>(stage + R::VS_OFF + key * R::VSROW + gi * VSB) : 0u;
                    r.vz[vv][vg] =
                        FV::has_biases && stored ? lds_scale<VSB>(stage + R::VZ_OFF + key * R::VSROW + gi * VSB) : 0u;
                }
            }
        }
    }
}

/* Per-row state of a lane: rows nr * 8 + 2c4 + e (e = 0, 1) of the S^T / O^T fragments. */
template <int NR>
struct dec_rows {
    float m[NR][2], l[NR][2];
    bool valid[NR][2];
    int i[NR][2], h[NR][2], last[NR][2]; /* query position, q head, last visible local key */
};

/* Q K^T of one staged chunk in registers -> scores in log2 units, sc[nr][x]: key
 * gq + 8 * (x >> 1), row nr * 8 + 2c4 + (x & 1); masked per score unless `plain`. */
template <int DK, int DV, class FK, class FV, int NR>
__device__ __forceinline__ void dec_scores(const fast_params &p, int chunk, bool plain, int kend,
                                           const dec_chunk<DK, DV, FK, FV> &r, const uint32_t (&qb)[NR][DK / 16][2],
                                           const float (&kq)[NR][dec_geom<DK, DV, FK, FV>::NKACC + dec_geom<DK, DV, FK, FV>::NGK][2],
                                           const dec_rows<NR> &st, float (&sc)[NR][4], int gq, int64_t b) {
    using G = dec_geom<DK, DV, FK, FV>;
    constexpr int UK = FK::U;
    /* S^T = K Q^T: two accumulators (even / odd k steps) halve the dependent mma chain;
     * folded K has one per group, starting at -sum(offset * q) (kq[.][a]) */
    float acc[NR][G::NKACC][4];
#pragma unroll
    for (int nr = 0; nr < NR; nr++)
#pragma unroll
        for (int a = 0; a < G::NKACC; a++) {
            acc[nr][a][0] = acc[nr][a][2] = G::FOLDK ? kq[nr][a][0] : 0.0f;
            acc[nr][a][1] = acc[nr][a][3] = G::FOLDK ? kq[nr][a][1] : 0.0f;
        }
    if constexpr (G::FOLDK) {
#pragma unroll
        for (int wl = 0; wl < G::KW; wl++) {
            uint32_t k0[UK / 2], k1[UK / 2];
            FK::k_word_raw(r.kw[0][wl], k0);
            FK::k_word_raw(r.kw[1][wl], k1);
#pragma unroll
            for (int pp = 0; pp < UK / 2; pp += 2) {
                const int s = (wl * (UK / 2) + pp) / 2;
                const uint32_t a[4] = {k0[pp], k1[pp], k0[pp + 1], k1[pp + 1]};
#pragma unroll
                for (int nr = 0; nr < NR; nr++) mma16816(acc[nr][G::kacc(s)], a, qb[nr][s][0], qb[nr][s][1]);
            }
        }
        /* S = sum_g s_g acc_g + z_g Q_g, per key (x >> 1) and row (x & 1), in f32 */
        const bool bf16 = p.k.scale_dtype == QSDPA_DTYPE_BF16;
        float ks[2][G::NGK], kz[2][G::NGK];
#pragma unroll
        for (int kk = 0; kk < 2; kk++)
#pragma unroll
            for (int gr = 0; gr < G::NGK; gr++) {
                ks[kk][gr] = scale_f32(r.kfs[kk][gr / 2], gr & 1, bf16);
                kz[kk][gr] = scale_f32(r.kfz[kk][gr / 2], gr & 1, bf16);
            }
#pragma unroll
        for (int nr = 0; nr < NR; nr++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int kk = x >> 1, e = x & 1;
                float v = 0.0f;
#pragma unroll
                for (int a = 0; a < G::NKACC; a++) v = fmaf(ks[kk][G::NGK >= 2 ? a : 0], acc[nr][a][x], v);
#pragma unroll
                for (int gr = 0; gr < G::NGK; gr++) v = fmaf(kz[kk][gr], kq[nr][G::NKACC + gr][e], v);
                sc[nr][x] = v * p.scale_log2;
            }
    } else {
        half2 ksb[2][G::KG];
#pragma unroll
        for (int kk = 0; kk < 2; kk++)
#pragma unroll
            for (int kg = 0; kg < G::KG; kg++)
                ksb[kk][kg] = dec_scale_bias<FK>(r.ks[kk][kg], r.kz[kk][kg], false /* f16 by now */,
                                                 p.k.nv_factor);
        uint32_t prev0 = 0, prev1 = 0;
#pragma unroll
        for (int wl = 0; wl < G::KW; wl++) {
            const int kg = G::KG > 1 ? wl * UK / FK::group : 0;
            half2 k0[UK / 2 > 0 ? UK / 2 : 1], k1[UK / 2 > 0 ? UK / 2 : 1];
            FK::k_word(r.kw[0][wl], ksb[0][kg], k0);
            FK::k_word(r.kw[1][wl], ksb[1][kg], k1);
            if constexpr (UK / 2 >= 2) {
#pragma unroll
                for (int pp = 0; pp < UK / 2; pp += 2) {
                    const int s = (wl * (UK / 2) + pp) / 2;
                    const uint32_t a[4] = {h2u(k0[pp]), h2u(k1[pp]), h2u(k0[pp + 1]), h2u(k1[pp + 1])};
#pragma unroll
                    for (int nr = 0; nr < NR; nr++) mma16816(acc[nr][s & 1], a, qb[nr][s][0], qb[nr][s][1]);
                }
            } else if (wl & 1) { /* one pair per word (f16 rows): words wl - 1, wl form k step wl / 2 */
                const int s = wl / 2;
                const uint32_t a[4] = {prev0, prev1, h2u(k0[0]), h2u(k1[0])};
#pragma unroll
                for (int nr = 0; nr < NR; nr++) mma16816(acc[nr][s & 1], a, qb[nr][s][0], qb[nr][s][1]);
            } else {
                prev0 = h2u(k0[0]);
                prev1 = h2u(k1[0]);
            }
        }
#pragma unroll
        for (int nr = 0; nr < NR; nr++)
#pragma unroll
            for (int x = 0; x < 4; x++) sc[nr][x] = (acc[nr][0][x] + acc[nr][1][x]) * p.scale_log2;
    }
    if (!plain) {
#pragma unroll
        for (int nr = 0; nr < NR; nr++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int e = x & 1, j = chunk * DEC_CHUNK + gq + 8 * (x >> 1);
                float s = sc[nr][x];
                if (j >= kend) s = -INFINITY;
                else {
                    bool keep = true;
                    if (p.causal) keep = j <= st.last[nr][e] && !(p.window > 0 && j <= st.last[nr][e] - p.window);
                    if (keep && p.mask_kind != QSDPA_MASK_NONE && st.valid[nr][e]) {
                        int64_t at = b * p.ms[0] + st.h[nr][e] * p.ms[1] + st.i[nr][e] * p.ms[2] + (int64_t)j * p.ms[3];
                        if (p.mask_kind == QSDPA_MASK_BOOL) keep = ((const uint8_t *)p.mask)[at] != 0;
                        else s += qd_load_float(p.mask, p.mask_dtype, at) * 1.4426950408889634f;
                    }
                    if (!keep) s = p.masked_log2;
                }
                sc[nr][x] = s;
            }
    }

}

/* Online softmax over NC chunks' scores at once (sc[ch] -> P^T fragments pb[ch]); a
 * row's keys live in the 8 lanes of one c4. Lazy rescaling: the reference max moves
 * only when a score exceeds it by 2^8 (P <= 256 stays exact enough in f16, l and o are
 * f32), so most steps skip the rescale of o; the stored m is the reference actually
 * used. Whether any row of the warp moves is one vote on the lanes' own scores, so most
 * steps also skip the row max's three dependent shuffles (run 71: the longest stalls of
 * the loop). Returns whether o must be rescaled by corr. */
template <int NC, int NR>
__device__ __forceinline__ bool dec_softmax(float (&sc)[NC][NR][4], dec_rows<NR> &st, float (&corr)[NR][2],
                                            uint32_t (&pb)[NC][NR][2]) {
    float mx[NR][2];
    bool moves = false;
#pragma unroll
    for (int nr = 0; nr < NR; nr++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            mx[nr][e] = fmaxf(sc[0][nr][e], sc[0][nr][2 + e]);
#pragma unroll
            for (int ch = 1; ch < NC; ch++) mx[nr][e] = fmaxf(mx[nr][e], fmaxf(sc[ch][nr][e], sc[ch][nr][2 + e]));
            moves |= mx[nr][e] > st.m[nr][e] + 8.0f;
        }
    moves = __any_sync(0xffffffffu, moves);
#pragma unroll
    for (int nr = 0; nr < NR; nr++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float mn = st.m[nr][e];
            if (moves) {
                float m = mx[nr][e];
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
                mn = m > mn + 8.0f ? m : mn;
            }
            corr[nr][e] = mn == st.m[nr][e] ? 1.0f : fast_exp2(st.m[nr][e] - mn);
            st.m[nr][e] = mn;
            float l = st.l[nr][e] * corr[nr][e];
#pragma unroll
            for (int ch = 0; ch < NC; ch++) {
                const float p0 = mn == -INFINITY ? 0.0f : fast_exp2(sc[ch][nr][e] - mn);
                const float p1 = mn == -INFINITY ? 0.0f : fast_exp2(sc[ch][nr][2 + e] - mn);
                l += p0 + p1;
                sc[ch][nr][e] = p0;
                sc[ch][nr][2 + e] = p1;
            }
            st.l[nr][e] = l;
        }
        /* P^T fragments: [key gq][rows 2c4, 2c4+1] transposed to [row gq][keys 2c4, 2c4+1] */
#pragma unroll
        for (int ch = 0; ch < NC; ch++) {
            pb[ch][nr][0] = transpose8x8(h2u(__floats2half2_rn(sc[ch][nr][0], sc[ch][nr][1])));
            pb[ch][nr][1] = transpose8x8(h2u(__floats2half2_rn(sc[ch][nr][2], sc[ch][nr][3])));
        }
    }
    return moves;
}

/* o (and folded V's group sums) times the rows' corrections */
template <int NR, int MT, int NX>
__device__ __forceinline__ void dec_rescale(const float (&corr)[NR][2], float (&o)[NR][MT][4], float (&ex)[NR][NX][4],
                                            bool fold) {
#pragma unroll
    for (int nr = 0; nr < NR; nr++) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            o[nr][mt][0] *= corr[nr][0]; o[nr][mt][1] *= corr[nr][1];
            o[nr][mt][2] *= corr[nr][0]; o[nr][mt][3] *= corr[nr][1];
        }
        if (fold) {
#pragma unroll
            for (int x = 0; x < NX; x++) {
                ex[nr][x][0] *= corr[nr][0]; ex[nr][x][1] *= corr[nr][1];
                ex[nr][x][2] *= corr[nr][0]; ex[nr][x][3] *= corr[nr][1];
            }
        }
    }
}

/* O^T += V^T P^T for one chunk in registers and its P^T fragments */
template <int DK, int DV, class FK, class FV, int NR>
__device__ __forceinline__ void dec_pv(const fast_params &p, const dec_chunk<DK, DV, FK, FV> &r,
                                       const uint32_t (&pb)[NR][2], float (&o)[NR][DV / 16][4],
                                       float (&ex)[NR][dec_geom<DK, DV, FK, FV>::NG + 1][4], int gq) {
    using G = dec_geom<DK, DV, FK, FV>;
    constexpr int UV = FV::U;
    if constexpr (G::FOLD) {
        /* O'^T += X^T (P s_g)^T per group; ex[g] += sum(P s_g) (A row 0 all ones), ex[NG] row g += sum(P z_g) */
        const bool bf16 = false; /* dec_scales_to_f16 converted bf16 scales */
        const uint32_t ones = gq == 0 ? 0x3C003C00u : 0u;
        const uint32_t a_one[4] = {ones, 0u, ones, 0u};
        uint32_t za0 = 0u, za2 = 0u;
#pragma unroll
        for (int gr = 0; gr < G::NG; gr++) {
            const int w = G::NG > 1 ? gr / 2 : 0, hi = G::NG > 1 ? gr % 2 : 0;
            const uint32_t z01 = pack_scales(r.vz[0][w], r.vz[1][w], hi, bf16), z89 = pack_scales(r.vz[2][w], r.vz[3][w], hi, bf16);
            za0 = gq == gr ? z01 : za0;
            za2 = gq == gr ? z89 : za2;
        }
        const uint32_t a_z[4] = {za0, 0u, za2, 0u};
#pragma unroll
        for (int nr = 0; nr < NR; nr++) mma16816(ex[nr][G::NG], a_z, pb[nr][0], pb[nr][1]);
#pragma unroll
        for (int gr = 0; gr < G::NG; gr++) {
            const int sw = G::NG > 1 ? gr / 2 : 0, shi = G::NG > 1 ? gr % 2 : 0;
            const uint32_t s01 = pack_scales(r.vs[0][sw], r.vs[1][sw], shi, bf16);
            const uint32_t s89 = pack_scales(r.vs[2][sw], r.vs[3][sw], shi, bf16);
            uint32_t ps[NR][2];
#pragma unroll
            for (int nr = 0; nr < NR; nr++) {
                ps[nr][0] = h2u(__hmul2(u2h(pb[nr][0]), u2h(s01)));
                ps[nr][1] = h2u(__hmul2(u2h(pb[nr][1]), u2h(s89)));
                mma16816(ex[nr][gr], a_one, ps[nr][0], ps[nr][1]);
            }
#pragma unroll
            for (int w = 0; w < G::RW; w++) {
                uint32_t x01[UV], x89[UV];
                fold_words<FV::bits>(r.vw[0][gr * G::RW + w], r.vw[1][gr * G::RW + w], x01);
                fold_words<FV::bits>(r.vw[2][gr * G::RW + w], r.vw[3][gr * G::RW + w], x89);
#pragma unroll
                for (int t = 0; t < G::TPW; t++) {
                    const int mt = (gr * G::RW + w) * G::TPW + t;
                    const int e0 = fold_elem<FV::bits>(t, 0), e1 = fold_elem<FV::bits>(t, 1);
                    const uint32_t a[4] = {x01[e0], x01[e1], x89[e0], x89[e1]};
#pragma unroll
                    for (int nr = 0; nr < NR; nr++) mma16816(o[nr][mt], a, ps[nr][0], ps[nr][1]);
                }
            }
        }
    } else {
        /* O^T += V^T P^T: A rows are this lane's dims (element 2mt: row gq, 2mt + 1: row gq + 8) */
        half2 s01[G::VGL], z01[G::VGL], s23[G::VGL], z23[G::VGL];
#pragma unroll
        for (int vg = 0; vg < G::VGL; vg++) {
            s01[vg] = s23[vg] = __floats2half2_rn(1.0f, 1.0f);
            z01[vg] = z23[vg] = __floats2half2_rn(0.0f, 0.0f);
            if constexpr (FV::has_scales) {
                half2 sb[4];
#pragma unroll
                for (int vv = 0; vv < 4; vv++)
                    sb[vv] = dec_scale_bias<FV>(r.vs[vv][vg], r.vz[vv][vg], false /* f16 by now */, p.v.nv_factor);
                s01[vg] = __lows2half2(sb[0], sb[1]); z01[vg] = __highs2half2(sb[0], sb[1]);
                s23[vg] = __lows2half2(sb[2], sb[3]); z23[vg] = __highs2half2(sb[2], sb[3]);
            }
        }
#pragma unroll
        for (int w = 0; w < G::VW; w++) {
            const int vg = G::VGL > 1 ? w * UV / FV::group : 0; /* the group of word w's dims */
            half2 va[UV], vb[UV];
            FV::v_words(r.vw[0][w], r.vw[1][w], s01[vg], z01[vg], va);
            FV::v_words(r.vw[2][w], r.vw[3][w], s23[vg], z23[vg], vb);
#pragma unroll
            for (int e = 0; e < UV; e += 2) {
                const int mt = (w * UV + e) / 2;
                const uint32_t a[4] = {h2u(va[e]), h2u(va[e + 1]), h2u(vb[e]), h2u(vb[e + 1])};
#pragma unroll
                for (int nr = 0; nr < NR; nr++) mma16816(o[nr][mt], a, pb[nr][0], pb[nr][1]);
            }
        }
    }
}

/* One chunk's whole step: scores, softmax, P V. */
template <int DK, int DV, class FK, class FV, int NR>
__device__ __forceinline__ void dec_step(const fast_params &p, int chunk, bool plain, int kend,
                                         const dec_chunk<DK, DV, FK, FV> &r, const uint32_t (&qb)[NR][DK / 16][2],
                                         const float (&kq)[NR][dec_geom<DK, DV, FK, FV>::NKACC + dec_geom<DK, DV, FK, FV>::NGK][2],
                                         dec_rows<NR> &st, float (&o)[NR][DV / 16][4],
                                         float (&ex)[NR][dec_geom<DK, DV, FK, FV>::NG + 1][4], int gq, int64_t b) {
    using G = dec_geom<DK, DV, FK, FV>;
    float sc[1][NR][4], corr[NR][2];
    uint32_t pb[1][NR][2];
    dec_scores<DK, DV, FK, FV, NR>(p, chunk, plain, kend, r, qb, kq, st, sc[0], gq, b);
    if (dec_softmax<1, NR>(sc, st, corr, pb)) dec_rescale<NR, G::MT, G::NG + 1>(corr, o, ex, G::FOLD);
    dec_pv<DK, DV, FK, FV, NR>(p, r, pb[0], o, ex, gq);
}

/* Two chunks a step (the 8-row kernel over folded affine K and V with small stages:
 * 4-bit rows): their scores, then one softmax over both, then both P V. A warp's
 * instruction stream was a chain of dependent 4-6-cycle steps at 3 warps per scheduler
 * (run 72: issue ~0.6 per cycle whatever the instruction count); two independent chunks
 * give each phase two chains, and the softmax's vote and bookkeeping serve 32 keys. It
 * costs the registers of a second chunk (a4g64 / a4g128 D128: 206 / 201, so 2 CTAs per
 * SM instead of 3; D 64: 163). Run 74: affine 4-bit 128K and B=8 -3%;
 * mxfp4 / nvfp4 even or +2%, so they keep one chunk a step. */
template <int DK, int DV, class FK, class FV, int NR>
struct dec_pairing {
    using G = dec_geom<DK, DV, FK, FV>;
    static constexpr bool PAIR = QSDPA_CUDA_DEC_PAIR && NR == 1 && G::FOLD && G::FOLDK &&
                                 dec_stage<DK, DV, FK, FV>::STAGES >= 4;
};

/* Dynamic shared memory of a decode CTA: q rows, then the warps' rings, which the
 * merge buffer (o, m, l of every warp) reuses after the loop. */
template <int DK, int DV, class FK, class FV, int NR>
struct dec_smem {
    static constexpr int ROWS = 8 * NR, OS = DV + 4, QS = DK + 8; /* padded rows: fewer bank conflicts */
    static constexpr int Q_BYTES = (ROWS * QS * 2 + 15) / 16 * 16;
    static constexpr int MO_BYTES = DEC_WARPS * ROWS * OS * 4, MML_BYTES = DEC_WARPS * ROWS * 4;
    static constexpr int RING_BYTES = DEC_WARPS * dec_stage<DK, DV, FK, FV>::STAGES * dec_stage<DK, DV, FK, FV>::BYTES;
    static constexpr int MERGE_BYTES = MO_BYTES + 2 * MML_BYTES;
    static constexpr int BYTES = Q_BYTES + (RING_BYTES > MERGE_BYTES ? RING_BYTES : MERGE_BYTES);
};

/* The merge of all splits' partials of folded rows [row0, row0 + rows) of bh, by one CTA: a thread
 * per (row, 4 dims), the splits in order, 8 of them loaded before any is used (one round trip to L2
 * per 8; the host fuses only calls of at most 8 splits). The loads bypass L1 (ld.global.cg): other
 * SMs wrote these partials during this launch. */
template <int DV>
__device__ __forceinline__ void dec_merge_rows(const fast_params &p, int64_t bh, int row0, int rows) {
    static_assert(DV % 4 == 0, "whole float4 runs of a partial row");
    constexpr int SB = 8;
    const int Q = (p.dv_out + 3) / 4;                   /* runs stored: a narrower cache's Dv (pad_from) */
    const int64_t sstride = (int64_t)gridDim.z * p.rows; /* partial rows between two splits */
    for (int item = threadIdx.x; item < rows * Q; item += DEC_WARPS * 32) {
        const int64_t f = row0 + item / Q, prow0 = bh * p.rows + f;
        const int d0 = (item % Q) * 4;
        float M = -INFINITY, L = 0.0f, o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int s0 = 0; s0 < p.nsplit; s0 += SB) {
            float ms[SB], ls[SB], os[SB][4];
#pragma unroll
            for (int k = 0; k < SB; k++) {
                const int64_t prow = (s0 + k) * sstride + prow0;
                const bool ok = s0 + k < p.nsplit;
                const float2 ml = ok ? __ldcg((const float2 *)(p.part_ml + prow * 2)) : make_float2(-INFINITY, 0.0f);
                const float4 ov = ok ? __ldcg((const float4 *)(p.part_o + prow * DV + d0)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                ms[k] = ml.x, ls[k] = ml.y;
                os[k][0] = ov.x, os[k][1] = ov.y, os[k][2] = ov.z, os[k][3] = ov.w;
            }
            merge_batch<4, SB>(M, L, o, ms, ls, os);
        }
        merge_store<4>(p, bh, f, M, L, o, d0, min(4, p.dv_out - d0), d0 == 0);
    }
}

/* CTAs per SM the kernel's registers are cut for: 2 where the 3-CTA budget (168) spills (16-row blocks, past D
 * 128, paired chunks, codes widened as read) */
template <int DK, int DV, class FK, class FV, int NR>
constexpr int dec_min_blocks() {
    const bool widened = stored_bits_of<FK>::value != FK::bits || stored_bits_of<FV>::value != FV::bits;
    return NR == 2 || DK > 128 || DV > 128 || dec_pairing<DK, DV, FK, FV, NR>::PAIR || widened ? 2 : QSDPA_CUDA_DEC_MIN_BLOCKS;
}

template <int DK, int DV, class FK, class FV, int NR>
__global__ void __launch_bounds__(DEC_WARPS * 32, dec_min_blocks<DK, DV, FK, FV, NR>())
    fast_decode(const fast_params p) {
    using G = dec_geom<DK, DV, FK, FV>;
    using R = dec_stage<DK, DV, FK, FV>;
    using S = dec_smem<DK, DV, FK, FV, NR>;
    constexpr int ROWS = S::ROWS, OS = S::OS, QS = S::QS;
    extern __shared__ __align__(16) char dsm[];
    __half(*qsm)[QS] = (__half(*)[QS])dsm;                              /* q rows as f16 */
    float(*merge_o)[ROWS][OS] = (float(*)[ROWS][OS])(dsm + S::Q_BYTES); /* after the loop, over the rings */
    float(*merge_m)[ROWS] = (float(*)[ROWS])(dsm + S::Q_BYTES + S::MO_BYTES);
    float(*merge_l)[ROWS] = (float(*)[ROWS])(dsm + S::Q_BYTES + S::MO_BYTES + S::MML_BYTES);

#if QSDPA_CUDA_DEC_TRACE
    long long trace_c[6] = {};
    unsigned long long trace_g[6] = {};
    bool trace_first = true;
#endif
    DEC_TRACE(0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = lane >> 2, c4 = lane & 3;
    const int split = blockIdx.y;
    const int64_t bh = blockIdx.z, b = bh / p.hkv, g = bh % p.hkv;
    /* this CTA's folded rows: [row0, row0 + ROWS) of p.rows (more than ROWS rows take
     * several row blocks; they stream the same K/V at the same time, mostly from L2) */
    const int row0 = blockIdx.x * ROWS;
    const int64_t shift = p.key_total - p.lq - p.key_offset; /* row at position i sees local keys <= i + shift */

    /* key range of the split, cut to what the rows can see (causal / window) */
    int64_t lo = 0, hi = p.lk - 1;
    if (p.causal) {
        hi = min(hi, (p.rows - 1) / p.ratio + shift);
        if (p.window > 0) lo = max((int64_t)0, shift - p.window + 1);
    }
    const int64_t split_lo = (int64_t)split * p.tiles_per_split * DEC_TILE;
    const int kend = (int)min(min(p.lk, split_lo + (int64_t)p.tiles_per_split * DEC_TILE), hi + 1);
    const int kbeg = (int)max(split_lo, lo);
    const int c_first = kbeg / DEC_CHUNK, c_end = kend > kbeg ? (kend + DEC_CHUNK - 1) / DEC_CHUNK : c_first;
    const int last_lo = (int)shift, last_hi = (int)((p.rows - 1) / p.ratio + shift);

    constexpr bool PAIR = dec_pairing<DK, DV, FK, FV, NR>::PAIR;
    constexpr int PRE = PAIR ? R::STAGES : R::STAGES - 1; /* chunks issued ahead of the loop */
    char *ring = dsm + S::Q_BYTES + warp * R::STAGES * R::BYTES;
    int c = c_first + warp; /* this warp's chunks: c, c + DEC_WARPS, ... */
    dec_copier<DK, DV, FK, FV> copier(p, b, g, c, lane);
    /* launched with PDL on sm_90: the first chunks go to L2 while the previous kernel ends */
#pragma unroll
    for (int s = 0; s < PRE; s++)
        if (s < p.dec_prefetch && c + s * DEC_WARPS < c_end) copier.prefetch(p, c, s, lane);
    pdl_wait();
    DEC_TRACE(1);

    /* q rows -> shared memory as f16, then each lane reads its contiguous run(s) of Dk/4
     * values with 16-byte loads. Warp w stages rows w, w + DEC_WARPS, ...: a row is
     * contiguous (the API's last-dim rule), so where it starts 8-byte aligned the lanes
     * read four f16/bf16 values at once; other rows go value by value, any dtype.
     * The aligned rows' loads go out before the ring's: at 32K the ring's first requests
     * are ~7 MB over all SMs, and q queued behind them held the prologue ~2 us (run 18). */
    constexpr int QRW = ROWS / DEC_WARPS, QPR = (DK + 127) / 128; /* rows per warp, loads per lane and row */
    static_assert(ROWS % DEC_WARPS == 0, "whole q rows per warp");
    const bool q_halves = p.q_dtype == QSDPA_DTYPE_F16 || p.q_dtype == QSDPA_DTYPE_BF16;
    const int ratio = (int)p.ratio; /* <= DEC_MAX_ROWS folded rows */
    /* element offset of folded row f's q: query row f / ratio of head g * ratio + f % ratio */
    auto q_offset = [&](int f) {
        return b * p.qs[0] + (g * p.ratio + f % ratio) * p.qs[1] + (int64_t)(f / ratio) * p.qs[2];
    };
    uint2 qv[QRW][QPR];
    bool qvec[QRW];
#pragma unroll
    for (int r = 0; r < QRW; r++) {
        const int f = row0 + warp + r * DEC_WARPS;
        const char *row = (const char *)p.q + q_offset(f) * 2;
        qvec[r] = f < p.rows && q_halves && ((uintptr_t)row & 7) == 0;
#pragma unroll
        for (int i = 0; i < QPR; i++) {
            const int d = 4 * lane + 128 * i;
            qv[r][i] = qvec[r] && d < R::DKS ? *(const uint2 *)(row + 2 * d) : make_uint2(0u, 0u);
        }
    }

    /* the ring's first chunks stream in while q is staged */
#pragma unroll
    for (int s = 0; s < PRE; s++) {
        if (c + s * DEC_WARPS < c_end) copier.issue(p, c + s * DEC_WARPS, ring + s * R::BYTES, lane);
        cp_async_commit();
    }

#pragma unroll
    for (int r = 0; r < QRW; r++) {
        const int fl = warp + r * DEC_WARPS, f = row0 + fl;
        __half *dst = qsm[fl];
        if (f >= p.rows) {
            for (int d = lane; d < DK; d += 32) dst[d] = __float2half_rn(0.0f);
        } else if (qvec[r]) {
#pragma unroll
            for (int i = 0; i < QPR; i++) {
                const int d = 4 * lane + 128 * i;
                uint2 x = qv[r][i];
                if (p.q_dtype == QSDPA_DTYPE_BF16) x = make_uint2(bf16x2_to_f16x2(x.x), bf16x2_to_f16x2(x.y));
                if (d < DK) *(uint2 *)&dst[d] = x;
            }
        } else {
            const int64_t off = q_offset(f);
            for (int d = lane; d < DK; d += 32) /* past a narrower cache's Dk: zeros */
                dst[d] = __float2half_rn(d < R::DKS ? qd_load_float(p.q, p.q_dtype, off + d) : 0.0f);
        }
    }
    __syncthreads();
    DEC_TRACE(2);

    /* Q^T fragments in the K lanes' dim order: k step s takes pairs 2s (b0) and 2s + 1 (b1) */
    dec_rows<NR> st;
    uint32_t qb[NR][G::KSTEPS][2];
#pragma unroll
    for (int nr = 0; nr < NR; nr++) {
        uint32_t qw[G::KT / 2]; /* this lane's runs of row nr * 8 + gq, two halves per word */
#pragma unroll
        for (int gr = 0; gr < G::KT / G::KRUN; gr++) /* folded K: one run per group */
            lds_words<G::KRUN / 2>((const char *)&qsm[nr * 8 + gq][gr * FK::group + c4 * G::KRUN],
                                   &qw[gr * (G::KRUN / 2)]);
        constexpr int PPW = FK::U / 2 > 0 ? FK::U / 2 : 1; /* pairs per K word */
#pragma unroll
        for (int s = 0; s < G::KSTEPS; s++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int P = 2 * s + hf, wl = P / PPW, pp = P % PPW;
                const int t0 = wl * FK::U + FK::k_order(pp, 0), t1 = wl * FK::U + FK::k_order(pp, 1);
                /* halves t0 and t1 of the run: byte pairs of words t0 / 2 and t1 / 2 */
                qb[nr][s][hf] = prmt(qw[t0 / 2], qw[t1 / 2], (t0 & 1 ? 0x0032u : 0x0010u) | (t1 & 1 ? 0x7600u : 0x5400u));
            }
#pragma unroll
        for (int e = 0; e < 2; e++) { /* the accumulator's rows: 2c4 + e */
            const int64_t fr = row0 + nr * 8 + 2 * c4 + e;
            st.valid[nr][e] = fr < p.rows;
            st.i[nr][e] = st.valid[nr][e] ? (int)(fr / p.ratio) : 0;
            st.h[nr][e] = (int)(g * p.ratio + (st.valid[nr][e] ? fr % p.ratio : 0));
            st.last[nr][e] = (int)(st.i[nr][e] + shift);
            st.m[nr][e] = -INFINITY;
            st.l[nr][e] = 0.0f;
        }
    }
    /* Folded K: per row (2c4 + e), kq[a] = -sum(offset * q) over accumulator a's k steps
     * (its start value) and kq[NKACC + g] = sum(q) over group g, from mma with the
     * offsets alone (k_word_raw(0)) and with ones as the A operand */
    float kq[NR][G::NKACC + G::NGK][2];
    if constexpr (G::FOLDK) {
        uint32_t off[FK::U / 2];
        FK::k_word_raw(0u, off);
#pragma unroll
        for (int nr = 0; nr < NR; nr++) {
            float qo[G::NKACC][4] = {}, qs[G::NGK][4] = {};
#pragma unroll
            for (int s = 0; s < G::KSTEPS; s++) {
                const int pp = (2 * s) % (FK::U / 2);
                const uint32_t a_off[4] = {off[pp], off[pp], off[pp + 1], off[pp + 1]};
                const uint32_t a_one[4] = {0x3C003C00u, 0x3C003C00u, 0x3C003C00u, 0x3C003C00u};
                mma16816(qo[G::kacc(s)], a_off, qb[nr][s][0], qb[nr][s][1]);
                mma16816(qs[s / (G::KSTEPS / G::NGK)], a_one, qb[nr][s][0], qb[nr][s][1]);
            }
#pragma unroll
            for (int e = 0; e < 2; e++) {
#pragma unroll
                for (int a = 0; a < G::NKACC; a++) kq[nr][a][e] = -qo[a][e];
#pragma unroll
                for (int gr = 0; gr < G::NGK; gr++) kq[nr][G::NKACC + gr][e] = qs[gr][e];
            }
        }
    }
    float o[NR][G::MT][4], ex[NR][G::NG + 1][4];
#pragma unroll
    for (int nr = 0; nr < NR; nr++) {
#pragma unroll
        for (int mt = 0; mt < G::MT; mt++) o[nr][mt][0] = o[nr][mt][1] = o[nr][mt][2] = o[nr][mt][3] = 0.0f;
#pragma unroll
        for (int x = 0; x <= G::NG; x++) ex[nr][x][0] = ex[nr][x][1] = ex[nr][x][2] = ex[nr][x][3] = 0.0f;
    }

    /* chunks [plain_lo, plain_hi) need no per-score checks: no mask, inside the split's
     * range, every key visible to every row (causal: keys <= last_lo; window: keys past
     * last_hi - window) */
    int plain_lo = (kbeg + DEC_CHUNK - 1) / DEC_CHUNK, plain_hi = kend / DEC_CHUNK;
    if (p.causal) {
        plain_hi = min(plain_hi, (last_lo + 1) / DEC_CHUNK);
        if (p.window > 0) plain_lo = max(plain_lo, (int)((last_hi - p.window) / DEC_CHUNK + 1));
    }
    if (p.mask_kind != QSDPA_MASK_NONE) plain_hi = plain_lo;
    const bool k_bf16 = FK::mode == QSDPA_MODE_AFFINE && p.k.scale_dtype == QSDPA_DTYPE_BF16;
    const bool v_bf16 = FV::mode == QSDPA_MODE_AFFINE && p.v.scale_dtype == QSDPA_DTYPE_BF16;
    /* per chunk: wait for its stage, read the lane's fragments, refill the slot just read
     * with the chunk PRE ahead, then compute from registers */
    int it = 0;
    if constexpr (PAIR) {
        for (; c + DEC_WARPS < c_end; c += 2 * DEC_WARPS, it += 2) {
            cp_async_wait<R::STAGES - 2>(); /* the oldest two stages: chunks c, c + DEC_WARPS */
            __syncwarp();
#if QSDPA_CUDA_DEC_TRACE
            if (trace_first) DEC_TRACE(3), trace_first = false;
#endif
            dec_chunk<DK, DV, FK, FV> ra, rb;
            dec_read<DK, DV, FK, FV>(ring + (it % R::STAGES) * R::BYTES, gq, c4, ra);
            dec_read<DK, DV, FK, FV>(ring + ((it + 1) % R::STAGES) * R::BYTES, gq, c4, rb);
            if constexpr (FK::mode == QSDPA_MODE_AFFINE || FV::mode == QSDPA_MODE_AFFINE) {
                dec_scales_to_f16<dec_chunk<DK, DV, FK, FV>, G>(ra, k_bf16, v_bf16);
                dec_scales_to_f16<dec_chunk<DK, DV, FK, FV>, G>(rb, k_bf16, v_bf16);
            }
            __syncwarp();
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const int cn = c + (R::STAGES + k) * DEC_WARPS;
                if (cn < c_end) copier.issue(p, cn, ring + ((it + k) % R::STAGES) * R::BYTES, lane);
                cp_async_commit();
            }
            const int cb = c + DEC_WARPS;
            float sc[2][NR][4], corr[NR][2];
            uint32_t pb[2][NR][2];
            dec_scores<DK, DV, FK, FV, NR>(p, c, c >= plain_lo && c < plain_hi, kend, ra, qb, kq, st, sc[0], gq, b);
            dec_scores<DK, DV, FK, FV, NR>(p, cb, cb >= plain_lo && cb < plain_hi, kend, rb, qb, kq, st, sc[1], gq, b);
            if (dec_softmax<2, NR>(sc, st, corr, pb)) dec_rescale<NR, G::MT, G::NG + 1>(corr, o, ex, G::FOLD);
            dec_pv<DK, DV, FK, FV, NR>(p, ra, pb[0], o, ex, gq);
            dec_pv<DK, DV, FK, FV, NR>(p, rb, pb[1], o, ex, gq);
        }
    }
    /* one chunk a step; with pairs, the warp's last chunk when its count is odd (its stage
     * is the oldest pending one, every later group empty) */
    for (; c < c_end; c += DEC_WARPS, it++) {
        cp_async_wait<R::STAGES - 2>();
        __syncwarp();
#if QSDPA_CUDA_DEC_TRACE
        if (trace_first) DEC_TRACE(3), trace_first = false;
#endif
        dec_chunk<DK, DV, FK, FV> r;
        dec_read<DK, DV, FK, FV>(ring + (it % R::STAGES) * R::BYTES, gq, c4, r);
        if constexpr (FK::mode == QSDPA_MODE_AFFINE || FV::mode == QSDPA_MODE_AFFINE)
            dec_scales_to_f16<dec_chunk<DK, DV, FK, FV>, G>(r, k_bf16, v_bf16);
        __syncwarp();
        const int cn = c + PRE * DEC_WARPS;
        if (!PAIR && cn < c_end) copier.issue(p, cn, ring + ((it + PRE) % R::STAGES) * R::BYTES, lane);
        cp_async_commit();
        dec_step<DK, DV, FK, FV, NR>(p, c, c >= plain_lo && c < plain_hi, kend, r, qb, kq, st, o, ex, gq, b);
    }
    cp_async_wait<0>();
    __syncthreads(); /* the merge buffer below reuses the rings */
    DEC_TRACE(4);
    pdl_trigger();

    /* l: sum over the 8 lanes of each c4; then the four warps merge through shared memory */
#pragma unroll
    for (int nr = 0; nr < NR; nr++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float l = st.l[nr][e];
            l += __shfl_xor_sync(0xffffffffu, l, 4);
            l += __shfl_xor_sync(0xffffffffu, l, 8);
            l += __shfl_xor_sync(0xffffffffu, l, 16);
            st.l[nr][e] = l;
        }
#pragma unroll
    for (int nr = 0; nr < NR; nr++) {
        const int r0 = nr * 8 + 2 * c4;
        if constexpr (G::FOLD) {
            /* o = o' - offset * sum(P s_g) + sum(P z_g), rows 2c4 + e; then the run's dims */
#pragma unroll
            for (int gr = 0; gr < G::NG; gr++) {
                float s1[2], z1[2];
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    s1[e] = __shfl_sync(0xffffffffu, ex[nr][gr][e], c4);
                    z1[e] = __shfl_sync(0xffffffffu, ex[nr][G::NG][e], gr * 4 + c4);
                }
#pragma unroll
                for (int w = 0; w < G::RW; w++)
#pragma unroll
                    for (int t = 0; t < G::TPW; t++) {
                        const int mt = (gr * G::RW + w) * G::TPW + t;
                        const float off = fold_offset<FV::bits>(t);
                        const int d0 = gr * FV::group + gq * G::RUN + w * FV::U;
                        const int da = d0 + fold_elem<FV::bits>(t, 0), db = d0 + fold_elem<FV::bits>(t, 1);
                        merge_o[warp][r0][da] = o[nr][mt][0] - off * s1[0] + z1[0];
                        merge_o[warp][r0 + 1][da] = o[nr][mt][1] - off * s1[1] + z1[1];
                        merge_o[warp][r0][db] = o[nr][mt][2] - off * s1[0] + z1[0];
                        merge_o[warp][r0 + 1][db] = o[nr][mt][3] - off * s1[1] + z1[1];
                    }
            }
        } else {
#pragma unroll
            for (int mt = 0; mt < G::MT; mt++) {
                const int d = gq * G::VT + 2 * mt; /* elements 2mt (c0, c1) and 2mt + 1 (c2, c3) */
                *(float2 *)&merge_o[warp][r0][d] = make_float2(o[nr][mt][0], o[nr][mt][2]);
                *(float2 *)&merge_o[warp][r0 + 1][d] = make_float2(o[nr][mt][1], o[nr][mt][3]);
            }
        }
        if (gq == 0) {
            merge_m[warp][r0] = st.m[nr][0]; merge_m[warp][r0 + 1] = st.m[nr][1];
            merge_l[warp][r0] = st.l[nr][0]; merge_l[warp][r0 + 1] = st.l[nr][1];
        }
    }
    __syncthreads();
    const int rows = (int)min((int64_t)ROWS, p.rows - row0); /* this block's real rows */
    for (int idx = threadIdx.x; idx < rows * DV; idx += DEC_WARPS * 32) {
        const int f = idx / DV, d = idx % DV;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, merge_m[w][f]);
        float Ls = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            const float cf = merge_m[w][f] == -INFINITY ? 0.0f : fast_exp2(merge_m[w][f] - M);
            Ls += merge_l[w][f] * cf;
            O += merge_o[w][f][d] * cf;
        }
        const int64_t prow = ((int64_t)split * gridDim.z + bh) * p.rows + row0 + f; /* [split][bh][row] */
        p.part_o[prow * DV + d] = O * p.v_factor;
        if (d == 0) { p.part_ml[prow * 2] = M; p.part_ml[prow * 2 + 1] = Ls; }
    }
    /* The merge in this launch (p.arrivals, calls of few splits over many heads): the CTA that writes
     * the last partial of its (b, head, row block) merges them all, so the call is one launch, not two
     * (a launch costs the host ~3.5 us on the H100's machine; bench/NOTES.md v43). Each thread's partials
     * are fenced before the CTA's arrival is counted, and the last CTA fences before it reads. */
    if (p.arrivals) {
        __threadfence();
        __syncthreads();
        int *last = (int *)dsm; /* the q rows' space, unused since the loop */
        if (threadIdx.x == 0) {
            unsigned *slot = p.arrivals + bh * gridDim.x + blockIdx.x;
            const bool is_last = atomicAdd(slot, 1u) == gridDim.y - 1;
            if (is_last) *slot = 0u; /* every CTA of the slot has arrived: zero again for the next call */
            *last = is_last;
        }
        __syncthreads();
        if (*last) {
            __threadfence();
            dec_merge_rows<DV>(p, bh, row0, rows);
        }
    }
#if QSDPA_CUDA_DEC_TRACE
    __syncthreads(); /* every partial written */
    DEC_TRACE(5);
    const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (p.trace && threadIdx.x == 0 && cta < TRACE_CTAS) {
        unsigned long long *t = p.trace + (size_t)cta * TRACE_DEC_WORDS;
        unsigned smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
#pragma unroll
        for (int i = 0; i < 6; i++) t[i] = trace_g[i], t[6 + i] = (unsigned long long)(trace_c[i] - trace_c[0]);
        t[12] = smid;
        t[13] = (unsigned long long)((c_end - c_first + DEC_WARPS - 1) / DEC_WARPS);
        t[14] = blockIdx.y;
        t[15] = blockIdx.z;
    }
#endif
}

} // namespace qfast

#endif
