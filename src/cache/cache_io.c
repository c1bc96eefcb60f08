/* Save / load a cache (format: docs/CACHE_FORMAT.md). Little-endian fields,
 * a CRC-32 over the header and one over each layer's payload; load checks the
 * whole file's size against the header before creating the cache or allocating
 * anything beyond the header (itself no larger than the file), so a truncated
 * or corrupted file is an error, never a crash or a huge malloc: what is
 * allocated is bounded by what the file holds (twice its window rows). */
#include "cache/cache_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CACHE_MAGIC "QSDPAKV\0"
#define CACHE_VERSION 1u
#define CACHE_FIXED_HEADER 120 /* bytes before the per-layer lengths */

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib's crc32) ---------------------- */
/* Entry i is i's remainder under the reflected polynomial 0xEDB88320, eight shifts; a constant, so threads that
 * save or load at once share no state (a table filled on first use raced, in the C sense) */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xEE0E612Cu, 0x990951BAu, 0x076DC419u, 0x706AF48Fu,
    0xE963A535u, 0x9E6495A3u, 0x0EDB8832u, 0x79DCB8A4u, 0xE0D5E91Eu, 0x97D2D988u,
    0x09B64C2Bu, 0x7EB17CBDu, 0xE7B82D07u, 0x90BF1D91u, 0x1DB71064u, 0x6AB020F2u,
    0xF3B97148u, 0x84BE41DEu, 0x1ADAD47Du, 0x6DDDE4EBu, 0xF4D4B551u, 0x83D385C7u,
    0x136C9856u, 0x646BA8C0u, 0xFD62F97Au, 0x8A65C9ECu, 0x14015C4Fu, 0x63066CD9u,
    0xFA0F3D63u, 0x8D080DF5u, 0x3B6E20C8u, 0x4C69105Eu, 0xD56041E4u, 0xA2677172u,
    0x3C03E4D1u, 0x4B04D447u, 0xD20D85FDu, 0xA50AB56Bu, 0x35B5A8FAu, 0x42B2986Cu,
    0xDBBBC9D6u, 0xACBCF940u, 0x32D86CE3u, 0x45DF5C75u, 0xDCD60DCFu, 0xABD13D59u,
    0x26D930ACu, 0x51DE003Au, 0xC8D75180u, 0xBFD06116u, 0x21B4F4B5u, 0x56B3C423u,
    0xCFBA9599u, 0xB8BDA50Fu, 0x2802B89Eu, 0x5F058808u, 0xC60CD9B2u, 0xB10BE924u,
    0x2F6F7C87u, 0x58684C11u, 0xC1611DABu, 0xB6662D3Du, 0x76DC4190u, 0x01DB7106u,
    0x98D220BCu, 0xEFD5102Au, 0x71B18589u, 0x06B6B51Fu, 0x9FBFE4A5u, 0xE8B8D433u,
    0x7807C9A2u, 0x0F00F934u, 0x9609A88Eu, 0xE10E9818u, 0x7F6A0DBBu, 0x086D3D2Du,
    0x91646C97u, 0xE6635C01u, 0x6B6B51F4u, 0x1C6C6162u, 0x856530D8u, 0xF262004Eu,
    0x6C0695EDu, 0x1B01A57Bu, 0x8208F4C1u, 0xF50FC457u, 0x65B0D9C6u, 0x12B7E950u,
    0x8BBEB8EAu, 0xFCB9887Cu, 0x62DD1DDFu, 0x15DA2D49u, 0x8CD37CF3u, 0xFBD44C65u,
    0x4DB26158u, 0x3AB551CEu, 0xA3BC0074u, 0xD4BB30E2u, 0x4ADFA541u, 0x3DD895D7u,
    0xA4D1C46Du, 0xD3D6F4FBu, 0x4369E96Au, 0x346ED9FCu, 0xAD678846u, 0xDA60B8D0u,
    0x44042D73u, 0x33031DE5u, 0xAA0A4C5Fu, 0xDD0D7CC9u, 0x5005713Cu, 0x270241AAu,
    0xBE0B1010u, 0xC90C2086u, 0x5768B525u, 0x206F85B3u, 0xB966D409u, 0xCE61E49Fu,
    0x5EDEF90Eu, 0x29D9C998u, 0xB0D09822u, 0xC7D7A8B4u, 0x59B33D17u, 0x2EB40D81u,
    0xB7BD5C3Bu, 0xC0BA6CADu, 0xEDB88320u, 0x9ABFB3B6u, 0x03B6E20Cu, 0x74B1D29Au,
    0xEAD54739u, 0x9DD277AFu, 0x04DB2615u, 0x73DC1683u, 0xE3630B12u, 0x94643B84u,
    0x0D6D6A3Eu, 0x7A6A5AA8u, 0xE40ECF0Bu, 0x9309FF9Du, 0x0A00AE27u, 0x7D079EB1u,
    0xF00F9344u, 0x8708A3D2u, 0x1E01F268u, 0x6906C2FEu, 0xF762575Du, 0x806567CBu,
    0x196C3671u, 0x6E6B06E7u, 0xFED41B76u, 0x89D32BE0u, 0x10DA7A5Au, 0x67DD4ACCu,
    0xF9B9DF6Fu, 0x8EBEEFF9u, 0x17B7BE43u, 0x60B08ED5u, 0xD6D6A3E8u, 0xA1D1937Eu,
    0x38D8C2C4u, 0x4FDFF252u, 0xD1BB67F1u, 0xA6BC5767u, 0x3FB506DDu, 0x48B2364Bu,
    0xD80D2BDAu, 0xAF0A1B4Cu, 0x36034AF6u, 0x41047A60u, 0xDF60EFC3u, 0xA867DF55u,
    0x316E8EEFu, 0x4669BE79u, 0xCB61B38Cu, 0xBC66831Au, 0x256FD2A0u, 0x5268E236u,
    0xCC0C7795u, 0xBB0B4703u, 0x220216B9u, 0x5505262Fu, 0xC5BA3BBEu, 0xB2BD0B28u,
    0x2BB45A92u, 0x5CB36A04u, 0xC2D7FFA7u, 0xB5D0CF31u, 0x2CD99E8Bu, 0x5BDEAE1Du,
    0x9B64C2B0u, 0xEC63F226u, 0x756AA39Cu, 0x026D930Au, 0x9C0906A9u, 0xEB0E363Fu,
    0x72076785u, 0x05005713u, 0x95BF4A82u, 0xE2B87A14u, 0x7BB12BAEu, 0x0CB61B38u,
    0x92D28E9Bu, 0xE5D5BE0Du, 0x7CDCEFB7u, 0x0BDBDF21u, 0x86D3D2D4u, 0xF1D4E242u,
    0x68DDB3F8u, 0x1FDA836Eu, 0x81BE16CDu, 0xF6B9265Bu, 0x6FB077E1u, 0x18B74777u,
    0x88085AE6u, 0xFF0F6A70u, 0x66063BCAu, 0x11010B5Cu, 0x8F659EFFu, 0xF862AE69u,
    0x616BFFD3u, 0x166CCF45u, 0xA00AE278u, 0xD70DD2EEu, 0x4E048354u, 0x3903B3C2u,
    0xA7672661u, 0xD06016F7u, 0x4969474Du, 0x3E6E77DBu, 0xAED16A4Au, 0xD9D65ADCu,
    0x40DF0B66u, 0x37D83BF0u, 0xA9BCAE53u, 0xDEBB9EC5u, 0x47B2CF7Fu, 0x30B5FFE9u,
    0xBDBDF21Cu, 0xCABAC28Au, 0x53B39330u, 0x24B4A3A6u, 0xBAD03605u, 0xCDD70693u,
    0x54DE5729u, 0x23D967BFu, 0xB3667A2Eu, 0xC4614AB8u, 0x5D681B02u, 0x2A6F2B94u,
    0xB40BBE37u, 0xC30C8EA1u, 0x5A05DF1Bu, 0x2D02EF8Du,
};

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
        s[n++] = (section){sd[i]->resid, g[i]->resid_row_bytes, L->rcap, L->rstart, L->rlen};
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
    size_t hbytes = CACHE_FIXED_HEADER + 16 * (size_t)cache->options.layers + 4;
    unsigned char *h = malloc(hbytes);
    if (!h) return qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate %zu header bytes", hbytes);
    encode_header(cache, h, hbytes);
    /* written in place: a temporary file renamed over the target replaced symlinks, device files and the file's
     * permissions, and collided between concurrent saves (a review's tests); a failed save leaves a partial file,
     * which load rejects */
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

