#!/usr/bin/env bash
# Build everything and run the whole test suite: C tests (CTest), MLX parity
# tests, the Python package tests. The README's test command; .ci/run calls it.
#   BUILD_DIR   build folder (default build)
#   QSDPA_CMAKE_ARGS extra configure arguments
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

./tools/setup_python.sh

# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQSDPA_WERROR=ON ${QSDPA_CMAKE_ARGS:-}
cmake --build "$build" -j"$jobs"
# The Python package is installed before CTest: tests/quality attends through it.
if [ -f pyproject.toml ]; then
  .venv/bin/python -m pip install -q .
fi
ctest --test-dir "$build" --output-on-failure -j"$jobs"

# The Python package's own tests (issue 7).
if [ -f pyproject.toml ]; then
  .venv/bin/python -m pytest -q python/tests
fi
echo "tools/test.sh: all tests passed"
