# CUDA tests: built against the CUDA runtime only when the backend is built;
# otherwise each compiles to a skip (exit 77). cuda_case.c is their shared helper.
if(QSDPA_CUDA)
  file(GLOB _qsdpa_cuda_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.c)
  foreach(src ${_qsdpa_cuda_tests})
    get_filename_component(name ${src} NAME_WE)
    target_sources(${name} PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cuda_case.c)
    target_compile_definitions(${name} PRIVATE QSDPA_TEST_CUDA=1)
    target_link_libraries(${name} PRIVATE CUDA::cudart_static)
    target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  endforeach()
  # test_cuda_random runs test_random_api's attention cases (tests/robustness: the qsdpa_fuzz library) on the device
  target_link_libraries(test_cuda_random PRIVATE qsdpa_fuzz)
endif()

# The wgmma layout probe (sm_90a only): descriptors, swizzle and register layouts a wgmma
# kernel would rely on, checked exactly against the host; skips without an sm_90 device.
if(QSDPA_CUDA AND "90a" IN_LIST QSDPA_CUDA_ARCHITECTURES)
  add_executable(test_wgmma_layout ${CMAKE_CURRENT_LIST_DIR}/wgmma_layout.cu)
  set_target_properties(test_wgmma_layout PROPERTIES CUDA_ARCHITECTURES 90a)
  target_link_libraries(test_wgmma_layout PRIVATE CUDA::cudart_static)
  target_include_directories(test_wgmma_layout PRIVATE ${PROJECT_SOURCE_DIR}/src)
  add_test(NAME cuda.test_wgmma_layout COMMAND test_wgmma_layout)
  set_tests_properties(cuda.test_wgmma_layout PROPERTIES SKIP_RETURN_CODE 77 LABELS cuda)
endif()
