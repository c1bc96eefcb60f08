/* qsdpa_cpu_features: which x86 SIMD extensions this CPU *and* OS support.
 *
 * CPUID alone is not enough: AVX registers are usable only when the OS saves
 * the YMM state on context switches (OSXSAVE set and XCR0 bits 1|2 set), the
 * check ggml-cpu lacks. Bits: 1 = AVX2, 2 = FMA, 4 = F16C, 8 = AVX512-VNNI with
 * AVX512F, BW and VL (and the OS saving the opmask and ZMM state, XCR0 bits 5-7), 16 = AVX512_BF16
 * on top of 8, 32 = AMX-TILE and AMX-BF16 on top of 16 (the OS saving tile state, XCR0 bits 17-18, and
 * granting it to this process), 64 = AMX-INT8 on top of 32. */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* syscall (arch_prctl) */
#endif
#include "internal.h"

#include <stdatomic.h>

#define UNKNOWN 0x80000000u /* not yet detected; no real feature set has this bit */

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#if defined(__GNUC__)
#include <cpuid.h>

/* XCR0 through xgetbv, in asm so the file needs no -mxsave. */
static uint64_t read_xcr0(void) {
    uint32_t eax, edx;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

/* AMX tile data is large (8 KB) and Linux hands it to a process only on request (arch_prctl
 * ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, since 5.16): granted once for the whole process, or the
 * first tile instruction faults. Other systems: not used. */
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
static bool amx_permitted(void) {
    const long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
}
#else
static bool amx_permitted(void) { return false; }
#endif

static unsigned detect(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned osxsave = 1u << 27, avx = 1u << 28, fma = 1u << 12, f16c = 1u << 29;
    if (!(ecx & osxsave) || !(ecx & avx)) return 0;
    if ((read_xcr0() & 0x6) != 0x6) return 0; /* XMM and YMM state not both enabled by the OS */
    unsigned features = 0;
    if (ecx & fma) features |= 2u;
    if (ecx & f16c) features |= 4u;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        if (ebx & (1u << 5)) features |= 1u; /* AVX2 */
        const unsigned avx512f = 1u << 16, avx512bw = 1u << 30, avx512vl = 1u << 31, vnni = 1u << 11;
        if ((ebx & avx512f) && (ebx & avx512bw) && (ebx & avx512vl) && (ecx & vnni) && (read_xcr0() & 0xE6) == 0xE6) {
            features |= 8u;
            __cpuid_count(7, 1, eax, ebx, ecx, edx);
            if (eax & (1u << 5)) features |= 16u; /* AVX512_BF16 */
            __cpuid_count(7, 0, eax, ebx, ecx, edx);
            const unsigned amx_bf16 = 1u << 22, amx_tile = 1u << 24;
            if ((features & 16u) && (edx & amx_bf16) && (edx & amx_tile) && (read_xcr0() & 0x60000) == 0x60000 &&
                amx_permitted())
                features |= (edx & (1u << 25)) && (ecx & (1u << 1)) ? 96u : 32u; /* with AMX-INT8 and VBMI: 64 too */
        }
    }
    return features;
}
#else
static unsigned detect(void) { return 0; }
#endif
#else
static unsigned detect(void) { return 0; }
#endif

unsigned qsdpa_cpu_features(void) {
    /* Dispatch may ask on every call: detect once. Two threads racing here both
     * store the same value, and the atomic makes that race well defined. */
    static _Atomic unsigned cached = UNKNOWN;
    unsigned features = atomic_load_explicit(&cached, memory_order_relaxed);
    if (features == UNKNOWN) {
        features = detect();
        atomic_store_explicit(&cached, features, memory_order_relaxed);
    }
    return features;
}
