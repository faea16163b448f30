"""The time-series store against a real PostgreSQL (and TimescaleDB when available)."""

from __future__ import annotations

import random
import re
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources

import psycopg
import pytest
from store_fixtures import T0, enrol, reading, register_device

from ehealthlab.errors import MigrationError
from ehealthlab.store.migrate import discover, migrate
from ehealthlab.store.readings import ReadingWriter, attribute_unassigned
from ehealthlab.store.reference import load_municipalities
from ehealthlab.store.rejections import RejectedRow, recent_rejections, write_rejections

# --- migrations ---------------------------------------------------------------------------


def _readings_columns(sql_text: str) -> list[str]:
    body = re.search(r"CREATE TABLE readings \((.*?)\n\)", sql_text, re.S)
    assert body is not None
    lines = (re.sub(r"\s+--.*", "", line).strip() for line in body.group(1).splitlines())
    return [line for line in lines if line]


def test_both_forms_declare_the_same_readings_table():
    folder = resources.files("ehealthlab.store") / "migrations"
    plain = (folder / "0002_readings.plain.sql").read_text()
    timescale = (folder / "0002_readings.timescale.sql").read_text()
    assert _readings_columns(plain) == _readings_columns(timescale)
    assert len(_readings_columns(plain)) == 13


def test_every_migration_has_a_sql_for_both_forms():
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        assert migration.sql_for("plain").strip()
        assert migration.sql_for("timescale").strip()


