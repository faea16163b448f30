-- A message without a msg_id (malformed, or refused whole) delivered again — the broker
-- redelivering what was committed but not yet acknowledged, a device retrying a publish that
-- got no PUBACK — is logged and dead-lettered once, like any other message. It is identified
-- by its device and a digest of its topic and bytes, kept in content_digest (msg_id stays
-- NULL). Rows logged before this migration have no digest and match nothing.
CREATE UNIQUE INDEX device_messages_unnamed_idx
    ON device_messages (device_id, content_digest) WHERE msg_id IS NULL;

COMMENT ON COLUMN device_messages.content_digest IS
    'SHA-256 of the message without sent_at, keys sorted (first 16 bytes): contract v1.1; '
    'for a message without a msg_id, SHA-256 of its topic, a NUL byte and its bytes';
