/* Every invalid argument of SPEC §5 (and the validator's other rules): the
 * status, a message naming the argument and its value, and the output
 * buffers byte-identical to their poison afterwards. Also qsdpa_merge,
 * qsdpa_context_create and qsdpa_format_parse errors. */
#include <math.h>
#include <string.h>

#include "../reference/kv_fixture.h"
#include "test_util.h"

#define B 2
#define HQ 4
#define HKV 2
#define LQ 3
#define LK 5
#define D 64
#define INVALID QSDPA_ERR_INVALID_ARGUMENT

/* Buffers (allocated once) and the descriptors of one valid call. */
typedef struct {
    float q[B * HQ * LQ * D];
    kv_fixture k, v;  /* K affine:4:64 (f32 scales), V mxfp4; cache capacity 7 */
    float out[B * HQ * LQ * D], lse[B * HQ * LQ];
    uint8_t mask[LQ * LK];
    float sinks[HQ];
    uint8_t spare[4096]; /* a buffer for "given but not allowed" pointers */
} buffers;

typedef struct {
    qsdpa_tensor q, out, lse, mask, sinks;
    qsdpa_qtensor k, v;
    qsdpa_attention_params prm;
    int use_mask, use_sinks;
} args;

static buffers *buf;
static qsdpa_context *ctx;

static args valid_args(void) {
    args a;
    memset(&a, 0, sizeof a);
    a.q = qsdpa_tensor_4d(buf->q, QSDPA_DTYPE_F32, B, HQ, LQ, D);
    a.out = qsdpa_tensor_4d(buf->out, QSDPA_DTYPE_F32, B, HQ, LQ, D);
    int64_t ls[3] = {B, HQ, LQ}, ms[2] = {LQ, LK}, ss[1] = {HQ};
    a.lse = qsdpa_tensor_make(buf->lse, QSDPA_DTYPE_F32, 3, ls);
    a.mask = qsdpa_tensor_make(buf->mask, QSDPA_DTYPE_BOOL, 2, ms);
    a.sinks = qsdpa_tensor_make(buf->sinks, QSDPA_DTYPE_F32, 1, ss);
    a.k = buf->k.t;
    a.v = buf->v.t;
    a.prm = qsdpa_attention_default_params();
    a.prm.scale = 0.125f;
    return a;
}

static void poison_outputs(void) {
    test_poison(buf->out, sizeof buf->out);
    test_poison(buf->lse, sizeof buf->lse);
}

static bool outputs_poisoned(void) {
    const uint8_t *o = (const uint8_t *)buf->out, *l = (const uint8_t *)buf->lse;
    for (size_t i = 0; i < sizeof buf->out; i++)
        if (o[i] != 0xFF) return false;
    for (size_t i = 0; i < sizeof buf->lse; i++)
        if (l[i] != 0xFF) return false;
    return true;
}

enum { CALL_ATTENTION, CALL_PARTIAL, CALL_SELECT };

static qsdpa_status call(args *a, int which) {
    a->prm.mask = a->use_mask ? &a->mask : NULL;
    a->prm.sinks = a->use_sinks ? &a->sinks : NULL;
    const char *name = NULL;
    switch (which) {
    case CALL_PARTIAL: return qsdpa_attention_partial(ctx, &a->q, &a->k, &a->v, &a->prm, &a->out, &a->lse);
    case CALL_SELECT: return qsdpa_attention_select(ctx, &a->q, &a->k, &a->v, &a->prm, &a->out, &name);
    default: return qsdpa_attention(ctx, &a->q, &a->k, &a->v, &a->prm, &a->out);
    }
}

/* The last error must hold every given substring (function, argument, value). */
static void expect_message(int line, const char *s1, const char *s2, const char *s3) {
    const char *msg = qsdpa_last_error();
    const char *subs[3] = {s1, s2, s3};
    for (int i = 0; i < 3; i++)
        if (subs[i] && !strstr(msg, subs[i]))
            CHECK(0, "line %d: message \"%s\" lacks \"%s\"", line, msg, subs[i]);
}

static const char *const fn_names[3] = {"qsdpa_attention:", "qsdpa_attention_partial:", "qsdpa_attention_select:"};

static void expect_fail_at(int line, args a, int which, qsdpa_status want, const char *arg, const char *value) {
    poison_outputs();
    qsdpa_status st = call(&a, which);
    CHECK(st == want, "line %d: status %s, expected %s (%s)", line, qsdpa_status_string(st),
          qsdpa_status_string(want), qsdpa_last_error());
    expect_message(line, fn_names[which], arg, value);
    CHECK(outputs_poisoned(), "line %d: an output was written on error", line);
}

