-- A batch's message claims in one round trip (issue 13). Ingest's transaction began with
-- three statements before its readings: the share lock on the batch's devices, the advisory
-- lock of each message, and the lookup of messages stored before. Each costs a round trip
-- and its own parse, bind and execute on both sides: about 0.15-0.25 ms of the worker's CPU
-- a statement, which at a steady load's batch sizes (tens of messages) is several
-- microseconds a message, and on a machine the load fills, a wait for the server each time.
-- This function takes the same locks in the same order and returns the same rows.

CREATE FUNCTION ehl_claim_messages(
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
    -- the named messages stored before (rows logged before 0015: by their bytes)
    RETURN QUERY
    SELECT k.device_id, k.msg_id, k.digest
    FROM device_messages m
    JOIN unnest(key_devices, key_msg_ids, key_digests, key_payload_digests)
         AS k(device_id, msg_id, digest, payload_digest)
      ON m.device_id = k.device_id AND m.msg_id = k.msg_id
     AND (m.content_digest = k.digest
          OR (m.content_digest IS NULL AND m.payload_digest = k.payload_digest))
    WHERE k.msg_id <> '';
END
$$;

REVOKE EXECUTE ON FUNCTION ehl_claim_messages(text[], integer, text[], text[], bytea[], bytea[])
    FROM PUBLIC;
