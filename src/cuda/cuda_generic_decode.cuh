/* The generic row's decode kernel (included by cuda_generic.cu): short queries (at most 32
 * folded rows) over caches the tensor-core rows do not take, above all f32 q, whose SPEC §4
 * tolerance (2e-5) needs f32 products everywhere.
 *
 * Why a second kernel: generic_attention decodes every tile into shared memory as f32 through
 * run-time format switches and meets at four barriers per tile; at D 128, 4-bit, f32 q, 32K
 * keys it issued ~450 warp instructions per (key, KV head) and took 253 us, 12x the f16 tensor
 * core row (bench/NOTES.md runs 146-147). This kernel took it to 121 us (2.1x; 128K 876 -> 408,
 * 2K 42 -> 34, run 149), and v44.3 (folded affine codes, V's groups found once per block) to 87 us on
 * an H200 (111 before; 128K 389 -> 301, 8-bit 152 -> 119, runs 260-262). ncu (run 260): issue slots
 * half busy and half waiting (fixed latency, instruction fetch, loads), so both fewer instructions
 * per key and staging step i + 1's K and V rows with cp.async while step i computes would help.
 * One warp is a block and works alone:
 *   scores  lane t scores key t of a 32-key step for every row, reading its K row straight
 *           from global memory (two 16-byte loads a pass where rows allow) and q from shared memory
 *           (the same address in every lane: a broadcast);
 *   softmax the rows' online softmax across the warp by shuffles (as generic_attention's);
 *   P V     lanes split V by words: with at most 32 words a row, 32 / words keys per load
 *           instruction, each lane one word of its key; with more, a lane takes words
 *           lane, lane + 32, ... of every key; a batch of keys' words, scales and biases is
 *           loaded before any is used. The lanes that hold the same dims for different keys
 *           are summed by shuffles at the end.
 * Values are dequantized as qd_element (SPEC §2: f32 multiply, then add), products and sums in
 * f32, except where K and V are both affine (FOLD): there a code enters the multiply-adds as an
 * exact integer times a power of two and the group's scale and bias apply to the sums (the
 * same arithmetic reassociated, still f32). Codes per word (KPER, VPER) and FOLD are template
 * arguments, the mode within a width (affine or fp) a warp-uniform branch, so one unfolded
 * instantiation serves every format of that width. The partials are generic_attention's
 * ([split][row][4 + Dv], natural-log units), so generic_combine finishes both. */

/* the (K, V) code widths with a decode kernel: values per 32-bit word of K and of V
 * (8: 4-bit codes, 4: 8-bit, 2: f16/bf16 rows, 1: f32 rows) */
#define GEN_DECODE_WIDTHS(X) X(8, 8) X(4, 4) X(2, 2) X(1, 1) X(4, 8)

constexpr int GEN_DECODE_VPL = 8; /* V values a lane accumulates per row (Dv <= 256) */
constexpr int GEN_DECODE_KGROUPS = 8; /* K groups a row has at most (Dk <= 256, groups of 32 and more) */

/* Values per 32-bit word of t's codes (qd_codes_per_item) where the decode kernel takes t:
 * plain rows, affine 4 or 8 bits, mxfp4, nvfp4, mxfp8; else 0. */
static inline int gen_decode_per_word(const qd_qtensor *t) {
    const bool taken = t->mode == QSDPA_MODE_PLAIN || t->mode == QSDPA_MODE_MXFP4 || t->mode == QSDPA_MODE_NVFP4 ||
                       t->mode == QSDPA_MODE_MXFP8 || (t->mode == QSDPA_MODE_AFFINE && (t->bits == 4 || t->bits == 8));
    return taken ? qd_codes_per_item(t) : 0;
}

/* Folded rows a decode block takes: 4 where the call has no more, else 8. */
static inline int gen_decode_rows(int64_t folded) { return folded <= 4 ? 4 : 8; }

