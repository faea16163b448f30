-- TimescaleDB creates its chunks itself. (This migration exists so that both forms share one
-- sequence of versions.)
SELECT 1;
