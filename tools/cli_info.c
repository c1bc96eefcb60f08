/* `qsdpa info`: version, build options, CPU features, backends, kernel table. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(void) {
    printf("usage: qsdpa info [--kernels]\n\n"
           "Prints the library version, build options (CUDA/NCCL compiled in), CPU features,\n"
           "available backends and the kernel table (one line per row; '*' = any).\n"
           "  --kernels   print only the kernel table\n");
}

/* A table field: "*" for QSDPA_ANY. */
static const char *field(int v, char *buf, size_t n) {
    if (v == QSDPA_ANY) return "*";
    snprintf(buf, n, "%d", v);
    return buf;
}

static const char *mode_name(int mode) {
    switch (mode) {
    case QSDPA_ANY: return "*";
    case QSDPA_MODE_PLAIN: return "plain";
    case QSDPA_MODE_AFFINE: return "affine";
    case QSDPA_MODE_MXFP4: return "mxfp4";
    case QSDPA_MODE_MXFP8: return "mxfp8";
    case QSDPA_MODE_NVFP4: return "nvfp4";
    default: return "?";
    }
}

/* A row's formats as the tool's --format takes them: "affine:4:64" (any field may be *), the fp modes by name
 * (their bits and group are fixed), plain rows by element type */
static void format_text(int mode, int bits, int group, char *buf, size_t n) {
    char b[16], g[16];
    if (mode == QSDPA_ANY && bits == QSDPA_ANY && group == QSDPA_ANY) snprintf(buf, n, "*");
    else if (mode == QSDPA_MODE_PLAIN)
        snprintf(buf, n, "%s", bits == 16 ? "f16|bf16" : bits == 32 ? "f32" : "f16|bf16|f32");
    else if (mode == QSDPA_MODE_MXFP4 || mode == QSDPA_MODE_MXFP8 || mode == QSDPA_MODE_NVFP4)
        snprintf(buf, n, "%s", mode_name(mode));
    else if (mode == QSDPA_MODE_AFFINE || bits != QSDPA_ANY || group != QSDPA_ANY)
        snprintf(buf, n, "%s:%s:%s", mode_name(mode), field(bits, b, sizeof b), field(group, g, sizeof g));
    else snprintf(buf, n, "%s", mode_name(mode));
}

