/* Format descriptor API: parse/string round trips, every rejected format,
 * row sizes, and qsdpa_quantize / qsdpa_dequantize argument validation
 * (right status, a message naming the value, nothing written on error), plus
 * a quantize -> dequantize round trip per format on fresh random data. */
#include <math.h>
#include <string.h>

#include "format/format_internal.h"
#include "test_util.h"

static const char *const valid_texts[] = {"mxfp4", "mxfp8", "nvfp4", "f32", "f16", "bf16"};
static const int affine_bits[] = {2, 3, 4, 5, 6, 8};
static const int affine_groups[] = {32, 64, 128};

static bool mentions(const char *needle) {
    const char *msg = qsdpa_last_error();
    bool ok = strstr(msg, needle) != NULL;
    if (!ok) fprintf(stderr, "  message \"%s\" does not name \"%s\"\n", msg, needle);
    return ok;
}

static void round_trip(const char *text, const char *canonical) {
    qsdpa_format f, g;
    char buf[64];
    CHECK(qsdpa_format_parse(text, &f) == QSDPA_OK, "parse '%s': %s", text, qsdpa_last_error());
    CHECK(qsdpa_format_check(&f) == QSDPA_OK, "check '%s': %s", text, qsdpa_last_error());
    size_t n = qsdpa_format_string(&f, buf, sizeof buf);
    CHECK(n == strlen(canonical) && strcmp(buf, canonical) == 0, "string of '%s' = '%s', want '%s'", text, buf,
          canonical);
    CHECK(qsdpa_format_parse(buf, &g) == QSDPA_OK && memcmp(&f, &g, sizeof f) == 0, "re-parse of '%s'", buf);
    /* truncation: returns the length needed, writes a terminated prefix */
    char small[4];
    CHECK(qsdpa_format_string(&f, small, sizeof small) == n && strlen(small) == (n < 3 ? n : 3),
          "truncated string of '%s'", canonical);
}