/* FAIL_ALL: the same mutation through qsdpa_attention, _partial and _select. */
#define FAIL(a, st, arg, val) expect_fail_at(__LINE__, a, CALL_ATTENTION, st, arg, val)
#define FAIL_PARTIAL(a, st, arg, val) expect_fail_at(__LINE__, a, CALL_PARTIAL, st, arg, val)
#define FAIL_ALL(a, st, arg, val)                             \
    do {                                                      \
        expect_fail_at(__LINE__, a, CALL_ATTENTION, st, arg, val); \
        expect_fail_at(__LINE__, a, CALL_SELECT, st, arg, val);    \
        args pa_ = a;                                         \
        expect_fail_at(__LINE__, pa_, CALL_PARTIAL, st, arg, val); \
    } while (0)

static void expect_ok_at(int line, args a, int which) {
    poison_outputs();
    qsdpa_status st = call(&a, which);
    CHECK(st == QSDPA_OK, "line %d: valid call failed: %s", line, qsdpa_last_error());
}
#define OK(a, which) expect_ok_at(__LINE__, a, which)

static void format_errors(void) {
    args a = valid_args();
    a.k.format.mode = (qsdpa_mode)9;
    FAIL_ALL(a, INVALID, "k->format", "mode = 9");
    a = valid_args(); a.k.format.bits = 7;
    FAIL_ALL(a, INVALID, "k->format", "bits = 7");
    a = valid_args(); a.k.format.group = 48;
    FAIL_ALL(a, INVALID, "k->format", "group = 48");
    a = valid_args(); a.v.format.group = 16; /* mxfp4 is group 32 */
    FAIL_ALL(a, INVALID, "v->format", "group = 16");
    a = valid_args(); a.v.biases = qsdpa_tensor_4d(buf->spare, QSDPA_DTYPE_U8, B, HKV, LK, 2);
    FAIL_ALL(a, INVALID, "v->biases", "mxfp4");
    a = valid_args(); a.k.biases.data = NULL;
    FAIL_ALL(a, INVALID, "k->biases.data is NULL", "affine:4:64");
    a = valid_args(); a.v.scales.dtype = QSDPA_DTYPE_F32;
    FAIL_ALL(a, INVALID, "v->scales.dtype", "f32");
    a = valid_args(); a.k.scales.dtype = QSDPA_DTYPE_U8;
    FAIL_ALL(a, INVALID, "k->scales.dtype", "u8");
    a = valid_args(); a.k.biases.dtype = QSDPA_DTYPE_F16;
    FAIL_ALL(a, INVALID, "k->biases.dtype", "f16");
    a = valid_args(); a.k.codes.dtype = QSDPA_DTYPE_F32;
    FAIL_ALL(a, INVALID, "k->codes.dtype", "f32");
    /* plain K: codes of plain_dtype, D elements wide, no scales */
    a = valid_args();
    CHECK(qsdpa_format_parse("f32", &a.k.format) == QSDPA_OK, "parse f32: %s", qsdpa_last_error());
    a.k.scales.data = a.k.biases.data = NULL;
    a.k.codes = qsdpa_tensor_4d(buf->spare, QSDPA_DTYPE_F32, B, HKV, LK, D);
    a.k.codes.stride[0] = a.k.codes.stride[1] = 0; /* reads may alias; spare is small */
    OK(a, CALL_ATTENTION);
    args p = a;
    p.k.codes.shape[3] = D / 2;
    FAIL_ALL(p, INVALID, "k->codes.shape[3] = 32", "64 elements");
    p = a; p.k.codes.dtype = QSDPA_DTYPE_F16;
    FAIL_ALL(p, INVALID, "k->codes.dtype = f16", "f32");
    p = a; p.k.scales = qsdpa_tensor_4d(buf->spare + 2048, QSDPA_DTYPE_F32, B, HKV, LK, 1);
    FAIL_ALL(p, INVALID, "k->scales.data", "f32");
}

