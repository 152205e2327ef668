#!/usr/bin/env bash
# The GPU check in one call (scripts/gpu_check.py says what it runs and writes).
#   bash scripts/gpu_check.sh [--out DIR] [--budget S] [--only STAGES]   on a CUDA machine
#   bash scripts/gpu_check.sh --dry-run --out DIR                         the same on the CPU
# Python: $PYTHON if set, else this checkout's .venv, else python3 (the GPU machine's own).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
export PYTHONUNBUFFERED=1
exec "$py" scripts/gpu_check.py "$@"
