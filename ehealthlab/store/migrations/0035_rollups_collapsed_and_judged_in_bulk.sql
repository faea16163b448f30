-- A batch of readings costs the dashboards' rollups (0022) and the patient-days' judgement
-- (0023) less (issue 13: in ingest's transaction PostgreSQL takes most of the CPU, and the
-- rollup trigger was about 40 % of the readings' INSERT). Same tables, same figures:
--
--   * ehl_dashboard_rollups_add collapses the batch once -- a row per device, hour, pilot day,
--     patient, metric and latency class -- and fills the three rollups from that in one
--     statement. It unnested the arrays three times and summed 16 FILTERs over every reading
--     with a numeric latency. The latency class is how many of the histogram's bounds the
--     latency (a float now) is at or below: width_bucket over the negated bounds. At the
--     bounds, whole seconds, a float compares as the numeric did (to the microsecond).
--   * A patient-day is judged in the statement that writes its counts, by
--     ehl_patient_day_judgement (a SQL set-returning function, which the planner inlines),
--     no longer by a row trigger: the trigger ran a PL/pgSQL query for each patient-day,
--     about 37 us each here, and a batch from a thousand patients touches a thousand days.
--     The enrolments' triggers and the rebuild judge with the same function.
--
-- Measured on a batch of 1,000 single readings (ehl_dashboard_rollups_add alone): from 40
-- devices 26 -> 18 ms, from 1,000 devices 70 -> 46 ms (medians of 12, docs/benchmarks.md).

-- Whether a patient's day, with these readings by metric, meets the care plans of the
-- enrolments covering it (adherent: every planned metric has a reading), and the readings
-- counted against them (taken: each metric's capped at its plan's readings per day; a metric
-- two plans name counts for each). One row, also when no plan covers the day.
CREATE FUNCTION ehl_patient_day_judgement(the_patient uuid, the_day date, the_counts jsonb)
RETURNS TABLE (adherent boolean, taken bigint)
LANGUAGE sql STABLE AS $$
SELECT coalesce(bool_and(coalesce((the_counts ->> p.key)::int, 0) > 0), false),
       coalesce(sum(least(coalesce((the_counts ->> p.key)::int, 0), p.value::int)), 0)
FROM enrolments e
CROSS JOIN LATERAL jsonb_each_text(e.care_plan) p
WHERE e.patient_id = the_patient
  AND the_day >= e.start_date
  AND (e.end_date IS NULL OR the_day <= e.end_date)
$$;

DROP TRIGGER readings_patient_daily_judged ON readings_patient_daily;
DROP FUNCTION ehl_patient_day_judged();

-- Add readings to the rollups. `attributed_now`: these readings were stored unassigned and an
-- enrolment has just given them a patient, so they move from municipality '' to the
-- enrolment's and count for the patient (the fleet rollup has them already).
CREATE OR REPLACE FUNCTION ehl_dashboard_rollups_add(
    attributed_now boolean, device_ids text[], metrics text[], ats timestamptz[],
    measured timestamptz[], received timestamptz[], patients uuid[]
) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    WITH g AS MATERIALIZED (  -- the batch, collapsed
        SELECT u.device_id,
               date_bin('1 hour', u.at, timestamptz '2000-01-01 00:00:00+00') AS bucket,
               ehl_pilot_day(u.measured_at) AS day, u.patient_id, u.metric,
               -- 16: at or below 0 s (every bound), ..., 1: at or below 259200 s, 0: above
               width_bucket(-date_part('epoch', u.received_at - u.measured_at),
                            '{-259200, -86400, -14400, -3600, -1800, -600, -300, -120,
                              -60, -30, -20, -10, -5, -2, -1, 0}'::float8[]) AS within,
               count(*)::int AS n
        FROM unnest(device_ids, metrics, ats, measured, received, patients)
             u(device_id, metric, at, measured_at, received_at, patient_id)
        GROUP BY 1, 2, 3, 4, 5, 6
    ),
    d AS MATERIALIZED (  -- with the device's start-up and type, the enrolment's municipality
        SELECT g.bucket, g.within, g.n, dev.organisation_id AS startup, dev.device_type,
               coalesce(e.municipality, '') AS municipality
        FROM g JOIN devices dev ON dev.device_id = g.device_id
        LEFT JOIN enrolments e
          ON e.device_id = g.device_id AND g.day >= e.start_date
         AND (e.end_date IS NULL OR g.day <= e.end_date)
    ),
    fleet AS (
        INSERT INTO readings_fleet_hourly AS h
            (bucket, organisation_id, device_type, slot, readings,
             le_0s, le_1s, le_2s, le_5s, le_10s, le_20s, le_30s, le_60s,
             le_120s, le_300s, le_600s, le_1800s, le_3600s, le_14400s, le_86400s, le_259200s)
        SELECT d.bucket, d.startup, d.device_type, (pg_backend_pid() % 8)::smallint, sum(d.n),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 16), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 15), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 14), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 13), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 12), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 11), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 10), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 9), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 8), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 7), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 6), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 5), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 4), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 3), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 2), 0),
               coalesce(sum(d.n) FILTER (WHERE d.within >= 1), 0)
        FROM d
        WHERE NOT attributed_now
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3  -- one lock order for every writer
        ON CONFLICT (bucket, organisation_id, device_type, slot) DO UPDATE SET
            readings = h.readings + excluded.readings,
            le_0s = h.le_0s + excluded.le_0s, le_1s = h.le_1s + excluded.le_1s,
            le_2s = h.le_2s + excluded.le_2s, le_5s = h.le_5s + excluded.le_5s,
            le_10s = h.le_10s + excluded.le_10s, le_20s = h.le_20s + excluded.le_20s,
            le_30s = h.le_30s + excluded.le_30s, le_60s = h.le_60s + excluded.le_60s,
            le_120s = h.le_120s + excluded.le_120s, le_300s = h.le_300s + excluded.le_300s,
            le_600s = h.le_600s + excluded.le_600s, le_1800s = h.le_1800s + excluded.le_1800s,
            le_3600s = h.le_3600s + excluded.le_3600s,
            le_14400s = h.le_14400s + excluded.le_14400s,
            le_86400s = h.le_86400s + excluded.le_86400s,
            le_259200s = h.le_259200s + excluded.le_259200s
    ),
    municipal AS (
        INSERT INTO readings_municipality_hourly AS h
            (organisation_id, bucket, municipality, slot, readings,
             le_0s, le_1s, le_2s, le_5s, le_10s, le_20s, le_30s, le_60s,
             le_120s, le_300s, le_600s, le_1800s, le_3600s, le_14400s, le_86400s, le_259200s)
        SELECT m.startup, m.bucket, m.municipality, (pg_backend_pid() % 8)::smallint, sum(m.n),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 16), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 15), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 14), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 13), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 12), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 11), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 10), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 9), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 8), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 7), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 6), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 5), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 4), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 3), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 2), 0),
               coalesce(sum(m.n) FILTER (WHERE m.within >= 1), 0)
        FROM (SELECT d.startup, d.bucket, d.municipality, d.within, d.n FROM d
              UNION ALL
              SELECT d.startup, d.bucket, '', d.within, -d.n FROM d WHERE attributed_now) m
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3  -- one lock order for every writer
        ON CONFLICT (organisation_id, bucket, municipality, slot) DO UPDATE SET
            readings = h.readings + excluded.readings,
            le_0s = h.le_0s + excluded.le_0s, le_1s = h.le_1s + excluded.le_1s,
            le_2s = h.le_2s + excluded.le_2s, le_5s = h.le_5s + excluded.le_5s,
            le_10s = h.le_10s + excluded.le_10s, le_20s = h.le_20s + excluded.le_20s,
            le_30s = h.le_30s + excluded.le_30s, le_60s = h.le_60s + excluded.le_60s,
            le_120s = h.le_120s + excluded.le_120s, le_300s = h.le_300s + excluded.le_300s,
            le_600s = h.le_600s + excluded.le_600s, le_1800s = h.le_1800s + excluded.le_1800s,
            le_3600s = h.le_3600s + excluded.le_3600s,
            le_14400s = h.le_14400s + excluded.le_14400s,
            le_86400s = h.le_86400s + excluded.le_86400s,
            le_259200s = h.le_259200s + excluded.le_259200s
    )
    INSERT INTO readings_patient_daily AS h
        (organisation_id, day, patient_id, counts, adherent, taken)
    SELECT c.organisation_id, c.day, c.patient_id, c.counts, j.adherent, j.taken
    FROM (SELECT b.organisation_id, b.day, b.patient_id, jsonb_object_agg(b.metric, b.n) AS counts
          FROM (SELECT p.organisation_id, g.day, g.patient_id, g.metric, sum(g.n) AS n
                FROM g JOIN patients p ON p.id = g.patient_id
                GROUP BY 1, 2, 3, 4) b
          GROUP BY 1, 2, 3) c
    CROSS JOIN LATERAL ehl_patient_day_judgement(c.patient_id, c.day, c.counts) j
    ORDER BY 1, 2, 3  -- one lock order for every writer
    ON CONFLICT (organisation_id, day, patient_id) DO UPDATE SET
        counts = ehl_jsonb_counts_add(h.counts, excluded.counts),
        -- judged on the day's counts with the batch's added, as they are stored
        (adherent, taken) = (SELECT j.adherent, j.taken
                             FROM ehl_patient_day_judgement(
                                 h.patient_id, h.day,
                                 ehl_jsonb_counts_add(h.counts, excluded.counts)) j);
