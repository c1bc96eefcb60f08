/* Golden vectors from MLX (tools/gen_golden.py): quantize and dequantize every
 * case with qsdpa and compare bit for bit; FP8 codec tables likewise.
 * The folder defaults to tests/data/golden; QSDPA_GOLDEN_DIR overrides it
 * (for larger sets generated with gen_golden.py --out). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "format/format_internal.h"
#include "npy.h"
#include "test_util.h"

static char golden_dir[1024];

/* Load <dir>/<name><suffix>; NULL (and a failure) when absent or malformed. */
static bool load(const char *name, const char *suffix, qsdpa_npy_array *a) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s%s", golden_dir, name, suffix);
    if (qsdpa_npy_read(path, a) != QSDPA_OK) {
        CHECK(0, "cannot read %s: %s", path, qsdpa_npy_error());
        return false;
    }
    return true;
}

/* Elements equal as bits, or both NaN (MLX and qsdpa NaN payloads may differ). */
static int64_t count_diff(const void *a, const void *b, int64_t n, size_t size, bool floats, qsdpa_dtype dt,
                          int64_t *first) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp((const char *)a + i * size, (const char *)b + i * size, size) == 0) continue;
        if (floats && isnan(qsdpa_load_float(a, dt, i)) && isnan(qsdpa_load_float(b, dt, i))) continue;
        if (bad++ == 0) *first = i;
    }
    return bad;
}

typedef struct golden_case {
    char name[96], format[32], x_dtype[8], scale_dtype[8], gscale[40], deq_dtype[8];
    long long rows, dim;
} golden_case;

static void run_case(const golden_case *c) {
    qsdpa_format f;
    qsdpa_dtype xd, sd, dd;
    if (qsdpa_format_parse(c->format, &f) != QSDPA_OK || qsdpa_dtype_parse(c->x_dtype, &xd) != QSDPA_OK ||
        qsdpa_dtype_parse(c->scale_dtype, &sd) != QSDPA_OK || qsdpa_dtype_parse(c->deq_dtype, &dd) != QSDPA_OK) {
        CHECK(0, "%s: bad manifest line: %s", c->name, qsdpa_last_error());
        return;
    }
    f.global_scale = strtof(c->gscale, NULL);
    bool affine = f.mode == QSDPA_MODE_AFFINE;
    qsdpa_npy_array x = {0}, codes = {0}, scales = {0}, biases = {0}, deq = {0}, deq32 = {0};
    bool ok = load(c->name, ".x.npy", &x) && load(c->name, ".codes.npy", &codes) &&
              load(c->name, ".scales.npy", &scales) && (!affine || load(c->name, ".biases.npy", &biases)) &&
              load(c->name, ".deq.npy", &deq) && load(c->name, ".deq32.npy", &deq32);
    int64_t rows = c->rows, dim = c->dim, words = 0, ns = 0;
    if (ok) {
        CHECK(qsdpa_format_row_words(&f, dim, &words) == QSDPA_OK, "%s: row_words", c->name);
        CHECK(qsdpa_format_row_scales(&f, dim, &ns) == QSDPA_OK, "%s: row_scales", c->name);
        ok = x.count == rows * dim && codes.count == rows * words && scales.count == rows * ns &&
             deq.count == rows * dim && deq32.count == rows * dim && (!affine || biases.count == rows * ns);
        CHECK(ok, "%s: golden shapes disagree with rows %lld dim %lld", c->name, c->rows, c->dim);
    }
    if (!ok) goto done;
    size_t ssize = qsdpa_dtype_size(sd), xsize = qsdpa_dtype_size(xd), dsize = qsdpa_dtype_size(dd);
    uint32_t *qc = test_alloc((size_t)(rows * words) * 4);
    void *qs = test_alloc((size_t)(rows * ns) * ssize), *qb = test_alloc((size_t)(rows * ns) * ssize);
    void *out = test_alloc((size_t)(rows * dim) * (dsize > xsize ? dsize : xsize));
    float *row = test_alloc((size_t)dim * sizeof(float));
    int64_t first = 0, bad;

    /* quantize: codes, scales, biases bit for bit */
    test_poison(qc, (size_t)(rows * words) * 4);
    test_poison(qs, (size_t)(rows * ns) * ssize);
    test_poison(qb, (size_t)(rows * ns) * ssize);
    qsdpa_status st = qsdpa_quantize(&f, x.data, xd, rows, dim, qc, qs, affine ? qb : NULL, sd);
    CHECK(st == QSDPA_OK, "%s: qsdpa_quantize: %s", c->name, qsdpa_last_error());
    bad = count_diff(qc, codes.data, rows * words, 4, false, QSDPA_DTYPE_U32, &first);
    CHECK(bad == 0, "%s: %lld code words differ, first [%lld/%lld] 0x%08x vs MLX 0x%08x", c->name, (long long)bad,
          (long long)(first / words), (long long)(first % words), qc[first], ((uint32_t *)codes.data)[first]);
    bad = count_diff(qs, scales.data, rows * ns, ssize, false, sd, &first);
    CHECK(bad == 0, "%s: %lld scales differ, first [%lld] %g vs MLX %g", c->name, (long long)bad, (long long)first,
          (double)qsdpa_load_float(qs, sd, first), (double)qsdpa_load_float(scales.data, sd, first));
    if (affine) {
        bad = count_diff(qb, biases.data, rows * ns, ssize, false, sd, &first);
        CHECK(bad == 0, "%s: %lld biases differ, first [%lld]", c->name, (long long)bad, (long long)first);
    }

    /* dequantize in MLX's output dtype */
    test_poison(out, (size_t)(rows * dim) * dsize);
    st = qsdpa_dequantize(&f, codes.data, scales.data, affine ? biases.data : NULL, sd, rows, dim, out, dd);
    CHECK(st == QSDPA_OK, "%s: qsdpa_dequantize: %s", c->name, qsdpa_last_error());
    bad = count_diff(out, deq.data, rows * dim, dsize, true, dd, &first);
    CHECK(bad == 0, "%s: %lld dequantized values differ, first [%lld] %.9g vs MLX %.9g", c->name, (long long)bad,
          (long long)first, (double)qsdpa_load_float(out, dd, first), (double)qsdpa_load_float(deq.data, dd, first));

    /* the kernels' row function, in f32 */
    int64_t bad32 = 0;
    for (int64_t r = 0; r < rows; r++) {
        test_poison(row, (size_t)dim * sizeof(float));
        qsdpa_dequantize_row(&f, (const uint32_t *)codes.data + r * words, (const char *)scales.data + r * ns * ssize,
                             affine ? (const char *)biases.data + r * ns * ssize : NULL, sd, dim, row);
        int64_t fr = 0, b = count_diff(row, (const float *)deq32.data + r * dim, dim, 4, true, QSDPA_DTYPE_F32, &fr);
        if (b && !bad32)
            fprintf(stderr, "%s: row %lld [%lld] %.9g vs MLX %.9g\n", c->name, (long long)r, (long long)fr,
                    (double)row[fr], (double)((const float *)deq32.data)[r * dim + fr]);
        bad32 += b;
    }
    CHECK(bad32 == 0, "%s: qsdpa_dequantize_row: %lld values differ from MLX f32", c->name, (long long)bad32);
    free(qc);
    free(qs);
    free(qb);
    free(out);
    free(row);
done:
    qsdpa_npy_free(&x);
    qsdpa_npy_free(&codes);
    qsdpa_npy_free(&scales);
    qsdpa_npy_free(&biases);
    qsdpa_npy_free(&deq);
    qsdpa_npy_free(&deq32);
}

