-- Readings, plain PostgreSQL form: native range partitioning by month of `at`.
-- Keep the column list identical to 0002_readings.timescale.sql (a test compares them).
CREATE TABLE readings (
    device_id       text NOT NULL,
    metric          text NOT NULL,
    at              timestamptz NOT NULL,       -- time of measurement, device clock, as sent
    value           double precision NOT NULL,  -- in the metric's canonical UCUM unit
    measured_at     timestamptz NOT NULL,       -- `at`, clock-corrected when |offset| > 120 s
    received_at     timestamptz NOT NULL,
    seq             bigint NOT NULL,
    msg_id          text NOT NULL,
    clock_offset_s  real NOT NULL,              -- receive time - sent_at of its message
    clock_corrected boolean NOT NULL,
    reported_unit   text,                       -- the unit the device used, when not canonical
    patient_id      uuid,                       -- null: unassigned (no enrolment covers it yet)
    PRIMARY KEY (device_id, metric, at)
) PARTITION BY RANGE (at);
CREATE INDEX readings_patient_idx ON readings (patient_id, measured_at);

-- Creates the monthly partitions (UTC months) that the given times fall in, if missing.
-- The writer calls it, in a short transaction of its own, for months it has not seen yet.
CREATE FUNCTION ehl_ensure_reading_partitions(ats timestamptz[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start date;
    part_name   text;
    created     integer := 0;
BEGIN
    FOR month_start IN
        SELECT DISTINCT date_trunc('month', t AT TIME ZONE 'UTC')::date FROM unnest(ats) AS t
        WHERE t IS NOT NULL
    LOOP
        part_name := 'readings_p' || to_char(month_start, 'YYYYMM');
        CONTINUE WHEN to_regclass(part_name) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtext('ehl_ensure_reading_partitions'));
        CONTINUE WHEN to_regclass(part_name) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
            part_name,
            month_start::timestamp AT TIME ZONE 'UTC',
            (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'
        );
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE FUNCTION ehl_store_form() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'plain' $$;
