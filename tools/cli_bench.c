/* `qsdpa bench`: forwards to the CPU benchmark of bench/ when it is built. */
#include <stdio.h>

#include "cli.h"

#ifdef QSDPA_HAVE_BENCH_CPU
#include "bench_cpu.h"

int cli_bench(int argc, char **argv) { return qsdpa_bench_cpu_main(argc, argv); }
#else
int cli_bench(int argc, char **argv) {
    if (argc == 2 && cli_is_help(argv[1])) {
        printf("usage: qsdpa bench [options]\n\n"
               "Forwards to the CPU benchmark (bench/), which is not built into this binary.\n");
        return 0;
    }
    fprintf(stderr, "qsdpa bench: the CPU benchmark is not built into this binary (bench/bench.cmake absent)\n");
    return CLI_EXIT_USAGE;
}
#endif
