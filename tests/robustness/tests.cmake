# test_random_api is split by concern; its helper files are compiled into it
# (they are not test_*.c, so the glob in tests/CMakeLists.txt skips them).
target_sources(test_random_api PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/fuzz_util.c ${CMAKE_CURRENT_LIST_DIR}/fuzz_attn_case.c
  ${CMAKE_CURRENT_LIST_DIR}/fuzz_attention.c ${CMAKE_CURRENT_LIST_DIR}/fuzz_rows.c
  ${CMAKE_CURRENT_LIST_DIR}/fuzz_merge.c)
