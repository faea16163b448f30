-- Database roles for Grafana (issue 11; docs/dashboard-roles.md). Identical on both physical
-- forms of the store: `readings_hourly` has the same columns as a table (plain) and as a
-- continuous aggregate (TimescaleDB), so the views over it are the same SQL.
--
-- Grafana has one organisation per health provider and per start-up; each one's PostgreSQL
-- data source logs in as a role of its own, which must read only its organisation's rows
-- whatever SQL it sends. Operations and CMTo share one read-only role (kind `lab`). No
-- dashboard role can write anything. `ehealthlab dashboards roles` creates the roles
-- (ehealthlab/dashboards/roles.py) and records them in `dashboard_roles`.
--
-- Why security-barrier views and not CREATE POLICY on the tables:
--   * TimescaleDB chunks inherit the hypertable's GRANTs but not its row-level security
--     policies: a role that may read `readings` may read `_timescaledb_internal._hyper_*`
--     chunks directly, unfiltered (timescale/timescaledb#7830);
--   * a continuous aggregate (`readings_hourly` in the TimescaleDB form) cannot carry RLS at
--     all (timescale/timescaledb#5787).
-- So the dashboard roles get no privilege on any table, partition, chunk or rollup: only
-- USAGE on their one schema below and SELECT on its views. The views belong to the migration
-- owner, so they read the tables with its privileges, and each restricts its rows to the
-- organisation of `current_user` (inside a view `current_user` is still the role that sent
-- the query). Every view is WITH (security_barrier): a condition or function in the caller's
-- query is evaluated only on rows the view already let through (unless it is leakproof), so
-- not even an error raised by the caller's WHERE clause can reveal another organisation's row.
--
-- The organisation of `current_user` is looked up by a view (`ehl_dashboard_organisation`)
-- rather than a SECURITY DEFINER function: inside a SECURITY DEFINER function `current_user`
-- is the function's owner, not the caller; and a function called in a view is checked against
-- the caller (it needs EXECUTE on it), whereas a view referenced in a view is read with the
-- outer view's owner's privileges. So a dashboard role needs nothing but SELECT on its own
-- views, and has nothing to call. The restriction is an uncorrelated scalar subquery, computed
-- once per query (an InitPlan) and compared with indexed columns: `readings` of a provider go
-- through readings_patient_idx (patient_id, measured_at), of a start-up through
-- readings_device_measured_idx (device_id, measured_at).
--
-- A role whose registry row is gone (its organisation deleted: ON DELETE CASCADE) sees no row
-- in the provider and start-up views even before `revoke` drops it.

CREATE TABLE dashboard_roles (
    role_name       name PRIMARY KEY,
    -- the provider or start-up whose rows the role reads; null for the `lab` role
    organisation_id uuid REFERENCES organisations (id) ON DELETE CASCADE,
    -- provider: provider_dashboard; startup: startup_dashboard; lab (operations and CMTo):
    -- lab_dashboard, every row
    kind            text NOT NULL CHECK (kind IN ('provider', 'startup', 'lab')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'lab') = (organisation_id IS NULL)),
    UNIQUE (organisation_id)
);
-- one lab role per database
CREATE UNIQUE INDEX dashboard_roles_one_lab_idx ON dashboard_roles (kind) WHERE kind = 'lab';
REVOKE ALL ON TABLE dashboard_roles FROM PUBLIC;

-- The organisation (and kind) of the role sending the query; no row for any other role.
-- Read only from the views below, with their owner's privileges; granted to no one.
CREATE VIEW ehl_dashboard_organisation AS
SELECT r.organisation_id, r.kind
FROM dashboard_roles r
WHERE r.role_name = current_user;
REVOKE ALL ON TABLE ehl_dashboard_organisation FROM PUBLIC;

-- The platform's own functions are for the platform: PUBLIC may execute any new function,
-- and a dashboard role could otherwise call them (ehl_ensure_reading_partitions creates
-- tables). Their owner keeps EXECUTE. The views below call none of them.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'ehl\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;


-- == provider_dashboard: a health provider's patients and what concerns them ==============
CREATE SCHEMA provider_dashboard;
REVOKE ALL ON SCHEMA provider_dashboard FROM PUBLIC;
COMMENT ON SCHEMA provider_dashboard IS
    'Grafana views of a health provider: only its own patients'' rows (dashboard role kind provider)';

-- The provider itself (for titles and links).
CREATE VIEW provider_dashboard.organisation WITH (security_barrier) AS
SELECT o.id, o.kind, o.name, o.simulated
FROM public.organisations o
WHERE o.id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
              WHERE d.kind = 'provider');

