"""Retention and erasure in the store (issue 13, promise 8), on both forms.

Retention runs by a fixed clock (`now` passed in): exactly the rows of pilot days before the
cutoff go, the rollups that name a device or patient follow the readings, and the start-ups'
anonymous rollups stay as they were (docs/reliability-privacy.md). Erasure removes one
patient's rows and nothing of another's, and leaves the rollups as a rebuild from the
remaining readings would.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from ingest_fixtures import bp, message

from ehealthlab.cli import main
from ehealthlab.errors import InvalidInputError, NotFoundError
from ehealthlab.gateway.pseudonyms import label_problem, patient_pseudonym
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.erasure import erase_patient
from ehealthlab.store.readings import ReadingRow, ReadingWriter
from ehealthlab.store.retention import retention_cutoff, run_retention

ROME = ZoneInfo("Europe/Rome")
TORINO, BALME = "001272", "001018"
#: the first pilot day of the store the tests fill: 30 days from here
DAY0 = date(2026, 3, 2)
DAYS = 30


def rome(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ROME).astimezone(UTC)


# -- the cutoff, a pure function -----------------------------------------------------------------


def test_the_cutoff_is_the_rome_midnight_starting_the_oldest_day_kept() -> None:
    # 1 April 2026, 00:30 in Rome is still 31 March in UTC: the day is Rome's
    now = datetime(2026, 3, 31, 22, 30, tzinfo=UTC)
    assert retention_cutoff(now, 1) == datetime(2026, 3, 30, 22, 0, tzinfo=UTC)  # 31 Mar, CEST
    # across the change to summer time (29 March 2026): midnight before it is UTC+1
    assert retention_cutoff(now, 5) == datetime(2026, 3, 26, 23, 0, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="at least one day"):
        retention_cutoff(now, 0)
    with pytest.raises(InvalidInputError, match="time zone"):
        retention_cutoff(datetime(2026, 4, 1, 12), 3)


# -- a small pilot, written through the platform's writer ----------------------------------------


def _one(conn: psycopg.Connection, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def fill(conn: psycopg.Connection) -> dict[str, Any]:
    """A start-up with a cuff and a scale, a provider with patients A (cuff, Torino) and B
    (scale, Balme) enrolled from DAY0; 30 days of readings, two a day per metric; one cuff
    reading whose device clock was years behind (measured on day 25, `at` in 2001) and one whose
    clock ran ahead (measured on day 3, `at` on day 27); a reject, a duplicate, a message, a
    presence event and an alert per device and day; an audit entry per day."""
    startup = _one(conn, "INSERT INTO organisations (kind, name) VALUES ('startup', 'S')"
                   " RETURNING id")  # fmt: skip
    provider = _one(conn, "INSERT INTO organisations (kind, name) VALUES ('provider', 'P')"
                    " RETURNING id")  # fmt: skip
    token = _one(
        conn,
        "INSERT INTO api_tokens (organisation_id, role, token_hash)"
        " VALUES (%s, 'admin', %s) RETURNING id",
        (provider, uuid.uuid4().bytes),
    )
    for device, kind in (("cuff-1", "blood_pressure_monitor"), ("scale-1", "scale")):
        conn.execute(
            "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
            " VALUES (%s, %s, %s, 'M', %s)",
            (device, startup, kind, device),
        )
    patients = {}
    for label, device, place in (("A", "cuff-1", TORINO), ("B", "scale-1", BALME)):
        patients[label] = _one(
            conn,
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, %s, %s) RETURNING id",
            (provider, uuid.uuid4().bytes, f"patient {label}"),
        )
        conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, care_plan)"
            " VALUES (%s, %s, %s, %s, '{}')",
            (patients[label], device, place, DAY0),
        )
    rows: list[ReadingRow] = []
    metrics = {"cuff-1": ("bp_systolic", "bp_diastolic"), "scale-1": ("body_weight",)}
    for d in range(DAYS):
        day = DAY0 + timedelta(days=d)
        for device, names in metrics.items():
            for hour in (8, 20):
                at = rome(day, hour)
                for metric in names:
                    seq = len(rows)
                    rows.append(ReadingRow(device, metric, at, 100.0 + d, at,
                                           at + timedelta(seconds=30 + d), seq, f"m{seq}",
                                           0.0, False))  # fmt: skip
            received = rome(day, 9)
            conn.execute(
                "INSERT INTO rejected_readings (received_at, device_id, reason, detail, payload,"
                " payload_bytes, measured_at) VALUES (%s, %s, 'out_of_range', '', '\\x00', 1, %s)",
                (received, device, received),
            )
            conn.execute(
                "INSERT INTO duplicate_readings (received_at, device_id, metric, at, measured_at,"
                " seq, msg_id) VALUES (%s, %s, %s, %s, %s, 0, 'm')",
                (received, device, names[0], received, received),
            )
            conn.execute(
                "INSERT INTO device_messages (device_id, received_at, qos, payload_bytes,"
                " readings, accepted, duplicates, rejected) VALUES (%s, %s, 1, 100, 2, 2, 0, 0)",
                (device, received),
            )
            conn.execute(
                "INSERT INTO device_status_events (device_id, received_at, status, retained,"
                " payload) VALUES (%s, %s, 'online', true, '\\x00')",
                (device, received),
            )
        for label in ("A", "B"):
            conn.execute(
                "INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value,"
                " measured_at, raised_at) VALUES (%s, 'r', %s, %s, 'bp_systolic', %s, 1, %s, %s)",
                (patients[label], day, "cuff-1" if label == "A" else "scale-1",
                 rome(day, 8), rome(day, 8), rome(day, 8)),
            )  # fmt: skip
        conn.execute(
            "INSERT INTO fhir_audit_events (recorded, organisation_id, token_id, action,"
            " interaction, resource_type, patient_ids, outcome, http_status)"
            " VALUES (%s, %s, %s, 'R', 'read', 'Patient', %s, 0, 200)",
            (rome(day, 12), provider, token, [patients["A"]]),
        )
    behind = rome(DAY0 + timedelta(days=25), 10)
    ahead = rome(DAY0 + timedelta(days=3), 10)
    rows.append(ReadingRow("cuff-1", "heart_rate", datetime(2001, 1, 1, tzinfo=UTC), 60.0,
                           behind, behind, 9001, "behind", 7e8, True))  # fmt: skip
    rows.append(ReadingRow("cuff-1", "heart_rate", rome(DAY0 + timedelta(days=27), 10), 61.0,
                           ahead, ahead, 9002, "ahead", -2e6, True))  # fmt: skip
    result = ReadingWriter(conn).write(rows)
    assert result.inserted == len(rows)
    return {"rows": rows, "patients": patients, "provider": provider, "startup": startup}


# -- what the rollups must hold, from the readings themselves -----------------------------------


def anonymous_rollups(conn: psycopg.Connection) -> dict[str, dict[tuple[Any, ...], Any]]:
    """The start-ups' rollups (0022) summed over slots, rows of zero left out."""
    le = "sum(readings), sum(le_0s), sum(le_60s), sum(le_259200s)"
    return {
        "fleet": {
            tuple(r[:3]): tuple(r[3:])
            for r in conn.execute(
                f"SELECT bucket, organisation_id, device_type, {le} FROM readings_fleet_hourly"  # noqa: S608
                " GROUP BY 1, 2, 3 HAVING sum(readings) <> 0"
            )
        },
        "municipality": {
            tuple(r[:3]): tuple(r[3:])
            for r in conn.execute(
                f"SELECT bucket, organisation_id, municipality, {le}"  # noqa: S608
                " FROM readings_municipality_hourly GROUP BY 1, 2, 3 HAVING sum(readings) <> 0"
            )
        },
    }


