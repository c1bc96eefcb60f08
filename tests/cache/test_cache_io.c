/* Cache save/load: a saved and reloaded cache has the same options, lengths,
 * bytes and attention output (bit for bit); every truncation of the file and
 * a flipped byte anywhere give QSDPA_ERR_IO, never a crash; bad arguments of
 * every cache entry point are errors that change nothing. */
#include "cache_fixture.h"

#include <stdio.h>

static const char *tmp_path(const char *name) {
    static char buf[2][256];
    static int which;
    which ^= 1;
    const char *dir = getenv("TMPDIR");
    snprintf(buf[which], sizeof buf[which], "%s/qsdpa_%s_%ld.kv", dir ? dir : "/tmp", name, (long)test_seed() % 100000);
    return buf[which];
}

static void fill_cache(test_rng *rng, qsdpa_context *ctx, qsdpa_cache *c, int64_t tokens) {
    qsdpa_cache_options o;
    qsdpa_cache_get_options(c, &o);
    for (int64_t l = 0; l < o.layers; l++) {
        int64_t done = 0;
        while (done < tokens) {
            int64_t T = test_rng_int(rng, 1, 7);
            if (T > tokens - done) T = tokens - done;
            size_t nk = (size_t)(o.batch * o.heads_kv * T * o.dim_k), nv = (size_t)(o.batch * o.heads_kv * T * o.dim_v);
            float *k = test_alloc(nk * 4), *v = test_alloc(nv * 4);
            test_fill_normal(rng, k, QSDPA_DTYPE_F32, (int64_t)nk, 1.0);
            test_fill_normal(rng, v, QSDPA_DTYPE_F32, (int64_t)nv, 1.0);
            qsdpa_tensor tk = qsdpa_tensor_4d(k, QSDPA_DTYPE_F32, o.batch, o.heads_kv, T, o.dim_k);
            qsdpa_tensor tv = qsdpa_tensor_4d(v, QSDPA_DTYPE_F32, o.batch, o.heads_kv, T, o.dim_v);
            CHECK(qsdpa_cache_append(ctx, c, l, &tk, &tv) == QSDPA_OK, "append: %s", qsdpa_last_error());
            free(k);
            free(v);
            done += T;
        }
    }
}

static void attend(qsdpa_context *ctx, qsdpa_cache *c, const float *q, float *out, int64_t layer) {
    qsdpa_cache_options o;
    qsdpa_cache_get_options(c, &o);
    qsdpa_tensor tq = qsdpa_tensor_4d((void *)q, QSDPA_DTYPE_F32, o.batch, 2 * o.heads_kv, 2, o.dim_k);
    qsdpa_tensor to = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, o.batch, 2 * o.heads_kv, 2, o.dim_v);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    p.causal = 1;
    CHECK(qsdpa_cache_attend(ctx, c, layer, &tq, &p, &to) == QSDPA_OK, "attend: %s", qsdpa_last_error());
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static unsigned char *read_all(const char *path, long n) {
    unsigned char *b = test_alloc((size_t)n);
    FILE *f = fopen(path, "rb");
    CHECK(f && fread(b, 1, (size_t)n, f) == (size_t)n, "read %s", path);
    if (f) fclose(f);
    return b;
}

static void write_all(const char *path, const unsigned char *b, long n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(b, 1, (size_t)n, f) == (size_t)n, "write %s", path);
    if (f) fclose(f);
}

