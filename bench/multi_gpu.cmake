# The sequence-parallel benchmark (issue 6): CUDA runtime + NCCL header; NCCL itself is dlopen'ed.
if(QSDPA_CUDA AND QSDPA_NCCL_INCLUDE)
  add_executable(bench_multi_gpu ${CMAKE_CURRENT_LIST_DIR}/bench_multi_gpu.c)
  target_include_directories(bench_multi_gpu PRIVATE ${QSDPA_NCCL_INCLUDE})
  target_link_libraries(bench_multi_gpu PRIVATE qsdpa CUDA::cudart ${CMAKE_DL_LIBS} Threads::Threads)
  target_compile_options(bench_multi_gpu PRIVATE ${QSDPA_C_WARNINGS})
endif()
