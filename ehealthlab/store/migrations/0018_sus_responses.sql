-- System Usability Scale responses (indicators.md, "User and public-sector response": sus_mean
-- and sus_responses): one row per response, whether imported from a CSV file (`ehealthlab sus
-- import`, interfaces-v1.md) or posted as a FHIR QuestionnaireResponse to /fhir. The
-- evaluation reads answered_on, respondent, patient_id, municipality, score and simulated; a
-- response counts in the period of its answered_on and in the group of its patient, else of
-- its municipality. Identical on both physical forms of the store.
--
-- The score is computed where responses come in (ehealthlab/evaluation/sus.py) and kept
-- beside the ten items it comes from; the CHECK holds the two together, so the evaluation
-- never recomputes it and no row can carry a score its items do not give.
--
-- `simulated` is the response's population, fixed when it is stored: a patient's response
-- belongs to the population of the patient's provider (organisations.simulated); a response
-- without a patient to the population its importer declared (`--population`, default real),
-- or, posted through FHIR, to the posting organisation's. Populations never mix.
CREATE TABLE sus_responses (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    answered_on     date NOT NULL,
    respondent      text NOT NULL CHECK (respondent IN ('patient', 'carer', 'professional')),
    patient_id      uuid REFERENCES patients (id),
    municipality    text NOT NULL REFERENCES municipalities (istat_code),
    items           smallint[] NOT NULL CHECK (
                        array_ndims(items) = 1 AND cardinality(items) = 10
                        AND array_position(items, NULL) IS NULL
                        AND 1 <= ALL (items) AND 5 >= ALL (items)),
    score           double precision NOT NULL,
    simulated       boolean NOT NULL,
    source          text NOT NULL CHECK (source IN ('csv', 'fhir')),
    -- who posted it through FHIR (a provider or the operator); a CSV import has none
    organisation_id uuid REFERENCES organisations (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- the SUS score (Brooke 1996): 2.5 × (Σ(odd item − 1) + Σ(5 − even item))
    CHECK (score = 2.5 * ((items[1] + items[3] + items[5] + items[7] + items[9] - 5)
                          + (25 - items[2] - items[4] - items[6] - items[8] - items[10]))),
    CHECK ((source = 'fhir') = (organisation_id IS NOT NULL))
);
-- the evaluation takes a period's responses of one population
CREATE INDEX sus_responses_answered_idx ON sus_responses (simulated, answered_on);
-- a patient's responses (FHIR searches by patient; a provider's own)
CREATE INDEX sus_responses_patient_idx ON sus_responses (patient_id) WHERE patient_id IS NOT NULL;
