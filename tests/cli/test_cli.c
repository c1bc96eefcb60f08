/* The `qsdpa` tool end to end: help texts, exit code 2 with the flag named on
 * bad arguments, `info` listing every kernel-table row, `verify --quick`
 * passing, `demo --context 512` running, `run` failing cleanly on a missing file. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "test_util.h"

#ifndef QSDPA_CLI_EXE
/* tests/cli/tests.cmake passes the executable's path; without the tool
 * (QSDPA_BUILD_TOOLS=OFF) there is nothing to test. */
int main(void) {
    printf("SKIP: the qsdpa tool is not built (QSDPA_BUILD_TOOLS=OFF)\n");
    return 77;
}
#else

/* Run `qsdpa <args>` (stderr folded into stdout); returns the exit code and
 * the output in *out (caller frees). */
static int run(const char *args, char **out) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", QSDPA_CLI_EXE, args);
    FILE *f = popen(cmd, "r");
    if (!f) {
        *out = NULL;
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = test_alloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (!grown) break;
            buf = grown;
        }
    }
    buf[n] = '\0';
    int status = pclose(f);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Expect exit code `code` and every needle in the output. */
static void expect(const char *args, int code, const char *needle1, const char *needle2) {
    char *out;
    int rc = run(args, &out);
    CHECK(rc == code, "qsdpa %s: exit %d, want %d; output:\n%s", args, rc, code, out ? out : "");
    if (out && needle1) CHECK(strstr(out, needle1), "qsdpa %s: output lacks '%s':\n%s", args, needle1, out);
    if (out && needle2) CHECK(strstr(out, needle2), "qsdpa %s: output lacks '%s':\n%s", args, needle2, out);
    free(out);
}

static void test_help(void) {
    expect("--help", 0, "usage: qsdpa", "verify");
    const char *subs[] = {"demo", "verify", "run", "info", "bench"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        char args[64], needle[64];
        snprintf(args, sizeof args, "%s --help", subs[i]);
        snprintf(needle, sizeof needle, "usage: qsdpa %s", subs[i]);
        expect(args, 0, needle, NULL);
    }
}

static void test_bad_arguments(void) {
    expect("", 2, "usage", NULL);
    expect("nosuch", 2, "nosuch", NULL);
    expect("demo --bogus", 2, "--bogus", NULL);
    expect("demo --context abc", 2, "--context", "abc");
    expect("demo --context 0", 2, "--context", NULL);
    expect("demo --context", 2, "--context", NULL);
    expect("demo --format affine:7:64", 2, "--format", "affine:7:64");
    expect("demo --dtype f64", 2, "--dtype", "f64");
    expect("demo --backend tpu", 2, "--backend", "tpu");
    expect("demo --heads-q 6 --heads-kv 4", 2, "--heads-q", NULL);
    expect("demo --window 8", 2, "--window", NULL);
    expect("demo --dim 96 --format affine:4:64", 2, "--dim", NULL);
    expect("verify --cases 0", 2, "--cases", NULL);
    expect("verify --seed x1", 2, "--seed", "x1");
    expect("info --bogus", 2, "--bogus", NULL);
    expect("run --format affine:4:64 --out /tmp/x.npy", 2, "--q", NULL);
    expect("run --dir /tmp --out /tmp/x.npy", 2, "--format", NULL);
    expect("run --dir /tmp --format nvfp5 --out /tmp/x.npy", 2, "--format", "nvfp5");
}

static void test_info(void) {
    char *out;
    int rc = run("info", &out);
    CHECK(rc == 0, "qsdpa info: exit %d:\n%s", rc, out ? out : "");
    if (!out) return;
    CHECK(strstr(out, qsdpa_version()), "qsdpa info does not print the version %s", qsdpa_version());
    CHECK(strstr(out, "CPU features"), "qsdpa info does not print the CPU features");
    /* Every row of the one kernel table appears, by name. */
    for (int i = 0; i < qsdpa_kernel_count(); i++) {
        qsdpa_kernel_info k;
        CHECK(qsdpa_kernel_get(i, &k) == QSDPA_OK, "qsdpa_kernel_get(%d) failed", i);
        CHECK(strstr(out, k.name), "qsdpa info does not list kernel %s", k.name);
    }
    CHECK(qsdpa_kernel_count() > 0, "the kernel table is empty");
    free(out);
}

static void test_verify_demo_run(void) {
    char args[256];
    unsigned long long seed = (unsigned long long)test_seed();
    snprintf(args, sizeof args, "verify --quick --seed %llu", seed);
    expect(args, 0, "PASS", "worst err/tol");
    snprintf(args, sizeof args, "demo --context 512 --seed %llu", seed);
    expect(args, 0, "kernel:", "max error vs reference");
    expect("run --dir /nonexistent-qsdpa-dir --format affine:4:64 --out /tmp/qsdpa_cli_test_out.npy", 1,
           "/nonexistent-qsdpa-dir", NULL);
}

int main(void) {
    test_help();
    test_bad_arguments();
    test_info();
    test_verify_demo_run();
    return test_finish("test_cli");
}
#endif