END
$$;

-- An enrolment changed: its patient's days it covered or covers now are judged again.
CREATE OR REPLACE FUNCTION ehl_patient_days_rejudged_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h
    SET (adherent, taken) = (SELECT j.adherent, j.taken
                             FROM ehl_patient_day_judgement(h.patient_id, h.day, h.counts) j)
    FROM new_enrolments n
    WHERE h.patient_id = n.patient_id AND h.day >= n.start_date
      AND (n.end_date IS NULL OR h.day <= n.end_date);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION ehl_patient_days_rejudged_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h
    SET (adherent, taken) = (SELECT j.adherent, j.taken
                             FROM ehl_patient_day_judgement(h.patient_id, h.day, h.counts) j)
    FROM (SELECT patient_id, start_date, end_date FROM old_enrolments
          UNION
          SELECT patient_id, start_date, end_date FROM new_enrolments) c
    WHERE h.patient_id = c.patient_id AND h.day >= c.start_date
      AND (c.end_date IS NULL OR h.day <= c.end_date);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION ehl_patient_days_rejudged_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h
    SET (adherent, taken) = (SELECT j.adherent, j.taken
                             FROM ehl_patient_day_judgement(h.patient_id, h.day, h.counts) j)
    FROM old_enrolments o
    WHERE h.patient_id = o.patient_id AND h.day >= o.start_date
      AND (o.end_date IS NULL OR h.day <= o.end_date);
    RETURN NULL;
