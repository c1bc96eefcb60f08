#!/usr/bin/env bash
# Everything the CUDA backend needs from one `device` call, in order: build
# (sm_90a), the GPU tests, compute-sanitizer memcheck and racecheck on a short
# subset, the benchmark, PyTorch's baselines, ncu on the 32K decode, and a
# joined report. Each stage has its own time limit so the call ends well
# inside 10 minutes and later stages still run when one fails.
# Outputs under $OUT (at most 10 files): build.log smoke.txt build-base.log tests.log sanitizer.log
# bench.txt multi.txt torch.txt ncu.txt report.md.
# Usage (device): bash bench/gpu.sh [quick | bench | generic | prefill | fuzz | coverage | cpu | kshift | variants | profile-prefill | profile-decode | profile-wide | profile-one | trace | sweep | host | floor | portable | kshift-speed]
# A baseline: `mkdir build-base-src && git archive C | tar -x -C build-base-src && echo C >build-base-src/.commit`,
# then carry build-base-src: the benchmark times commit C's library beside this one ([base] / [new] lines).
# QSDPA_GPU_VARIANTS (see below) adds compile-time variants timed in the same run; QSDPA_GPU_SKIP_TORCH=1
# and QSDPA_GPU_SKIP_MULTI=1 leave out the PyTorch baselines and the multi-GPU stage, QSDPA_GPU_SKIP_AB_ROWS=1
# the baseline's 32K matrix and its rows outside it (the baseline is still built, for the extra rows); QSDPA_GPU_SKIP_CHECKS=1 the
# GPU tests and sanitizers (timing-only calls on a commit already checked).
#   quick: no full benchmark (the baseline comparison below still runs); generic: the generic row's tests and
#   sanitizers, then the MLA rows (or QSDPA_GPU_EXTRA_ROWS) against a baseline; prefill: the prefill kernel's
#   coverage rows, the fuzz, and its rows (staging off) against a baseline; fuzz: build, then only
#   test_cuda_random (QSDPA_GPU_FUZZ_SEEDS, QSDPA_GPU_FUZZ_SECONDS a seed, QSDPA_GPU_FUZZ_LEGS environments, QSDPA_GPU_FUZZ_REPLAYS,
#   QSDPA_GPU_FUZZ_TIMEOUT the kill after which the test prints the case under way;
#   it also runs in every checking mode); coverage: build, the whole test_cuda_coverage alone, then the fuzz; bench: the full benchmark and
#   PyTorch's baselines only (no GPU tests, sanitizers, multi-GPU stage, prefill-kernel rows or ncu: a
#   timing call on a commit an earlier call checked; ~7 minutes); variants: also times
#   QSDPA_CUDA_SPLIT_WAVES 0.5, 1.5 and 2 on the 32K matrix; profile-prefill: build, the prefill rows, and
#   ncu (full set, source counters) on one 4K causal prefill launch per format (f16, affine4g64), then stop;
#   profile-decode: the same for one 128K 4-bit decode launch; profile-wide: the same for the wide kernel and its
#   merge at MLA decode (4-bit, 32K; QSDPA_GPU_NCU_WIDE=1 adds it to any other mode's end); trace: only the diagnostic build
#   (QSDPA_CUDA_DEC_TRACE=1) and its per-phase timeline of one decode call at a few shapes (trace.txt);
#   host: build, then what the host pays per call (bench/gpu_host.cu, nsys CUDA API sums; host.txt);
#   sweep: build, then one run-time knob (QSDPA_GPU_SWEEP="NAME=v1 v2 ...") over eight decode shapes (sweep.txt);
#   floor: build, then bench/gpu_floor.cu (a read-only kernel over the decode caches' sizes) beside the decode
#   rows of those sizes and any QSDPA_GPU_EXTRA_ROWS (floor.txt); portable: the sm_90a build's API and cache
#   tests, then the GPU tests on a build for 80 (what a card runs from PTX when no binary of its own is there);
#   kshift-speed: build, the staged prefill rows and the MLA decode row with K's shift and without, ncu durations
#   of the MLA row's kernels both ways, then the shift's test cases
set -u
OUT=${OUT:-/tmp/qsdpa-gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
MODE=${1:-full}
if [ "$MODE" = bench ]; then export QSDPA_GPU_SKIP_CHECKS=1 QSDPA_GPU_SKIP_MULTI=1; fi
# the full run's extra stages (prefill-kernel rows, ncu, kernel durations): not in quick or bench
full_extras() { [ "$MODE" != quick ] && [ "$MODE" != bench ]; }
B=build-gpu
T0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - T0 ))s"; }
# Configure and build the library of tree $1 in $2 with CUDA flags $3 (plus any targets
# after them), then this tree's bench_gpu.cu against it: one benchmark source for every
# library timed in a run.
build_tree() {
  local src=$1 dir=$2 flags=$3
  shift 3
  cmake -S "$src" -B "$dir" -DQSDPA_CUDA=ON -DQSDPA_CUDA_ARCHITECTURES="${QSDPA_GPU_ARCH:-90a}" -DQSDPA_BUILD_TOOLS=OFF \
      -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=$flags" >/dev/null &&
    cmake --build "$dir" -j16 --target qsdpa "$@" &&
    nvcc -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude bench/bench_gpu.cu -L"$dir" -lqsdpa \
      -Xlinker -rpath,"$PWD/$dir" -o "$dir/bench_gpu"
}
export -f build_tree
# the device cache's tests (allocations, copies, the window's growth, captures) under memcheck, into sanitizer.log
cache_memcheck() {
  local cs
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for t in test_cache_cuda test_cache_io; do
    timeout 120 "$cs" --tool memcheck --leak-check full "$B/tests/$t" >>"$OUT/sanitizer.log" 2>&1
    echo "memcheck $t rc=$?" | tee -a "$OUT/sanitizer.log"
  done
  grep -E "ERROR SUMMARY|LEAK SUMMARY" "$OUT/sanitizer.log" | sort | uniq -c
}
# test_cuda_random (random API calls on the device against the CPU reference) for QSDPA_GPU_FUZZ_SECONDS per
# seed (default 60) over QSDPA_GPU_FUZZ_SEEDS (default: two fresh ones), into tests.log
fuzz_run() {
  local seeds=${QSDPA_GPU_FUZZ_SEEDS:-"$RANDOM$RANDOM $RANDOM$RANDOM"}
  # cases that once failed (seed:case; a change to the case generator renumbers them): f32 scales rounded to
  # f16 by the prefill kernel (run 180); NVFP4 group scales rounded to f16 (5656:205, run 186); K rounded to f16
  # on the staged path (236869353:466, SPEC 8.1, mended by K's shift in session 29); 613923556:1060 (SPEC 8.1's
  # class the shift leaves, runs 206-207: reported KNOWN, rc 0, since session 31); 1657218644:442 (the prefill
  # kernel's shifted bias rounded to f16 where an outlier channel set it, run 253; SPEC 8.1's bias rule); 179759383:456
  # (FAILS as of session 41, run 265: the wide kernel, MLA shape over f32 rows, partial, 1.3x f16's bound; not yet
  # diagnosed). The 48 KB wide launch of run 178 is a coverage case now.
  for replay in ${QSDPA_GPU_FUZZ_REPLAYS:-4404:637 5656:205 236869353:466 613923556:1060 1657218644:442 179759383:456}; do
    QSDPA_TEST_SEED=${replay%%:*} QSDPA_FUZZ_CASE=${replay#*:} timeout 60 "$B/tests/test_cuda_random" >>"$OUT/tests.log" 2>&1
    echo "test_cuda_random (replay $replay) rc=$?" | tee -a "$OUT/tests.log"
  done
  # QSDPA_GPU_FUZZ_LEGS: ";"-separated environment settings, each seed run under each (default: one leg, none),
  # e.g. "QSDPA_CUDA_STAGED=0;QSDPA_CUDA_GENERIC_WIDE=2" for the paths the defaults leave out
  local leg_list=("")
  [ -n "${QSDPA_GPU_FUZZ_LEGS:-}" ] && IFS=';' read -r -a leg_list <<<"$QSDPA_GPU_FUZZ_LEGS"
  for seed in $seeds; do
    for leg in "${leg_list[@]}"; do
      # shellcheck disable=SC2086  # assignments split on spaces by design
      env $leg QSDPA_TEST_SEED=$seed QSDPA_FUZZ_SECONDS=${QSDPA_GPU_FUZZ_SECONDS:-60} timeout ${QSDPA_GPU_FUZZ_TIMEOUT:-400} \
        "$B/tests/test_cuda_random" >>"$OUT/tests.log" 2>&1
      echo "test_cuda_random (seed $seed${leg:+, $leg}) rc=$?" | tee -a "$OUT/tests.log"
    done
  done
  grep -A1 "^FAIL" "$OUT/tests.log" | head -12
  grep -c "^KNOWN" "$OUT/tests.log" | sed 's/^/results of the known class (SPEC 8.1, not failures): /'
}
# SPEC 8.1's mend (K's shift) in the coverage test: the N(1000, 1) cases pass with the shift and fail without it (so
# they can); K with an outlier channel (SPEC 9.2), which the shift must leave alone: each case's error, with the
# shift and without (kshift.txt; rc lines in tests.log; without the shift the "+57" cases, held to half f16's
# bound, fail: run 254 had them at 2.4e-3 unshifted)
kshift_cases() {
  QSDPA_CUDA_SHAPE="N(1000" timeout 120 "$B/tests/test_cuda_coverage" >"$OUT/kshift.txt" 2>&1
  echo "K-shift cases rc=$?" | tee -a "$OUT/tests.log"
  QSDPA_CUDA_K_SHIFT=0 QSDPA_CUDA_SHAPE="N(1000" timeout 120 "$B/tests/test_cuda_coverage" >>"$OUT/kshift.txt" 2>&1
  echo "K-shift cases with QSDPA_CUDA_K_SHIFT=0 rc=$? (must fail)" | tee -a "$OUT/tests.log"
  for shift in 1 0; do
    echo "== K outlier channel, QSDPA_CUDA_K_SHIFT=$shift" >>"$OUT/kshift.txt"
    QSDPA_CUDA_CASE_ERRORS=1 QSDPA_CUDA_K_SHIFT=$shift QSDPA_CUDA_SHAPE="outlier" timeout 120 \
      "$B/tests/test_cuda_coverage" >>"$OUT/kshift.txt" 2>&1
    echo "outlier cases with QSDPA_CUDA_K_SHIFT=$shift rc=$?" | tee -a "$OUT/tests.log"
  done
}
# the whole test_cuda_coverage as QSDPA_GPU_COVERAGE_SHARDS (default 8) processes at once, each a share of it
# (QSDPA_CUDA_SHARD: the CPU reference, one thread a case, is what takes the time; run 250's single process went
# past 360 s), each within $1 seconds; their output in coverage.txt, and the check a share cannot make alone:
# every route the shares print was taken by some call, and generic_attention itself ran (its count above its
# decode and wide kernels')
coverage_shards() {
  local n=${QSDPA_GPU_COVERAGE_SHARDS:-8} i r bad=0 t0 pids=()
  t0=$(date +%s)
  for ((i = 0; i < n; i++)); do
    QSDPA_CUDA_SHARD=$i/$n timeout "$1" "$B/tests/test_cuda_coverage" >"$OUT/coverage.$i.txt" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; r=$?
    echo "test_cuda_coverage share $i/$n rc=$r" | tee -a "$OUT/tests.log"
    [ "$r" = 0 ] || bad=1
  done
  for ((i = 0; i < n; i++)); do cat "$OUT/coverage.$i.txt"; done >"$OUT/coverage.txt" && rm -f "$OUT"/coverage.[0-9]*.txt
  awk '/^route /{n[$2] += $3} END {
         for (r in n) { printf "route %-19s %d calls (all shares)\n", r, n[r]; if (n[r] < 1) { print "FAIL no call took route " r; bad = 1 } }
         if (n["cuda.generic"] <= n["cuda.generic.decode"] + n["cuda.generic.wide"]) { print "FAIL no call took generic_attention"; bad = 1 }
         exit bad }' "$OUT/coverage.txt" | tee -a "$OUT/tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || bad=1
  echo "test_cuda_coverage (whole, $n shares) rc=$bad ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/tests.log"
  grep -E "FAIL" "$OUT/coverage.txt" | head -20
}
# `bench_gpu quick` of binary $2 (environment assignments after it), rows tagged [$1] in bench.txt
quick_rows() {
  local label=$1 bin=$2
  shift 2
  env "$@" timeout 60 "$bin" quick 2>&1 | grep -v '^RESULT' | sed "s/^/[$label] /" >>"$OUT/bench.txt"
}
# decode rows outside the 32K matrix: `bench_gpu one` of binary $2 on shape $3 (environment assignments
# after it), the row tagged [$1] in $ROWS_OUT (bench.txt unless set)
LONG_SHAPES=("affine4g64 1 131072 1" "affine4g64 8 8192 1" "affine4g64 1 2048 1" "affine4g64 1 8192 1" "affine4g64 1 65536 1")
long_row() {
  local label=$1 bin=$2 shape=$3
  shift 3
  env "$@" timeout 60 "$bin" one $shape 2>&1 | grep -E "^(affine|mxfp|nvfp|f16|k8v4)" | sed "s/^/[$label] /" >>"${ROWS_OUT:-$OUT/bench.txt}"
}

