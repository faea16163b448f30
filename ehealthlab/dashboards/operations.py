"""The operations dashboard: what the LAB's operators watch about the platform itself — how
many readings arrive and how late, what is refused or arrives twice, which devices are online
or silent, whose clocks are wrong — over every organisation (role kind ``lab``, schema
``lab_dashboard``), with no patient in sight.

Each panel's description says which time it is drawn against: *receive time* (``received_at``,
the broker's stamp) for what ingest did, *measurement time* (``at``, the device's clock) for
the hourly rollup and for latency. The message log (``device_messages``, one row per message
with its counts) answers the receive-time panels, so they never read ``readings`` row by row.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Table, Text, TimeSeries

from ehealthlab.dashboards.latency import LATENCY_BOUNDS_S, quantile_sql, sums_sql
from ehealthlab.dashboards.panels import Grid, dashboard, datasource, sql
from ehealthlab.dashboards.provenance import provenance_panel
from ehealthlab.dashboards.roles import Kind

KIND: Kind = "lab"
UID = "ehl-operations"

#: the contract's clock tolerance (contract/clock.py CLOCK_TOLERANCE_S): beyond it a
#: message's readings are clock-corrected
CLOCK_TOLERANCE_S = 120
#: every care plan of the pilot expects readings every day: a device enrolled and quiet for
#: longer than this has missed a day of its plan
SILENT_AFTER_HOURS = 24
#: how far back a silent device's last reading is looked for, by measurement time and by `at`
#: (bounds the partitions and the index range read per device)
SILENT_LOOKBACK_DAYS = 7

#: from this $__interval on, receive-time panels read the hourly rollup (messages_hourly)
ROLLUP_FROM_MS = 3_600_000


def _by_receive_time(log_columns: str, rollup_columns: str) -> str:
    """A receive-time series: under an hour's interval from the message log (device_messages,
    by its index on received_at), from an hour on from its hourly rollup (messages_hourly,
    migration 0021), whole hours whose start is in the range. The branch not taken is a
    constant-false filter: PostgreSQL does not run it."""
    return f"""
SELECT $__timeGroupAlias(received_at, $__interval),
{log_columns}
FROM device_messages
WHERE $__interval_ms < {ROLLUP_FROM_MS} AND $__timeFilter(received_at)
GROUP BY 1
UNION ALL
SELECT $__timeGroupAlias(bucket, $__interval),
{rollup_columns}
FROM messages_hourly
WHERE $__interval_ms >= {ROLLUP_FROM_MS} AND $__timeFilter(bucket)
GROUP BY 1
ORDER BY 1
"""  # noqa: S608 (module constants, no input)


_RATES = """       sum(accepted) * 1000.0 / $__interval_ms AS "stored",
       sum(duplicates) * 1000.0 / $__interval_ms AS "duplicates",
       sum(rejected) * 1000.0 / $__interval_ms AS "rejected"
"""
INGESTED_SQL = _by_receive_time(_RATES, _RATES)

HOURLY_SQL = """
SELECT $__timeGroupAlias(bucket, $__interval), sum(readings) AS "readings"
FROM readings_fleet_hourly
WHERE $__timeFilter(bucket)
GROUP BY 1
ORDER BY 1
"""

#: percentiles estimated from the fleet rollup's latency histogram (dashboards/latency.py):
#: a year is a few thousand rows per start-up and device type, not millions of readings
LATENCY_SQL = f"""
SELECT h.time, {quantile_sql(0.5, "h")} AS "p50",
       {quantile_sql(0.95, "h")} AS "p95"
FROM (
    SELECT $__timeGroupAlias(bucket, $__interval), sum(readings) AS readings,
           {sums_sql()}
    FROM readings_fleet_hourly
    WHERE $__timeFilter(bucket)
    GROUP BY 1
) h
ORDER BY 1
"""  # noqa: S608 (module constants, no input)

REJECTS_BY_REASON_SQL = """
SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) AS "rejected"
FROM rejected_readings
WHERE $__timeFilter(received_at)
GROUP BY 1, 2
ORDER BY 1, 2
"""

REJECTS_BY_STARTUP_SQL = """
SELECT coalesce(o.name, '(not a registered device)') AS "start-up",
       x.reason AS "reason",
       count(*) AS "rejected",
       count(*) FILTER (WHERE x.item_index IS NULL) AS "whole messages",
       max(x.received_at) AS "last received"
