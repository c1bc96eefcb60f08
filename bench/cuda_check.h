/* The benchmarks' CUDA runtime check: print where and why a call failed, then exit (a benchmark
 * tool, never the library, which returns every error as a status). */
#ifndef QSDPA_BENCH_CUDA_CHECK_H
#define QSDPA_BENCH_CUDA_CHECK_H

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

#endif
