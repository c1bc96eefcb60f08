#!/usr/bin/env bash
# Registers, spills and SASS size of the tensor-core kernels of one unit
# (src/cuda/fast_<unit>.cu) on a machine without a GPU: ptxas -v for every
# entry point, then per-opcode instruction counts of the kernels matching a
# regex and the static size of each kernel's main loop. cuobjdump comes from
# PyPI (nvidia-cuda-cuobjdump) into .venv-cudatools when the local CUDA toolkit
# lacks it. This is how the decode kernel was tuned between device runs
# (bench/NOTES.md).
# Usage: tools/cuda_sass.sh [unit=affine4] [kernel-regex=fast_decode] [arch=90a]
set -eu
cd "$(dirname "$0")/.."
UNIT=${1:-affine4}
PATTERN=${2:-fast_decode}
ARCH=${3:-90a}
OUT=${TMPDIR:-/tmp}/qsdpa-sass
mkdir -p "$OUT"

CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ] || ! command -v nvdisasm >/dev/null; then
  if [ -z "$(find .venv-cudatools -type f -name nvdisasm 2>/dev/null)" ]; then
    python3 -m venv .venv-cudatools
    .venv-cudatools/bin/pip install -q nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
  fi
  CUOBJDUMP=$(find .venv-cudatools -type f -name cuobjdump | head -1)
  PATH=$(dirname "$(find .venv-cudatools -type f -name nvdisasm | head -1)"):$PATH
fi

nvcc -O3 -std=c++17 -gencode=arch=compute_$ARCH,code=sm_$ARCH -Iinclude -Isrc -Isrc/core -cubin -Xptxas -v \
  -o "$OUT/$UNIT.cubin" "src/cuda/fast_$UNIT.cu" 2>"$OUT/$UNIT.ptxas"

echo "== ptxas: registers / spills per entry point ($PATTERN)"
awk -v pat="$PATTERN" '
  /Compiling entry function/ { name = $0; sub(/.*function .?/, "", name); sub(/. for .*/, "", name); keep = name ~ pat }
  keep && /spill stores/ { spill = $5 " B spilled" }
  keep && /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); print substr($0, RSTART + 5, RLENGTH - 15) " regs, " spill "  " name }
' "$OUT/$UNIT.ptxas"

echo "== SASS instructions per kernel ($PATTERN), top opcodes"
for fn in $("$CUOBJDUMP" -sass "$OUT/$UNIT.cubin" | grep -oE "Function : [A-Za-z0-9_]+" | awk '{print $3}' | grep -E "$PATTERN"); do
  "$CUOBJDUMP" -sass -fun "$fn" "$OUT/$UNIT.cubin" | grep -oE "^\s+/\*[0-9a-f]{4,}\*/\s+[A-Z0-9@!P_.]+( [A-Z0-9._]+)?" |
    awk '{op = $2; if (op ~ /^@/) op = $3; sub(/\..*/, "", op); print op}' | sort | uniq -c | sort -rn >"$OUT/ops.txt"
  printf "%6d instructions:" "$(awk '{t += $1} END {print t}' "$OUT/ops.txt")"
  head -8 "$OUT/ops.txt" | awk '{printf " %s %d", $2, $1} END {print ""}'
  # the main loop: the backward branch whose body holds the most HMMA (its static size;
  # the executed path per iteration is smaller where the body has skipped branches)
  "$CUOBJDUMP" -sass -fun "$fn" "$OUT/$UNIT.cubin" | python3 -c '
import re, sys
ins = [(int(m.group(1), 16), m.group(2)) for m in (re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+([^;]*);", l) for l in sys.stdin) if m]
at = {a: i for i, (a, _) in enumerate(ins)}
best = None
for i, (a, t) in enumerate(ins):
    m = re.search(r"BRA (0x[0-9a-f]+)", t)
    if m and int(m.group(1), 16) < a and int(m.group(1), 16) in at:
        body = ins[at[int(m.group(1), 16)]:i + 1]
        h = sum("HMMA" in x for _, x in body)
        if best is None or h > best[0]:
            best = (h, len(body))
if best:
    print(f"        main loop: {best[1]} instructions, {best[0]} HMMA")
'
  echo "        $fn"
done