FROM rejected_readings x
LEFT JOIN devices d ON d.device_id = x.device_id
LEFT JOIN organisations o ON o.id = d.organisation_id
WHERE $__timeFilter(x.received_at)
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2
LIMIT 200
"""

DUPLICATES_SQL = """
SELECT $__timeGroupAlias(received_at, $__interval), count(*) AS "duplicate readings"
FROM duplicate_readings
WHERE $__timeFilter(received_at)
GROUP BY 1
ORDER BY 1
"""

REDELIVERIES_SQL = _by_receive_time(
    '       sum(deliveries - 1) AS "messages delivered again"',
    '       sum(redeliveries) AS "messages delivered again"',
)

DEAD_LETTERS_SQL = """
SELECT x.received_at AS "received",
       x.device_id AS "device",
       (d.device_id IS NOT NULL) AS "registered",
       x.reason AS "reason",
       x.detail AS "detail",
       x.payload_bytes AS "bytes"
FROM rejected_readings x
LEFT JOIN devices d ON d.device_id = x.device_id
WHERE x.item_index IS NULL AND $__timeFilter(x.received_at)
ORDER BY x.received_at DESC, x.id DESC
LIMIT 100
"""

BROKER_DROPS_SQL = """
SELECT b.observed_at AS "observed",
       b.dropped AS "dropped",
       b.dropped_total AS "broker's count since it started"
FROM broker_drops b
WHERE b.dropped > 0 AND $__timeFilter(b.observed_at)
ORDER BY b.observed_at DESC, b.id DESC
LIMIT 100
"""

# pages not sent yet are shown whatever the range: they are what the operator has not heard
OPERATOR_PAGES_SQL = """
SELECT p.raised_at AS "raised",
       p.event AS "event",
       p.summary AS "page",
       p.sent_at AS "sent",
       p.attempts AS "tries",
       p.last_error AS "last failure"
FROM operator_pages p
WHERE $__timeFilter(p.raised_at) OR p.sent_at IS NULL
ORDER BY p.raised_at DESC, p.id DESC
LIMIT 100
"""

DEVICES_SQL = """
SELECT o.name AS "start-up",
       count(*) FILTER (WHERE d.status = 'online') AS "online",
       count(*) FILTER (WHERE d.status = 'offline') AS "offline",
       count(*) FILTER (WHERE d.status = 'never_seen') AS "never seen",
       max(d.last_seen_at) AS "last seen"
FROM devices d
JOIN organisations o ON o.id = d.organisation_id
WHERE d.revoked_at IS NULL
GROUP BY o.name
ORDER BY o.name
"""

# The enrolled devices are found first (OFFSET 0 keeps them a subquery), then their last
# reading: the device's newest (device_last_readings, migration 0024) when it is not after the
# range's end, else — a range in the past — the newest up to the end, looked up by the index
# on device and measured_at (the lateral runs only for those devices). Then names: joined to
# organisations first, through the views, the planner took devices x organisations for 400
# rows and looped enrolments x devices (96 million comparisons, 11 s on the benchmark's store).
SILENT_SQL = f"""
SELECT o.name AS "start-up",
       x.device_id AS "device",
       x.device_type AS "type",
       m.name AS "municipality",
       last.measured_at AS "last reading",
       round((extract(epoch FROM $__timeTo()::timestamptz - last.measured_at) / 3600)::numeric,
             1) AS "hours silent"
FROM (
    SELECT e.device_id, e.municipality, d.device_type, d.organisation_id
    FROM enrolments e
    JOIN devices d ON d.device_id = e.device_id
    WHERE e.care_plan <> '{{}}'::jsonb
      AND e.start_date <= ($__timeTo()::timestamptz AT TIME ZONE 'Europe/Rome')::date
      AND (e.end_date IS NULL
           OR e.end_date >= ($__timeTo()::timestamptz AT TIME ZONE 'Europe/Rome')::date)
      AND d.revoked_at IS NULL
    OFFSET 0
) x
LEFT JOIN device_last_readings newest ON newest.device_id = x.device_id
LEFT JOIN LATERAL (
    SELECT r.measured_at
    FROM readings r
    WHERE newest.measured_at > $__timeTo()::timestamptz
      AND r.device_id = x.device_id
      AND r.measured_at <= $__timeTo()::timestamptz
      AND r.measured_at > $__timeTo()::timestamptz - interval '{SILENT_LOOKBACK_DAYS} days'
      AND r.at > $__timeTo()::timestamptz - interval '{SILENT_LOOKBACK_DAYS} days'
      AND r.at <= $__timeTo()::timestamptz
    ORDER BY r.measured_at DESC
    LIMIT 1
) earlier ON true
CROSS JOIN LATERAL (
    SELECT CASE WHEN newest.measured_at <= $__timeTo()::timestamptz
                 AND newest.measured_at > $__timeTo()::timestamptz
                                          - interval '{SILENT_LOOKBACK_DAYS} days'
                THEN newest.measured_at
                ELSE earlier.measured_at END AS measured_at
) last
JOIN organisations o ON o.id = x.organisation_id
LEFT JOIN municipalities m ON m.istat_code = x.municipality
WHERE last.measured_at IS NULL
   OR last.measured_at < $__timeTo()::timestamptz - interval '{SILENT_AFTER_HOURS} hours'