def device_rollups(conn: psycopg.Connection) -> dict[str, Any]:
    """The rollups that name a device or a patient, as stored and as computed from the
    readings that remain: each pair must be equal."""
    return {
        "patient_daily": (
            set(conn.execute(
                "SELECT organisation_id, day, patient_id, counts::text FROM readings_patient_daily"
            ).fetchall()),
            set(conn.execute(
                "SELECT organisation_id, day, patient_id, jsonb_object_agg(metric, n)::text FROM"
                " (SELECT p.organisation_id, ehl_pilot_day(r.measured_at) AS day, r.patient_id,"
                "  r.metric, count(*) AS n FROM readings r JOIN patients p ON p.id = r.patient_id"
                "  GROUP BY 1, 2, 3, 4) c GROUP BY 1, 2, 3"
            ).fetchall()),
        ),
        "last": (
            set(conn.execute(
                "SELECT device_id, measured_at, metric, received_at FROM device_last_readings"
            ).fetchall()),
            set(conn.execute(
                "SELECT DISTINCT ON (device_id) device_id, measured_at, metric, received_at"
                " FROM readings ORDER BY device_id, measured_at DESC, metric"
            ).fetchall()),
        ),
        "hourly": (
            set(conn.execute(
                "SELECT bucket, device_id, metric, readings, value_sum, value_min, value_max"
                " FROM readings_hourly"
            ).fetchall()),
            set(conn.execute(
                "SELECT date_bin('1 hour', at, timestamptz '2000-01-01'), device_id, metric,"
                " count(*), sum(value), min(value), max(value) FROM readings GROUP BY 1, 2, 3"
            ).fetchall()),
        ),
    }  # fmt: skip


