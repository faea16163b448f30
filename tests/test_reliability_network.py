"""Promise 2 of issue 13, network faults: the fault proxy sits between the devices and the
broker and between ingest and PostgreSQL; latency, a slow drip, resets and a blackhole, each
for a bounded time on both paths at once, then recovery. Devices buffer and resend, ingest
backs off and resumes, and in the end every reading is stored once.

Ingest is `ehealthlab ingest --workers 2` (default mode) with the database URL pointing at
the proxy; the devices are simulators whose broker address is the proxy. Figures are printed
(`-s`) for docs/reliability-faults.md.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from faultproxy import BLACKHOLE, PASS, RESET, FaultProxy, Mode, drip, latency
from reliability_fixtures import (
    Fleet,
    IngestCommand,
    eventually,
    fresh_pilot,
    own_broker,
    own_postgres,
    stored_readings,
    tally,
    via_port,
    wait_until_subscribed,
)

from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
from ehealthlab.simulators.measurement import Measurement

pytestmark = pytest.mark.long  # started first when the suite runs in parallel

__all__ = ["own_broker", "own_postgres"]


def per_device(pilot, devices: list[str]) -> dict[str, int]:
    rows = pilot.query(
        "SELECT device_id, count(*) FROM readings WHERE device_id = ANY(%s) GROUP BY device_id",
        devices,
    )
    return dict(rows)


DEVICES = 10
PER_DEVICE = 300
FAULT_S = 5.0


def test_devices_and_ingest_ride_out_latency_drip_resets_and_a_blackhole(
    own_postgres, own_broker, tmp_path
):
    started = time.monotonic()
    figures: dict[str, object] = {}
    with fresh_pilot(own_postgres, own_broker) as pilot:
        mqtt_proxy = FaultProxy(own_broker.port)
        db_proxy = FaultProxy(own_postgres.port)
        db_url = via_port(pilot.settings.database_url.get_secret_value(), db_proxy.port)
        # a batch swallowed by the blackhole is given up after 5 s and retried on a new
        # connection (IngestConfig.batch_timeout_s)
        ingest = IngestCommand(pilot, workers=2, database_url=db_url,
                               extra=("--batch-timeout", "5"))  # fmt: skip
        fleet: Fleet | None = None
        try:
            ingest.start()
            wait_until_subscribed(pilot, ingest)
            fleet = Fleet(pilot, tmp_path, DEVICES, PER_DEVICE, port=mqtt_proxy.port,
                          rate=2.0, connect_timeout_s=3, ack_timeout_s=5)  # fmt: skip
            devices = fleet.device_ids
            fleet.start()

            def stored() -> int:
                return stored_readings(pilot, devices)

            def fault(name: str, mode: Mode) -> None:
                """Both paths in `mode` for FAULT_S, then back to pass; recovered once the
                devices have had 50 more readings acknowledged by the broker and ingest has
                stored everything acknowledged until then."""
                before = stored()
                mqtt_proxy.set_mode(mode)
                db_proxy.set_mode(mode)
                time.sleep(FAULT_S)
                during = stored() - before
                mqtt_proxy.set_mode(PASS)
                db_proxy.set_mode(PASS)
                ended = time.monotonic()
                acknowledged = {t.device.device_id: t.acknowledged() for t in fleet.threads}

                def recovered() -> bool:
                    """Every device has had 5 more readings acknowledged since, and all of
                    them stored: both paths work again, for every partition of ingest."""
                    now = {t.device.device_id: t.acknowledged() for t in fleet.threads}
                    if any(now[d] < acknowledged[d] + 5 for d in devices):
                        return False
                    held = per_device(pilot, devices)
                    return all(held.get(d, 0) >= acknowledged[d] + 5 for d in devices)

                if not eventually(recovered, 180):
                    states = [(t.device.connected, t.device.in_flight, t.device.pending_readings(),
                               t.device.last_error) for t in fleet.threads]  # fmt: skip
                    raise AssertionError((name, stored(), fleet.acknowledged(), states,
                                          ingest.tail()))  # fmt: skip
                figures[name] = {
                    "stored_during_fault": during,
                    "recovered_after_s": round(time.monotonic() - ended, 1),
                }

            assert eventually(lambda: stored() >= 200, 120)
            fault("latency_300ms", latency(300))
            fault("drip_16B_every_5ms", drip(16, 5))
            fault("reset", RESET)
            fault("blackhole", BLACKHOLE)

            fleet.rate = 100.0
            assert eventually(fleet.all_delivered, 300), (fleet.taken(), fleet.acknowledged())
            assert eventually(lambda: stored() >= DEVICES * PER_DEVICE, 180), (
                stored(),
                ingest.tail(),
            )
            fleet.stop()
            figures["longest_device_buffering_s"] = round(fleet.longest_buffered_s(), 1)
            figures["most_readings_buffered_by_a_device"] = fleet.most_buffered()
            figures["device_reconnections"] = fleet.reconnections()
            figures["proxy_resets"] = mqtt_proxy.counters.reset + db_proxy.counters.reset
            figures["ingest_log_database_lines"] = sum(
                "database" in line for line in ingest.tail(100_000).splitlines()
            )
            assert ingest.stop() == 0, ingest.tail()
        finally:
            if fleet is not None:
                fleet.stopping.set()
            ingest.close()
            mqtt_proxy.close()
            db_proxy.close()
        counts = tally(pilot, devices)
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.update(vars(counts))
    print("FIGURES promise-2", json.dumps(figures))
    total = DEVICES * PER_DEVICE
    assert counts.rows == counts.distinct_keys == counts.distinct_seqs == total
    assert counts.duplicates == 0
    assert counts.rejected == 0


def test_a_device_whose_puback_never_comes_reconnects_and_sends_it_again(
    own_postgres, own_broker, tmp_path
):
    """A blackhole eats a device's publications on a live connection: no PUBACK will ever
    come for them, while later ones are acknowledged. The device gives the connection up
    once its oldest message is overdue, reconnects and sends what was not acknowledged."""
    with fresh_pilot(own_postgres, own_broker) as pilot, FaultProxy(own_broker.port) as proxy:
        device_id, password = pilot.register("thermometer")
        registration = DeviceRegistration(device_id, "thermometer", "127.0.0.1", proxy.port,
                                          password)  # fmt: skip
        device = Device(registration, tmp_path / device_id,
                        DeviceConfig(ack_timeout_s=2, connect_timeout_s=3))  # fmt: skip
        start = datetime.now(UTC) - timedelta(days=1)
        try:
            for i in range(3):
                device.take(Measurement(start + timedelta(minutes=i), {"body_temperature": 36.5}))
            device.drain(datetime.now(UTC))
            proxy.set_mode(BLACKHOLE)
            for i in range(3, 6):
                device.take(Measurement(start + timedelta(minutes=i), {"body_temperature": 36.6}))
                device.pump(datetime.now(UTC))
            assert eventually(lambda: proxy.counters.discarded_bytes > 0, 30)
            proxy.set_mode(PASS)

            def delivered() -> bool:
                device.pump(datetime.now(UTC))
                return device.pending_readings() == 0

            assert eventually(delivered, 120), (device.pending_readings(), device.last_error)
            assert device.last_error is not None and "no PUBACK" in device.last_error
            assert device.connections == 2
        finally:
            device.close()
