-- Mini-pilots (indicators.md; seed, phase 4: "mini-pilots identified, prototyped and
-- tested"): CMTo defines a mini-pilot by a name, a set of start-ups, a set of municipalities
-- and a date range (both ends included). The evaluation groups enrolled days by them: a day
-- belongs to a mini-pilot when it lies in its range, the enrolled device is one of its
-- start-ups' and the enrolment's municipality one of its municipalities. Identical on both
-- physical forms of the store.
--
-- That a member organisation is a start-up is checked where mini-pilots are created
-- (ehealthlab/evaluation/mini_pilots.py), which names every bad reference at once; the
-- foreign keys keep the sets pointing at what exists.
CREATE TABLE mini_pilots (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    start_date date NOT NULL,
    end_date   date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (end_date >= start_date)
);

CREATE TABLE mini_pilot_startups (
    mini_pilot_id   uuid NOT NULL REFERENCES mini_pilots (id) ON DELETE CASCADE,
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    PRIMARY KEY (mini_pilot_id, organisation_id)
);
-- the evaluation goes from a device's start-up to its mini-pilots
CREATE INDEX mini_pilot_startups_organisation_idx ON mini_pilot_startups (organisation_id);

CREATE TABLE mini_pilot_municipalities (
    mini_pilot_id uuid NOT NULL REFERENCES mini_pilots (id) ON DELETE CASCADE,
    istat_code    text NOT NULL REFERENCES municipalities (istat_code),
    PRIMARY KEY (mini_pilot_id, istat_code)
);