-- Pseudonymous patients: id and the provider's own display label; never identifier_hash.
CREATE VIEW provider_dashboard.patients WITH (security_barrier) AS
SELECT p.id, p.label, p.created_at
FROM public.patients p
WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                           WHERE d.kind = 'provider');

CREATE VIEW provider_dashboard.enrolments WITH (security_barrier) AS
SELECT e.id, e.patient_id, e.device_id, e.municipality, e.start_date, e.end_date, e.care_plan,
       e.created_at
FROM public.enrolments e
WHERE e.patient_id IN (
    SELECT p.id FROM public.patients p
    WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                               WHERE d.kind = 'provider'));

-- Readings attributed to the provider's patients (a semi-join: readings_patient_idx).
CREATE VIEW provider_dashboard.readings WITH (security_barrier) AS
SELECT r.patient_id, r.device_id, r.metric, r.at, r.measured_at, r.received_at, r.value,
       r.seq, r.msg_id, r.clock_offset_s, r.clock_corrected, r.reported_unit
FROM public.readings r
WHERE r.patient_id IN (
    SELECT p.id FROM public.patients p
    WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                               WHERE d.kind = 'provider'));

-- The hourly rollup has no patient: an hour of a device belongs to the patient whose
-- enrolment with the device covers that hour's pilot day (Europe/Rome; hourly buckets never
-- straddle its midnight). Enrolments of a device never overlap, so each hour has at most one
-- patient. The rollup buckets a reading by `at` while readings are attributed by measured_at:
-- an hour at the edge of an enrolment may count a clock-corrected reading of the device's
-- previous or next patient; per-patient figures that must be exact read `readings`.
CREATE VIEW provider_dashboard.readings_hourly WITH (security_barrier) AS
SELECT h.bucket, e.patient_id, h.device_id, h.metric, h.readings, h.value_sum, h.value_min,
       h.value_max
FROM public.readings_hourly h
JOIN public.enrolments e
  ON e.device_id = h.device_id
 AND (h.bucket AT TIME ZONE 'Europe/Rome')::date >= e.start_date
 AND (e.end_date IS NULL OR (h.bucket AT TIME ZONE 'Europe/Rome')::date <= e.end_date)
WHERE e.patient_id IN (
    SELECT p.id FROM public.patients p
    WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                               WHERE d.kind = 'provider'));

-- acknowledged_by (an API token's id) is left out.
CREATE VIEW provider_dashboard.alerts WITH (security_barrier) AS
SELECT a.id, a.patient_id, a.rule, a.day, a.device_id, a.metric, a.at, a.value, a.measured_at,
       a.raised_at, a.acknowledged_at
FROM public.alerts a
WHERE a.patient_id IN (
    SELECT p.id FROM public.patients p
    WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                               WHERE d.kind = 'provider'));

-- Devices now with the provider's patients (an enrolment covering today's pilot day): what
-- they are, their presence and when anything last came from them. A device's earlier or later
-- patients may be another provider's, so only the current enrolment shows it.
CREATE VIEW provider_dashboard.devices WITH (security_barrier) AS
SELECT dv.device_id, e.patient_id, e.id AS enrolment_id, dv.device_type, dv.model, dv.serial,
       dv.firmware, dv.status, dv.status_at, dv.last_seen_at, dv.revoked_at, dv.simulated
FROM public.devices dv
JOIN public.enrolments e
  ON e.device_id = dv.device_id
 AND e.start_date <= (now() AT TIME ZONE 'Europe/Rome')::date
 AND (e.end_date IS NULL OR e.end_date >= (now() AT TIME ZONE 'Europe/Rome')::date)
WHERE e.patient_id IN (
    SELECT p.id FROM public.patients p
    WHERE p.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                               WHERE d.kind = 'provider'));

CREATE VIEW provider_dashboard.municipalities WITH (security_barrier) AS
SELECT m.istat_code, m.name, m.population, m.population_year, m.latitude, m.longitude,
       m.area_km2, m.snai_class, m.snai_class_label, m.snai_travel_time_min,
       m.snai_reference_pole_istat_code, m.snai_reference_pole_name,
       m.snai_project_area_2014_2020, m.is_province_capital, m.area
FROM public.municipalities m;


