# The CPU benchmark behind `qsdpa bench` (included by tools/CMakeLists.txt).
add_library(qsdpa_bench_cpu STATIC ${PROJECT_SOURCE_DIR}/bench/bench_cpu.c)
target_link_libraries(qsdpa_bench_cpu PRIVATE qsdpa m)
target_include_directories(qsdpa_bench_cpu PUBLIC ${PROJECT_SOURCE_DIR}/bench)
target_compile_options(qsdpa_bench_cpu PRIVATE ${QSDPA_C_WARNINGS})
