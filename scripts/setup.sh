#!/usr/bin/env bash
# Set up attnres-probe in ./.venv on a fresh machine. Usage: scripts/setup.sh [dev]
#   (no argument)  the toolkit with torch, the dashboard and static export
#   dev            everything the test suite needs as well
# Idempotent: re-running reuses .venv. torch comes from the CPU build (constraints-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="torch,app"
[ "${1:-}" = "dev" ] && extras="dev"

# Static figure export (kaleido) and the browser tests need a Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium found; static export (png/svg/pdf) will be unavailable" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/pip install -q -c constraints-cpu.txt -e ".[${extras}]" > .venv/pip.log 2>&1; then
  grep -v "^WARNING: Location 'file:" .venv/pip.log | tail -30 >&2
  echo "error: pip install failed (full log: .venv/pip.log)" >&2
  exit 1
fi
.venv/bin/python -c "import attnres_probe, torch; print('attnres-probe', attnres_probe.__version__, '| torch', torch.__version__)"
