-- A patient-day already in the rollups costs a batch less (issue 13). A batch's readings of a
-- patient's day that has counts already go through ON CONFLICT DO UPDATE, which summed the two
-- days' counts twice (once to store, once to judge), each time with a SQL function whose body
-- is a sub-select: it is never inlined, and ran as a query of its own, about 15 us a call here.
-- At the batch sizes of a steady load (tens of readings from as many patients) that was most of
-- the dashboards' rollup trigger: about 2.7 ms of a batch of 50 readings from 40 patients.
--
--   * ehl_jsonb_counts_add adds b's counts into a key by key (PL/pgSQL, jsonb_set): about
--     5 us a call against 15 for the same sums (4,000 pairs of three metrics; the results
--     compared equal on every pair);
--   * ehl_dashboard_rollups_add sums a day's counts once and judges that sum.

CREATE OR REPLACE FUNCTION ehl_jsonb_counts_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k text;
BEGIN
    FOR k IN SELECT jsonb_object_keys(b) LOOP
        a := jsonb_set(a, ARRAY[k], to_jsonb(coalesce((a ->> k)::bigint, 0) + (b ->> k)::bigint));
    END LOOP;
    RETURN a;
END
$$;

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
        -- the day's counts with the batch's added, summed once, and judged as they are stored
        -- (OFFSET 0: the sum is not copied into the judgement's arguments and done twice)
        (counts, adherent, taken) = (SELECT s.counts, j.adherent, j.taken
                                     FROM (SELECT ehl_jsonb_counts_add(h.counts, excluded.counts)
                                                  AS counts OFFSET 0) s
                                     CROSS JOIN LATERAL ehl_patient_day_judgement(
                                         h.patient_id, h.day, s.counts) j);
END
$$;
