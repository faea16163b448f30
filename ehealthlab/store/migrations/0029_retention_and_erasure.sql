-- Privacy (issue 13, promise 8): a retention job deleting data past the configured period, and
-- the erasure of one patient (GDPR art. 17). Both run in `ehealthlab db retention` and
-- `ehealthlab db erase-patient` (store/retention.py, store/erasure.py); this migration gives
-- them their record tables and the functions that keep the rollups of 0003 and 0022-0026 right
-- when readings are deleted (docs/reliability-privacy.md). Identical on both forms: the one
-- form-specific step (readings_hourly is a table on the plain form, a continuous aggregate on
-- TimescaleDB) is chosen inside the function by ehl_store_form().

-- Each retention run: the clock it ran by (given explicitly in tests), the period, the cutoff
-- it derived and what it deleted, table by table. Holds no patient data; never deleted.
CREATE TABLE retention_runs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    run_now     timestamptz NOT NULL,   -- the "now" the cutoff was computed from
    days        integer NOT NULL CHECK (days >= 1),
    cutoff      timestamptz NOT NULL,   -- data of a time before this was deleted
    deleted     jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {table: rows}
    run_by      text NOT NULL
);

-- Each erasure of one patient: what was erased (counts by table), by whom and when. The
-- patient's id is a random UUID that, once its `patients` row is gone, names nobody: it is
-- kept so that a second request is answered "already erased" and so that the trail of earlier
-- reads (fhir_audit_events.patient_ids) can be matched to the erasure. The identifier's keyed
-- hash is not kept: with the key and a guessed codice fiscale it would re-identify the person.
-- Kept beyond the retention period (retention never deletes this table).
CREATE TABLE patient_erasures (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    erased_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    patient_id      uuid NOT NULL UNIQUE,
    organisation_id uuid NOT NULL REFERENCES organisations (id),  -- the patient's provider
    erased_by       text NOT NULL,      -- "token:<id>" or "command line (<os user>)"
    counts          jsonb NOT NULL,     -- {table: rows deleted}
    reason          text NOT NULL DEFAULT ''
);