def test_migrate_from_empty_then_rerun_applies_nothing(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        first = migrate(conn, "auto")
        second = migrate(conn, "auto")
        recorded = conn.execute("SELECT version, form FROM schema_migrations").fetchall()
    assert first.form == "plain"
    assert first.applied == [m.version for m in discover()]
    assert second.applied == []
    assert second.already_applied == first.applied
    assert {form for _, form in recorded} == {"plain"}


def test_concurrent_migrations_apply_each_version_once(empty_database_url):
    reports, errors = [], []

    def run():
        try:
            with psycopg.connect(empty_database_url, autocommit=True) as conn:
                reports.append(migrate(conn))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(v for r in reports for v in r.applied)
    assert applied == [m.version for m in discover()]


def test_a_recorded_form_cannot_be_changed(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        migrate(conn, "plain")
        with pytest.raises(MigrationError, match="built in the plain form"):
            migrate(conn, "timescale")


def test_timescale_form_refused_where_the_extension_is_not_loaded(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        loaded = "timescaledb" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        if loaded:
            pytest.skip("this server has TimescaleDB loaded")
        with pytest.raises(MigrationError, match="no TimescaleDB loaded"):
            migrate(conn, "timescale")
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_an_edited_applied_migration_is_detected(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(conn)


def test_store_form_is_recorded_and_tables_have_one_shape(store_url, request):
    form = request.node.callspec.params["store_url"]
    with psycopg.connect(store_url, autocommit=True) as conn:
        assert conn.execute("SELECT ehl_store_form()").fetchone()[0] == form
        again = migrate(conn)
        assert again.applied == []
        shapes = {}
        for relation in ("readings", "readings_hourly", "rejected_readings", "duplicate_readings"):
            shapes[relation] = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (relation,),
            ).fetchall()
    assert [c for c, _ in shapes["readings_hourly"]] == [
        "bucket",
        "device_id",
        "metric",
        "readings",
        "value_sum",
        "value_min",
        "value_max",
    ]
    assert [c for c, _ in shapes["readings"]][:4] == ["device_id", "metric", "at", "value"]
    assert dict(shapes["readings"])["at"] == "timestamp with time zone"


def test_a_new_months_readings_are_written_while_a_long_query_reads(store_url):
    """The first reading of a month not stored yet does not wait for readers of `readings`
    (an evaluation, an export): a new partition or chunk must not need an exclusive lock."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        register_device(conn)
        ReadingWriter(conn).write([reading()])
    with psycopg.connect(store_url) as long_query:  # its transaction stays open
        assert long_query.execute("SELECT count(*) FROM readings").fetchone() == (1,)
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '3s'")
            later = [reading(at=datetime(2031, 5, 2, 9, 0, tzinfo=UTC), seq=2, msg="m-2")]
            assert ReadingWriter(conn).write(later).inserted == 1
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (2,)


def test_two_writers_reaching_a_new_month_at_once_both_go_on(store_url):
    """The writer that waited for the other's new partition finds it, rather than failing
    with duplicate_table (it looked the partition up in a stale catalog cache)."""
    month = [datetime(2033, 7, 15, tzinfo=UTC)]
    errors: list[BaseException] = []
    with psycopg.connect(store_url) as first, psycopg.connect(store_url, autocommit=True) as second:
        first.execute("SELECT ehl_ensure_reading_partitions(%s)", (month,))

        def other_writer() -> None:
            try:
                second.execute("SET lock_timeout = '20s'")
                second.execute("SELECT ehl_ensure_reading_partitions(%s)", (month,))
            except BaseException as exc:  # reported below
                errors.append(exc)

        other = second.info.backend_pid
        thread = threading.Thread(target=other_writer)
        thread.start()
        # the window on purpose: commit only once the second writer waits for the first's
        # lock (the plain form's advisory lock; the TimescaleDB form's function takes none,
        # and the second writer is then done at once)
        deadline = time.monotonic() + 60  # bounds a failure only
        with psycopg.connect(store_url, autocommit=True) as watcher:
            while not (
                waiting := watcher.execute(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND NOT granted AND pid = %s",
                    (other,),
                ).fetchone()[0]
            ):
                if not thread.is_alive() or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        if first.execute("SELECT ehl_store_form()").fetchone()[0] == "plain":
            assert waiting, "the second writer did not wait for the first's partition"
        assert waiting or not thread.is_alive(), "the second writer neither waited nor finished"
        first.commit()
        thread.join(60)
        assert not thread.is_alive()
    assert not errors, errors


# --- reference data ------------------------------------------------------------------------


def test_municipalities_are_loaded_once_with_their_snai_areas(store_url):
    with psycopg.connect(store_url, autocommit=True) as conn:
        assert load_municipalities(conn) == 312  # a rerun refreshes, never duplicates
        count, population, inner = conn.execute(
            "SELECT count(*), sum(population), count(*) FILTER (WHERE area = 'inner')"
            " FROM municipalities"
        ).fetchone()
        torino = conn.execute(
            "SELECT name, snai_class, area, is_province_capital FROM municipalities"
            " WHERE istat_code = '001272'"
        ).fetchone()
    assert (count, population, inner) == (312, 2_219_206, 98)  # PROVENANCE.md: D 60 + E 35 + F 3
    assert torino == ("Torino", "A", "centre", True)


# --- readings ------------------------------------------------------------------------------


def test_random_readings_round_trip_exactly(store_url):
    rng = random.Random(20261125)
    metrics = ["bp_systolic", "heart_rate", "spo2", "body_weight", "body_temperature"]
    batch, seen = [], set()
    while len(batch) < 300:
        tz = timezone(timedelta(minutes=rng.choice([-300, 0, 60, 120, 330])))
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 200 * 86400))
        at = at.astimezone(tz).replace(microsecond=rng.randrange(0, 1_000_000))
        row = reading(
            device=f"dev-{rng.randrange(5):04d}",
            metric=rng.choice(metrics),
            at=at,
            value=rng.uniform(-1e6, 1e6),
            seq=rng.randrange(0, 2**62),
            offset=rng.uniform(-1e5, 1e5),
            corrected=rng.random() < 0.3,
            msg=f"msg-{rng.randrange(10**9)}",
        )
        if row.key not in seen:
            seen.add(row.key)
            batch.append(row)
    with psycopg.connect(store_url) as conn:
        result = ReadingWriter(conn).write(batch)
        stored = conn.execute(
            "SELECT device_id, metric, at, value, measured_at, received_at, seq, msg_id,"
            " clock_offset_s, clock_corrected, reported_unit FROM readings"
        ).fetchall()
    assert result.inserted == 300 and result.duplicates == [] and result.conflicts == []
    by_key = {(r[0], r[1], r[2]): r for r in stored}
    assert len(by_key) == 300
    for row in batch:
        got = by_key[row.key]
        assert got[3] == row.value  # double precision round-trips exactly
        assert got[4] == row.measured_at and got[5] == row.received_at
        assert (got[6], got[7], got[9], got[10]) == (row.seq, row.msg_id, row.clock_corrected, None)
        assert got[8] == pytest.approx(row.clock_offset_s, rel=1e-6)  # stored as real


def test_duplicates_collapse_to_one_row_and_are_counted(store_url):
    batch = [reading(seq=i, at=T0 + timedelta(minutes=i), value=100 + i) for i in range(20)]
    with psycopg.connect(store_url) as conn:
        writer = ReadingWriter(conn)
        first = writer.write(batch)
        redelivered = writer.write(
            batch[:5] + batch[:5] + [reading(seq=99, at=T0 - timedelta(days=40))]
        )
        rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        dups = conn.execute("SELECT count(*) FROM duplicate_readings").fetchone()[0]
    assert first.inserted == 20
    assert redelivered.inserted == 1
    assert redelivered.duplicates == list(range(10))
    assert rows == 21 and dups == 10


def test_batches_sharing_a_transaction_each_see_only_their_own_readings(store_url):
    """A batch never takes (or classifies against) a previous batch's readings: the commit
    empties the session's staging table (ON COMMIT DELETE ROWS) and gives its pages back, and
    a batch that shares its transaction with an earlier one deletes the earlier rows first,
    even when the batch was prepared inside the transaction."""
    first = [reading(seq=i, at=T0 + timedelta(minutes=i), value=100 + i) for i in range(3)]
    second = [reading(seq=9, at=T0 + timedelta(hours=1)), first[0]]
    with psycopg.connect(store_url) as conn:
        writer = ReadingWriter(conn)
        writer.prepare(first + second)
        with conn.transaction():
            one = writer.write_in_transaction(first)
            writer.prepare(second)
            two = writer.write_in_transaction(second)
            in_transaction = conn.execute("SELECT count(*) FROM staging_readings").fetchone()
        # and its pages are given back at commit, not left to dead rows (no autovacuum
        # visits a session's temporary table)
        emptied = conn.execute("SELECT pg_relation_size('staging_readings')").fetchone()
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            writer.write_in_transaction([reading(seq=10, at=T0 + timedelta(hours=2))])
            conn.execute("SELECT 1 / 0")
        staged = conn.execute("SELECT count(*) FROM staging_readings").fetchone()
        rows = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert (one.inserted, one.duplicates) == (3, [])
    assert (two.inserted, two.duplicates, two.conflicts) == (1, [1], [])
    assert in_transaction == (len(second),)
    assert staged == (0,) and rows == (4,) and emptied == (0,)


def test_same_key_twice_in_one_batch_is_one_reading_and_one_duplicate(store_url):
    with psycopg.connect(store_url) as conn:
        result = ReadingWriter(conn).write([reading(msg="a"), reading(msg="b")])
        stored = conn.execute("SELECT msg_id FROM readings").fetchall()
    assert result.inserted == 1 and result.duplicates == [1]
    assert stored == [("a",)]  # the first arrival stays


def test_a_conflicting_duplicate_keeps_the_first_value(store_url):
    with psycopg.connect(store_url) as conn:
        writer = ReadingWriter(conn)
        writer.write([reading(value=142, seq=7)])
        result = writer.write([reading(value=150, seq=8), reading(metric="heart_rate", value=70)])
        stored = conn.execute("SELECT value FROM readings WHERE metric = 'bp_systolic'").fetchone()
    assert result.inserted == 1 and result.duplicates == []
    [conflict] = result.conflicts
    assert (conflict.index, conflict.stored_value, conflict.stored_seq) == (0, 142, 7)
    assert stored == (142,)


def test_hourly_rollup_counts_each_reading_once(store_url):
    batch = [reading(seq=i, at=T0 + timedelta(minutes=10 * i), value=float(i)) for i in range(12)]
    with psycopg.connect(store_url) as conn:
        writer = ReadingWriter(conn)
        writer.write(batch[:8])
        writer.write(batch)  # 8 duplicates and 4 new readings
        rollup = conn.execute(
            "SELECT bucket, readings, value_sum, value_min, value_max FROM readings_hourly"
            " ORDER BY bucket"
        ).fetchall()
    assert [(b.astimezone(UTC).hour, n, s, lo, hi) for b, n, s, lo, hi in rollup] == [
        (8, 6, 15.0, 0.0, 5.0),
        (9, 6, 51.0, 6.0, 11.0),
    ]


def test_readings_before_their_enrolment_are_attributed_when_it_arrives(store_url):
    # 23:30 UTC on 9 March is 00:30 on 10 March in Rome: inside an enrolment from 10 March.
    early = reading(at=datetime(2026, 3, 9, 23, 30, tzinfo=UTC), seq=1)
    before = reading(at=datetime(2026, 3, 9, 22, 30, tzinfo=UTC), seq=2)  # 23:30 Rome, 9 March
    with psycopg.connect(store_url) as conn:
        register_device(conn)
        writer = ReadingWriter(conn)
        writer.write([early, before])
        assert (
            conn.execute("SELECT count(*) FROM readings WHERE patient_id IS NULL").fetchone()[0]
            == 2
        )
        patient, enrolment = enrol(conn, "cuff-0001", date(2026, 3, 10), date(2026, 3, 31))
        assert [r.patient_id for r in attribute_unassigned(conn, enrolment)] == [patient]
        later = reading(at=datetime(2026, 3, 20, 7, 0, tzinfo=UTC), seq=3)
        after_end = reading(at=datetime(2026, 4, 1, 7, 0, tzinfo=UTC), seq=4)
        writer.write([later, after_end])
        attributed = dict(conn.execute("SELECT seq, patient_id FROM readings").fetchall())
    assert attributed == {1: patient, 2: None, 3: patient, 4: None}


def test_a_device_serves_one_patient_at_a_time(store_url):
    with psycopg.connect(store_url) as conn:
        register_device(conn)
        enrol(conn, "cuff-0001", date(2026, 3, 1), date(2026, 3, 31))
        enrol(conn, "cuff-0001", date(2026, 4, 1))  # adjacent: fine
        with pytest.raises(psycopg.errors.ExclusionViolation):
            enrol(conn, "cuff-0001", date(2026, 3, 31), date(2026, 4, 2))


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        ("2026-03-09T23:30:00+00:00", "2026-03-10"),  # CET, UTC+1
        ("2026-03-09T22:59:59+00:00", "2026-03-09"),
        ("2026-07-01T22:00:00+00:00", "2026-07-02"),  # CEST, UTC+2
        ("2026-07-01T21:59:59+00:00", "2026-07-01"),
        ("2026-03-29T01:30:00+01:00", "2026-03-29"),  # the spring-forward night
    ],
)
def test_pilot_day_is_the_europe_rome_date(store_url, moment, day):
    with psycopg.connect(store_url) as conn:
        got = conn.execute("SELECT ehl_pilot_day(%s::timestamptz)", (moment,)).fetchone()[0]
    assert got.isoformat() == day


def test_rejections_are_kept_with_payload_and_reason(store_url):
    received = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    huge = b"{" * 200_000
    rows = [
        RejectedRow(received, "cuff-0001", "payload_too_large", "200000 bytes > 65536", huge),
        RejectedRow(
            received + timedelta(seconds=1),
            "cuff-0001",
            "out_of_range",
            "heart_rate 900 /min outside 20-300",
            b'{"seq": 5}',
            msg_id="m-2",
            item_index=2,
            seq=5,
            metric="heart_rate",
            at=T0,
            measured_at=T0,
        ),
    ]
    with psycopg.connect(store_url) as conn:
        write_rejections(conn, rows)
        latest = recent_rejections(conn, "cuff-0001")
        other = recent_rejections(conn, "other-device")
    assert latest == list(reversed(rows))
    assert other == []


def test_timescale_policies_go_by_chunk_creation_not_by_device_clocks(store_url, request):
    if request.node.callspec.params["store_url"] != "timescale":
        pytest.skip("compression and retention policies exist only in the TimescaleDB form")
    with psycopg.connect(store_url) as conn:
        configs = dict(
            conn.execute(
                "SELECT proc_name, config::text FROM timescaledb_information.jobs"
                " WHERE hypertable_name = 'readings'"
            ).fetchall()
        )
    assert "compress_created_before" in configs["policy_compression"]
    assert "drop_created_before" in configs["policy_retention"]
