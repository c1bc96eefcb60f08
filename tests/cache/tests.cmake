# The device-cache test links the CUDA runtime (for its own device buffers)
# only when the backend is built; otherwise it compiles to a skip (exit 77).
if(QSDPA_CUDA AND TARGET test_cache_cuda)
  target_compile_definitions(test_cache_cuda PRIVATE QSDPA_TEST_CUDA=1)
  target_link_libraries(test_cache_cuda PRIVATE CUDA::cudart_static)
endif()