def assert_device_rollups_follow_the_readings(conn: psycopg.Connection) -> None:
    for name, (stored, computed) in device_rollups(conn).items():
        assert stored == computed, name


def counts(conn: psycopg.Connection, tables: tuple[str, ...]) -> dict[str, int]:
    return {t: _one(conn, f"SELECT count(*) FROM {t}") for t in tables}  # noqa: S608


LOGS = ("rejected_readings", "duplicate_readings", "device_messages", "device_status_events")


# -- retention -------------------------------------------------------------------------------


def test_retention_by_a_fixed_clock_deletes_exactly_what_is_past_and_keeps_rollups_right(
    store_url: str,
) -> None:
    with psycopg.connect(store_url, autocommit=True) as conn:
        pilot = fill(conn)
        timescale = _one(conn, "SELECT ehl_store_form()") == "timescale"
        if timescale:  # the continuous aggregate as the policy would have left it
            conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
        anonymous = anonymous_rollups(conn)
        messages_hourly = _one(conn, "SELECT sum(messages) FROM messages_hourly")
        # day 30 of the pilot, at noon: keep it and the 10 days before (days 20-30)
        now = rome(DAY0 + timedelta(days=DAYS), 12)
        report = run_retention(conn, now=now, days=10, run_by="test", device_batch=1)
        cutoff = rome(DAY0 + timedelta(days=DAYS - 10), 0)
        assert report.cutoff == cutoff
        kept = [r for r in pilot["rows"] if r.measured_at >= cutoff]
        gone = len(pilot["rows"]) - len(kept)
        assert report.deleted["readings"] == gone
        stored = {tuple(r) for r in conn.execute("SELECT device_id, metric, at FROM readings")}
        assert stored == {r.key for r in kept}
        # the clock that was behind is kept (measured on day 25), the one ahead is not
        assert ("cuff-1", "heart_rate", datetime(2001, 1, 1, tzinfo=UTC)) in stored
        assert not any(k[2] > rome(DAY0 + timedelta(days=26), 0) and k[1] == "heart_rate"
                       for k in stored)  # fmt: skip
        if timescale:
            assert report.chunks_dropped >= 1
        # one row per device and kept day in each log, one alert per patient and kept day
        assert counts(conn, LOGS) == dict.fromkeys(LOGS, 2 * 10)
        assert report.deleted["alerts"] == 2 * 20
        assert _one(conn, "SELECT min(day) FROM alerts") == DAY0 + timedelta(days=20)
        assert _one(conn, "SELECT count(*) FROM fhir_audit_events") == 10
        assert_device_rollups_follow_the_readings(conn)
        assert _one(conn, "SELECT min(day) FROM readings_patient_daily") == DAY0 + timedelta(20)
        # the anonymous rollups outlive the readings, unchanged
        assert anonymous_rollups(conn) == anonymous
        assert _one(conn, "SELECT sum(messages) FROM messages_hourly") == messages_hourly
        run = conn.execute("SELECT run_now, days, cutoff, deleted FROM retention_runs").fetchall()
        assert run == [(now, 10, cutoff, report.deleted)]
        # a rebuild keeps the history before the cutoff (migration 0031): only the hour of
        # the reading whose clock ran ahead, deleted by its measurement, counts one less
        ahead = pilot["rows"][-1]
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT ehl_dashboard_rollups_rebuild()")
            rebuilt = anonymous_rollups(conn)
            assert_device_rollups_follow_the_readings(conn)
        hour = ahead.at.replace(minute=0)  # the only reading of its hour
        for rollup in ("fleet", "municipality"):
            expected = {k: v for k, v in anonymous[rollup].items() if k[0] != hour}
            assert len(expected) == len(anonymous[rollup]) - 1
            assert rebuilt[rollup] == expected
        # again by the same clock: nothing is left to delete
        again = run_retention(conn, now=now, days=10, run_by="test")
        assert again.total == 0