static void null_and_rank_errors(void) {
    args a = valid_args();
    poison_outputs();
    CHECK(qsdpa_attention(ctx, NULL, &a.k, &a.v, &a.prm, &a.out) == INVALID, "q NULL accepted");
    expect_message(__LINE__, "qsdpa_attention:", "q is NULL", NULL);
    CHECK(qsdpa_attention(ctx, &a.q, NULL, &a.v, &a.prm, &a.out) == INVALID, "k NULL accepted");
    expect_message(__LINE__, "qsdpa_attention:", "k is NULL", NULL);
    CHECK(qsdpa_attention(ctx, &a.q, &a.k, NULL, &a.prm, &a.out) == INVALID, "v NULL accepted");
    expect_message(__LINE__, "qsdpa_attention:", "v is NULL", NULL);
    CHECK(qsdpa_attention(ctx, &a.q, &a.k, &a.v, &a.prm, NULL) == INVALID, "out NULL accepted");
    expect_message(__LINE__, "qsdpa_attention:", "out is NULL", NULL);
    CHECK(qsdpa_attention(NULL, &a.q, &a.k, &a.v, &a.prm, &a.out) == INVALID, "ctx NULL accepted");
    expect_message(__LINE__, "qsdpa_attention:", "ctx is NULL", NULL);
    CHECK(qsdpa_attention_partial(ctx, &a.q, &a.k, &a.v, &a.prm, &a.out, NULL) == INVALID, "lse NULL accepted");
    expect_message(__LINE__, "qsdpa_attention_partial:", "lse is NULL", NULL);
    CHECK(qsdpa_attention_select(ctx, &a.q, &a.k, &a.v, &a.prm, &a.out, NULL) == INVALID, "name NULL accepted");
    expect_message(__LINE__, "qsdpa_attention_select:", "name is NULL", NULL);
    CHECK(outputs_poisoned(), "an output was written on a NULL argument");
    /* params NULL means defaults */
    poison_outputs();
    CHECK(qsdpa_attention(ctx, &a.q, &a.k, &a.v, NULL, &a.out) == QSDPA_OK, "params NULL: %s", qsdpa_last_error());

    a = valid_args(); a.q.data = NULL;
    FAIL_ALL(a, INVALID, "q->data", "NULL");
    a = valid_args(); a.k.codes.data = NULL;
    FAIL_ALL(a, INVALID, "k->codes.data", "NULL");
    a = valid_args(); a.v.scales.data = NULL;
    FAIL_ALL(a, INVALID, "v->scales.data", "NULL");
    a = valid_args(); a.out.data = NULL;
    FAIL_ALL(a, INVALID, "out->data", "NULL");
    a = valid_args(); a.q.rank = 3;
    FAIL_ALL(a, INVALID, "q->rank = 3", "4");
    a = valid_args(); a.k.codes.rank = 5;
    FAIL_ALL(a, INVALID, "k->codes.rank = 5", "4");
    a = valid_args(); a.v.scales.rank = 2;
    FAIL_ALL(a, INVALID, "v->scales.rank = 2", "4");
    a = valid_args(); a.out.rank = 2;
    FAIL_ALL(a, INVALID, "out->rank = 2", "4");
}

static void size_and_shape_errors(void) {
    args a = valid_args();
    a.q.shape[2] = 0;
    FAIL_ALL(a, INVALID, "q->shape[2] = 0", "positive");
    a = valid_args(); a.k.codes.shape[0] = -1;
    FAIL_ALL(a, INVALID, "k->codes.shape[0] = -1", "positive");
    a = valid_args(); a.k.codes.shape[2] = 0; /* Lk == 0 */
    FAIL_ALL(a, INVALID, "k->codes.shape[2] = 0", "positive");
    a = valid_args(); a.k.dim = 0;
    FAIL_ALL(a, INVALID, "k->dim = 0", "Dk");
    a = valid_args(); a.v.codes.shape[0] = 1; a.v.scales.shape[0] = 1;
    FAIL_ALL(a, INVALID, "v->codes.shape[0] = 1", "B = 2");
    a = valid_args(); a.q.shape[0] = 1; a.out.shape[0] = 1;
    FAIL_ALL(a, INVALID, "q->shape[0] = 1", "= 2");
    a = valid_args(); a.v.codes.shape[1] = 1;
    FAIL_ALL(a, INVALID, "v->codes.shape[1] = 1", "Hkv = 2");
    a = valid_args(); a.v.codes.shape[2] = 4; a.v.scales.shape[2] = 4;
    FAIL_ALL(a, INVALID, "v->codes.shape[2] = 4", "Lk = 5");
    a = valid_args(); a.k.scales.shape[3] = 2;
    FAIL_ALL(a, INVALID, "k->scales.shape[3] = 2", "1 scales");
    a = valid_args(); a.k.biases.shape[2] = 4;
    FAIL_ALL(a, INVALID, "k->biases.shape[2] = 4", "Lk = 5");
    a = valid_args(); a.v.scales.shape[1] = 1;
    FAIL_ALL(a, INVALID, "v->scales.shape[1] = 1", "Hkv = 2");
    a = valid_args(); a.k.codes.shape[3] = 9; /* 4-bit D=64 is 8 words */
    FAIL_ALL(a, INVALID, "k->codes.shape[3] = 9", "8 words");
    a = valid_args(); a.k.dim = 96; a.q.shape[3] = 96; /* group 64 */
    FAIL_ALL(a, INVALID, "k->dim = 96", "affine:4:64");
    a = valid_args(); a.k.dim = 1088; a.q.shape[3] = 1088;
    FAIL_ALL(a, INVALID, "k->dim = 1088", "1024");
    a = valid_args(); a.q.shape[1] = 3; a.out.shape[1] = 3;
    FAIL_ALL(a, INVALID, "q->shape[1] (Hq) = 3", "Hkv = 2");
    a = valid_args(); a.q.shape[3] = 32;
    FAIL_ALL(a, INVALID, "q->shape[3] = 32", "Dk) = 64");
    a = valid_args(); a.out.shape[3] = 32;
    FAIL_ALL(a, INVALID, "out->shape[3] = 32", "Dv = 64");
    a = valid_args(); a.out = qsdpa_tensor_4d(buf->out, QSDPA_DTYPE_F32, B, HQ, LQ + 1, D);
    FAIL_ALL(a, INVALID, "out->shape[2] = 4", "Lq = 3");
    a = valid_args(); a.out.dtype = QSDPA_DTYPE_F16;
    FAIL(a, INVALID, "out->dtype = f16", "f32");
    a = valid_args(); a.q.dtype = QSDPA_DTYPE_U8;
    FAIL_ALL(a, INVALID, "q->dtype = u8", "f32, f16 or bf16");
    a = valid_args(); a.q.dtype = QSDPA_DTYPE_BOOL;
    FAIL_ALL(a, INVALID, "q->dtype = bool", "f32, f16 or bf16");
}

