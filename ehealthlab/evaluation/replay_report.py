"""The alert-threshold replay's result for people (a text table) and machines (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping

from ehealthlab.evaluation.replay import Counts, ReplayResult, SettingResult

FORMATS = ("text", "json", "csv")
TOTAL = "all current rules"


def render(result: ReplayResult, fmt: str, *, current_rules: str) -> str:
    if fmt == "json":
        return json.dumps(as_json(result, current_rules=current_rules), indent=2) + "\n"
    if fmt == "csv":
        return as_csv(result)
    return as_text(result, current_rules=current_rules)


def _counts(counts: Counts) -> dict[str, object]:
    return {
        "patients": counts.patients,
        "patient_days": counts.patient_days,
        "alerts": counts.alerts,
        "alerts_per_patient_week": counts.alerts_per_patient_week,
        "alerts_per_100_patient_weeks": counts.alerts_per_100_patient_weeks,
        "patients_flagged": counts.patients_flagged,
    }


def as_json(result: ReplayResult, *, current_rules: str) -> dict[str, object]:
    settings: list[dict[str, object]] = []
    for r in result.results:
        entry: dict[str, object] = {
            "rule": r.setting.rule_id,
            **r.setting.parameters(),
            "setting": r.setting.label,
            "current": r.setting.current,
            **_counts(r.all),
        }
        if r.agreement is not None:
            entry |= {
                "stored_alerts": r.agreement.stored,
                "stored_not_replayed": r.agreement.stored_not_replayed,
                "replayed_not_stored": r.agreement.replayed_not_stored,
                "agrees": r.agreement.agrees,
            }
        if result.by is not None:
            entry["groups"] = {g: _counts(c) for g, c in r.groups.items()}
        settings.append(entry)
    total: dict[str, object] = {
        **_counts(result.current_total),
        "stored_alerts": result.current_agreement.stored,
        "stored_not_replayed": result.current_agreement.stored_not_replayed,
        "replayed_not_stored": result.current_agreement.replayed_not_stored,
        "agrees": result.current_agreement.agrees,
    }
    if result.by is not None:
        total["groups"] = {g: _counts(c) for g, c in result.current_total_groups.items()}
    document: dict[str, object] = {
        "period": {"from": result.period.start.isoformat(), "to": result.period.end.isoformat()},
        "population": result.population,
        "by": result.by,
        "current_rules": current_rules,
        "patients": result.everyone.patients,
        "patient_days": result.everyone.patient_days,
        "patient_weeks": result.everyone.patient_weeks,
        "settings": settings,
        "current_total": total,
        "stored_alerts_of_other_rules": result.stored_elsewhere,
        "agrees": result.agrees,
    }
    if result.by is not None:
        document["groups"] = {
            g: {"title": result.group_titles.get(g, g), **_counts(c)}
            for g, c in result.everyone_groups.items()
        }
    return document


_CSV_COLUMNS = (
    "group", "rule", "setting", "current", "metric", "op", "threshold", "gain_kg",
    "window_hours", "patients", "patient_days", "alerts", "alerts_per_patient_week",
    "alerts_per_100_patient_weeks", "patients_flagged", "stored_alerts", "agrees",
)  # fmt: skip


def as_csv(result: ReplayResult) -> str:
    """One row per group (`all` first) and setting, and a row for all current rules."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for group in ("all", *result.groups):
        for r in result.results:
            counts = r.all if group == "all" else r.groups[group]
            row: dict[str, object] = {
                "group": group,
                "rule": r.setting.rule_id,
                "setting": r.setting.label,
                "current": r.setting.current,
                **r.setting.parameters(),
                **_counts(counts),
            }
            if group == "all" and r.agreement is not None:
                row |= {"stored_alerts": r.agreement.stored, "agrees": r.agreement.agrees}
            writer.writerow(row)
        counts = result.current_total if group == "all" else result.current_total_groups[group]
        total: dict[str, object] = {"group": group, "rule": TOTAL, "current": True}
        total |= _counts(counts)
        if group == "all":
            total |= {
                "stored_alerts": result.current_agreement.stored,
                "agrees": result.current_agreement.agrees,
            }
        writer.writerow(total)
    return out.getvalue()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(rows: list[tuple[str, str, Counts, str]], *, stored_column: bool) -> list[str]:
    header: tuple[str, ...] = (
        "rule", "setting", "alerts", "per 100 patient-weeks", "patients flagged"
    )  # fmt: skip
    if stored_column:
        header += ("stored by ingest",)
    cells: list[tuple[str, ...]] = [header]
    previous = None
    for rule, setting, counts, stored in rows:
        line: tuple[str, ...] = (
            rule if rule != previous else "",
            setting,
            str(counts.alerts),
            _rate(counts.alerts_per_100_patient_weeks),
            str(counts.patients_flagged),
        )
        cells.append(line + ((stored,) if stored_column else ()))
        previous = rule
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = {2, 3, 4}
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in cells
    ]


