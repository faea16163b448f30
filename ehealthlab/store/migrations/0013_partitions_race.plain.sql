-- Two writers reaching a new month at once: the one that waited on the advisory lock looked
-- the partition up with to_regclass, whose catalog cache does not see what the other just
-- committed (waiting on an advisory lock refreshes nothing), and failed with duplicate_table.
-- After the lock the catalog is read with a fresh snapshot, and duplicate_table, should it
-- still come, means the partition exists: the batch goes on.
CREATE OR REPLACE FUNCTION ehl_ensure_reading_partitions(ats timestamptz[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start date;
    part_name   text;
    lower_bound timestamptz;
    upper_bound timestamptz;
    created     integer := 0;
BEGIN
    FOR month_start IN
        SELECT DISTINCT date_trunc('month', t AT TIME ZONE 'UTC')::date FROM unnest(ats) AS t
        WHERE t IS NOT NULL
    LOOP
        part_name := 'readings_p' || to_char(month_start, 'YYYYMM');
        CONTINUE WHEN to_regclass(part_name) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtext('ehl_ensure_reading_partitions'));
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_class
            WHERE relname = part_name AND relnamespace = current_schema()::regnamespace
        );
        lower_bound := month_start::timestamp AT TIME ZONE 'UTC';
        upper_bound := (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS,'
                ' CONSTRAINT %I CHECK (at >= %L AND at < %L))',
                part_name, part_name || '_bounds', lower_bound, upper_bound
            );
            EXECUTE format(
                'ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part_name, lower_bound, upper_bound
            );
            created := created + 1;
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- another writer made it: that is all we wanted
        END;
    END LOOP;
    RETURN created;
END
$$;