/* zlib's CRC-32, bit by bit (independent of the library's table), to forge headers that pass the checksum */
static uint32_t crc32_bits(const unsigned char *p, size_t n) {
    uint32_t c = ~0u;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Headers that are well formed and checksummed but describe what the file cannot hold, a damaged version field,
 * and paths that are not files: IO errors, said before anything large is allocated. */
static void test_forged_headers(qsdpa_context *ctx, const unsigned char *bytes, long n, const char *bad) {
    qsdpa_cache *e = NULL;
    const size_t hbytes = (size_t)bytes[12] | (size_t)bytes[13] << 8 | (size_t)bytes[14] << 16 | (size_t)bytes[15] << 24;
    unsigned char *b = malloc((size_t)n);
    CHECK(b != NULL, "malloc");
    if (!b) return;
    /* every single-bit flip of the version field: corruption (IO), not "a newer version" */
    for (int bit = 0; bit < 32; bit++) {
        memcpy(b, bytes, (size_t)n);
        b[8 + bit / 8] ^= (unsigned char)(1u << (bit % 8));
        write_all(bad, b, n);
        qsdpa_status st = qsdpa_cache_load(ctx, bad, &e);
        CHECK(st == QSDPA_ERR_IO && e == NULL && strstr(qsdpa_last_error(), "version field"),
              "version bit %d flipped: %s (%s)", bit, qsdpa_status_string(st), qsdpa_last_error());
    }
    /* layer 0 claims 2^40 tokens (checksum fixed): the file's size says no before any storage is made */
    memcpy(b, bytes, (size_t)n);
    put_le(b + 120, (uint64_t)1 << 40, 8);
    put_le(b + hbytes - 4, crc32_bits(b, hbytes - 4), 4);
    write_all(bad, b, n);
    qsdpa_status st = qsdpa_cache_load(ctx, bad, &e);
    CHECK(st == QSDPA_ERR_IO && e == NULL && strstr(qsdpa_last_error(), "truncated"),
          "2^40 tokens in a small file: %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    /* a step of 2^24 (checksum fixed): the file loads, and each layer reserves its stored tokens, not a step */
    memcpy(b, bytes, (size_t)n);
    put_le(b + 56, (uint64_t)1 << 24, 8);
    put_le(b + hbytes - 4, crc32_bits(b, hbytes - 4), 4);
    write_all(bad, b, n);
    st = qsdpa_cache_load(ctx, bad, &e);
    CHECK(st == QSDPA_OK && e, "a step of 2^24: %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    if (e) {
        size_t allocated = 0, used = 0;
        qsdpa_cache_memory(e, &allocated, &used);
        CHECK(allocated <= 4 * (size_t)n + ((size_t)1 << 20), "a %ld-byte file with step 2^24 allocated %zu bytes", n,
              allocated);
        qsdpa_cache_destroy(e);
        e = NULL;
    }
    /* 2^24 layers with a header-size field to match, in a file of 120 bytes */
    memcpy(b, bytes, 120);
    put_le(b + 16, (uint64_t)1 << 24, 8);
    put_le(b + 12, 120 + 16 * ((uint64_t)1 << 24) + 4, 4);
    write_all(bad, b, 120);
    st = qsdpa_cache_load(ctx, bad, &e);
    CHECK(st == QSDPA_ERR_IO && e == NULL, "2^24 layers in 120 bytes: %s", qsdpa_status_string(st));
    st = qsdpa_cache_load(ctx, "/tmp", &e);
    CHECK(st == QSDPA_ERR_IO && e == NULL && strstr(qsdpa_last_error(), "not a regular file"),
          "a directory: %s (%s)", qsdpa_status_string(st), qsdpa_last_error());
    free(b);
}

static void test_round_trip_and_corruption(test_rng *rng, qsdpa_context *ctx, const char *kf, const char *vf,
                                           int64_t residual) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.layers = 3;
    o.batch = 2;
    o.heads_kv = 2;
    o.dim_k = 128;
    o.dim_v = 64;
    o.step = 16;
    o.residual = residual;
    o.residual_dtype = QSDPA_DTYPE_BF16;
    qsdpa_format_parse(kf, &o.k_format);
    qsdpa_format_parse(vf, &o.v_format);
    qsdpa_cache *c = NULL, *d = NULL;
    CHECK(qsdpa_cache_create(ctx, &o, &c) == QSDPA_OK, "create: %s", qsdpa_last_error());
    if (!c) return;
    fill_cache(rng, ctx, c, 37);
    CHECK(qsdpa_cache_trim(c, 3) == QSDPA_OK, "trim: %s", qsdpa_last_error());
    const char *path = tmp_path("io");
    CHECK(qsdpa_cache_save(c, path) == QSDPA_OK, "save: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_load(ctx, path, &d) == QSDPA_OK, "load: %s", qsdpa_last_error());
    if (!d) {
        qsdpa_cache_destroy(c);
        return;
    }
    size_t nq = (size_t)(o.batch * 2 * o.heads_kv * 2 * o.dim_k), no = (size_t)(o.batch * 2 * o.heads_kv * 2 * o.dim_v);
    float *q = test_alloc(nq * 4), *a = test_alloc(no * 4), *b = test_alloc(no * 4);
    test_fill_normal(rng, q, QSDPA_DTYPE_F32, (int64_t)nq, 1.0);
    for (int64_t l = 0; l < o.layers; l++) {
        int64_t la = 0, lb = 0;
        qsdpa_cache_length(c, l, &la);
        qsdpa_cache_length(d, l, &lb);
        CHECK(la == 34 && lb == la, "layer %lld: lengths %lld / %lld", (long long)l, (long long)la, (long long)lb);
        test_poison(a, no * 4);
        test_poison(b, no * 4);
        attend(ctx, c, q, a, l);
        attend(ctx, d, q, b, l);
        CHECK(memcmp(a, b, no * 4) == 0, "layer %lld: attention differs after load (K %s, V %s, R %lld)", (long long)l,
              kf, vf, (long long)residual);
    }
    /* The reloaded cache keeps growing like the original. */
    fill_cache(rng, ctx, d, 20);
    int64_t ld = 0;
    qsdpa_cache_length(d, 0, &ld);
    CHECK(ld == 54, "reloaded cache length after append %lld", (long long)ld);

    long n = file_size(path);
    unsigned char *bytes = read_all(path, n);
    const char *bad = tmp_path("bad");
    qsdpa_cache *e = NULL;
    /* Every truncation point in the header, then a spread through the payload. */
    for (long cut = 0; cut < n; cut += cut < 200 ? 1 : 1 + n / 97) {
        write_all(bad, bytes, cut);
        qsdpa_status st = qsdpa_cache_load(ctx, bad, &e);
        CHECK(st == QSDPA_ERR_IO && e == NULL, "truncated at %ld of %ld: status %s", cut, n, qsdpa_status_string(st));
    }
    for (int i = 0; i < 64; i++) {
        long at = i < 32 ? test_rng_int(rng, 0, 199) : test_rng_int(rng, 0, n - 1);
        unsigned char saved = bytes[at];
        bytes[at] ^= (unsigned char)(1u << test_rng_int(rng, 0, 7));
        write_all(bad, bytes, n);
        bytes[at] = saved;
        qsdpa_status st = qsdpa_cache_load(ctx, bad, &e);
        CHECK(st != QSDPA_OK && e == NULL, "flipped bit at %ld of %ld loaded", at, n);
    }
    test_forged_headers(ctx, bytes, n, bad);
    remove(bad);
    remove(path);
    free(bytes);
    free(q);
    free(a);
    free(b);
    qsdpa_cache_destroy(c);
    qsdpa_cache_destroy(d);
}

static void test_bad_arguments(test_rng *rng, qsdpa_context *ctx) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    qsdpa_cache *c = NULL;
    CHECK(qsdpa_cache_create(NULL, &o, &c) == QSDPA_ERR_INVALID_ARGUMENT, "NULL ctx accepted");
    CHECK(qsdpa_cache_create(ctx, NULL, &c) == QSDPA_ERR_INVALID_ARGUMENT, "NULL options accepted");
    qsdpa_cache_options bad = o;
    bad.dim_k = 100; /* not a multiple of the group */
    CHECK(qsdpa_cache_create(ctx, &bad, &c) == QSDPA_ERR_INVALID_ARGUMENT && !c, "dim_k 100 accepted");
    CHECK(strstr(qsdpa_last_error(), "dim_k") != NULL, "message does not name dim_k: %s", qsdpa_last_error());
    bad = o;
    bad.layers = 0;
    CHECK(qsdpa_cache_create(ctx, &bad, &c) == QSDPA_ERR_INVALID_ARGUMENT && !c, "0 layers accepted");
    bad = o;
    bad.k_format.bits = 7;
    CHECK(qsdpa_cache_create(ctx, &bad, &c) == QSDPA_ERR_INVALID_ARGUMENT && !c, "7-bit affine accepted");
    bad = o;
    bad.residual_dtype = QSDPA_DTYPE_U8;
    CHECK(qsdpa_cache_create(ctx, &bad, &c) == QSDPA_ERR_INVALID_ARGUMENT && !c, "u8 window accepted");
    o.residual = 4;
    CHECK(qsdpa_cache_create(ctx, &o, &c) == QSDPA_OK, "create: %s", qsdpa_last_error());
    if (!c) return;

    float k[2 * 128], v[2 * 128], q[128], out[128];
    test_fill_normal(rng, k, QSDPA_DTYPE_F32, 256, 1.0);
    test_fill_normal(rng, v, QSDPA_DTYPE_F32, 256, 1.0);
    test_fill_normal(rng, q, QSDPA_DTYPE_F32, 128, 1.0);
    qsdpa_tensor tk = qsdpa_tensor_4d(k, QSDPA_DTYPE_F32, 1, 1, 2, 128);
    qsdpa_tensor tv = qsdpa_tensor_4d(v, QSDPA_DTYPE_F32, 1, 1, 2, 128);
    qsdpa_tensor tq = qsdpa_tensor_4d(q, QSDPA_DTYPE_F32, 1, 1, 1, 128);
    qsdpa_tensor to = qsdpa_tensor_4d(out, QSDPA_DTYPE_F32, 1, 1, 1, 128);
    qsdpa_attention_params p = qsdpa_attention_default_params();
    test_poison(out, sizeof out);
    CHECK(qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to) == QSDPA_ERR_INVALID_ARGUMENT, "attend on empty layer");
    CHECK(qsdpa_cache_append(ctx, c, 1, &tk, &tv) == QSDPA_ERR_INVALID_ARGUMENT, "layer 1 of 1 accepted");
    CHECK(qsdpa_cache_append(ctx, c, 0, NULL, &tv) == QSDPA_ERR_INVALID_ARGUMENT, "NULL k accepted");
    qsdpa_tensor t3 = qsdpa_tensor_4d(v, QSDPA_DTYPE_F32, 1, 1, 1, 128);
    CHECK(qsdpa_cache_append(ctx, c, 0, &tk, &t3) == QSDPA_ERR_INVALID_ARGUMENT, "T mismatch accepted");
    qsdpa_tensor tw = qsdpa_tensor_4d(k, QSDPA_DTYPE_F32, 1, 2, 1, 128);
    CHECK(qsdpa_cache_append(ctx, c, 0, &tw, &tw) == QSDPA_ERR_INVALID_ARGUMENT, "Hkv 2 accepted");
    qsdpa_tensor tu = tk;
    tu.dtype = QSDPA_DTYPE_U32;
    CHECK(qsdpa_cache_append(ctx, c, 0, &tu, &tv) == QSDPA_ERR_INVALID_ARGUMENT, "u32 rows accepted");
    qsdpa_tensor ts = tk;
    ts.stride[3] = 2;
    ts.shape[3] = 64;
    CHECK(qsdpa_cache_append(ctx, c, 0, &ts, &tv) == QSDPA_ERR_INVALID_ARGUMENT, "strided last dim accepted");
    int64_t len = -1;
    CHECK(qsdpa_cache_length(c, 0, &len) == QSDPA_OK && len == 0, "failed appends changed the length to %lld",
          (long long)len);
    CHECK(qsdpa_cache_append(ctx, c, 0, &tk, &tv) == QSDPA_OK, "append: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_trim(c, 3) == QSDPA_ERR_INVALID_ARGUMENT, "trim 3 of 2 accepted");
    CHECK(qsdpa_cache_trim(c, -1) == QSDPA_ERR_INVALID_ARGUMENT, "trim -1 accepted");
    p.key_offset = 1;
    CHECK(qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to) == QSDPA_ERR_INVALID_ARGUMENT, "key_offset accepted");
    p = qsdpa_attention_default_params();
    unsigned char mask[3] = {1, 1, 1};
    qsdpa_tensor tm = qsdpa_tensor_4d(mask, QSDPA_DTYPE_BOOL, 1, 1, 1, 3);
    p.mask = &tm;
    CHECK(qsdpa_cache_attend(ctx, c, 0, &tq, &p, &to) == QSDPA_ERR_INVALID_ARGUMENT, "mask of 3 keys over 2 accepted");
    p.mask = NULL;
    qsdpa_tensor tq2 = qsdpa_tensor_4d(q, QSDPA_DTYPE_F32, 1, 1, 1, 64);
    CHECK(qsdpa_cache_attend(ctx, c, 0, &tq2, &p, &to) != QSDPA_OK, "q with Dk 64 accepted");
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        if (out[i] == out[i]) {
            CHECK(0, "a failing attend wrote out[%zu]", i);
            break;
        }
    CHECK(qsdpa_cache_load(ctx, "/nonexistent/qsdpa.kv", &c) == QSDPA_ERR_IO, "missing file loaded");
    CHECK(qsdpa_cache_save(c, "/nonexistent/dir/qsdpa.kv") == QSDPA_ERR_IO, "save to a missing folder");
    qsdpa_cache_destroy(c);
    qsdpa_cache_destroy(NULL);

    if (qsdpa_backend_available(QSDPA_BACKEND_CUDA)) {
        qsdpa_context_options co = qsdpa_context_default_options();
        co.backend = QSDPA_BACKEND_CUDA;
        qsdpa_context *gpu = NULL;
        if (qsdpa_context_create(&co, &gpu) == QSDPA_OK) {
            c = NULL;
            CHECK(qsdpa_cache_create(gpu, &o, &c) == QSDPA_OK, "device cache: %s", qsdpa_last_error());
            qsdpa_tensor t16 = qsdpa_tensor_4d(k, QSDPA_DTYPE_F16, 1, 1, 2, 128); /* the window's dtype, on the host */
            CHECK(qsdpa_cache_append(gpu, c, 0, &t16, &t16) == QSDPA_ERR_INVALID_ARGUMENT,
                  "host rows appended to a device cache");
            CHECK(qsdpa_cache_append(ctx, c, 0, &t16, &t16) == QSDPA_ERR_INVALID_ARGUMENT,
                  "a CPU context appended to a device cache");
            CHECK(qsdpa_cache_append(gpu, c, 0, &tk, &tv) == QSDPA_ERR_UNSUPPORTED, "f32 rows into an f16 device window");
            qsdpa_cache_destroy(c);
            qsdpa_context_destroy(gpu);
        }
    }
}

