# The .npy reader/writer shared by the golden tests and the qsdpa CLI.
add_library(qsdpa_npy STATIC ${CMAKE_CURRENT_LIST_DIR}/npy.c)
target_include_directories(qsdpa_npy PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(qsdpa_npy PUBLIC qsdpa)
target_compile_options(qsdpa_npy PRIVATE ${QSDPA_C_WARNINGS})
