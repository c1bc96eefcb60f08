/* tools/npy.c: write/read round trips of every type and rank, byte-identical
 * rewrites of NumPy-written golden files, and the errors for bad files. */
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "test_util.h"

static char tmp_path[256];

static void write_bytes(const void *data, size_t n) {
    FILE *f = fopen(tmp_path, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", tmp_path);
        return;
    }
    fwrite(data, 1, n, f);
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = test_alloc((size_t)len);
    *n = fread(buf, 1, (size_t)len, f);
    fclose(f);
    return buf;
}

static void test_round_trips(test_rng *rng) {
    for (int type = QSDPA_NPY_F4; type <= QSDPA_NPY_U2; type++)
        for (int rank = 0; rank <= 4; rank++) {
            int64_t shape[4], count = 1;
            for (int i = 0; i < rank; i++) count *= shape[i] = test_rng_int(rng, 1, 5);
            size_t bytes = (size_t)count * qsdpa_npy_type_size((qsdpa_npy_type)type);
            unsigned char *data = test_alloc(bytes);
            for (size_t i = 0; i < bytes; i++) data[i] = (unsigned char)test_rng_next(rng);
            if (type == QSDPA_NPY_B1)
                for (size_t i = 0; i < bytes; i++) data[i] &= 1;
            CHECK(qsdpa_npy_write(tmp_path, (qsdpa_npy_type)type, rank, shape, data) == QSDPA_OK, "write: %s",
                  qsdpa_npy_error());
            qsdpa_npy_array a;
            CHECK(qsdpa_npy_read(tmp_path, &a) == QSDPA_OK, "read back type %d rank %d: %s", type, rank,
                  qsdpa_npy_error());
            CHECK(a.type == (qsdpa_npy_type)type && a.rank == rank && a.count == count, "header type %d rank %d", type,
                  rank);
            for (int i = 0; i < rank && i < a.rank; i++) CHECK(a.shape[i] == shape[i], "shape[%d]", i);
            CHECK(a.data && memcmp(a.data, data, bytes) == 0, "data type %d rank %d", type, rank);
            qsdpa_npy_free(&a);
            free(data);
        }
    /* a zero-size array */
    int64_t zero[2] = {0, 3};
    CHECK(qsdpa_npy_write(tmp_path, QSDPA_NPY_F4, 2, zero, NULL) == QSDPA_OK, "write empty");
    qsdpa_npy_array a;
    CHECK(qsdpa_npy_read(tmp_path, &a) == QSDPA_OK && a.count == 0 && a.rank == 2, "read empty");
    qsdpa_npy_free(&a);
}

/* NumPy wrote the golden files; rewriting them must give the same bytes. */
static void test_numpy_identical(void) {
    static const char *const files[] = {"affine_b4_g64_f32.x.npy", "affine_b4_g64_f16.scales.npy",
                                        "mxfp4_bf16.x.npy", "nvfp4_f32.scales.npy", "mxfp8_f32.codes.npy",
                                        "codec_fp8_decode.out.npy"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tests/data/golden/%s", QSDPA_SOURCE_DIR, files[i]);
        qsdpa_npy_array a;
        if (qsdpa_npy_read(path, &a) != QSDPA_OK) {
            CHECK(0, "read %s: %s", path, qsdpa_npy_error());
            continue;
        }
        CHECK(qsdpa_npy_write(tmp_path, a.type, a.rank, a.shape, a.data) == QSDPA_OK, "rewrite %s", files[i]);
        size_t n1 = 0, n2 = 0;
        unsigned char *b1 = read_bytes(path, &n1), *b2 = read_bytes(tmp_path, &n2);
        CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0, "rewrite of %s differs from NumPy's bytes", files[i]);
        free(b1);
        free(b2);
        qsdpa_npy_free(&a);
    }
}

static void expect_error(const char *what, const void *bytes, size_t n, qsdpa_status want, const char *needle) {
    write_bytes(bytes, n);
    qsdpa_npy_array a;
    memset(&a, 0x5A, sizeof a);
    qsdpa_status st = qsdpa_npy_read(tmp_path, &a);
    CHECK(st == want, "%s: %s, want %s (%s)", what, qsdpa_status_string(st), qsdpa_status_string(want),
          qsdpa_npy_error());
    CHECK(strstr(qsdpa_npy_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what, qsdpa_npy_error(), needle);
    CHECK(a.data == NULL, "%s: data left allocated", what);
}

/* A v1 file with the given header dict (padded) and `data` payload bytes. */
static size_t make_file(unsigned char *buf, const char *dict, size_t data) {
    size_t n = strlen(dict);
    size_t hlen = n + 1;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, n);
    buf[10 + n] = '\n';
    memset(buf + 11 + n, 0, data);
    return 11 + n + data;
}

static void test_errors(void) {
    unsigned char buf[512];
    qsdpa_npy_array a;
    CHECK(qsdpa_npy_read("/nonexistent/dir/x.npy", &a) == QSDPA_ERR_IO && strstr(qsdpa_npy_error(), "/nonexistent"),
          "missing file");
    expect_error("bad magic", "NOTNUMPY\x01\x00", 10, QSDPA_ERR_IO, "magic");
    size_t n = make_file(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
    write_bytes(buf, n);
    CHECK(qsdpa_npy_read(tmp_path, &a) == QSDPA_OK && a.count == 6, "hand-made file: %s", qsdpa_npy_error());
    qsdpa_npy_free(&a);
    n = make_file(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20);
    expect_error("truncated data", buf, n, QSDPA_ERR_IO, "truncated");
    n = make_file(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 28);
    expect_error("trailing data", buf, n, QSDPA_ERR_IO, "trailing");
    n = make_file(buf, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16);
    expect_error("f8", buf, n, QSDPA_ERR_UNSUPPORTED, "<f8");
    n = make_file(buf, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8);
    expect_error("big-endian", buf, n, QSDPA_ERR_UNSUPPORTED, ">f4");
    n = make_file(buf, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
    expect_error("fortran", buf, n, QSDPA_ERR_UNSUPPORTED, "Fortran");
    n = make_file(buf, "{'descr': '<u4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1), }", 4);
    expect_error("rank 5", buf, n, QSDPA_ERR_UNSUPPORTED, "rank");
    n = make_file(buf, "{'descr': '<u4', 'fortran_order': False, }", 4);
    expect_error("no shape", buf, n, QSDPA_ERR_PARSE, "shape");
    n = make_file(buf, "{'descr': '<u4', 'fortran_order': False, 'shape': (x), }", 4);
    expect_error("bad shape", buf, n, QSDPA_ERR_PARSE, "shape");
    memcpy(buf, "\x93NUMPY\x04\x00\x10\x00", 10);
    expect_error("version 4", buf, 10, QSDPA_ERR_UNSUPPORTED, "version");
    int64_t shape[5] = {1, 1, 1, 1, 1};
    float f = 0;
    CHECK(qsdpa_npy_write(tmp_path, QSDPA_NPY_F4, 5, shape, &f) == QSDPA_ERR_UNSUPPORTED, "write rank 5");
    CHECK(qsdpa_npy_write("/nonexistent/dir/x.npy", QSDPA_NPY_F4, 1, shape, &f) == QSDPA_ERR_IO, "write bad path");
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    const char *dir = getenv("TMPDIR");
    snprintf(tmp_path, sizeof tmp_path, "%s/qsdpa_npy_test_%llu.npy", dir && *dir ? dir : "/tmp",
             (unsigned long long)test_rng_next(&rng));
    test_round_trips(&rng);
    test_numpy_identical();
    test_errors();
    remove(tmp_path);
    return test_finish("format.npy");
}
