-- device_messages_once_idx (0008) kept (device_id, msg_id, payload_digest) unique for every
-- message, but since 0015 only rows logged before it have a payload_digest: every new row
-- added an index entry that could never conflict. It now covers those old rows alone, and
-- ingest writes one index entry fewer per message. Ingest still finds an old row by its
-- bytes through device_messages_content_idx's (device_id, msg_id) prefix.
DROP INDEX device_messages_once_idx;
CREATE UNIQUE INDEX device_messages_legacy_idx
    ON device_messages (device_id, msg_id, payload_digest) WHERE payload_digest IS NOT NULL;
