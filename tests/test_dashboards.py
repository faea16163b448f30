"""What every dashboard must be, whatever it shows: a model Grafana accepts, built the same way
every time, whose every query runs as its organisation's role on a store the simulator filled
(both forms), for a day, a month and a year; and the build command's provisioning files.
What each dashboard shows is tested in its own module (test_dashboard_<name>.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import pytest
import yaml
from psycopg import sql

from ehealthlab.cli import main
from ehealthlab.dashboards import provisioning
from ehealthlab.dashboards.catalogue import DASHBOARDS, Entry
from ehealthlab.dashboards.macros import expand
from ehealthlab.dashboards.panels import DATASOURCE_TYPE, GRID_WIDTH, SCHEMA_VERSION, to_json
from ehealthlab.dashboards.panels import datasource_uid as uid_of
from ehealthlab.dashboards.provenance import SIMULATED
from ehealthlab.dashboards.queries import (
    panel_queries,
    query_context,
    query_variables,
    resolve_variables,
    run_panel,
)
from ehealthlab.ingest.alerts import load_rules

ROME = ZoneInfo("Europe/Rome")
BOARDS = {entry.name: entry for entry in DASHBOARDS}
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30),
          "365d": timedelta(days=365)}  # fmt: skip


def panels_of(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or ())
    return found


# -- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", DASHBOARDS, ids=lambda e: e.name)
def test_the_json_is_the_same_every_time_with_sorted_keys(entry: Entry) -> None:
    first, second = to_json(entry.build()), to_json(entry.build())
    assert first == second
    assert json.dumps(json.loads(first), sort_keys=True, indent=2) + "\n" == first


def test_dashboards_have_distinct_uids_and_titles() -> None:
    boards = [e.json_data() for e in DASHBOARDS]
    assert len({b["uid"] for b in boards}) == len(boards)
    assert len({b["title"] for b in boards}) == len(boards)


@pytest.mark.parametrize("entry", DASHBOARDS, ids=lambda e: e.name)
def test_the_model_has_what_grafana_requires(entry: Entry) -> None:
    board = entry.json_data()
    assert board["schemaVersion"] == SCHEMA_VERSION
    assert board["uid"] and len(board["uid"]) <= 40  # Grafana's limit on a uid
    assert board["title"] and board["timezone"] == "Europe/Rome"
    panels = panels_of(board)
    assert panels, "a dashboard without panels"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        if panel.get("type") == "row":
            continue
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel.get("title"), f"panel {panel['id']} has no title"
    wanted = {"type": DATASOURCE_TYPE, "uid": uid_of(entry.kind)}
    for panel in panels:
        if panel.get("type") in ("text", "row"):
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == wanted
            assert target["rawQuery"] is True and target["rawSql"].strip()
            assert target["format"] in ("table", "time_series")
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == wanted, variable["name"]


@pytest.mark.parametrize("entry", DASHBOARDS, ids=lambda e: e.name)
def test_every_query_expands_with_grafanas_macros_only(entry: Entry) -> None:
    """Unknown macros and undefined variables raise (macros.py); nothing is left for
    PostgreSQL to choke on."""
    board = entry.json_data()
    values = {v.name: ["x"] if v.multi or v.include_all else "x" for v in query_variables(board)}
    end = datetime(2026, 3, 16, tzinfo=UTC)
    context = query_context(end - timedelta(days=1), end, values, timescaledb=False)
    for variable in query_variables(board):
        assert "$" not in expand(variable.query, context).replace("$$", "")
    for query in panel_queries(board):
        expanded = expand(query.raw_sql, context)
        assert "$__" not in expanded, query.name


# -- every query, run as Grafana would, on a store the simulator filled ----------------------


def week_end(pilot) -> datetime:
    return datetime.combine(pilot.period.end, time(), ROME).astimezone(UTC)


#: tables the simulated week leaves empty (no faulty devices): panels on them may be empty
FAULT_TABLES = ("rejected_readings", "duplicate_readings")
#: panels whose empty answer at the week's end is a state, tested where they are made
#: (test_dashboard_operations): none silent then, and the broker dropped nothing, so the
#: operator was never paged
MAY_BE_EMPTY = {
    ("ehl-operations", "Silent devices"),
    ("ehl-operations", "Messages the broker dropped (lost)"),
    ("ehl-operations", "Pages for the operator"),
}


@pytest.mark.parametrize("span", list(RANGES))
@pytest.mark.parametrize("entry", DASHBOARDS, ids=lambda e: e.name)
def test_every_panel_runs_as_its_organisations_role(simulated_pilot, entry: Entry, span) -> None:
    board = entry.json_data()
    time_to = week_end(simulated_pilot)
    time_from = time_to - RANGES[span]
    shown: dict[int, bool] = {}
    reads: dict[int, str] = {}
    titles = {p["id"]: p.get("title") for p in panels_of(board)}
    with simulated_pilot.login(entry.kind) as conn:
        variables = resolve_variables(
            conn, board, time_from, time_to, timescaledb=simulated_pilot.timescaledb
        )
        for query in panel_queries(board):
            result = run_panel(
                conn, query, time_from, time_to, variables, timescaledb=simulated_pilot.timescaledb
            )
            # a panel shows something when any of its queries does (one per metric, say)
            shown[query.panel_id] = shown.get(query.panel_id, False) or bool(result.rows)
            reads[query.panel_id] = reads.get(query.panel_id, "") + query.raw_sql
    if span != "7d":
        return
    with simulated_pilot.admin() as owner:
        empty_tables = [
            t
            for t in FAULT_TABLES
            if owner.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()[0]
            == 0
        ]
    # the demo week: every panel has something to show, unless all it reads is faults
    # the week does not have
    blank = [
        panel
        for panel, any_rows in shown.items()
        if not any_rows
        and not any(t in reads[panel] for t in empty_tables)
        and (board["uid"], titles[panel]) not in MAY_BE_EMPTY
    ]
    assert blank == []


# -- provisioning ----------------------------------------------------------------------------


def test_organisations_are_numbered_lab_first_then_by_kind_and_name() -> None:
    orgs = provisioning.organisations([
        ("startup", "r_s", "s1", "Alpi"),
        ("provider", "r_p2", "p2", "Zeta ASL"),
        ("lab", "r_lab", None, None),
        ("provider", "r_p1", "p1", "ASL TO4"),
    ])  # fmt: skip
    assert [(o.org_id, o.role_name) for o in orgs] == [
        (1, "r_lab"), (2, "r_p1"), (3, "r_p2"), (4, "r_s")
    ]  # fmt: skip
    assert orgs[0].name == provisioning.LAB_ORG_NAME
    assert orgs[1].name == "ASL TO4 (provider)"


def test_the_build_draws_the_alert_rules_ingest_runs(
    simulated_pilot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--alert-rules` or EHEALTHLAB_ALERT_RULES, as ingest takes them: the provider's
    thresholds are the file's, not the built-in ones."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        '[thresholds.bp_systolic_high]\nmetric = "bp_systolic"\nop = ">="\nthreshold = 165\n'
    )
    rules = load_rules(rules_file)
    monkeypatch.setenv("EHEALTHLAB_DATABASE_URL", simulated_pilot.url)
    monkeypatch.setenv("EHEALTHLAB_STATE_DIR", str(tmp_path / "no-stack"))
    provider = next(e for e in DASHBOARDS if e.name == "provider")
    assert provider.json_data(rules) != provider.json_data()  # the file changes the board
    for name, argv, env in (
        ("option", ["--alert-rules", str(rules_file)], None),
        ("environment", [], str(rules_file)),
    ):
        if env:
            monkeypatch.setenv("EHEALTHLAB_ALERT_RULES", env)
        out = tmp_path / name
        assert main(["dashboards", "build", "--out", str(out), *argv]) == 0
        written = json.loads((out / "dashboards" / "provider" / "provider.json").read_text())
        assert written == provider.json_data(rules), name
        assert written != provider.json_data(), name


def test_the_build_command_provisions_every_organisation_with_its_own_role(
    simulated_pilot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("EHEALTHLAB_DATABASE_URL", simulated_pilot.url)
    monkeypatch.setenv("EHEALTHLAB_STATE_DIR", str(tmp_path / "no-stack"))
    out = tmp_path / "grafana"
    argv = ["dashboards", "build", "--out", str(out), "--database-host", "db.lab.internal"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main(argv) == 0  # a rebuild writes the same bytes
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == first

    for entry in DASHBOARDS:
        written = json.loads((out / "dashboards" / entry.kind / f"{entry.name}.json").read_text())
        assert written == entry.json_data()
    sources = yaml.safe_load((out / "provisioning/datasources/ehealthlab.yaml").read_text())
    roles = simulated_pilot.all_roles
    assert {s["user"] for s in sources["datasources"]} == {r.role_name for r in roles.values()}
    by_user = {s["user"]: s for s in sources["datasources"]}
    for credentials in roles.values():
        source = by_user[credentials.role_name]
        assert source["uid"] == uid_of(credentials.kind)
        assert source["url"].startswith("db.lab.internal:")
        assert source["jsonData"]["timescaledb"] is simulated_pilot.timescaledb
        assert source["secureJsonData"]["password"] == (
            f"$__file{{{provisioning.DEFAULT_SECRETS_PATH / credentials.role_name}}}"
        )
        assert credentials.password not in json.dumps(sources)
    lab = by_user[roles["lab"].role_name]
    assert lab["orgId"] == provisioning.LAB_ORG_ID
    assert len({s["orgId"] for s in sources["datasources"]}) == len(roles)

    providers = yaml.safe_load((out / "provisioning/dashboards/ehealthlab.yaml").read_text())
    path_of = {p["orgId"]: PurePosixPath(p["options"]["path"]) for p in providers["providers"]}
    for source in sources["datasources"]:
        kind = next(c.kind for c in roles.values() if c.role_name == source["user"])
        assert path_of[source["orgId"]] == provisioning.DEFAULT_DASHBOARDS_PATH / kind
    organisations = json.loads((out / "organisations.json").read_text())
    assert sorted(o["orgId"] for o in organisations) == sorted(path_of)
    assert f"provisioning for {len(roles)} Grafana organisations" in printed


@pytest.mark.parametrize("name", ["provider", "startup", "operations"])
def test_a_banner_above_every_panel_says_the_data_are_simulated(simulated_pilot, name) -> None:
    """The simulated pilot's organisations are simulated: each dashboard says so at its top,
    from the data; the banner was placed last, so no other panel's id moved."""
    entry = next(e for e in DASHBOARDS if e.name == name)
    board = entry.json_data()
    [banner] = [p for p in board["panels"] if p["title"] == "Data"]
    assert banner["gridPos"] == {"h": 3, "w": GRID_WIDTH, "x": 0, "y": 0}
    assert banner["id"] == max(p["id"] for p in board["panels"])
    assert all(p["gridPos"]["y"] >= 3 for p in board["panels"] if p is not banner)
    [query] = [q for q in panel_queries(board) if q.title == "Data"]
    end = datetime.combine(simulated_pilot.period.end, time(), ZoneInfo("Europe/Rome"))
    with simulated_pilot.login(entry.kind) as conn:
        result = run_panel(conn, query, end - timedelta(days=1), end, {},
                           timescaledb=simulated_pilot.timescaledb)  # fmt: skip
    assert result.rows == [(SIMULATED,)]
    with simulated_pilot.admin() as admin:
        assert admin.execute(
            "SELECT bool_and(simulated) FROM organisations WHERE kind <> 'operator'"
        ).fetchone() == (True,)