-- == startup_dashboard: a start-up's devices and how their data arrive ====================
CREATE SCHEMA startup_dashboard;
REVOKE ALL ON SCHEMA startup_dashboard FROM PUBLIC;
COMMENT ON SCHEMA startup_dashboard IS
    'Grafana views of a start-up: only its own devices'' rows, no patient (dashboard role kind startup)';

CREATE VIEW startup_dashboard.organisation WITH (security_barrier) AS
SELECT o.id, o.kind, o.name, o.simulated
FROM public.organisations o
WHERE o.id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
              WHERE d.kind = 'startup');

CREATE VIEW startup_dashboard.devices WITH (security_barrier) AS
SELECT dv.device_id, dv.device_type, dv.model, dv.serial, dv.firmware, dv.created_at,
       dv.revoked_at, dv.status, dv.status_at, dv.last_seen_at, dv.password_set_at,
       dv.simulated
FROM public.devices dv
WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                            WHERE d.kind = 'startup');

-- The start-up's devices' readings, without the patient they are attributed to.
CREATE VIEW startup_dashboard.readings WITH (security_barrier) AS
SELECT r.device_id, r.metric, r.at, r.measured_at, r.received_at, r.value, r.seq, r.msg_id,
       r.clock_offset_s, r.clock_corrected, r.reported_unit
FROM public.readings r
WHERE r.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

CREATE VIEW startup_dashboard.readings_hourly WITH (security_barrier) AS
SELECT h.bucket, h.device_id, h.metric, h.readings, h.value_sum, h.value_min, h.value_max
FROM public.readings_hourly h
WHERE h.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

-- Dead letters: why a reading was refused; the raw payload is left out (payload_bytes stays).
CREATE VIEW startup_dashboard.rejected_readings WITH (security_barrier) AS
SELECT x.id, x.received_at, x.device_id, x.msg_id, x.item_index, x.seq, x.metric, x.at,
       x.measured_at, x.reason, x.detail, x.payload_bytes
FROM public.rejected_readings x
WHERE x.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

CREATE VIEW startup_dashboard.duplicate_readings WITH (security_barrier) AS
SELECT x.id, x.received_at, x.device_id, x.metric, x.at, x.measured_at, x.seq, x.msg_id
FROM public.duplicate_readings x
WHERE x.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

-- One row per readings message: QoS, size, counts, clock offset, backlog (no digests).
CREATE VIEW startup_dashboard.device_messages WITH (security_barrier) AS
SELECT x.id, x.device_id, x.received_at, x.msg_id, x.qos, x.payload_bytes, x.readings,
       x.accepted, x.duplicates, x.rejected, x.clock_offset_s, x.oldest_at, x.newest_at,
       x.deliveries
FROM public.device_messages x
WHERE x.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

CREATE VIEW startup_dashboard.device_status_events WITH (security_barrier) AS
SELECT x.id, x.device_id, x.received_at, x.status, x.retained
FROM public.device_status_events x
WHERE x.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

-- Where and when the start-up's devices are in use: no patient, no care plan.
CREATE VIEW startup_dashboard.enrolments WITH (security_barrier) AS
SELECT e.device_id, e.municipality, e.start_date, e.end_date
FROM public.enrolments e
WHERE e.device_id IN (
    SELECT dv.device_id FROM public.devices dv
    WHERE dv.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                                WHERE d.kind = 'startup'));

CREATE VIEW startup_dashboard.municipalities WITH (security_barrier) AS
SELECT m.istat_code, m.name, m.population, m.population_year, m.latitude, m.longitude,
       m.area_km2, m.snai_class, m.snai_class_label, m.snai_travel_time_min,
       m.snai_reference_pole_istat_code, m.snai_reference_pole_name,
       m.snai_project_area_2014_2020, m.is_province_capital, m.area
FROM public.municipalities m;


-- == lab_dashboard: operations and CMTo, every row the dashboards need ====================
-- No identifier_hash, no patient label, no API token, no device password or message payload.
CREATE SCHEMA lab_dashboard;
REVOKE ALL ON SCHEMA lab_dashboard FROM PUBLIC;
COMMENT ON SCHEMA lab_dashboard IS
    'Grafana views of operations and CMTo: every row, no identifiers or secrets (dashboard role kind lab)';

CREATE VIEW lab_dashboard.organisations WITH (security_barrier) AS
SELECT o.id, o.kind, o.name, o.simulated, o.created_at
FROM public.organisations o;

