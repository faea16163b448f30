"""The chronic conditions a simulated patient can have.

Its own module because everything keys on it: the scenario file's care plans, the patients'
baselines and episodes, and the behaviour model all import it.
"""

from __future__ import annotations

from enum import StrEnum


class Condition(StrEnum):
    HYPERTENSION = "hypertension"
    HEART_FAILURE = "heart_failure"
    COPD = "copd"
    DIABETES = "diabetes"
