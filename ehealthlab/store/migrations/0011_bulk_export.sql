-- FHIR Bulk Data exports (`$export`): one row per kick-off, so a status request answered by
-- any API process, or after a restart, finds the job, and a job whose process died is taken
-- up again. The NDJSON files live under the state directory (exports/{id}/); `files` lists
-- them once the job is complete. Identical on both physical forms of the store.
CREATE TABLE fhir_export_jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- who asked: only this organisation may poll, download or cancel
    organisation_id  uuid NOT NULL REFERENCES organisations (id),
    level            text NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    -- whose patients: the provider of a Group (a Group is a provider's patients, and its id
    -- is the provider organisation's), or of a provider's patient-level export; null: every
    -- provider's (the operator's patient level), or everything (system level)
    provider_id      uuid REFERENCES organisations (id),
    types            text[] NOT NULL,
    since            timestamptz,
    request_url      text NOT NULL,
    -- kick-off parameters ignored under `Prefer: handling=lenient` (reported in the manifest)
    ignored          text[] NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- the process running it, and when it last said so: a silent one is presumed dead
    worker           text,
    heartbeat_at     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- the snapshot the files were read from (the manifest's transactionTime)
    transaction_time timestamptz,
    written          bigint NOT NULL DEFAULT 0,
    files            jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(files) = 'array'),
    error            text,
    expires_at       timestamptz,
    CHECK (level <> 'group' OR provider_id IS NOT NULL),
    CHECK (level <> 'system' OR provider_id IS NULL)
);
CREATE INDEX fhir_export_jobs_organisation_idx ON fhir_export_jobs (organisation_id, created_at);
CREATE INDEX fhir_export_jobs_pending_idx ON fhir_export_jobs (status)
    WHERE status IN ('queued', 'running');
