-- The FHIR API (docs/fhir.md, "API"): the audit trail of reads of patient data, the FLS code
-- that identifies an Azienda Sanitaria Locale, and the indexes its searches use. Identical on
-- both physical forms of the store.

-- uuid_generate_v5: an Observation's business identifier is a name-based UUID of its id
-- (ehealthlab/fhir/ids.py), so `identifier=` searches compute it in SQL. A trusted extension:
-- the database owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

-- HL7 Italia identifies an ASL by its FLS 11 code (http://hl7.it/sid/fls): one ASL, one code.
ALTER TABLE organisations ADD COLUMN fls_code text CHECK (fls_code ~ '^[0-9]{6}$');
CREATE UNIQUE INDEX organisations_fls_code_idx ON organisations (fls_code)
    WHERE fls_code IS NOT NULL;

-- A patient's Observations of some codes, newest first ($lastn: one short backward scan per
-- code; code-filtered patient searches); with device_id and `at`, a patient's Observations
-- are counted from the index alone (grouped by device, code and `at`: one group a panel).
-- readings_patient_idx (patient_id, measured_at) already serves a patient's searches by date.
CREATE INDEX readings_patient_metric_idx ON readings (patient_id, metric, measured_at)
    INCLUDE (device_id, at);
-- A device's Observations by date: device= searches, and a start-up's or the operator's
-- searches, which walk device by device (unassigned readings have no patient to go by).
CREATE INDEX readings_device_measured_idx ON readings (device_id, measured_at)
    INCLUDE (metric, at);

-- Every read or search of patient data through /fhir, served as FHIR AuditEvents to the
-- operator: who (organisation and token), what (resource type and id, or the query as the
-- server understood it, and the patients whose data it returned), when, and the outcome.
CREATE TABLE fhir_audit_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recorded        timestamptz NOT NULL DEFAULT clock_timestamp(),
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    token_id        uuid NOT NULL REFERENCES api_tokens (id),
    -- AuditEvent.action: R (read) or E (execute: a search or an operation)
    action          char(1) NOT NULL CHECK (action IN ('R', 'E')),
    -- AuditEvent.subtype, a code of http://hl7.org/fhir/restful-interaction
    interaction     text NOT NULL CHECK (interaction IN ('read', 'search-type', 'operation')),
    resource_type   text NOT NULL,
    resource_id     text,
    operation       text,
    query           text,
    patient_ids     uuid[] NOT NULL DEFAULT '{}',
    -- AuditEvent.outcome: 0 success, 4 minor failure (refused, not found, bad request),
    -- 8 serious failure (the server failed)
    outcome         smallint NOT NULL CHECK (outcome IN (0, 4, 8, 12)),
    http_status     smallint NOT NULL,
    detail          text NOT NULL DEFAULT '',
    results         integer
);
CREATE INDEX fhir_audit_events_recorded_idx ON fhir_audit_events (recorded, id);
CREATE INDEX fhir_audit_events_organisation_idx ON fhir_audit_events (organisation_id, recorded);
CREATE INDEX fhir_audit_events_patients_idx ON fhir_audit_events USING gin (patient_ids);
