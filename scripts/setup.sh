#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: brings a fresh Debian/Ubuntu machine or a
# fresh clone to a working state. Idempotent: a second run does nothing that is already done.
#   - Debian packages: PostgreSQL server, Mosquitto (with its dynamic security plugin and
#     mosquitto_ctrl), Mosquitto's clients and plugin headers with a C compiler (for the
#     broker's receive-stamp plugin), Python's venv, chromium (the portal's browser tests);
#     installed when missing (as root),
#     otherwise one line saying what to run;
#   - a virtualenv in .venv with ehealthlab and its dev tools, reinstalled when pyproject.toml
#     changes.
set -euo pipefail

EHL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EHL_VENV="$EHL_ROOT/.venv"

ehl_say() { printf 'ehealthlab setup: %s\n' "$*" >&2; }

ehl_find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ehl_missing_packages() {
  local missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  { [ -x /usr/sbin/mosquitto ] && command -v mosquitto_ctrl >/dev/null &&
    compgen -G '/usr/lib/*/mosquitto_dynamic_security.so' >/dev/null; } || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  # the broker's plugins are compiled from ehealthlab/stack/plugins at stack start
  { command -v cc >/dev/null || command -v gcc >/dev/null; } || missing+=(gcc libc6-dev)
  [ -f /usr/include/mosquitto_broker.h ] || missing+=(mosquitto-dev)
  [ -f /usr/include/mosquitto.h ] || missing+=(libmosquitto-dev)
  [ -f /usr/include/openssl/sha.h ] || missing+=(libssl-dev)  # the partitions plugin's SHA-256
  ehl_find_python >/dev/null || missing+=(python3 python3-venv)
  # the portal's browser tests drive Debian's chromium through Playwright
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  printf '%s\n' "${missing[@]}"
}

ehl_install_packages() {
  local missing
  mapfile -t missing < <(ehl_missing_packages | sed '/^$/d')
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    ehl_say "missing Debian packages; install them with:  sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  ehl_say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ehl_venv() {
  local python stamp wanted
  python="$(ehl_find_python)" || { ehl_say "Python 3.11 or newer with venv is needed"; exit 1; }
  [ -x "$EHL_VENV/bin/python" ] || "$python" -m venv "$EHL_VENV"
  stamp="$EHL_VENV/.ehealthlab-installed"
  wanted="$(sha256sum "$EHL_ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    ehl_say "installing ehealthlab and its dependencies into .venv"
    "$EHL_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$EHL_VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$EHL_ROOT[dev]"
    printf '%s' "$wanted" >"$stamp"
  fi
}

ehl_install_packages
ehl_venv
cd "$EHL_ROOT"
