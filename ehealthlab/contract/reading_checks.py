"""The checks of each reading of a readings message, in the contract's order.

Shape, metric, device type, unit, range, time: each reading is accepted or rejected on its
own, and one bad reading never costs the others. This is the hot path of ingest (a message
holds up to 500 readings), so the checks are plain comparisons over what orjson returns,
with exact types, in one flat loop; the words of a rejection are built only once a reading
has failed (rejection_details.py).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import orjson

from ehealthlab.contract.catalogue import METRICS, Metric
from ehealthlab.contract.clock import FUTURE_TOLERANCE, clock_is_wrong
from ehealthlab.contract.messages import MAX_SEQ, ReasonCode
from ehealthlab.contract.outcome import Rejection, ValidReading
from ehealthlab.contract.rejection_details import (
    READING_FIELDS,
    in_future,
    not_for_device,
    out_of_range,
    reading_shape_problem,
    unit_mismatch,
    unknown_metric,
)
from ehealthlab.contract.timestamps import TimestampError, format_timestamp, parse_timestamp
from ehealthlab.contract.wording import EN_DASH

_READING_KEYS = frozenset(READING_FIELDS)
#: a plain dict is faster to look up on the hot path than the catalogue's read-only view
_METRICS_BY_CODE: dict[str, Metric] = dict(METRICS)


# one pass per reading, kept in one flat function: it is the hot path of ingest
def judge_readings(  # noqa: PLR0912, PLR0915
    readings: list[Any],
    *,
    clock_offset: timedelta,
    measured_metrics: frozenset[str],
    device_type_code: str,
    received_at: datetime,
) -> tuple[list[ValidReading], list[Rejection]]:
    """Accept or reject each reading on its own, in the order the contract checks them:
    shape, metric, device type, unit, range, time."""
    corrected = clock_is_wrong(clock_offset)
    latest_allowed = received_at + FUTURE_TOLERANCE
    metrics = _METRICS_BY_CODE
    # readings of one measurement share `at`: parse each distinct text once
    parsed_at: dict[str, datetime] = {}
    accepted: list[ValidReading] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(readings):
        # exact types: orjson returns exact types, and a bool must not pass for an int
        if type(item) is not dict or item.keys() != _READING_KEYS:
            rejected.append(_shape_rejection(index, item))
            continue
        seq = item["seq"]
        metric_code = item["metric"]
        value = item["value"]
        unit = item["unit"]
        at_text = item["at"]
        if (
            type(seq) is not int
            or not 0 <= seq <= MAX_SEQ
            or type(metric_code) is not str
            or type(unit) is not str
            or type(at_text) is not str
            or not (type(value) is int or (type(value) is float and math.isfinite(value)))
        ):
            rejected.append(_shape_rejection(index, item))
            continue
        at = parsed_at.get(at_text)
        if at is None:
            try:
                at = parsed_at[at_text] = parse_timestamp(at_text)
            except TimestampError as exc:
                rejected.append(_rejection(index, item, ReasonCode.SCHEMA_VIOLATION, f"'at' {exc}"))
                continue

        entry = metrics.get(metric_code)
        if entry is None:
            rejected.append(
                _rejection(index, item, ReasonCode.UNKNOWN_METRIC, unknown_metric(metric_code))
            )
            continue
        if metric_code not in measured_metrics:
            detail = not_for_device(metric_code, device_type_code, measured_metrics)
            rejected.append(_rejection(index, item, ReasonCode.METRIC_NOT_FOR_DEVICE_TYPE, detail))
            continue
        if unit == entry.unit:
            canonical = float(value)
        else:
            conversion = entry.conversions.get(unit)
            if conversion is None:
                rejected.append(
                    _rejection(index, item, ReasonCode.UNIT_MISMATCH, unit_mismatch(unit, entry))
                )
                continue
            canonical = conversion.to_canonical(value)
        if not entry.minimum <= canonical <= entry.maximum:
            detail = out_of_range(entry, value, unit, canonical)
            rejected.append(_rejection(index, item, ReasonCode.OUT_OF_RANGE, detail))
            continue

        measured_at = at
        if corrected:
            try:
                measured_at = at + clock_offset
            except OverflowError:
                reason = (
                    ReasonCode.TIMESTAMP_IN_FUTURE
                    if clock_offset > timedelta(0)
                    else ReasonCode.SCHEMA_VIOLATION
                )
                detail = (
                    f"'at' {format_timestamp(at)} moved by the device clock's offset "
                    f"{clock_offset.total_seconds():+.0f} s falls outside the years 1{EN_DASH}9999"
                )
                rejected.append(_rejection(index, item, reason, detail))
                continue
        if measured_at > latest_allowed:
            detail = in_future(at, measured_at, received_at, clock_offset if corrected else None)
            rejected.append(_rejection(index, item, ReasonCode.TIMESTAMP_IN_FUTURE, detail))
            continue
        accepted.append(
            ValidReading(
                index,
                seq,
                metric_code,
                canonical,
                entry.unit,
                value,
                unit,
                at,
                measured_at,
                corrected,
            )
        )
    return accepted, rejected


def _rejection(index: int, item: object, reason: ReasonCode, detail: str) -> Rejection:
    """A rejected reading, with what could be read of its seq, metric and at."""
    seq = metric_code = at = None
    if isinstance(item, dict):
        seq = item.get("seq")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            seq = None
        metric_code = item.get("metric")
        if not isinstance(metric_code, str):
            metric_code = None
        at_text = item.get("at")
        if isinstance(at_text, str):
            try:
                at = parse_timestamp(at_text)
            except TimestampError:
                at = None
    return Rejection(
        index=index,
        seq=seq,
        metric=metric_code,
        at=at,
        reason=reason,
        detail=detail,
        raw=orjson.dumps(item),
    )


def _shape_rejection(index: int, item: object) -> Rejection:
    return _rejection(index, item, ReasonCode.SCHEMA_VIOLATION, reading_shape_problem(item))
