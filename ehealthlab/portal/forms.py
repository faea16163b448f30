"""HTML forms to the API's own request bodies: pure functions, no I/O.

A posted form becomes the same pydantic body the JSON API validates (gateway and evaluation
schemas), so the portal accepts exactly what the API accepts; what pydantic refuses becomes
the platform's InvalidFieldError, naming each field and never echoing the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.errors import InvalidFieldError, InvalidInputError
from ehealthlab.evaluation.schemas import MiniPilotCreate
from ehealthlab.gateway.schemas import (
    DeviceCreate,
    EnrolmentCreate,
    OrganisationCreate,
    PatientCreate,
)

#: a form larger than this is no form of ours
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 2000
#: the care plan's fields are `plan_<metric>`: readings per day, blank when not measured
PLAN_PREFIX = "plan_"

_Model = TypeVar("_Model", bound=BaseModel)


class Form:
    """A posted application/x-www-form-urlencoded body: each name's values, in order."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self._fields = dict(fields)

    @classmethod
    def parse(cls, body: bytes) -> Form:
        if len(body) > MAX_FORM_BYTES:
            raise InvalidInputError(f"the form is larger than {MAX_FORM_BYTES} bytes")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict",
                              max_num_fields=MAX_FORM_FIELDS)  # fmt: skip
        except UnicodeDecodeError:
            raise InvalidInputError("the form is not UTF-8") from None
        except ValueError:  # more fields than any form of ours has
            raise InvalidInputError(f"the form has more than {MAX_FORM_FIELDS} fields") from None
        return cls(fields)

    def get(self, name: str) -> str | None:
        """The first value of a field, None when it is absent."""
        values = self._fields.get(name)
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        """The first value stripped, None when absent or blank (an optional field left empty)."""
        value = (self.get(name) or "").strip()
        return value or None

    def all(self, name: str) -> list[str]:
        """Every non-blank value of a field (checkboxes, multiple selects)."""
        return [v.strip() for v in self._fields.get(name, []) if v.strip()]

    def names(self) -> list[str]:
        return list(self._fields)


def validated(model: type[_Model], data: Mapping[str, Any]) -> _Model:
    """The API's body for these fields, or InvalidFieldError naming every refused field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        errors = [
            (".".join(str(p) for p in error["loc"]) or "form", str(error["msg"]))
            for error in exc.errors(include_input=False, include_url=False)
        ]
        (field, message), *also = errors
        raise InvalidFieldError(field, message, also=also) from None


def device_create(form: Form) -> DeviceCreate:
    return validated(
        DeviceCreate,
        {"type": form.get("type"), "model": form.get("model"), "serial": form.get("serial"),
         "firmware": form.text("firmware")},
    )  # fmt: skip


def organisation_create(form: Form) -> OrganisationCreate:
    return validated(
        OrganisationCreate,
        {"kind": form.get("kind"), "name": form.get("name"), "fls_code": form.text("fls_code"),
         "simulated": form.get("simulated") == "on"},
    )  # fmt: skip


def patient_create(form: Form) -> PatientCreate:
    return validated(
        PatientCreate, {"identifier": form.get("identifier"), "label": form.get("label")}
    )


def care_plan(form: Form) -> dict[str, int]:
    """`plan_<metric>` fields to the care plan: readings per day of each metric filled in."""
    plan: dict[str, int] = {}
    for metric in METRICS:
        value = form.text(PLAN_PREFIX + metric)
        if value is None:
            continue
        if not value.isdigit():
            raise InvalidFieldError(f"care_plan.{metric}", "readings per day: a whole number")
        plan[metric] = int(value)
    return plan


def municipality_code(value: str | None, names: Mapping[str, str]) -> str | None:
    """An ISTAT code as typed, or the code of a municipality typed by its name (any case);
    `names` maps lower-case names to codes."""
    if value is None:
        return None
    return names.get(value.casefold(), value)


def enrolment_create(form: Form, names: Mapping[str, str]) -> EnrolmentCreate:
    return validated(
        EnrolmentCreate,
        {"patient_id": form.get("patient_id"), "device_id": form.text("device_id"),
         "municipality": municipality_code(form.text("municipality"), names),
         "start": form.text("start"), "end": form.text("end"), "care_plan": care_plan(form)},
    )  # fmt: skip


def mini_pilot_create(form: Form) -> MiniPilotCreate:
    return validated(
        MiniPilotCreate,
        {"name": form.get("name"), "startups": form.all("startups"),
         "municipalities": form.all("municipalities"), "start": form.text("start"),
         "end": form.text("end")},
    )  # fmt: skip
