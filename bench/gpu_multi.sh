#!/usr/bin/env bash
# Sequence-parallel stage of bench/gpu.sh (issue 6): the slicing test (one device:
# partial per slice + device merge; every GPU count the machine has: NCCL) and the
# multi-GPU benchmark (its 1-GPU column on a one-GPU machine). Appends to $OUT/tests.log
# and writes $OUT/multi.txt. Usage: bash bench/gpu_multi.sh BUILD_DIR
set -u
B=${1:-build-gpu}
OUT=${OUT:-/tmp/qsdpa-gpu-out}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
timeout 120 cmake --build "$B" -j16 --target test_nccl_slices bench_multi_gpu >>"$OUT/build.log" 2>&1
echo "== multigpu build rc=$?" | tee -a "$OUT/tests.log"
timeout 90 "$B/tests/test_nccl_slices" >>"$OUT/tests.log" 2>&1
echo "test_nccl_slices rc=$?" | tee -a "$OUT/tests.log"
timeout 120 "$B/bench_multi_gpu" --iters 30 2>&1 | tee "$OUT/multi.txt"
