/* Status names and the per-thread message of the last failing call. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[512];

const char *qsdpa_status_string(qsdpa_status status) {
    switch (status) {
    case QSDPA_OK: return "QSDPA_OK";
    case QSDPA_ERR_INVALID_ARGUMENT: return "QSDPA_ERR_INVALID_ARGUMENT";
    case QSDPA_ERR_UNSUPPORTED: return "QSDPA_ERR_UNSUPPORTED";
    case QSDPA_ERR_OUT_OF_MEMORY: return "QSDPA_ERR_OUT_OF_MEMORY";
    case QSDPA_ERR_OVERFLOW: return "QSDPA_ERR_OVERFLOW";
    case QSDPA_ERR_DEVICE: return "QSDPA_ERR_DEVICE";
    case QSDPA_ERR_IO: return "QSDPA_ERR_IO";
    case QSDPA_ERR_PARSE: return "QSDPA_ERR_PARSE";
    }
    return "QSDPA_ERR_UNKNOWN";
}

const char *qsdpa_last_error(void) { return last_error; }

void qsdpa_clear_error(void) { last_error[0] = '\0'; }

qsdpa_status qsdpa_fail(qsdpa_status status, const char *function, const char *fmt, ...) {
    int used = snprintf(last_error, sizeof last_error, "%s: ", function);
    if (used < 0 || (size_t)used >= sizeof last_error) used = 0;
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error + used, sizeof last_error - (size_t)used, fmt, args);
    va_end(args);
    return status;
}

bool qsdpa_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}
