# Format tests: the golden test reads .npy files (tools/npy.c via qsdpa_npy);
# format.golden_regenerate reruns MLX and fails on any byte difference with the
# checked-in vectors. It fails, never skips, when the Python with mlx is missing.
foreach(t test_format_golden test_format_npy)
  if(TARGET ${t})
    target_link_libraries(${t} PRIVATE qsdpa_npy)
  endif()
endforeach()
add_test(NAME format.golden_regenerate
         COMMAND ${QSDPA_PYTHON} ${PROJECT_SOURCE_DIR}/tools/gen_golden.py --check
         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(format.golden_regenerate PROPERTIES LABELS "format;mlx")
