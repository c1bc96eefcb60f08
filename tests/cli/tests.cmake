# tests/cli/test_cli.c drives the built `qsdpa` executable: it needs its path.
if(TARGET test_cli)
  if(TARGET qsdpa_cli)
    target_compile_definitions(test_cli PRIVATE QSDPA_CLI_EXE="$<TARGET_FILE:qsdpa_cli>")
    add_dependencies(test_cli qsdpa_cli)
  endif()
  set_tests_properties(cli.test_cli PROPERTIES TIMEOUT 300)
endif()
