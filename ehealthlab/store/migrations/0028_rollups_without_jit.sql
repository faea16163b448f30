-- The rollups' trigger functions (0022-0026) run without PostgreSQL's JIT. Their statements
-- take arrays or transition tables whose size the planner cannot know, so a batch's statement
-- is often estimated above jit_above_cost and compiled on every call: a 1,000-reading INSERT
-- took 43 ms with JIT and 27 ms without, on this machine (PostgreSQL 15's default is jit = on;
-- the compiled code is thrown away with the statement).

ALTER FUNCTION ehl_dashboard_rollups_add(boolean, text[], text[], timestamptz[], timestamptz[],
                                         timestamptz[], uuid[])
    SET jit = off;
ALTER FUNCTION ehl_dashboard_rollups_inserted() SET jit = off;
ALTER FUNCTION ehl_dashboard_rollups_attributed() SET jit = off;
ALTER FUNCTION ehl_device_last_readings_inserted() SET jit = off;
ALTER FUNCTION ehl_patient_day_judged() SET jit = off;
