#!/usr/bin/env bash
# DRAM bytes the decode kernel reads per call against the cache's size (ncu, caches flushed before the
# launch, clocks free): a ratio above 1 means lines fetched twice (prefetched lines evicted before use,
# partial sectors). 4-bit B=1 Lq=1 at 32K and 128K, each QSDPA_CUDA_DEC_PREFETCH in $2 (default "0 2 4").
# Usage (device): bash bench/gpu_dram.sh [build dir, built by gpu.sh] ["prefetch values"]
set -u
B=${1:-build-gpu}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
M=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sector_op_read_hit_rate.pct
echo "== decode kernel DRAM traffic (ncu: $M)"
for L in 32768 131072; do
  for pre in ${2:-0 2 4}; do
    echo "-- affine4g64 B=1 L=$L Lq=1, QSDPA_CUDA_DEC_PREFETCH=$pre (cache bytes: $((8 * L * 144)))"
    QSDPA_CUDA_DEC_PREFETCH=$pre timeout 90 "$NCU" --clock-control none -k regex:fast_decode --launch-skip 40 \
      --launch-count 1 --metrics "$M" "$B/bench_gpu" one affine4g64 1 "$L" 1 2>&1 | grep -E "^ +(gpu__|dram__|lts__)"
  done
done
