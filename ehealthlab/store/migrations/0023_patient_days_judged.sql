-- Each patient-day of `readings_patient_daily` judged against the care plans covering it, kept
-- with the day (issue 11: the provider's adherence panel, p95 < 200 ms). Reading a day's
-- counts against its plans in the panel meant a JSON lookup per metric, per patient and day
-- (57,000 patient-days for a provider of 2,000 over 30 days: 0.6 s); stored, the panel sums
-- two columns.
--
--   * adherent: every metric of every enrolment's care plan covering the day has a reading;
--   * taken:    the readings counted against those plans, each metric's capped at the plan's
--               readings per day (a metric two plans name counts for each).
--
-- They are a function of the day's counts and of the enrolments: a row trigger computes them
-- whenever a row's counts are written (the rollup's statement triggers, 0022), and a change
-- of an enrolment (new, a care plan or dates edited, removed) has its patient's days in the
-- old and new date ranges judged again. Identical on both forms.

ALTER TABLE readings_patient_daily
    ADD COLUMN adherent boolean NOT NULL DEFAULT false,
    ADD COLUMN taken    bigint NOT NULL DEFAULT 0;

CREATE FUNCTION ehl_patient_day_judged() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT coalesce(bool_and(coalesce((NEW.counts ->> p.key)::int, 0) > 0), false),
           coalesce(sum(least(coalesce((NEW.counts ->> p.key)::int, 0), p.value::int)), 0)
    INTO NEW.adherent, NEW.taken
    FROM enrolments e
    CROSS JOIN LATERAL jsonb_each_text(e.care_plan) p
    WHERE e.patient_id = NEW.patient_id
      AND NEW.day >= e.start_date
      AND (e.end_date IS NULL OR NEW.day <= e.end_date);
    RETURN NEW;
END
$$;

CREATE TRIGGER readings_patient_daily_judged
    BEFORE INSERT OR UPDATE ON readings_patient_daily
    FOR EACH ROW EXECUTE FUNCTION ehl_patient_day_judged();

-- An enrolment changed: its patient's days it covered or covers now are judged again (the
-- row trigger above judges a row when it is rewritten). PostgreSQL gives INSERT no OLD TABLE
-- and DELETE no NEW TABLE: one function per event, each reading the tables its event has.
CREATE FUNCTION ehl_patient_days_rejudged_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h SET counts = h.counts
    FROM new_enrolments n
    WHERE h.patient_id = n.patient_id AND h.day >= n.start_date
      AND (n.end_date IS NULL OR h.day <= n.end_date);
    RETURN NULL;
END
$$;

CREATE FUNCTION ehl_patient_days_rejudged_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h SET counts = h.counts
    FROM (SELECT patient_id, start_date, end_date FROM old_enrolments
          UNION
          SELECT patient_id, start_date, end_date FROM new_enrolments) c
    WHERE h.patient_id = c.patient_id AND h.day >= c.start_date
      AND (c.end_date IS NULL OR h.day <= c.end_date);
    RETURN NULL;
END
$$;

CREATE FUNCTION ehl_patient_days_rejudged_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE readings_patient_daily h SET counts = h.counts
    FROM old_enrolments o
    WHERE h.patient_id = o.patient_id AND h.day >= o.start_date
      AND (o.end_date IS NULL OR h.day <= o.end_date);
    RETURN NULL;
END
$$;

CREATE TRIGGER enrolments_rejudge_inserted
    AFTER INSERT ON enrolments
    REFERENCING NEW TABLE AS new_enrolments
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_patient_days_rejudged_inserted();

CREATE TRIGGER enrolments_rejudge_updated
    AFTER UPDATE ON enrolments
    REFERENCING OLD TABLE AS old_enrolments NEW TABLE AS new_enrolments
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_patient_days_rejudged_updated();

CREATE TRIGGER enrolments_rejudge_deleted
    AFTER DELETE ON enrolments
    REFERENCING OLD TABLE AS old_enrolments
    FOR EACH STATEMENT EXECUTE FUNCTION ehl_patient_days_rejudged_deleted();

REVOKE EXECUTE ON FUNCTION ehl_patient_day_judged(), ehl_patient_days_rejudged_updated(),
    ehl_patient_days_rejudged_inserted(), ehl_patient_days_rejudged_deleted()
    FROM PUBLIC;

-- the days rolled up so far
UPDATE readings_patient_daily SET counts = counts;

CREATE OR REPLACE VIEW provider_dashboard.readings_patient_daily WITH (security_barrier) AS
SELECT h.day, h.patient_id, h.counts, h.adherent, h.taken
FROM public.readings_patient_daily h
WHERE h.organisation_id = (SELECT d.organisation_id FROM public.ehl_dashboard_organisation d
                           WHERE d.kind = 'provider');
