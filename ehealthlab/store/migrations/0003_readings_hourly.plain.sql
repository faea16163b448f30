-- Hourly rollup, plain PostgreSQL form: a table kept current inside the writer's own
-- transaction by a statement trigger (only rows really inserted reach it, so duplicates
-- skipped by ON CONFLICT DO NOTHING are never counted twice).
CREATE TABLE readings_hourly (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    readings  bigint NOT NULL,
    value_sum double precision NOT NULL,
    value_min double precision NOT NULL,
    value_max double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);

CREATE FUNCTION ehl_readings_hourly_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO readings_hourly AS h
        (bucket, device_id, metric, readings, value_sum, value_min, value_max)
    SELECT date_bin('1 hour', at, timestamptz '2000-01-01 00:00:00+00'), device_id, metric,
           count(*), sum(value), min(value), max(value)
    FROM inserted_readings
    GROUP BY 1, 2, 3
    ORDER BY 2, 3, 1  -- one lock order for every writer: no deadlocks between workers
    ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
        readings  = h.readings + excluded.readings,
        value_sum = h.value_sum + excluded.value_sum,
        value_min = least(h.value_min, excluded.value_min),
        value_max = greatest(h.value_max, excluded.value_max);
    RETURN NULL;
END
$$;

CREATE TRIGGER readings_hourly_current
    AFTER INSERT ON readings
    REFERENCING NEW TABLE AS inserted_readings
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_readings_hourly_apply();
