"""The broker's journal (`ehl_journal`) against the same broker without it, in one run.

`bench/ingest.py --journal-rounds N [--only ...]` runs the chosen scenarios N rounds; each
round runs them on the stack's broker with its journal and again after a restart without it
(same port, devices, database server), alternating which comes first, so that both forms
see the machine in the same state. The journal adds one write(2) a reading message to the
broker's only thread, before its PUBACK.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ingest_run import Run
from ingest_scenarios import Options, Outcome, scenarios


@dataclass
class Measured:
    journal: bool
    round: int
    outcome: Outcome


def compare_journal(run: Run, options: Options) -> list[Measured]:
    chosen = [s for s in scenarios(options) if not options.only or s.key in options.only]
    measured: list[Measured] = []
    for number in range(1, options.journal_rounds + 1):
        order = (True, False) if number % 2 else (False, True)
        for journal in order:
            run.stack.restart_broker(journal=journal)
            for scenario in chosen:
                form = "with its journal" if journal else "without"
                print(f"- round {number}, broker {form}: {scenario.title} at "
                      f"{scenario.rate:,.0f} msg/s offered ...", flush=True)  # fmt: skip
                outcome = run.run(scenario)
                print(f"  {outcome.committed_readings_s:,.0f} readings/s", flush=True)
                measured.append(Measured(journal, number, outcome))
    return measured


def _figures(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    listed = "; ".join(f"{v:,.0f}" for v in known)
    return f"{listed} (median {statistics.median(known):,.0f})"


def report_journal(measured: list[Measured]) -> list[str]:
    if not measured:
        return []
    lines = [
        "| scenario | figure | broker with its journal | broker without (baseline) |",
        "|---|---|---|---|",
    ]
    titles = dict.fromkeys(m.outcome.scenario.title for m in measured)
    for title in titles:
        rows = {
            "committed readings/s": lambda o: o.committed_readings_s,
            "p99 ms": lambda o: o.p99_ms,
            "Mosquitto's CPU %": lambda o: o.cpu.get("mosquitto"),
        }
        for name, read in rows.items():
            cells = []
            for journal in (True, False):
                mine = [m for m in measured if m.outcome.scenario.title == title]
                values = [read(m.outcome) for m in mine if m.journal is journal]
                cells.append(_figures(values))
            if cells != ["-", "-"]:
                lines.append(f"| {title} | {name} | {cells[0]} | {cells[1]} |")
    return lines
