-- What did not become a stored reading, kept so nothing is lost and indicators can count it.

-- Dead letters: every rejected reading (or whole message) with its raw payload and reason.
-- Fields unknown for a message that could not be parsed are null.
CREATE TABLE rejected_readings (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   timestamptz NOT NULL,
    device_id     text NOT NULL,
    msg_id        text,
    item_index    integer,           -- position in the message's readings; null: whole message
    seq           bigint,
    metric        text,
    at            timestamptz,
    measured_at   timestamptz,       -- `at`, clock-corrected like an accepted reading
    reason        text NOT NULL,
    detail        text NOT NULL,
    payload       bytea NOT NULL,    -- the reading item, or the whole message when unparsable
    payload_bytes integer NOT NULL
);
CREATE INDEX rejected_readings_device_idx ON rejected_readings (device_id, received_at DESC);
CREATE INDEX rejected_readings_measured_idx ON rejected_readings (device_id, measured_at)
    WHERE measured_at IS NOT NULL;

-- Duplicates: a reading that arrived again (same device, metric, `at` and value), counted
-- once per arrival for duplicate_share and loss_rate, never stored twice in readings.
CREATE TABLE duplicate_readings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    at          timestamptz NOT NULL,
    measured_at timestamptz NOT NULL,
    seq         bigint NOT NULL,
    msg_id      text NOT NULL
);
CREATE INDEX duplicate_readings_device_idx ON duplicate_readings (device_id, measured_at);
