"""Mini-pilots: CMTo defines them through the API, the evaluation reads them from the store.

The API tests run against a real PostgreSQL and Mosquitto (the application of conftest); the
store tests run on both physical forms of the store, on connections already in a
transaction, as the evaluation calls them.
"""

from __future__ import annotations

import uuid
from datetime import date

import psycopg
import pytest
from gateway_fixtures import assert_problem, bearer

from ehealthlab.errors import ConflictError, InvalidFieldError
from ehealthlab.evaluation.mini_pilots import (
    MiniPilot,
    create_mini_pilot,
    get_mini_pilot,
    list_mini_pilots,
)
from ehealthlab.gateway import admin, organisation_registry

PATH = "/api/v1/mini-pilots"
NO_SUCH_ISTAT = "999999"  # well formed, no municipality has it


@pytest.fixture(scope="module")
def people(client, settings) -> dict[str, str]:
    """Tokens (`operator`, `a`, `b`, `p`) and organisation ids (`id:a`...): CMTo, two
    start-ups and a health provider."""
    boot = admin.bootstrap_operator(settings)
    found = {"operator": boot["token"], "id:operator": boot["organisation_id"]}
    for who, kind in (("a", "startup"), ("b", "startup"), ("p", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(boot["token"]),
        )
        assert answer.status_code == 201, answer.text
        found[who], found[f"id:{who}"] = answer.json()["token"], answer.json()["id"]
    return found


def body(people: dict[str, str], **overrides: object) -> dict[str, object]:
    return {
        "name": f"mini-pilot {uuid.uuid4().hex[:8]}",
        "startups": [people["id:a"]],
        "municipalities": ["001003"],
        "start": "2026-01-01",
        "end": "2026-03-31",
        **overrides,
    }


def listed(client, people) -> list[dict]:
    answer = client.get(PATH, headers=bearer(people["operator"]))
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- the operator defines, lists and reads ---------------------------------------------------


def test_the_operator_creates_lists_and_reads_a_mini_pilot(client, people):
    sent = body(
        people,
        startups=[people["id:b"], people["id:a"], people["id:b"]],  # a repeat counts once
        municipalities=["001272", "001003", "001003"],
        start="2026-01-01",
        end="2026-01-01",  # one day: both ends are included
    )
    created = client.post(PATH, json=sent, headers=bearer(people["operator"]))
    assert created.status_code == 201, created.text
    assert set(created.json()) == {"id"}
    pilot_id = created.json()["id"]

    expected = {
        "id": pilot_id,
        "name": sent["name"],
        "startups": sorted([people["id:a"], people["id:b"]], key=uuid.UUID),
        "municipalities": ["001003", "001272"],
        "start": "2026-01-01",
        "end": "2026-01-01",
    }
    [mine] = [p for p in listed(client, people) if p["id"] == pilot_id]
    assert {k: v for k, v in mine.items() if k != "created_at"} == expected
    assert mine["created_at"]
    one = client.get(f"{PATH}/{pilot_id}", headers=bearer(people["operator"]))
    assert one.status_code == 200 and one.json() == mine


def test_the_list_is_by_start_then_name(client, people):
    tag = uuid.uuid4().hex[:6]
    for name, start in ((f"{tag} b", "2026-02-01"), (f"{tag} a", "2026-02-01"),
                        (f"{tag} c", "2026-01-15")):  # fmt: skip
        answer = client.post(PATH, json=body(people, name=name, start=start),
                             headers=bearer(people["operator"]))  # fmt: skip
        assert answer.status_code == 201, answer.text
    names = [p["name"] for p in listed(client, people) if p["name"].startswith(tag)]
    assert names == [f"{tag} c", f"{tag} a", f"{tag} b"]


@pytest.mark.parametrize("path_id", ["5381207b-8765-4164-aa74-96ab443d1f6d", "not-an-id", "%2F"])
def test_an_unknown_mini_pilot_is_not_found(client, people, path_id):
    assert_problem(client.get(f"{PATH}/{path_id}", headers=bearer(people["operator"])), 404)


# -- refusals: each bad reference named ------------------------------------------------------

BAD = {
    # case: (overrides of the body, {field named in `errors`: text its message has});
    # <id:a> is start-up a's organisation id, <unknown> an id no organisation has
    "an unknown organisation": (
        {"startups": ["<id:a>", "<unknown>"]},
        {"body.startups.1": "no organisation <unknown>"},
    ),
    "a provider as a start-up": (
        {"startups": ["<id:p>"]},
        {"body.startups.0": "<id:p> is a health provider, not a start-up"},
    ),
    "the operator as a start-up": (
        {"startups": ["<id:operator>", "<id:a>"]},
        {"body.startups.0": "is the operator, not a start-up"},
    ),
    "an unknown ISTAT code": (
        {"municipalities": ["001003", NO_SUCH_ISTAT]},
        {"body.municipalities.1": f"'{NO_SUCH_ISTAT}' is not the ISTAT code"},
    ),
    "end before start": (
        {"start": "2026-03-31", "end": "2026-03-30"},
        {"body.end": "end 2026-03-30 is before start 2026-03-31"},
    ),
    "every one at once": (
        {
            "startups": ["<unknown>", "<id:a>", "<id:p>"],
            "municipalities": [NO_SUCH_ISTAT, "001003", "000000"],
            "start": "2026-03-31",
            "end": "2026-01-01",
        },
        {
            "body.startups.0": "no organisation <unknown>",
            "body.startups.2": "<id:p> is a health provider",
            "body.municipalities.0": f"'{NO_SUCH_ISTAT}'",
            "body.municipalities.2": "'000000'",
            "body.end": "is before start",
        },
    ),
    # malformed rather than unknown: refused by request validation, same problem format
    "a malformed ISTAT code": ({"municipalities": ["1003"]}, {"body.municipalities.0": ""}),
    "a malformed organisation id": ({"startups": ["cardiosense"]}, {"body.startups.0": ""}),
    "no start-ups": ({"startups": []}, {"body.startups": ""}),
    "no municipalities": ({"municipalities": []}, {"body.municipalities": ""}),
    "an empty name": ({"name": "  "}, {"body.name": ""}),
    "a name too long": ({"name": "x" * 201}, {"body.name": ""}),
    "an unknown field": ({"region": "Piemonte"}, {"body.region": ""}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_mini_pilot_is_refused_naming_each_bad_thing(client, people, case):
    overrides, expected = BAD[case]
    names = {**people, "unknown": str(uuid.uuid4())}

    def filled(value):
        if isinstance(value, list):
            return [filled(v) for v in value]
        if isinstance(value, str):
            for name, known in names.items():
                value = value.replace(f"<{name}>", known)
        return value

    sent = body(people, **{k: filled(v) for k, v in overrides.items()})
    before = listed(client, people)
    answer = client.post(PATH, json=sent, headers=bearer(people["operator"]))
    problem = assert_problem(answer, 422)
    errors = {e["field"]: e["message"] for e in problem["errors"]}
    assert set(errors) == set(expected), problem
    for field, text in expected.items():
        assert filled(text) in errors[field], problem
        if text:  # the store's refusals: the detail says them all too
            assert filled(text) in problem["detail"], problem
    assert listed(client, people) == before  # nothing written, not even in part


def test_a_name_is_taken_once(client, people):
    first = client.post(PATH, json=body(people, name="Valli di Lanzo"),
                        headers=bearer(people["operator"]))  # fmt: skip
    assert first.status_code == 201, first.text
    before = listed(client, people)
    again = client.post(
        PATH,
        json=body(people, name="Valli di Lanzo", startups=[people["id:b"]]),
        headers=bearer(people["operator"]),
    )
    problem = assert_problem(again, 409, detail_has="'Valli di Lanzo' already exists")
    assert problem["id"] == first.json()["id"]
    assert listed(client, people) == before


# -- who may -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [("POST", PATH), ("GET", PATH), ("GET", PATH + "/{pilot}")])
@pytest.mark.parametrize(
    "refused", [("a", 403), ("p", 403), (None, 401), ("ehl_" + "A" * 43, 401), ("garbage", 401)]
)
def test_only_the_operator_may(client, people, route, refused):
    (method, path), (who, status) = route, refused
    pilot = client.post(PATH, json=body(people), headers=bearer(people["operator"])).json()["id"]
    before = listed(client, people)
    headers = {} if who is None else bearer(people.get(who, who))
    answer = client.request(
        method, path.format(pilot=pilot), json=body(people) if method == "POST" else None,
        headers=headers,
    )  # fmt: skip
    assert_problem(answer, status)
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert listed(client, people) == before


# -- the store, as the evaluation reads it ---------------------------------------------------


def _organisations(url: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        return tuple(  # type: ignore[return-value]
            organisation_registry.create_organisation(conn, kind, f"{kind} {n}").id
            for n, kind in enumerate(("startup", "startup", "provider"))
        )


def test_the_store_works_inside_the_callers_transaction_and_never_commits(store_url):
    a, b, provider = _organisations(store_url)
    with psycopg.connect(store_url) as conn:  # not autocommit: the caller's transaction
        made = create_mini_pilot(conn, name="Canavese", startups=[b, a, a],
                                 municipalities=["001125", "001003"],
                                 start=date(2026, 1, 1), end=date(2026, 6, 30))  # fmt: skip
        assert made == MiniPilot(made.id, "Canavese", tuple(sorted((a, b))),
                                 ("001003", "001125"), date(2026, 1, 1), date(2026, 6, 30),
                                 made.created_at)  # fmt: skip
        # a refusal leaves the caller's transaction usable: nothing failed in the database
        with pytest.raises(ConflictError):
            create_mini_pilot(conn, name="Canavese", startups=[a], municipalities=["001003"],
                              start=date(2026, 1, 1), end=date(2026, 1, 2))  # fmt: skip
        with pytest.raises(InvalidFieldError) as refused:
            create_mini_pilot(conn, name="Other", startups=[provider, uuid.uuid4()],
                              municipalities=[NO_SUCH_ISTAT], start=date(2026, 1, 2),
                              end=date(2026, 1, 1))  # fmt: skip
        assert [field for field, _ in refused.value.errors] == [
            "startups.0", "startups.1", "municipalities.0", "end"
        ]  # fmt: skip
        assert list_mini_pilots(conn) == [made]
        assert get_mini_pilot(conn, made.id) == made
        assert get_mini_pilot(conn, uuid.uuid4()) is None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()  # the caller decides: nothing was committed behind its back
        assert list_mini_pilots(conn) == []


def test_on_an_autocommit_connection_a_mini_pilot_is_written_whole(store_url):
    a, _, _ = _organisations(store_url)
    with psycopg.connect(store_url, autocommit=True) as conn:
        made = create_mini_pilot(conn, name="Pinerolese", startups=[a],
                                 municipalities=["001191"], start=date(2026, 1, 1),
                                 end=date(2026, 1, 31))  # fmt: skip
    with psycopg.connect(store_url, autocommit=True) as other:
        assert list_mini_pilots(other) == [made]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO mini_pilots (name, start_date, end_date)"
        " VALUES ('backwards', '2026-02-01', '2026-01-31')",
        "INSERT INTO mini_pilots (name, start_date, end_date)"
        " VALUES ('', '2026-01-01', '2026-01-01')",
        "INSERT INTO mini_pilot_startups SELECT id, gen_random_uuid() FROM mini_pilots",
        "INSERT INTO mini_pilot_municipalities SELECT id, '999999' FROM mini_pilots",
    ],
)
def test_the_schema_itself_refuses_what_the_module_checks(store_url, statement):
    a, _, _ = _organisations(store_url)
    with psycopg.connect(store_url, autocommit=True) as conn:
        create_mini_pilot(conn, name="x", startups=[a], municipalities=["001003"],
                          start=date(2026, 1, 1), end=date(2026, 1, 1))  # fmt: skip
        with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation)):
            conn.execute(statement)
