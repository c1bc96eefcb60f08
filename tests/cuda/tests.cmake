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
endif()
