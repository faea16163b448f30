"""Build the broker's receive-stamp plugin from the C source shipped in the package.

The plugin (plugins/ehl_receive_stamp.c) stamps each message with the broker's receive time,
so the clock offset of a device is measured against when the platform received its message,
not when ingest got round to reading it. It is compiled once per source version with the
system C compiler against Debian's Mosquitto headers; the result is cached by content hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

from ehealthlab.errors import MissingDependencyError, StackError
from ehealthlab.stack.programs import run_program

PLUGIN_NAME = "ehl_receive_stamp"
PLUGIN_BUILD_INSTALL = "apt-get install -y gcc libc6-dev mosquitto-dev libmosquitto-dev"
_HEADERS = ("mosquitto.h", "mosquitto_broker.h", "mosquitto_plugin.h", "mqtt_protocol.h")


def plugin_source() -> bytes:
    return (resources.files("ehealthlab.stack") / "plugins" / f"{PLUGIN_NAME}.c").read_bytes()


def _compiler() -> str:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingDependencyError(
        f"no C compiler to build the broker's receive-stamp plugin: {PLUGIN_BUILD_INSTALL}"
    )


def _check_headers(include_dir: Path) -> None:
    missing = [h for h in _HEADERS if not (include_dir / h).is_file()]
    if missing:
        raise MissingDependencyError(
            f"Mosquitto plugin headers missing ({', '.join(missing)}): {PLUGIN_BUILD_INSTALL}"
        )


def build_receive_stamp_plugin(directory: Path, include_dir: Path = Path("/usr/include")) -> Path:
    """The compiled plugin in `directory`, built now unless this source was built before."""
    source = plugin_source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = directory / f"{PLUGIN_NAME}-{digest}.so"
    if target.is_file():
        return target
    _check_headers(include_dir)
    directory.mkdir(parents=True, exist_ok=True)
    source_file = directory / f"{PLUGIN_NAME}-{digest}.c"
    source_file.write_bytes(source)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    argv = [_compiler(), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include_dir}"]
    result = run_program(
        [*argv, "-o", str(partial), str(source_file)], what="building the receive-stamp plugin"
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise StackError(
            f"building the broker's receive-stamp plugin failed: {lines[-1] if lines else '?'}"
        )
    partial.chmod(0o755)
    partial.replace(target)
    return target
