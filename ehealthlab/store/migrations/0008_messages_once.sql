-- A readings message is logged once, however many times it arrives. The contract gives a
-- message the same msg_id when it is delivered again (the broker redelivering what ingest had
-- committed but not yet acknowledged, or a device retrying a publish it got no PUBACK for);
-- the bytes are the same too. Counting each delivery again would inflate the pilot's
-- duplicate_share and rejected_share with retries; `deliveries` keeps how often it came.
-- Readings a device re-sends in a new message remain duplicates, counted. A msg_id reused for
-- other content is another message (the digest differs), never mistaken for a redelivery.
ALTER TABLE device_messages
    ADD COLUMN deliveries integer NOT NULL DEFAULT 1,
    ADD COLUMN payload_digest bytea;  -- SHA-256 of the payload, first 16 bytes

CREATE UNIQUE INDEX device_messages_once_idx
    ON device_messages (device_id, msg_id, payload_digest);
