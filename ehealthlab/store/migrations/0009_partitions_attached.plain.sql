-- New monthly partitions are created apart and then ATTACHed. CREATE TABLE ... PARTITION OF
-- takes an ACCESS EXCLUSIVE lock on `readings`: the first reading of a new month would queue
-- behind any long query (an evaluation, an export) and every reader and writer would then
-- queue behind it. ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE, which readers and writers
-- do not wait for; the CHECK constraint matching the bounds spares it a validation scan.
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
        CONTINUE WHEN to_regclass(part_name) IS NOT NULL;
        lower_bound := month_start::timestamp AT TIME ZONE 'UTC';
        upper_bound := (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC';
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
    END LOOP;
    RETURN created;
END
$$;
