-- Each device's newest reading by measurement time, kept by a statement trigger on readings
-- (both forms). The dashboards ask "when did this device last send a reading, as of the
-- range's end?" for every device of a fleet (silent devices, the start-up's device table):
-- one index probe per device into the readings' partitions or chunks cost 25-130 us each,
-- 0.3 s for 10,000 devices. With this table the answer is one row per device whenever the
-- newest reading is not after the range's end — always, for a range that ends now — and only
-- the devices that have readings after the end (a range in the past) are looked up.
--
-- Readings are never updated in time and not deleted today; a deletion (retention, erasure)
-- must set the device's row from what remains.

LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE device_last_readings (
    device_id   text PRIMARY KEY,
    measured_at timestamptz NOT NULL  -- max(measured_at) of the device's readings
);

CREATE FUNCTION ehl_device_last_readings_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_last_readings AS l (device_id, measured_at)
    SELECT n.device_id, max(n.measured_at) FROM new_readings n
    GROUP BY n.device_id
    ORDER BY n.device_id  -- one lock order for every writer
    ON CONFLICT (device_id) DO UPDATE SET measured_at = excluded.measured_at
    WHERE excluded.measured_at > l.measured_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER readings_device_last_readings
    AFTER INSERT ON readings
    REFERENCING NEW TABLE AS new_readings
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_device_last_readings_inserted();

REVOKE EXECUTE ON FUNCTION ehl_device_last_readings_inserted() FROM PUBLIC;

INSERT INTO device_last_readings (device_id, measured_at)
SELECT device_id, max(measured_at) FROM readings GROUP BY device_id;

CREATE VIEW lab_dashboard.device_last_readings WITH (security_barrier) AS
SELECT l.device_id, l.measured_at
FROM public.device_last_readings l;

CREATE VIEW startup_dashboard.device_last_readings WITH (security_barrier) AS
SELECT l.device_id, l.measured_at
FROM public.device_last_readings l
WHERE l.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

-- registered roles read their schema's new views at once (roles.refresh_grants does the same)
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.role_name, d.kind FROM dashboard_roles d
             JOIN pg_roles p ON p.rolname = d.role_name
             WHERE d.kind IN ('lab', 'startup')
    LOOP
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I',
                       r.kind || '_dashboard', r.role_name);
    END LOOP;
END
$$;
