/* The AVX2 kernels rebuilt with the integer K path on AVX512-VNNI/VL (a target
 * attribute on that path alone): its vpmaddwd + vpaddd become one vpdpwssd. On this
 * Zen 4 that took 7-11% off the f16-q affine decode at 32K (bench/NOTES.md, session 8).
 * Everything else is isa_avx2.c's code; the row is used only where
 * qsdpa_cpu_features() has bit 8. */
#define QSDPA_ISA_VNNI 1
#include "../avx2/isa_avx2.c"