# extra decode rows, QSDPA_GPU_EXTRA_ROWS="env assignments|shape;..." (`bench_gpu one` shapes, any format spec or
# KSPEC/VSPEC, D as a fifth field; a row without "|" is a shape alone), two rounds, each row by the baseline's
# binary where this call built one and by this tree's, tagged [base] / [new] with the row's env; into $ROWS_OUT
# (bench.txt unless set)
extra_rows() {
  local row envs shape bin label round
  local -a rows envv
  IFS=';' read -ra rows <<<"${QSDPA_GPU_EXTRA_ROWS:-}"
  for round in 1 2; do
    for row in "${rows[@]}"; do
      envs="" shape=$row
      [[ $row == *"|"* ]] && IFS='|' read -r envs shape <<<"$row"
      read -ra envv <<<"$envs"
      for label in base new; do
        bin=$B/bench_gpu
        if [ $label = base ]; then
          [ -n "${BASE_BUILD:-}" ] || continue # only a baseline built in this call (not one left on the machine)
          bin=build-base/bench_gpu
        fi
        [ -x "$bin" ] || continue
        env "${envv[@]}" timeout 60 "$bin" one $shape 2>&1 | grep -E " cuda\.[a-z]" | grep -v "^#" |
          awk -v t="$label${envs:+ $envs}" '{print "[" t "] " $0}' >>"${ROWS_OUT:-$OUT/bench.txt}"
      done
    done
  done
}

