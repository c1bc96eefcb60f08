# Benchmarks that need CUDA.
# The sequence-parallel benchmark (issue 6): CUDA runtime + NCCL header; NCCL itself is dlopen'ed.
if(QSDPA_CUDA AND QSDPA_NCCL_INCLUDE)
  add_executable(bench_multi_gpu ${CMAKE_CURRENT_LIST_DIR}/bench_multi_gpu.c)
  target_include_directories(bench_multi_gpu PRIVATE ${QSDPA_NCCL_INCLUDE})
  target_link_libraries(bench_multi_gpu PRIVATE qsdpa CUDA::cudart ${CMAKE_DL_LIBS} Threads::Threads)
  target_compile_options(bench_multi_gpu PRIVATE ${QSDPA_C_WARNINGS})
endif()

# The single-GPU benchmark (bench/gpu.sh runs it): built with the library so CI compiles it
# on machines without a GPU, where it is never run.
if(QSDPA_CUDA)
  add_executable(bench_gpu ${CMAKE_CURRENT_LIST_DIR}/bench_gpu.cu)
  target_link_libraries(bench_gpu PRIVATE qsdpa)
  set_target_properties(bench_gpu PROPERTIES CUDA_ARCHITECTURES "${QSDPA_CUDA_ARCHITECTURES}" CUDA_STANDARD 17
                                             CUDA_STANDARD_REQUIRED ON)
  target_compile_options(bench_gpu PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  # the read-only floor under the decode timings (bench/gpu.sh floor); standalone, no library
  add_executable(gpu_floor ${CMAKE_CURRENT_LIST_DIR}/gpu_floor.cu)
  set_target_properties(gpu_floor PROPERTIES CUDA_ARCHITECTURES "${QSDPA_CUDA_ARCHITECTURES}" CUDA_STANDARD 17
                                             CUDA_STANDARD_REQUIRED ON)
  target_compile_options(gpu_floor PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
endif()
