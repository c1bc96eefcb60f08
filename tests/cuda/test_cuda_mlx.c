/* MLX's 10 quantized-SDPA scenarios (SPEC §6) on the CUDA backend: B=1, Hq=2,
 * Hkv=1, Lk=640, D=128, q/k/v = 0.1 N(0,1), scale 1, every format and mask
 * the scenarios use, Lq 4 and 9, sinks, causal; compared with the CPU
 * reference on the same bytes at SPEC §4 tolerances, with f32 q (the generic
 * kernel) and f16 q (the tensor-core kernel). Scenario 10 (causal with an
 * array mask) must be an error that writes nothing. */
#include "test_util.h"

#ifndef QSDPA_TEST_CUDA
int main(void) {
    printf("SKIP: no CUDA device (this build has no CUDA backend)\n");
    return 77;
}
#else
#include <cuda_runtime.h>
#include <string.h>

#include "cuda_case.h"

static cuda_case scenario(const char *format, int lq, qsdpa_dtype q_dtype) {
    cuda_case c = cuda_case_default();
    c.hq = 2; c.hkv = 1; c.lk = 640; c.lq = lq; c.scale = 1.0f; c.sigma = 0.1;
    c.q_dtype = q_dtype;
    c.scale_dtype = QSDPA_DTYPE_F32; /* mx.quantize of f32 data */
    qsdpa_format_parse(format, &c.kf);
    c.vf = c.kf;
    return c;
}

int main(void) {
    if (test_skip_without_cuda()) return TEST_SKIPPED;
    test_rng rng;
    test_rng_init(&rng, test_seed());
    const char *fp[] = {"mxfp4", "mxfp8", "nvfp4"};
    const char *aff[] = {"affine:4:32", "affine:6:32", "affine:8:32"};
    const qsdpa_dtype dts[] = {QSDPA_DTYPE_F32, QSDPA_DTYPE_F16};
    char label[160];
    for (int t = 0; t < 2; t++) {
        qsdpa_dtype dt = dts[t];
        const char *dn = qsdpa_dtype_name(dt);
        for (int f = 0; f < 6; f++) {
            const char *name = f < 3 ? fp[f] : aff[f - 3];
            /* 1, 2: plain, Lq 4 */
            cuda_case c = scenario(name, 4, dt);
            snprintf(label, sizeof label, "s1/2 %s q %s Lq4", name, dn);
            cuda_case_run(&rng, &c, label);
            for (int lq = 4; lq <= 9; lq += 5) {
                /* 3, 4: bool mask (20%% false) and additive 0/-1e9 */
                for (int m = 1; m <= 3; m += 2) {
                    c = scenario(name, lq, dt);
                    c.mask = m;
                    snprintf(label, sizeof label, "s3/4 %s q %s Lq%d %s mask", name, dn, lq, m == 1 ? "bool" : "additive");
                    cuda_case_run(&rng, &c, label);
                }
                /* 5: sinks (fp modes); 8, 9: causal */
                c = scenario(name, lq, dt);
                c.sinks = 1;
                snprintf(label, sizeof label, "s5 %s q %s Lq%d sinks", name, dn, lq);
                cuda_case_run(&rng, &c, label);
                c = scenario(name, lq, dt);
                c.causal = 1;
                snprintf(label, sizeof label, "s8/9 %s q %s Lq%d causal", name, dn, lq);
                cuda_case_run(&rng, &c, label);
            }
        }
        for (int lq = 4; lq <= 9; lq += 5)
            for (int m = 1; m <= 3; m += 2) {
                /* 6: mxfp4 + sinks + both masks; 7: affine 4 + sinks + bool mask */
                cuda_case c = scenario("mxfp4", lq, dt);
                c.sinks = 1; c.mask = m;
                snprintf(label, sizeof label, "s6 mxfp4 q %s Lq%d sinks + mask %d", dn, lq, m);
                cuda_case_run(&rng, &c, label);
                c = scenario("affine:4:32", lq, dt);
                c.sinks = 1; c.mask = 1;
                snprintf(label, sizeof label, "s7 affine4 q %s Lq%d sinks + bool mask", dn, lq);
                cuda_case_run(&rng, &c, label);
            }
    }

    /* 10: causal together with a bool mask is an error; nothing is written */
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = QSDPA_BACKEND_CUDA;
    qsdpa_context *ctx = NULL;
    CHECK(qsdpa_context_create(&o, &ctx) == QSDPA_OK, "context: %s", qsdpa_last_error());
    if (ctx) {
        int64_t words = 16, groups = 4;
        void *q, *codes, *scales, *mask, *out;
        cudaMalloc(&q, 2 * 4 * 128 * 4);
        cudaMalloc(&codes, 640 * words * 4);
        cudaMalloc(&scales, 640 * groups * 4);
        cudaMalloc(&mask, 4 * 640);
        cudaMalloc(&out, 2 * 4 * 128 * 4);
        cudaMemset(out, 0x5A, 2 * 4 * 128 * 4);
        qsdpa_qtensor k;
        memset(&k, 0, sizeof k);
        qsdpa_format_parse("affine:4:32", &k.format);
        k.dim = 128;
        k.codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, 1, 1, 640, words);
        k.scales = qsdpa_tensor_4d(scales, QSDPA_DTYPE_F32, 1, 1, 640, groups);
        k.biases = k.scales;
        qsdpa_tensor qt = qsdpa_tensor_4d(q, QSDPA_DTYPE_F32, 1, 2, 4, 128);
        qsdpa_tensor ot = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, 1, 2, 4, 128);
        int64_t ms[2] = {4, 640};
        qsdpa_tensor mt = qsdpa_tensor_make(mask, QSDPA_DTYPE_BOOL, 2, ms);
        qsdpa_attention_params p = qsdpa_attention_default_params();
        p.causal = 1;
        p.mask = &mt;
        qsdpa_status st = qsdpa_attention(ctx, &qt, &k, &k, &p, &ot);
        CHECK(st == QSDPA_ERR_INVALID_ARGUMENT, "s10: causal + mask gave %s", qsdpa_status_string(st));
        uint8_t host[64];
        cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < sizeof host; i++) CHECK(host[i] == 0x5A, "s10: out written at byte %zu", i);
        cudaFree(q); cudaFree(codes); cudaFree(scales); cudaFree(mask); cudaFree(out);
        qsdpa_context_destroy(ctx);
    }
    return test_finish("test_cuda_mlx");
}
#endif
