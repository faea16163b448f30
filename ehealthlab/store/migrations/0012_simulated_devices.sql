-- A device registered as simulated (the pilot's simulators, rehearsals, load tests). Its data
-- are labelled as such everywhere, so the evaluation can tell them from real patients' data,
-- and its messages may carry a simulated receive time (an accelerated or backfilled pilot
-- runs on simulated time, which the broker's wall-clock stamp cannot follow). A real device
-- cannot: the flag is set at registration, never by what a device sends.
ALTER TABLE devices ADD COLUMN simulated boolean NOT NULL DEFAULT false;