# ncu (full set) on $4 launches of the kernels matching regex $2 after skipping $3, of the program and arguments
# after them: the details into ncu.txt, the per-SASS-instruction counters (executed, stall samples by reason, read
# offline) into sass_$1.csv.gz
ncu_profile() {
  local name=$1 regex=$2 skip=$3 count=$4 NCU
  shift 4
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  timeout 150 "$NCU" --clock-control none -k "regex:$regex" --launch-skip "$skip" --launch-count "$count" --set full \
    --import-source no -f -o "/tmp/$name" "$@" >>"$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?" >>"$OUT/ncu.txt"
  "$NCU" -i "/tmp/$name.ncu-rep" --print-details all >>"$OUT/ncu.txt" 2>&1
  "$NCU" -i "/tmp/$name.ncu-rep" --page source --print-source sass --csv 2>&1 | gzip >"$OUT/sass_$name.csv.gz"
}
# ncu on the wide kernel and its merge at MLA decode (Dk 576 / Dv 512, 32 heads over one KV head, 4-bit, 32K)
profile_wide() {
  stamp "ncu generic_wide (MLA 4-bit 32K)" | tee -a "$OUT/ncu.txt"
  QSDPA_BENCH_HKV=1 QSDPA_BENCH_DV=512 ncu_profile wide "generic_(wide|combine)" 20 2 \
    "$B/bench_gpu" one affine:4:64/affine:4:64 1 32768 1 576
}
if [ "$MODE" = trace ]; then
  # the diagnostic build (QSDPA_CUDA_DEC_TRACE=1): per-CTA phase marks of one decode call per shape
  stamp "trace build" | tee "$OUT/trace.txt"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv >>"$OUT/trace.txt" 2>&1
  timeout 300 bash -c "build_tree . build-trace '-DQSDPA_CUDA_DEC_TRACE=1'" >"$OUT/trace-build.log" 2>&1
  echo "trace build rc=$?" | tee -a "$OUT/trace.txt"
  for shape in "affine4g64 1 2048 1" "affine4g64 1 8192 1" "affine4g64 1 32768 1" "affine4g64 1 131072 1" \
               "affine8g64 1 32768 1" "affine4g64 8 8192 1"; do
    stamp "trace $shape" >>"$OUT/trace.txt"
    QSDPA_CUDA_TRACE_CALL=100 timeout 60 build-trace/bench_gpu one $shape >>"$OUT/trace.txt" 2>&1
  done
  # every CTA's marks of one 32K call (split, head, SM), with the default prefetch and with one chunk
  for pre in 4 1; do
    echo "== QSDPA_CUDA_DEC_PREFETCH=$pre" >>"$OUT/trace-ctas.txt"
    QSDPA_CUDA_DEC_PREFETCH=$pre QSDPA_CUDA_TRACE_CTAS=1 QSDPA_CUDA_TRACE_CALL=100 timeout 60 \
      build-trace/bench_gpu one affine4g64 1 32768 1 >>"$OUT/trace-ctas.txt" 2>&1
  done
  stamp done | tee -a "$OUT/trace.txt"
  exit 0
