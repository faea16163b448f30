"""The start-up dashboard: what a start-up's engineer watches about its own fleet (issue 11,
item 2). Every query reads the `startup_dashboard` views as the start-up's own role, so it
sees its devices and nothing else, and no patient.

Time: presence (online, offline, never seen) is the broker's retained state *now*, as
`gateway/presence.py` records it; "silent" is judged at the end of the chosen range, so the
board also answers "which devices had gone quiet on Friday evening".

Silent: every care plan asks each planned metric at least once a day (1-24 readings a day),
so a device enrolled on the range's last pilot day that has sent no reading in the 24 hours
before the range's end — and whose enrolment began more than 24 hours before it — is silent.
The start-up's role does not see the care plan itself (no column in
`startup_dashboard.enrolments`), only that the device is enrolled, so the loosest plan (once a
day) is the bound for every device.

Panels over raw rows that grow with the fleet (messages, readings) read at most the last
`RECENT` of the range, so a 365-day range costs what a week costs; long series read the hourly
rollup.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Stat, Table, Text, TimeSeries

from ehealthlab.contract.clock import CLOCK_TOLERANCE_S
from ehealthlab.dashboards.latency import counts_sql, quantile_sql, sums_sql
from ehealthlab.dashboards.panels import Grid, dashboard, datasource, query_variable, sql
from ehealthlab.dashboards.provenance import provenance_panel
from ehealthlab.dashboards.roles import Kind

KIND: Kind = "startup"
UID = "ehl-startup"
PILOT_ZONE = "Europe/Rome"
#: the longest gap the loosest care plan (one reading a day) allows
SILENT_AFTER = "24 hours"
#: how far before the range's end panels over raw messages and readings look
RECENT = "7 days"
#: how far back the device table looks for a device's last reading
LAST_READING_WITHIN = "7 days"

#: reason codes of the device contract, by the conformance check that reports them
#: (gateway/conformance.py)
SCHEMA_REASONS = ("malformed_json", "schema_violation", "payload_too_large")
CATALOGUE_REASONS = ("unknown_metric", "metric_not_for_device_type", "out_of_range")

_T = "$__timeTo()::timestamptz"
_RECENT_FROM = f"{_T} - interval '{RECENT}'"
#: the conformance table's window: the conformance check's own default (the portal's verdict
#: is judged over the last 24 hours too), so the two agree
CONFORMANCE_WINDOW = "24 hours"
_CONFORMANCE_FROM = f"{_T} - interval '{CONFORMANCE_WINDOW}'"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


#: True when $device selects every device the start-up has (Grafana's "All", or each one
#: ticked): a panel then reads the start-up's rollups, which hold no device column, instead of
#: filtering thousands of devices. An InitPlan: evaluated once, and the branch whose filter it
#: fails is never run.
WHOLE_FLEET = "NOT EXISTS (SELECT 1 FROM devices w WHERE w.device_id NOT IN ($device))"

#: One row per device of the selection: its presence now, its enrolment on the range's last
#: pilot day, its last reading before the range's end, and whether it is silent then. The
#: last reading is the device's newest (device_last_readings, migration 0024) unless that is
#: after the range's end (a range in the past): then it is looked up, newest first, through
#: readings_device_measured_idx, the `at` bound (a week of clock error either way) keeping
#: partitions and chunks outside the month unread.
FLEET = f"""
WITH selected AS MATERIALIZED (
  SELECT d.device_id, d.device_type, d.model, d.firmware, d.status, d.status_at,
         d.last_seen_at, d.revoked_at
  FROM devices d
  WHERE d.device_id IN ($device)
), last_readings AS MATERIALIZED (
  -- apart from the enrolments: joined together, the planner looped devices x enrolments
  SELECT s.device_id,
         CASE WHEN newest.measured_at <= {_T}
               AND newest.measured_at > {_T} - interval '{LAST_READING_WITHIN}'
              THEN newest.measured_at
              ELSE earlier.measured_at END AS measured_at
  FROM selected s
  LEFT JOIN device_last_readings newest ON newest.device_id = s.device_id
  LEFT JOIN LATERAL (
    SELECT r.measured_at
    FROM readings r
    WHERE newest.measured_at > {_T}
      AND r.device_id = s.device_id
      AND r.measured_at <= {_T}
      AND r.measured_at > {_T} - interval '{LAST_READING_WITHIN}'
      AND r.at > {_T} - interval '{LAST_READING_WITHIN}' - interval '7 days'
      AND r.at <= {_T} + interval '7 days'
    ORDER BY r.measured_at DESC
    LIMIT 1
  ) earlier ON true
), fleet AS (
  SELECT d.device_id, d.device_type, d.model, d.firmware, d.status, d.status_at,
         d.last_seen_at, d.revoked_at IS NOT NULL AND d.revoked_at <= {_T} AS revoked,
         e.municipality,
         e.start_date::timestamp AT TIME ZONE '{PILOT_ZONE}' AS enrolled_from,
         last.measured_at AS last_reading
  FROM selected d
  JOIN last_readings last ON last.device_id = d.device_id
  LEFT JOIN enrolments e
    ON e.device_id = d.device_id
   AND ({_T} AT TIME ZONE '{PILOT_ZONE}')::date
       BETWEEN e.start_date AND coalesce(e.end_date, 'infinity'::date)
), judged AS (
  SELECT f.*,
         f.enrolled_from IS NOT NULL AND NOT f.revoked
         AND f.enrolled_from <= {_T} - interval '{SILENT_AFTER}'
         AND (f.last_reading IS NULL OR f.last_reading <= {_T} - interval '{SILENT_AFTER}')
           AS silent
  FROM fleet f
)"""  # noqa: S608 - constants and Grafana macros only

FLEET_COUNTS = f"""
{FLEET}
SELECT count(*) FILTER (WHERE NOT revoked AND status = 'online') AS "online now",
       count(*) FILTER (WHERE NOT revoked AND status = 'offline') AS "offline now",
       count(*) FILTER (WHERE NOT revoked AND status = 'never_seen') AS "never seen",
       count(*) FILTER (WHERE revoked) AS "revoked",
       count(*) FILTER (WHERE enrolled_from IS NOT NULL AND NOT revoked) AS "enrolled",
       count(*) FILTER (WHERE silent) AS "silent"