ORDER BY last.measured_at NULLS FIRST, x.device_id
LIMIT 200
"""  # noqa: S608 (module constants, no input)

CLOCK_SQL = _by_receive_time(
    f"""       coalesce(sum(accepted) FILTER (WHERE abs(clock_offset_s) > {CLOCK_TOLERANCE_S}), 0)
           ::float8 / nullif(sum(accepted), 0) AS "clock-corrected share"
""",
    """       sum(clock_corrected)::float8 / nullif(sum(accepted), 0)
           AS "clock-corrected share"
""",
)

BACKLOG_TEXT = """
**Ingest backlog is not in the database.** A message is logged in `device_messages` in the
same transaction as its readings, so the store holds no "received but not yet stored" state:
what waits is in the broker, and what ingest knows of it is exported to **Prometheus** by each
worker (`ehealthlab ingest --metrics-port P`, worker *i* on `127.0.0.1:P+i-1`, `/metrics`):

- `ehl_ingest_lag_seconds` — receive-to-commit time of the last batch's oldest message;
- `ehl_ingest_database_up` — 0 while the database refuses writes (the broker then holds the rest);
- `ehl_ingest_batch_seconds`, `ehl_ingest_messages_total`, `ehl_ingest_readings_total`.

Grafana's PostgreSQL data source cannot read them: add a Prometheus data source scraping the
workers to see the backlog. Devices' own backlogs (readings buffered while offline and sent
late) show in the latency panel's p95.
"""


def _series(
    title: str, description: str, *targets: str, unit: str, interval: str = "1m"
) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=datasource(KIND),
        targets=[
            sql(KIND, raw, ref_id=chr(ord("A") + i), fmt="time_series")
            for i, raw in enumerate(targets)
        ],
        unit=unit,
        interval=interval,
    )


def _table(title: str, description: str, raw: str) -> Table:
    return Table(
        title=title,
        description=description,
        dataSource=datasource(KIND),
        targets=[sql(KIND, raw)],
    )


def operations_dashboard() -> Dashboard:
    """The LAB operators' view of ingest, devices and data quality, every organisation."""
    grid = Grid()
    grid.place(
        _series(
            "Readings ingested per second",
            "Receive time. Per $__interval, from the message log (device_messages): readings "
            "stored, readings that arrived again (duplicates, not stored twice) and readings "
            "rejected, divided by the interval's seconds."
            " For an interval of an hour or more, from the hourly rollup (messages_hourly): "
            "whole hours whose start is in the range.",
            INGESTED_SQL,
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _series(
            "Readings stored per interval (hourly rollup)",
            "Measurement time (`at`, the device's clock): readings per $__interval from the "
            "fleet's hourly rollup (readings_fleet_hourly: per start-up and device type), whole "
            "hours whose start is in the range. A backlog appears at the hours it was "
            "measured, not when it arrived.",
            HOURLY_SQL,
            unit="short",
            interval="1h",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _series(
            "Latency from measurement to storage (p50, p95)",
            "Measurement time (`at`). Per $__interval, percentiles of received_at - "
            "measured_at (clock-corrected measurement time) over the readings measured in it: "
            "readings buffered by an offline device raise the p95. Estimated from the fleet "
            "rollup's latency histogram (readings_fleet_hourly) as Prometheus' "
            "histogram_quantile does, by linear interpolation inside the bucket; exact at the "
            f"bounds {', '.join(str(b) for b in LATENCY_BOUNDS_S)} s.",
            LATENCY_SQL,
            unit="s",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _series(
            "Clock-corrected share",
            "Receive time. Share of the readings stored per $__interval whose message's clock "
            f"offset (receive time - sent_at) exceeded ±{CLOCK_TOLERANCE_S} s, so that their "
            "measurement time was corrected (device contract, Clock)."
            " For an interval of an hour or more, from the hourly rollup (messages_hourly): "
            "whole hours whose start is in the range.",
            CLOCK_SQL,
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _series(
            "Rejects by reason",
            "Receive time. Rejected readings and whole messages per $__interval, one series per "
            "reason code (the contract's codes; platform_error: a message the database refused, "
            "not the device's fault).",
            REJECTS_BY_REASON_SQL,
            unit="short",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _table(
            "Rejects by start-up and reason",
            "Receive time. Rejections in the range per start-up and reason; '(not a registered "
            "device)' are messages on a topic of no registered device.",
            REJECTS_BY_STARTUP_SQL,
        ),
        w=12,
        h=8,
    )
    grid.place(
        _series(
            "Duplicates and redeliveries",
            "Receive time. A: readings that arrived again in a new message (same device, metric, "
            "`at` and value; counted, not stored twice). B: messages delivered again (same msg_id "
            "and readings; nothing counted twice), at their first receive time."
            " For an interval of an hour or more, from the hourly rollup (messages_hourly): "
            "whole hours whose start is in the range.",
            DUPLICATES_SQL,
            REDELIVERIES_SQL,
            unit="short",
        ),
        w=12,
        h=8,
    )
    grid.place(
        _table(
            "Dead letters (whole messages kept)",
            "Receive time. Messages refused whole and kept with their payload (not shown) in "
            "rejected_readings (item_index null): unparseable JSON, a message breaking the schema "
            "or too large, a topic of no registered device (device 'unknown' or not registered), "
            "or platform_error (a batch the database refused, its message written alone). "
            "Newest 100.",
            DEAD_LETTERS_SQL,
        ),
        w=12,
        h=8,
    )
    grid.place(
        _table(
            "Devices by presence (now)",
            "Not the time range: each registered, unrevoked device's presence as last reported "
            "(status topic), per start-up.",
            DEVICES_SQL,
        ),
        w=8,
        h=8,
    )
    grid.place(
        _table(
            "Silent devices",
            f"At the range's end: devices enrolled with a care plan (every plan expects readings "
            f"daily) and no reading measured in the {SILENT_AFTER_HOURS} h before it. Last reading "
            f"looked for over {SILENT_LOOKBACK_DAYS} days, by measurement time and by `at` "
            "(empty: none in that time).",
            SILENT_SQL,
        ),
        w=16,
        h=8,
    )
    grid.place(
        Text(title="Ingest backlog", content=BACKLOG_TEXT.strip(), mode="markdown"), w=24, h=7
    )
    grid.place(  # after every older panel: their ids do not move
        _table(
            "Messages the broker dropped (lost)",
            "Observation time. Each time the broker's count of dropped messages "
            "($SYS/broker/publish/messages/dropped) grew: messages a session's queue had no "
            "room for (max_queued_messages), acknowledged to their devices and then dropped, so "
            "no device resends them and ingest never sees them. Empty is the only good answer; "
            "a row means ingest was away or too slow for that long (docs/reliability-faults.md "
            "§3). Newest 100.",
            BROKER_DROPS_SQL,
        ),
        w=24,
        h=6,
    )
    grid.place(
        _table(
            "Pages for the operator",
            "Raise time, and every page not sent yet whatever the range. What the platform "
            "pages the operator about (today the broker's drops) and whether the operator's "
            "webhook (EHEALTHLAB_OPERATOR_WEBHOOK_URL) took it: 'sent' empty means not yet, "
            "'last failure' says why; with no webhook set nothing is sent and this panel is "
            "the page. Newest 100.",
            OPERATOR_PAGES_SQL,
        ),
        w=24,
        h=6,
    )
    grid.banner(provenance_panel(KIND), h=3)  # last placed: no other id moves
    return dashboard(
        uid=UID,
        title="Operations",
        description="The platform as the LAB's operators watch it: ingest, devices, data "
        "quality, over every organisation (no patient identifiers).",
        grid=grid,
        time_from="now-24h",
        tags=("operations",),
    )
