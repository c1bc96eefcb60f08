/* Generates the tensor-core instantiations from the kernel table itself
 * (src/cuda/kernels_cuda.def), so no second list of kernels exists.
 *
 * A unit file (fast_<unit>.cu) defines QSDPA_CUDA_UNIT_<unit>(row) as row and
 * then includes this header: every table row whose unit column is <unit>
 * becomes one extern "C" launcher named by the row's fn column, specialised on
 * its head dim and K/V format types (and every stage row of the unit, one
 * f16-row prefill launcher); the other units' rows expand to nothing here. */
#ifndef QSDPA_CUDA_FAST_INSTANTIATE_CUH
#define QSDPA_CUDA_FAST_INSTANTIATE_CUH

#include "cuda/fast_kernel.cuh"

#define QSDPA_CUDA_FAST(name, D, km, kb, kg, vm, vb, vg)                                                   \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);                              \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) {                             \
        return qsdpa_cuda_row_run<D, D, qfast::format_of<km, kb, kg>::type, qfast::format_of<vm, vb, vg>::type>( \
            ctx, p);                                                                                       \
    }

/* The staged path's f16 prefill at K width DK, V columns DV (the prefill kernel alone: the
 * staged path sends it only long queries) */
#define QSDPA_CUDA_STAGE_PREFILL(name, DK, DV)                                                             \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);                              \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) {                             \
        using F16 = qfast::plain_f16_fmt;                                                                  \
        return qsdpa_cuda_prefill_run<DK, DV, F16, F16>(ctx, p, p->function);                              \
    }

/* The padded path's decode kernel: the (DK, DV) kernel over a cache of head dims DSK, DSV (pad_from) */
#define QSDPA_CUDA_PAD_DECODE(name, DSK, DSV, DK, DV, km, kb, kg, vm, vb, vg)                              \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p);                              \
    extern "C" qsdpa_status name(qsdpa_context *ctx, const qsdpa_problem *p) {                             \
        return qsdpa_cuda_padded_decode_run<DSK, DSV, DK, DV, qfast::format_of<km, kb, kg>::type,          \
                                            qfast::format_of<vm, vb, vg>::type>(ctx, p);                   \
    }

#ifndef QSDPA_CUDA_UNIT_affine4
#define QSDPA_CUDA_UNIT_affine4(row)
#endif
#ifndef QSDPA_CUDA_UNIT_affine8
#define QSDPA_CUDA_UNIT_affine8(row)
#endif
#ifndef QSDPA_CUDA_UNIT_fp
#define QSDPA_CUDA_UNIT_fp(row)
#endif
#ifndef QSDPA_CUDA_UNIT_mixed
#define QSDPA_CUDA_UNIT_mixed(row)
#endif

#define ANY QSDPA_ANY
#define QSDPA_KERNEL(...) /* rows without a unit (cuda.generic) are written by hand */
#define QSDPA_CUDA_ROWS(unit, tag, D, km, kb, kg, vm, vb, vg, fn)                                          \
    QSDPA_CUDA_UNIT_##unit(QSDPA_CUDA_FAST(fn, D, km, kb, kg, vm, vb, vg))
#define QSDPA_CUDA_STAGE_ROWS(unit, DK, DV, fn) QSDPA_CUDA_UNIT_##unit(QSDPA_CUDA_STAGE_PREFILL(fn, DK, DV))
#define QSDPA_CUDA_PAD_ROWS(unit, DSK, DSV, DK, DV, km, kb, kg, vm, vb, vg, fn)                            \
    QSDPA_CUDA_UNIT_##unit(QSDPA_CUDA_PAD_DECODE(fn, DSK, DSV, DK, DV, km, kb, kg, vm, vb, vg))
#include "cuda/kernels_cuda.def"
#undef QSDPA_KERNEL
#undef ANY

#endif
