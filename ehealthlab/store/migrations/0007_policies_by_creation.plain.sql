-- The plain form has no compression or retention jobs: partitions are dropped by hand.
-- (This migration exists so that both forms share one sequence of versions.)
SELECT 1;
