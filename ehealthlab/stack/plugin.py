"""Build the broker's plugins from the C sources shipped in the package.

Three small Mosquitto 2.0 plugins (plugins/*.c), loaded before dynamic security:

- `ehl_receive_stamp` stamps each message with the broker's receive time, so the clock offset
  of a device is measured against when the platform received its message, not when ingest
  got round to reading it;
- `ehl_ingest_partitions` delivers each device's readings only to the partitioned ingest
  worker that keeps them, instead of to every worker;
- `ehl_journal` writes each reading to a journal before the broker acknowledges it and
  publishes the journal again at start, so a broker killed between its periodic saves loses
  nothing it acknowledged.

Each is compiled once per source version with the system C compiler against Debian's
Mosquitto (and, for SHA-256, OpenSSL) headers; the result is cached by content hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ehealthlab.errors import MissingDependencyError, StackError
from ehealthlab.stack.programs import run_program

PLUGIN_BUILD_INSTALL = "apt-get install -y gcc libc6-dev mosquitto-dev libmosquitto-dev libssl-dev"
_MOSQUITTO_HEADERS = ("mosquitto.h", "mosquitto_broker.h", "mosquitto_plugin.h", "mqtt_protocol.h")


@dataclass(frozen=True, slots=True)
class BrokerPlugin:
    """One plugin: its source's name, what it does (for messages), what it needs."""

    name: str
    job: str
    headers: tuple[str, ...] = _MOSQUITTO_HEADERS
    libraries: tuple[str, ...] = ()
    #: headers of its own, shipped beside its source (plugins/)
    own_headers: tuple[str, ...] = ("ehl_plugin_version.h",)


RECEIVE_STAMP = BrokerPlugin("ehl_receive_stamp", "receive-stamp")
INGEST_PARTITIONS = BrokerPlugin(
    "ehl_ingest_partitions",
    "ingest-partitions",
    headers=(*_MOSQUITTO_HEADERS, "openssl/sha.h"),
    libraries=("crypto",),
)
JOURNAL = BrokerPlugin(
    "ehl_journal",
    "journal",
    own_headers=("ehl_plugin_version.h", "ehl_journal_files.h", "ehl_journal_record.h"),
)
#: kept for callers that name the receive stamp alone
PLUGIN_NAME = RECEIVE_STAMP.name


def _plugin_file(name: str) -> bytes:
    return (resources.files("ehealthlab.stack") / "plugins" / name).read_bytes()


def plugin_source(plugin: BrokerPlugin = RECEIVE_STAMP) -> bytes:
    return _plugin_file(f"{plugin.name}.c")


def _compiler(plugin: BrokerPlugin) -> str:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingDependencyError(
        f"no C compiler to build the broker's {plugin.job} plugin: {PLUGIN_BUILD_INSTALL}"
    )


def _check_headers(plugin: BrokerPlugin, include_dir: Path) -> None:
    missing = [h for h in plugin.headers if not (include_dir / h).is_file()]
    if missing:
        raise MissingDependencyError(
            f"headers for the broker's {plugin.job} plugin missing ({', '.join(missing)}): "
            f"{PLUGIN_BUILD_INSTALL}"
        )


def build_plugin(
    plugin: BrokerPlugin, directory: Path, include_dir: Path = Path("/usr/include")
) -> Path:
    """The compiled `plugin` in `directory`, built now unless this source was built before."""
    source = plugin_source(plugin)
    own_headers = {name: _plugin_file(name) for name in plugin.own_headers}
    digest = hashlib.sha256(b"".join([source, *own_headers.values()])).hexdigest()[:16]
    target = directory / f"{plugin.name}-{digest}.so"
    if target.is_file():
        return target
    _check_headers(plugin, include_dir)
    directory.mkdir(parents=True, exist_ok=True)
    sources = directory / f"{plugin.name}-{digest}-src"
    sources.mkdir(exist_ok=True)
    source_file = sources / f"{plugin.name}.c"
    source_file.write_bytes(source)
    for name, text in own_headers.items():  # beside the source: its #include "..." finds them
        (sources / name).write_bytes(text)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    argv = [_compiler(plugin), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include_dir}"]
    libraries = [f"-l{library}" for library in plugin.libraries]
    result = run_program(
        [*argv, "-o", str(partial), str(source_file), *libraries],
        what=f"building the {plugin.job} plugin",
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise StackError(
            f"building the broker's {plugin.job} plugin failed: {lines[-1] if lines else '?'}"
        )
    partial.chmod(0o755)
    partial.replace(target)
    return target


def build_receive_stamp_plugin(directory: Path, include_dir: Path = Path("/usr/include")) -> Path:
    """The compiled receive-stamp plugin (see `build_plugin`)."""
    return build_plugin(RECEIVE_STAMP, directory, include_dir)
