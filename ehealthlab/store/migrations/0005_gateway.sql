-- The gateway: API tokens, device presence, and what each device's messages looked like.

-- API tokens: random, shown once, stored as a SHA-256 hash (they carry 256 bits of entropy,
-- so a slow hash adds nothing), revocable; each belongs to one organisation with one role.
CREATE TABLE api_tokens (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    role            text NOT NULL CHECK (role IN ('admin', 'member')),
    token_hash      bytea NOT NULL UNIQUE,
    label           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
CREATE INDEX api_tokens_organisation_idx ON api_tokens (organisation_id);

-- Presence from the retained status topic (online, or the Last Will's offline) and the
-- last time anything arrived from the device.
ALTER TABLE devices
    ADD COLUMN status         text NOT NULL DEFAULT 'never_seen'
        CHECK (status IN ('online', 'offline', 'never_seen')),
    ADD COLUMN status_at      timestamptz,
    ADD COLUMN last_seen_at   timestamptz,
    ADD COLUMN password_set_at timestamptz;

-- Every status change, for the conformance check (Last Will, reconnects).
CREATE TABLE device_status_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    received_at timestamptz NOT NULL,
    status      text NOT NULL,
    retained    boolean NOT NULL,
    payload     bytea NOT NULL
);
CREATE INDEX device_status_events_device_idx ON device_status_events (device_id, received_at);

-- One row per readings message received (not per reading): how it arrived. The conformance
-- check reads QoS, clock offset, size and backlog from here.
CREATE TABLE device_messages (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id      text NOT NULL,
    received_at    timestamptz NOT NULL,
    msg_id         text,
    qos            smallint NOT NULL,
    payload_bytes  integer NOT NULL,
    readings       integer NOT NULL,
    accepted       integer NOT NULL,
    duplicates     integer NOT NULL,
    rejected       integer NOT NULL,
    clock_offset_s real,
    oldest_at      timestamptz,
    newest_at      timestamptz
);
CREATE INDEX device_messages_device_idx ON device_messages (device_id, received_at);
