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
# two workers, a module at a time, long modules first (tests/scheduling.py); each worker starts
# its own PostgreSQL and Mosquitto. EHL_TEST_WORKERS=0 runs the suite in one process.
"$EHL_VENV/bin/python" -m pytest -n "${EHL_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  "$@" || status=$?
exit "$status"
