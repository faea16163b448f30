"""The provider dashboard (issue 11, item 1): what a nurse or doctor of a health provider
watches. Which patients need attention (open alerts first), one patient's vitals against the
alert thresholds, who measures as the care plan asks, and which devices have gone quiet.

The SQL never names the provider: the data source logs in as the provider's own role, whose
`provider_dashboard` views hold only its patients (migration 0019). The thresholds drawn are
the ingest's alert rules themselves (`AlertRules`), so the lines move when the rules do.
"""

from __future__ import annotations

from typing import Any

from grafanalib.core import Dashboard, Table, TimeSeries

from ehealthlab.contract import METRICS
from ehealthlab.dashboards.panels import Grid, dashboard, datasource, query_variable, sql
from ehealthlab.dashboards.provenance import provenance_panel
from ehealthlab.dashboards.roles import Kind
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules

KIND: Kind = "provider"
UID = "ehl-provider"
#: rows a patient table shows at most (a provider may have thousands of patients)
TABLE_LIMIT = 200
#: the name of the weight-gain limit series on the vitals panel
WEIGHT_LIMIT_FIELD = "weight_gain_limit"
#: Grafana units for the catalogue's UCUM units (a suffix where Grafana has none)
_UNITS = {"%": "percent", "Cel": "celsius", "kg": "masskg", "mm[Hg]": "suffix: mmHg"}
_UNIT_SUFFIX = {"/min": "suffix: /min", "mg/dL": "suffix: mg/dL", "{steps}": "none"}

#: how far before the range's end the patient and device tables look for the last reading
LAST_READING_WITHIN = "7 days"
_T = "$__timeTo()::timestamptz"
# The pilot's calendar day of the dashboard's ends; "today" is the current pilot day.
_FROM_DAY = "(($__timeFrom())::timestamptz AT TIME ZONE 'Europe/Rome')::date"
_TO_DAY = "(($__timeTo())::timestamptz AT TIME ZONE 'Europe/Rome')::date"
_TODAY = "(now() AT TIME ZONE 'Europe/Rome')::date"
# Presence of an enrolment's device: the devices view shows only today's devices.
_DEVICE_STATUS = f"""CASE WHEN dv.status IS NOT NULL THEN dv.status
            WHEN e.end_date < {_TODAY} THEN 'enrolment ended'
            ELSE 'enrolment not started' END"""


def _fhir_links() -> list[dict[str, Any]]:
    """A patient's FHIR record; the Patient's FHIR id is the patient's id."""
    return [
        {
            "title": "Vitals of this patient",
            "url": "/d/ehl-provider/?var-patient=${__data.fields.patient_id}&${__url_time_range}",
        },
        {"title": "FHIR Patient", "url": "/fhir/Patient/${__data.fields.patient_id}"},
        {
            "title": "FHIR Observations",
            "url": "/fhir/Observation?patient=${__data.fields.patient_id}&_sort=-date",
        },
    ]


def _patient_column_overrides() -> list[dict[str, Any]]:
    """The label carries the links; the id column feeds them but stays hidden."""
    return [
        {
            "matcher": {"id": "byName", "options": "patient"},
            "properties": [{"id": "links", "value": _fhir_links()}],
        },
        {
            "matcher": {"id": "byName", "options": "patient_id"},
            "properties": [{"id": "custom.hidden", "value": True}],
        },
    ]


PATIENT_VARIABLE_SQL = """
SELECT p.id AS __value,
       p.label || coalesce(' · ' || m.name, '') AS __text
FROM patients p
LEFT JOIN (
    SELECT DISTINCT ON (e.patient_id) e.patient_id, e.municipality
    FROM enrolments e
    ORDER BY e.patient_id, e.start_date DESC
) latest ON latest.patient_id = p.id
LEFT JOIN municipalities m ON m.istat_code = latest.municipality
ORDER BY p.label, p.id
"""