fi
if [ "$MODE" = cpu ]; then
  # the device host's CPU (an Intel Xeon with AVX-512 and AMX on the lent machines so far) for the CPU tier's
  # kernels that a session's own machine may lack: its CPU flags, the CPU tests in a release and an ASan+UBSan
  # build (test_cpu_kernels, also on bf16 tiles alone; QSDPA_GPU_CPU_REPLAYS seed:case of test_random_api; a
  # fuzz of QSDPA_GPU_FUZZ_SECONDS, default 60, a seed; QSDPA_GPU_CPU_SEEDS: test_cpu_kernels seeds to rerun in
  # both tile modes), then `qsdpa bench` at 32K (not with QSDPA_GPU_SKIP_BENCH) ([base] beside [new] where
  # build-base-src came; QSDPA_GPU_CPU_FORMATS, QSDPA_GPU_CPU_THREADS) into cpu.txt. No GPU work.
  C=$OUT/cpu.txt
  lscpu | grep -E "Model name|^CPU\(s\)" >"$C"
  grep -o -w "avx512[a-z_0-9]*\|amx_[a-z0-9]*" /proc/cpuinfo | sort -u | tr '\n' ' ' >>"$C"; echo >>"$C"
  cpu_build() { # $1 source, $2 build dir, then cmake options
    local src=$1 dir=$2
    shift 2
    cmake -S "$src" -B "$dir" -DQSDPA_CUDA=OFF -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null && cmake --build "$dir" -j16 >/dev/null
  }
  [ -d build-base-src ] && (cpu_build build-base-src build-cpu-base; echo "base build rc=$?" >"$OUT/base-build.txt") &
  cpu_build . build-cpu; echo "build rc=$?" | tee -a "$C"
  (cpu_build . build-cpu-asan -DQSDPA_SANITIZE=ON; echo "asan build rc=$?" >"$OUT/asan-build.txt") &
  stamp "cpu tests" | tee -a "$C"
  timeout 200 build-cpu/tests/test_cpu_kernels >"$OUT/cpu_kernels.txt" 2>&1; echo "test_cpu_kernels rc=$?" | tee -a "$C"
  QSDPA_CPU_AMX_INT8=0 timeout 200 build-cpu/tests/test_cpu_kernels >>"$OUT/cpu_kernels.txt" 2>&1
  echo "test_cpu_kernels (QSDPA_CPU_AMX_INT8=0) rc=$?" | tee -a "$C"
  for seed in ${QSDPA_GPU_CPU_SEEDS:-}; do # seeds of test_cpu_kernels to rerun (a failure's), in both tile modes
    for int8 in 1 0; do
      QSDPA_TEST_SEED=$seed QSDPA_CPU_AMX_INT8=$int8 timeout 200 build-cpu/tests/test_cpu_kernels >>"$OUT/cpu_kernels.txt" 2>&1
      echo "test_cpu_kernels (seed $seed, QSDPA_CPU_AMX_INT8=$int8) rc=$?" | tee -a "$C"
    done
  done
  for replay in ${QSDPA_GPU_CPU_REPLAYS:-}; do
    QSDPA_TEST_SEED=${replay%%:*} QSDPA_FUZZ_CASE=${replay#*:} timeout 60 build-cpu/tests/test_random_api >>"$OUT/cpu_kernels.txt" 2>&1
    echo "test_random_api (replay $replay) rc=$?" | tee -a "$C"
  done
  for seed in $RANDOM$RANDOM $RANDOM$RANDOM; do
    QSDPA_TEST_SEED=$seed QSDPA_FUZZ_SECONDS=${QSDPA_GPU_FUZZ_SECONDS:-60} timeout 200 build-cpu/tests/test_random_api \
      >>"$OUT/cpu_kernels.txt" 2>&1
    echo "test_random_api (seed $seed) rc=$?" | tee -a "$C"
  done
  wait
  cat "$OUT/asan-build.txt" "$OUT/base-build.txt" 2>/dev/null | tee -a "$C"
  timeout 300 build-cpu-asan/tests/test_cpu_kernels >>"$OUT/cpu_kernels.txt" 2>&1; echo "test_cpu_kernels (ASan+UBSan) rc=$?" | tee -a "$C"
  grep -E "^FAIL" "$OUT/cpu_kernels.txt" | head -20 | cut -c1-300
  stamp "cpu bench" | tee -a "$C"
  [ -n "${QSDPA_GPU_SKIP_BENCH:-}" ] && { stamp done | tee -a "$C"; exit 0; } # the tests alone
  for round in 1 2; do
    for lq in 1 4; do
      for label in base new; do
        bin=build-cpu/tools/qsdpa
        [ $label = base ] && bin=build-cpu-base/tools/qsdpa
        [ -x "$bin" ] || continue
        for f in ${QSDPA_GPU_CPU_FORMATS:-affine:4:64 affine:8:64}; do
          QSDPA_BENCH_LQ=$lq timeout 100 "$bin" bench --threads "${QSDPA_GPU_CPU_THREADS:-2}" --contexts 32768 --repeats 9 \
            --format "$f" --no-prefill --no-reference 2>&1 | awk -v t="$label" '$5 ~ /^(f32|f16|bf16)$/ {print "[" t "]", $0}' >>"$C"
        done
      done
    done
  done
  stamp done | tee -a "$C"
  exit 0
fi
stamp build | tee "$OUT/build.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >>"$OUT/build.log" 2>&1
TEST_TARGETS="test_cuda_coverage test_cuda_mlx test_cuda_api test_cuda_random test_wgmma_layout test_cache_cuda test_cache_io"
[ "$MODE" = floor ] && TEST_TARGETS="gpu_floor"   # timing only: the read-only kernel (bench/gpu.cmake)
[ "$MODE" = profile-one ] && TEST_TARGETS=""   # bench_gpu alone
[ "$MODE" = kshift-speed ] && TEST_TARGETS="test_cuda_coverage test_cuda_api"   # its own few tests
[ "$MODE" = prefill ] && [ -n "${QSDPA_GPU_SKIP_CHECKS:-}" ] && TEST_TARGETS=""   # timing only
# a build for another architecture (QSDPA_GPU_ARCH, e.g. 80 with `fuzz`) has no wgmma layout test
[ "${QSDPA_GPU_ARCH:-90a}" != 90a ] && TEST_TARGETS=${TEST_TARGETS/test_wgmma_layout/}
if [ "$MODE" = portable ]; then
  # the portable build (QSDPA_CUDA_ARCHITECTURES=80: sm_80 code, which a Hopper card runs as PTX the driver
  # compiles) builds beside the sm_90a one, on the CPU while the sm_90a tests run
  export CUDA_CACHE_MAXSIZE=4294967296 # the driver's compiled kernels kept between the test programs
  (QSDPA_GPU_ARCH=80 timeout 400 bash -c "build_tree . build-sm80 '' ${TEST_TARGETS/test_wgmma_layout/}" >"$OUT/build-sm80.log" 2>&1
   echo "portable build rc=$?" >>"$OUT/build-sm80.log") &
  PORTABLE_BUILD=$!
fi
timeout 240 bash -c "build_tree . $B '' $TEST_TARGETS" >>"$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$OUT/build.log"
tail -5 "$OUT/build.log"
# ptxas serializing wgmma (C7514 / C7515: accumulator registers read or written while a wgmma is in flight)
# costs speed silently
grep -h "wgmma.mma_async instructions are serialized" "$OUT/build.log" | sed 's/.*(C75\([0-9]*\)).*function ./wgmma serialized (C75\1): /' | sort -u | head -5
# a kernel that hangs would eat every later stage's time limit: one prefill launch first, stop if it hangs
# (a build for another architecture: the driver compiles its PTX on the first launches, run 201)
SMOKE_S=30
[ "${QSDPA_GPU_ARCH:-90a}" != 90a ] && SMOKE_S=240
if ! timeout $SMOKE_S "$B/bench_gpu" prefill affine4g64 >"$OUT/smoke.txt" 2>&1; then
  echo "SMOKE FAILED: bench_gpu prefill affine4g64 did not finish in $SMOKE_S s; stopping" | tee -a "$OUT/build.log"
  exit 1
fi
if [ "$MODE" = portable ]; then
  # sm_90a: the tests of host-side changes (API, cache); then every GPU test on the portable build, whose
  # prefill kernel takes its mma.sync path and no PDL on this card (QSDPA_GPU_PORTABLE_COVERAGE: the coverage
  # run's limit in seconds, default 300)
  stamp "sm_90a tests" | tee "$OUT/tests.log"
  for t in test_cuda_api test_cache_cuda test_cache_io test_cuda_mlx; do
    timeout 120 "$B/tests/$t" >>"$OUT/tests.log" 2>&1
    echo "$t (sm_90a) rc=$?" | tee -a "$OUT/tests.log"
  done
  timeout 60 "$B/bench_gpu" prefill 2>&1 | grep "^prefill" | sed "s/^/[sm_90a] /" >>"$OUT/tests.log"
  # the device cache's and the generic merge's host-side changes under memcheck, the NaN-sink cases on each of
  # the generic row's merges (split, wide wherever it can, 4-key tiles)
  cache_memcheck
  for leg in "" "QSDPA_CUDA_GENERIC_WIDE=2" "QSDPA_CUDA_GENERIC_DECODE=0 QSDPA_CUDA_GENERIC_WIDE=0 QSDPA_CUDA_GENERIC_TILE=4"; do
    # shellcheck disable=SC2086  # assignments split on spaces by design
    env $leg QSDPA_CUDA_SHAPE="NaN sink" timeout 60 "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
    echo "test_cuda_coverage (NaN sinks${leg:+, $leg}) rc=$?" | tee -a "$OUT/tests.log"
  done
  wait "$PORTABLE_BUILD"
  tail -3 "$OUT/build-sm80.log" | tee -a "$OUT/tests.log"
  stamp "portable (sm_80) tests" | tee -a "$OUT/tests.log"
  timeout 180 build-sm80/bench_gpu prefill 2>&1 | grep "^prefill" | sed "s/^/[sm_80] /" >>"$OUT/tests.log"
  echo "portable prefill rows rc=${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"
  for t in test_cuda_api test_cache_cuda test_cuda_mlx; do
    timeout 180 "build-sm80/tests/$t" >>"$OUT/tests.log" 2>&1
    echo "$t (sm_80) rc=$?" | tee -a "$OUT/tests.log"
  done
  # the coverage run a group of rows at a time (a call's limit cuts it where it is, and what ran is known), each
  # group within QSDPA_GPU_PORTABLE_COVERAGE seconds (default 150)
  for only in d256. d64. generic d128.; do
    QSDPA_CUDA_ONLY=$only timeout "${QSDPA_GPU_PORTABLE_COVERAGE:-150}" build-sm80/tests/test_cuda_coverage >>"$OUT/tests.log" 2>&1
    echo "test_cuda_coverage (sm_80, rows $only) rc=$? at +$(( $(date +%s) - T0 ))s" | tee -a "$OUT/tests.log"
  done
  grep -E "FAIL" "$OUT/tests.log" | head -20
  stamp done | tee -a "$OUT/tests.log"
  exit 0
fi
if [ "$MODE" = coverage ]; then
  # the whole test_cuda_coverage first and alone (its shares within QSDPA_GPU_COVERAGE_S, default 300), then
  # the fuzz (its replays and seeds) in what the call has left
  stamp coverage | tee "$OUT/tests.log"
  coverage_shards "${QSDPA_GPU_COVERAGE_S:-300}"
  stamp fuzz | tee -a "$OUT/tests.log"
  fuzz_run
  stamp done | tee -a "$OUT/tests.log"
  exit 0
fi
if [ "$MODE" = fuzz ]; then
  stamp fuzz | tee "$OUT/tests.log"
  fuzz_run
  stamp done | tee -a "$OUT/tests.log"
  exit 0
fi
if [ "$MODE" = kshift-speed ]; then
  # what K's shift costs a prefill call (the shift kernel, session 38), then its correctness cases in the time left:
  # the staged 4K causal prefill rows and the MLA decode row with the shift and without, two rounds; kshift_cases;
  # test_cuda_api
  stamp "kshift speed" | tee "$OUT/tests.log"
  for round in 1 2; do
    for shift in 1 0; do
      QSDPA_CUDA_K_SHIFT=$shift timeout 60 "$B/bench_gpu" prefill 2>&1 | grep "^prefill" | sed "s/^/[r$round shift=$shift] /" \
        | tee -a "$OUT/tests.log"
      # MLA decode (Dk 576 / Dv 512, one KV head: the wide kernel, which takes the shift since session 36)
      QSDPA_BENCH_HKV=1 QSDPA_BENCH_DV=512 QSDPA_CUDA_K_SHIFT=$shift timeout 60 "$B/bench_gpu" one \
        affine:4:64/affine:4:64 1 32768 1 576 2>&1 | grep -E "^D=576 " | sed "s/^/[r$round shift=$shift MLA] /" \
        | tee -a "$OUT/tests.log"
    done
  done
  # what each kernel of the MLA row takes with the shift and without (ncu durations, caches flushed; the device
  # has no nsys): the shift's own kernels against what the wide kernel and its merge gain or lose
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for shift in 1 0; do
    echo "== ncu, MLA 4-bit 32K, QSDPA_CUDA_K_SHIFT=$shift" >>"$OUT/tests.log"
    QSDPA_BENCH_HKV=1 QSDPA_BENCH_DV=512 QSDPA_CUDA_K_SHIFT=$shift timeout 120 "$NCU" --clock-control none \
      --metrics gpu__time_duration.sum -k "regex:shift|generic_(wide|combine)" --launch-skip 40 --launch-count 8 \
      "$B/bench_gpu" one affine:4:64/affine:4:64 1 32768 1 576 2>&1 | grep -E "^  [a-z_]|gpu__time_duration" \
      | sed -E "s/\(.*\) \(([0-9, ]+)\)x\(([0-9, ]+)\).*/ grid (\1) block (\2)/" >>"$OUT/tests.log"
  done
  kshift_cases
  timeout 120 "$B/tests/test_cuda_api" >>"$OUT/tests.log" 2>&1; echo "test_cuda_api rc=$?" | tee -a "$OUT/tests.log"
  stamp done | tee -a "$OUT/tests.log"
  exit 0
fi
if [ "$MODE" = kshift ]; then
  # SPEC 8.1's mend (K's shift, qsdpa_cuda_k_shift, session 29): its coverage cases pass, and fail without it (so
  # they can); the API, MLX and cache tests; the fuzz with its replays; the prefill rows with the shift and without
  # (staged by default, then staging off: the prefill kernel); last, the whole coverage
  stamp kshift | tee "$OUT/tests.log"
  kshift_cases
  for t in test_cuda_api test_cuda_mlx test_cache_cuda; do
    timeout 120 "$B/tests/$t" >>"$OUT/tests.log" 2>&1
    echo "$t rc=$?" | tee -a "$OUT/tests.log"
  done
  QSDPA_GPU_FUZZ_SECONDS=${QSDPA_GPU_FUZZ_SECONDS:-30} fuzz_run
  for round in $([ -z "${QSDPA_GPU_SKIP_BENCH:-}" ] && echo 1 2); do # QSDPA_GPU_SKIP_BENCH=1: no timing
    for shift in 1 0; do
      echo "== round $round QSDPA_CUDA_K_SHIFT=$shift (staged)" >>"$OUT/bench.txt"
      QSDPA_CUDA_K_SHIFT=$shift timeout 120 "$B/bench_gpu" prefill >>"$OUT/bench.txt" 2>&1
      echo "== round $round QSDPA_CUDA_K_SHIFT=$shift (staging off)" >>"$OUT/bench.txt"
      QSDPA_CUDA_STAGE_PREFILL_ROWS=0 QSDPA_CUDA_K_SHIFT=$shift timeout 120 "$B/bench_gpu" prefill >>"$OUT/bench.txt" 2>&1
    done
  done
  if [ -z "${QSDPA_GPU_SKIP_COVERAGE:-}" ]; then # QSDPA_GPU_SKIP_COVERAGE=1: the whole coverage left to a later call
    stamp coverage | tee -a "$OUT/tests.log"
    coverage_shards "${QSDPA_GPU_COVERAGE_S:-300}"
  fi
  grep -sE "FAIL" "$OUT/tests.log" "$OUT/coverage.txt" | head -20
  stamp done | tee -a "$OUT/tests.log"
  exit 0
fi
if [ "$MODE" = host ]; then
  # host time per call: the CUDA runtime calls alone (gpu_host.cu), one call's in all (bench_gpu's host column),
  # and which runtime calls a decode call makes and what each costs (nsys, CUDA API trace)
  host_build() { # $1: a build dir with libqsdpa
    nvcc -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude bench/gpu_host.cu -L"$1" -lqsdpa \
      -Xlinker -rpath,"$PWD/$1" -o "$1/gpu_host"
  }
  host_build "$B" && timeout 120 "$B/gpu_host" | tee "$OUT/host.txt"
  if [ -d build-base-src ]; then
    timeout 300 bash -c "build_tree build-base-src build-base ''" >"$OUT/build-base.log" 2>&1 && host_build build-base &&
      { echo "== base $(cat build-base-src/.commit 2>/dev/null)"; timeout 120 build-base/gpu_host; } | tee -a "$OUT/host.txt"
  fi
  for round in 1 2; do
    for shape in "affine4g64 1 2048 1" "affine4g64 1 32768 1" "f16 1 2048 1"; do
      long_row main "$B/bench_gpu" "$shape"
      [ -x build-base/bench_gpu ] && long_row base build-base/bench_gpu "$shape"
    done
  done
  cat "$OUT/bench.txt" >>"$OUT/host.txt"
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    timeout 120 "$NSYS" profile -t cuda -o /tmp/host_prof -f true "$B/bench_gpu" one affine4g64 1 2048 1 >/dev/null 2>&1
    timeout 120 "$NSYS" stats -r cuda_api_sum /tmp/host_prof.nsys-rep >>"$OUT/host.txt" 2>&1
  else
    echo "no nsys" >>"$OUT/host.txt"
  fi
  stamp done | tee -a "$OUT/host.txt"
  exit 0
fi
if [ "$MODE" = floor ]; then
  # what a kernel that only reads the cache costs (bench/gpu_floor.cu), beside the decode rows of the same sizes,
  # then the extra rows (QSDPA_GPU_EXTRA_ROWS, below)
  stamp floor | tee "$OUT/floor.txt"
  timeout 200 "$B/gpu_floor" 1 2 4 >>"$OUT/floor.txt" 2>&1
  echo "gpu_floor rc=$?" >>"$OUT/floor.txt"
  for round in 1 2; do
    for shape in "${LONG_SHAPES[@]}" "affine4g64 1 32768 1"; do ROWS_OUT="$OUT/floor.txt" long_row decode "$B/bench_gpu" "$shape"; done
  done
  ROWS_OUT="$OUT/floor.txt" extra_rows
  stamp done | tee -a "$OUT/floor.txt"
  exit 0
fi
# the baseline builds on the CPU while the tests below run on the GPU (nothing is timed before it is joined)
if [ -d build-base-src ]; then
  timeout 300 bash -c "build_tree build-base-src build-base ''" >"$OUT/build-base.log" 2>&1 &
  BASE_BUILD=$!
fi

if [ "$MODE" = generic ]; then
  # the generic row alone (for changes to its kernels or merge): its coverage at default routing, with the wide
  # kernel wherever it can and with 4-key tiles; test_cuda_api; memcheck and racecheck on generic and wide
  # cases; then QSDPA_GPU_EXTRA_ROWS ([base] beside [new] where build-base-src came), the MLA rows by default
  stamp "generic tests" | tee "$OUT/tests.log"
  for leg in "" "QSDPA_CUDA_GENERIC_WIDE=2" "QSDPA_CUDA_GENERIC_DECODE=0 QSDPA_CUDA_GENERIC_WIDE=0 QSDPA_CUDA_GENERIC_TILE=4"; do
    # shellcheck disable=SC2086  # assignments split on spaces by design
    env $leg QSDPA_CUDA_ONLY=generic timeout 150 "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
    echo "test_cuda_coverage (generic${leg:+, $leg}) rc=$?" | tee -a "$OUT/tests.log"
  done
  timeout 120 "$B/tests/test_cuda_api" >>"$OUT/tests.log" 2>&1
  echo "test_cuda_api rc=$?" | tee -a "$OUT/tests.log"
  grep FAIL "$OUT/tests.log" | head -20
  fuzz_run
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=generic timeout 90 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
      >>"$OUT/sanitizer.log" 2>&1
    echo "$tool coverage(generic, quick) rc=$?" | tee -a "$OUT/sanitizer.log"
    for shape in "wide K affine:4:64 V affine:4:64 Dk576" "wide K mxfp4"; do
      QSDPA_CUDA_ONLY=cuda.generic QSDPA_CUDA_SHAPE="$shape" timeout 60 "$CS" --tool $tool \
        "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
      echo "$tool coverage($shape) rc=$?" | tee -a "$OUT/sanitizer.log"
    done
  done
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log" | sort | uniq -c
  [ -n "${BASE_BUILD:-}" ] && { wait "$BASE_BUILD"; echo "baseline build rc=$?" | tee -a "$OUT/build.log"; }
  M="QSDPA_BENCH_HKV=1 QSDPA_BENCH_DV=512"
  : "${QSDPA_GPU_EXTRA_ROWS:=$M|affine:4:64/affine:4:64 1 32768 1 576;$M|affine:4:64/affine:4:64 1 8192 1 576;$M|f16 1 32768 1 576;$M|affine:8:64/affine:8:64 1 32768 1 576;$M|affine:4:64/affine:4:64 1 4096 512 576 causal}"
  extra_rows
  cat "$OUT/bench.txt"
  [ -n "${QSDPA_GPU_NCU_WIDE:-}" ] && profile_wide
  stamp done
  exit 0
fi
if [ "$MODE" = prefill ]; then
  # a change to the prefill kernel: its coverage rows (QSDPA_GPU_ONLY, default .d), the fuzz (neither with
  # QSDPA_GPU_SKIP_CHECKS), then the 4K causal
  # prefill and chunked-prefill rows on the prefill kernel itself (staging off), [base] beside [new] where
  # build-base-src came, two rounds (prefill.txt)
  if [ -z "${QSDPA_GPU_SKIP_CHECKS:-}" ]; then
    stamp "prefill tests" | tee "$OUT/tests.log"
    QSDPA_CUDA_STAGE_PREFILL_ROWS=0 QSDPA_CUDA_ONLY=${QSDPA_GPU_ONLY:-.d} timeout 280 "$B/tests/test_cuda_coverage" \
      >>"$OUT/tests.log" 2>&1
    echo "test_cuda_coverage (${QSDPA_GPU_ONLY:-.d} rows, staged prefill off) rc=$?" | tee -a "$OUT/tests.log"
    grep FAIL "$OUT/tests.log" | head -10
    # racecheck on prefill-kernel CTAs of at most 64 rows (the second row warpgroup idle): 60 rows, 64 rows
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for shape in "Lq15 GQA4 (60 rows)" "decode GQA64"; do
      QSDPA_CUDA_STAGE_PREFILL_ROWS=0 QSDPA_CUDA_ONLY=a4g64.d128.f16 QSDPA_CUDA_SHAPE="$shape" timeout 120 "$CS" \
        --tool racecheck --racecheck-report analysis "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
      echo "racecheck coverage(a4g64.d128.f16 $shape) rc=$?" | tee -a "$OUT/tests.log"
    done
    grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/sanitizer.log" | sort | uniq -c
    fuzz_run
  fi
  [ -n "${BASE_BUILD:-}" ] && { wait "$BASE_BUILD"; echo "baseline build rc=$?" | tee -a "$OUT/build.log"; }
  stamp "prefill rows (prefill kernel, staging off)" | tee "$OUT/prefill.txt"
  export QSDPA_CUDA_STAGE_PREFILL_ROWS=0 # the prefill kernel itself from here on
  for round in 1 2; do
    for label in base new; do
      bin=$B/bench_gpu
      [ $label = base ] && { [ -n "${BASE_BUILD:-}" ] || continue; bin=build-base/bench_gpu; }
      timeout 60 "$bin" prefill 2>&1 | grep "^prefill" | sed "s/^/[$label] /" >>"$OUT/prefill.txt"
    done
  done
  # chunked prefill (1024 folded rows), the same two rounds of [base] / [new]
  : "${QSDPA_GPU_EXTRA_ROWS:=affine4g64 1 8192 256;affine8g64 1 8192 256;f16 1 8192 256}"
  ROWS_OUT="$OUT/prefill.txt" extra_rows
  cat "$OUT/prefill.txt"
  stamp done
  exit 0
fi
if [ "$MODE" = sweep ]; then
  # one run-time knob over values (QSDPA_GPU_SWEEP="NAME=v1 v2 ..."), every value on each shape in turn, two rounds
  name=${QSDPA_GPU_SWEEP%%=*} values=${QSDPA_GPU_SWEEP#*=}
  stamp "sweep $name over $values" | tee "$OUT/sweep.txt"
  for round in 1 2; do
    # QSDPA_GPU_SWEEP_SHAPES: ";"-separated `bench_gpu one` shapes in place of the eight decode shapes
    shapes=("affine4g64 1 32768 1" "affine4g64 1 32768 4" "affine8g64 1 32768 1" "mxfp4 1 32768 1"
            "affine4g64 1 2048 1" "affine4g64 1 8192 1" "affine4g64 1 131072 1" "affine4g64 8 8192 1")
    [ -n "${QSDPA_GPU_SWEEP_SHAPES:-}" ] && IFS=';' read -r -a shapes <<<"$QSDPA_GPU_SWEEP_SHAPES"
    for shape in "${shapes[@]}"; do
      for v in $values; do ROWS_OUT="$OUT/sweep.txt" long_row "$name=$v" "$B/bench_gpu" "$shape" "$name=$v"; done
    done
  done
  stamp done | tee -a "$OUT/sweep.txt"
  exit 0
fi
if [ "$MODE" = profile-decode ]; then
  # the 128K 4-bit decode launch (3 CTAs per SM since v22.2)
  ncu_profile decode_a4 fast_decode 20 1 "$B/bench_gpu" one affine4g64 1 131072 1
  stamp done
  exit 0
fi
if [ "$MODE" = profile-wide ]; then
  profile_wide
  stamp done
  exit 0
fi
if [ "$MODE" = profile-one ]; then
  # ncu (full set, per-SASS counters) on one launch of QSDPA_GPU_NCU_KERNEL (a regex, default fast_prefill) for each
  # bench_gpu "one" configuration of QSDPA_GPU_NCU_ONE (";"-separated "FMT B L LQ [D [causal]]"), after timing them
  IFS=';' read -ra shapes <<<"${QSDPA_GPU_NCU_ONE:-affine4g64 1 32768 16;mxfp4 1 32768 16}"
  for s in "${shapes[@]}"; do
    # shellcheck disable=SC2086
    timeout 60 "$B/bench_gpu" one $s | tee -a "$OUT/bench.txt"
  done
  for s in "${shapes[@]}"; do
    tag=$(echo "$s" | tr ' /:' '___') # a file name: no slash from a KSPEC/VSPEC format
    stamp "ncu $s" | tee -a "$OUT/ncu.txt"
    # shellcheck disable=SC2086
    ncu_profile "one_$tag" "${QSDPA_GPU_NCU_KERNEL:-fast_prefill}" 20 1 "$B/bench_gpu" one $s
  done
  stamp done
  exit 0
fi
if [ "$MODE" = profile-prefill ]; then
  timeout 60 "$B/bench_gpu" prefill | tee "$OUT/prefill.txt"
  for f in f16 affine4g64; do
    stamp "ncu prefill $f" | tee -a "$OUT/ncu.txt"
    ncu_profile "prefill_$f" fast_prefill 3 1 "$B/bench_gpu" prefill $f
  done
  stamp done
  exit 0
fi

stamp tests | tee "$OUT/tests.log"
for t in test_wgmma_layout test_cuda_api test_cache_cuda test_cache_io test_cuda_mlx test_cuda_coverage; do
  [ -x "$B/tests/$t" ] || continue
  [ -n "${QSDPA_GPU_SKIP_CHECKS:-}" ] && { echo "$t skipped (QSDPA_GPU_SKIP_CHECKS)" | tee -a "$OUT/tests.log"; continue; }
  [ "$t" = test_cuda_coverage ] && { coverage_shards 300; continue; }
  t0=$(date +%s)
  timeout 300 "$B/tests/$t" >>"$OUT/tests.log" 2>&1
  echo "$t rc=$? ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/tests.log"
done
[ -z "${QSDPA_GPU_SKIP_CHECKS:-}" ] && [ -x "$B/tests/test_cuda_random" ] && fuzz_run
# the generic kernel's 4-key tiles (what GPUs with 99 KB blocks take at the largest head dims)
if [ -z "${QSDPA_GPU_SKIP_CHECKS:-}" ] && [ -x "$B/tests/test_cuda_coverage" ]; then
  QSDPA_CUDA_GENERIC_DECODE=0 QSDPA_CUDA_GENERIC_WIDE=0 QSDPA_CUDA_GENERIC_TILE=4 QSDPA_CUDA_ONLY=generic timeout 90 \
    "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
  echo "test_cuda_coverage (generic, 4-key tiles, decode and wide kernels off) rc=$?" | tee -a "$OUT/tests.log"
  # the wide kernel on every f16/bf16 call of the generic row it can take (fewer than 16 rows, the decode kernel's)
  QSDPA_CUDA_GENERIC_WIDE=2 QSDPA_CUDA_ONLY=cuda.generic timeout 90 "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
  echo "test_cuda_coverage (generic, wide kernel wherever it can) rc=$?" | tee -a "$OUT/tests.log"
  # the generic kernel itself on the long queries the staged path takes by default
  QSDPA_CUDA_STAGED=0 QSDPA_CUDA_ONLY=generic timeout 90 "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
  echo "test_cuda_coverage (generic, staging off) rc=$?" | tee -a "$OUT/tests.log"
  # every D 128 fast row's long queries staged onto the f16 row (by default only from 2048 folded rows)
  QSDPA_CUDA_STAGE_PREFILL_ROWS=1 QSDPA_CUDA_ONLY=.d128. timeout 150 "$B/tests/test_cuda_coverage" >>"$OUT/tests.log" 2>&1
  echo "test_cuda_coverage (d128 rows, long queries staged) rc=$?" | tee -a "$OUT/tests.log"
fi
[ "$MODE" != quick ] && [ -z "${QSDPA_GPU_SKIP_MULTI:-}" ] && [ -f bench/gpu_multi.sh ] && bash bench/gpu_multi.sh "$B"   # issue 6: slicing test + multi-GPU bench
grep -c FAIL "$OUT/tests.log" | sed 's/^/FAIL lines: /'
grep FAIL "$OUT/tests.log" | head -20

if [ "$MODE" != quick ]; then
  stamp bench | tee "$OUT/bench.txt"
  timeout 200 "$B/bench_gpu" >>"$OUT/bench.txt" 2>&1
  echo "bench rc=$?" >>"$OUT/bench.txt"
fi

if [ -d build-base-src ]; then
  # the previous kernel version, built from `git archive <commit>` unpacked into build-base-src
  # (carried to the device, never committed), timed on the same card in the same run
  stamp "baseline build ($(cat build-base-src/.commit 2>/dev/null || echo '?')) joined" | tee -a "$OUT/bench.txt"
  wait "$BASE_BUILD"
  echo "baseline build rc=$?" | tee -a "$OUT/build.log"
  tail -3 "$OUT/build-base.log" >>"$OUT/build.log"
  if [ -z "${QSDPA_GPU_SKIP_AB_ROWS:-}" ]; then # set where the change is not in the 32K matrix's kernels
    quick_rows base build-base/bench_gpu
    quick_rows new "$B/bench_gpu"
  fi
fi
# QSDPA_GPU_AB_ENV="NAME=VALUE": the same binary's 32K matrix with and without a run-time knob; with it or
# with a baseline, a few rows outside the 32K matrix, two rounds alternating ([base] / [env] / [new])
if [ -n "${QSDPA_GPU_AB_ENV:-}" ]; then
  stamp "A/B of $QSDPA_GPU_AB_ENV" | tee -a "$OUT/bench.txt"
  quick_rows "env" "$B/bench_gpu" "$QSDPA_GPU_AB_ENV"
  quick_rows "new" "$B/bench_gpu"
fi
if [ -n "${QSDPA_GPU_EXTRA_ROWS:-}" ]; then
  stamp "extra rows" | tee -a "$OUT/bench.txt"
  extra_rows
fi
if [ -n "${QSDPA_GPU_AB_ENV:-}" ] || { [ -x build-base/bench_gpu ] && [ -z "${QSDPA_GPU_SKIP_AB_ROWS:-}" ]; }; then
  stamp "rows outside the 32K matrix" | tee -a "$OUT/bench.txt"
  for shape in "${LONG_SHAPES[@]}"; do
    for round in 1 2; do
      [ -x build-base/bench_gpu ] && long_row base build-base/bench_gpu "$shape"
      [ -n "${QSDPA_GPU_AB_ENV:-}" ] && long_row env "$B/bench_gpu" "$shape" "$QSDPA_GPU_AB_ENV"
      long_row new "$B/bench_gpu" "$shape"
    done
  done
fi

# compile-time variants of this tree, timed beside it: QSDPA_GPU_VARIANTS="label=nvcc flags;label=flags"
# (e.g. "mb4=-DQSDPA_CUDA_DEC_MIN_BLOCKS=4"), each built into build-var-<label>
IFS=';' read -ra VARIANTS <<<"${QSDPA_GPU_VARIANTS:-}"
for spec in "${VARIANTS[@]}"; do
  label=${spec%%=*} flags=${spec#*=}
  stamp "variant build $label ($flags)" | tee -a "$OUT/bench.txt"
  timeout 200 bash -c "build_tree . build-var-$label '$flags'" >>"$OUT/build.log" 2>&1
  echo "variant build $label rc=$?" | tee -a "$OUT/build.log"
  quick_rows "$label" "build-var-$label/bench_gpu"
done
if [ ${#VARIANTS[@]} -gt 0 ]; then
  quick_rows new2 "$B/bench_gpu"
  for shape in "${LONG_SHAPES[@]}"; do
    for round in 1 2; do
      for spec in "${VARIANTS[@]}"; do long_row "${spec%%=*}" "build-var-${spec%%=*}/bench_gpu" "$shape"; done
      long_row new2 "$B/bench_gpu" "$shape"
    done
  done
fi

if full_extras; then
  # the prefill kernel on the same decode shapes (the decode kernel's baseline, same card, same run)
  stamp "prefill kernel for decode (QSDPA_CUDA_TILE_DECODE=1)" | tee -a "$OUT/bench.txt"
  quick_rows tile "$B/bench_gpu" QSDPA_CUDA_TILE_DECODE=1
fi

if [ "$MODE" = variants ]; then
  # split-K sizing at run time: fewer / more CTAs than one wave, 32K matrix (bench quick)
  for w in 0.5 1.5 2; do
    stamp "variant QSDPA_CUDA_SPLIT_WAVES=$w" | tee -a "$OUT/bench.txt"
    quick_rows "waves=$w" "$B/bench_gpu" QSDPA_CUDA_SPLIT_WAVES=$w
  done
fi

stamp torch | tee "$OUT/torch.txt"
if [ -z "${QSDPA_GPU_SKIP_TORCH:-}" ]; then # skip only in A/B runs that compare two builds of ours
  timeout 100 python3 bench/torch_baselines/torch_decode.py >>"$OUT/torch.txt" 2>&1
  timeout 60 python3 bench/torch_baselines/torch_prefill.py >>"$OUT/torch.txt" 2>&1
fi

stamp sanitizer | tee "$OUT/sanitizer.log"
# QSDPA_GPU_SKIP_CHECKS=1: a timing-only call on a commit whose tests and sanitizers passed in an earlier call
if [ -z "${QSDPA_GPU_SKIP_CHECKS:-}" ]; then
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
cache_memcheck
QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=a4g64.d128.f16 timeout 60 "$CS" --tool memcheck --leak-check no \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "memcheck coverage(a4g64) rc=$?" | tee -a "$OUT/sanitizer.log"
QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=generic timeout 60 "$CS" --tool memcheck "$B/tests/test_cuda_coverage" \
  >>"$OUT/sanitizer.log" 2>&1
echo "memcheck coverage(generic) rc=$?" | tee -a "$OUT/sanitizer.log"
QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=generic timeout 90 "$CS" --tool racecheck --racecheck-report analysis \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "racecheck coverage(generic) rc=$?" | tee -a "$OUT/sanitizer.log"
# the wide kernel (generic_wide): MLA shapes at 16 and 64 rows, then the f16-rows long query
QSDPA_CUDA_ONLY=cuda.generic QSDPA_CUDA_SHAPE="wide K affine:4:64 V affine:4:64 Dk576" timeout 60 "$CS" --tool memcheck \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "memcheck coverage(wide, MLA 4-bit) rc=$?" | tee -a "$OUT/sanitizer.log"
QSDPA_CUDA_ONLY=cuda.generic QSDPA_CUDA_SHAPE="wide K mxfp4" timeout 60 "$CS" --tool racecheck --racecheck-report analysis \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "racecheck coverage(wide, MLA mxfp4 64 rows) rc=$?" | tee -a "$OUT/sanitizer.log"
QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=mxfp8.d64.bf16 timeout 60 "$CS" --tool racecheck --racecheck-report analysis \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "racecheck coverage(mxfp8 d64) rc=$?" | tee -a "$OUT/sanitizer.log"
QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=a4g64.d128.f16 timeout 60 "$CS" --tool racecheck --racecheck-report analysis \
  "$B/tests/test_cuda_coverage" >>"$OUT/sanitizer.log" 2>&1
echo "racecheck coverage(a4g64 d128) rc=$?" | tee -a "$OUT/sanitizer.log"
# a row of two fp widths (mxfp8 K, mxfp4 V: different code and scale block sizes in one stage), and the f16
# row's bf16-row decode twin (quick: its first bf16 case), nvfp4 at D 256 (two V groups a lane), and 6- and 3-bit
# codes widened as read (rows of 6 and 3 pieces: the irregular copy)
for only in kmxfp8.vmxfp4.d128.f16 f16.d128.bf16 nvfp4.d256.f16 a6g32.d128.f16 a3g32.d128.f16; do
  for tool in memcheck racecheck; do
    QSDPA_CUDA_QUICK=1 QSDPA_CUDA_ONLY=$only timeout 60 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
      >>"$OUT/sanitizer.log" 2>&1
    echo "$tool coverage($only) rc=$?" | tee -a "$OUT/sanitizer.log"
  done
done
# the decode kernel's 4-byte scale pieces (planes only 4-byte aligned: Lk 901 over 2 KV heads, so the second
# head's plane starts 3604 bytes in)
for tool in memcheck racecheck; do
  QSDPA_CUDA_ONLY=a4g64.d128.f16 QSDPA_CUDA_SHAPE="GQA2 (8 rows)" timeout 60 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
    >>"$OUT/sanitizer.log" 2>&1
  echo "$tool coverage(a4g64 d128, 4-byte scale pieces) rc=$?" | tee -a "$OUT/sanitizer.log"
done
# the padded path: D 96 caches read in place by the D 128 decode kernels (zero-filled pieces, stored scale rows),
# bf16 rows on their twins among them
for tool in memcheck racecheck; do
  QSDPA_CUDA_ONLY=generic QSDPA_CUDA_SHAPE="padded" timeout 120 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
    >>"$OUT/sanitizer.log" 2>&1
  echo "$tool coverage(generic, padded) rc=$?" | tee -a "$OUT/sanitizer.log"
done
# the repacked path's copies, affine 2/3/5/6-bit codes widened among them
for tool in memcheck racecheck; do
  QSDPA_CUDA_ONLY=generic QSDPA_CUDA_SHAPE="repacked K affine:" timeout 90 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
    >>"$OUT/sanitizer.log" 2>&1
  echo "$tool coverage(generic, repacked affine K) rc=$?" | tee -a "$OUT/sanitizer.log"
done
# the prefill kernel (more than 64 folded rows): dequantized tiles (a4g64) and f16 rows read in place
for only in a4g64.d128.f16 f16.d64.bf16; do
  for tool in memcheck racecheck; do
    QSDPA_CUDA_ONLY=$only QSDPA_CUDA_SHAPE=prefill timeout 90 "$CS" --tool $tool "$B/tests/test_cuda_coverage" \
      >>"$OUT/sanitizer.log" 2>&1
    echo "$tool coverage($only prefill shapes) rc=$?" | tee -a "$OUT/sanitizer.log"
  done
done
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Hazard|Invalid" "$OUT/sanitizer.log" | sort | uniq -c | head -20
fi

if full_extras; then
  stamp ncu | tee "$OUT/ncu.txt"
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  timeout 90 "$NCU" --clock-control none -k regex:"fast_(attention|decode)" --launch-skip 30 --launch-count 1 \
    --set full "$B/bench_gpu" one affine4g64 1 32768 1 >>"$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?" >>"$OUT/ncu.txt"
  # where the decode kernel's warps wait (stall reasons per issued instruction)
  M=smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio
  for r in short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle barrier no_instruction \
           dispatch_stall not_selected selected branch_resolving membar; do
    M=$M,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
  done
  timeout 60 "$NCU" --clock-control none -k regex:fast_decode --launch-skip 30 --launch-count 1 --metrics "$M" \
    "$B/bench_gpu" one affine4g64 1 32768 1 2>&1 | grep -E "stalled|fast_decode" >>"$OUT/ncu.txt"
fi

full_extras && bash bench/gpu_durations.sh "$B" | tee -a "$OUT/ncu.txt"

# the wide kernel's profile (profile-wide mode's) after the other stages
[ -n "${QSDPA_GPU_NCU_WIDE:-}" ] && profile_wide

stamp report
if [ -f "$OUT/bench.txt" ]; then # quick without a baseline times nothing
  python3 bench/gpu_report.py "$OUT/bench.txt" "$OUT/torch.txt" >"$OUT/report.md" 2>&1
  cat "$OUT/report.md"
fi
stamp done
