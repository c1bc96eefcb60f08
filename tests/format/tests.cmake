# Format tests: the golden test reads .npy files (tools/npy.c via qsdpa_npy);
# format.golden_regenerate reruns MLX and fails on any byte difference with the
# checked-in vectors. It fails, never skips, when the Python with mlx is missing.
if(TARGET test_format_golden)
  target_link_libraries(test_format_golden PRIVATE qsdpa_npy)
endif()
add_test(NAME format.golden_regenerate
         COMMAND ${QSDPA_PYTHON} ${PROJECT_SOURCE_DIR}/tools/gen_golden.py --check
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(format.golden_regenerate PROPERTIES LABELS "format;mlx")
