/* The AVX-512 tier: isa_avx2.c built again with QSDPA_ISA_VNNI. Its hot kernels (the code
 * decode, V accumulation, f32 K scoring) are 512-bit (target attributes on those functions,
 * AVX512 F/BW/VL), and the affine 8-bit f16/bf16-q K path uses vpdpwssd. On this Zen 5 VM
 * (bench/NOTES.md, sessions 13-15) a zmm instruction does twice a ymm one's work per issue
 * slot: 4-bit 32K decode 3.7 -> 2.6 ms. Every other
 * kernel is the AVX2 build's code. Rows cpu.vnni.decode and cpu.vnni.prefill, used only
 * where qsdpa_cpu_features() has bit 8. */
#define QSDPA_ISA_VNNI 1
#include "../avx2/isa_avx2.c"
#include "amx_affine.inc"