END
$$;

-- As 0031's, the patient-days kept before the retention horizon judged as they are written.
CREATE OR REPLACE FUNCTION ehl_dashboard_rollups_rebuild() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz := (SELECT date_bin('1 hour', max(cutoff), timestamptz '2000-01-01')
                            FROM retention_runs);
    day_start timestamptz;
    last_at timestamptz := (SELECT max(at) FROM readings);
BEGIN
    IF horizon IS NULL THEN
        TRUNCATE readings_fleet_hourly, readings_municipality_hourly, readings_patient_daily;
        day_start := date_trunc('day', (SELECT min(at) FROM readings));
    ELSE
        DELETE FROM readings_fleet_hourly WHERE bucket >= horizon;
        DELETE FROM readings_municipality_hourly WHERE bucket >= horizon;
        TRUNCATE readings_patient_daily;
        -- the readings kept in hours before the horizon (measured after the cutoff, a clock
        -- behind) count for their patients; their hours are kept as they are
        INSERT INTO readings_patient_daily
            (organisation_id, day, patient_id, counts, adherent, taken)
        SELECT c.organisation_id, c.day, c.patient_id, c.counts, j.adherent, j.taken
        FROM (
            SELECT b.organisation_id, b.day, b.patient_id, jsonb_object_agg(b.metric, b.n)
                       AS counts
            FROM (
                SELECT p.organisation_id, ehl_pilot_day(r.measured_at) AS day, r.patient_id,
                       r.metric, count(*) AS n
                FROM readings r
                JOIN patients p ON p.id = r.patient_id
                WHERE r.at < horizon
                GROUP BY 1, 2, 3, 4
            ) b
            GROUP BY 1, 2, 3
        ) c
        CROSS JOIN LATERAL ehl_patient_day_judgement(c.patient_id, c.day, c.counts) j;
        day_start := greatest(horizon, date_trunc('day', (SELECT min(at) FROM readings
                                                          WHERE at >= horizon)));
    END IF;
    -- a day of `at` at a time, so a year of a pilot never sits in memory at once
    WHILE day_start <= last_at LOOP
        PERFORM ehl_dashboard_rollups_add(
            false, array_agg(r.device_id), array_agg(r.metric), array_agg(r.at),
            array_agg(r.measured_at), array_agg(r.received_at), array_agg(r.patient_id))
        FROM readings r
        WHERE r.at >= day_start AND r.at < day_start + interval '1 day'
        HAVING count(*) > 0;
        day_start := day_start + interval '1 day';
    END LOOP;
    RETURN (SELECT count(*) FROM readings);
END
$$;

-- as 0022: the platform's functions are not PUBLIC's to call (the dashboard roles)
REVOKE EXECUTE ON FUNCTION ehl_patient_day_judgement(uuid, date, jsonb),
    ehl_dashboard_rollups_add(boolean, text[], text[], timestamptz[], timestamptz[],
                              timestamptz[], uuid[]),
    ehl_dashboard_rollups_rebuild(), ehl_patient_days_rejudged_inserted(),
    ehl_patient_days_rejudged_updated(), ehl_patient_days_rejudged_deleted()
    FROM PUBLIC;