/* The PER values of word w of t (plain rows, or codes of one group with scale s, bias z). */
template <int PER>
__device__ __forceinline__ void gd_word(const qd_qtensor &t, uint32_t w, float s, float z, float (&v)[PER]) {
    if constexpr (PER == 1) {
        v[0] = __uint_as_float(w);
    } else if constexpr (PER == 2) {
        if (t.plain_dtype == QSDPA_DTYPE_F16) {
            const float2 f = __half22float2(*(const __half2 *)&w);
            v[0] = f.x, v[1] = f.y;
        } else {
            v[0] = __uint_as_float(w << 16), v[1] = __uint_as_float(w & 0xFFFF0000u);
        }
    } else {
        constexpr int BITS = 32 / PER;
        if (t.mode == QSDPA_MODE_AFFINE) {
#pragma unroll
            for (int e = 0; e < PER; e++) v[e] = qd_word_value<QSDPA_MODE_AFFINE>(w, BITS, e, s, z);
        } else if (BITS == 8) {
#pragma unroll
            for (int e = 0; e < PER; e++) v[e] = __fmul_rn(qd_fp8((w >> (8 * e)) & 0xFFu), s);
        } else {
#pragma unroll
            for (int e = 0; e < PER; e++) v[e] = __fmul_rn(qd_fp4((w >> (4 * e)) & 0xFu), s);
        }
    }
}

/* Scale and bias of group gi of the row whose scales start at srow / biases at zrow. */
__device__ __forceinline__ void gd_group(const qd_qtensor &t, int64_t srow, int64_t zrow, int gi, float &s, float &z) {
    if (t.mode == QSDPA_MODE_PLAIN) return;
    s = qd_group_scale(t, srow, gi);
    if (t.mode == QSDPA_MODE_AFFINE) z = qd_load_float(t.biases, t.scale_dtype, zrow + gi);
}

/* Affine codes folded (v44.2): the PER codes of a word as c_e * 2^(bits * gd_fold_pos(e)), each by the 2^23
 * trick on the code left where it sits (one LOP3 and one FADD; the word's upper half shifted down once for the
 * codes that would reach f32's exponent bits). The power of two goes into q (K) or is taken out of the sums
 * once at the end (V), so products and sums stay exact integers times f32 values. */
template <int PER>
__host__ __device__ constexpr int gd_fold_pos(int e) {
    return PER == 8 ? (e < 5 ? e : e - 4) : (e < 2 ? e : e - 2);
}
template <int PER>
__host__ __device__ constexpr float gd_fold_unit(int e) {
    return 1.0f / (float)(1u << ((32 / PER) * gd_fold_pos<PER>(e)));
}
template <int PER>
__device__ __forceinline__ void gd_fold_codes(uint32_t w, float (&c)[PER]) {
    constexpr int BITS = 32 / PER, LOW = PER == 8 ? 5 : 2; /* codes read in place from the low word */
    const uint32_t hi = w >> 16;
#pragma unroll
    for (int e = 0; e < PER; e++) {
        const uint32_t mask = ((1u << BITS) - 1u) << (BITS * gd_fold_pos<PER>(e));
        c[e] = __uint_as_float(((e < LOW ? w : hi) & mask) | 0x4B000000u) - 8388608.0f;
    }
}

/* dot[r] += q row r's dims [d0, d0 + PER) times a word's PER values (q from shared memory: the same address in
 * every lane, a broadcast) */
template <int PER, int ROWS>
__device__ __forceinline__ void gd_dot_word(const float *q_s, int kp, int d0, const float (&kv)[PER], float (&dot)[ROWS]) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const float *qr = q_s + r * kp + d0;
        if constexpr (PER >= 4) {
#pragma unroll
            for (int e = 0; e < PER; e += 4) {
                const float4 qv = *(const float4 *)(qr + e);
                dot[r] = fmaf(qv.x, kv[e], fmaf(qv.y, kv[e + 1], fmaf(qv.z, kv[e + 2], fmaf(qv.w, kv[e + 3], dot[r]))));
            }
        } else {
#pragma unroll
            for (int e = 0; e < PER; e++) dot[r] = fmaf(qr[e], kv[e], dot[r]);
        }
    }
}

/* Folded K: a finished group's share of each row's score, s sum(q c) + z sum(q) (qsum: the group's sum(q), rows
 * GEN_DECODE_KGROUPS apart), and its sums cleared for the next group */
