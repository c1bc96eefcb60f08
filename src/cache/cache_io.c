/* Save / load a cache (format: docs/CACHE_FORMAT.md). Little-endian fields,
 * a CRC-32 over the header and one over each layer's payload; load checks the
 * whole file's size against the header before allocating anything, so a
 * truncated or corrupted file is an error, never a crash or a huge malloc. */
#include "cache/cache_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MAGIC "QSDPAKV\0"
#define CACHE_VERSION 1u
#define CACHE_FIXED_HEADER 120 /* bytes before the per-layer lengths */

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib's crc32) ---------------------- */
static uint32_t crc_table[256];

static void crc_init(void) {
    if (crc_table[1]) return; /* idempotent; racing writers store equal values */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t n) {
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian fields ------------------------------------------------- */
static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_i64(unsigned char *p, int64_t v) {
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static int64_t get_i64(const unsigned char *p) {
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u |= (uint64_t)p[i] << (8 * i);
    return (int64_t)u;
}

static bool host_is_little_endian(void) {
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void put_format(unsigned char *p, const qsdpa_format *f) {
    uint32_t g;
    memcpy(&g, &f->global_scale, 4);
    put_u32(p, (uint32_t)f->mode);
    put_u32(p + 4, (uint32_t)f->bits);
    put_u32(p + 8, (uint32_t)f->group);
    put_u32(p + 12, (uint32_t)f->plain_dtype);
    put_u32(p + 16, g);
}
static void get_format(const unsigned char *p, qsdpa_format *f) {
    memset(f, 0, sizeof *f);
    uint32_t g = get_u32(p + 16);
    f->mode = (qsdpa_mode)(int)get_u32(p);
    f->bits = (int)get_u32(p + 4);
    f->group = (int)get_u32(p + 8);
    f->plain_dtype = (qsdpa_dtype)(int)get_u32(p + 12);
    memcpy(&f->global_scale, &g, 4);
}

/* Layout of the fixed header: see docs/CACHE_FORMAT.md. */
static void encode_header(const qsdpa_cache *c, unsigned char *h, size_t bytes) {
    const qsdpa_cache_options *o = &c->options;
    memset(h, 0, bytes);
    memcpy(h, CACHE_MAGIC, 8);
    put_u32(h + 8, CACHE_VERSION);
    put_u32(h + 12, (uint32_t)bytes);
    put_i64(h + 16, o->layers);
    put_i64(h + 24, o->batch);
    put_i64(h + 32, o->heads_kv);
    put_i64(h + 40, o->dim_k);
    put_i64(h + 48, o->dim_v);
    put_i64(h + 56, o->step);
    put_i64(h + 64, o->residual);
    put_u32(h + 72, (uint32_t)o->scale_dtype);
    put_u32(h + 76, (uint32_t)o->residual_dtype);
    put_format(h + 80, &o->k_format);
    put_format(h + 100, &o->v_format);
    for (int64_t l = 0; l < o->layers; l++) {
        put_i64(h + CACHE_FIXED_HEADER + 16 * l, c->layers[l].qlen);
        put_i64(h + CACHE_FIXED_HEADER + 16 * l + 8, c->layers[l].rlen);
    }
    put_u32(h + bytes - 4, crc_update(0, h, bytes - 4));
}

/* Each section of one layer, in file order: base pointer of its (b, h) slabs,
 * row bytes, rows per slab in memory, first row and count stored. */
typedef struct section {
    char *base;
    size_t row_bytes;
    int64_t slab_rows, first, count;
} section;

static int layer_sections(const qsdpa_cache *c, const cache_layer *L, section s[8]) {
    const cache_geom *g[2] = {&c->gk, &c->gv};
    const cache_side *sd[2] = {&L->k, &L->v};
    int n = 0;
    for (int i = 0; i < 2; i++) {
        s[n++] = (section){sd[i]->codes, g[i]->code_row_bytes, L->capacity, 0, L->qlen};
        if (g[i]->nscales) s[n++] = (section){sd[i]->scales, g[i]->scale_row_bytes, L->capacity, 0, L->qlen};
        if (g[i]->has_biases) s[n++] = (section){sd[i]->biases, g[i]->scale_row_bytes, L->capacity, 0, L->qlen};
    }
    for (int i = 0; i < 2 && c->options.residual > 0; i++)
        s[n++] = (section){sd[i]->resid, g[i]->resid_row_bytes, 2 * c->options.residual, L->rstart, L->rlen};
    return n;
}

/* Payload bytes of one layer (sum of its sections), checked. */
static bool layer_payload(const qsdpa_cache *c, const cache_layer *L, size_t *bytes) {
    section s[8];
    int n = layer_sections(c, L, s);
    size_t slabs = (size_t)(c->options.batch * c->options.heads_kv), total = 0, part;
    for (int i = 0; i < n; i++) {
        if (!qsdpa_mul_size(slabs, (size_t)s[i].count, &part) || !qsdpa_mul_size(part, s[i].row_bytes, &part) ||
            total > SIZE_MAX - part)
            return false;
        total += part;
    }
    *bytes = total;
    return true;
}

qsdpa_status qsdpa_cache_save(const qsdpa_cache *cache, const char *path) {
    qsdpa_clear_error();
    const char *fn = __func__;
    if (!cache) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "cache is NULL");
    if (!path) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "path is NULL");
    if (!host_is_little_endian())
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "cache files are little-endian; this host is not");
    crc_init();
    size_t hbytes = CACHE_FIXED_HEADER + 16 * (size_t)cache->options.layers + 4;
    unsigned char *h = malloc(hbytes);
    if (!h) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate %zu header bytes", hbytes);
    encode_header(cache, h, hbytes);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(h);
        return qsdpa_fail(QSDPA_ERR_IO, fn, "cannot open '%s' for writing", path);
    }
    bool ok = fwrite(h, 1, hbytes, f) == hbytes;
    free(h);
    int64_t slabs = cache->options.batch * cache->options.heads_kv;
    void *stage = NULL; /* device caches: one slab of one section at a time through host memory */
    size_t stage_bytes = 0;
    qsdpa_status st = QSDPA_OK;
    for (int64_t l = 0; l < cache->options.layers && ok; l++) {
        section s[8];
        int n = layer_sections(cache, &cache->layers[l], s);
        uint32_t crc = 0;
        for (int i = 0; i < n && ok; i++)
            for (int64_t b = 0; b < slabs && ok && s[i].count > 0; b++) {
                const char *rows = s[i].base + (size_t)(b * s[i].slab_rows + s[i].first) * s[i].row_bytes;
                size_t len = (size_t)s[i].count * s[i].row_bytes;
                if (cache->device) {
                    if (len > stage_bytes) {
                        free(stage);
                        stage = malloc(len);
                        stage_bytes = stage ? len : 0;
                        if (!stage) st = qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate %zu bytes", len);
                    }
                    if (st == QSDPA_OK) st = qsdpa_cache_mem_to_host(cache, stage, rows, len);
                    if (st != QSDPA_OK) {
                        ok = false;
                        break;
                    }
                    rows = stage;
                }
                crc = crc_update(crc, rows, len);
                ok = fwrite(rows, 1, len, f) == len;
            }
        unsigned char tail[4];
        put_u32(tail, crc);
        ok = ok && fwrite(tail, 1, 4, f) == 4;
    }
    free(stage);
    if (fclose(f) != 0) ok = false;
    if (st != QSDPA_OK) return st;
    if (!ok) return qsdpa_fail(QSDPA_ERR_IO, fn, "writing '%s' failed (disk full?)", path);
    return QSDPA_OK;
}

