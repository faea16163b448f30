"""The gateway's HTTP API: devices, against a real PostgreSQL and a real Mosquitto (dynamic
security). Registered devices' credentials really work in the broker and only on their own
topics; revoking drops the connection, rotating refuses the old password, passwords appear
only where they are created; rejects are listed; presence is shown from the broker; a broker
outage leaves no half-registered device. Refusals by the broker are checked from outside with
a subscriber that must see nothing arrive."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from gateway_fixtures import (
    admin_broker,
    assert_problem,
    cast,
    connect_device,
    enrol,
    register_device,
    register_patient,
    wait_until,
    watch,
    world,
)

from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import AuthenticationError, PermissionDeniedError
from ehealthlab.mqtt import MqttError, Will
from ehealthlab.store.rejections import RejectedRow, write_rejections

__all__ = ["admin_broker", "cast", "watch", "world"]


# -- devices: credentials that work in the broker, and only there ---------------------------


def test_registered_devices_publish_on_their_own_topics_only(client, cast, admin_broker, watch):
    one = register_device(client, cast, "a", firmware="1.0")
    other = register_device(client, cast, "b", device_type="pulse_oximeter")
    mqtt = one["mqtt"]
    assert mqtt["username"] == mqtt["client_id"] == one["device_id"]
    assert mqtt["topics"] == {
        "readings": readings_topic(one["device_id"]),
        "status": status_topic(one["device_id"]),
        "feedback": feedback_topic(one["device_id"]),
    }
    assert one["device_id"].startswith("bpm-") and other["device_id"].startswith("oxi-")
    mine = watch(f"ehl/v1/devices/{one['device_id']}/#", feedback_topic(one["device_id"]))
    theirs = watch(f"ehl/v1/devices/{other['device_id']}/#", feedback_topic(other["device_id"]))
    with connect_device(admin_broker, mqtt) as device:
        device.publish(mqtt["topics"]["readings"], b'{"hello": 1}')
        for topic in (readings_topic(other["device_id"]), status_topic(other["device_id"]),
                      mqtt["topics"]["feedback"]):  # fmt: skip
            with pytest.raises(PermissionDeniedError):
                device.publish(topic, b"{}")
        with pytest.raises(PermissionDeniedError):
            device.subscribe(feedback_topic(other["device_id"]))
    arrived = mine.next()
    assert (arrived.topic, arrived.payload) == (mqtt["topics"]["readings"], b'{"hello": 1}')
    assert theirs.nothing_arrives()
    assert mine.nothing_arrives()


def test_revoking_drops_the_connection_and_refuses_reconnection(client, cast, admin_broker, watch):
    registered = register_device(client, cast, "a")
    device_id, mqtt = registered["device_id"], registered["mqtt"]
    lost: list[str] = []
    device = connect_device(admin_broker, mqtt, on_connection_lost=lost.append)
    seen = watch(readings_topic(device_id), feedback_topic(device_id))
    answer = client.delete(f"/api/v1/devices/{device_id}", headers=cast.h("a"))
    assert answer.status_code == 204 and answer.content == b""
    # wait for the callback itself: it runs just after is_connected turns false
    assert wait_until(lambda: bool(lost)) and not device.is_connected
    with pytest.raises((MqttError, PermissionDeniedError)):
        device.publish(readings_topic(device_id), b"{}", timeout=1)
    device.drop()
    with pytest.raises(AuthenticationError):
        connect_device(admin_broker, mqtt)
    assert seen.nothing_arrives()
    shown = client.get(f"/api/v1/devices/{device_id}", headers=cast.h("a")).json()
    assert shown["revoked"] is True and shown["revoked_at"]
    # revoking again is harmless; rotating or enrolling a revoked device is a conflict
    assert client.delete(f"/api/v1/devices/{device_id}", headers=cast.h("a")).status_code == 204
    rotate = client.post(f"/api/v1/devices/{device_id}/credentials", headers=cast.h("a"))
    assert_problem(rotate, 409, detail_has="revoked")
    patient = register_patient(client, cast, "p")
    assert_problem(enrol(client, cast, patient, device_id), 409, detail_has="revoked")


def test_rotating_credentials_refuses_the_old_password(client, cast, admin_broker):
    registered = register_device(client, cast, "a")
    device_id, old = registered["device_id"], registered["mqtt"]
    live = connect_device(admin_broker, old)
    rotated = client.post(f"/api/v1/devices/{device_id}/credentials", headers=cast.h("a"))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["mqtt"]
    assert new["password"] != old["password"] and new["username"] == device_id
    assert wait_until(lambda: not live.is_connected)  # a thief's session ends too
    live.drop()
    with pytest.raises(AuthenticationError):
        connect_device(admin_broker, old)
    connect_device(admin_broker, new).close()


def test_passwords_appear_only_where_they_are_created(client, cast, world):
    for path in ("/api/v1/devices", f"/api/v1/devices/{world['device_a']}"):
        for who in ("a", "operator"):
            answer = client.get(path, headers=cast.h(who))
            assert answer.status_code == 200
            assert "password" not in answer.text and "mqtt" not in answer.text
    listed = client.get("/api/v1/devices", headers=cast.h("a")).json()
    device = next(d for d in listed if d["device_id"] == world["device_a"])
    assert device["status"] == "never_seen" and device["last_seen"] is None
    assert device["type"] == "blood_pressure_monitor" and device["revoked"] is False


def test_a_duplicate_model_and_serial_is_a_conflict_naming_the_device(client, cast):
    body = {"type": "thermometer", "model": "T-1", "serial": uuid.uuid4().hex}
    first = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
    again = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
    problem = assert_problem(again, 409, detail_has="already registered")
    assert problem["device_id"] == first.json()["device_id"]
    # another start-up may have the same model and serial
    assert client.post("/api/v1/devices", json=body, headers=cast.h("b")).status_code == 201


def test_rejects_are_listed_newest_first(client, cast, world, settings):
    device_id = world["device_a"]
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    with psycopg.connect(settings.require_database_url()) as conn:
        write_rejections(conn, [
            RejectedRow(t0, device_id, "malformed_json", "not JSON", b"{", msg_id=None),
            RejectedRow(t0 + timedelta(minutes=1), device_id, "out_of_range",
                        "heart_rate 900 /min outside 20-300", b"{}", msg_id="m-2",
                        item_index=2, seq=1043, metric="heart_rate", at=t0),
        ])  # fmt: skip
    answer = client.get(f"/api/v1/devices/{device_id}/rejects", headers=cast.h("a"))
    assert answer.status_code == 200
    newest, oldest = answer.json()
    assert newest["reason"] == "out_of_range" and newest["seq"] == 1043
    assert newest["msg_id"] == "m-2" and newest["index"] == 2
    assert oldest["reason"] == "malformed_json" and oldest["seq"] is None
    assert {"received_at", "reason", "detail", "seq", "msg_id"} <= set(newest)
    limited = client.get(f"/api/v1/devices/{device_id}/rejects?limit=1", headers=cast.h("a"))
    assert [r["reason"] for r in limited.json()] == ["out_of_range"]
    by_operator = client.get(f"/api/v1/devices/{device_id}/rejects", headers=cast.h("operator"))
    assert len(by_operator.json()) == 2


# -- presence -------------------------------------------------------------------------------


def test_a_device_is_shown_online_then_offline_with_last_seen(client, cast, admin_broker,
                                                              settings):  # fmt: skip
    registered = register_device(client, cast, "a")
    device_id, mqtt = registered["device_id"], registered["mqtt"]
    path = f"/api/v1/devices/{device_id}"

    def shown() -> dict:
        return client.get(path, headers=cast.h("a")).json()

    assert shown()["status"] == "never_seen"
    will = Will(mqtt["topics"]["status"], b'{"state": "offline"}')
    device = connect_device(admin_broker, mqtt, will=will)
    device.publish(mqtt["topics"]["status"], b'{"state": "online"}', retain=True)
    assert wait_until(lambda: shown()["status"] == "online"), shown()
    online = shown()
    assert online["last_seen"] is not None and online["status_at"] is not None
    device.drop()  # no DISCONNECT: the broker publishes the Will
    assert wait_until(lambda: shown()["status"] == "offline"), shown()
    offline = shown()
    assert offline["last_seen"] >= online["last_seen"]
    with psycopg.connect(settings.require_database_url()) as conn:
        events = conn.execute(
            "SELECT status, retained FROM device_status_events WHERE device_id = %s"
            " ORDER BY id", (device_id,)).fetchall()  # fmt: skip
    assert events == [("online", False), ("offline", False)]


# -- the broker goes away -------------------------------------------------------------------


def test_a_broker_outage_leaves_no_half_registered_device(client, cast, mosquitto_broker,
                                                          settings):  # fmt: skip
    serial = uuid.uuid4().hex
    body = {"type": "glucometer", "model": "G-1", "serial": serial}
    mosquitto_broker.stop()
    try:
        answer = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
        assert_problem(answer, 503, detail_has="MQTT broker")
        assert answer.headers["retry-after"]
    finally:
        mosquitto_broker.start()
    with psycopg.connect(settings.require_database_url()) as conn:
        assert conn.execute("SELECT count(*) FROM devices WHERE serial = %s",
                            (serial,)).fetchone()[0] == 0  # fmt: skip
    # once the broker is back, the same registration goes through
    assert client.post("/api/v1/devices", json=body, headers=cast.h("a")).status_code == 201
