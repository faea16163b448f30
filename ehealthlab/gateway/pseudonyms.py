"""Pseudonymous patients: a provider's patient identifier becomes a keyed hash.

The platform never stores the identifier (a codice fiscale, a hospital record number) in
clear: it keeps HMAC-SHA256 under the platform's patient key (EHEALTHLAB_PATIENT_KEY) of the
identifier *and* the provider organisation. Scoping by organisation makes the same person
registered by two providers two unlinkable pseudonyms; the key makes a stolen table useless
for guessing identifiers from their small space. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from uuid import UUID

#: identifiers longer than this are refused before hashing (schemas enforce it too)
MAX_IDENTIFIER_LENGTH = 128
#: a codice fiscale (omocodia's letters for digits included), in a normalised text
_CODICE_FISCALE = re.compile(
    r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]"
)


def normalise_identifier(identifier: str) -> str:
    """The form that is hashed: Unicode NFKC, surrounding spaces dropped, upper case.

    Clerks type the same codice fiscale in either case and with stray spaces; those must be
    one patient, not two.
    """
    return unicodedata.normalize("NFKC", identifier).strip().upper()


def patient_pseudonym(key: bytes, organisation_id: UUID, identifier: str) -> bytes:
    """The 32-byte keyed hash stored in `patients.identifier_hash`."""
    if not key:
        raise ValueError("the patient key is empty")
    normalised = normalise_identifier(identifier)
    if not normalised:
        raise ValueError("the patient identifier is empty")
    # the organisation's 16 bytes have a fixed length, so no separator is needed
    message = organisation_id.bytes + normalised.encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def label_problem(label: str, identifier: str) -> str | None:
    """Why a patient's label would put a direct identifier in the store, or None.

    The label is the provider's free text, stored in clear for its staff: a label holding the
    identifier being hashed, or any codice fiscale, would undo the pseudonym.
    """
    compact = "".join(normalise_identifier(label).split())
    hashed = "".join(normalise_identifier(identifier).split())
    if len(hashed) >= 4 and hashed in compact:
        return "the label contains the patient's identifier; use a local code or initials"
    if _CODICE_FISCALE.search(compact):
        return "the label contains a codice fiscale; use a local code or initials"
    return None
