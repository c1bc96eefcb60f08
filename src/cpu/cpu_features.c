/* Availability of the CPU kernel rows (feature bits from qsdpa_cpu_features,
 * src/core/cpu_features.c, which checks OSXSAVE/XGETBV as well as CPUID). */
#include "cpu/cpu_attention.h"

#include <stdatomic.h>
#include <stdlib.h>

bool qsdpa_cpu_avx2_available(void) {
#ifdef QSDPA_HAVE_AVX2_KERNELS
    return (qsdpa_cpu_features() & 7u) == 7u; /* AVX2 + FMA + F16C */
#else
    return false;
#endif
}

bool qsdpa_cpu_vnni_available(void) {
#ifdef QSDPA_HAVE_AVX2_KERNELS
    return (qsdpa_cpu_features() & 15u) == 15u; /* the AVX2 set + AVX512 F/BW/VL/VNNI */
#else
    return false;
#endif
}

bool qsdpa_cpu_amx_available(void) {
#ifdef QSDPA_HAVE_AVX2_KERNELS
    const char *knob = getenv("QSDPA_CPU_AMX"); /* 0: the AVX-512 tier instead (a benchmark's baseline) */
    return (qsdpa_cpu_features() & 47u) == 47u && !(knob && knob[0] == '0');
#else
    return false;
#endif
}

/* Whether the AMX row's int8 kernels serve its calls of 1-16 rows (else 1-8 rows a KV head run the AVX-512 kernels and 9-16
 * the bf16 tiles). The knob is read once: the plan and the kernels a call runs must agree on it. */
bool qsdpa_cpu_amx_int8_available(void) {
#ifdef QSDPA_HAVE_AVX2_KERNELS
    static _Atomic int cached = -1; /* racing first calls store the same answer */
    int on = atomic_load_explicit(&cached, memory_order_relaxed);
    if (on < 0) {
        const char *knob = getenv("QSDPA_CPU_AMX_INT8"); /* 0: the kernels above (a benchmark's baseline) */
        on = (qsdpa_cpu_features() & 64u) && !(knob && knob[0] == '0');
        atomic_store_explicit(&cached, on, memory_order_relaxed);
    }
    return on;
#else
    return false;
#endif
}

bool qsdpa_cpu_amx_int8_rows(int64_t nr) { return nr <= CPU_AMX_ROWS && qsdpa_cpu_amx_int8_available(); }

bool qsdpa_cpu_c_available(void) { return true; }

#ifndef QSDPA_HAVE_AVX2_KERNELS
/* Non-x86 builds: the AVX2 rows stay in the table (never usable) and need symbols. */
qsdpa_status qsdpa_cpu_avx2_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_avx2_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_avx2_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    (void)ctx, (void)p;
    return qsdpa_fail(QSDPA_ERR_UNSUPPORTED, p->function, "this build has no AVX2 kernels");
}
qsdpa_status qsdpa_cpu_avx2_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_avx2_decode(ctx, p);
}
qsdpa_status qsdpa_cpu_vnni_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_vnni_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_avx2_decode(ctx, p);
}
qsdpa_status qsdpa_cpu_vnni_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_vnni_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_avx2_decode(ctx, p);
}
qsdpa_status qsdpa_cpu_amx_decode(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_amx_decode(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_avx2_decode(ctx, p);
}
qsdpa_status qsdpa_cpu_amx_prefill(qsdpa_context *ctx, const qsdpa_problem *p);
qsdpa_status qsdpa_cpu_amx_prefill(qsdpa_context *ctx, const qsdpa_problem *p) {
    return qsdpa_cpu_avx2_decode(ctx, p);
}
#endif