static void partial_errors(void) {
    args a = valid_args();
    OK(a, CALL_PARTIAL);
    a.out.dtype = QSDPA_DTYPE_F16; a.q.dtype = QSDPA_DTYPE_F16; /* partial out is f32 whatever q is */
    FAIL_PARTIAL(a, INVALID, "out->dtype = f16", "f32");
    a = valid_args(); a.lse.rank = 2;
    FAIL_PARTIAL(a, INVALID, "lse->rank = 2", "3");
    a = valid_args(); a.lse.shape[2] = 2;
    FAIL_PARTIAL(a, INVALID, "lse->shape[2] = 2", "Lq = 3");
    a = valid_args(); a.lse.dtype = QSDPA_DTYPE_F16;
    FAIL_PARTIAL(a, INVALID, "lse->dtype = f16", "f32");
    a = valid_args(); a.lse.data = (char *)buf->out + 8;
    FAIL_PARTIAL(a, INVALID, "out and lse overlap", NULL);
    a = valid_args(); a.lse.data = buf->q;
    FAIL_PARTIAL(a, INVALID, "lse overlaps q", NULL);
    a = valid_args(); a.lse.stride[2] = 0;
    FAIL_PARTIAL(a, INVALID, "lse->stride", "2] = 0");
    /* slices */
    a = valid_args(); a.prm.key_offset = 2; a.prm.key_total = 7;
    OK(a, CALL_PARTIAL);
    FAIL(a, INVALID, "params->key_offset = 2", "qsdpa_attention_partial");
    a.prm.key_offset = 3;
    FAIL_PARTIAL(a, INVALID, "params->key_offset = 3", "key_total = 7");
    a.prm.key_offset = -1;
    FAIL_PARTIAL(a, INVALID, "params->key_offset = -1", "negative");
    a.prm.key_offset = 0; a.prm.key_total = -1;
    FAIL_PARTIAL(a, INVALID, "params->key_total = -1", "negative");
    a.prm.key_total = 4; /* fewer than Lk */
    FAIL_PARTIAL(a, INVALID, "params->key_offset = 0", "key_total = 4");
}