template <int ROWS>
__device__ __forceinline__ void gd_fold_group(float s, float z, const float *qsum, float (&part)[ROWS], float (&acc)[ROWS]) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        acc[r] = fmaf(s, part[r], fmaf(z, qsum[r * GEN_DECODE_KGROUPS], acc[r]));
        part[r] = 0.0f;
    }
}

template <int KPER, int VPER, int ROWS, bool FOLD>
__global__ void __launch_bounds__(32) generic_decode(const gen_params p) {
    extern __shared__ float4 gd_sm4[];
    float *q_s = (float *)gd_sm4;        /* [ROWS][kpitch], zero past dk and past nrows */
    float *p_s = q_s + ROWS * p.kpitch;  /* [32 keys][ROWS] weights of a step */
    float *qsum_s = p_s + 32 * ROWS;     /* [ROWS][GEN_DECODE_KGROUPS] folded K: sum(q) per group */
    const int lane = threadIdx.x, kp = p.kpitch, dk = p.dk, dv = p.dv;
    const int64_t hkv = p.hq / p.ratio;
    const int64_t chunk = blockIdx.x % p.row_chunks, g = (blockIdx.x / p.row_chunks) % hkv,
                  b = blockIdx.x / (p.row_chunks * hkv);
    const int64_t f0 = chunk * ROWS;
    const int nrows = (int)min((int64_t)ROWS, p.ratio * p.lq - f0);
    const qd_qtensor &K = p.k, &V = p.v;
    /* FOLD (affine K and V, v44.2): S = sum_g s_g sum(q c) + z_g sum(q) per group, and O = sum_j (w_j s_j) c_j
     * + sum_j w_j z_j per group, so a code costs two instructions before its multiply-adds, not five; a
     * template argument, so the other formats' kernels keep their registers (run 261: both paths in one kernel
     * took the 8-bit one from 120 registers to 155, 16 warps per SM to 12, and 18% of its speed) */
    static_assert(!FOLD || (KPER >= 4 && VPER >= 4), "folded codes: 4 or 8 bits");
#pragma unroll
    for (int r = 0; r < ROWS; r++) { /* a row at a time: no division per value */
        const int64_t f = f0 + min(r, nrows - 1), h = g * p.ratio + f / p.lq, i = f % p.lq;
        const int64_t qrow = b * p.qs[0] + h * p.qs[1] + i * p.qs[2];
        for (int d = lane; d < kp; d += 32)
            q_s[r * kp + d] = r < nrows && d < dk ? qd_load_float(p.q, p.q_dtype, qrow + d) : 0.0f;
    }
    if constexpr (FOLD) {
        __syncwarp();
        /* sum(q) per row and group: a lane per (row, group), four chains of float4 loads */
        const int grp = K.group, ngk = dk / grp;
        for (int e = lane; e < ROWS * ngk; e += 32) {
            const int r = e / ngk, gk = e - r * ngk;
            const float4 *q4 = (const float4 *)(q_s + r * kp + gk * grp);
            float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
            for (int m = 0; m < grp / 4; m++) {
                const float4 v = q4[m];
                a.x += v.x, a.y += v.y, a.z += v.z, a.w += v.w;
            }
            qsum_s[r * GEN_DECODE_KGROUPS + gk] = (a.x + a.y) + (a.z + a.w);
        }
        __syncwarp();
        /* q times the codes' powers of two: dim d = lane + 32 i sits at d % KPER = lane % KPER of its word */
        const float unit = gd_fold_unit<KPER>(lane % KPER);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            for (int d = lane; d < kp; d += 32) q_s[r * kp + d] *= unit;
    }
    /* per row: the last visible global key and the mask row (shared: registers are short here) */
    __shared__ int64_t last[ROWS], mrow[ROWS];
    if (lane < ROWS) {
        const int64_t f = f0 + min(lane, nrows - 1), h = g * p.ratio + f / p.lq, i = f % p.lq;
        last[lane] = i + p.key_total - p.lq;
        mrow[lane] = b * p.ms[0] + h * p.ms[1] + i * p.ms[2];
    }
    __syncwarp();
    int64_t j0 = (int64_t)blockIdx.y * p.keys_per_split, j1 = min(p.lk, j0 + p.keys_per_split);
    if (p.skip) gen_skip_range(p, last, nrows, j0, j1);
    constexpr int NX = GEN_DECODE_VPL / VPER; /* words a lane holds per V row */
    float m[ROWS], l[ROWS], kept[ROWS], o[ROWS][GEN_DECODE_VPL], ob[ROWS][FOLD ? NX : 1];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY, l[r] = 0.0f, kept[r] = 0.0f;
#pragma unroll
        for (int x = 0; x < GEN_DECODE_VPL; x++) o[r][x] = 0.0f;
#pragma unroll
        for (int x = 0; x < (FOLD ? NX : 1); x++) ob[r][x] = 0.0f;
    }
    const int nwk = dk / KPER, nwv = dv / VPER;
    const char *kbase = (const char *)K.codes + b * K.cs[0] + g * K.cs[1];
    const char *vbase = (const char *)V.codes + b * V.cs[0] + g * V.cs[1];
    const int64_t ksb = b * K.ss[0] + g * K.ss[1], kzb = b * K.bs[0] + g * K.bs[1];
    const int64_t vsb = b * V.ss[0] + g * V.ss[1], vzb = b * V.bs[0] + g * V.bs[1];
    const bool kvec = p.k_vec4; /* rows of whole 16-byte pieces at 16-byte alignment */
    const int kgroup = K.mode == QSDPA_MODE_PLAIN ? 1 << 30 : K.group;
    const int vgroup = V.mode == QSDPA_MODE_PLAIN ? 1 << 30 : V.group;
    /* V split: `per_key` lanes a key (one word each) and `kpi` keys a pass, or every lane on
     * every key with words lane + 32 x */
    const bool vwide = nwv > 32;
    const int kpi = vwide ? 1 : 32 / nwv, vword = vwide ? lane : lane % nwv, vkey = vwide ? 0 : lane / nwv;
    const bool vlane = vwide || lane < kpi * nwv;
    const int vx = vwide ? (nwv + 31) / 32 : 1; /* words per lane per key */
    /* a lane's V words and their groups are the same for every key: found once (v44.2; a division a key
     * before) */
    bool vhas[NX];
    int vgi[NX];
