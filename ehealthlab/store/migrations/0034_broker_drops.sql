-- What the broker says it dropped. Mosquitto 2.0 drops a QoS 1 message past a session's
-- max_queued_messages after it PUBACKed it to the device, so neither the device nor ingest
-- ever sees it; the broker only counts it in $SYS/broker/publish/messages/dropped (and logs
-- a NOTICE). The presence leader (gateway/presence.py) subscribes to that counter and
-- records here each value that differs from the last one recorded (gateway/broker_watch.py):
-- `dropped` is what is new since then, the loss the seq gaps would otherwise blame on devices.
-- A plain table on both store forms: a row per change, not per 10 s report.
CREATE TABLE broker_drops (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    observed_at   timestamptz NOT NULL,
    -- the broker's counter: messages dropped since the broker started
    dropped_total bigint NOT NULL CHECK (dropped_total >= 0),
    -- new since the previous row: the difference, or the whole counter after a restart
    dropped       bigint NOT NULL CHECK (dropped >= 0)
);
CREATE INDEX broker_drops_observed_idx ON broker_drops (observed_at);

CREATE VIEW lab_dashboard.broker_drops WITH (security_barrier) AS
SELECT b.id, b.observed_at, b.dropped_total, b.dropped
FROM public.broker_drops b;

-- the lab's registered role reads the new view at once (roles.refresh_grants does the same)
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.role_name FROM dashboard_roles d
             JOIN pg_roles p ON p.rolname = d.role_name
             WHERE d.kind = 'lab'
    LOOP
        EXECUTE format('GRANT SELECT ON lab_dashboard.broker_drops TO %I', r.role_name);
    END LOOP;
END
$$;
