/* .npy reader/writer: header dict parsing, size checks, version 1/2 files. */
#include "npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char npy_error[512];

const char *qsdpa_npy_error(void) { return npy_error; }

static qsdpa_status fail(qsdpa_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static qsdpa_status fail(qsdpa_status st, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(npy_error, sizeof npy_error, fmt, args);
    va_end(args);
    return st;
}

static const struct {
    const char *descr;
    size_t size;
    int dtype;
} types[] = {
    [QSDPA_NPY_F4] = {"<f4", 4, QSDPA_DTYPE_F32}, [QSDPA_NPY_F2] = {"<f2", 2, QSDPA_DTYPE_F16},
    [QSDPA_NPY_U1] = {"|u1", 1, QSDPA_DTYPE_U8},  [QSDPA_NPY_B1] = {"|b1", 1, QSDPA_DTYPE_BOOL},
    [QSDPA_NPY_U4] = {"<u4", 4, QSDPA_DTYPE_U32}, [QSDPA_NPY_U2] = {"<u2", 2, QSDPA_DTYPE_BF16},
};
#define NTYPES ((int)(sizeof types / sizeof types[0]))

size_t qsdpa_npy_type_size(qsdpa_npy_type type) { return (unsigned)type < NTYPES ? types[type].size : 0; }
const char *qsdpa_npy_type_descr(qsdpa_npy_type type) { return (unsigned)type < NTYPES ? types[type].descr : "?"; }
int qsdpa_npy_type_dtype(qsdpa_npy_type type) { return (unsigned)type < NTYPES ? types[type].dtype : -1; }

static int host_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

void qsdpa_npy_free(qsdpa_npy_array *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---- header parsing ------------------------------------------------------- */

/* Pointer just after the value's ':' for key 'name' in the dict text, or NULL. */
static const char *find_key(const char *h, const char *name) {
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s'", name);
    const char *k = strstr(h, quoted);
    if (!k) return NULL;
    k += strlen(quoted);
    while (*k == ' ') k++;
    if (*k != ':') return NULL;
    k++;
    while (*k == ' ') k++;
    return k;
}

static qsdpa_status parse_header(const char *path, const char *h, qsdpa_npy_array *a) {
    const char *d = find_key(h, "descr");
    if (!d || *d != '\'') return fail(QSDPA_ERR_PARSE, "%s: header has no 'descr' string", path);
    d++;
    const char *end = strchr(d, '\'');
    if (!end || end - d > 8) return fail(QSDPA_ERR_PARSE, "%s: bad 'descr' in header", path);
    char descr[16];
    memcpy(descr, d, (size_t)(end - d));
    descr[end - d] = '\0';
    int type = -1;
    for (int t = 0; t < NTYPES; t++)
        if (strcmp(descr, types[t].descr) == 0) type = t;
    if (type < 0 && strcmp(descr, "<u1") == 0) type = QSDPA_NPY_U1; /* '<' on one byte means the same */
    if (type < 0 && strcmp(descr, "<b1") == 0) type = QSDPA_NPY_B1;
    if (type < 0)
        return fail(QSDPA_ERR_UNSUPPORTED, "%s: dtype '%s' not supported (<f4 <f2 |u1 |b1 <u4 <u2)", path, descr);
    a->type = (qsdpa_npy_type)type;

    const char *f = find_key(h, "fortran_order");
    if (!f) return fail(QSDPA_ERR_PARSE, "%s: header has no 'fortran_order'", path);
    if (strncmp(f, "False", 5) != 0)
        return fail(QSDPA_ERR_UNSUPPORTED, "%s: Fortran-order arrays are not supported", path);

    const char *s = find_key(h, "shape");
    if (!s || *s != '(') return fail(QSDPA_ERR_PARSE, "%s: header has no 'shape' tuple", path);
    s++;
    a->rank = 0;
    a->count = 1;
    for (;;) {
        while (*s == ' ' || *s == ',') s++;
        if (*s == ')') break;
        if (*s < '0' || *s > '9') return fail(QSDPA_ERR_PARSE, "%s: bad 'shape' in header", path);
        if (a->rank == QSDPA_NPY_MAX_RANK)
            return fail(QSDPA_ERR_UNSUPPORTED, "%s: rank above %d not supported", path, QSDPA_NPY_MAX_RANK);
        errno = 0;
        char *after;
        long long v = strtoll(s, &after, 10);
        if (errno || v < 0 || v > ((int64_t)1 << 40))
            return fail(QSDPA_ERR_PARSE, "%s: shape entry out of range", path);
        a->shape[a->rank++] = v;
        if (v != 0 && a->count > ((int64_t)1 << 40) / v)
            return fail(QSDPA_ERR_PARSE, "%s: element count too large", path);
        a->count *= v;
        s = after;
    }
    return QSDPA_OK;
}

/* ---- read / write ----------------------------------------------------------- */

qsdpa_status qsdpa_npy_read(const char *path, qsdpa_npy_array *out) {
    if (!path || !out) return fail(QSDPA_ERR_INVALID_ARGUMENT, "qsdpa_npy_read: path or out is NULL");
    memset(out, 0, sizeof *out);
    if (!host_little_endian()) return fail(QSDPA_ERR_UNSUPPORTED, "%s: big-endian hosts are not supported", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return fail(QSDPA_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    unsigned char pre[12];
    qsdpa_status st = QSDPA_OK;
    char *header = NULL;
    qsdpa_npy_array a;
    memset(&a, 0, sizeof a);
    size_t hlen = 0;
    if (fread(pre, 1, 10, fp) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        st = fail(QSDPA_ERR_IO, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, fp) != 2) {
            st = fail(QSDPA_ERR_IO, "%s: truncated header", path);
            goto done;
        }
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        st = fail(QSDPA_ERR_UNSUPPORTED, "%s: .npy version %d.%d not supported", path, pre[6], pre[7]);
        goto done;
    }
    if (hlen > (1u << 20)) {
        st = fail(QSDPA_ERR_PARSE, "%s: header length %zu too large", path, hlen);
        goto done;
    }
    header = malloc(hlen + 1);
    if (!header) {
        st = fail(QSDPA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    if (fread(header, 1, hlen, fp) != hlen) {
        st = fail(QSDPA_ERR_IO, "%s: truncated header", path);
        goto done;
    }
    header[hlen] = '\0';
    st = parse_header(path, header, &a);
    if (st != QSDPA_OK) goto done;
    size_t bytes = (size_t)a.count * types[a.type].size;
    a.data = malloc(bytes ? bytes : 1);
    if (!a.data) {
        st = fail(QSDPA_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu bytes", path, bytes);
        goto done;
    }
    if (fread(a.data, 1, bytes, fp) != bytes) {
        st = fail(QSDPA_ERR_IO, "%s: truncated data (expected %zu bytes)", path, bytes);
        goto done;
    }
    if (fgetc(fp) != EOF) {
        st = fail(QSDPA_ERR_IO, "%s: trailing bytes after %zu data bytes", path, bytes);
        goto done;
    }
    *out = a;
    a.data = NULL;
done:
    free(a.data);
    free(header);
    fclose(fp);
    return st;
}

qsdpa_status qsdpa_npy_write(const char *path, qsdpa_npy_type type, int rank, const int64_t *shape,
                             const void *data) {
    if (!path || (rank > 0 && !shape)) return fail(QSDPA_ERR_INVALID_ARGUMENT, "qsdpa_npy_write: path or shape is NULL");
    if ((unsigned)type >= NTYPES) return fail(QSDPA_ERR_INVALID_ARGUMENT, "%s: unknown npy type %d", path, (int)type);
    if (rank < 0 || rank > QSDPA_NPY_MAX_RANK)
        return fail(QSDPA_ERR_UNSUPPORTED, "%s: rank %d not supported (0..%d)", path, rank, QSDPA_NPY_MAX_RANK);
    if (!host_little_endian()) return fail(QSDPA_ERR_UNSUPPORTED, "%s: big-endian hosts are not supported", path);
    char h[256];
    int n = snprintf(h, sizeof h, "{'descr': '%s', 'fortran_order': False, 'shape': (", types[type].descr);
    int64_t count = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0) return fail(QSDPA_ERR_INVALID_ARGUMENT, "%s: shape[%d] = %lld", path, i, (long long)shape[i]);
        n += snprintf(h + n, sizeof h - (size_t)n, rank == 1 ? "%lld," : (i + 1 < rank ? "%lld, " : "%lld"),
                      (long long)shape[i]);
        if (shape[i] != 0 && count > ((int64_t)1 << 40) / shape[i])
            return fail(QSDPA_ERR_OVERFLOW, "%s: element count too large", path);
        count *= shape[i];
    }
    n += snprintf(h + n, sizeof h - (size_t)n, "), }");
    /* NumPy pads with spaces so that magic + length + header is a multiple of 64, newline last. */
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    if (count > 0 && !data) return fail(QSDPA_ERR_INVALID_ARGUMENT, "%s: data is NULL", path);
    FILE *fp = fopen(path, "wb");
    if (!fp) return fail(QSDPA_ERR_IO, "%s: cannot create (%s)", path, strerror(errno));
    unsigned hlen = (unsigned)(n + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    size_t bytes = (size_t)count * types[type].size;
    int ok = fwrite(pre, 1, 10, fp) == 10 && fwrite(h, 1, (size_t)n, fp) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', fp) != EOF;
    ok = ok && fputc('\n', fp) != EOF;
    ok = ok && (bytes == 0 || fwrite(data, 1, bytes, fp) == bytes);
    if (fclose(fp) != 0) ok = 0;
    if (!ok) return fail(QSDPA_ERR_IO, "%s: write failed (%s)", path, strerror(errno));
    return QSDPA_OK;
}