#pragma unroll
    for (int x = 0; x < NX; x++) {
        const int w = vword + 32 * x;
        vhas[x] = x < vx && w < nwv;
        vgi[x] = vhas[x] ? w * VPER / vgroup : 0;
    }
    __syncwarp(); /* q staged */
    for (int64_t jt = j0; jt < j1; jt += 32) {
        const int n = (int)min((int64_t)32, j1 - jt);
        const bool valid = lane < n;
        const int64_t j = jt + (valid ? lane : 0);
        float acc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) acc[r] = 0.0f;
        if (valid) {
            const uint32_t *krow = (const uint32_t *)(kbase + j * K.cs[2]);
            const int64_t ksrow = ksb + j * K.ss[2], kzrow = kzb + j * K.bs[2];
            float s = 1.0f, z = 0.0f, part[ROWS]; /* folded K: the group's sum(q c) so far */
            int gi = -1, gend = 0;                /* the group under way and where it ends */
#pragma unroll
            for (int r = 0; r < ROWS; r++) part[r] = 0.0f;
            for (int w0 = 0; w0 < nwk; w0 += 8) { /* 8 words a pass: two 16-byte loads in flight */
                uint32_t wd[8];
                if (kvec) {
                    const uint4 u = *(const uint4 *)(krow + w0);
                    const uint4 u2 = w0 + 4 < nwk ? *(const uint4 *)(krow + w0 + 4) : make_uint4(0u, 0u, 0u, 0u);
                    wd[0] = u.x, wd[1] = u.y, wd[2] = u.z, wd[3] = u.w, wd[4] = u2.x, wd[5] = u2.y, wd[6] = u2.z, wd[7] = u2.w;
                } else {
#pragma unroll
                    for (int x = 0; x < 8; x++) wd[x] = w0 + x < nwk ? krow[w0 + x] : 0u;
                }
#pragma unroll
                for (int x = 0; x < 8; x++) {
                    const int w = w0 + x;
                    if (w >= nwk) break;
                    const int d0 = w * KPER;
                    if (d0 >= gend) { /* groups are whole words (qd_word_path): a new one starts here */
                        if (FOLD && gi >= 0) gd_fold_group<ROWS>(s, z, qsum_s + gi, part, acc);
                        gi++, gend += kgroup;
                        gd_group(K, ksrow, kzrow, gi, s, z);
                    }
                    float kv[KPER];
                    if constexpr (FOLD) {
                        gd_fold_codes<KPER>(wd[x], kv);
                        gd_dot_word<KPER, ROWS>(q_s, kp, d0, kv, part);
                    } else {
                        gd_word<KPER>(K, wd[x], s, z, kv);
                        gd_dot_word<KPER, ROWS>(q_s, kp, d0, kv, acc);
                    }
                }
            }
            if constexpr (FOLD) gd_fold_group<ROWS>(s, z, qsum_s + gi, part, acc);
        }
        /* online softmax of every row across the warp (generic_attention's arithmetic) */
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float keep_flag = 0.0f;
            const float s = valid ? gen_key_score(p, acc[r], jt + lane, last[r], mrow[r], keep_flag) : -INFINITY;
            kept[r] = fmaxf(kept[r], keep_flag);
            const float mn = fmaxf(m[r], warp_max(s));
            const float corr = mn == -INFINITY ? 1.0f : expf(m[r] - mn);
            const float w = mn == -INFINITY || !valid ? 0.0f : expf(s - mn);
            l[r] = l[r] * corr + warp_sum(w);
            m[r] = mn;
            p_s[lane * ROWS + r] = r < nrows ? w : 0.0f;
