# The AMX row's bf16 tiles serve 9-16 rows a KV head only where int8 tiles are off (a CPU without AMX-INT8, or
# QSDPA_CPU_AMX_INT8=0): run the kernel test again with them off, so both tile kernels are tested on an AMX CPU.
add_test(NAME cpu.test_cpu_kernels_bf16_tiles COMMAND test_cpu_kernels WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(cpu.test_cpu_kernels_bf16_tiles PROPERTIES ENVIRONMENT "QSDPA_CPU_AMX_INT8=0" LABELS cpu)
