/* fuzz_dump SEED CASE FILE: test_cuda_random's attention case CASE of SEED (its generator and seeding, with the
 * model-like shapes), regenerated on the host and written to FILE for an off-device look at the GPU kernels'
 * arithmetic (tools/emulate_prefill_k.py; bench/NOTES.md session 39: case 1657218644:442 reproduced to the last
 * bit). Not a test itself: robustness.kshift_emulation runs it.
 * FILE (little-endian): int64 B, Hq, Hkv, Lq, Lk, Dk, Dv, K's bits, K's group (0: not affine), mutated (1: the
 * case is a deliberate fault); f32 scale; f32 q [B][Hq][Lq][Dk]; per K row (b, KV head, key): its values
 * dequantized in f32 [Dk], and, affine K only, its codes as f32 [Dk] and its groups' (scale, bias) as f32 pairs;
 * V's rows dequantized in f32 [B][Hkv][Lk][Dv]. The case's mask, sinks and causal flags are printed, not written. */
#include <stdlib.h>
#include <string.h>

#include "format/format_internal.h"
#include "fuzz_attn.h"
#include "internal.h"
#include "test_util.h"

/* fuzz_attn's globals, as test_cuda_random defines them (no context is made: nothing is called) */
fuzz_stats_t fuzz_stats;
qsdpa_context *fuzz_ctx_ref, *fuzz_ctx_auto;
qsdpa_context *fuzz_ctx_forced[FUZZ_MAX_CTX];
const char *fuzz_forced_name[FUZZ_MAX_CTX];
int fuzz_n_forced;

static void put(FILE *f, const void *p, size_t bytes) {
    if (fwrite(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "fuzz_dump: write failed\n");
        exit(1);
    }
}

static void put_rows(FILE *f, const qsdpa_qtensor *t, int64_t B, int64_t H, int64_t L, bool with_codes) {
    const int64_t D = t->dim, G = with_codes ? D / t->format.group : 0;
    float *x = test_alloc((size_t)D * sizeof(float)), *scratch = test_alloc((size_t)(2 * D) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++) {
                kv_row(t, b, h, l, x, true, scratch); /* in f32, as the kernels dequantize */
                put(f, x, (size_t)D * sizeof(float));
                if (!with_codes) continue;
                /* the row's words contiguous, as kv_row reads them */
                const uint32_t *codes = (const uint32_t *)t->codes.data + b * t->codes.stride[0] +
                                        h * t->codes.stride[1] + l * t->codes.stride[2];
                for (int64_t d = 0; d < D; d++) x[d] = (float)qsdpa_code_at(codes, d, t->format.bits);
                put(f, x, (size_t)D * sizeof(float));
                const int64_t *ss = t->scales.stride, *bs = t->biases.stride;
                for (int64_t g = 0; g < G; g++) {
                    const float sz[2] = {
                        qsdpa_load_float(t->scales.data, t->scales.dtype, b * ss[0] + h * ss[1] + l * ss[2] + g * ss[3]),
                        qsdpa_load_float(t->biases.data, t->biases.dtype, b * bs[0] + h * bs[1] + l * bs[2] + g * bs[3])};
                    put(f, sz, sizeof sz);
                }
            }
    free(x);
    free(scratch);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: fuzz_dump SEED CASE FILE (a case of test_cuda_random, written for tools/emulate_prefill_k.py)\n");
        return 2;
    }
    const unsigned long long seed = strtoull(argv[1], NULL, 0);
    const long long index = atoll(argv[2]);
    fuzz_seed = seed;
    fuzz_gpu_shapes = true; /* test_cuda_random's settings: they steer the draws */
    fuzz_16bit_contexts = true;
    test_rng r;
    fuzz_case_rng(&r, seed, index);
    if (test_rng_int(&r, 0, 99) >= 85) {
        fprintf(stderr, "fuzz_dump: case %lld of seed %llu is a merge case, not an attention call\n", index, seed);
        return 1;
    }
    acase c;
    gen_case(&r, &c);
    const bool mutated = chance(&r, 0.45);
    if (mutated) attn_mutate(&r, &c);
    describe(&c);
    printf("%s%s\nscale %.9g causal %d window %lld mask %d sinks %d partial %d\n", fuzz_case_desc,
           mutated ? " (a deliberate fault: not a valid call)" : "", (double)c.prm.scale, c.prm.causal,
           (long long)c.prm.window, c.use_mask, c.use_sinks, c.partial);
    FILE *f = fopen(argv[3], "wb");
    if (!f) {
        fprintf(stderr, "fuzz_dump: cannot write %s\n", argv[3]);
        return 1;
    }
    const bool affine = c.k.t.format.mode == QSDPA_MODE_AFFINE;
    const int64_t hdr[10] = {c.B, c.Hq, c.Hkv, c.Lq, c.Lk, c.Dk, c.Dv, c.k.t.format.bits, affine ? c.k.t.format.group : 0,
                             mutated};
    put(f, hdr, sizeof hdr);
    put(f, &c.prm.scale, sizeof c.prm.scale);
    const int64_t *qs = c.tq.stride;
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t h = 0; h < c.Hq; h++)
            for (int64_t l = 0; l < c.Lq; l++)
                for (int64_t d = 0; d < c.Dk; d++) {
                    const float v = qsdpa_load_float(c.tq.data, c.tq.dtype, b * qs[0] + h * qs[1] + l * qs[2] + d * qs[3]);
                    put(f, &v, sizeof v);
                }
    put_rows(f, &c.k.t, c.B, c.Hkv, c.Lk, affine);
    put_rows(f, c.v_is_k ? &c.k.t : &c.v.t, c.B, c.Hkv, c.Lk, false);
    fclose(f);
    acase_free(&c);
    return 0;
}
