-- Registry: who takes part in the pilot. Identical on both physical forms of the store.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- The 312 municipalities of the Metropolitan City of Turin (reference/PROVENANCE.md).
CREATE TABLE municipalities (
    istat_code                     text PRIMARY KEY CHECK (istat_code ~ '^[0-9]{6}$'),
    name                           text NOT NULL,
    population                     integer NOT NULL CHECK (population >= 0),
    population_year                smallint NOT NULL,
    latitude                       double precision,
    longitude                      double precision,
    area_km2                       numeric(10, 4),
    snai_class                     char(1) NOT NULL CHECK (snai_class IN ('A', 'B', 'C', 'D', 'E', 'F')),
    snai_class_label               text NOT NULL,
    snai_travel_time_min           numeric(6, 1),
    snai_reference_pole_istat_code text,
    snai_reference_pole_name       text,
    snai_project_area_2014_2020    text,
    is_province_capital            boolean NOT NULL,
    -- indicators.md: inner = SNAI D, E, F; centre = A, B, C
    area                           text GENERATED ALWAYS AS (
        CASE WHEN snai_class IN ('D', 'E', 'F') THEN 'inner' ELSE 'centre' END
    ) STORED
);

-- Start-ups (devices), health providers (patients) and the operator (CMTo).
CREATE TABLE organisations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind       text NOT NULL CHECK (kind IN ('startup', 'provider', 'operator')),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, name)
);

-- A device belongs to the start-up that registered it; device_id is its MQTT username too.
CREATE TABLE devices (
    device_id       text PRIMARY KEY CHECK (device_id ~ '^[a-z0-9][a-z0-9-]{2,63}$'),
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    device_type     text NOT NULL,
    model           text NOT NULL,
    serial          text NOT NULL,
    firmware        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    UNIQUE (organisation_id, model, serial)
);
CREATE INDEX devices_organisation_idx ON devices (organisation_id);

-- Pseudonymous patients: the provider's identifier is kept only as a keyed hash.
CREATE TABLE patients (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    identifier_hash bytea NOT NULL,
    label           text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, identifier_hash)
);

-- An enrolment ties a patient to a device between two dates (both included; open when
-- end_date is null), in a municipality, with a care plan {metric: readings per day}.
-- A device serves one patient at a time, so a reading is attributed to at most one patient.
CREATE TABLE enrolments (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id   uuid NOT NULL REFERENCES patients (id),
    device_id    text NOT NULL REFERENCES devices (device_id),
    municipality text NOT NULL REFERENCES municipalities (istat_code),
    start_date   date NOT NULL,
    end_date     date,
    care_plan    jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(care_plan) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (end_date IS NULL OR end_date >= start_date),
    CONSTRAINT enrolments_one_patient_per_device EXCLUDE USING gist (
        device_id WITH =, daterange(start_date, end_date, '[]') WITH &&
    )
);
CREATE INDEX enrolments_patient_idx ON enrolments (patient_id);

-- The pilot's calendar day of a moment (indicators.md: calendar days are in Europe/Rome).
-- One definition for every query: attribution, adherence, alerts per day.
CREATE FUNCTION ehl_pilot_day(moment timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (moment AT TIME ZONE 'Europe/Rome')::date;
