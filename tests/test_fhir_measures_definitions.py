"""The pilot's indicators as FHIR Measures, pure, from the registry: each indicator's Measure
must say what the registry says (title, definition, MAST and RE-AIM topics, better direction)
and be scored as its kind is, and the composite pilot-indicators must hold one group per
indicator pointing back to its Measure, so that a reader of the reports finds every definition.
"""

from __future__ import annotations

import pytest
from fhir.resources.R4B.measure import Measure

from ehealthlab.evaluation.registry import BY_ID, INDICATORS
from ehealthlab.fhir.measures.definitions import (
    COMPOSITE_URL,
    GROUP_SCORING_EXTENSION,
    INDICATOR_MEASURE_EXTENSION,
    MEASURES,
    measure_url,
    scoring,
)


def test_every_measure_validates_and_round_trips():
    assert len(MEASURES) == len(INDICATORS) + 1
    for resource in MEASURES.values():
        parsed = Measure.model_validate(resource)
        assert parsed.model_dump(mode="json", exclude_none=True) == resource


@pytest.mark.parametrize(
    ("indicator", "expected"),
    [
        ("patients_enrolled", "cohort"),
        ("alerts", "cohort"),
        ("completeness", "proportion"),
        ("loss_rate", "proportion"),
        ("reach_per_1000", "ratio"),
        ("alerts_per_patient_week", "ratio"),
        ("adherence", "continuous-variable"),
        ("latency_p95_s", "continuous-variable"),
        ("cost_per_patient_month", "continuous-variable"),
    ],
)
def test_scoring_follows_the_kind(indicator, expected):
    assert scoring(BY_ID[indicator]) == expected
    measure = MEASURES[indicator.replace("_", "-")]
    assert measure["scoring"]["coding"][0]["code"] == expected
    codes = [p["code"]["coding"][0]["code"] for p in measure["group"][0]["population"]]
    if expected in ("proportion", "ratio"):
        assert codes == ["denominator", "numerator"]
        assert (
            measure["group"][0]["population"][1]["description"] == BY_ID[indicator].numerator.text
        )


def test_an_indicators_measure_says_what_the_registry_says():
    loss = BY_ID["loss_rate"]
    measure = MEASURES["loss-rate"]
    assert measure["url"] == measure_url(loss) and measure["title"] == loss.title
    assert measure["description"] == loss.definition and measure["name"] == "LossRate"
    assert measure["improvementNotation"]["coding"][0]["code"] == "decrease"
    topics = {
        c["coding"][0]["system"].rsplit("/", 1)[1]: c["coding"][0]["display"]
        for c in measure["topic"]
    }
    assert topics == {"mast-domain": loss.mast.value, "re-aim": loss.reaim.value}
    assert "improvementNotation" not in MEASURES["alerts"]  # neither direction is better


def test_the_composite_has_one_group_per_indicator_each_scored_and_pointing_home():
    composite = MEASURES["pilot-indicators"]
    assert composite["url"] == COMPOSITE_URL and "scoring" not in composite
    assert [g["code"]["coding"][0]["code"] for g in composite["group"]] == [
        i.id for i in INDICATORS
    ]
    for group, indicator in zip(composite["group"], INDICATORS, strict=True):
        extensions = {e["url"]: e for e in group["extension"]}
        assert extensions[INDICATOR_MEASURE_EXTENSION]["valueCanonical"] == measure_url(indicator)
        assert extensions[GROUP_SCORING_EXTENSION]["valueCodeableConcept"]["coding"][0][
            "code"
        ] == scoring(indicator)
    assert [a["resource"] for a in composite["relatedArtifact"]] == [
        measure_url(i) for i in INDICATORS
    ]