-- Subtract readings from the start-ups' rollups (0022: fleet and municipality histograms),
-- as ehl_dashboard_rollups_add added them: an erased patient's readings no longer count. The
-- municipality is the covering enrolment's, as when they were added, so erasure deletes the
-- readings before the enrolments. Negative rows land in this backend's slot; panels sum slots.
CREATE FUNCTION ehl_dashboard_rollups_subtract(
    device_ids text[], ats timestamptz[], measured timestamptz[], received timestamptz[]
) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    INSERT INTO readings_fleet_hourly AS h
        (bucket, organisation_id, device_type, slot, readings,
         le_0s, le_1s, le_2s, le_5s, le_10s, le_20s, le_30s, le_60s,
         le_120s, le_300s, le_600s, le_1800s, le_3600s, le_14400s, le_86400s, le_259200s)
    SELECT date_bin('1 hour', r.at, timestamptz '2000-01-01 00:00:00+00'),
           d.organisation_id, d.device_type, (pg_backend_pid() % 8)::smallint,
           -count(*),
           -count(*) FILTER (WHERE r.latency_s <= 0),
           -count(*) FILTER (WHERE r.latency_s <= 1),
           -count(*) FILTER (WHERE r.latency_s <= 2),
           -count(*) FILTER (WHERE r.latency_s <= 5),
           -count(*) FILTER (WHERE r.latency_s <= 10),
           -count(*) FILTER (WHERE r.latency_s <= 20),
           -count(*) FILTER (WHERE r.latency_s <= 30),
           -count(*) FILTER (WHERE r.latency_s <= 60),
           -count(*) FILTER (WHERE r.latency_s <= 120),
           -count(*) FILTER (WHERE r.latency_s <= 300),
           -count(*) FILTER (WHERE r.latency_s <= 600),
           -count(*) FILTER (WHERE r.latency_s <= 1800),
           -count(*) FILTER (WHERE r.latency_s <= 3600),
           -count(*) FILTER (WHERE r.latency_s <= 14400),
           -count(*) FILTER (WHERE r.latency_s <= 86400),
           -count(*) FILTER (WHERE r.latency_s <= 259200)
    FROM (
        SELECT u.device_id, u.at, extract(epoch FROM u.received_at - u.measured_at) AS latency_s
        FROM unnest(device_ids, ats, measured, received) u(device_id, at, measured_at, received_at)
    ) r
    JOIN devices d ON d.device_id = r.device_id
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3  -- the writers' lock order
    ON CONFLICT (bucket, organisation_id, device_type, slot) DO UPDATE SET
        readings = h.readings + excluded.readings,
        le_0s = h.le_0s + excluded.le_0s, le_1s = h.le_1s + excluded.le_1s,
        le_2s = h.le_2s + excluded.le_2s, le_5s = h.le_5s + excluded.le_5s,
        le_10s = h.le_10s + excluded.le_10s, le_20s = h.le_20s + excluded.le_20s,
        le_30s = h.le_30s + excluded.le_30s, le_60s = h.le_60s + excluded.le_60s,
        le_120s = h.le_120s + excluded.le_120s, le_300s = h.le_300s + excluded.le_300s,
        le_600s = h.le_600s + excluded.le_600s, le_1800s = h.le_1800s + excluded.le_1800s,
        le_3600s = h.le_3600s + excluded.le_3600s, le_14400s = h.le_14400s + excluded.le_14400s,
        le_86400s = h.le_86400s + excluded.le_86400s,
        le_259200s = h.le_259200s + excluded.le_259200s;

    INSERT INTO readings_municipality_hourly AS h
        (organisation_id, bucket, municipality, slot, readings,
         le_0s, le_1s, le_2s, le_5s, le_10s, le_20s, le_30s, le_60s,
         le_120s, le_300s, le_600s, le_1800s, le_3600s, le_14400s, le_86400s, le_259200s)
    SELECT d.organisation_id, date_bin('1 hour', r.at, timestamptz '2000-01-01 00:00:00+00'),
           r.municipality, (pg_backend_pid() % 8)::smallint,
           -count(*),
           -count(*) FILTER (WHERE r.latency_s <= 0),
           -count(*) FILTER (WHERE r.latency_s <= 1),
           -count(*) FILTER (WHERE r.latency_s <= 2),
           -count(*) FILTER (WHERE r.latency_s <= 5),
           -count(*) FILTER (WHERE r.latency_s <= 10),
           -count(*) FILTER (WHERE r.latency_s <= 20),
           -count(*) FILTER (WHERE r.latency_s <= 30),
           -count(*) FILTER (WHERE r.latency_s <= 60),
           -count(*) FILTER (WHERE r.latency_s <= 120),
           -count(*) FILTER (WHERE r.latency_s <= 300),
           -count(*) FILTER (WHERE r.latency_s <= 600),
           -count(*) FILTER (WHERE r.latency_s <= 1800),
           -count(*) FILTER (WHERE r.latency_s <= 3600),
           -count(*) FILTER (WHERE r.latency_s <= 14400),
           -count(*) FILTER (WHERE r.latency_s <= 86400),
           -count(*) FILTER (WHERE r.latency_s <= 259200)
    FROM (
        SELECT u.device_id, u.at, coalesce(e.municipality, '') AS municipality,
               extract(epoch FROM u.received_at - u.measured_at) AS latency_s
        FROM unnest(device_ids, ats, measured, received) u(device_id, at, measured_at, received_at)
        LEFT JOIN enrolments e
          ON e.device_id = u.device_id
         AND ehl_pilot_day(u.measured_at) >= e.start_date
         AND (e.end_date IS NULL OR ehl_pilot_day(u.measured_at) <= e.end_date)
    ) r
    JOIN devices d ON d.device_id = r.device_id
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3
    ON CONFLICT (organisation_id, bucket, municipality, slot) DO UPDATE SET
        readings = h.readings + excluded.readings,
        le_0s = h.le_0s + excluded.le_0s, le_1s = h.le_1s + excluded.le_1s,
        le_2s = h.le_2s + excluded.le_2s, le_5s = h.le_5s + excluded.le_5s,
        le_10s = h.le_10s + excluded.le_10s, le_20s = h.le_20s + excluded.le_20s,
        le_30s = h.le_30s + excluded.le_30s, le_60s = h.le_60s + excluded.le_60s,
        le_120s = h.le_120s + excluded.le_120s, le_300s = h.le_300s + excluded.le_300s,
        le_600s = h.le_600s + excluded.le_600s, le_1800s = h.le_1800s + excluded.le_1800s,
        le_3600s = h.le_3600s + excluded.le_3600s, le_14400s = h.le_14400s + excluded.le_14400s,
        le_86400s = h.le_86400s + excluded.le_86400s,
        le_259200s = h.le_259200s + excluded.le_259200s;
