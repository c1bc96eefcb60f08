/* Device copies of a problem for CUDA kernels (through the CUDA runtime's C
 * API); in a build without CUDA every function reports that there is none. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

#ifdef QSDPA_CLI_CUDA
#include <cuda_runtime_api.h>

bool cli_device_compiled(void) { return true; }

void *cli_device_upload(const void *host, size_t bytes) {
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e == cudaSuccess && host && bytes) e = cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        fprintf(stderr, "qsdpa: CUDA upload of %zu bytes failed: %s\n", bytes, cudaGetErrorString(e));
        if (d) cudaFree(d);
        return NULL;
    }
    return d;
}

int cli_device_write(void *device, const void *host, size_t bytes) {
    cudaError_t e = cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        fprintf(stderr, "qsdpa: CUDA copy of %zu bytes to the device failed: %s\n", bytes, cudaGetErrorString(e));
        return CLI_EXIT_FAIL;
    }
    return 0;
}

int cli_device_download(void *host, const void *device, size_t bytes) {
    cudaError_t e = cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        fprintf(stderr, "qsdpa: CUDA download of %zu bytes failed: %s\n", bytes, cudaGetErrorString(e));
        return CLI_EXIT_FAIL;
    }
    return 0;
}

void cli_device_free(void *device) {
    if (device) cudaFree(device);
}

int cli_device_sync(void) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        fprintf(stderr, "qsdpa: CUDA synchronize failed: %s\n", cudaGetErrorString(e));
        return CLI_EXIT_FAIL;
    }
    return 0;
}
#else
bool cli_device_compiled(void) { return false; }
void *cli_device_upload(const void *host, size_t bytes) {
    (void)host;
    (void)bytes;
    fprintf(stderr, "qsdpa: this build has no CUDA support\n");
    return NULL;
}
int cli_device_write(void *device, const void *host, size_t bytes) {
    (void)device;
    (void)host;
    (void)bytes;
    return CLI_EXIT_FAIL;
}
int cli_device_download(void *host, const void *device, size_t bytes) {
    (void)host;
    (void)device;
    (void)bytes;
    return CLI_EXIT_FAIL;
}
void cli_device_free(void *device) { (void)device; }
int cli_device_sync(void) { return 0; }
#endif

/* Replace one host buffer of `bytes` by a device copy and repoint its view. */
static int upload_one(void **ptr, size_t bytes, qsdpa_tensor *view) {
    if (!*ptr) return 0;
    void *d = cli_device_upload(*ptr, bytes);
    if (!d) return CLI_EXIT_FAIL;
    *ptr = d;
    view->data = d;
    return 0;
}

int cli_problem_upload(const cli_problem *host, cli_problem *dev) {
    *dev = *host;
    dev->q = dev->k_codes = dev->v_codes = NULL;
    dev->k_scales = dev->k_biases = dev->v_scales = dev->v_biases = dev->mask = NULL;
    dev->sinks = NULL;
    dev->k_f32 = dev->v_f32 = NULL; /* the unquantized copies stay on the host */
    struct { void *host; void **dev; size_t bytes; qsdpa_tensor *view; } items[] = {
        {host->q, &dev->q, host->q_bytes, &dev->tq},
        {host->k_codes, &dev->k_codes, host->k_codes_bytes, &dev->tk.codes},
        {host->v_codes, &dev->v_codes, host->v_codes_bytes, &dev->tv.codes},
        {host->k_scales, &dev->k_scales, host->k_scale_bytes, &dev->tk.scales},
        {host->k_biases, &dev->k_biases, host->k_scale_bytes, &dev->tk.biases},
        {host->v_scales, &dev->v_scales, host->v_scale_bytes, &dev->tv.scales},
        {host->v_biases, &dev->v_biases, host->v_scale_bytes, &dev->tv.biases},
        {host->mask, &dev->mask, host->mask_bytes, &dev->tmask},
        {host->sinks, &dev->sinks, (size_t)host->c.heads_q * sizeof(float), &dev->tsinks},
    };
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        *items[i].dev = items[i].host;
        if (upload_one(items[i].dev, items[i].bytes, items[i].view)) {
            *items[i].dev = NULL;
            cli_problem_device_free(dev);
            return CLI_EXIT_FAIL;
        }
    }
    dev->params.mask = host->params.mask ? &dev->tmask : NULL;
    dev->params.sinks = host->params.sinks ? &dev->tsinks : NULL;
    return 0;
}

void cli_problem_device_free(cli_problem *dev) {
    void *ptrs[] = {dev->q, dev->k_codes, dev->v_codes, dev->k_scales, dev->k_biases,
                    dev->v_scales, dev->v_biases, dev->mask, dev->sinks};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) cli_device_free(ptrs[i]);
    memset(dev, 0, sizeof *dev);
}
