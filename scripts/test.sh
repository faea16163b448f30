#!/usr/bin/env bash
# Sets everything up (Debian packages, .venv) and runs the whole test suite against real
# PostgreSQL and Mosquitto servers that the tests start on free ports, then ruff and mypy.
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
status=0
"$EHL_VENV/bin/python" -m pytest "$@" || status=$?
if [ "$#" -eq 0 ]; then
  "$EHL_VENV/bin/ruff" check . || status=1
  "$EHL_VENV/bin/ruff" format --check . >/dev/null || { echo "ruff format: files need formatting" >&2; status=1; }
  "$EHL_VENV/bin/mypy" || status=1
fi
exit "$status"