static int print_kernels(void) {
    int n = qsdpa_kernel_count();
    printf("kernel table (%d rows, dispatch takes the first usable row that serves a request):\n", n);
    int name_width = 4; /* the longest row name keeps the columns aligned */
    for (int i = 0; i < n; i++) {
        qsdpa_kernel_info k;
        if (qsdpa_kernel_get(i, &k) == QSDPA_OK && (int)strlen(k.name) > name_width) name_width = (int)strlen(k.name);
    }
    printf("  %-*s %-7s %-7s %-10s %-6s %-5s %-5s %-14s %-14s %-7s %-7s %s\n", name_width, "name", "backend", "isa", "path",
           "q", "Dk", "Dv", "K format", "V format", "max Lq", "max D", "usable");
    for (int i = 0; i < n; i++) {
        qsdpa_kernel_info k;
        qsdpa_status st = qsdpa_kernel_get(i, &k);
        if (st != QSDPA_OK) return cli_library_error("info", "qsdpa_kernel_get", st);
        char dk[16], dv[16], lq[16], kf[40], vf[40];
        format_text(k.k_mode, k.k_bits, k.k_group, kf, sizeof kf);
        format_text(k.v_mode, k.v_bits, k.v_group, vf, sizeof vf);
        printf("  %-*s %-7s %-7s %-10s %-6s %-5s %-5s %-14s %-14s %-7s %-7d %s\n", name_width, k.name,
               k.backend == QSDPA_BACKEND_CUDA ? "cuda" : "cpu", k.isa, k.path,
               k.q_dtype == QSDPA_ANY ? "*" : qsdpa_dtype_name((qsdpa_dtype)k.q_dtype), field(k.dk, dk, sizeof dk),
               field(k.dv, dv, sizeof dv), kf, vf, field(k.max_lq, lq, sizeof lq), k.max_dim, k.usable ? "yes" : "no");
    }
    printf("  (a cuda.mma row runs a split-K decode kernel when GQA ratio x Lq <= 32 over a quantized cache, a\n"
           "   prefill kernel for longer queries (from 2048 folded rows a quantized cache staged onto the f16 row),\n"
           "   for f16 rows on sm_90a and for layouts the decode kernel does not take; at D 256 the decode kernel's\n"
           "   8-row blocks up to 128 folded rows, more staged as below; an f16 row's entry also takes bf16 rows'\n"
           "   short queries, on a decode kernel that converts them to f16 as it reads them (long ones staged into\n"
           "   f16 rows); an affine 2/3/5/6-bit row runs only the decode kernel, widening the codes as it reads\n"
           "   them, and hands the rest to cuda.generic; cuda.generic serves what neither takes: more than 32\n"
           "   folded rows with f16/bf16 q and Dk <= 256 staged as zero-padded f16 rows onto an f16 prefill of K\n"
           "   width 64, 128 or 256 (V in passes of its columns), short queries at D 96 (and K 192 / V 128) read in\n"
           "   place by a wider decode kernel (padded; f16 and bf16 rows at D 80 too), other short queries repacked\n"
           "   zero-padded onto the narrowest cuda.mma row that takes their formats (e.g. nvfp4 at D 80 onto D\n"
           "   128), short queries left over on a one-warp decode kernel (f32 q above all), f16/bf16 q over 16 or\n"
           "   more folded rows a KV head with Dk > 256 and Dv <= 512 (DeepSeek-like MLA, Dk 576 / Dv 512) on a\n"
           "   tensor-core kernel that dequantizes each 32-key tile into shared memory (cuda.generic.wide), the\n"
           "   rest on the generic kernel)\n");
    return 0;
}

int cli_info(int argc, char **argv) {
    bool kernels_only = false;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help();
            return 0;
        }
        if (strcmp(argv[i], "--kernels") == 0) kernels_only = true;
        else return cli_unknown_arg("info", argv[i]);
    }
    if (!kernels_only) {
        printf("qsdpa %s (header %s)\n", qsdpa_version(), QSDPA_VERSION_STRING);
#ifdef QSDPA_CLI_CUDA
        const char *cuda = "yes";
#else
        const char *cuda = "no";
#endif
        /* NCCL is loaded at run time by the library (multi-GPU): report whether it loads here. */
        const char *nccl = qsdpa_nccl_available() ? "loadable" : "no";
#ifdef QSDPA_HAVE_BENCH_CPU
        const char *bench = "yes";
#else
        const char *bench = "no";
#endif
        printf("build: CUDA %s, NCCL %s, CPU benchmark %s\n", cuda, nccl, bench);
        unsigned f = qsdpa_cpu_features();
        printf("CPU features: AVX2 %s, FMA %s, F16C %s, AVX-512 F/BW/VL/VNNI %s, AVX512_BF16 %s, AMX %s\n",
               f & 1u ? "yes" : "no", f & 2u ? "yes" : "no", f & 4u ? "yes" : "no", f & 8u ? "yes" : "no",
               f & 16u ? "yes (cpu.vnni.*: bf16 q over many rows runs on bf16 tiles, routes +bf16 / +bf16k)" : "no",
               f & 64u   ? "yes (cpu.amx.*: affine 4/8-bit K and V in query tiles of 1-16 rows a KV head on int8 tiles, "
                           "route +amx.i8; with QSDPA_CPU_AMX_INT8=0, 9-16 rows on bf16 tiles, route +amx)"
               : f & 32u ? "yes (cpu.amx.*: affine 4/8-bit K and V in query tiles of 9-16 rows a KV head on tiles, route +amx)"
                         : "no");
        printf("backends: cpu %s, cuda %s\n", qsdpa_backend_available(QSDPA_BACKEND_CPU) ? "available" : "unavailable",
               qsdpa_backend_available(QSDPA_BACKEND_CUDA) ? "available" : "unavailable");
    }
    return print_kernels();
}
