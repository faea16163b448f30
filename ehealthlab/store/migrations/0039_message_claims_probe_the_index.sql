-- A batch's claim lookup probes device_messages' unique index once per message, whatever the
-- table's statistics say (issue 13).
--
-- 0038's lookup joined the batch's keys to device_messages, and left the join's shape to the
-- planner. PL/pgSQL keeps a statement's plan until the table's statistics change, and a plan
-- made while the message log was small (a new deployment, any table not yet analyzed by
-- autovacuum) hashed the keys and read the whole log: its scan took 1.1 ms a batch of 60 at
-- 9,000 rows, the lookup 1.7-2.6 ms a batch on average over a run to 18,000, growing with
-- every message until autovacuum's next ANALYZE. A LATERAL subquery with LIMIT 1 cannot be
-- turned into a hash join: each key is one probe of (device_id, msg_id, ...), which the
-- planner prefers to reading the table as soon as the table has a few pages (and assumes 10
-- until it has been analyzed): 0.4 ms a batch of 60, flat, measured on the same machine.
-- (CREATE OR REPLACE keeps 0038's grants.)

CREATE OR REPLACE FUNCTION ehl_claim_messages(
    batch_devices text[], lock_class integer, key_devices text[], key_msg_ids text[],
    key_digests bytea[], key_payload_digests bytea[]
) RETURNS TABLE (claimed_device text, claimed_msg_id text, claimed_digest bytea)
LANGUAGE plpgsql AS $$
BEGIN
    -- an enrolment being recorded for one of these devices waits, or is waited for
    PERFORM 1 FROM devices d WHERE d.device_id = ANY(batch_devices)
    ORDER BY d.device_id FOR KEY SHARE;
    -- a lock per (device, msg_id), in one order: two workers given the same message agree
    PERFORM pg_advisory_xact_lock(lock_class, s.h)
    FROM (SELECT DISTINCT hashtext(k.device_id || '/' || k.msg_id) AS h
          FROM unnest(key_devices, key_msg_ids) AS k(device_id, msg_id)) s
    ORDER BY s.h;
    -- the named messages stored before (rows logged before 0015: by their bytes), one index
    -- probe per message
    RETURN QUERY
    SELECT k.device_id, k.msg_id, k.digest
    FROM unnest(key_devices, key_msg_ids, key_digests, key_payload_digests)
         AS k(device_id, msg_id, digest, payload_digest)
    CROSS JOIN LATERAL (
        SELECT 1 FROM device_messages m
        WHERE m.device_id = k.device_id AND m.msg_id = k.msg_id
          AND (m.content_digest = k.digest
               OR (m.content_digest IS NULL AND m.payload_digest = k.payload_digest))
        LIMIT 1
    ) AS stored
    WHERE k.msg_id <> '';
END
$$;
