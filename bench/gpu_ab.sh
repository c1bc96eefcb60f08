#!/usr/bin/env bash
# Run-time A/B of one bench_gpu invocation on the device: each variant is a set of
# environment assignments (QSDPA_AB="label=VAR=value VAR2=value;label2=..."; an empty
# assignment list is the default build), run in alternating rounds so drift shows as
# spread, every output row tagged [label]. Usage: bash bench/gpu_ab.sh ROUNDS BIN ARGS...
# e.g. QSDPA_AB="dec=;prefill=QSDPA_CUDA_TILE_DECODE=1" bash bench/gpu_ab.sh 2 build-gpu/bench_gpu one f16 1 32768 16
set -u
rounds=$1 bin=$2
shift 2
IFS=';' read -ra variants <<<"${QSDPA_AB:-default=}"
for ((r = 1; r <= rounds; r++)); do
  for spec in "${variants[@]}"; do
    label=${spec%%=*} assigns=${spec#*=}
    # shellcheck disable=SC2086  # assignments split on spaces by design
    env $assigns timeout 120 "$bin" "$@" 2>&1 | grep -v -e '^RESULT' -e '^#' -e '^format' -e '^d2d' | sed "s/^/[$label r$r] /"
  done
done
