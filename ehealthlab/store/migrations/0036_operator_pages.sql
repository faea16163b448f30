-- Pages for the operator: what the platform must tell a person about, not only log. Today the
-- broker's drops (broker_drops, 0034): messages acknowledged to devices and then lost, which
-- nothing else reports. A page is written in the transaction that records its cause, so one
-- is never recorded without the other, and delivered afterwards by the pager
-- (gateway/pager.py) to the operator's webhook, retried until it gets through: an outbox.
-- A page counts as sent once the webhook answered 2xx; a pager that dies between the answer
-- and its commit sends it again (at least once, never silently never).
CREATE TABLE operator_pages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raised_at       timestamptz NOT NULL,
    -- what happened, a short name a receiver can route on ('broker_drops')
    event           text NOT NULL CHECK (event ~ '^[a-z][a-z0-9_]*$'),
    -- one line a person reads on a phone
    summary         text NOT NULL CHECK (summary <> ''),
    -- the figures behind it, for a receiver that wants them
    details         jsonb NOT NULL DEFAULT '{}',
    -- delivery: tries so far, the earliest next try, why the last one failed, when one worked
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz
);
-- the pager's question, "which pages are due?", reads only the few not sent yet
CREATE INDEX operator_pages_unsent_idx ON operator_pages (next_attempt_at, id)
    WHERE sent_at IS NULL;
REVOKE ALL ON TABLE operator_pages FROM PUBLIC;

CREATE VIEW lab_dashboard.operator_pages WITH (security_barrier) AS
SELECT p.id, p.raised_at, p.event, p.summary, p.attempts, p.last_error, p.sent_at
FROM public.operator_pages p;

-- the lab's registered role reads the new view at once (roles.refresh_grants does the same)
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.role_name FROM dashboard_roles d
             JOIN pg_roles p ON p.rolname = d.role_name
             WHERE d.kind = 'lab'
    LOOP
        EXECUTE format('GRANT SELECT ON lab_dashboard.operator_pages TO %I', r.role_name);
    END LOOP;
END
$$;