/* Layer l's stored lengths from the header's table (quantized tokens, window tokens). */
static void header_lengths(const unsigned char *h, int64_t l, cache_layer *L) {
    L->qlen = get_i64(h + CACHE_FIXED_HEADER + 16 * l);
    L->rlen = get_i64(h + CACHE_FIXED_HEADER + 16 * l + 8);
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
    struct stat info; /* a FIFO would block fopen; a directory reads as nothing */
    if (stat(path, &info) != 0) return qsdpa_fail(QSDPA_ERR_IO, fn, "cannot open '%s'", path);
    if (!S_ISREG(info.st_mode)) return qsdpa_fail(QSDPA_ERR_IO, fn, "'%s' is not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return qsdpa_fail(QSDPA_ERR_IO, fn, "cannot open '%s'", path);
    /* the file's size first: nothing is allocated for more than the file can hold */
    long fsize = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (fsize < 0 || fseek(f, 0, SEEK_SET) != 0)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': cannot seek", path));
    unsigned char fixed[CACHE_FIXED_HEADER];
    if (fread(fixed, 1, sizeof fixed, f) != sizeof fixed)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': truncated header", path));
    if (memcmp(fixed, CACHE_MAGIC, 8) != 0)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s' is not a qsdpa cache file (bad magic)", path));
    const uint32_t version = get_u32(fixed + 8);
    qsdpa_cache_options o;
    memset(&o, 0, sizeof o);
    o.layers = get_i64(fixed + 16);
    /* A version-1 header (read as one whatever its version field says, so that a damaged version field is told
     * from a newer file: with the field set back to 1 the damaged header's checksum matches) */
    const bool layers_ok = o.layers >= 1 && o.layers <= (INT64_C(1) << 24);
    const bool v1_sized = layers_ok && get_u32(fixed + 12) == CACHE_FIXED_HEADER + 16 * (uint64_t)o.layers + 4 &&
                          get_u32(fixed + 12) <= (unsigned long)fsize;
    const size_t hbytes = v1_sized ? CACHE_FIXED_HEADER + 16 * (size_t)o.layers + 4 : 0;
    unsigned char *h = v1_sized ? malloc(hbytes) : NULL;
    if (v1_sized && !h)
        return load_fail(f, NULL, NULL, qsdpa_fail(QSDPA_ERR_OUT_OF_MEMORY, fn, "cannot allocate the header"));
    bool header_read = false, crc_ok = false;
    if (h) {
        memcpy(h, fixed, sizeof fixed);
        header_read = fread(h + sizeof fixed, 1, hbytes - sizeof fixed, f) == hbytes - sizeof fixed;
        if (header_read) {
            put_u32(h + 8, CACHE_VERSION);
            crc_ok = crc_update(0, h, hbytes - 4) == get_u32(h + hbytes - 4);
        }
    }
    if (version != CACHE_VERSION) {
        const bool newer = version > CACHE_VERSION && !crc_ok;
        return load_fail(f, NULL, h,
                         qsdpa_fail(newer ? QSDPA_ERR_UNSUPPORTED : QSDPA_ERR_IO, fn,
                                    newer ? "'%s': file version %u, this library reads version %u"
                                          : "'%s': corrupt header (version field %u; this library writes %u)",
                                    path, version, CACHE_VERSION));
    }
    if (!layers_ok)
        return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt header (layers = %lld)", path,
                                                (long long)o.layers));
    if (!v1_sized)
        return load_fail(f, NULL, h,
                         qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt header (size %u for %lld layers, file of %ld bytes)",
                                    path, get_u32(fixed + 12), (long long)o.layers, fsize));
    if (!header_read) return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': truncated header", path));
    if (!crc_ok) return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': header checksum mismatch", path));
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
    /* The options, the lengths and then the file's size, all before the cache or any storage is: a small
     * file cannot ask for much memory */
    qsdpa_cache probe; /* geometry only: layer_payload reads options, gk, gv and the lengths */
    memset(&probe, 0, sizeof probe);
    qsdpa_status st = qsdpa_cache_check_options(fn, &o, &probe.gk, &probe.gv);
    if (st != QSDPA_OK) {
        char why[256]; /* the message buffer is rewritten below */
        snprintf(why, sizeof why, "%s", qsdpa_last_error());
        return load_fail(f, NULL, h, qsdpa_fail(st == QSDPA_ERR_INVALID_ARGUMENT ? QSDPA_ERR_IO : st, fn,
                                                "'%s': header describes no valid cache: %s", path, why));
    }
    probe.options = o;
    size_t expect = hbytes;
    for (int64_t l = 0; l < o.layers; l++) {
        cache_layer L;
        memset(&L, 0, sizeof L);
        header_lengths(h, l, &L);
        size_t payload;
        if (L.qlen < 0 || L.qlen > (INT64_C(1) << 40) || L.rlen < 0 || L.rlen > o.residual ||
            !layer_payload(&probe, &L, &payload) || payload > SIZE_MAX - 4 || expect > SIZE_MAX - 4 - payload)
            return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': corrupt lengths of layer %lld (%lld, %lld)",
                                                    path, (long long)l, (long long)L.qlen, (long long)L.rlen));
        expect += payload + 4;
        if (expect > (unsigned long)fsize) break; /* already past the file: said below */
    }
    if ((unsigned long)fsize != expect)
        return load_fail(f, NULL, h, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s' has %ld bytes, the header describes %s%zu%s",
                                                path, fsize, expect > (unsigned long)fsize ? "at least " : "", expect,
                                                (unsigned long)fsize < expect ? " (truncated)" : ""));
    qsdpa_cache *c = NULL;
    st = qsdpa_cache_create(ctx, &o, &c); /* no storage yet: the layers reserve it below */
    if (st == QSDPA_OK)
        st = qsdpa_cache_mem_refuse_capture(c, ctx->options.stream, fn,
                                            "a load allocates and copies synchronously; load outside the capture");
    if (st != QSDPA_OK) return load_fail(f, c, h, st);
    for (int64_t l = 0; l < o.layers; l++) header_lengths(h, l, &c->layers[l]);
    free(h);
    h = NULL;
    if (fseek(f, (long)hbytes, SEEK_SET) != 0)
        return load_fail(f, c, NULL, qsdpa_fail(QSDPA_ERR_IO, fn, "'%s': cannot seek", path));
    int64_t slabs = o.batch * o.heads_kv;
    void *stage = NULL; /* device caches: host staging of one slab of one section */
    size_t stage_bytes = 0;
    for (int64_t l = 0; l < o.layers; l++) {
        cache_layer *L = &c->layers[l];
        int64_t qlen = L->qlen;
        L->qlen = 0; /* nothing to copy while reserving */
        /* exactly the stored tokens (step 1): a forged step cannot make a small file reserve step-rounded
         * capacity; appends later grow in the file's step */
        st = qsdpa_cache_reserve(fn, c, ctx->options.stream, L, qlen, 1);
        /* the window for twice the rows stored (as appends grow it), at most 2R: bounded by the file too */
        if (st == QSDPA_OK) st = qsdpa_cache_window_alloc(fn, c, ctx->options.stream, L, 2 * L->rlen);
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