static qsdpa_status load_fail(FILE *f, qsdpa_cache *c, void *h, qsdpa_status st) {
    if (f) fclose(f);
    qsdpa_cache_destroy(c);
    free(h);
    return st;
}

qsdpa_status qsdpa_cache_load(qsdpa_context *ctx, const char *path, qsdpa_cache **out) {
    qsdpa_clear_error();
    const char *fn = __func__;
    if (!ctx) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "ctx is NULL");
    if (!path) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "path is NULL");
    if (!out) return qsdpa_fail(QSDPA_ERR_INVALID_ARGUMENT, fn, "out is NULL");
    if (!host_is_little_endian())
        return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, fn, "cache files are little-endian; this host is not");
    crc_init();
    FILE *f = fopen(path, "rb");
    if (!f) return qsdpa_fail(QSDPA_ERR_IO, fn, "cannot open '%s'", path);
    unsigned char fixed[CACHE_FIXED_HEADER];
    if (fread(fixed, 1, sizeof fixed, f) != sizeof fixed)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': truncated header", path));
    if (memcmp(fixed, CACHE_MAGIC, 8) != 0)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s' is not a qsdpa cache file (bad magic)", path));
    uint32_t version = get_u32(fixed + 8);
    if (version != CACHE_VERSION)
        return load_fail(f, NULL, NULL,
                         qsdpa_fail(version > CACHE_VERSION ? QSDPA_ERR_UNSUPPORTED : QSDPA_ERR_IO, fn,
                                    "'%s': file version %u, this library reads version %u", path, version,
                                    CACHE_VERSION));
    qsdpa_cache_options o;
    memset(&o, 0, sizeof o);
    o.layers = get_i64(fixed + 16);
    if (o.layers < 1 || o.layers > (INT64_C(1) << 24))
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt header (layers = %lld)", path,
                                                   (long long)o.layers));
    size_t hbytes = CACHE_FIXED_HEADER + 16 * (size_t)o.layers + 4;
    if (get_u32(fixed + 12) != hbytes)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt header (size %u)", path,
                                                   get_u32(fixed + 12)));
    unsigned char *h = malloc(hbytes);
    if (!h) return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate the header"));
    memcpy(h, fixed, sizeof fixed);
    if (fread(h + sizeof fixed, 1, hbytes - sizeof fixed, f) != hbytes - sizeof fixed)
        return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': truncated header", path));
    if (crc_update(0, h, hbytes - 4) != get_u32(h + hbytes - 4))
        return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': header checksum mismatch", path));
    o.batch = get_i64(h + 24);
    o.heads_kv = get_i64(h + 32);
    o.dim_k = get_i64(h + 40);
    o.dim_v = get_i64(h + 48);
    o.step = get_i64(h + 56);
    o.residual = get_i64(h + 64);
    o.scale_dtype = (qsdpa_dtype)(int)get_u32(h + 72);
    o.residual_dtype = (qsdpa_dtype)(int)get_u32(h + 76);
    get_format(h + 80, &o.k_format);
    get_format(h + 100, &o.v_format);
    qsdpa_cache *c = NULL;
    qsdpa_status st = qsdpa_cache_create(ctx, &o, &c);
    if (st != QSDPA_OK) {
        char why[256]; /* the message buffer is rewritten below */
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return load_fail(f, NULL, h, qsdpa_fail(st == QSDPA_ERR_INVALID_ARGUMENT ? QSDPA_ERR_IO : st, fn,
                                                "'%s': header describes no valid cache: %s", path, why));
    }
    /* Lengths, then the file's size, before any storage is allocated. */
    size_t expect = hbytes;
    for (int64_t l = 0; l < o.layers; l++) {
        cache_layer *L = &c->layers[l];
        L->qlen = get_i64(h + CACHE_FIXED_HEADER + 16 * l);
        L->rlen = get_i64(h + CACHE_FIXED_HEADER + 16 * l + 8);
        size_t payload;
        if (L->qlen < 0 || L->qlen > (INT64_C(1) << 40) || L->rlen < 0 || L->rlen > o.residual ||
            !layer_payload(c, L, &payload) || expect > SIZE_MAX - payload - 4)
            return load_fail(f, c, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt lengths of layer %lld (%lld, %lld)",
                                                 path, (long long)l, (long long)L->qlen, (long long)L->rlen));
        expect += payload + 4;
    }
    free(h);
    h = NULL;
    if (fseek(f, 0, SEEK_END) != 0)
        return load_fail(f, c, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': cannot seek", path));
    long size = ftell(f);
    if (size < 0 || (unsigned long)size != expect)
        return load_fail(f, c, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s' has %ld bytes, the header describes %zu%s",
                                                path, size, expect, (size_t)size < expect ? " (truncated)" : ""));
    if (fseek(f, (long)hbytes, SEEK_SET) != 0)
        return load_fail(f, c, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': cannot seek", path));
    int64_t slabs = o.batch * o.heads_kv;
    void *stage = NULL; /* device caches: host staging of one slab of one section */
    size_t stage_bytes = 0;
    for (int64_t l = 0; l < o.layers; l++) {
        cache_layer *L = &c->layers[l];
        int64_t qlen = L->qlen;
        L->qlen = 0; /* nothing to copy while reserving */
        st = qsdpa_cache_reserve(fn, c, ctx->options.stream, L, qlen);
        if (st != QSDPA_OK) return load_fail(f, c, stage, st);
        L->qlen = qlen;
        section s[8];
        int n = layer_sections(c, L, s);
        uint32_t crc = 0;
        for (int i = 0; i < n; i++)
            for (int64_t b = 0; b < slabs && s[i].count > 0; b++) {
                char *rows = s[i].base + (size_t)(b * s[i].slab_rows + s[i].first) * s[i].row_bytes;
                size_t len = (size_t)s[i].count * s[i].row_bytes;
                char *dst = rows;
                if (c->device) { /* through host memory; sizes were checked against the file above */
                    if (len > stage_bytes) {
                        free(stage);
                        stage = malloc(len);
                        stage_bytes = stage ? len : 0;
                        if (!stage)
                            return load_fail(f, c, NULL, qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn,
                                                                    "cannot allocate %zu bytes", len));
                    }
                    dst = stage;
                }
                if (fread(dst, 1, len, f) != len)
                    return load_fail(f, c, stage, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': truncated layer %lld", path,
                                                             (long long)l));
                crc = crc_update(crc, dst, len);
                if (c->device && (st = qsdpa_cache_mem_from_host(c, rows, dst, len)) != QSDPA_OK)
                    return load_fail(f, c, stage, st);
            }
        unsigned char tail[4];
        if (fread(tail, 1, 4, f) != 4 || get_u32(tail) != crc)
            return load_fail(f, c, stage, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': checksum mismatch in layer %lld", path,
                                                     (long long)l));
    }
    free(stage);
    fclose(f);
    *out = c;
    return QSDPA_OK;
}
