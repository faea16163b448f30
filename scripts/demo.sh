#!/usr/bin/env bash
# Sets everything up (Debian packages, .venv) and runs the pilot end to end on a local stack.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$EHL_VENV/bin/ehealthlab" demo "$@"