# Open alerts are counted whatever the range (an unacknowledged alert stays open); the rest
# are the patients enrolled in the range. Only the listed rows get their lookups: their
# enrolments in one join (hash joins; a lateral lookup per row would rebuild the devices
# view's join each time), their last reading within LAST_READING_WITHIN of the range's end.
PATIENTS_SQL = f"""
WITH open_alerts AS (
    SELECT a.patient_id, count(*) AS open_alerts, min(a.raised_at) AS oldest_open,
           string_agg(DISTINCT a.rule, ', ' ORDER BY a.rule) AS rules
    FROM alerts a
    WHERE a.acknowledged_at IS NULL
    GROUP BY a.patient_id
), listed AS MATERIALIZED (
    SELECT p.id, p.label, coalesce(o.open_alerts, 0) AS open_alerts, o.oldest_open, o.rules
    FROM patients p
    LEFT JOIN open_alerts o ON o.patient_id = p.id
    WHERE o.patient_id IS NOT NULL
       OR EXISTS (SELECT 1 FROM enrolments e
                  WHERE e.patient_id = p.id AND e.start_date <= {_TO_DAY}
                    AND (e.end_date IS NULL OR e.end_date >= {_FROM_DAY}))
    ORDER BY coalesce(o.open_alerts, 0) DESC, p.label, p.id
    LIMIT {TABLE_LIMIT}
), en AS MATERIALIZED (
    SELECT e.patient_id, max(m.name) AS municipality,
           string_agg(e.device_id || ': ' || {_DEVICE_STATUS}, ', ' ORDER BY e.device_id)
               AS devices
    FROM listed l
    JOIN enrolments e ON e.patient_id = l.id
    JOIN municipalities m ON m.istat_code = e.municipality
    LEFT JOIN devices dv ON dv.enrolment_id = e.id
    WHERE e.start_date <= {_TO_DAY} AND (e.end_date IS NULL OR e.end_date >= {_FROM_DAY})
    GROUP BY e.patient_id
)
SELECT l.id AS patient_id, l.label AS patient, en.municipality, l.open_alerts,
       l.rules AS open_alert_rules, l.oldest_open AS oldest_open_alert,
       lr.measured_at AS last_reading, en.devices AS device_status
FROM listed l
LEFT JOIN en ON en.patient_id = l.id
LEFT JOIN LATERAL (
    SELECT max(r.measured_at) AS measured_at FROM readings r
    WHERE r.patient_id = l.id
      AND r.measured_at <= {_T} AND r.measured_at > {_T} - interval '{LAST_READING_WITHIN}'
      AND r.at > {_T} - interval '{LAST_READING_WITHIN}' - interval '7 days'
      AND r.at <= {_T} + interval '7 days'
) lr ON true
ORDER BY l.open_alerts DESC, l.label, l.id
"""  # noqa: S608 - the code's constants and Grafana's macros, no input

# The last complete pilot day up to the range's end, and the first of the 30 days to it.
_LAST_ADHERENCE_DAY = (
    "least(((($__timeTo())::timestamptz - interval '1 microsecond') AT TIME ZONE 'Europe/Rome')"
    f"::date, {_TODAY} - 1)"
)
_FIRST_ADHERENCE_DAY = f"({_LAST_ADHERENCE_DAY} - 29)"

