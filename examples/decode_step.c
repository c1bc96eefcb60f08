/* One decode step over a quantized KV cache with the public qsdpa API:
 * quantize K/V rows (as a cache would on append), then attend with one query
 * token per head. K and V may use different formats:
 *   decode_step                 4-bit affine, group 64, for both (mlx-lm's default)
 *   decode_step mxfp8 mxfp4     8-bit K, 4-bit V (K's errors pass through the softmax's exp)
 *   decode_step affine:8:64 affine:4:64
 * Build: see examples/CMakeLists.txt or
 *   cc decode_step.c $(pkg-config --cflags --libs qsdpa) -lm */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <qsdpa.h>

enum { BATCH = 1, HEADS_Q = 8, HEADS_KV = 2, CONTEXT = 1000, DIM = 128 };

static float random_normal(unsigned *state) {
    /* Box-Muller over a small LCG: enough for an example. */
    *state = *state * 1664525u + 1013904223u;
    float u1 = ((*state >> 8) + 1.0f) / 16777217.0f;
    *state = *state * 1664525u + 1013904223u;
    float u2 = (*state >> 8) / 16777216.0f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* Quantize rows [BATCH*HEADS_KV*CONTEXT, DIM] of fresh data into a qsdpa_qtensor: codes as
 * uint32 words; affine scales and biases in f32 (mx.quantize keeps the input's dtype), the
 * fp formats' scales as uint8 exponents and no biases. */
static int make_cache(const qsdpa_format *format, unsigned *seed, qsdpa_qtensor *out) {
    if (format->mode == QSDPA_MODE_PLAIN) {
        fprintf(stderr, "this example quantizes; unquantized rows are plain tensors (see README)\n");
        return 0;
    }
    int64_t rows = (int64_t)BATCH * HEADS_KV * CONTEXT, words = 0, groups = 0;
    if (qsdpa_format_row_words(format, DIM, &words) != QSDPA_OK) return 0;
    if (qsdpa_format_row_scales(format, DIM, &groups) != QSDPA_OK) return 0;
    const int affine = qsdpa_format_has_biases(format);
    const qsdpa_dtype scale_dtype = affine ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_U8;
    const size_t scale_size = affine ? sizeof(float) : 1;
    float *x = malloc(sizeof(float) * (size_t)(rows * DIM));
    uint32_t *codes = malloc(sizeof(uint32_t) * (size_t)(rows * words));
    void *scales = malloc(scale_size * (size_t)(rows * groups));
    float *biases = affine ? malloc(sizeof(float) * (size_t)(rows * groups)) : NULL;
    if (!x || !codes || !scales || (affine && !biases)) return 0;
    for (int64_t i = 0; i < rows * DIM; i++) x[i] = random_normal(seed);
    qsdpa_status st = qsdpa_quantize(format, x, QSDPA_DTYPE_F32, rows, DIM, codes, scales, biases, scale_dtype);
    free(x);
    if (st != QSDPA_OK) {
        fprintf(stderr, "quantize failed: %s\n", qsdpa_last_error());
        return 0;
    }
    *out = (qsdpa_qtensor){0};
    out->format = *format;
    out->dim = DIM;
    out->codes = qsdpa_tensor_4d(codes, QSDPA_DTYPE_U32, BATCH, HEADS_KV, CONTEXT, words);
    out->scales = qsdpa_tensor_4d(scales, scale_dtype, BATCH, HEADS_KV, CONTEXT, groups);
    if (affine) out->biases = qsdpa_tensor_4d(biases, QSDPA_DTYPE_F32, BATCH, HEADS_KV, CONTEXT, groups);
    return 1;
}

int main(int argc, char **argv) {
    printf("qsdpa %s\n", qsdpa_version());
    const char *k_text = argc > 1 ? argv[1] : "affine:4:64", *v_text = argc > 2 ? argv[2] : k_text;
    qsdpa_format k_format, v_format;
    if (qsdpa_format_parse(k_text, &k_format) != QSDPA_OK || qsdpa_format_parse(v_text, &v_format) != QSDPA_OK) {
        fprintf(stderr, "%s\n", qsdpa_last_error()); /* names the text it could not parse */
        return 1;
    }
    unsigned seed = 12345u;
    qsdpa_qtensor k, v;
    if (!make_cache(&k_format, &seed, &k) || !make_cache(&v_format, &seed, &v)) return 1;

    static float q[BATCH * HEADS_Q * DIM], out[BATCH * HEADS_Q * DIM];
    for (int i = 0; i < BATCH * HEADS_Q * DIM; i++) q[i] = random_normal(&seed);
    qsdpa_tensor q_t = qsdpa_tensor_4d(q, QSDPA_DTYPE_F32, BATCH, HEADS_Q, 1, DIM);
    qsdpa_tensor out_t = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, BATCH, HEADS_Q, 1, DIM);

    qsdpa_context *ctx = NULL;
    if (qsdpa_context_create(NULL, &ctx) != QSDPA_OK) {
        fprintf(stderr, "%s\n", qsdpa_last_error());
        return 1;
    }
    qsdpa_attention_params params = qsdpa_attention_default_params();
    params.scale = 1.0f / sqrtf((float)DIM);
    qsdpa_status st = qsdpa_attention(ctx, &q_t, &k, &v, &params, &out_t);
    if (st != QSDPA_OK) {
        fprintf(stderr, "attention failed (%s): %s\n", qsdpa_status_string(st), qsdpa_last_error());
        qsdpa_context_destroy(ctx);
        return 1;
    }
    printf("K %s, V %s: kernel %s\n", k_text, v_text, qsdpa_context_last_route(ctx));
    printf("out[0, 0, 0, 0:4] = %.5f %.5f %.5f %.5f\n", out[0], out[1], out[2], out[3]);
    qsdpa_context_destroy(ctx);
    free(k.codes.data); free(k.scales.data); free(k.biases.data);
    free(v.codes.data); free(v.scales.data); free(v.biases.data);
    return 0;
}
