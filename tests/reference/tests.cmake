# The reference kernel against MLX on fully masked rows (causal Lq > Lk,
# all-false bool rows; with and without sinks; f32/f16/bf16), through `qsdpa run`.
# A missing mlx or tool is a failure, never a skip.
if(TARGET qsdpa_cli)
  add_test(NAME reference.mlx_edges
           COMMAND ${QSDPA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_mlx_edges.py --qsdpa $<TARGET_FILE:qsdpa_cli>
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(reference.mlx_edges PROPERTIES LABELS "reference;mlx" TIMEOUT 300)
endif()
