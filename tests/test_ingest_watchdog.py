"""The batch watchdog: an overdue batch is reported once, with its subject, never early; a
batch done in time never is, however many batches follow one another; and in a worker, a
database that stops answering mid-batch costs a cut connection, not the worker."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from faultproxy import BLACKHOLE, PASS, FaultProxy
from ingest_fixtures import T0, RunningWorker, bp, message, pilot
from pydantic import SecretStr
from reliability_fixtures import via_port

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.watchdog import BatchWatchdog
from ehealthlab.ingest.worker_config import IngestConfig

__all__ = ["pilot"]


class Calls:
    """What the watchdog reported, and when (thread-safe)."""

    def __init__(self, fail_first: bool = False) -> None:
        self.subjects: list[str] = []
        self.at: list[float] = []
        self.event = threading.Event()
        self._fail_first = fail_first

    def __call__(self, subject: str) -> None:
        self.subjects.append(subject)
        self.at.append(time.monotonic())
        self.event.set()
        if self._fail_first and len(self.subjects) == 1:
            raise RuntimeError("a handler that fails")


def test_an_overdue_batch_is_reported_once_with_its_subject_and_not_early() -> None:
    calls = Calls()
    watchdog = BatchWatchdog(0.3, calls, name="test-watchdog")
    try:
        armed_at = time.monotonic()
        watchdog.arm("connection-1")
        assert calls.event.wait(30)
        assert calls.subjects == ["connection-1"]
        assert calls.at[0] - armed_at >= 0.3
        time.sleep(0.9)  # three more timeouts: reported once, not once a timeout
        assert calls.subjects == ["connection-1"]
    finally:
        watchdog.close()


def test_batches_done_in_time_are_never_reported_however_long_the_series() -> None:
    """15 batches of 0.2 s back to back: 3 s of work under a 2 s deadline a batch. A watchdog
    that slept towards the first batch's deadline and fired there would report one."""
    calls = Calls()
    watchdog = BatchWatchdog(2.0, calls, name="test-watchdog")
    try:
        for n in range(15):
            watchdog.arm(f"connection-{n}")
            time.sleep(0.2)
            watchdog.disarm()
        watchdog.arm("idle")
        watchdog.disarm()
        time.sleep(2.5)  # past every deadline that was ever set
        assert calls.subjects == []
    finally:
        watchdog.close()


def test_the_batch_reported_is_the_one_armed_last() -> None:
    calls = Calls()
    watchdog = BatchWatchdog(0.5, calls, name="test-watchdog")
    try:
        watchdog.arm("finished in time")
        watchdog.disarm()
        watchdog.arm("hangs")
        assert calls.event.wait(30)
        assert calls.subjects == ["hangs"]
    finally:
        watchdog.close()


def test_a_failing_handler_does_not_end_the_watch(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls(fail_first=True)
    watchdog = BatchWatchdog(0.2, calls, name="test-watchdog")
    try:
        watchdog.arm("first")
        assert calls.event.wait(30)
        calls.event.clear()
        watchdog.arm("second")
        assert calls.event.wait(30)
        assert calls.subjects == ["first", "second"]
        assert "the overdue batch's handler failed" in caplog.text
    finally:
        watchdog.close()


def test_close_stops_the_thread_and_refuses_new_batches() -> None:
    calls = Calls()
    watchdog = BatchWatchdog(0.2, calls, name="test-watchdog-closing")
    watchdog.arm("hangs, but the worker stops first")
    watchdog.close()
    assert not any(t.name == "test-watchdog-closing" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        watchdog.arm("after close")
    time.sleep(0.5)
    assert calls.subjects == []


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_a_deadline_must_be_positive(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchWatchdog(timeout_s, Calls(), name="test-watchdog")


# -- in a worker: a database that stops answering mid-batch -----------------------------------


def test_a_worker_whose_database_stops_answering_cuts_the_connection_and_stores_later(
    pilot, caplog: pytest.LogCaptureFixture
) -> None:
    """The database's packets vanish while a batch is in flight (a blackhole, not a closed
    connection: nothing tells the worker). The batch's deadline cuts the connection, and once
    the path is back the batch is stored on a new one, long before TCP would give up."""
    caplog.set_level(logging.WARNING, logger="ehealthlab.ingest")
    device_id, password = pilot.register()
    database_port = urlsplit(pilot.database_url).port
    assert database_port is not None
    with FaultProxy(database_port) as proxy:
        settings = pilot.settings.model_copy(
            update={"database_url": SecretStr(via_port(pilot.database_url, proxy.port))}
        )
        worker = RunningWorker(settings, "ingest-watchdog", IngestConfig(batch_timeout_s=2.0))
        try:
            count = "SELECT count(*) FROM readings WHERE device_id = %s"
            with pilot.device(device_id, password) as device:
                device.publish(readings_topic(device_id), message(bp(1, T0)))
                assert pilot.wait_for(count, [(2,)], device_id) == [(2,)]
                proxy.set_mode(BLACKHOLE)
                device.publish(readings_topic(device_id), message(bp(3, T0 + timedelta(hours=1))))
                deadline = time.monotonic() + 60  # bounds a failure only
                while "cutting the connection" not in caplog.text:
                    assert time.monotonic() < deadline, "the overdue batch was never cut"
                    time.sleep(0.1)
                proxy.set_mode(PASS)
                assert pilot.wait_for(count, [(4,)], device_id, timeout=120) == [(4,)]
        finally:
            worker.close()
    assert "has not answered a batch in 2 s" in caplog.text