# Operational adherence: the last 30 complete pilot days up to the range's end. An enrolled
# day is adherent when every metric of each care plan covering it has a reading; completeness
# caps each metric's readings at the plan. The patients' daily rollup holds each patient-day
# judged against its plans (readings attributed to the patient, by pilot day of measured_at;
# migrations 0022 and 0023); the planned days are counted from the enrolments, never listed.
ADHERENCE_SQL = f"""
WITH enrolled AS (
    SELECT e.patient_id,
           greatest(e.start_date, {_FIRST_ADHERENCE_DAY}) AS first_day,
           least(coalesce(e.end_date, {_LAST_ADHERENCE_DAY}), {_LAST_ADHERENCE_DAY}) AS last_day,
           (SELECT sum(p.value::int) FROM jsonb_each_text(e.care_plan) p) AS per_day
    FROM enrolments e
    WHERE e.start_date <= {_LAST_ADHERENCE_DAY}
      AND (e.end_date IS NULL OR e.end_date >= {_FIRST_ADHERENCE_DAY})
      AND e.care_plan <> '{{}}'::jsonb
), planned AS (
    SELECT en.patient_id,
           sum(en.per_day * (en.last_day - en.first_day + 1)) AS expected,
           -- a day two enrolments cover (two devices) is one enrolled day
           CASE WHEN count(*) = 1 THEN max(en.last_day - en.first_day + 1)
                ELSE (SELECT count(DISTINCT g.day)
                      FROM enrolled o
                      CROSS JOIN LATERAL generate_series(o.first_day, o.last_day,
                                                         interval '1 day') g(day)
                      WHERE o.patient_id = en.patient_id) END AS enrolled_days
    FROM enrolled en
    GROUP BY en.patient_id
), judged AS (
    SELECT t.patient_id, count(*) FILTER (WHERE t.adherent) AS adherent_days,
           sum(t.taken) AS taken
    FROM readings_patient_daily t
    WHERE t.day BETWEEN {_FIRST_ADHERENCE_DAY} AND {_LAST_ADHERENCE_DAY}
    GROUP BY t.patient_id
)
SELECT pl.patient_id, p.label AS patient, pl.enrolled_days,
       coalesce(ju.adherent_days, 0) AS adherent_days,
       round(coalesce(ju.adherent_days, 0)::numeric / pl.enrolled_days, 3) AS adherence,
       coalesce(ju.taken, 0) AS readings_taken, pl.expected AS readings_expected,
       round(coalesce(ju.taken, 0)::numeric / nullif(pl.expected, 0), 3) AS completeness
FROM planned pl
LEFT JOIN judged ju ON ju.patient_id = pl.patient_id
JOIN patients p ON p.id = pl.patient_id
ORDER BY adherence, completeness, p.label
LIMIT {TABLE_LIMIT}
"""  # noqa: S608 - the code's constants and Grafana's macros, no input

LAST_READING_SQL = f"""
WITH enrolled AS MATERIALIZED (
    SELECT e.patient_id, p.label AS patient, e.device_id, m.name AS municipality,
           e.start_date, e.end_date, {_DEVICE_STATUS} AS device_status, dv.last_seen_at
    FROM enrolments e
    JOIN patients p ON p.id = e.patient_id
    JOIN municipalities m ON m.istat_code = e.municipality
    LEFT JOIN devices dv ON dv.enrolment_id = e.id
    WHERE e.start_date <= {_TO_DAY} AND (e.end_date IS NULL OR e.end_date >= {_FROM_DAY})
), newest AS MATERIALIZED (
    -- the device's newest reading when it is the enrolment's patient's and in the week
    SELECT n.device_id, n.patient_id, n.measured_at, n.metric, n.received_at
    FROM device_last_readings n
    WHERE n.measured_at <= {_T} AND n.measured_at > {_T} - interval '{LAST_READING_WITHIN}'
)
SELECT en.patient_id, en.patient, en.device_id, en.municipality, en.start_date, en.end_date,
       en.device_status, en.last_seen_at, lr.measured_at AS last_reading,
       lr.metric AS last_metric, lr.received_at AS last_received
FROM enrolled en
LEFT JOIN newest ON newest.device_id = en.device_id AND newest.patient_id = en.patient_id
LEFT JOIN LATERAL (
    -- not the device's newest reading (a range in the past, a device since moved on): look
    SELECT r.measured_at, r.metric, r.received_at FROM readings r
    WHERE newest.measured_at IS NULL
      AND r.patient_id = en.patient_id AND r.device_id = en.device_id
      AND r.measured_at <= {_T} AND r.measured_at > {_T} - interval '{LAST_READING_WITHIN}'
      AND r.at > {_T} - interval '{LAST_READING_WITHIN}' - interval '7 days'
      AND r.at <= {_T} + interval '7 days'
    ORDER BY r.measured_at DESC
    LIMIT 1
) found ON true
CROSS JOIN LATERAL (
    SELECT coalesce(newest.measured_at, found.measured_at) AS measured_at,
           coalesce(newest.metric, found.metric) AS metric,
           coalesce(newest.received_at, found.received_at) AS received_at
) lr
ORDER BY lr.measured_at NULLS FIRST, en.patient, en.device_id
LIMIT {TABLE_LIMIT}
"""  # noqa: S608 - the code's constants and Grafana's macros, no input