FROM judged
"""  # noqa: S608 - constants and Grafana macros only

FLEET_TABLE = f"""
{FLEET}
SELECT j.device_id AS "device", j.device_type AS "type", j.model, j.firmware,
       CASE WHEN j.revoked THEN 'revoked' ELSE j.status END AS "presence",
       j.status_at AS "presence since", j.last_seen_at AS "last seen",
       m.name AS "municipality", j.last_reading AS "last reading",
       round((extract(epoch FROM {_T} - j.last_reading) / 3600)::numeric, 1)
         AS "hours since reading",
       j.silent
FROM judged j
LEFT JOIN municipalities m ON m.istat_code = j.municipality
ORDER BY j.silent DESC, "presence", j.device_id
LIMIT 500
"""  # noqa: S608 - constants and Grafana macros only

REJECTS_OVER_TIME = """
SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) AS rejected
FROM rejected_readings
WHERE $__timeFilter(received_at) AND device_id IN ($device)
GROUP BY 1, 2
ORDER BY 1, 2
"""

REJECT_REASONS = """
SELECT reason, count(*) AS rejected, count(DISTINCT device_id) AS devices,
       max(received_at) AS "last",
       (array_agg(detail ORDER BY received_at DESC))[1] AS "last detail"
FROM rejected_readings
WHERE $__timeFilter(received_at) AND device_id IN ($device)
GROUP BY reason
ORDER BY rejected DESC, reason
"""

#: Per device, what gateway/conformance.py would count as a problem over the window: refused
#: messages and readings by the check that reports them, messages sent at QoS 0 or with the
#: clock off by more than the tolerance, readings resent with another value, unreadable
#: status payloads; resent identical readings are shown too (harmless, stored once).
CONFORMANCE = f"""
WITH rej AS (
  SELECT device_id,
         count(*) FILTER (WHERE reason IN {_in(SCHEMA_REASONS)}) AS schema,
         count(*) FILTER (WHERE reason IN {_in(CATALOGUE_REASONS)}) AS catalogue,
         count(*) FILTER (WHERE reason = 'unit_mismatch') AS units,
         count(*) FILTER (WHERE reason = 'timestamp_in_future') AS future,
         count(*) FILTER (WHERE reason = 'conflicting_duplicate') AS conflicts
  FROM rejected_readings
  WHERE $__timeFilter(received_at) AND received_at >= {_CONFORMANCE_FROM}
    AND device_id IN ($device)
  GROUP BY device_id
), msg AS (
  SELECT device_id, count(*) AS messages,
         count(*) FILTER (WHERE qos < 1) AS qos0,
         count(*) FILTER (WHERE abs(clock_offset_s) > {CLOCK_TOLERANCE_S:.0f}) AS clock_off,
         sum(duplicates) AS resent
  FROM device_messages
  WHERE $__timeFilter(received_at) AND received_at >= {_CONFORMANCE_FROM}
    AND device_id IN ($device)
  GROUP BY device_id
), st AS (
  SELECT device_id, count(*) FILTER (WHERE status = 'invalid') AS bad_status
  FROM device_status_events
  WHERE $__timeFilter(received_at) AND received_at >= {_CONFORMANCE_FROM}
    AND device_id IN ($device)
  GROUP BY device_id
), per_device AS (
  SELECT d.device_id, d.device_type, coalesce(msg.messages, 0) AS messages,
         coalesce(rej.schema, 0) AS schema, coalesce(rej.catalogue, 0) AS catalogue,
         coalesce(rej.units, 0) AS units, coalesce(rej.future, 0) AS future,
         coalesce(msg.clock_off, 0) AS clock_off, coalesce(msg.qos0, 0) AS qos0,
         coalesce(rej.conflicts, 0) AS conflicts, coalesce(st.bad_status, 0) AS bad_status,
         coalesce(msg.resent, 0) AS resent
  FROM devices d
  LEFT JOIN rej ON rej.device_id = d.device_id
  LEFT JOIN msg ON msg.device_id = d.device_id
  LEFT JOIN st ON st.device_id = d.device_id
  WHERE d.device_id IN ($device)
)
SELECT device_id AS "device", device_type AS "type", messages,
       schema + catalogue + units + future + clock_off + qos0 + conflicts + bad_status
         AS problems,
       schema AS "refused: schema", catalogue AS "refused: catalogue",
       units AS "refused: unit", future AS "dated in future",
       clock_off AS "clock off > {CLOCK_TOLERANCE_S:.0f} s", qos0 AS "QoS 0",
       conflicts AS "conflicting resend", bad_status AS "unreadable status",
       resent AS "resent (harmless)"
