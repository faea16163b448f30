"""The gateway's pure parts: API tokens, device ids and passwords, patient pseudonyms."""

from __future__ import annotations

import re
import uuid

import pytest

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.contract.topics import is_valid_device_id
from ehealthlab.gateway import tokens
from ehealthlab.gateway.pseudonyms import normalise_identifier, patient_pseudonym

KEY = b"a long random patient key for tests"
ASL = uuid.UUID("00000000-0000-4000-8000-000000000001")
CLINIC = uuid.UUID("00000000-0000-4000-8000-000000000002")


def test_new_tokens_are_prefixed_random_and_recognised():
    made = {tokens.new_token() for _ in range(200)}
    assert len(made) == 200
    for token in made:
        assert token.startswith("ehl_")
        assert tokens.looks_like_token(token)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "ehl_",
        "ehl_short",
        "Bearer ehl_" + "a" * 43,
        "ehl_" + "a" * 42,
        "ehl_" + "a" * 44,
        "ehl_" + "a" * 42 + "/",
        "ehl_" + "a" * 42 + "é",
        "EHL_" + "a" * 43,
        "xyz_" + "a" * 43,
        " ehl_" + "a" * 43,
    ],
)
def test_anything_not_shaped_like_a_token_is_refused(candidate):
    assert not tokens.looks_like_token(candidate)


def test_a_token_matches_its_own_hash_only():
    token, other = tokens.new_token(), tokens.new_token()
    stored = tokens.hash_token(token)
    assert len(stored) == 32 and token.encode() not in stored
    assert tokens.token_matches(token, stored)
    assert not tokens.token_matches(other, stored)
    assert not tokens.token_matches(token, stored[:-1] + bytes([stored[-1] ^ 1]))


@pytest.mark.parametrize("device_type", [*sorted(DEVICE_TYPES), "future_type", "x", "Odd Type!"])
def test_device_ids_follow_the_contract(device_type):
    ids = {tokens.new_device_id(device_type) for _ in range(50)}
    assert len(ids) == 50
    assert all(is_valid_device_id(i) for i in ids)
    assert all(re.fullmatch(r"[a-z0-9]+-[0-9a-f]{16}", i) for i in ids)


def test_device_passwords_are_long_and_random():
    made = {tokens.new_device_password() for _ in range(100)}
    assert len(made) == 100 and all(len(p) == 32 for p in made)


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("RSSMRA50A01L219X", "RSSMRA50A01L219X"),
        ("rssmra50a01l219x", "RSSMRA50A01L219X"),
        ("  RSSMRA50A01L219X\t", "RSSMRA50A01L219X"),
        ("\uff32\uff33\uff33\uff11\uff12", "RSS12"),  # full-width forms, pasted from some systems
        ("MRN 0042", "MRN 0042"),  # inner spaces are significant
    ],
)
def test_identifiers_are_normalised_before_hashing(typed, normalised):
    assert normalise_identifier(typed) == normalised
    assert patient_pseudonym(KEY, ASL, typed) == patient_pseudonym(KEY, ASL, normalised)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((KEY, ASL, "RSSMRA50A01L219X"), (KEY, CLINIC, "RSSMRA50A01L219X")),  # other provider
        ((KEY, ASL, "RSSMRA50A01L219X"), (KEY + b"!", ASL, "RSSMRA50A01L219X")),  # other key
        ((KEY, ASL, "RSSMRA50A01L219X"), (KEY, ASL, "RSSMRA50A01L219Y")),  # other person
        ((KEY, ASL, "MRN 0042"), (KEY, ASL, "MRN0042")),
    ],
)
def test_pseudonyms_differ_by_provider_key_and_identifier(a, b):
    assert patient_pseudonym(*a) != patient_pseudonym(*b)


def test_a_pseudonym_is_a_keyed_hash_that_does_not_contain_the_identifier():
    digest = patient_pseudonym(KEY, ASL, "RSSMRA50A01L219X")
    assert len(digest) == 32 and b"RSSMRA" not in digest
    assert digest == patient_pseudonym(KEY, ASL, "RSSMRA50A01L219X")


@pytest.mark.parametrize(("key", "identifier"), [(b"", "RSSMRA50A01L219X"), (KEY, "   ")])
def test_an_empty_key_or_identifier_is_refused(key, identifier):
    with pytest.raises(ValueError, match="empty"):
        patient_pseudonym(key, ASL, identifier)