def _vital_sql(metric: str) -> str:
    """Every reading of one metric of the chosen patient (readings_patient_metric_idx)."""
    return f"""
SELECT r.measured_at AS "time", r.value AS {metric}
FROM readings r
WHERE r.patient_id = '$patient' AND r.metric = '{metric}' AND $__timeFilter(r.measured_at)
ORDER BY 1
"""  # noqa: S608 - the code's constants and Grafana's macros, no input


def _weight_limit_sql(rules: AlertRules) -> str:
    """At each weight, the weight that would raise `weight_gain`: the lowest weight of the
    window before it plus the gain (the rule's own window, [measured - window, measured))."""
    rule = rules.weight_gain
    seconds = int(rule.window.total_seconds())
    return f"""
SELECT w.measured_at AS "time", lowest.value + {rule.gain_kg!r} AS {WEIGHT_LIMIT_FIELD}
FROM readings w
CROSS JOIN LATERAL (
    SELECT min(p.value) AS value FROM readings p
    WHERE p.patient_id = w.patient_id AND p.metric = '{rule.metric}'
      AND p.measured_at >= w.measured_at - interval '{seconds} seconds'
      AND p.measured_at < w.measured_at
) lowest
WHERE w.patient_id = '$patient' AND w.metric = '{rule.metric}'
  AND $__timeFilter(w.measured_at) AND lowest.value IS NOT NULL
ORDER BY 1
"""  # noqa: S608 - the code's constants and Grafana's macros, no input


def threshold_steps(metric: str, rules: AlertRules) -> list[dict[str, Any]]:
    """Grafana threshold steps for a metric's rules: red beyond each limit, green between.
    A step's value starts its band, so a ``<=`` limit is where green begins."""
    lows = sorted(r.threshold for r in rules.thresholds if r.metric == metric and r.op == "<=")
    highs = sorted(r.threshold for r in rules.thresholds if r.metric == metric and r.op == ">=")
    steps: list[dict[str, Any]] = [{"color": "red" if lows else "green", "value": None}]
    steps += [{"color": "green", "value": value} for value in lows[-1:]]
    steps += [{"color": "red", "value": value} for value in highs[:1]]
    return steps


def _unit(ucum: str) -> str:
    return _UNITS.get(ucum) or _UNIT_SUFFIX.get(ucum) or f"suffix: {ucum}"