/* A window of R = 2^24 rows costs what it holds: nothing at creation, twice the rows kept after appends (it
 * grows by doubling), the same after a save and load, and attention is unchanged by the reload. Before, create
 * mapped 2R rows a layer, so a 200-byte file naming such an R asked for gigabytes. */
static void test_window_memory_follows_rows(test_rng *rng, qsdpa_context *ctx) {
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.layers = 2;
    o.heads_kv = 2;
    o.dim_k = o.dim_v = 64;
    o.residual = INT64_C(1) << 24;
    o.residual_dtype = QSDPA_DTYPE_F32;
    qsdpa_cache *c = NULL, *d = NULL;
    CHECK(qsdpa_cache_create(ctx, &o, &c) == QSDPA_OK, "create: %s", qsdpa_last_error());
    if (!c) return;
    size_t alloc = 1, used = 1;
    CHECK(qsdpa_cache_memory(c, &alloc, &used) == QSDPA_OK && alloc == 0 && used == 0,
          "an empty cache with R = 2^24 holds %zu bytes (%zu used)", alloc, used);
    fill_cache(rng, ctx, c, 45); /* chunks of 1-7 tokens: the window grows several times */
    const size_t row = (size_t)(o.heads_kv * (o.dim_k + o.dim_v)) * 4; /* a token's window bytes, K and V */
    CHECK(qsdpa_cache_memory(c, &alloc, &used) == QSDPA_OK && used == (size_t)o.layers * 45 * row &&
              alloc >= used && alloc <= 2 * used,
          "45 window tokens a layer: %zu bytes held for %zu used (want at most twice)", alloc, used);
    const char *path = tmp_path("window");
    CHECK(qsdpa_cache_save(c, path) == QSDPA_OK, "save: %s", qsdpa_last_error());
    CHECK(qsdpa_cache_load(ctx, path, &d) == QSDPA_OK, "load: %s", qsdpa_last_error());
    size_t dalloc = 0, dused = 0;
    if (d)
        CHECK(qsdpa_cache_memory(d, &dalloc, &dused) == QSDPA_OK && dused == used && dalloc <= 2 * dused,
              "loaded: %zu bytes held for %zu used", dalloc, dused);
    size_t nq = (size_t)(2 * o.heads_kv * 2 * o.dim_k), no = (size_t)(2 * o.heads_kv * 2 * o.dim_v);
    float *q = test_alloc(nq * 4), *a = test_alloc(no * 4), *b = test_alloc(no * 4);
    test_fill_normal(rng, q, QSDPA_DTYPE_F32, (int64_t)nq, 1.0);
    for (int64_t l = 0; l < o.layers && d; l++) {
        test_poison(a, no * 4);
        test_poison(b, no * 4);
        attend(ctx, c, q, a, l);
        attend(ctx, d, q, b, l);
        CHECK(memcmp(a, b, no * 4) == 0, "layer %lld: attention differs after load", (long long)l);
    }
    fill_cache(rng, ctx, d, 20); /* the loaded window grows on */
    for (int64_t l = 0; l < o.layers && d; l++) {
        int64_t len = 0;
        CHECK(qsdpa_cache_length(d, l, &len) == QSDPA_OK && len == 65, "layer %lld: %lld tokens after growth",
              (long long)l, (long long)len);
    }
    remove(path);
    free(q);
    free(a);
    free(b);
    qsdpa_cache_destroy(c);
    qsdpa_cache_destroy(d);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    qsdpa_context *ctx = NULL;
    if (qsdpa_context_create(NULL, &ctx) != QSDPA_OK) {
        fprintf(stderr, "context: %s\n", qsdpa_last_error());
        return 1;
    }
    test_round_trip_and_corruption(&rng, ctx, "affine:4:64", "affine:8:64", 0);
    test_round_trip_and_corruption(&rng, ctx, "mxfp4", "nvfp4", 5);
    test_round_trip_and_corruption(&rng, ctx, "affine:3:32", "f16", 40);
    test_bad_arguments(&rng, ctx);
    test_window_memory_follows_rows(&rng, ctx);
    qsdpa_context_destroy(ctx);
    return test_finish("test_cache_io");
}
