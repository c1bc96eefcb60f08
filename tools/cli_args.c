/* Argument parsing for the qsdpa tool: every bad flag or value is reported
 * with the flag and the value, and maps to exit code 2. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

bool cli_is_help(const char *arg) { return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0; }

bool cli_opt(int argc, char **argv, int *i, const char *flag, const char **value) {
    const char *arg = argv[*i];
    size_t n = strlen(flag);
    if (strncmp(arg, flag, n) != 0) return false;
    if (arg[n] == '=') {
        *value = arg + n + 1;
        return true;
    }
    if (arg[n] != '\0') return false;
    /* the next argument is the value unless it is another flag ("--out --causal" is a missing value, not a file
     * named --causal; "--flag=--x" still passes one that starts with dashes) */
    *value = *i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0 ? argv[*i + 1] : NULL;
    if (*value) (*i)++;
    return true;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qsdpa %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see 'qsdpa %s --help')\n", cmd);
    return CLI_EXIT_USAGE;
}

int cli_unknown_arg(const char *cmd, const char *arg) {
    return cli_usage_error(cmd, "unknown argument '%s'", arg);
}

static int missing(const char *cmd, const char *flag) {
    return cli_usage_error(cmd, "%s needs a value", flag);
}

int cli_parse_i64(const char *cmd, const char *flag, const char *text, int64_t lo, int64_t hi, int64_t *out) {
    if (!text) return missing(cmd, flag);
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end)
        return cli_usage_error(cmd, "%s = '%s' is not an integer", flag, text);
    if (v < lo || v > hi)
        return cli_usage_error(cmd, "%s = %lld is outside [%" PRId64 ", %" PRId64 "]", flag, v, lo, hi);
    *out = (int64_t)v;
    return 0;
}

int cli_parse_int(const char *cmd, const char *flag, const char *text, int lo, int hi, int *out) {
    int64_t v = 0;
    int rc = cli_parse_i64(cmd, flag, text, lo, hi, &v);
    if (!rc) *out = (int)v;
    return rc;
}

int cli_parse_u64(const char *cmd, const char *flag, const char *text, uint64_t *out) {
    if (!text) return missing(cmd, flag);
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10); /* decimal: "010" is ten, not octal eight */
    if (errno || end == text || *end || text[0] == '-')
        return cli_usage_error(cmd, "%s = '%s' is not a non-negative integer", flag, text);
    *out = (uint64_t)v;
    return 0;
}

int cli_parse_float(const char *cmd, const char *flag, const char *text, float *out) {
    if (!text) return missing(cmd, flag);
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v))
        return cli_usage_error(cmd, "%s = '%s' is not a finite number", flag, text);
    *out = (float)v;
    return 0;
}

int cli_parse_format(const char *cmd, const char *flag, const char *text, qsdpa_format *out) {
    if (!text) return missing(cmd, flag);
    if (qsdpa_format_parse(text, out) != QSDPA_OK)
        return cli_usage_error(cmd, "%s = '%s' is not a format (%s)", flag, text, qsdpa_last_error());
    return 0;
}

int cli_parse_qdtype(const char *cmd, const char *flag, const char *text, qsdpa_dtype *out) {
    if (!text) return missing(cmd, flag);
    if (strcmp(text, "f32") == 0) *out = QSDPA_DTYPE_F32;
    else if (strcmp(text, "f16") == 0) *out = QSDPA_DTYPE_F16;
    else if (strcmp(text, "bf16") == 0) *out = QSDPA_DTYPE_BF16;
    else return cli_usage_error(cmd, "%s = '%s' is not one of f32, f16, bf16", flag, text);
    return 0;
}

int cli_parse_backend(const char *cmd, const char *flag, const char *text, qsdpa_backend *out) {
    if (!text) return missing(cmd, flag);
    if (strcmp(text, "cpu") == 0) *out = QSDPA_BACKEND_CPU;
    else if (strcmp(text, "cuda") == 0) *out = QSDPA_BACKEND_CUDA;
    else return cli_usage_error(cmd, "%s = '%s' is not one of cpu, cuda", flag, text);
    return 0;
}

int cli_parse_kernel(const char *cmd, const char *flag, const char *text, const char **out) {
    if (!text) return missing(cmd, flag);
    for (int i = 0; i < qsdpa_kernel_count(); i++) {
        qsdpa_kernel_info k;
        if (qsdpa_kernel_get(i, &k) == QSDPA_OK && strcmp(k.name, text) == 0) {
            *out = text;
            return 0;
        }
    }
    return cli_usage_error(cmd, "%s = '%s' is not a row of the kernel table (see 'qsdpa info')", flag, text);
}

int cli_library_error(const char *cmd, const char *what, qsdpa_status st) {
    fprintf(stderr, "qsdpa %s: %s failed: %s: %s\n", cmd, what, qsdpa_status_string(st), qsdpa_last_error());
    return CLI_EXIT_FAIL;
}
