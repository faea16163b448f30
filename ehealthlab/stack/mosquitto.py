"""A private Mosquitto broker on loopback with the dynamic security plugin.

Anonymous clients are refused; one admin client (created with `mosquitto_ctrl dynsec init`)
manages clients and roles through `$CONTROL/dynamic-security/#`, which is how the gateway
registers devices. The broker keeps its persistence and dynsec files in its directory and
writes them on a clean stop, so a restart keeps sessions, retained messages and clients; its
journal (plugins/ehl_journal.c) keeps what it acknowledged since its last save, so a crash
loses none of it.
As root it runs as `mosquitto`, which then owns the directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

from ehealthlab.contract.messages import MAX_PACKET_BYTES
from ehealthlab.errors import StackError
from ehealthlab.stack.plugin import INGEST_PARTITIONS, JOURNAL, RECEIVE_STAMP, build_plugin
from ehealthlab.stack.ports import LOOPBACK, PortTakenError, free_port
from ehealthlab.stack.programs import (
    MosquittoPrograms,
    ServiceAccount,
    find_mosquitto,
    log_since,
    log_size,
    log_tail,
    process_is_alive,
    read_pid,
    run_program,
)

#: MQTT 3.1.1 CONNACK return codes that mean "wrong credentials", not "not ready yet"
REFUSED_CREDENTIALS = {4: "bad user name or password", 5: "not authorised"}
#: payload bytes one session may have queued (Mosquitto counts payloads only): with
#: max_queued_messages 1,000,000, a bound on the broker's memory however big the messages
MAX_QUEUED_BYTES = 1024 * 1024 * 1024


class MosquittoBroker:
    """One broker in `directory`: config, dynsec file, persistence, log and pid file.

    `directory` must be one the broker's account can use: see `programs.place_for`. Give the
    recorded admin password for an existing directory (the dynsec file holds its hash).
    """

    host = LOOPBACK

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        admin_username: str = "ehealthlab-admin",
        admin_password: str | None = None,
        programs: MosquittoPrograms | None = None,
        account: ServiceAccount | None = None,
        receive_stamp: bool = True,
        journal: bool = True,
        journal_segment_s: int = 30,
        journal_keep_s: int = 180,
    ) -> None:
        self.directory = directory.absolute()
        #: load the receive-stamp plugin (False only to test a broker without it)
        self.receive_stamp = receive_stamp
        #: load the journal plugin (False only to show what Mosquitto alone loses in a crash)
        self.journal = journal
        #: a journal segment starts every `journal_segment_s`; one is deleted when its last
        #: record is `journal_keep_s` old: by then an autosave (every 60 s) holds it
        self.journal_segment_s = journal_segment_s
        self.journal_keep_s = journal_keep_s
        if "\n" in str(self.directory):
            raise StackError("the broker's directory may not contain a newline")
        self.port = port if port is not None else free_port()
        self.admin_username = admin_username
        self.admin_password = (
            admin_password if admin_password is not None else secrets.token_hex(16)
        )
        self._programs = programs
        self._account = account

    @property
    def programs(self) -> MosquittoPrograms:
        """Found on first use, so asking whether it runs needs no installed programs."""
        if self._programs is None:
            self._programs = find_mosquitto()
        return self._programs

    @property
    def account(self) -> ServiceAccount:
        if self._account is None:
            self._account = ServiceAccount.for_server("mosquitto")
        return self._account

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def dynsec_file(self) -> Path:
        return self.directory / "dynamic-security.json"

    @property
    def journal_dir(self) -> Path:
        return self.directory / "journal"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mosquitto.pid"

    def pid(self) -> int | None:
        """The broker's pid while it runs, else None."""
        pid = read_pid(self.pid_file)
        if pid is None or not process_is_alive(pid, str(self.config_file)):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def _init_dynsec(self) -> None:
        """Create the dynsec file with the admin client (the password passes through argv)."""
        if self.dynsec_file.exists():
            return
        argv: list[str | Path] = [
            self.programs.mosquitto_ctrl,
            "dynsec",
            "init",
            self.dynsec_file,
            self.admin_username,
            self.admin_password,
        ]
        result = run_program(self.account.command(argv), what="mosquitto_ctrl dynsec init")
        if result.returncode != 0 or not self.dynsec_file.exists():
            message = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise StackError(
                f"mosquitto_ctrl dynsec init failed: {message[-1] if message else 'no message'}"
            )
        # it holds password hashes; mosquitto_ctrl leaves it world-readable
        self.dynsec_file.chmod(0o600)

    def _write_config(self) -> None:
        stamp_plugins = (
            [build_plugin(RECEIVE_STAMP, self.directory / "plugins")] if self.receive_stamp else []
        )
        partitions_plugin = build_plugin(INGEST_PARTITIONS, self.directory / "plugins")
        journal_lines = (
            [
                f"plugin {build_plugin(JOURNAL, self.directory / 'plugins')}",
                f"plugin_opt_journal_dir {self.journal_dir}",
                f"plugin_opt_persistence_file {self.directory / 'mosquitto.db'}",
                f"plugin_opt_journal_segment_seconds {self.journal_segment_s}",
                f"plugin_opt_journal_keep_seconds {self.journal_keep_s}",
            ]
            if self.journal
            else []
        )
        lines = [
            "# written by ehealthlab at every start: edit the stack, not this file",
            "per_listener_settings false",
            "allow_anonymous false",
            f"listener {self.port} {self.host}",
            # the broker's receive time on every pilot message (clock offsets, latency)
            *(f"plugin {plugin}" for plugin in stamp_plugins),
            # every reading written to a journal before the broker acknowledges it, published
            # again at start: Mosquitto itself saves only every autosave_interval, so a crash
            # would lose what it had acknowledged and not yet delivered (ehl_journal.c);
            # after the stamp, so the journal keeps the receive time
            *journal_lines,
            # each device's readings only to the partitioned ingest worker that keeps them;
            # before dynamic security, whose answer would otherwise come first
            f"plugin {partitions_plugin}",
            f"plugin {self.programs.dynsec_plugin}",
            f"plugin_opt_config_file {self.dynsec_file}",
            "persistence true",
            f"persistence_location {self.directory}/",
            "persistence_file mosquitto.db",
            "autosave_interval 60",
            # ingest acknowledges only after commit: while the database is away the broker
            # holds each ingest session's backlog (its default drops QoS 1 past 1,000)
            "max_queued_messages 1000000",
            # ... and at most this much payload, so that big messages (batches, up to the
            # packet limit) cannot make a session's backlog outgrow the host's memory
            f"max_queued_bytes {MAX_QUEUED_BYTES}",
            # a bound on what one packet may make the broker and ingest hold (MQTT allows
            # 256 MB); far above the contract's 64 KiB, so that an oversized message still
            # reaches ingest and is kept with its reason, up to this (docs/device-contract.md)
            f"max_packet_size {MAX_PACKET_BYTES}",
            # small messages, answered at once: do not wait to fill TCP segments
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"pid_file {self.pid_file}",
        ]
        descriptor = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write("\n".join(lines) + "\n")
        self.account.give(self.config_file)

    def start(self, timeout: float = 15.0) -> None:
        """Start as a daemon and wait until the admin client can connect.

        Nothing happens when it already runs. PortTakenError when the port is not free.
        """
        if self.is_running():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.account.give(self.directory)
        self._init_dynsec()
        self._write_config()
        self.pid_file.unlink(missing_ok=True)  # stale: is_running said so
        offset = log_size(self.log_file)
        argv: list[str | Path] = [self.programs.mosquitto, "-c", self.config_file, "-d"]
        result = run_program(self.account.command(argv), what="mosquitto")
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise StackError(f"Mosquitto did not start: {message[-1] if message else 'no message'}")
        self._wait_ready(offset, timeout)

    def _wait_ready(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen: int | None = None
        while time.monotonic() < deadline:
            seen = read_pid(self.pid_file) or seen
            if seen is not None:
                if not process_is_alive(seen, str(self.config_file)):
                    break
                try:
                    code = connack_code(
                        self.host, self.port, self.admin_username, self.admin_password
                    )
                except OSError:
                    code = None
                if code == 0:
                    return
                if code in REFUSED_CREDENTIALS:
                    self.stop()
                    raise StackError(
                        f"Mosquitto refuses its admin client {self.admin_username!r} "
                        f"({REFUSED_CREDENTIALS[code]}): {self.dynsec_file} does not match the "
                        "recorded password; remove the broker's directory to start afresh"
                    )
            time.sleep(0.05)
        tail = log_tail(self.log_file, offset)
        if "Address already in use" in log_since(self.log_file, offset):
            raise PortTakenError(f"Mosquitto could not bind port {self.port}: {tail}")
        if seen is not None and process_is_alive(seen, str(self.config_file)):
            self.stop()
        raise StackError(f"Mosquitto did not start ({self.log_file}): {tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (it writes its persistence file on the way out); SIGKILL if stuck."""
        pid = self.pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                raise StackError(f"not allowed to stop Mosquitto (pid {pid})") from None
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not process_is_alive(pid, str(self.config_file)):
                    return
                time.sleep(0.05)
        raise StackError(f"Mosquitto (pid {pid}) did not stop")

    def remove(self) -> None:
        """Stop and delete the broker's directory with its clients and persistence."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the broker closed the connection")
        data += chunk
    return data


def connack_code(host: str, port: int, username: str, password: str, timeout: float = 2.0) -> int:
    """Connect with MQTT 3.1.1 and return the CONNACK return code (0 = accepted).

    A few bytes on a socket rather than paho: the readiness check needs no client library,
    and paho stays in the one module that talks MQTT for the platform.
    """
    flags = 0b1100_0010  # user name, password, clean session
    variable = _field(b"MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    payload = _field(b"") + _field(username.encode()) + _field(password.encode())
    body = variable + payload
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        header = _receive(sock, 4)
        if header[0] != 0x20 or header[1] != 2:
            raise ConnectionResetError("not an MQTT CONNACK")
        if header[3] == 0:
            sock.sendall(bytes([0xE0, 0]))  # DISCONNECT, so the broker logs a clean goodbye
        return header[3]