#pragma unroll
            for (int x = 0; x < GEN_DECODE_VPL; x++) o[r][x] *= corr;
#pragma unroll
            for (int x = 0; x < (FOLD ? NX : 1); x++) ob[r][x] *= corr;
        }
        __syncwarp(); /* the step's weights written */
        if (vlane) {
            /* VB keys at a time, every one's words, scales and biases loaded before any is used
             * (one wait on memory per batch, not per key) */
            constexpr int VB = NX >= 4 ? 1 : 4 / NX;
            for (int t0 = vkey; t0 < n; t0 += VB * kpi) {
                uint32_t vw[VB][NX];
                float vs[VB][NX], vz[VB][NX];
#pragma unroll
                for (int k = 0; k < VB; k++) {
                    const int t = t0 + k * kpi;
                    const int64_t jv = jt + min(t, n - 1);
                    const uint32_t *vrow = (const uint32_t *)(vbase + jv * V.cs[2]) + vword;
                    const int64_t vsrow = vsb + jv * V.ss[2], vzrow = vzb + jv * V.bs[2];
#pragma unroll
                    for (int x = 0; x < NX; x++) {
                        vw[k][x] = 0u, vs[k][x] = 1.0f, vz[k][x] = 0.0f;
                        if (t >= n || !vhas[x]) continue;
                        vw[k][x] = vrow[32 * x];
                        gd_group(V, vsrow, vzrow, vgi[x], vs[k][x], vz[k][x]);
                    }
                }
#pragma unroll
                for (int k = 0; k < VB; k++) {
                    const int t = t0 + k * kpi;
                    if (t >= n) break;
                    float wt[ROWS];
#pragma unroll
                    for (int r = 0; r < ROWS; r += 4) {
                        const float4 w4 = *(const float4 *)(p_s + t * ROWS + r);
                        wt[r] = w4.x, wt[r + 1] = w4.y, wt[r + 2] = w4.z, wt[r + 3] = w4.w;
                    }
#pragma unroll
                    for (int x = 0; x < NX; x++) {
                        if (!vhas[x]) break;
                        float vv[VPER];
                        if constexpr (FOLD) {
                            gd_fold_codes<VPER>(vw[k][x], vv);
#pragma unroll
                            for (int r = 0; r < ROWS; r++) {
                                const float ws = wt[r] * vs[k][x];
                                ob[r][x] = fmaf(wt[r], vz[k][x], ob[r][x]);
#pragma unroll
                                for (int e = 0; e < VPER; e++) o[r][x * VPER + e] = fmaf(ws, vv[e], o[r][x * VPER + e]);
                            }
                        } else {
                            gd_word<VPER>(V, vw[k][x], vs[k][x], vz[k][x], vv);
#pragma unroll
                            for (int r = 0; r < ROWS; r++)
#pragma unroll
                                for (int e = 0; e < VPER; e++) o[r][x * VPER + e] = fmaf(wt[r], vv[e], o[r][x * VPER + e]);
                        }
                    }
                }
            }
        }
        __syncwarp(); /* the weights read before the next step writes them */
    }
    if constexpr (FOLD) /* folded V: the codes' powers of two out, the biases' sums in */
