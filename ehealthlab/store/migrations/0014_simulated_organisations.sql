-- Who may produce simulated data is CMTo's decision, not a start-up's: an organisation is
-- admitted as a simulator (the pilot's simulators, rehearsals, load tests) by the operator,
-- and the devices its start-ups register are simulated because it is. A simulated device is
-- enrolled only for a simulated provider's patients, so simulated and real data never mix.
ALTER TABLE organisations ADD COLUMN simulated boolean NOT NULL DEFAULT false;