-- Patients by provider, for counts: no label, no identifier_hash.
CREATE VIEW lab_dashboard.patients WITH (security_barrier) AS
SELECT p.id, p.organisation_id, p.created_at
FROM public.patients p;

CREATE VIEW lab_dashboard.devices WITH (security_barrier) AS
SELECT dv.device_id, dv.organisation_id, dv.device_type, dv.model, dv.serial, dv.firmware,
       dv.created_at, dv.revoked_at, dv.status, dv.status_at, dv.last_seen_at,
       dv.password_set_at, dv.simulated
FROM public.devices dv;

CREATE VIEW lab_dashboard.enrolments WITH (security_barrier) AS
SELECT e.id, e.patient_id, e.device_id, e.municipality, e.start_date, e.end_date, e.care_plan,
       e.created_at
FROM public.enrolments e;

CREATE VIEW lab_dashboard.readings WITH (security_barrier) AS
SELECT r.patient_id, r.device_id, r.metric, r.at, r.measured_at, r.received_at, r.value,
       r.seq, r.msg_id, r.clock_offset_s, r.clock_corrected, r.reported_unit
FROM public.readings r;

CREATE VIEW lab_dashboard.readings_hourly WITH (security_barrier) AS
SELECT h.bucket, h.device_id, h.metric, h.readings, h.value_sum, h.value_min, h.value_max
FROM public.readings_hourly h;

CREATE VIEW lab_dashboard.rejected_readings WITH (security_barrier) AS
SELECT x.id, x.received_at, x.device_id, x.msg_id, x.item_index, x.seq, x.metric, x.at,
       x.measured_at, x.reason, x.detail, x.payload_bytes
FROM public.rejected_readings x;

CREATE VIEW lab_dashboard.duplicate_readings WITH (security_barrier) AS
SELECT x.id, x.received_at, x.device_id, x.metric, x.at, x.measured_at, x.seq, x.msg_id
FROM public.duplicate_readings x;

CREATE VIEW lab_dashboard.device_messages WITH (security_barrier) AS
SELECT x.id, x.device_id, x.received_at, x.msg_id, x.qos, x.payload_bytes, x.readings,
       x.accepted, x.duplicates, x.rejected, x.clock_offset_s, x.oldest_at, x.newest_at,
       x.deliveries
FROM public.device_messages x;

CREATE VIEW lab_dashboard.device_status_events WITH (security_barrier) AS
SELECT x.id, x.device_id, x.received_at, x.status, x.retained
FROM public.device_status_events x;

CREATE VIEW lab_dashboard.alerts WITH (security_barrier) AS
SELECT a.id, a.patient_id, a.rule, a.day, a.device_id, a.metric, a.at, a.value, a.measured_at,
       a.raised_at, a.acknowledged_at
FROM public.alerts a;

CREATE VIEW lab_dashboard.municipalities WITH (security_barrier) AS
SELECT m.istat_code, m.name, m.population, m.population_year, m.latitude, m.longitude,
       m.area_km2, m.snai_class, m.snai_class_label, m.snai_travel_time_min,
       m.snai_reference_pole_istat_code, m.snai_reference_pole_name,
       m.snai_project_area_2014_2020, m.is_province_capital, m.area
FROM public.municipalities m;

CREATE VIEW lab_dashboard.mini_pilots WITH (security_barrier) AS
SELECT mp.id, mp.name, mp.start_date, mp.end_date, mp.created_at
FROM public.mini_pilots mp;

CREATE VIEW lab_dashboard.mini_pilot_startups WITH (security_barrier) AS
SELECT s.mini_pilot_id, s.organisation_id
FROM public.mini_pilot_startups s;

CREATE VIEW lab_dashboard.mini_pilot_municipalities WITH (security_barrier) AS
SELECT s.mini_pilot_id, s.istat_code
FROM public.mini_pilot_municipalities s;

-- Published evaluations (the JSON of `ehealthlab evaluate`): the latest by computed_at of a
-- population, grouping and period is the current one.
CREATE VIEW lab_dashboard.evaluations WITH (security_barrier) AS
SELECT ev.id, ev.population, ev.grouping, ev.period_from, ev.period_to, ev.computed_at,
       ev.document
FROM public.evaluations ev;

CREATE VIEW lab_dashboard.sus_responses WITH (security_barrier) AS
SELECT s.id, s.answered_on, s.respondent, s.patient_id, s.municipality, s.items, s.score,
       s.simulated, s.source, s.created_at
FROM public.sus_responses s;