static void test_parse(void) {
    char text[32];
    for (size_t b = 0; b < 6; b++)
        for (size_t g = 0; g < 3; g++) {
            snprintf(text, sizeof text, "affine:%d:%d", affine_bits[b], affine_groups[g]);
            round_trip(text, text);
        }
    for (size_t i = 0; i < sizeof valid_texts / sizeof valid_texts[0]; i++) round_trip(valid_texts[i], valid_texts[i]);
    round_trip("affine:8", "affine:8:64"); /* group 64, mlx-lm's default */
    round_trip("affine", "affine:4:64");   /* MLX's defaults */
    round_trip("mxfp4:4:32", "mxfp4");
    round_trip("nvfp4:4:16", "nvfp4");
    qsdpa_format f;
    CHECK(qsdpa_format_parse("nvfp4", &f) == QSDPA_OK && f.mode == QSDPA_MODE_NVFP4 && f.bits == 4 &&
              f.group == 16 && f.global_scale == 0.0f, "nvfp4 fields");
    CHECK(qsdpa_format_parse("f16", &f) == QSDPA_OK && f.mode == QSDPA_MODE_PLAIN && f.bits == 16 && f.group == 0 &&
              f.plain_dtype == QSDPA_DTYPE_F16, "f16 fields");

    static const struct { const char *text; qsdpa_status st; } bad[] = {
        {"", QSDPA_ERR_PARSE},          {"foo", QSDPA_ERR_PARSE},          {"AFFINE:4", QSDPA_ERR_PARSE},
        {" affine:4", QSDPA_ERR_PARSE}, {"f64", QSDPA_ERR_PARSE},          {"affine:x", QSDPA_ERR_PARSE},
        {"affine:4:", QSDPA_ERR_PARSE}, {"affine:4:64:1", QSDPA_ERR_PARSE}, {"affine:-4", QSDPA_ERR_PARSE},
        {"affine:4x", QSDPA_ERR_PARSE}, {"affine:99999999999", QSDPA_ERR_PARSE},
        {"affine:7", QSDPA_ERR_INVALID_ARGUMENT},    {"affine:1", QSDPA_ERR_INVALID_ARGUMENT},
        {"affine:16", QSDPA_ERR_INVALID_ARGUMENT},   {"affine:4:48", QSDPA_ERR_INVALID_ARGUMENT},
        {"affine:4:16", QSDPA_ERR_INVALID_ARGUMENT}, {"affine:4:256", QSDPA_ERR_INVALID_ARGUMENT},
        {"mxfp4:8", QSDPA_ERR_INVALID_ARGUMENT},     {"mxfp8:4:32", QSDPA_ERR_INVALID_ARGUMENT},
        {"nvfp4:4:32", QSDPA_ERR_INVALID_ARGUMENT},  {"mxfp4:4:16", QSDPA_ERR_INVALID_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qsdpa_format out, poison;
        memset(&out, 0xA5, sizeof out);
        poison = out;
        qsdpa_status st = qsdpa_format_parse(bad[i].text, &out);
        CHECK(st == bad[i].st, "parse '%s' gave %s, want %s", bad[i].text, qsdpa_status_string(st),
              qsdpa_status_string(bad[i].st));
        CHECK(mentions("qsdpa_format_parse") && (bad[i].text[0] == '\0' || mentions(bad[i].text)),
              "parse '%s' message", bad[i].text);
        CHECK(memcmp(&out, &poison, sizeof out) == 0, "parse '%s' wrote *out on error", bad[i].text);
    }
    CHECK(qsdpa_format_parse(NULL, &f) == QSDPA_ERR_INVALID_ARGUMENT && mentions("text"), "parse NULL text");
    CHECK(qsdpa_format_parse("f32", NULL) == QSDPA_ERR_INVALID_ARGUMENT && mentions("out"), "parse NULL out");
}

static void test_check(void) {
    for (int bits = -1; bits <= 33; bits++)
        for (int group = -16; group <= 256; group += 16) {
            qsdpa_format f = {QSDPA_MODE_AFFINE, bits, group, QSDPA_DTYPE_F32, 0.0f};
            bool ok = (bits >= 2 && bits <= 8 && bits != 7) && (group == 32 || group == 64 || group == 128);
            qsdpa_status st = qsdpa_format_check(&f);
            CHECK((st == QSDPA_OK) == ok, "affine bits %d group %d: %s", bits, group, qsdpa_status_string(st));
            if (!ok) {
                char v[16];
                snprintf(v, sizeof v, "= %d", (bits >= 2 && bits <= 8 && bits != 7) ? group : bits);
                CHECK(st == QSDPA_ERR_INVALID_ARGUMENT && mentions(v), "affine bits %d group %d message", bits, group);
            }
        }
    static const struct { qsdpa_mode mode; int bits, group; } fp[] = {
        {QSDPA_MODE_MXFP4, 4, 32}, {QSDPA_MODE_MXFP8, 8, 32}, {QSDPA_MODE_NVFP4, 4, 16}};
    for (int i = 0; i < 3; i++)
        for (int bits = 0; bits <= 16; bits += 2)
            for (int group = 0; group <= 64; group += 8) {
                qsdpa_format f = {fp[i].mode, bits, group, QSDPA_DTYPE_F32, 0.0f};
                bool ok = bits == fp[i].bits && group == fp[i].group;
                qsdpa_status st = qsdpa_format_check(&f);
                CHECK((st == QSDPA_OK) == ok, "mode %d bits %d group %d", (int)fp[i].mode, bits, group);
                if (!ok) CHECK(mentions(qsdpa_format_table[fp[i].mode].name), "fp message names the mode");
            }
    qsdpa_format nv = {QSDPA_MODE_NVFP4, 4, 16, QSDPA_DTYPE_F32, 0.0f};
    static const float good_g[] = {0.0f, 1.0f, 1e-30f, 3e38f};
    for (int i = 0; i < 4; i++) {
        nv.global_scale = good_g[i];
        CHECK(qsdpa_format_check(&nv) == QSDPA_OK, "nvfp4 global_scale %g", (double)good_g[i]);
    }
    static const float bad_g[] = {-1.0f, -0.0001f, NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 5; i++) {
        nv.global_scale = bad_g[i];
        CHECK(qsdpa_format_check(&nv) == QSDPA_ERR_INVALID_ARGUMENT && mentions("global_scale"),
              "nvfp4 global_scale %g accepted", (double)bad_g[i]);
    }
    qsdpa_format mx4 = {QSDPA_MODE_MXFP4, 4, 32, QSDPA_DTYPE_F32, 2.0f};
    CHECK(qsdpa_format_check(&mx4) == QSDPA_ERR_INVALID_ARGUMENT && mentions("global_scale"), "mxfp4 with G");
    qsdpa_format plain = {QSDPA_MODE_PLAIN, 16, 0, QSDPA_DTYPE_BF16, 0.0f};
    CHECK(qsdpa_format_check(&plain) == QSDPA_OK, "plain bf16");
    plain.bits = 32;
    CHECK(qsdpa_format_check(&plain) == QSDPA_ERR_INVALID_ARGUMENT && mentions("bits = 32"), "plain bf16 bits 32");
    plain = (qsdpa_format){QSDPA_MODE_PLAIN, 8, 0, QSDPA_DTYPE_U8, 0.0f};
    CHECK(qsdpa_format_check(&plain) == QSDPA_ERR_INVALID_ARGUMENT && mentions("u8"), "plain u8");
    plain = (qsdpa_format){QSDPA_MODE_PLAIN, 32, 32, QSDPA_DTYPE_F32, 0.0f};
    CHECK(qsdpa_format_check(&plain) == QSDPA_ERR_INVALID_ARGUMENT && mentions("group = 32"), "plain group");
    qsdpa_format unknown = {(qsdpa_mode)9, 4, 32, QSDPA_DTYPE_F32, 0.0f};
    CHECK(qsdpa_format_check(&unknown) == QSDPA_ERR_INVALID_ARGUMENT && mentions("mode = 9"), "unknown mode");
    CHECK(qsdpa_format_check(NULL) == QSDPA_ERR_INVALID_ARGUMENT && mentions("NULL"), "NULL format");
    CHECK(qsdpa_format_has_biases(&(qsdpa_format){QSDPA_MODE_AFFINE, 4, 64, QSDPA_DTYPE_F32, 0.0f}) == 1 &&
              qsdpa_format_has_biases(&nv) == 0 && qsdpa_format_has_biases(NULL) == 0, "has_biases");
}

static void test_row_sizes(void) {
    for (size_t b = 0; b < 6; b++)
        for (size_t g = 0; g < 3; g++) {
            qsdpa_format f = {QSDPA_MODE_AFFINE, affine_bits[b], affine_groups[g], QSDPA_DTYPE_F32, 0.0f};
            for (int64_t dim = affine_groups[g]; dim <= 1024; dim += affine_groups[g]) {
                int64_t w = -1, s = -1;
                CHECK(qsdpa_format_row_words(&f, dim, &w) == QSDPA_OK && w == dim * affine_bits[b] / 32,
                      "row_words affine %d %d dim %lld", affine_bits[b], affine_groups[g], (long long)dim);
                CHECK(qsdpa_format_row_scales(&f, dim, &s) == QSDPA_OK && s == dim / affine_groups[g], "row_scales");
            }
            int64_t w = 77;
            CHECK(qsdpa_format_row_words(&f, affine_groups[g] + 16, &w) == QSDPA_ERR_INVALID_ARGUMENT && w == 77 &&
                      mentions("not a multiple of group"), "dim not a multiple of the group");
        }
    qsdpa_format f;
    int64_t w = 77, s = 77;
    qsdpa_format_parse("mxfp8", &f);
    CHECK(qsdpa_format_row_words(&f, 128, &w) == QSDPA_OK && w == 32, "mxfp8 128 -> 32 words");
    qsdpa_format_parse("nvfp4", &f);
    CHECK(qsdpa_format_row_words(&f, 48, &w) == QSDPA_OK && w == 6, "nvfp4 48 -> 6 words");
    CHECK(qsdpa_format_row_scales(&f, 48, &s) == QSDPA_OK && s == 3, "nvfp4 48 -> 3 scales");
    qsdpa_format_parse("f16", &f);
    CHECK(qsdpa_format_row_words(&f, 6, &w) == QSDPA_OK && w == 3, "f16 6 -> 3 words");
    CHECK(qsdpa_format_row_scales(&f, 6, &s) == QSDPA_OK && s == 0, "plain has no scales");
    w = 77;
    CHECK(qsdpa_format_row_words(&f, 5, &w) == QSDPA_ERR_INVALID_ARGUMENT && w == 77 && mentions("dim = 5"),
          "f16 odd dim");
    static const int64_t bad_dims[] = {0, -32, -1, INT64_MAX};
    for (int i = 0; i < 4; i++) {
        w = 77;
        s = 77;
        CHECK(qsdpa_format_row_words(&f, bad_dims[i], &w) == QSDPA_ERR_INVALID_ARGUMENT && w == 77, "bad dim %lld",
              (long long)bad_dims[i]);
        CHECK(qsdpa_format_row_scales(&f, bad_dims[i], &s) == QSDPA_ERR_INVALID_ARGUMENT && s == 77, "bad dim");
    }
    CHECK(qsdpa_format_row_words(&f, 64, NULL) == QSDPA_ERR_INVALID_ARGUMENT, "NULL words");
    CHECK(qsdpa_format_row_words(NULL, 64, &w) == QSDPA_ERR_INVALID_ARGUMENT, "NULL format");
}

/* ---- quantize / dequantize validation -------------------------------------- */

enum { ROWS = 3, DIM = 128, CAP = ROWS * DIM };
static uint32_t codes[CAP];
static uint8_t scales[CAP * 4], biases[CAP * 4], outbuf[CAP * 4];

static bool untouched(void) {
    static uint8_t ff[CAP * 4];
    memset(ff, 0xFF, sizeof ff);
    return memcmp(codes, ff, sizeof codes) == 0 && memcmp(scales, ff, sizeof scales) == 0 &&
           memcmp(biases, ff, sizeof biases) == 0 && memcmp(outbuf, ff, sizeof outbuf) == 0;
}

static void poison_all(void) {
    test_poison(codes, sizeof codes);
    test_poison(scales, sizeof scales);
    test_poison(biases, sizeof biases);
    test_poison(outbuf, sizeof outbuf);
}

typedef struct call {
    const char *what, *needle;
    const qsdpa_format *f;
    const void *x;
    qsdpa_dtype x_dtype, scale_dtype;
    int64_t rows, dim;
    uint32_t *codes;
    void *scales, *biases;
    qsdpa_status want;
} call;

static void expect_fail(const call *c) {
    poison_all();
    qsdpa_status st = qsdpa_quantize(c->f, c->x, c->x_dtype, c->rows, c->dim, c->codes, c->scales, c->biases,
                                     c->scale_dtype);
    CHECK(st == c->want, "quantize %s: %s", c->what, qsdpa_status_string(st));
    CHECK(mentions("qsdpa_quantize") && mentions(c->needle), "quantize %s: message", c->what);
    CHECK(untouched(), "quantize %s wrote an output", c->what);
    /* the same arguments through dequantize (x becomes out) */
    poison_all();
    st = qsdpa_dequantize(c->f, c->codes ? codes : NULL, c->scales, c->biases, c->scale_dtype, c->rows, c->dim,
                          c->x ? outbuf : NULL, c->x_dtype);
    CHECK(st == c->want, "dequantize %s: %s", c->what, qsdpa_status_string(st));
    CHECK(mentions("qsdpa_dequantize"), "dequantize %s: message names the function", c->what);
    CHECK(untouched(), "dequantize %s wrote an output", c->what);
}

static void test_validation(test_rng *rng) {
    static float x[CAP];
    test_fill_normal(rng, x, QSDPA_DTYPE_F32, CAP, 1.0);
    qsdpa_format aff, mx4, bad = {QSDPA_MODE_AFFINE, 7, 64, QSDPA_DTYPE_F32, 0.0f};
    qsdpa_format_parse("affine:4:64", &aff);
    qsdpa_format_parse("mxfp4", &mx4);
    const qsdpa_dtype F32 = QSDPA_DTYPE_F32, U8 = QSDPA_DTYPE_U8;
    const qsdpa_status INV = QSDPA_ERR_INVALID_ARGUMENT;
    call cases[] = {
        {"NULL format", "format is NULL", NULL, x, F32, F32, ROWS, DIM, codes, scales, biases, INV},
        {"bits 7", "bits = 7", &bad, x, F32, F32, ROWS, DIM, codes, scales, biases, INV},
        {"rows 0", "rows = 0", &aff, x, F32, F32, 0, DIM, codes, scales, biases, INV},
        {"rows -2", "rows = -2", &aff, x, F32, F32, -2, DIM, codes, scales, biases, INV},
        {"dim 96", "dim = 96", &aff, x, F32, F32, 1, 96, codes, scales, biases, INV},
        {"dim 0", "dim = 0", &aff, x, F32, F32, ROWS, 0, codes, scales, biases, INV},
        {"NULL values", "is NULL", &aff, NULL, F32, F32, ROWS, DIM, codes, scales, biases, INV},
        {"u8 values", "dtype = u8", &aff, x, U8, F32, ROWS, DIM, codes, scales, biases, INV},
        {"NULL codes", "codes is NULL", &aff, x, F32, F32, ROWS, DIM, NULL, scales, biases, INV},
        {"NULL scales", "scales is NULL", &aff, x, F32, F32, ROWS, DIM, codes, NULL, biases, INV},
        {"affine without biases", "biases is NULL", &aff, x, F32, F32, ROWS, DIM, codes, scales, NULL, INV},
        {"affine u8 scales", "scale_dtype = u8", &aff, x, F32, U8, ROWS, DIM, codes, scales, biases, INV},
        {"mxfp4 with biases", "biases given", &mx4, x, F32, U8, ROWS, DIM, codes, scales, biases, INV},
        {"mxfp4 f32 scales", "scale_dtype = f32", &mx4, x, F32, F32, ROWS, DIM, codes, scales, NULL, INV},
        {"overflow", "overflows", &aff, x, F32, F32, INT64_MAX / 64, DIM, codes, scales, biases, QSDPA_ERR_OVERFLOW},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_fail(&cases[i]);
}

/* quantize -> dequantize of fresh data: the error bound of each format */
static void test_round_trip(test_rng *rng) {
    static const char *const formats[] = {"affine:2:32", "affine:3:64", "affine:4:64", "affine:5:128", "affine:6:32",
                                          "affine:8:128", "mxfp4", "mxfp8", "nvfp4", "f32", "f16", "bf16"};
    static float x[CAP], y[CAP];
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        qsdpa_format f;
        qsdpa_format_parse(formats[i], &f);
        bool plain = f.mode == QSDPA_MODE_PLAIN, affine = f.mode == QSDPA_MODE_AFFINE;
        qsdpa_dtype sd = affine ? QSDPA_DTYPE_F32 : QSDPA_DTYPE_U8;
        test_fill_normal(rng, x, QSDPA_DTYPE_F32, CAP, 1.0);
        poison_all();
        test_poison(y, sizeof y);
        CHECK(qsdpa_quantize(&f, x, QSDPA_DTYPE_F32, ROWS, DIM, codes, plain ? NULL : scales, affine ? biases : NULL,
                             sd) == QSDPA_OK, "quantize %s: %s", formats[i], qsdpa_last_error());
        CHECK(qsdpa_dequantize(&f, codes, plain ? NULL : scales, affine ? biases : NULL, sd, ROWS, DIM, y,
                               QSDPA_DTYPE_F32) == QSDPA_OK, "dequantize %s: %s", formats[i], qsdpa_last_error());
        /* per-element bound relative to the group's max|x| (affine: to its
         * range): half a step of the code grid, affine 1.5 steps (MLX moves the
         * scale so the edge value is exact, which stretches the far end) */
        double rel = affine ? 1.5 / ((1 << f.bits) - 1)
                     : plain ? (f.bits == 32 ? 0 : f.plain_dtype == QSDPA_DTYPE_F16 ? 1e-3 : 8e-3)
                     : f.bits == 8 ? 1.0 / 16 : 1.0 / 3;
        int group = plain ? DIM : f.group;
        double worst = 0;
        for (int64_t g0 = 0; g0 < CAP; g0 += group) {
            double lo = INFINITY, hi = -INFINITY, m = 0;
            for (int j = 0; j < group; j++) {
                m = fmax(m, fabs(x[g0 + j]));
                lo = fmin(lo, x[g0 + j]);
                hi = fmax(hi, x[g0 + j]);
            }
            double unit = affine ? hi - lo : m;
            for (int j = 0; j < group; j++) worst = fmax(worst, fabs(y[g0 + j] - x[g0 + j]) / unit);
        }
        CHECK(worst <= rel, "%s: round-trip error %.3g x max|group| exceeds %.3g", formats[i], worst, rel);
        /* the row function gives the same f32 values */
        float row[DIM];
        int64_t words, ns;
        qsdpa_format_row_words(&f, DIM, &words);
        qsdpa_format_row_scales(&f, DIM, &ns);
        for (int64_t r = 0; r < ROWS; r++) {
            qsdpa_dequantize_row(&f, codes + r * words, plain ? NULL : scales + r * ns * qsdpa_dtype_size(sd),
                                 affine ? biases + r * ns * 4 : NULL, sd, DIM, row);
            CHECK(memcmp(row, y + r * DIM, sizeof row) == 0, "%s: dequantize_row row %lld differs", formats[i],
                  (long long)r);
        }
    }
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    test_parse();
    test_check();
    test_row_sizes();
    test_validation(&rng);
    test_round_trip(&rng);
    return test_finish("format.api");
}