def test_retention_and_erasure_reach_into_compressed_chunks(store_url: str) -> None:
    """Production compresses chunks created 30 days ago: retention and erasure delete from
    them too (TimescaleDB 2.28 decompresses the segments touched)."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        if _one(conn, "SELECT ehl_store_form()") != "timescale":
            pytest.skip("chunks are TimescaleDB's")
        pilot = fill(conn)
        for (chunk,) in conn.execute("SELECT show_chunks('readings')").fetchall():
            conn.execute("SELECT compress_chunk(%s)", (chunk,))
        conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
        now = rome(DAY0 + timedelta(days=DAYS), 12)
        report = run_retention(conn, now=now, days=10, run_by="test")
        cutoff = rome(DAY0 + timedelta(days=DAYS - 10), 0)
        assert report.deleted["readings"] == sum(r.measured_at < cutoff for r in pilot["rows"])
        erase_patient(conn, pilot["patients"]["A"], erased_by="test")
        assert _one(conn, "SELECT count(*) FROM readings WHERE patient_id = %s",
                    (pilot["patients"]["A"],)) == 0  # fmt: skip
        assert_device_rollups_follow_the_readings(conn)


def test_retention_refuses_a_connection_inside_a_transaction(store_url: str) -> None:
    with psycopg.connect(store_url) as conn, pytest.raises(InvalidInputError, match="autocommit"):
        run_retention(conn, now=datetime.now(UTC), days=3, run_by="test")


# -- erasure ---------------------------------------------------------------------------------


def rebuilt_rollups(conn: psycopg.Connection) -> dict[str, Any]:
    """The anonymous rollups as a rebuild from the readings gives them (rolled back)."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT ehl_dashboard_rollups_rebuild()")
        return anonymous_rollups(conn)


def test_erasure_removes_one_patient_and_nothing_of_another(store_url: str) -> None:
    with psycopg.connect(store_url, autocommit=True) as conn:
        pilot = fill(conn)
        a, b = pilot["patients"]["A"], pilot["patients"]["B"]
        timescale = _one(conn, "SELECT ehl_store_form()") == "timescale"
        if timescale:
            conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
        b_before = {
            t: _one(conn, f"SELECT count(*) FROM {t} WHERE patient_id = %s", (b,))  # noqa: S608
            for t in ("readings", "alerts", "enrolments", "readings_patient_daily")
        }
        a_readings = _one(conn, "SELECT count(*) FROM readings WHERE patient_id = %s", (a,))
        report = erase_patient(conn, a, erased_by="test operator", reason="art. 17 request")
        assert report.counts["readings"] == a_readings > 0
        assert report.counts["alerts"] == DAYS
        assert report.counts["patients"] == report.counts["enrolments"] == 1
        assert report.counts["rejected_readings"] == report.counts["duplicate_readings"] == DAYS
        for table in ("readings", "alerts", "enrolments", "readings_patient_daily"):
            of = f"SELECT count(*) FROM {table} WHERE patient_id = %s"  # noqa: S608
            assert (_one(conn, of, (a,)), _one(conn, of, (b,))) == (0, b_before[table])
        assert _one(conn, "SELECT count(*) FROM patients WHERE id = %s", (a,)) == 0
        # the cuff's readings before its enrolment and the scale's are untouched
        assert _one(conn, "SELECT count(*) FROM rejected_readings WHERE device_id = 'scale-1'") == (
            DAYS
        )
        assert anonymous_rollups(conn) == rebuilt_rollups(conn)
        assert_device_rollups_follow_the_readings(conn)
        record = conn.execute(
            "SELECT patient_id, organisation_id, erased_by, counts, reason FROM patient_erasures"
        ).fetchall()
        assert record == [(a, pilot["provider"], "test operator", report.counts,
                           "art. 17 request")]  # fmt: skip
        # the reads of the patient recorded before stay, naming only the random id
        assert _one(conn, "SELECT count(*) FROM fhir_audit_events WHERE %s = ANY(patient_ids)",
                    (a,)) == DAYS  # fmt: skip
        again = erase_patient(conn, a, erased_by="test operator")
        assert again.erased_before and again.total == 0
        assert "nothing of theirs is left" in again.summary()
        assert _one(conn, "SELECT count(*) FROM patient_erasures") == 1
        with pytest.raises(NotFoundError):
            erase_patient(conn, uuid.uuid4(), erased_by="test operator")
    # as the API erases: a pooled connection out of autocommit, idle
    with psycopg.connect(store_url) as conn:
        erase_patient(conn, b, erased_by="token:x")
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        assert_device_rollups_follow_the_readings(conn)
        conn.execute("SELECT 1")
        with pytest.raises(InvalidInputError, match="transaction of its own"):
            erase_patient(conn, b, erased_by="token:x")


