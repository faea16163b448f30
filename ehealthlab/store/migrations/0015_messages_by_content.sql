-- Device contract v1.1: a message sent again keeps its msg_id and readings but refreshes
-- sent_at (an old sent_at after an outage would read as a wrong clock). So a message is
-- identified by device, msg_id and a digest of its content without sent_at, not of its bytes:
-- a resend whatever its sent_at is a redelivery (deliveries + 1, nothing counted twice), and
-- a msg_id reused for other readings is another message.
--
-- Rows logged before this migration keep their bytes digest in payload_digest (their content
-- cannot be recomputed: accepted messages' payloads are not kept); ingest matches a message
-- against them by its bytes, as it did when they were written. New rows set content_digest.
ALTER TABLE device_messages
    ADD COLUMN content_digest bytea;  -- SHA-256 of the message without sent_at, first 16 bytes

CREATE UNIQUE INDEX device_messages_content_idx
    ON device_messages (device_id, msg_id, content_digest);

COMMENT ON COLUMN device_messages.payload_digest IS
    'SHA-256 of the payload (first 16 bytes), for rows logged before migration 0015';
COMMENT ON COLUMN device_messages.content_digest IS
    'SHA-256 of the message without sent_at, keys sorted (first 16 bytes): contract v1.1';
