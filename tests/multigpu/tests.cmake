# Sequence-parallel tests: need the CUDA runtime and NCCL's header; built only with QSDPA_CUDA.
if(QSDPA_CUDA AND QSDPA_NCCL_INCLUDE)
  add_executable(test_nccl_slices ${CMAKE_CURRENT_LIST_DIR}/nccl_slices.c)
  target_include_directories(test_nccl_slices PRIVATE ${QSDPA_NCCL_INCLUDE})
  target_link_libraries(test_nccl_slices PRIVATE qsdpa_test_common CUDA::cudart ${CMAKE_DL_LIBS} Threads::Threads)
  target_compile_options(test_nccl_slices PRIVATE ${QSDPA_C_WARNINGS})
  add_test(NAME multigpu.nccl_slices COMMAND test_nccl_slices WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(multigpu.nccl_slices PROPERTIES SKIP_RETURN_CODE 77 LABELS "cuda;multigpu")
endif()
