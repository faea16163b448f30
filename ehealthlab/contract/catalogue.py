"""The metric catalogue v1: metrics, units, plausible ranges, codes and device types, as data.

Everything that says what a reading may be lives in the tables below, so validation, the
FHIR mapping, the indicators and the documentation read one source. The LOINC and
IEEE 11073-10101 (MDC) codes were checked against public sources; what was checked, and
the decisions taken where the sources disagree with the contract text, are recorded in
docs/code-verification.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ehealthlab.errors import InvalidInputError

LOINC_SYSTEM = "http://loinc.org"
MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
UCUM_SYSTEM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class LoincCode:
    """A LOINC code with its display, and whether FHIR R4's vital-signs value set has it."""

    code: str
    display: str
    #: in http://hl7.org/fhir/ValueSet/observation-vitalsignresult (R4 4.0.1)
    in_r4_vital_signs: bool


@dataclass(frozen=True, slots=True)
class MdcCode:
    """An IEEE 11073-10101 term: its reference id and its 32-bit code (partition << 16 | term)."""

    reference_id: str
    code: int
    #: which kind of device reports the metric under this term
    used_for: str


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """How a reported unit becomes the canonical one: canonical = (value + offset) * num / den.

    Kept as numbers rather than functions so the table can be printed, tested and documented;
    the numerator/denominator split keeps exact divisions (g → kg) exact.
    """

    unit: str
    offset: float = 0.0
    numerator: float = 1.0
    denominator: float = 1.0

    def to_canonical(self, value: float) -> float:
        return (value + self.offset) * self.numerator / self.denominator


