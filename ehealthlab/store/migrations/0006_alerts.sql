-- Clinical alerts: at most one per patient, rule and pilot day, with the reading that
-- raised it; raised_at is that reading's receive time (the provider's response clock).
CREATE TABLE alerts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id      uuid NOT NULL REFERENCES patients (id),
    rule            text NOT NULL,
    day             date NOT NULL,
    device_id       text NOT NULL,
    metric          text NOT NULL,
    at              timestamptz NOT NULL,
    value           double precision NOT NULL,
    measured_at     timestamptz NOT NULL,
    raised_at       timestamptz NOT NULL,
    acknowledged_at timestamptz,
    acknowledged_by uuid REFERENCES api_tokens (id),
    UNIQUE (patient_id, rule, day)
);
CREATE INDEX alerts_open_idx ON alerts (patient_id) WHERE acknowledged_at IS NULL;
CREATE INDEX alerts_day_idx ON alerts (day);
