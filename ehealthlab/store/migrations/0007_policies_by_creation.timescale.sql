-- Compression and retention by when a chunk was created, not by the devices' `at`: a device
-- whose clock battery died reports 1970 or 2000; its readings are accepted and corrected,
-- and must not be compressed at once nor dropped by the 10-year retention (the plain form
-- keeps them too).
SELECT remove_compression_policy('readings', if_exists => true);
SELECT add_compression_policy('readings', compress_created_before => INTERVAL '30 days');
SELECT remove_retention_policy('readings', if_exists => true);
SELECT add_retention_policy('readings', drop_created_before => INTERVAL '10 years');
