-- Readings, TimescaleDB form: a hypertable on `at`, compressed after 30 days.
-- Keep the column list identical to 0002_readings.plain.sql (a test compares them).
CREATE EXTENSION IF NOT EXISTS timescaledb;

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
);
SELECT create_hypertable(
    'readings', 'at', chunk_time_interval => INTERVAL '7 days', create_default_indexes => false
);
CREATE INDEX readings_patient_idx ON readings (patient_id, measured_at);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'at DESC'
);
SELECT add_compression_policy('readings', INTERVAL '30 days');
-- Pilot data are kept ten years; the hourly rollup outlives them.
SELECT add_retention_policy('readings', INTERVAL '10 years');

-- TimescaleDB creates chunks itself; the function exists so the writer's SQL is one.
CREATE FUNCTION ehl_ensure_reading_partitions(ats timestamptz[]) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;

CREATE FUNCTION ehl_store_form() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'timescale' $$;
