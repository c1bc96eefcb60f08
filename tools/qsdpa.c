/* qsdpa: command-line front end of the library (demo, verify, run, info, bench).
 * Exit codes: 0 success, 1 library/I-O error or failed check, 2 bad usage. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"demo", cli_demo, "quantize a random KV cache, run attention, report error and speed"},
    {"verify", cli_verify, "compare every kernel-table row with the reference on random cases"},
    {"run", cli_run, "attention over .npy inputs (q, codes, scales, ...) into out.npy"},
    {"info", cli_info, "version, build options, CPU features, backends, kernel table"},
    {"bench", cli_bench, "CPU benchmark (when built)"},
};
#define SUBCOMMAND_COUNT (sizeof subcommands / sizeof subcommands[0])

static void usage(FILE *f) {
    fprintf(f, "qsdpa %s: scaled dot-product attention over a quantized KV cache\n\n", qsdpa_version());
    fprintf(f, "usage: qsdpa <command> [options]     (qsdpa <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < SUBCOMMAND_COUNT; i++) fprintf(f, "  %-8s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(f, "\nexit codes: 0 ok, 1 library error or failed check, 2 bad usage\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (cli_is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("qsdpa %s\n", qsdpa_version());
        return 0;
    }
    for (size_t i = 0; i < SUBCOMMAND_COUNT; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0) return subcommands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qsdpa: unknown command '%s'\n(see 'qsdpa --help')\n", argv[1]);
    return CLI_EXIT_USAGE;
}
