-- The operations dashboard's receive-time panels (readings ingested per second, clock-corrected
-- share, redeliveries) over every organisation, fast at any range (issue 11: p95 < 200 ms).
-- Identical on both forms: `device_messages` is a plain table on both (not a hypertable), so a
-- TimescaleDB continuous aggregate cannot keep this rollup; statement triggers keep it on both.
--
--   * device_messages_received_idx: a short range (Grafana's interval under an hour) reads the
--     message log itself, by receive time, instead of all of it;
--   * messages_hourly: the message log's counts per hour of receive time, kept in the writer's
--     own transaction by statement triggers (INSERT, and UPDATE: ingest adds a redelivery to
--     its message's row), for intervals of an hour or more. No device dimension: its size is
--     hours x slots, whatever the fleet. `slot` is the writing backend's pid modulo 8, so two
--     ingest workers committing at once rarely wait on the same hour's row; read it summed.

-- no message logged while the rollup is filled from the log and its triggers created
LOCK TABLE device_messages IN SHARE ROW EXCLUSIVE MODE;

CREATE INDEX device_messages_received_idx ON device_messages (received_at);

CREATE TABLE messages_hourly (
    bucket          timestamptz NOT NULL,  -- hour of receive time (received_at)
    slot            smallint NOT NULL,
    messages        bigint NOT NULL,
    readings        bigint NOT NULL,
    accepted        bigint NOT NULL,
    duplicates      bigint NOT NULL,
    rejected        bigint NOT NULL,
    redeliveries    bigint NOT NULL,       -- sum(deliveries - 1)
    -- readings accepted from messages whose clock offset exceeded the contract's tolerance
    -- (contract/validation.py CLOCK_TOLERANCE_S = 120 s): their measurement time was corrected
    clock_corrected bigint NOT NULL,
    PRIMARY KEY (bucket, slot)
);

-- messages logged (ingest COPYs them: COPY fires statement triggers too)
CREATE FUNCTION ehl_messages_hourly_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_hourly AS h
        (bucket, slot, messages, readings, accepted, duplicates, rejected, redeliveries,
         clock_corrected)
    SELECT date_bin('1 hour', c.received_at, timestamptz '2000-01-01 00:00:00+00'),
           (pg_backend_pid() % 8)::smallint,
           sum(c.sign), sum(c.sign * c.readings), sum(c.sign * c.accepted),
           sum(c.sign * c.duplicates), sum(c.sign * c.rejected),
           sum(c.sign * (c.deliveries - 1)),
           coalesce(sum(c.sign * c.accepted) FILTER (WHERE abs(c.clock_offset_s) > 120), 0)
    FROM (
        SELECT 1 AS sign, n.received_at, n.readings, n.accepted, n.duplicates, n.rejected,
               n.deliveries, n.clock_offset_s
        FROM new_messages n
    ) c
    GROUP BY 1, 2
    ORDER BY 1  -- one lock order for every writer
    ON CONFLICT (bucket, slot) DO UPDATE SET
        messages        = h.messages + excluded.messages,
        readings        = h.readings + excluded.readings,
        accepted        = h.accepted + excluded.accepted,
        duplicates      = h.duplicates + excluded.duplicates,
        rejected        = h.rejected + excluded.rejected,
        redeliveries    = h.redeliveries + excluded.redeliveries,
        clock_corrected = h.clock_corrected + excluded.clock_corrected;
    RETURN NULL;
END
$$;

-- rows changed (ingest adds redeliveries to deliveries): the new counts less the old
CREATE FUNCTION ehl_messages_hourly_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_hourly AS h
        (bucket, slot, messages, readings, accepted, duplicates, rejected, redeliveries,
         clock_corrected)
    SELECT date_bin('1 hour', c.received_at, timestamptz '2000-01-01 00:00:00+00'),
           (pg_backend_pid() % 8)::smallint,
           sum(c.sign), sum(c.sign * c.readings), sum(c.sign * c.accepted),
           sum(c.sign * c.duplicates), sum(c.sign * c.rejected),
           sum(c.sign * (c.deliveries - 1)),
           coalesce(sum(c.sign * c.accepted) FILTER (WHERE abs(c.clock_offset_s) > 120), 0)
    FROM (
        SELECT 1 AS sign, n.received_at, n.readings, n.accepted, n.duplicates, n.rejected,
               n.deliveries, n.clock_offset_s
        FROM new_messages n
        UNION ALL
        SELECT -1, o.received_at, o.readings, o.accepted, o.duplicates, o.rejected,
               o.deliveries, o.clock_offset_s
        FROM old_messages o
    ) c
    GROUP BY 1, 2
    ORDER BY 1  -- one lock order for every writer
    ON CONFLICT (bucket, slot) DO UPDATE SET
        messages        = h.messages + excluded.messages,
        readings        = h.readings + excluded.readings,
        accepted        = h.accepted + excluded.accepted,
        duplicates      = h.duplicates + excluded.duplicates,
        rejected        = h.rejected + excluded.rejected,
        redeliveries    = h.redeliveries + excluded.redeliveries,
        clock_corrected = h.clock_corrected + excluded.clock_corrected;
    RETURN NULL;
END
$$;

-- as 0019 does for the platform's functions: not callable by PUBLIC (the dashboard roles)
REVOKE EXECUTE ON FUNCTION ehl_messages_hourly_insert(), ehl_messages_hourly_update()
    FROM PUBLIC;

CREATE TRIGGER messages_hourly_inserted
    AFTER INSERT ON device_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_messages_hourly_insert();

CREATE TRIGGER messages_hourly_updated
    AFTER UPDATE ON device_messages
    REFERENCING OLD TABLE AS old_messages NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_messages_hourly_update();

INSERT INTO messages_hourly
    (bucket, slot, messages, readings, accepted, duplicates, rejected, redeliveries,
     clock_corrected)
SELECT date_bin('1 hour', received_at, timestamptz '2000-01-01 00:00:00+00'), 0,
       count(*), sum(readings), sum(accepted), sum(duplicates), sum(rejected),
       sum(deliveries - 1),
       coalesce(sum(accepted) FILTER (WHERE abs(clock_offset_s) > 120), 0)
FROM device_messages
GROUP BY 1;

CREATE VIEW lab_dashboard.messages_hourly WITH (security_barrier) AS
SELECT h.bucket, h.slot, h.messages, h.readings, h.accepted, h.duplicates, h.rejected,
       h.redeliveries, h.clock_corrected
FROM public.messages_hourly h;

-- the lab's registered role reads the new view at once (roles.refresh_grants does the same)
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.role_name FROM dashboard_roles d
             JOIN pg_roles p ON p.rolname = d.role_name
             WHERE d.kind = 'lab'
    LOOP
        EXECUTE format('GRANT SELECT ON lab_dashboard.messages_hourly TO %I', r.role_name);
    END LOOP;
END
$$;