FROM per_device
WHERE messages > 0 OR schema + catalogue + units + future + conflicts + bad_status > 0
ORDER BY problems DESC, device_id
LIMIT 200
"""  # noqa: S608 - constants and Grafana macros only

CLOCK_OVER_TIME = f"""
SELECT $__timeGroupAlias(received_at, $__interval),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY clock_offset_s) AS "median offset",
       max(abs(clock_offset_s)) AS "worst |offset|"
FROM device_messages
WHERE $__timeFilter(received_at) AND received_at >= {_RECENT_FROM}
  AND clock_offset_s IS NOT NULL AND device_id IN ($device)
GROUP BY 1
ORDER BY 1
"""  # noqa: S608 - constants and Grafana macros only

CLOCK_TABLE = f"""
SELECT device_id AS "device", count(*) AS messages,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY clock_offset_s) AS "median offset s",
       (array_agg(clock_offset_s ORDER BY abs(clock_offset_s) DESC))[1] AS "worst offset s",
       count(*) FILTER (WHERE abs(clock_offset_s) > {CLOCK_TOLERANCE_S:.0f})
         AS "clock-corrected messages"
FROM device_messages
WHERE $__timeFilter(received_at) AND received_at >= {_RECENT_FROM}
  AND clock_offset_s IS NOT NULL AND device_id IN ($device)