static void check_codecs(void) {
    qsdpa_npy_array bf = {0}, h = {0}, in = {0}, out = {0}, dec = {0};
    if (load("codec_fp8_encode_bf16", ".out.npy", &bf) && bf.count == 65536) {
        int bad = 0;
        for (uint32_t i = 0; i < 65536; i++) {
            uint8_t want = ((const uint8_t *)bf.data)[i], got = qsdpa_fp8_encode(qsdpa_bf16_to_f32((uint16_t)i));
            if (got != want && bad++ < 5) fprintf(stderr, "fp8 encode bf16 0x%04x: 0x%02x vs MLX 0x%02x\n", i, got, want);
        }
        CHECK(bad == 0, "fp8 encode of %d bf16 patterns differs from MLX", bad);
    }
    if (load("codec_fp8_encode_f16", ".out.npy", &h) && h.count == 65536) {
        int bad = 0;
        for (uint32_t i = 0; i < 65536; i++) {
            uint8_t want = ((const uint8_t *)h.data)[i], got = qsdpa_fp8_encode(qsdpa_f16_to_f32((uint16_t)i));
            if (got != want && bad++ < 5) fprintf(stderr, "fp8 encode f16 0x%04x: 0x%02x vs MLX 0x%02x\n", i, got, want);
        }
        CHECK(bad == 0, "fp8 encode of %d f16 patterns differs from MLX", bad);
    }
    if (load("codec_fp8_encode", ".in.npy", &in) && load("codec_fp8_encode", ".out.npy", &out) &&
        in.count == out.count) {
        int bad = 0;
        for (int64_t i = 0; i < in.count; i++) {
            float v = ((const float *)in.data)[i];
            uint8_t want = ((const uint8_t *)out.data)[i], got = qsdpa_fp8_encode(v);
            if (got != want && bad++ < 5) fprintf(stderr, "fp8 encode %.9g: 0x%02x vs MLX 0x%02x\n", (double)v, got, want);
        }
        CHECK(bad == 0, "fp8 encode of %d f32 values differs from MLX", bad);
    }
    if (load("codec_fp8_decode", ".out.npy", &dec) && dec.count == 256) {
        for (int i = 0; i < 256; i++) {
            float want = ((const float *)dec.data)[i], got = qsdpa_fp8_decode((uint8_t)i);
            CHECK(memcmp(&got, &want, 4) == 0 || (isnan(got) && isnan(want)), "fp8 decode 0x%02x: %g vs MLX %g", i,
                  (double)got, (double)want);
        }
    }
    qsdpa_npy_free(&bf);
    qsdpa_npy_free(&h);
    qsdpa_npy_free(&in);
    qsdpa_npy_free(&out);
    qsdpa_npy_free(&dec);
}

int main(void) {
    const char *env = getenv("QSDPA_GOLDEN_DIR");
    snprintf(golden_dir, sizeof golden_dir, "%s", env && *env ? env : QSDPA_SOURCE_DIR "/tests/data/golden");
    char path[1100];
    snprintf(path, sizeof path, "%s/manifest.txt", golden_dir);
    FILE *m = fopen(path, "r");
    if (!m) {
        fprintf(stderr, "FAIL: %s is missing (run tools/gen_golden.py)\n", path);
        return 1;
    }
    char line[512];
    int cases = 0;
    while (fgets(line, sizeof line, m)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        golden_case c;
        if (sscanf(line, "%95s %31s %7s %7s %39s %lld %lld %7s", c.name, c.format, c.x_dtype, c.scale_dtype,
                   c.gscale, &c.rows, &c.dim, c.deq_dtype) != 8) {
            CHECK(0, "bad manifest line: %s", line);
            continue;
        }
        run_case(&c);
        cases++;
    }
    fclose(m);
    CHECK(cases > 0, "%s lists no cases", path);
    check_codecs();
    printf("%d golden cases\n", cases);
    return test_finish("format.golden");
}