static void mask_sinks_param_errors(void) {
    args a = valid_args();
    a.use_mask = a.use_sinks = 1;
    OK(a, CALL_ATTENTION);
    OK(a, CALL_PARTIAL);
    args m = a;
    m.mask.rank = 5;
    FAIL_ALL(m, INVALID, "params->mask->rank = 5", "1 to 4");
    m = a; m.mask.shape[1] = 4; /* Lk is 5 */
    FAIL_ALL(m, INVALID, "params->mask->shape[1] = 4", "Lk = 5");
    m = a; m.mask.shape[0] = 2; /* Lq is 3 */
    FAIL_ALL(m, INVALID, "params->mask->shape[0] = 2", "Lq = 3");
    m = a; m.mask.dtype = QSDPA_DTYPE_U32;
    FAIL_ALL(m, INVALID, "params->mask->dtype = u32", "bool");
    m = a; m.mask.dtype = QSDPA_DTYPE_U8;
    FAIL_ALL(m, INVALID, "params->mask->dtype = u8", "bool");
    m = a; m.mask.data = NULL;
    FAIL_ALL(m, INVALID, "params->mask->data", "NULL");
    m = a; m.mask.stride[1] = 2;
    FAIL_ALL(m, INVALID, "params->mask->stride[1] = 2", "contiguous");
    m = a; m.mask.stride[0] = -5;
    FAIL_ALL(m, INVALID, "params->mask->stride[0] = -5", "negative");
    /* broadcast masks are fine: [1, LK] rank 2, rank 4 with stride 0, rank 1 */
    m = a; m.mask.shape[0] = 1;
    OK(m, CALL_ATTENTION);
    m = a; m.mask = qsdpa_tensor_4d(buf->mask, QSDPA_DTYPE_BOOL, B, HQ, LQ, LK);
    m.mask.stride[0] = m.mask.stride[1] = 0;
    OK(m, CALL_ATTENTION);
    m = a; m.mask.rank = 1; m.mask.shape[0] = LK; m.mask.stride[0] = 1;
    OK(m, CALL_ATTENTION);
    m = a; m.mask.rank = 1; m.mask.shape[0] = LQ; m.mask.stride[0] = 1;
    FAIL_ALL(m, INVALID, "params->mask->shape[0] = 3", "Lk = 5");

    m = a; m.sinks.rank = 2; m.sinks.shape[1] = 1;
    FAIL_ALL(m, INVALID, "params->sinks->rank = 2", "1");
    m = a; m.sinks.shape[0] = 3;
    FAIL_ALL(m, INVALID, "params->sinks->shape[0] = 3", "Hq = 4");
    m = a; m.sinks.dtype = QSDPA_DTYPE_BOOL;
    FAIL_ALL(m, INVALID, "params->sinks->dtype = bool", "f32");
    m = a; m.sinks.data = NULL;
    FAIL_ALL(m, INVALID, "params->sinks->data", "NULL");

    m = a; m.prm.causal = 1;
    FAIL_ALL(m, INVALID, "params->causal = 1", "params->mask");
    m = valid_args(); m.prm.window = 4;
    FAIL_ALL(m, INVALID, "params->window = 4", "causal");
    m.prm.causal = 1;
    OK(m, CALL_ATTENTION);
    m.prm.window = -1;
    FAIL_ALL(m, INVALID, "params->window = -1", "negative");
    m = valid_args(); m.prm.scale = INFINITY;
    FAIL_ALL(m, INVALID, "params->scale = inf", "finite");
    m.prm.scale = NAN;
    FAIL_ALL(m, INVALID, "params->scale = ", "nan");
}