@dataclass(frozen=True, slots=True)
class Metric:
    """One measurable quantity of the contract, in its canonical UCUM unit."""

    code: str
    display: str
    #: canonical UCUM unit: stored values, ranges and FHIR quantities use it
    unit: str
    #: every unit a device may report, canonical included, keyed by UCUM code
    conversions: Mapping[str, UnitConversion]
    #: plausible range in the canonical unit, bounds included
    minimum: float
    maximum: float
    #: LOINC codes, the one FHIR R4 vital-signs profiles expect first
    loinc: tuple[LoincCode, ...]
    #: the panel the metric is a component of (blood pressure), if any
    loinc_panel: LoincCode | None
    #: IEEE 11073-10101 terms, the usual one for the metric first
    mdc: tuple[MdcCode, ...]

    @property
    def accepted_units(self) -> tuple[str, ...]:
        """Units a device may send, canonical first."""
        return tuple(self.conversions)


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device a start-up registers, and the metrics it may report."""

    code: str
    display: str
    metrics: frozenset[str]
    #: IEEE 11073 device specialization (MDC_DEV_SPEC_PROFILE_*), when one fits
    mdc_specialization: MdcCode | None


def _metric(
    code: str,
    display: str,
    unit: str,
    minimum: float,
    maximum: float,
    *,
    loinc: tuple[LoincCode, ...],
    mdc: tuple[MdcCode, ...],
    also_accepted: tuple[UnitConversion, ...] = (),
    loinc_panel: LoincCode | None = None,
) -> Metric:
    conversions = {unit: UnitConversion(unit)} | {c.unit: c for c in also_accepted}
    return Metric(
        code=code,
        display=display,
        unit=unit,
        conversions=MappingProxyType(conversions),
        minimum=minimum,
        maximum=maximum,
        loinc=loinc,
        loinc_panel=loinc_panel,
        mdc=mdc,
    )


#: LOINC 85354-9, the panel blood-pressure components belong to in FHIR R4
BLOOD_PRESSURE_PANEL = LoincCode("85354-9", "Blood pressure panel with all children optional", True)

#: 1 kPa = 7.50062 mm[Hg] (1 mm[Hg] = 133.322 Pa)
_KPA = UnitConversion("kPa", numerator=7.50062)
#: glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol), the contract's factor
_MMOL_PER_L = UnitConversion("mmol/L", numerator=18.016)

METRICS: Mapping[str, Metric] = MappingProxyType(
    {
        m.code: m
        for m in (
            _metric(
                "bp_systolic",
                "Systolic blood pressure",
                "mm[Hg]",
                40,
                300,
                also_accepted=(_KPA,),
                loinc=(LoincCode("8480-6", "Systolic blood pressure", True),),
                loinc_panel=BLOOD_PRESSURE_PANEL,
                mdc=(MdcCode("MDC_PRESS_BLD_NONINV_SYS", 150021, "non-invasive cuff"),),
            ),
            _metric(
                "bp_diastolic",
                "Diastolic blood pressure",
                "mm[Hg]",
                20,
                200,
                also_accepted=(_KPA,),
                loinc=(LoincCode("8462-4", "Diastolic blood pressure", True),),
                loinc_panel=BLOOD_PRESSURE_PANEL,
                mdc=(MdcCode("MDC_PRESS_BLD_NONINV_DIA", 150022, "non-invasive cuff"),),
            ),
            _metric(
                "heart_rate",
                "Heart rate",
                "/min",
                20,
                300,
                loinc=(LoincCode("8867-4", "Heart rate", True),),
                mdc=(
                    MdcCode("MDC_PULS_RATE_NON_INV", 149546, "blood-pressure cuff"),
                    MdcCode("MDC_PULS_OXIM_PULS_RATE", 149530, "pulse oximeter"),
                    MdcCode("MDC_ECG_HEART_RATE", 147842, "ECG"),
                ),
            ),
            _metric(
                "spo2",
                "Oxygen saturation",
                "%",
                50,
                100,
                loinc=(
                    LoincCode("2708-6", "Oxygen saturation in Arterial blood", True),
                    LoincCode(
                        "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", False
                    ),
                ),
                mdc=(MdcCode("MDC_PULS_OXIM_SAT_O2", 150456, "pulse oximeter"),),
            ),
            _metric(
                "respiratory_rate",
                "Respiratory rate",
                "/min",
                2,
                80,
                loinc=(LoincCode("9279-1", "Respiratory rate", True),),
                mdc=(MdcCode("MDC_RESP_RATE", 151562, "any respiration sensor"),),
            ),
            _metric(
                "body_weight",
                "Body weight",
                "kg",
                2,
                400,
                also_accepted=(
                    UnitConversion("g", denominator=1000),
                    UnitConversion("[lb_av]", numerator=0.45359237),
                ),
                loinc=(LoincCode("29463-7", "Body weight", True),),
                mdc=(MdcCode("MDC_MASS_BODY_ACTUAL", 188736, "weighing scale"),),
            ),
            _metric(
                "body_temperature",
                "Body temperature",
                "Cel",
                25,
                45,
                also_accepted=(UnitConversion("[degF]", offset=-32, numerator=5, denominator=9),),
                loinc=(LoincCode("8310-5", "Body temperature", True),),
                mdc=(MdcCode("MDC_TEMP_BODY", 150364, "thermometer"),),
            ),
            _metric(
                "blood_glucose",
                "Blood glucose",
                "mg/dL",
                10,
                1000,
                also_accepted=(_MMOL_PER_L,),
                loinc=(LoincCode("2339-0", "Glucose [Mass/volume] in Blood", False),),
                mdc=(
                    MdcCode("MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", 160184, "fingerstick glucometer"),
                ),
            ),
            _metric(
                "steps",
                "Steps",
                "{steps}",
                0,
                100_000,
                loinc=(
                    LoincCode("55423-8", "Number of steps in unspecified time Pedometer", False),
                ),
                mdc=(),
            ),
        )
    }
)


def _spec_profile(reference_id: str, term: int, used_for: str) -> MdcCode:
    # device specializations live in partition MDC_PART_INFRA (8)
    return MdcCode(reference_id, (8 << 16) + term, used_for)


DEVICE_TYPES: Mapping[str, DeviceType] = MappingProxyType(
    {
        d.code: d
        for d in (
            DeviceType(
                "blood_pressure_monitor",
                "Blood pressure monitor",
                frozenset({"bp_systolic", "bp_diastolic", "heart_rate"}),
                _spec_profile("MDC_DEV_SPEC_PROFILE_BP", 4103, "blood pressure monitor"),
            ),
            DeviceType(
                "pulse_oximeter",
                "Pulse oximeter",
                frozenset({"spo2", "heart_rate"}),
                _spec_profile("MDC_DEV_SPEC_PROFILE_PULS_OXIM", 4100, "pulse oximeter"),
            ),
            DeviceType(
                "weighing_scale",
                "Weighing scale",
                frozenset({"body_weight"}),
                _spec_profile("MDC_DEV_SPEC_PROFILE_SCALE", 4111, "weighing scale"),
            ),
            DeviceType(
                "thermometer",
                "Thermometer",
                frozenset({"body_temperature"}),
                _spec_profile("MDC_DEV_SPEC_PROFILE_TEMP", 4104, "thermometer"),
            ),
            DeviceType(
                "glucometer",
                "Glucometer",
                frozenset({"blood_glucose"}),
                _spec_profile("MDC_DEV_SPEC_PROFILE_GLUCOSE", 4113, "glucose meter"),
            ),
            DeviceType(
                "activity_tracker",
                "Activity tracker",
                frozenset({"steps", "heart_rate", "respiratory_rate"}),
                None,
            ),
            DeviceType(
                "multiparameter_monitor",
                "Multiparameter monitor",
                frozenset(METRICS),
                None,
            ),
        )
    }
)


def metric(code: str) -> Metric:
    """The catalogue entry of a metric; InvalidInputError names the known ones."""
    try:
        return METRICS[code]
    except KeyError:
        raise InvalidInputError(
            f"unknown metric {code!r}: known metrics are {', '.join(METRICS)}"
        ) from None


def device_type(code: str) -> DeviceType:
    """The catalogue entry of a device type; InvalidInputError names the known ones."""
    try:
        return DEVICE_TYPES[code]
    except KeyError:
        raise InvalidInputError(
            f"unknown device type {code!r}: known device types are {', '.join(DEVICE_TYPES)}"
        ) from None


def convert(metric_code: str, value: float, unit: str) -> float:
    """`value` in `unit` expressed in the metric's canonical unit.

    Raises InvalidInputError for an unknown metric or a unit the metric does not accept.
    """
    entry = metric(metric_code)
    conversion = entry.conversions.get(unit)
    if conversion is None:
        accepted = " or ".join(repr(u) for u in entry.accepted_units)
        raise InvalidInputError(f"unit {unit!r} not accepted for {metric_code}: use {accepted}")
    return conversion.to_canonical(value)