END
$$;

-- Readings were deleted: each given device's newest reading (0024, 0026) is set again from
-- what remains, or its row removed when nothing does. One index probe per device
-- (readings_device_measured_idx).
CREATE FUNCTION ehl_device_last_readings_recompute(device_ids text[]) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    DELETE FROM device_last_readings l
    WHERE l.device_id = ANY (device_ids)
      AND NOT EXISTS (SELECT 1 FROM readings r WHERE r.device_id = l.device_id);
    UPDATE device_last_readings l
    SET measured_at = n.measured_at, metric = n.metric, received_at = n.received_at
    FROM (
        SELECT d.device_id, x.measured_at, x.metric, x.received_at
        FROM unnest(device_ids) AS d(device_id)
        CROSS JOIN LATERAL (
            SELECT r.measured_at, r.metric, r.received_at FROM readings r
            WHERE r.device_id = d.device_id
            ORDER BY r.measured_at DESC, r.metric
            LIMIT 1
        ) x
    ) n
    WHERE l.device_id = n.device_id
      AND (l.measured_at, l.metric, l.received_at)
          IS DISTINCT FROM (n.measured_at, n.metric, n.received_at);
END
$$;

-- Readings were deleted: on the plain form the hourly rollup's rows of their (device, metric,
-- hour) are computed again from what remains (min and max cannot be subtracted). On
-- TimescaleDB readings_hourly is a continuous aggregate: the deletion invalidated the hours and
-- the job refreshes them (refresh_continuous_aggregate cannot run inside a transaction).
CREATE FUNCTION ehl_readings_hourly_recompute(
    device_ids text[], metrics text[], ats timestamptz[]
) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    IF ehl_store_form() <> 'plain' THEN
        RETURN;
    END IF;
    CREATE TEMPORARY TABLE IF NOT EXISTS ehl_hours_touched
        (device_id text, metric text, bucket timestamptz) ON COMMIT DROP;
    TRUNCATE ehl_hours_touched;
    INSERT INTO ehl_hours_touched
    SELECT DISTINCT u.device_id, u.metric,
           date_bin('1 hour', u.at, timestamptz '2000-01-01 00:00:00+00')
    FROM unnest(device_ids, metrics, ats) u(device_id, metric, at);
    EXECUTE $q$
        DELETE FROM readings_hourly h USING ehl_hours_touched t
        WHERE h.device_id = t.device_id AND h.metric = t.metric AND h.bucket = t.bucket
    $q$;
    EXECUTE $q$
        INSERT INTO readings_hourly (bucket, device_id, metric, readings, value_sum, value_min,
                                     value_max)
        SELECT t.bucket, t.device_id, t.metric, count(*), sum(r.value), min(r.value),
               max(r.value)
        FROM ehl_hours_touched t
        JOIN readings r ON r.device_id = t.device_id AND r.metric = t.metric
         AND r.at >= t.bucket AND r.at < t.bucket + interval '1 hour'
        GROUP BY 1, 2, 3
        ORDER BY 2, 3, 1
    $q$;
END
$$;

REVOKE EXECUTE ON FUNCTION
    ehl_dashboard_rollups_subtract(text[], timestamptz[], timestamptz[], timestamptz[]),
    ehl_device_last_readings_recompute(text[]),
    ehl_readings_hourly_recompute(text[], text[], timestamptz[])
    FROM PUBLIC;
