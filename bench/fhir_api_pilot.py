"""The pilot of bench/fhir_api.py's stores (patients, devices, enrolments: the same on
every run) and its readings, day by day, as binary COPY data."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

#: bump when the generated data change, so --reuse does not take an older store
DATA_VERSION = 1


# -- the pilot ----------------------------------------------------------------------------------

START = datetime(2025, 11, 1, tzinfo=UTC)
PATIENTS = 2_000
PROVIDERS = 4
STARTUPS = 3
OXIMETER_WEARERS = 1_200
SCALE_USERS = 1_000
UNASSIGNED_THERMOMETERS = 40
#: every LATE-th patient was enrolled LATE_DAYS after the start: earlier readings unassigned
LATE, LATE_DAYS = 25, 60
#: every DRIFTING-th cuff's clock runs an hour behind: its readings are clock-corrected
DRIFTING = 50
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MINUTE_US = 60_000_000
_DAY_US = 24 * 60 * _MINUTE_US


@dataclass(frozen=True)
class Group:
    """Devices of one type measuring at the same nominal minutes of every day."""

    device_type: str
    prefix: str
    #: (metric, mean, standard deviation, decimals) of each reading of one measurement
    metrics: tuple[tuple[str, float, float, int], ...]
    minutes: tuple[int, ...]
    #: each device measures this many seconds after the nominal minute, at most
    jitter_s: int


CUFF = Group(
    "blood_pressure_monitor",
    "bpm",
    (("bp_systolic", 132, 14, 0), ("bp_diastolic", 82, 9, 0), ("heart_rate", 72, 9, 0)),
    (7 * 60 + 30, 12 * 60 + 30, 18 * 60 + 30, 22 * 60 + 30),
    1_200,
)
OXIMETER = Group(
    "pulse_oximeter",
    "oxi",
    (("spo2", 96.5, 1.3, 0), ("heart_rate", 74, 10, 0)),
    tuple(range(0, 24 * 60, 30)),
    1_500,
)
SCALE = Group("weighing_scale", "scale", (("body_weight", 78, 0.4, 1),), (7 * 60,), 1_800)
THERMOMETER = Group(
    "thermometer", "temp", (("body_temperature", 36.6, 0.3, 1),), (8 * 60, 20 * 60), 1_800
)


@dataclass
class Devices:
    """One group's devices: ids, owners' patients (index into the patients, -1: nobody)."""

    group: Group
    ids: list[str]
    patients: np.ndarray
    drifting: np.ndarray
    enrolled_from_day: np.ndarray


@dataclass
class Pilot:
    patient_ids: list[uuid.UUID]
    devices: list[Devices]


def make_pilot() -> Pilot:
    """The pilot's patients and devices: the same on every run."""
    rng = np.random.default_rng(20261125)
    patient_ids = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(PATIENTS)]
    late = np.array([LATE_DAYS if p % LATE == LATE - 1 else 0 for p in range(PATIENTS)])

    def devices(group: Group, owners: np.ndarray, start: int) -> Devices:
        count = len(owners)
        drifting = np.zeros(count, dtype=bool)
        if group is CUFF:
            drifting = np.arange(count) % DRIFTING == DRIFTING - 1
        enrolled = np.where(owners >= 0, late[np.maximum(owners, 0)], 10**6)
        return Devices(
            group,
            [f"{group.prefix}-{start + i:016x}" for i in range(count)],
            owners,
            drifting,
            enrolled,
        )

    everyone = np.arange(PATIENTS)
    return Pilot(
        patient_ids,
        [
            devices(CUFF, everyone, 0),
            devices(OXIMETER, rng.permutation(PATIENTS)[:OXIMETER_WEARERS], 10_000),
            devices(SCALE, rng.permutation(PATIENTS)[:SCALE_USERS], 20_000),
            devices(THERMOMETER, np.full(UNASSIGNED_THERMOMETERS, -1), 30_000),
        ],
    )


def readings_per_day(pilot: Pilot) -> int:
    return sum(len(d.ids) * len(d.group.minutes) * len(d.group.metrics) for d in pilot.devices)


# -- binary COPY ------------------------------------------------------------------------------

