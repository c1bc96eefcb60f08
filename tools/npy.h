/* Minimal .npy (NumPy array file) reader/writer for the tests and the CLI.
 *
 * Format versions 1.0 and 2.0 (3.0 read as 2.0), little-endian, C order,
 * element types <f4 <f2 |u1 |b1 <u4 <u2, rank 0..4. bf16 arrays travel as <u2
 * (NumPy has no bfloat16). A tool helper, not library API: errors return a
 * qsdpa_status (QSDPA_ERR_IO for files, QSDPA_ERR_PARSE for bad headers,
 * QSDPA_ERR_UNSUPPORTED for dtypes/ranks outside the list) with the reason in
 * qsdpa_npy_error(). */
#ifndef QSDPA_NPY_H
#define QSDPA_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "qsdpa.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qsdpa_npy_type {
    QSDPA_NPY_F4 = 0, /* <f4 float32 */
    QSDPA_NPY_F2 = 1, /* <f2 float16 */
    QSDPA_NPY_U1 = 2, /* |u1 uint8 */
    QSDPA_NPY_B1 = 3, /* |b1 bool, one byte */
    QSDPA_NPY_U4 = 4, /* <u4 uint32 */
    QSDPA_NPY_U2 = 5  /* <u2 uint16 (bf16 bit patterns) */
} qsdpa_npy_type;

#define QSDPA_NPY_MAX_RANK 4

typedef struct qsdpa_npy_array {
    qsdpa_npy_type type;
    int rank;                           /* 0..4 */
    int64_t shape[QSDPA_NPY_MAX_RANK];  /* sizes, outermost first */
    int64_t count;                      /* elements: product of shape (1 for rank 0) */
    void *data;                         /* [count] elements in host order; malloc'd, free with qsdpa_npy_free */
} qsdpa_npy_array;

/* Read a whole .npy file. On error *out is left empty (data NULL). */
qsdpa_status qsdpa_npy_read(const char *path, qsdpa_npy_array *out);
/* Write data [shape] of type as a version 1.0 file (header padded to 64 bytes, as NumPy). */
qsdpa_status qsdpa_npy_write(const char *path, qsdpa_npy_type type, int rank, const int64_t *shape,
                             const void *data);
void qsdpa_npy_free(qsdpa_npy_array *a);

/* Bytes per element; descr string ("<f4"); the matching qsdpa dtype (U2 maps
 * to BF16, the only use of u2 here; -1 for none). */
size_t qsdpa_npy_type_size(qsdpa_npy_type type);
const char *qsdpa_npy_type_descr(qsdpa_npy_type type);
int qsdpa_npy_type_dtype(qsdpa_npy_type type);

/* Reason of this thread's last failing qsdpa_npy_* call. */
const char *qsdpa_npy_error(void);

#ifdef __cplusplus
}
#endif
#endif /* QSDPA_NPY_H */