GROUP BY device_id
ORDER BY max(abs(clock_offset_s)) DESC, device_id
LIMIT 50
"""  # noqa: S608 - constants and Grafana macros only

_LATENCY_S = "extract(epoch FROM r.received_at - r.measured_at)"


#: Measurement to storage (received_at - measured_at, the clock-corrected time) by the
#: municipality of the enrolment covering the reading's pilot day. Percentiles are estimated
#: from latency histograms (dashboards/latency.py): for the whole fleet, the start-up's hourly
#: rollup by municipality (whole hours whose start is in the range); for a selection, the
#: same histogram counted from its readings.
LATENCY = f"""
SELECT coalesce(m.name, '(not enrolled)') AS "municipality", l.readings,
       {quantile_sql(0.5, "l")} AS "p50 s",
       {quantile_sql(0.95, "l")} AS "p95 s"
FROM (
    SELECT nullif(h.municipality, '') AS municipality, sum(h.readings) AS readings,
           {sums_sql("h.")}
    FROM readings_municipality_hourly h
    WHERE {WHOLE_FLEET}
      AND $__timeFilter(h.bucket) AND h.bucket >= date_trunc('hour', {_RECENT_FROM})
    GROUP BY 1
    UNION ALL
    SELECT e.municipality, count(*) AS readings,
           {counts_sql(_LATENCY_S)}
    FROM readings r
    LEFT JOIN enrolments e
      ON e.device_id = r.device_id
     AND (r.measured_at AT TIME ZONE '{PILOT_ZONE}')::date
         BETWEEN e.start_date AND coalesce(e.end_date, 'infinity'::date)
    WHERE NOT {WHOLE_FLEET}
      AND $__timeFilter(r.at) AND r.at >= {_RECENT_FROM} AND r.device_id IN ($device)
    GROUP BY 1
) l
LEFT JOIN municipalities m ON m.istat_code = l.municipality
ORDER BY "p95 s" DESC NULLS LAST, 1
"""  # noqa: S608 - constants and Grafana macros only

#: Readings by device type: for the whole fleet from the start-up's hourly rollup per device
#: type, for a selection from the devices' hourly rollup.
READINGS_PER_TYPE = f"""
SELECT $__timeGroupAlias(f.bucket, $__interval), f.device_type AS metric,
       sum(f.readings) AS readings
FROM readings_fleet_hourly f
WHERE {WHOLE_FLEET} AND $__timeFilter(f.bucket)
GROUP BY 1, 2
UNION ALL
SELECT $__timeGroupAlias(h.bucket, $__interval), d.device_type AS metric,
       sum(h.readings) AS readings
FROM readings_hourly h
JOIN devices d ON d.device_id = h.device_id
WHERE NOT {WHOLE_FLEET} AND $__timeFilter(h.bucket) AND h.device_id IN ($device)
GROUP BY 1, 2
ORDER BY 1, 2
"""  # noqa: S608 - constants and Grafana macros only

DEVICE_VARIABLE = """
SELECT device_id AS __text, device_id AS __value FROM devices ORDER BY device_id
"""

BATTERY_TEXT = """\
**Battery is not shown: the platform does not receive or store it.**