COPY_COLUMNS = (
    "device_id, metric, at, value, measured_at, received_at, seq, msg_id, clock_offset_s,"
    " clock_corrected, reported_unit, patient_id"
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _row_dtype(device_length: int, metric_length: int, attributed: bool) -> np.dtype[Any]:
    """One row of COPY's binary format: a field count, then each field's length and bytes
    (big-endian), with NULL as length -1."""
    fields: list[tuple[str, str]] = [
        ("fields", ">i2"),
        ("l_device", ">i4"),
        ("device", f"S{device_length}"),
        ("l_metric", ">i4"),
        ("metric", f"S{metric_length}"),
        ("l_at", ">i4"),
        ("at", ">i8"),
        ("l_value", ">i4"),
        ("value", ">f8"),
        ("l_measured", ">i4"),
        ("measured", ">i8"),
        ("l_received", ">i4"),
        ("received", ">i8"),
        ("l_seq", ">i4"),
        ("seq", ">i8"),
        ("l_msg", ">i4"),
        ("msg", "S36"),
        ("l_offset", ">i4"),
        ("offset", ">f4"),
        ("l_corrected", ">i4"),
        ("corrected", "u1"),
        ("l_unit", ">i4"),
        ("l_patient", ">i4"),
    ]
    if attributed:
        fields.append(("patient", "S16"))
    return np.dtype(fields)


def _uuid_text(raw: np.ndarray) -> np.ndarray:
    """(n, 16) random bytes as (n,) 36-character UUID texts (msg_id)."""
    digits = np.empty((len(raw), 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 15]
    text = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    for start, stop, target in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, target : target + stop - start] = digits[:, start:stop]
    return text.view("S36").ravel()


class DayWriter:
    """Binary COPY data of one day of the pilot, in time order (hour by hour)."""

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot
        self.patients = np.frombuffer(b"".join(p.bytes for p in pilot.patient_ids), "S16")
        rng = np.random.default_rng(7)
        self.jitter = [rng.integers(0, d.group.jitter_s, len(d.ids)) for d in pilot.devices]
        self.base = [
            [rng.normal(mean, sd, len(d.ids)) for _, mean, sd, _ in d.group.metrics]
            for d in pilot.devices
        ]
        self.ids = [np.array([i.encode() for i in d.ids]) for d in pilot.devices]

    def day(self, day: int) -> tuple[bytes, int]:
        """The COPY data of day `day` (0 = START) and its number of rows."""
        rng = np.random.default_rng(1_000_003 * DATA_VERSION + day)
        day_us = int((START - _PG_EPOCH).total_seconds()) * 1_000_000 + day * _DAY_US
        chunks: list[bytes] = [_COPY_HEADER]
        rows = 0
        for hour in range(24):
            for g, devices in enumerate(self.pilot.devices):
                group = devices.group
                for k, minute in enumerate(group.minutes):
                    if minute // 60 != hour:
                        continue
                    data, count = self._measurement(
                        rng, g, devices, day=day, day_us=day_us, k=k, minute=minute
                    )
                    chunks.extend(data)
                    rows += count
        chunks.append(_COPY_TRAILER)
        return b"".join(chunks), rows

    def _measurement(
        self,
        rng: np.random.Generator,
        g: int,
        devices: Devices,
        *,
        day: int,
        day_us: int,
        k: int,
        minute: int,
    ) -> tuple[list[bytes], int]:
        """Every device of the group measuring once (one message each) at `minute`."""
        group = devices.group
        count = len(devices.ids)
        true_time = (
            day_us
            + minute * _MINUTE_US
            + self.jitter[g] * 1_000_000
            + rng.integers(0, 120_000_000, count)
        )
        at = np.where(devices.drifting, true_time - 3_600_000_000, true_time)
        received = true_time + rng.integers(2_000_000, 40_000_000, count)
        offset = np.where(devices.drifting, 3600.0, rng.uniform(0.2, 2.0, count))
        msg = _uuid_text(rng.integers(0, 256, (count, 16), dtype=np.uint8))
        seq = day * len(group.minutes) + k
        attributed = (devices.patients >= 0) & (devices.enrolled_from_day <= day)
        out: list[bytes] = []
        for m, (metric, _, sd, decimals) in enumerate(group.metrics):
            values = np.round(self.base[g][m] + rng.normal(0, sd / 3, count), decimals)
            for with_patient in (True, False):
                chosen = attributed if with_patient else ~attributed
                n = int(chosen.sum())
                if n == 0:
                    continue
                ids = self.ids[g][chosen]
                row = np.zeros(n, dtype=_row_dtype(ids.dtype.itemsize, len(metric), with_patient))
                row["fields"] = 12
                row["l_device"], row["device"] = ids.dtype.itemsize, ids
                row["l_metric"], row["metric"] = len(metric), metric.encode()
                row["l_at"], row["at"] = 8, at[chosen]
                row["l_value"], row["value"] = 8, values[chosen]
                row["l_measured"], row["measured"] = 8, true_time[chosen]
                row["l_received"], row["received"] = 8, received[chosen]
                row["l_seq"], row["seq"] = 8, seq
                row["l_msg"], row["msg"] = 36, msg[chosen]
                row["l_offset"], row["offset"] = 4, offset[chosen]
                row["l_corrected"], row["corrected"] = 1, devices.drifting[chosen]
                row["l_unit"] = -1
                if with_patient:
                    row["l_patient"] = 16
                    row["patient"] = self.patients[devices.patients[chosen]]
                else:
                    row["l_patient"] = -1
                out.append(row.tobytes())
        return out, count * len(group.metrics)


def _copy_days(url: str, days: list[int]) -> int:
    """Load these days (a worker process of its own)."""
    writer = DayWriter(make_pilot())
    written = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for day in days:
            data, rows = writer.day(day)
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY readings ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT binary)") as copy,
            ):
                copy.write(data)
            written += rows
    return written
