# The 10 MLX quantized-SDPA scenarios (SPEC section 6) through `qsdpa run`,
# compared with MLX's SDPA over mx.dequantize'd K/V. A missing mlx (or a build
# without the tool) is a failure, never a skip: these scenarios are the contract.
if(TARGET qsdpa_cli)
  add_test(NAME mlx.scenarios
           COMMAND ${QSDPA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_mlx_scenarios.py --qsdpa $<TARGET_FILE:qsdpa_cli>
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
else()
  # Fails on purpose: the scenarios need the qsdpa tool (QSDPA_BUILD_TOOLS=ON).
  add_test(NAME mlx.scenarios COMMAND ${CMAKE_COMMAND} -E false)
endif()
set_tests_properties(mlx.scenarios PROPERTIES LABELS mlx TIMEOUT 900)
