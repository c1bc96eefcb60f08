#!/usr/bin/env bash
# Where the GPU time of a decode call goes: the duration of each kernel it launches
# (fast_decode, split_merge; ncu, clocks free) for the 4-bit B=1 Lq=1 call at 2K..128K.
# The bench's graph column minus these is launch and dependency gaps.
# Usage (device): bash bench/gpu_durations.sh [build dir, built by gpu.sh]
set -u
B=${1:-build-gpu}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
echo "== kernel durations (ncu gpu__time_duration, affine4g64 B=1 Lq=1)"
for L in 2048 8192 32768 131072; do
  timeout 60 "$NCU" --clock-control none -k regex:"fast_decode|split_merge" --launch-skip 40 --launch-count 2 \
    --metrics gpu__time_duration.sum "$B/bench_gpu" one affine4g64 1 "$L" 1 2>&1 |
    awk -v L="$L" '/fast_decode|split_merge/ { k = ($0 ~ /split_merge/) ? "split_merge" : "fast_decode" }
                   /gpu__time_duration/ { print "L=" L, k, $(NF), $(NF-1) }'
done
