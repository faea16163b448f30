-- Evaluations the platform has computed and published: the JSON of `ehealthlab evaluate`
-- (indicators.md, "Output"), kept whole so that what is published from it — the FHIR
-- MeasureReports, the pilot dashboard — shows the evaluation's own numbers, never a second
-- computation of the same definition. The document holds every value (it is the operator's
-- view); what is published suppresses groups under its `min_group_patients`.
--
-- Several evaluations of the same population, grouping and period may exist (recomputed as
-- late data arrive): the latest by computed_at is the current one. Identical on both
-- physical forms of the store.
CREATE TABLE evaluations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    population  text NOT NULL CHECK (population IN ('real', 'simulated')),
    grouping    text NOT NULL CHECK (grouping IN (
                    'all', 'municipality', 'snai_class', 'area', 'startup', 'device_type',
                    'mini_pilot')),
    period_from date NOT NULL,
    period_to   date NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    document    jsonb NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    CHECK (period_to > period_from)
);
CREATE INDEX evaluations_current_idx
    ON evaluations (population, grouping, period_from, period_to, computed_at DESC);
