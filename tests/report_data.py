"""A pilot-sized Dataset made by hand with a seeded random generator, for the report's tests
and for looking at the report: patients in municipalities of every SNAI class, several weeks,
broadband that gets worse towards the ultra-peripheral classes, alerts and their answers,
SUS responses and mini-pilots. Pure numpy; no store."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from ehealthlab.evaluation.dataset import (
    Alerts,
    Dataset,
    DayCounts,
    Enrolments,
    MiniPilotScope,
    Municipality,
    Period,
    Readings,
    SusResponses,
)
from ehealthlab.evaluation.snai_reference import reference_municipalities

METRICS = ("bp_systolic", "body_weight", "spo2")
#: (ISTAT code, patients): Torino and Chieri (A), Collegno (B), Agliè and Airasca (C),
#: Angrogna (D), Ala di Stura (E), Balme (F, 3 patients: below the publication threshold)
PLACES = (("001272", 8), ("001078", 5), ("001090", 5), ("001001", 5), ("001002", 5),
          ("001011", 6), ("001003", 6), ("001019", 3))  # fmt: skip
DEVICES = (("blood_pressure_monitor", (2, 0, 0)), ("weighing_scale", (0, 1, 0)),
           ("pulse_oximeter", (0, 0, 1)))  # fmt: skip
#: per SNAI class: chance a reading is lost, median latency (s), chance it arrives late
NETWORK = {"A": (0.002, 4, 0.0), "B": (0.004, 6, 0.0), "C": (0.008, 10, 0.002),
           "D": (0.02, 140, 0.02), "E": (0.04, 270, 0.05), "F": (0.08, 1300, 0.12)}  # fmt: skip


def pilot_dataset(
    *, seed: int = 7, weeks: int = 6, population: str = "real", places=PLACES
) -> Dataset:
    rng = np.random.default_rng(seed)
    start = date(2026, 3, 2)
    days = weeks * 7
    municipalities = tuple(
        Municipality(m.istat_code, m.name, m.population, m.snai_class)
        for m in reference_municipalities()
    )
    index = {m.istat_code: i for i, m in enumerate(municipalities)}
    place_of = [code for code, n in places for _ in range(n)]
    n = len(place_of)
    kinds = rng.integers(0, len(DEVICES), n)
    first = np.where(rng.random(n) < 0.7, 0, rng.integers(1, days // 2, n))
    last = np.where(rng.random(n) < 0.85, days - 1, rng.integers(days // 2, days - 1, n))
    plan = np.array([DEVICES[k][1] for k in kinds], dtype=np.int64)
    readings: dict[str, list] = {k: [] for k in ("enrolment", "metric", "day", "latency_s", "cc")}
    counts: dict[str, list] = {k: [] for k in ("e", "day", "lo", "hi", "n", "dup", "rej")}
    alerts: dict[str, list] = {"e": [], "day": [], "h": []}
    for e in range(n):
        snai = municipalities[index[place_of[e]]].snai_class
        lost_p, median_s, late_p = NETWORK[snai]
        willing = rng.beta(8, 2) - (0.08 if snai in "DEF" else 0.0)
        fading = rng.uniform(0.0, 0.25)  # some patients measure less as weeks go by
        seq = 0
        for day in range(int(first[e]), int(last[e]) + 1):
            progress = (day - first[e]) / max(days, 1)
            arrived: list[int] = []
            for metric in np.flatnonzero(plan[e]):
                if rng.random() > willing - fading * progress:
                    continue
                for _ in range(int(plan[e, metric])):
                    seq += 1
                    if rng.random() < lost_p:
                        continue
                    arrived.append(seq)
                    late = rng.random() < late_p
                    latency = rng.uniform(3700, 30000) if late else rng.lognormal(
                        np.log(median_s), 0.8)  # fmt: skip
                    readings["enrolment"].append(e)
                    readings["metric"].append(metric)
                    readings["day"].append(day)
                    readings["latency_s"].append(latency)
                    readings["cc"].append(rng.random() < 0.01)
            if arrived:
                for key, value in (("e", e), ("day", day), ("lo", min(arrived)),
                                   ("hi", max(arrived)), ("n", len(arrived)),
                                   ("dup", int(rng.random() < 0.03)),
                                   ("rej", int(rng.random() < 0.01))):  # fmt: skip
                    counts[key].append(value)
                if rng.random() < 0.05:
                    alerts["e"].append(e)
                    alerts["day"].append(day)
                    answered = rng.random() < 0.85
                    alerts["h"].append(rng.lognormal(np.log(5), 1.0) if answered else np.nan)
    sus_patients = rng.choice(n, size=min(n, 12), replace=False)
    return Dataset(
        period=Period(start, start + timedelta(days=days)),
        population=population,
        metrics=METRICS,
        municipalities=municipalities,
        device_startup=tuple(("s-cuff", "s-scale", "s-oxi")[k] for k in kinds),
        device_type=tuple(DEVICES[k][0] for k in kinds),
        patients=n,
        enrolments=Enrolments(
            patient=np.arange(n),
            device=np.arange(n),
            municipality=np.array([index[c] for c in place_of]),
            first_day=first.astype(np.int64),
            last_day=last.astype(np.int64),
            start_date=tuple(start + timedelta(days=int(f)) for f in first),
            plan=plan,
        ),
        readings=Readings(
            enrolment=np.array(readings["enrolment"], dtype=np.int64),
            metric=np.array(readings["metric"], dtype=np.int64),
            day=np.array(readings["day"], dtype=np.int64),
            latency_s=np.array(readings["latency_s"], dtype=np.float64),
            clock_corrected=np.array(readings["cc"], dtype=np.bool_),
        ),
        day_counts=DayCounts(
            *(
                np.array(counts[k], dtype=np.int64)
                for k in ("e", "day", "lo", "hi", "n", "dup", "rej")
            )
        ),
        alerts=Alerts(
            np.array(alerts["e"], dtype=np.int64),
            np.array(alerts["day"], dtype=np.int64),
            np.array(alerts["h"], dtype=np.float64),
        ),
        sus=SusResponses(
            patient=sus_patients.astype(np.int64),
            municipality=np.array([index[place_of[p]] for p in sus_patients]),
            day=rng.integers(0, days, sus_patients.size),
            score=rng.normal(72, 12, sus_patients.size).clip(0, 100).round(1) // 2.5 * 2.5,
        ),
        mini_pilots=(
            MiniPilotScope(
                "mp-valleys",
                "Cuffs in the valleys",
                frozenset({"s-cuff"}),
                frozenset({"001011", "001003", "001019"}),
                0,
                days - 1,
            ),
            MiniPilotScope(
                "mp-plain",
                "Scales in the plain",
                frozenset({"s-scale"}),
                frozenset({"001272", "001078", "001090", "001001", "001002"}),
                7,
                days - 1,
            ),
        ),
        startup_names={"s-cuff": "CuffCo", "s-scale": "ScaleCo", "s-oxi": "OxiCo"},
        unparsable_messages={"s-cuff": 3},
    )
