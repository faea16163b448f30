-- ehl_dashboard_rollups_rebuild() (0022) truncated the three rollups and filled them from the
-- readings. After a retention run (0029) that forgot the start-ups' anonymous history, which
-- retention keeps on purpose (docs/reliability-privacy.md): readings_fleet_hourly and
-- readings_municipality_hourly rows before the newest retention cutoff are now kept as they
-- are, and only the hours from there on are rebuilt from the readings. readings_patient_daily
-- is rebuilt whole, as before: retention deleted its past days with the readings, so the
-- readings give it exactly. The hours from the cutoff on count what remains: a reading whose
-- device clock ran ahead of its measurement, deleted by its measurement time, no longer counts
-- in the hour its clock gave. With no retention run recorded, the rebuild is 0022's.

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
        INSERT INTO readings_patient_daily (organisation_id, day, patient_id, counts)
        SELECT c.organisation_id, c.day, c.patient_id, jsonb_object_agg(c.metric, c.n)
        FROM (
            SELECT p.organisation_id, ehl_pilot_day(r.measured_at) AS day, r.patient_id,
                   r.metric, count(*) AS n
            FROM readings r
            JOIN patients p ON p.id = r.patient_id
            WHERE r.at < horizon
            GROUP BY 1, 2, 3, 4
        ) c
        GROUP BY 1, 2, 3;
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

REVOKE EXECUTE ON FUNCTION ehl_dashboard_rollups_rebuild() FROM PUBLIC;
