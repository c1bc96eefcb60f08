/* `qsdpa bench`: the CPU benchmark (bench/bench_cpu.c). */
#ifndef QSDPA_BENCH_CPU_H
#define QSDPA_BENCH_CPU_H

/* Runs the fixed benchmark matrix and prints a table (or JSON with --json).
 * argv[0] is the subcommand name; `--help` lists the options. Returns 0 on success. */
int qsdpa_bench_cpu_main(int argc, char **argv);

#endif