def test_a_message_delivered_again_after_its_patients_erasure_stores_nothing(
    store_url: str,
) -> None:
    """A message stored before an erasure and delivered again after it (the broker's journal
    publishes what it acknowledged within its last minutes again after a crash; a device
    retries) is a redelivery: its log row, which names no patient, outlives the erasure, and
    the erased readings do not come back, attributed or not."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        pilot = fill(conn)
        a = pilot["patients"]["A"]
        measured = rome(DAY0 + timedelta(days=10), 12)
        received = ReceivedMessage(
            "ehl/v1/devices/cuff-1/readings",
            message(bp(1, measured), msg_id="before-the-erasure", sent_at=measured),
            1, False, 1, measured + timedelta(seconds=5), True,
        )  # fmt: skip

        def deliver() -> None:
            judged = judge(received, lambda _: KnownDevice("blood_pressure_monitor"))
            store_judged(conn, ReadingWriter(conn), [judged], DEFAULT_RULES)

        of_message = "SELECT count(*), count(patient_id) FROM readings WHERE msg_id = %s"
        deliver()
        assert conn.execute(of_message, ("before-the-erasure",)).fetchone() == (2, 2)
        erase_patient(conn, a, erased_by="test operator")
        assert conn.execute(of_message, ("before-the-erasure",)).fetchone() == (0, 0)
        deliver()
        assert conn.execute(of_message, ("before-the-erasure",)).fetchone() == (0, 0)
        logged = "SELECT deliveries FROM device_messages WHERE msg_id = 'before-the-erasure'"
        assert conn.execute(logged).fetchall() == [(2,)]


@pytest.mark.parametrize(
    ("label", "identifier", "refused"),
    [
        ("M.R. 1950", "RSSMRA50A01L219X", False),
        ("P0001", "P0001-demo", False),  # the simulators' label, part of the identifier
        ("rssmra50a01l219x", "RSSMRA50A01L219X", True),  # the identifier, in another case
        ("Mario RSS MRA 50A01 L219X", "12345", True),  # a codice fiscale, spaced
        ("RSSMRA50A01L2MX", "x", False),  # not a codice fiscale's shape
        ("ward 7 bed 12345", "12345", True),
    ],
)
def test_a_label_that_would_store_an_identifier_is_named(
    label: str, identifier: str, refused: bool
) -> None:
    assert (label_problem(label, identifier) is not None) == refused


# -- the commands ------------------------------------------------------------------------------


def test_the_commands_run_by_the_settings_and_say_what_they_did(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = "a patient key for the command test"
    for name, value in (("DATABASE_URL", database_url), ("STATE_DIR", str(tmp_path)),
                        ("PATIENT_KEY", key)):  # fmt: skip
        monkeypatch.setenv(f"EHEALTHLAB_{name}", value)
    monkeypatch.delenv("EHEALTHLAB_RETENTION_DAYS", raising=False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        pilot = fill(conn)
        conn.execute(
            "UPDATE patients SET identifier_hash = %s WHERE id = %s",
            (patient_pseudonym(key.encode(), pilot["provider"], "RSSMRA80A01L219X"),
             pilot["patients"]["B"]),
        )  # fmt: skip
    assert main(["db", "retention"]) == 2
    assert "EHEALTHLAB_RETENTION_DAYS" in capsys.readouterr().err
    monkeypatch.setenv("EHEALTHLAB_RETENTION_DAYS", "10")
    now = rome(DAY0 + timedelta(days=DAYS), 12).isoformat()
    assert main(["db", "retention", "--now", now]) == 0
    assert "deleted: alerts 40, device_messages 40" in capsys.readouterr().out
    a = pilot["patients"]["A"]
    assert main(["db", "erase-patient", f"Patient/{a}", "--reason", "request 1"]) == 0
    assert capsys.readouterr().out.startswith(f"erased patient {a}: readings ")
    assert main(["db", "erase-patient", str(a)]) == 0
    assert "nothing of theirs is left" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(" rssmra80a01l219x \n"))
    erase_b = ["db", "erase-patient", "--identifier-stdin", "--provider", str(pilot["provider"])]
    assert main(erase_b) == 0
    assert f"erased patient {pilot['patients']['B']}" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("RSSMRA80A01L219X\n"))
    assert main(erase_b) == 1  # the pseudonym names nobody now
    assert main(["db", "erase-patient", "not-an-id"]) == 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        by = conn.execute("SELECT erased_by, reason FROM patient_erasures ORDER BY erased_at")
        assert [r[1] for r in by] == ["request 1", ""]