static void stride_and_overlap_errors(void) {
    args a = valid_args();
    a.q.stride[3] = 2;
    FAIL_ALL(a, INVALID, "q->stride[3] = 2", "contiguous");
    a = valid_args(); a.k.codes.stride[3] = 0;
    FAIL_ALL(a, INVALID, "k->codes.stride[3] = 0", "contiguous");
    a = valid_args(); a.out.stride[3] = 2;
    FAIL_ALL(a, INVALID, "out->stride[3] = 2", "contiguous");
    a = valid_args(); a.q.stride[1] = -a.q.stride[1];
    FAIL_ALL(a, INVALID, "q->stride[1] = -192", "negative");
    a = valid_args(); a.v.scales.stride[0] = -1;
    FAIL_ALL(a, INVALID, "v->scales.stride[0] = -1", "negative");
    /* a size-1 last dim may have any stride */
    a = valid_args(); a.k.scales.stride[3] = 17;
    OK(a, CALL_ATTENTION);
    /* outputs mapping two elements to one address */
    a = valid_args(); a.out.stride[2] = 0;
    FAIL_ALL(a, INVALID, "out->strides [", "one address");
    a = valid_args(); a.out.stride[2] = D / 2; a.out.stride[1] = LQ * D / 2;
    FAIL_ALL(a, INVALID, "out->strides [", "one address");
    a = valid_args(); a.out.stride[0] = D; /* batch 1 lands on head 0's row 1 */
    FAIL_ALL(a, INVALID, "out->strides [", "one address");
    /* output over an input */
    a = valid_args(); a.out.data = buf->q;
    FAIL_ALL(a, INVALID, "out overlaps q", NULL);
    a = valid_args(); a.out.data = (char *)buf->k.codes + 4;
    FAIL_ALL(a, INVALID, "out overlaps k->codes", NULL);
    a = valid_args(); a.out.data = (char *)buf->v.scales + 4;
    FAIL_ALL(a, INVALID, "out overlaps v->scales", NULL);
    a = valid_args(); a.use_sinks = 1; a.sinks.data = (char *)buf->out + sizeof buf->out - 4;
    FAIL_ALL(a, INVALID, "out overlaps params->sinks", NULL);
    a = valid_args(); a.use_mask = 1; a.mask.data = (char *)buf->out;
    FAIL_ALL(a, INVALID, "out overlaps params->mask", NULL);
    /* data not aligned to its elements (a CUDA kernel's misaligned load faults the device context) */
    a = valid_args(); a.k.codes.data = (char *)buf->k.codes + 1;
    FAIL_ALL(a, INVALID, "k->codes.data", "not aligned to its 4-byte elements");
    a = valid_args(); a.q.data = (char *)buf->q + 2;
    FAIL_ALL(a, INVALID, "q->data", "not aligned");
    /* sizes whose byte counts overflow */
    a = valid_args(); a.q.shape[0] = (int64_t)1 << 40; a.q.stride[0] = (int64_t)1 << 30;
    FAIL_ALL(a, QSDPA_ERR_OVERFLOW, "q->stride[0] = 1073741824", "overflows");
    a = valid_args(); a.q.shape[1] = (int64_t)1 << 31; a.q.stride[1] = (int64_t)1 << 31;
    FAIL_ALL(a, QSDPA_ERR_OVERFLOW, "q->byte extent", "overflows ptrdiff_t");
    /* a one-byte tensor whose last element sits at offset INT64_MAX: 2^63 bytes fit
     * size_t but no signed offset (the fuzz case that once reached a kernel) */
    a = valid_args();
    {
        const qsdpa_tensor *s = &a.v.scales;
        int64_t rest = 0;
        for (int d = 1; d < 4; d++) rest += (s->shape[d] - 1) * s->stride[d];
        CHECK(s->dtype == QSDPA_DTYPE_U8 && s->shape[0] == 2, "fixture: v->scales must be u8 with B = 2");
        a.v.scales.stride[0] = INT64_MAX - rest;
    }
    FAIL_ALL(a, QSDPA_ERR_OVERFLOW, "v->scales.byte extent", "overflows ptrdiff_t");
    a = valid_args(); a.k.codes.shape[2] = INT64_MAX / 2; a.k.codes.stride[2] = 3;
    FAIL_ALL(a, QSDPA_ERR_OVERFLOW, "k->codes.stride[2] = 3", "overflows");
}

