"""Who may read what through /fhir: SMART-style scopes per kind of organisation, and the
tenant a caller's searches are confined to.

Pure. A token speaks for one organisation; its kind decides its scopes (SMART App Launch v2
syntax, `context/Type.perms`, `rs` = read and search):

- the operator (CMTo) reads everything: `system/*.rs`;
- a health provider reads its own patients' data as a user acting for them (`user/...`);
- a start-up reads, as a backend system, what its own devices sent (`system/...`), unassigned
  readings included, but no Patient: it has no business with who the patient is;
- every token reads what the platform publishes (PUBLISHED): the SUS Questionnaire, the
  indicators' Measures, and MeasureReports with their Groups, whose small groups are
  suppressed (indicators.md, "Published outputs protect small groups");
- a provider also posts (`c`) SUS QuestionnaireResponses about its own patients and reads
  them; the operator posts and reads any (the route checks the create, routes.py of
  questionnaires/).

A type outside the scopes is refused (403: the rule is the same for every caller, so saying
so reveals nothing); inside them, the tenant filter (the SQL of search/) hides whatever
belongs to someone else, so another tenant's resource is answered exactly like a missing one
(404).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from uuid import UUID

from ehealthlab.errors import PermissionDeniedError

Kind = Literal["operator", "provider", "startup"]
Interaction = Literal["read", "search", "create"]

#: what the platform publishes for every token to read (no patient data, small groups
#: suppressed): the SUS Questionnaire, the indicators' Measures, MeasureReports and Groups
PUBLISHED: tuple[str, ...] = ("Questionnaire", "Measure", "MeasureReport", "Group")

#: the scopes each kind of organisation's tokens carry
SCOPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "operator": ("system/*.rs", "system/QuestionnaireResponse.c"),
        "provider": (
            "user/Patient.rs",
            "user/Observation.rs",
            "user/Device.rs",
            "user/Organization.rs",
            "user/Location.rs",
            "user/QuestionnaireResponse.crs",
            *(f"user/{t}.rs" for t in PUBLISHED),
        ),
        "startup": (
            "system/Observation.rs",
            "system/Device.rs",
            "system/Organization.rs",
            "system/Location.rs",
            *(f"system/{t}.rs" for t in PUBLISHED),
        ),
    }
)

#: resource types whose reads are reads of patient data, and so are audited
PATIENT_DATA = frozenset({"Patient", "Observation", "QuestionnaireResponse"})

_PERMISSION = {"create": "c", "read": "r", "search": "s"}


@dataclass(frozen=True, slots=True)
class Tenant:
    """The organisation a request speaks for, and so the rows it may see."""

    kind: Kind
    organisation_id: UUID

    @property
    def sees_everything(self) -> bool:
        return self.kind == "operator"


def scopes_for(kind: str) -> tuple[str, ...]:
    """The SMART scopes of a token of this kind of organisation (none for an unknown kind)."""
    return SCOPES.get(kind, ())


def permits(scopes: tuple[str, ...], resource_type: str, interaction: Interaction) -> bool:
    """True when one of the scopes grants `interaction` on `resource_type`."""
    wanted = _PERMISSION[interaction]
    for scope in scopes:
        _, _, rest = scope.partition("/")
        scope_type, _, permissions = rest.partition(".")
        if scope_type in ("*", resource_type) and wanted in permissions:
            return True
    return False


def require(kind: str, resource_type: str, interaction: Interaction) -> None:
    """PermissionDeniedError unless this kind of organisation's scopes allow it."""
    if not permits(scopes_for(kind), resource_type, interaction):
        raise PermissionDeniedError(
            f"a {kind} token's scopes ({' '.join(scopes_for(kind)) or 'none'}) do not "
            f"allow {interaction} of {resource_type}"
        )
