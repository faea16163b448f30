#!/usr/bin/env bash
# Sets everything up (Debian packages, .venv) and runs the whole test suite against real
# PostgreSQL and Mosquitto servers that the tests start on free ports, then ruff and mypy.
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
status=0
if [ "$#" -eq 0 ]; then  # the whole suite: linters first, so pytest's summary closes the run
  echo "== ruff";  "$EHL_VENV/bin/ruff" check . || status=1
  "$EHL_VENV/bin/ruff" format --check --quiet . || { echo "ruff format: run 'ruff format .'"; status=1; }
  echo "== mypy";  "$EHL_VENV/bin/mypy" || status=1
  # known vulnerabilities in the pinned runtime dependencies fail; an unreachable advisory
  # database is one line and does not (scripts/audit_dependencies.py)
  echo "== pip-audit"; "$EHL_VENV/bin/python" scripts/audit_dependencies.py || status=1
fi
echo "== pytest"
"$EHL_VENV/bin/python" -m pytest "$@" || status=$?
exit "$status"
