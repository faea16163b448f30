#!/usr/bin/env bash
# Sets everything up (Debian packages, .venv), then runs the whole pilot, simulated, on a local
# stack and leaves the API (with the portal) and ingest running until `ehealthlab stack down`.
# Options go to `ehealthlab demo` (e.g. --live-minutes 1; see `ehealthlab demo --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$EHL_VENV/bin/ehealthlab" demo "$@"
