/* `qsdpa bench`: `--data DIR` times real tensors (cli_bench_data.c); anything
 * else forwards to the CPU benchmark of bench/ when it is built. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

#ifdef QSDPA_HAVE_BENCH_CPU
#include "bench_cpu.h"
#endif

static bool has_data_flag(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--data") == 0 || strncmp(argv[i], "--data=", 7) == 0) return true;
    return false;
}

int cli_bench(int argc, char **argv) {
    if (has_data_flag(argc, argv)) return cli_bench_data(argc, argv);
#ifdef QSDPA_HAVE_BENCH_CPU
    return qsdpa_bench_cpu_main(argc, argv);
#else
    if (argc == 2 && cli_is_help(argv[1])) {
        printf("usage: qsdpa bench --data DIR [...]   (real tensors; see qsdpa bench --data DIR --help)\n\n"
               "The CPU benchmark matrix (bench/) is not built into this binary.\n");
        return 0;
    }
    fprintf(stderr, "qsdpa bench: the CPU benchmark is not built into this binary (bench/bench.cmake absent)\n");
    return CLI_EXIT_USAGE;
#endif
}