static void merge_errors(void) {
    float o[2][B * HQ * LQ * D], l[2][B * HQ * LQ];
    test_rng rng;
    test_rng_init(&rng, test_seed() + 7);
    test_fill_normal(&rng, o, QSDPA_DTYPE_F32, 2 * B * HQ * LQ * D, 1.0);
    test_fill_normal(&rng, l, QSDPA_DTYPE_F32, 2 * B * HQ * LQ, 1.0);
    int64_t ls[3] = {B, HQ, LQ};
    qsdpa_tensor outs[2], lses[2];
    for (int i = 0; i < 2; i++) {
        outs[i] = qsdpa_tensor_4d(o[i], QSDPA_DTYPE_F32, B, HQ, LQ, D);
        lses[i] = qsdpa_tensor_make(l[i], QSDPA_DTYPE_F32, 3, ls);
    }
    args a = valid_args();
    struct { int line; int n; qsdpa_status want; const char *s1, *s2; } cases[] = {
        {__LINE__, 0, INVALID, "n = 0", "at least one"}, {__LINE__, -1, INVALID, "n = -1", "at least one"}};
    for (size_t i = 0; i < 2; i++) {
        poison_outputs();
        CHECK(qsdpa_merge(ctx, cases[i].n, outs, lses, &a.out, &a.lse) == cases[i].want, "merge n=%d accepted", cases[i].n);
        expect_message(cases[i].line, "qsdpa_merge:", cases[i].s1, cases[i].s2);
    }
    poison_outputs();
    CHECK(qsdpa_merge(NULL, 2, outs, lses, &a.out, &a.lse) == INVALID, "merge ctx NULL accepted");
    expect_message(__LINE__, "qsdpa_merge:", "ctx is NULL", NULL);
    CHECK(qsdpa_merge(ctx, 2, NULL, lses, &a.out, &a.lse) == INVALID, "merge outs NULL accepted");
    expect_message(__LINE__, "qsdpa_merge:", "outs is NULL", NULL);
    CHECK(qsdpa_merge(ctx, 2, outs, NULL, &a.out, &a.lse) == INVALID, "merge lses NULL accepted");
    expect_message(__LINE__, "qsdpa_merge:", "lses is NULL", NULL);
    CHECK(qsdpa_merge(ctx, 2, outs, lses, NULL, &a.lse) == INVALID, "merge out NULL accepted");
    expect_message(__LINE__, "qsdpa_merge:", "out is NULL", NULL);

    qsdpa_tensor bo[2] = {outs[0], outs[1]}, bl[2] = {lses[0], lses[1]}, out = a.out, lse = a.lse;
#define MERGE_FAIL(want, s1, s2)                                                                      \
    do {                                                                                              \
        poison_outputs();                                                                             \
        qsdpa_status st_ = qsdpa_merge(ctx, 2, bo, bl, &out, &lse);                                   \
        CHECK(st_ == (want), "line %d: merge status %s (%s)", __LINE__, qsdpa_status_string(st_),    \
              qsdpa_last_error());                                                                    \
        expect_message(__LINE__, "qsdpa_merge:", s1, s2);                                             \
        CHECK(outputs_poisoned(), "line %d: merge wrote an output on error", __LINE__);              \
        bo[0] = outs[0]; bo[1] = outs[1]; bl[0] = lses[0]; bl[1] = lses[1]; out = a.out; lse = a.lse; \
    } while (0)
    bo[1].shape[2] = 2;
    MERGE_FAIL(INVALID, "outs[1].shape[2] = 2", "Lq = 3");
    bl[1].shape[0] = 1;
    MERGE_FAIL(INVALID, "lses[1].shape[0] = 1", "B = 2");
    bo[1].dtype = QSDPA_DTYPE_F16;
    MERGE_FAIL(INVALID, "outs[1].dtype = f16", "f32");
    bl[0].dtype = QSDPA_DTYPE_BF16;
    MERGE_FAIL(INVALID, "lses[0].dtype = bf16", "f32");
    bl[0].rank = 4;
    MERGE_FAIL(INVALID, "lses[0].rank = 4", "3");
    bo[0].data = NULL;
    MERGE_FAIL(INVALID, "outs[0].data", "NULL");
    out.dtype = QSDPA_DTYPE_U8;
    MERGE_FAIL(INVALID, "out->dtype = u8", "f32");
    out.shape[3] = 32;
    MERGE_FAIL(INVALID, "out->shape[3] = 32", "Dv = 64");
    lse.dtype = QSDPA_DTYPE_F16;
    MERGE_FAIL(INVALID, "lse_out->dtype = f16", "f32");
    lse.data = buf->out;
    MERGE_FAIL(INVALID, "out and lse_out overlap", NULL);
    out.stride[2] = 0;
    MERGE_FAIL(INVALID, "out->strides [", "one address");
    bo[1].data = buf->out;
    MERGE_FAIL(INVALID, "outs[1] overlaps out", NULL);
    bl[0].data = buf->lse;
    MERGE_FAIL(INVALID, "lses[0] overlaps lse_out", NULL);
    bo[0].stride[3] = 3;
    MERGE_FAIL(INVALID, "outs[0].stride[3] = 3", "contiguous");
#undef MERGE_FAIL
    poison_outputs();
    CHECK(qsdpa_merge(ctx, 2, outs, lses, &a.out, NULL) == QSDPA_OK, "valid merge failed: %s", qsdpa_last_error());
}

/* qsdpa_context_last_route: "" for NULL and before any call, the entry's name after one, and a call that fails
 * validation runs nothing, so it leaves the route as it was */
static void last_route(void) {
    CHECK(strcmp(qsdpa_context_last_route(NULL), "") == 0, "NULL ctx route '%s'", qsdpa_context_last_route(NULL));
    qsdpa_context *fresh = make_context(NULL);
    if (!fresh) return;
    CHECK(strcmp(qsdpa_context_last_route(fresh), "") == 0, "route before any call: '%s'",
          qsdpa_context_last_route(fresh));
    args a = valid_args();
    CHECK(qsdpa_attention(fresh, &a.q, &a.k, &a.v, &a.prm, &a.out) == QSDPA_OK, "valid call: %s", qsdpa_last_error());
    char ran[64];
    snprintf(ran, sizeof ran, "%s", qsdpa_context_last_route(fresh));
    CHECK(strncmp(ran, "cpu.", 4) == 0, "route after a CPU call: '%s'", ran);
    a.q.rank = 3;
    CHECK(qsdpa_attention(fresh, &a.q, &a.k, &a.v, &a.prm, &a.out) != QSDPA_OK, "rank-3 q accepted");
    CHECK(strcmp(qsdpa_context_last_route(fresh), ran) == 0, "a rejected call changed the route to '%s'",
          qsdpa_context_last_route(fresh));
    qsdpa_context_destroy(fresh);
}

