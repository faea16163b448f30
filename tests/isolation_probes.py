"""The isolation matrix's machinery: requests as each organisation (API token or portal
session), the checks (denied, clean of the other world's identifiers) and the kinds of probe
a route's entry in test_isolation_http.ROUTES is made of.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx2
from isolation_world import World

ORGS = ("A", "P", "B", "Q")
DENIED = (403, 404)


class Matrix:
    """Requests as each organisation, and the (route, organisation) pairs checked."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.http = httpx2.Client(base_url=world.api_url, timeout=60)
        self.sessions: dict[str, httpx2.Client] = {}
        self.pairs: set[tuple[str, str]] = set()
        self.broker: tuple[str, int] = ("127.0.0.1", 0)
        self.requests = 0

    def close(self) -> None:
        for client in (self.http, *self.sessions.values()):
            client.close()

    def ask(self, who: str, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        self.requests += 1
        headers = {**self.world.headers(who), **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def clean(self, route: str, who: str, answer: httpx2.Response, named: str = "") -> None:
        """No identifier of the other world in the answer, but for the one the request named
        itself (an error page echoing the path, a Bundle's self link echoing the query); a
        Bundle's entries may not hold even that one."""
        assert answer.status_code < 500, f"{route} as {who}: {answer.status_code}"
        foreign = self.world.foreign_ids(who)
        leaked = {i for i in foreign if i in answer.text and (not named or i not in named)}
        assert not leaked, f"{route} as {who}: {leaked} in {answer.text[:300]}"
        if answer.headers.get("content-type", "").startswith("application/fhir+json"):
            entries = str([e.get("resource") for e in answer.json().get("entry", [])])
            assert not {i for i in foreign if i in entries}, f"{route} as {who}: {entries[:300]}"
        self.pairs.add((route, who))

    def denied(self, route: str, who: str, answer: httpx2.Response, named: str = "") -> None:
        assert answer.status_code in DENIED, (route, who, answer.status_code, answer.text[:300])
        self.clean(route, who, answer, named)

    def session(self, who: str) -> httpx2.Client:
        """A portal session of `who`, logged in through the login form."""
        if who not in self.sessions:
            browser = httpx2.Client(base_url=self.world.api_url, timeout=60)
            form = browser.get("/portal/login")
            token = self.world.orgs[who].token
            answer = browser.post(
                "/portal/login", data={"csrf_token": csrf(form.text), "token": token}
            )
            assert answer.status_code == 303, answer.text[:300]
            self.sessions[who] = browser
        return self.sessions[who]

    def portal(self, who: str, method: str, path: str, **form: str) -> httpx2.Response:
        browser = self.session(who)
        self.requests += 1
        if method == "GET":
            return browser.get(path)
        token = csrf(browser.get("/portal/", follow_redirects=True).text)
        return browser.post(path, data={"csrf_token": token, **form})


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:300]
    return found.group(1)


def others(world: World, owner_world: int) -> list[str]:
    return [who for who in ORGS if world.orgs[who].world != owner_world]


# -- probes -------------------------------------------------------------------------------------
Probe = Callable[[Matrix, str], None]
#: (world number, world) -> the ids of that world a route takes, and who may see them
IdsOf = Callable[[World, int], tuple[list[str], str]]


def startup_devices(world: World, n: int) -> tuple[list[str], str]:
    org = world.orgs["A" if n == 1 else "B"]
    return list(org.devices.values()), org.name


def provider_field(name: str) -> IdsOf:
    def ids(world: World, n: int) -> tuple[list[str], str]:
        org = world.orgs["P" if n == 1 else "Q"]
        return [getattr(org, name)], org.name

    return ids


def observations(world: World, n: int) -> tuple[list[str], str]:
    return sorted(world.observations[n])[:3], "A" if n == 1 else "B"


def organisations(world: World, n: int) -> tuple[list[str], str]:
    return [o.id for o in world.orgs.values() if o.world == n], "A" if n == 1 else "B"


def by_id(
    method: str,
    template: str,
    ids_of: IdsOf,
    *,
    control: bool = True,
    portal: bool = False,
    **form: str,
) -> Probe:
    """The other world's ids in the path: denied; the owner (control) gets 2xx."""

    def probe(m: Matrix, route: str) -> None:
        for n in (1, 2):
            ids, owner = ids_of(m.world, n)
            for value in ids:
                path = template.format(value)
                for who in others(m.world, n):
                    answer = (
                        m.portal(who, method, path, **form)
                        if portal
                        else m.ask(who, method, path, **form_body(form))
                    )
                    m.denied(route, who, answer, named=path)
                if control:
                    mine = m.portal(owner, "GET", path) if portal else m.ask(owner, "GET", path)
                    assert mine.status_code == 200, (route, owner, mine.text[:300])

    return probe


def form_body(form: dict[str, str]) -> dict[str, Any]:
    return {"json": form} if form else {}


def listing(path: str, *, portal: bool = False, method: str = "GET", **form: str) -> Probe:
    """As every organisation: refused, or an answer with nothing of the other world."""

    def probe(m: Matrix, route: str) -> None:
        for who in ORGS:
            answer = m.portal(who, method, path, **form) if portal else m.ask(who, method, path)
            m.clean(route, who, answer)

    return probe


def with_foreign(
    method: str,
    path: str,
    make_body: Callable[[World, str], dict[str, Any]],
    *,
    portal: bool = False,
) -> Probe:
    """A create whose body names the other world's things: refused, nothing leaked."""

    def probe(m: Matrix, route: str) -> None:
        for who in ORGS:
            body = make_body(m.world, who)
            answer = (
                m.portal(who, method, path, **body) if portal else m.ask(who, method, path, **body)
            )
            assert 400 <= answer.status_code < 500, (route, who, answer.status_code, answer.text)
            m.clean(route, who, answer, named=str(body))

    return probe


def operator_only(method: str, path: str, *, portal: bool = False) -> Probe:
    def probe(m: Matrix, route: str) -> None:
        for who in ORGS:
            answer = m.portal(who, method, path) if portal else m.ask(who, method, path, json={})
            m.denied(route, who, answer)

    return probe


def public(reason: str) -> Probe:
    """No tenant's data behind it (the reason says why); nothing to deny."""

    def probe(m: Matrix, route: str) -> None:
        m.pairs.add((route, "-"))

    probe.__doc__ = reason
    return probe


def foreign_of(who_world_role: str) -> Callable[[World, str], str]:
    """An id of the other world's `role` (device, patient)."""

    def pick(world: World, who: str) -> str:
        other = 3 - world.orgs[who].world
        startup, provider = ("A", "P") if other == 1 else ("B", "Q")
        if who_world_role == "device":
            return world.orgs[startup].devices["cuff"]
        return world.orgs[provider].patient

    return pick


def enrolment_body(world: World, who: str) -> dict[str, Any]:
    own = world.orgs["P" if world.orgs[who].world == 1 else "Q"]
    return {
        "json": {
            "patient_id": own.patient,
            "device_id": foreign_of("device")(world, who),
            "municipality": "001003",
            "start": "2026-01-01",
            "end": None,
            "care_plan": {"bp_systolic": 1},
        }
    }


def foreign_patient_enrolment(world: World, who: str) -> dict[str, Any]:
    own = world.orgs["A" if world.orgs[who].world == 1 else "B"]
    return {
        "json": {
            "patient_id": foreign_of("patient")(world, who),
            "device_id": own.devices["spare"],
            "municipality": "001003",
            "start": "2026-01-01",
            "end": None,
            "care_plan": {"bp_systolic": 1},
        }
    }


def both(*probes: Probe) -> Probe:
    def probe(m: Matrix, route: str) -> None:
        for each in probes:
            each(m, route)

    return probe
