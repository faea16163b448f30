-- Hourly rollup, TimescaleDB form: a continuous aggregate with the same name and columns
-- as the plain form's table, answering in real time (materialized_only = false).
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', at) AS bucket, device_id, metric,
       count(*) AS readings, sum(value) AS value_sum, min(value) AS value_min,
       max(value) AS value_max
FROM readings
GROUP BY 1, 2, 3
WITH NO DATA;

-- Refresh whatever was invalidated (a late backlog included), every 30 minutes.
SELECT add_continuous_aggregate_policy(
    'readings_hourly',
    start_offset => NULL,
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes'
);
