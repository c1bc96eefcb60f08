/* Shared pieces of the `qsdpa` command-line tool: subcommands, argument
 * parsing, random attention problems, error measurement, device buffers. */
#ifndef QSDPA_CLI_H
#define QSDPA_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qsdpa.h"

/* Exit codes: 0 success, 1 a library or I/O error (or a failed check), 2 bad usage. */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* ---- subcommands (argv[0] is the subcommand name) ----------------------- */
int cli_demo(int argc, char **argv);
int cli_verify(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_bench_data(int argc, char **argv); /* `qsdpa bench --data DIR`: real tensors */

/* ---- argument parsing (cli_args.c) --------------------------------------
 * Every parse function returns 0, or prints "qsdpa <cmd>: <flag> = '<value>' ..."
 * and returns CLI_EXIT_USAGE, so a caller writes: if ((rc = ...)) return rc; */
bool cli_is_help(const char *arg);
/* Does argv[*i] name `flag` ("--flag value" or "--flag=value")? Then *value is
 * the value (NULL when missing) and *i is advanced past it. */
bool cli_opt(int argc, char **argv, int *i, const char *flag, const char **value);
int cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
int cli_unknown_arg(const char *cmd, const char *arg);
int cli_parse_i64(const char *cmd, const char *flag, const char *text, int64_t lo, int64_t hi, int64_t *out);
int cli_parse_int(const char *cmd, const char *flag, const char *text, int lo, int hi, int *out);
int cli_parse_u64(const char *cmd, const char *flag, const char *text, uint64_t *out);
int cli_parse_float(const char *cmd, const char *flag, const char *text, float *out);
int cli_parse_format(const char *cmd, const char *flag, const char *text, qsdpa_format *out);
int cli_parse_qdtype(const char *cmd, const char *flag, const char *text, qsdpa_dtype *out);
int cli_parse_backend(const char *cmd, const char *flag, const char *text, qsdpa_backend *out);
/* A kernel-table row name (NULL-free); *out points into text. */
int cli_parse_kernel(const char *cmd, const char *flag, const char *text, const char **out);
/* Print the library's last error for a failed call and return CLI_EXIT_FAIL. */
int cli_library_error(const char *cmd, const char *what, qsdpa_status st);

/* ---- random attention problems (cli_problem.c) --------------------------- */
typedef enum cli_mask {
    CLI_MASK_NONE = 0,
    CLI_MASK_BOOL = 1,      /* full [B,Hq,Lq,Lk] bool, ~20% false */
    CLI_MASK_ADDITIVE = 2,  /* full [B,Hq,Lq,Lk] float: N(0,1), ~20% -1e4 */
    CLI_MASK_BROADCAST = 3  /* [Lq,Lk] bool viewed as [B,Hq,Lq,Lk] with stride 0 */
} cli_mask;

typedef struct cli_case {
    int64_t batch, heads_q, heads_kv, len_q, len_k, dim_k, dim_v;
    qsdpa_format k_format, v_format;
    qsdpa_dtype q_dtype;
    qsdpa_dtype scale_dtype; /* affine scales/biases: f32, f16 or bf16 */
    cli_mask mask;
    qsdpa_dtype mask_dtype;  /* additive masks: f32/f16/bf16 */
    bool causal;
    int64_t window;          /* with causal; 0 = none */
    bool sinks;
    float scale;
} cli_case;

/* Host buffers of one problem and the tensor views over them. */
typedef struct cli_problem {
    cli_case c;
    void *q;                 /* [B,Hq,Lq,Dk] of q_dtype */
    float *k_f32, *v_f32;    /* unquantized [B,Hkv,Lk,Dk] / [B,Hkv,Lk,Dv] */
    void *k_codes, *v_codes; /* quantized rows [B,Hkv,cap,words] u32 (PLAIN: [B,Hkv,cap,D] plain_dtype) */
    void *k_scales, *k_biases, *v_scales, *v_biases;
    void *mask;              /* see cli_mask */
    void *sinks;             /* [Hq] f32 */
    int64_t capacity;        /* rows allocated per (b, h): >= Lk, the views cover Lk */
    float max_abs_v;         /* max |V| after dequantization: the error unit of SPEC §4 */
    qsdpa_tensor tq, tmask, tsinks;
    qsdpa_qtensor tk, tv;
    qsdpa_attention_params params;
    size_t out_bytes;        /* bytes of out [B,Hq,Lq,Dv] of q_dtype */
    size_t q_bytes, k_codes_bytes, v_codes_bytes, k_scale_bytes, v_scale_bytes, mask_bytes;
} cli_problem;

/* Allocate, fill with fresh 0.1*N(0,1) data from `seed`, quantize with
 * qsdpa_quantize, and build the views. Returns 0 or prints and returns 1. */
int cli_problem_build(const cli_case *c, uint64_t seed, cli_problem *p);
void cli_problem_free(cli_problem *p);
/* PLAIN f32 views of the unquantized K/V (for quantized-vs-unquantized error). */
void cli_problem_plain(const cli_problem *p, qsdpa_qtensor *k, qsdpa_qtensor *v);
/* out tensor [B,Hq,Lq,Dv] of q_dtype over `data`. */
qsdpa_tensor cli_problem_out(const cli_problem *p, void *data);
/* Bytes of the K/V cache (codes + scales + biases), what a decode step reads. */
size_t cli_problem_cache_bytes(const cli_problem *p);
/* max |a - b| over n elements of dtype. */
double cli_max_abs_diff(const void *a, const void *b, qsdpa_dtype dtype, int64_t n);
/* SPEC §4 tolerance factor for q/out dtype (times max|V|). */
double cli_tolerance(qsdpa_dtype dtype);
/* Short text of a case for messages ("B1 Hq8 Hkv2 Lq4 Lk301 D128/128 bool causal"). */
void cli_case_string(const cli_case *c, char *buf, size_t capacity);

/* ---- small utilities (cli_util.c) ---------------------------------------- */
double cli_now(void);                     /* monotonic seconds */
uint64_t cli_time_seed(void);             /* fresh seed from the clock */
uint64_t cli_rng_next(uint64_t *state);   /* splitmix64 */
double cli_rng_uniform(uint64_t *state);  /* [0,1) */
double cli_rng_normal(uint64_t *state);   /* N(0,1) */
void *cli_alloc(size_t bytes);            /* calloc that prints on failure (NULL) */
/* Convert between float and an element of dtype f32/f16/bf16. */
float cli_load(const void *base, qsdpa_dtype dtype, int64_t i);
void cli_store(void *base, qsdpa_dtype dtype, int64_t i, float value);
/* Median of n doubles (sorts in place). */
double cli_median(double *v, int n);

/* ---- CUDA device buffers (cli_device.c; stubs without CUDA) -------------- */
bool cli_device_compiled(void);
/* Copy `bytes` of host memory to a new device buffer (NULL on failure, message printed). */
void *cli_device_upload(const void *host, size_t bytes);
int cli_device_write(void *device, const void *host, size_t bytes);
int cli_device_download(void *host, const void *device, size_t bytes);
void cli_device_free(void *device);
int cli_device_sync(void);
/* *dev = *host with every buffer copied to the device and the views repointed
 * (k_f32/v_f32 stay NULL). Returns 0, or prints and returns 1. */
int cli_problem_upload(const cli_problem *host, cli_problem *dev);
void cli_problem_device_free(cli_problem *dev);

#endif