#pragma unroll
        for (int r = 0; r < ROWS; r++)
#pragma unroll
            for (int x = 0; x < NX; x++)
#pragma unroll
                for (int e = 0; e < VPER; e++)
                    o[r][x * VPER + e] = fmaf(o[r][x * VPER + e], gd_fold_unit<VPER>(e), ob[r][x]);
    /* lanes holding the same dims for other keys of a pass (kpi > 1) into the first */
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int x = 0; x < GEN_DECODE_VPL; x++) {
            float sum = o[r][x];
            for (int k = 1; k < kpi; k++) sum += __shfl_sync(0xffffffffu, o[r][x], min(lane + k * nwv, 31));
            o[r][x] = sum;
        }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (r >= nrows) break;
        const int64_t f = f0 + r, h = g * p.ratio + f / p.lq, i = f % p.lq;
        float *dst = p.part + ((int64_t)blockIdx.y * p.rows + (b * p.hq + h) * p.lq + i) * (4 + dv);
        const float kr = warp_max(kept[r]);
        if (lane == 0) dst[0] = m[r], dst[1] = l[r], dst[2] = kr, dst[3] = 0.0f;
        if (vlane && vkey == 0)
#pragma unroll
            for (int x = 0; x < GEN_DECODE_VPL / VPER; x++) {
                const int w = vword + 32 * x;
                if (x >= vx || w >= nwv) break;
#pragma unroll
                for (int e = 0; e < VPER; e++) dst[4 + w * VPER + e] = o[r][x * VPER + e];
            }
    }
}

/* generic_decode for code widths (KP, VP), 4 or 8 rows a block, folded where both formats are affine
 * (widths 4 and 8 only: plain rows have no codes to fold) */
template <int KP, int VP>
static void (*gen_decode_kernel(int rows, bool fold))(const gen_params) {
    if constexpr (KP >= 4 && VP >= 4)
        if (fold) return rows == 4 ? generic_decode<KP, VP, 4, true> : generic_decode<KP, VP, 8, true>;
    return rows == 4 ? generic_decode<KP, VP, 4, false> : generic_decode<KP, VP, 8, false>;
}

/* The decode kernel for p's K and V at `folded` rows (GQA ratio x Lq), or nullptr where it
 * does not take them: more than 32 folded rows (longer queries stay on generic_attention's
 * shared tiles), a head dim above 256, rows off the word path (qd_word_path), code widths
 * without an instantiation (GEN_DECODE_WIDTHS: affine 2/3/5/6 bits, mixed widths but K8V4),
 * or QSDPA_CUDA_GENERIC_DECODE=0 (a benchmark and test knob). */
static void (*gen_decode_choice(const gen_params *p, int64_t folded))(const gen_params) {
    static const int enabled = (int)qsdpa_cuda_env("QSDPA_CUDA_GENERIC_DECODE", 1);
    if (!enabled || folded > 32 || p->dk > 256 || p->dv > 256 || !p->k_words || !p->v_words) return nullptr;
    const int kper = gen_decode_per_word(&p->k), vper = gen_decode_per_word(&p->v);
    const bool fold = p->k.mode == QSDPA_MODE_AFFINE && p->v.mode == QSDPA_MODE_AFFINE;
#define GEN_DECODE_PICK(KP, VP)                                                                            \
    if (kper == KP && vper == VP) return gen_decode_kernel<KP, VP>(gen_decode_rows(folded), fold);
    GEN_DECODE_WIDTHS(GEN_DECODE_PICK)
#undef GEN_DECODE_PICK
    return nullptr;
}
