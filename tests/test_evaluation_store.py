"""The evaluation read from a real store, on both physical forms: the hand-worked dataset of
test_evaluation_compute written as rows gives the same numbers; pilot days follow Europe/Rome
across daylight-saving changes; populations never mix; one snapshot while ingest writes."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.evaluation.compute import evaluate
from ehealthlab.evaluation.dataset import Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.mini_pilots import create_mini_pilot
from ehealthlab.evaluation.registry import Mean
from tests.test_evaluation_compute import worked_dataset

PERIOD = Period(date(2026, 3, 1), date(2026, 3, 5))


def noon(day: int, period: Period = PERIOD) -> datetime:
    """Local noon of the period's day `day`, in UTC."""
    local = datetime.combine(period.start + timedelta(days=day), time(12), tzinfo=PILOT_ZONE)
    return local.astimezone(UTC)


class Rows:
    """Writes registry and store rows the way the platform's tables hold them."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def organisation(self, kind: str, name: str, *, simulated: bool = False) -> uuid.UUID:
        return self.conn.execute(
            "INSERT INTO organisations (kind, name, simulated) VALUES (%s, %s, %s) RETURNING id",
            (kind, name, simulated),
        ).fetchone()[0]

    def device(self, device_id: str, startup: uuid.UUID, kind: str, *, simulated=False) -> str:
        self.conn.execute(
            "INSERT INTO devices (device_id, organisation_id, device_type, model, serial,"
            " simulated) VALUES (%s, %s, %s, 'M', %s, %s)",
            (device_id, startup, kind, device_id, simulated),
        )
        return device_id

    def enrol(self, provider, device, municipality, start, *, end=None, plan=None) -> uuid.UUID:
        patient = self.conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, %s, 'P') RETURNING id",
            (provider, uuid.uuid4().bytes),
        ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, end_date,"
            " care_plan) VALUES (%s, %s, %s, %s, %s, %s)",
            (patient, device, municipality, start, end, Jsonb(plan or {})),
        )
        return patient

    def reading(self, device, metric, measured_at, seq, *, latency_s=1.0, corrected=False):
        self.conn.execute(
            "SELECT ehl_ensure_reading_partitions(ARRAY[%s::timestamptz])", (measured_at,)
        )
        self.conn.execute(
            "INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq,"
            " msg_id, clock_offset_s, clock_corrected) VALUES (%s, %s, %s, 120, %s, %s, %s,"
            " %s, 0, %s)",
            (device, metric, measured_at, measured_at,
             measured_at + timedelta(seconds=latency_s), seq, f"m{seq}", corrected),
        )  # fmt: skip

    def duplicate(self, device, metric, measured_at, seq):
        self.conn.execute(
            "INSERT INTO duplicate_readings (received_at, device_id, metric, at, measured_at,"
            " seq, msg_id) VALUES (%s, %s, %s, %s, %s, %s, 'again')",
            (measured_at + timedelta(hours=1), device, metric, measured_at, measured_at, seq),
        )

    def reject(self, device, *, measured_at=None, seq=None, item=0, reason="out_of_range"):
        self.conn.execute(
            "INSERT INTO rejected_readings (received_at, device_id, item_index, seq, metric, at,"
            " measured_at, reason, detail, payload, payload_bytes)"
            " VALUES (%s, %s, %s, %s, 'bp_systolic', %s, %s, %s, 'test', '\\x00', 1)",
            (measured_at or noon(0), device, item, seq, measured_at, measured_at, reason),
        )

    def sus(self, day: int, items: list[int], municipality: str, patient=None, *, simulated=False):
        self.conn.execute(
            "INSERT INTO sus_responses (answered_on, respondent, patient_id, municipality, items,"
            " score, simulated, source) VALUES (%s, 'patient', %s, %s, %s, %s, %s, 'csv')",
            (PERIOD.start + timedelta(days=day), patient, municipality, items,
             2.5 * (sum(items[0::2]) - 5 + 25 - sum(items[1::2])), simulated),
        )  # fmt: skip

    def alert(self, patient, device, day: int, ack_hours: float | None):
        raised = noon(day) + timedelta(minutes=5)
        self.conn.execute(
            "INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value, measured_at,"
            " raised_at, acknowledged_at) VALUES (%s, %s, %s, %s, 'bp_systolic', %s, 190, %s,"
            " %s, %s)",
            (patient, f"rule-{day}", PERIOD.start + timedelta(days=day), device, noon(day),
             noon(day), raised, raised + timedelta(hours=ack_hours) if ack_hours else None),
        )  # fmt: skip


def write_worked_dataset(rows: Rows) -> dict[str, object]:
    """The rows of `worked_dataset()` (see its docstring), plus simulated data that must not
    count in the real population."""
    s1, s2 = rows.organisation("startup", "CuffCo"), rows.organisation("startup", "ScaleCo")
    provider = rows.organisation("provider", "ASL TO4")
    cuff = rows.device("cuff-0001", s1, "blood_pressure_monitor")
    scale = rows.device("scale-0001", s2, "weighing_scale")
    p0 = rows.enrol(provider, cuff, "001003", date(2026, 2, 1), plan={"bp_systolic": 2})
    p1 = rows.enrol(provider, scale, "001272", date(2026, 3, 2), plan={"body_weight": 1})
    for day, seq, latency, corrected in ((0, 1, 10, False), (0, 2, 20, False), (1, 3, -5, False),
                                         (3, 6, 4000, False), (3, 7, 30, True)):  # fmt: skip
        at = noon(day) + timedelta(minutes=seq)
        rows.reading(cuff, "bp_systolic", at, seq, latency_s=latency, corrected=corrected)
        if seq == 3:
            rows.duplicate(cuff, "bp_systolic", at, seq)
    rows.reject(cuff, measured_at=noon(3), seq=5)
    rows.reading(scale, "body_weight", noon(1), 10, latency_s=100)
    rows.reading(scale, "body_weight", noon(2), 11, latency_s=200)
    rows.alert(p0, cuff, 1, 2.0)
    rows.alert(p0, cuff, 3, None)
    rows.alert(p1, scale, 2, 30.0)
    for _ in range(2):
        rows.reject(cuff, item=None, reason="invalid_json")
    rows.reject(cuff, item=None, reason="platform_error")  # the platform's fault: not counted
    rows.sus(0, [5, 2, 5, 3, 5, 3, 5, 3, 5, 2], "001003", p0)  # scores 80
    rows.sus(2, [4, 4, 4, 3, 4, 3, 4, 3, 4, 3], "001272")  # 60, a resident without patient
    rows.sus(2, [1, 5, 1, 5, 1, 5, 1, 5, 1, 5], "001272", simulated=True)  # 0, simulated
    rows.sus(5, [3] * 10, "001003")  # 50, answered after the period
    # a simulated provider's patient with a simulated device, in the same municipality
    sim_startup = rows.organisation("startup", "SimCo", simulated=True)
    sim_provider = rows.organisation("provider", "Rehearsal", simulated=True)
    sim = rows.device("sim-0001", sim_startup, "blood_pressure_monitor", simulated=True)
    rows.enrol(sim_provider, sim, "001003", date(2026, 3, 1), plan={"bp_systolic": 1})
    rows.reading(sim, "bp_systolic", noon(0), 1)
    return {"s1": s1, "p0": p0}


@pytest.fixture
def worked_store(store_url):
    with psycopg.connect(store_url, autocommit=True) as conn:
        keys = write_worked_dataset(Rows(conn))
        with conn.transaction():
            create_mini_pilot(conn, name="Cuffs up the valley", startups=[keys["s1"]],
                              municipalities=["001003"], start=date(2026, 3, 2),
                              end=date(2026, 3, 3))  # fmt: skip
    return store_url


def _comparable(values):
    return {k: (v.value if isinstance(v, Mean) else v) for k, v in values.items()
            if k != "reach_per_1000"}  # fmt: skip


@pytest.mark.parametrize("grouping", ["all", "area", "startup", "mini_pilot"])
def test_the_store_gives_the_numbers_worked_out_by_hand(worked_store, grouping):
    with psycopg.connect(worked_store) as conn:
        data = fetch_dataset(conn, PERIOD, "real")
    got = evaluate(data, grouping, seed=1)
    expected = evaluate(worked_dataset(), grouping, seed=1)
    assert _comparable(got.all.values) == _comparable(expected.all.values)
    by_label = {g.label: _comparable(g.values) for g in got.groups.values()}
    assert by_label == {g.label: _comparable(g.values) for g in expected.groups.values()}
    # reach from the reference populations (459 in Ala di Stura, 858,205 in Torino)
    assert got.all.values["reach_per_1000"] == pytest.approx(2 / (459 + 858205) * 1000)


def test_simulated_data_form_their_own_population(worked_store):
    with psycopg.connect(worked_store) as conn:
        simulated = evaluate(fetch_dataset(conn, PERIOD, "simulated"), "all", seed=1).all.values
    assert (simulated["patients_enrolled"], simulated["patient_days"]) == (1, 4)
    assert simulated["unparsable_messages"] == 0
    assert simulated["sus_responses"] == 1  # the simulated answer only
    assert isinstance(simulated["adherence"], Mean) and simulated["adherence"].value == 0.25


@pytest.mark.parametrize(
    ("first_day", "readings", "days"),
    [
        # 2026-03-29 Rome goes from UTC+1 to UTC+2: midnights 23:00 UTC before, 22:00 after
        (date(2026, 3, 28), ("2026-03-28T22:59:59Z", "2026-03-28T23:00:00Z",
                             "2026-03-29T21:59:59Z", "2026-03-29T22:00:00Z"), [0, 1, 1, 2]),
        # 2026-10-25 Rome goes from UTC+2 to UTC+1: midnights 22:00 UTC before, 23:00 after
        (date(2026, 10, 24), ("2026-10-24T21:59:59Z", "2026-10-24T22:00:00Z",
                              "2026-10-25T22:59:59Z", "2026-10-25T23:00:00Z"), [0, 1, 1, 2]),
    ],
    ids=["spring", "autumn"],
)  # fmt: skip
def test_pilot_days_are_days_of_europe_rome_across_the_clock_changes(
    store_url, first_day, readings, days
):
    """Readings a second before and exactly at each local midnight around both changes."""
    period = Period(first_day, first_day + timedelta(days=3))
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = Rows(conn)
        startup, provider = rows.organisation("startup", "S"), rows.organisation("provider", "P")
        cuff = rows.device("cuff-dst", startup, "blood_pressure_monitor")
        rows.enrol(provider, cuff, "001003", period.start, plan={"bp_systolic": 1})
        for seq, at in enumerate(readings, 1):
            rows.reading(cuff, "bp_systolic", datetime.fromisoformat(at), seq)
        data = fetch_dataset(conn, period, "real")
    assert sorted(data.readings.day.tolist()) == days
    values = evaluate(data, "all", seed=1).all.values
    assert values["patient_days"] == 3
    assert isinstance(values["adherence"], Mean) and values["adherence"].value == 1.0


def test_an_evaluation_reads_one_snapshot_while_readings_keep_arriving(store_url):
    """A writer commits, again and again, a new reading together with a duplicate of it
    (one transaction), while evaluations run. Readings and duplicates are read by different
    queries; in one snapshot every reading but the first has its duplicate, never more."""
    period = Period(date(2026, 3, 1), date(2026, 3, 2))
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = Rows(conn)
        startup, provider = rows.organisation("startup", "S"), rows.organisation("provider", "P")
        cuff = rows.device("cuff-live", startup, "blood_pressure_monitor")
        rows.enrol(provider, cuff, "001003", period.start, plan={"bp_systolic": 1})
        rows.reading(cuff, "bp_systolic", noon(0, period), 1)
    stop = threading.Event()

    def keep_writing() -> None:
        with psycopg.connect(store_url, autocommit=True) as conn:
            writer = Rows(conn)
            seq = 1
            while not stop.is_set():
                seq += 1
                at = noon(0, period) + timedelta(seconds=seq)
                with conn.transaction():
                    writer.reading(cuff, "bp_systolic", at, seq)
                    writer.duplicate(cuff, "bp_systolic", at, seq)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        sizes = set()
        with psycopg.connect(store_url) as conn:
            while len(sizes) < 5 and thread.is_alive():  # five evaluations, five stores
                data = fetch_dataset(conn, period, "real")
                accepted = data.readings.day.size
                assert int(data.day_counts.duplicates.sum()) == accepted - 1
                values = evaluate(data, "all", seed=1).all.values
                assert values["loss_rate"] == 0.0
                sizes.add(accepted)
    finally:
        stop.set()
        thread.join()
    assert len(sizes) == 5, "the writer stopped before five evaluations saw it"
