/* Generates the tensor-core instantiations from the kernel table itself
 * (src/cuda/kernels_cuda.def), so no second list of kernels exists.
 *
 * A unit file (fast_<unit>.cu) defines QSDPA_CUDA_UNIT_<unit>(...) as
 * QSDPA_CUDA_FAST(...) and then includes this header: every table row whose
 * unit column is <unit> becomes one extern "C" launcher named by the row's fn
 * column, specialised on its head dim and K/V format types; the other units'
 * rows expand to nothing here. */
#ifndef QSDPA_CUDA_FAST_INSTANTIATE_CUH
#define QSDPA_CUDA_FAST_INSTANTIATE_CUH

#include "cuda/fast_kernel.cuh"

#define QSDPA_CUDA_FAST(name, D, km, kb, kg, vm, vb, vg)                                                   \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);                              \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) {                             \
        return qsdpa_cuda_fast_run<D, D, qfast::format_of<km, kb, kg>::type, qfast::format_of<vm, vb, vg>::type>( \
            ctx, p);                                                                                       \
    }

#ifndef QSDPA_CUDA_UNIT_affine4
#define QSDPA_CUDA_UNIT_affine4(...)
#endif
#ifndef QSDPA_CUDA_UNIT_affine8
#define QSDPA_CUDA_UNIT_affine8(...)
#endif
#ifndef QSDPA_CUDA_UNIT_fp
#define QSDPA_CUDA_UNIT_fp(...)
#endif
#ifndef QSDPA_CUDA_UNIT_mixed
#define QSDPA_CUDA_UNIT_mixed(...)
#endif

#define ANY QSDPA_ANY
#define QSDPA_KERNEL(...) /* rows without a unit (cuda.generic) are written by hand */
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn) QSDPA_CUDA_UNIT_##unit(fn, D, km, kb, kg, vm, vb, vg)
#include "cuda/kernels_cuda.def"
#undef QSDPA_KERNEL
#undef ANY

#endif