def _vital_overrides(rules: AlertRules) -> list[dict[str, Any]]:
    """Each metric's series: its name, unit (its own axis) and, if a rule has one, its
    threshold lines."""
    ruled = {r.metric for r in rules.thresholds}
    overrides = []
    for code, metric in METRICS.items():
        properties: list[dict[str, Any]] = [
            {"id": "displayName", "value": metric.display},
            {"id": "unit", "value": _unit(metric.unit)},
        ]
        if code in ruled:
            properties += [
                {
                    "id": "thresholds",
                    "value": {"mode": "absolute", "steps": threshold_steps(code, rules)},
                },
                {"id": "custom.thresholdsStyle", "value": {"mode": "line"}},
            ]
        overrides.append({"matcher": {"id": "byName", "options": code}, "properties": properties})
    weight_unit = _unit(METRICS[rules.weight_gain.metric].unit)
    overrides.append(
        {
            "matcher": {"id": "byName", "options": WEIGHT_LIMIT_FIELD},
            "properties": [
                {"id": "displayName", "value": "Weight-gain alert limit"},
                {"id": "unit", "value": weight_unit},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            ],
        }
    )
    return overrides


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def _vitals_panel(rules: AlertRules) -> TimeSeries:
    targets = [
        sql(KIND, _vital_sql(code), ref_id=_ref_id(i), fmt="time_series")
        for i, code in enumerate(METRICS)
    ]
    targets.append(
        sql(KIND, _weight_limit_sql(rules), ref_id=_ref_id(len(targets)), fmt="time_series")
    )
    gain = rules.weight_gain
    return TimeSeries(
        title="Vitals: ${patient:text}",
        description=(
            "Every reading of the chosen patient, by time of measurement. Red lines are the "
            "alert rules' thresholds (a value on a line breaches it); the dashed red series "
            f"is the weight that would raise weight_gain: the lowest weight of the preceding "
            f"{gain.window.total_seconds() / 3600:g} h plus {gain.gain_kg:g} kg."
        ),
        dataSource=datasource(KIND),
        targets=targets,
        showPoints="always",
        spanNulls=True,
        pointSize=6,
        overrides=_vital_overrides(rules),
        thresholds=[{"color": "green", "value": None}],
        thresholdsStyleMode="off",
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "min", "max"],
    )


def _table(title: str, description: str, raw_sql: str, overrides: list[dict[str, Any]]) -> Table:
    return Table(
        title=title,
        description=description,
        dataSource=datasource(KIND),
        targets=[sql(KIND, raw_sql)],
        overrides=overrides,
        filterable=True,
    )


def provider_dashboard(rules: AlertRules = DEFAULT_RULES) -> Dashboard:
    """The provider dashboard; ``rules`` are the ingest's alert rules (its rules file, if
    the platform has one) whose thresholds the vitals panel draws."""
    grid = Grid()
    grid.place(
        _table(
            "Patients: open alerts first",
            "Patients with unacknowledged alerts (whenever raised) at the top, most alerts "
            "first; then the patients enrolled in the time range. Last reading in the "
            f"{LAST_READING_WITHIN} before the range's end (empty: none); device status now "
            "(an ended enrolment's device is no longer shown). "
            f"At most {TABLE_LIMIT} rows. Click a patient for the vitals or the FHIR record.",
            PATIENTS_SQL,
            _patient_column_overrides(),
        ),
        w=24,
        h=9,
    )
    grid.place(_vitals_panel(rules), w=24, h=10)
    grid.place(
        _table(
            "Adherence, last 30 days",
            "Operational view: over the 30 complete pilot days up to the range's end, the "
            "enrolled days on which every metric of the care plan had a reading (adherence), "
            "and readings taken against the plan's readings per day, each metric capped at the "
            "plan (completeness); readings attributed to the patient, by pilot day of their "
            "measurement (the patients' daily rollup). The pilot's evaluated adherence, "
            f"with its intervals, is on the pilot dashboard. Lowest first, at most {TABLE_LIMIT}.",
            ADHERENCE_SQL,
            _patient_column_overrides(),
        ),
        w=12,
        h=9,
    )
    grid.place(
        _table(
            "Last reading and device status",
            "Each device enrolment in the range: the last reading it brought in the "
            f"{LAST_READING_WITHIN} before the range's end (empty: none in that time), and the "
            "device's presence now (online, offline, never_seen) while it is enrolled. Silent "
            f"devices first, at most {TABLE_LIMIT} rows.",
            LAST_READING_SQL,
            _patient_column_overrides(),
        ),
        w=12,
        h=9,
    )
    variable = query_variable(KIND, "patient", "Patient", PATIENT_VARIABLE_SQL)
    grid.banner(provenance_panel(KIND), h=3)  # last placed: no other id moves
    return dashboard(
        uid=UID,
        title="Provider: patients and vitals",
        description=(
            "A health provider's own patients (the data source's role sees no other): open "
            "alerts, vitals against the alert thresholds, adherence, devices."
        ),
        grid=grid,
        variables=[variable],
        time_from="now-7d",
        tags=[KIND],
    )