static void context_and_parse_errors(void) {
    qsdpa_context *c = (qsdpa_context *)&c; /* must stay untouched on error */
    qsdpa_context *const sentinel = c;
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = (qsdpa_backend)7;
    CHECK(qsdpa_context_create(&o, &c) == INVALID && c == sentinel, "backend 7 accepted");
    expect_message(__LINE__, "qsdpa_context_create:", "options->backend = 7", NULL);
    o = qsdpa_context_default_options();
    o.num_threads = -2;
    CHECK(qsdpa_context_create(&o, &c) == INVALID && c == sentinel, "num_threads -2 accepted");
    expect_message(__LINE__, "qsdpa_context_create:", "options->num_threads = -2", NULL);
    o = qsdpa_context_default_options();
    o.kernel = "cpu.no_such_kernel";
    CHECK(qsdpa_context_create(&o, &c) == INVALID && c == sentinel, "unknown kernel accepted");
    expect_message(__LINE__, "qsdpa_context_create:", "options->kernel", "cpu.no_such_kernel");
    CHECK(qsdpa_context_create(NULL, NULL) == INVALID, "out NULL accepted");
    expect_message(__LINE__, "qsdpa_context_create:", "out is NULL", NULL);
    if (!qsdpa_backend_available(QSDPA_BACKEND_CUDA)) {
        o = qsdpa_context_default_options();
        o.backend = QSDPA_BACKEND_CUDA;
        CHECK(qsdpa_context_create(&o, &c) == QSDPA_ERR_UNSUPPORTED && c == sentinel, "CUDA context without CUDA");
        expect_message(__LINE__, "qsdpa_context_create:", "CUDA", NULL);
    }

    static const char *const bad[] = {"affine:7:64", "affine:4:48", "affine:x", "mxfp4:8:32", "nvfp5", "", "affine:4:64:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qsdpa_format f;
        memset(&f, 0xAB, sizeof f);
        qsdpa_status st = qsdpa_format_parse(bad[i], &f);
        CHECK(st == QSDPA_ERR_PARSE || st == INVALID, "qsdpa_format_parse(\"%s\") = %s", bad[i], qsdpa_status_string(st));
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        expect_message(__LINE__, "qsdpa_format_parse:", quoted, NULL);
    }
    qsdpa_format f;
    CHECK(qsdpa_format_parse(NULL, &f) == INVALID, "parse NULL text accepted");
    expect_message(__LINE__, "qsdpa_format_parse:", "text is NULL", NULL);
}

int main(void) {
    test_rng rng;
    test_rng_init(&rng, test_seed());
    buf = test_alloc(sizeof *buf);
    test_fill_normal(&rng, buf->q, QSDPA_DTYPE_F32, B * HQ * LQ * D, 1.0);
    test_fill_normal(&rng, buf->sinks, QSDPA_DTYPE_F32, HQ, 1.0);
    for (int i = 0; i < LQ * LK; i++) buf->mask[i] = test_rng_uniform(&rng) < 0.7;
    test_fill_normal(&rng, buf->spare, QSDPA_DTYPE_F32, sizeof buf->spare / 4, 1.0);
    qsdpa_format kf, vf;
    if (qsdpa_format_parse("affine:4:64", &kf) != QSDPA_OK || qsdpa_format_parse("mxfp4", &vf) != QSDPA_OK) {
        fprintf(stderr, "format parse failed: %s\n", qsdpa_last_error());
        return 1;
    }
    buf->k = kv_fixture_make(&rng, &kf, QSDPA_DTYPE_F32, B, HKV, LK, 7, D);
    buf->v = kv_fixture_make(&rng, &vf, QSDPA_DTYPE_F32, B, HKV, LK, 7, D);
    ctx = make_context(NULL);

    args a = valid_args();
    OK(a, CALL_ATTENTION);
    OK(a, CALL_PARTIAL);
    OK(a, CALL_SELECT);
    format_errors();
    null_and_rank_errors();
    size_and_shape_errors();
    partial_errors();
    mask_sinks_param_errors();
    stride_and_overlap_errors();
    merge_errors();
    context_and_parse_errors();
    last_route();

    qsdpa_context_destroy(ctx);
    kv_fixture_free(&buf->k);
    kv_fixture_free(&buf->v);
    free(buf);
    return test_finish("test_bad_input");
}