def _stored(r: SettingResult) -> str:
    if r.agreement is None:
        return ""
    a = r.agreement
    if a.agrees:
        return f"{a.stored} (agrees)"
    return (
        f"{a.stored} (DIFFERS: {a.stored_not_replayed} not replayed, "
        f"{a.replayed_not_stored} not stored)"
    )


def as_text(result: ReplayResult, *, current_rules: str) -> str:
    period = result.period
    everyone = result.everyone
    lines = [
        f"Alert-threshold replay, {period.start} to {period.end} (excluded): "
        f"{period.days} days, {result.population} population",
        f"Current rules: {current_rules}",
        f"Patients with an enrolled day: {everyone.patients}; "
        f"patient-weeks: {everyone.patient_weeks:.1f}",
        "",
    ]
    rows = [
        (r.setting.rule_id, r.setting.label + (" (current)" if r.setting.current else ""),
         r.all, _stored(r))
        for r in result.results
    ]  # fmt: skip
    agreement = result.current_agreement
    total_stored = f"{agreement.stored} (agrees)" if agreement.agrees else f"{agreement.stored}"
    rows.append((TOTAL, "", result.current_total, total_stored))
    lines += _table(rows, stored_column=True)
    lines.append("")
    lines.append(_verdict(result))
    for group in result.groups:
        counts = result.everyone_groups[group]
        lines += [
            "",
            f"{result.by} {result.group_titles.get(group, group)}: {counts.patients} "
            f"patient{'' if counts.patients == 1 else 's'}, "
            f"{counts.patient_weeks:.1f} patient-weeks",
        ]
        group_rows = [
            (r.setting.rule_id, r.setting.label + (" (current)" if r.setting.current else ""),
             r.groups[group], "")
            for r in result.results
        ]  # fmt: skip
        group_rows.append((TOTAL, "", result.current_total_groups[group], ""))
        lines += _table(group_rows, stored_column=False)
    return "\n".join(lines) + "\n"


def _verdict(result: ReplayResult) -> str:
    agreement = result.current_agreement
    if agreement.agrees:
        return (
            f"The replay of the current rules reproduces the {agreement.stored} alerts "
            "ingest stored for the period."
        )
    parts = [
        f"{r.setting.rule_id}: {r.agreement.stored_not_replayed} stored not replayed, "
        f"{r.agreement.replayed_not_stored} replayed not stored"
        for r in result.results
        if r.agreement is not None and not r.agreement.agrees
    ]
    parts += [f"{rule}: {n} stored, not a current rule" for rule, n in _items(result)]
    return (
        "WARNING: the replay of the current rules does not reproduce the alerts ingest stored ("
        + "; ".join(parts)
        + "). Were other rules in force during the period (see --current-rules)?"
    )


def _items(result: ReplayResult) -> list[tuple[str, int]]:
    elsewhere: Mapping[str, int] = result.stored_elsewhere
    return sorted(elsewhere.items())