Device contract v1.1 has no battery field. The status message is exactly
`{"state": "online"|"offline"}` (extra fields make it unreadable), readings messages carry only
readings, and no table keeps a battery level. A device whose battery runs flat shows here as
*silent*, and as *offline* once its Last Will fires.
"""


def _recent(text: str) -> str:
    return f"{text} Reads at most the last {RECENT} of the range."


def startup_dashboard() -> Dashboard:
    """The start-up dashboard (uid ``ehl-startup``), for the data source ``ehl-startup``."""
    grid = Grid()
    grid.place(
        Stat(
            title="Fleet: online, offline, silent",
            description="Presence now (the broker's retained status). Silent: enrolled on "
            "the range's last day and no reading in the 24 h before the range's end (every "
            "care plan asks at least one reading a day).",
            dataSource=datasource(KIND),
            targets=[sql(KIND, FLEET_COUNTS)],
            reduceCalc="lastNotNull",
            colorMode="value",
            graphMode="none",
        ),
        w=24,
        h=4,
    )
    grid.place(
        Table(
            title="Devices",
            description="Silent devices first; last reading and silence at the range's end.",
            dataSource=datasource(KIND),
            targets=[sql(KIND, FLEET_TABLE)],
        ),
        w=24,
        h=9,
    )
    grid.place(
        TimeSeries(
            title="Rejected readings by reason",
            description="Refused readings and messages by the contract's reason code.",
            dataSource=datasource(KIND),
            targets=[sql(KIND, REJECTS_OVER_TIME, fmt="time_series")],
            drawStyle="bars",
            stacking={"mode": "normal"},
            fillOpacity=80,
        ),
        w=14,
        h=8,
    )
    grid.place(
        Table(
            title="Rejection reasons",
            description="What to fix first, with the last rejection's own words.",
            dataSource=datasource(KIND),
            targets=[sql(KIND, REJECT_REASONS)],
        ),
        w=10,
        h=8,
    )
    grid.place(
        Table(
            title="Conformance problems per device",
            description=(
                "What the conformance check counts as a problem, per device: refused "
                "messages and readings by check, clock beyond tolerance, QoS 0, resends with "
                "another value, unreadable status payloads. Over the last "
                f"{CONFORMANCE_WINDOW} of the range, the window the conformance check judges "
                "by default (the portal's verdict); the rejects panels show longer periods."
            ),
            dataSource=datasource(KIND),
            targets=[sql(KIND, CONFORMANCE)],
        ),
        w=24,
        h=9,
    )
    grid.place(
        TimeSeries(
            title="Clock offset (receive time - sent_at)",
            description=_recent(
                f"Beyond ±{CLOCK_TOLERANCE_S:.0f} s the platform corrects the readings' time."
            ),
            dataSource=datasource(KIND),
            targets=[sql(KIND, CLOCK_OVER_TIME, fmt="time_series")],
            unit="s",
        ),
        w=12,
        h=8,
    )
    grid.place(
        Table(
            title="Clocks per device",
            description=_recent("Worst clocks first."),
            dataSource=datasource(KIND),
            targets=[sql(KIND, CLOCK_TABLE)],
        ),
        w=12,
        h=8,
    )
    grid.place(
        Table(
            title="Latency by municipality (measurement to storage)",
            description=_recent(
                "received_at - measured_at, by the municipality of the enrolment covering "
                "the reading's day; a backlog sent after an outage lifts p95. Percentiles are "
                "estimated from a latency histogram as Prometheus' histogram_quantile does "
                "(exact at its bounds, interpolated between them); for every device, from the "
                "hourly rollup by municipality (whole hours)."
            ),
            dataSource=datasource(KIND),
            targets=[sql(KIND, LATENCY)],
        ),
        w=12,
        h=8,
    )
    grid.place(
        TimeSeries(
            title="Readings stored by device type",
            description=(
                "By measurement hour. For every device, from the start-up's hourly rollup by "
                "device type; for a selection, from the devices' hourly rollup."
            ),
            dataSource=datasource(KIND),
            targets=[sql(KIND, READINGS_PER_TYPE, fmt="time_series")],
            drawStyle="bars",
            stacking={"mode": "normal"},
        ),
        w=12,
        h=8,
    )
    grid.place(Text(title="Battery", content=BATTERY_TEXT, mode="markdown"), w=24, h=4)
    device = query_variable(KIND, "device", "Device", DEVICE_VARIABLE, multi=True, include_all=True)
    grid.banner(provenance_panel(KIND), h=3)  # last placed: no other id moves
    return dashboard(
        uid=UID,
        title="Start-up: our devices",
        description="A start-up's fleet: presence, silence, rejects, conformance, clocks, "
        "latency. Only the start-up's own devices; no patient.",
        grid=grid,
        variables=[device],
        time_from="now-7d",
        tags=[KIND],
    )
