"""Grafana's PostgreSQL macro and template-variable expansion, against Grafana's own tests.

The expected strings of the macro table are those of Grafana's
pkg/tsdb/grafana-postgresql-datasource/macros_test.go (grafana/grafana, commits e6c1350 and
446b3e1; see docs/grafana-macros.md, which carries the same table); the template-variable
cases come from the frontend's interpolationTruthTable.test.ts and
variable-interpolation.test.ts. Rows marked "derived" are not in Grafana's tests: they follow
from the Go source (fmt's %v of a float64) and say so.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.dashboards.macros import _strip_comments, expand
from ehealthlab.dashboards.query_context import (
    MacroError,
    QueryContext,
    UndefinedVariableError,
    interval_for,
)

# macros_test.go: "Given a time range between 2018-04-12 00:00 and 2018-04-12 00:05"
FROM_2018 = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
CONTEXT = QueryContext(FROM_2018, FROM_2018 + timedelta(minutes=5), timedelta(minutes=10))
TIMESCALE = dataclasses.replace(CONTEXT, timescaledb=True)
# "... between 1960-02-01 07:00 and 1965-02-03 08:00", "... 1980-02-03 08:00", and ".5" seconds
CONTEXT_1965 = QueryContext(
    datetime(1960, 2, 1, 7, tzinfo=UTC), datetime(1965, 2, 3, 8, tzinfo=UTC), timedelta(minutes=1)
)
CONTEXT_1980 = dataclasses.replace(CONTEXT_1965, time_to=datetime(1980, 2, 3, 8, tzinfo=UTC))
CONTEXT_HALF = QueryContext(
    datetime(1960, 2, 1, 7, 0, 0, 500_000, tzinfo=UTC),
    datetime(1980, 2, 3, 8, 0, 0, 500_000, tzinfo=UTC),
    timedelta(minutes=1),
)

TG = "floor(extract(epoch from time_column)/300)*300"

MACRO_CASES = [
    (CONTEXT, "select $__time(time_column)", 'select time_column AS "time"'),
    (CONTEXT, "select min($__time(time_column))", 'select min(time_column AS "time")'),
    (
        CONTEXT,
        "WHERE $__timeFilter(time_column)",
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'",
    ),
    (CONTEXT, "select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
    (CONTEXT, "select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
    # pre 5.3 compatibility: a comma right after $__timeGroup(...) adds the alias
    (CONTEXT, "SELECT $__timeGroup(time_column,'5m'), value", f'SELECT {TG} AS "time", value'),
    (
        CONTEXT,
        "SELECT $__timeGroup(time_column,'5m') as time, value",
        f"SELECT {TG} as time, value",
    ),
    (CONTEXT, "SELECT $__timeGroup(time_column,'5m')", f"SELECT {TG}"),
    (CONTEXT, "SELECT $__timeGroupAlias(time_column,'5m')", f'SELECT {TG} AS "time"'),
    (CONTEXT, "$__timeGroup(time_column , '5m')", TG),
    (CONTEXT, "$__timeGroupAlias(time_column , '5m')", f'{TG} AS "time"'),
    (
        TIMESCALE,
        "GROUP BY $__timeGroup(time_column,'5m')",
        "GROUP BY time_bucket('300.000s',time_column)",
    ),
    (
        TIMESCALE,
        "GROUP BY $__timeGroup(time_column , '5m')",
        "GROUP BY time_bucket('300.000s',time_column)",
    ),
    (
        TIMESCALE,
        "GROUP BY $__timeGroup(time_column , '12d')",
        "GROUP BY time_bucket('1036800.000s',time_column)",
    ),
    (
        TIMESCALE,
        "GROUP BY $__timeGroup(time_column , '20ms')",
        "GROUP BY time_bucket('0.020s',time_column)",
    ),
    (
        CONTEXT,
        "select $__unixEpochFilter(time)",
        "select time >= 1523556000 AND time <= 1523556300",
    ),
    (
        CONTEXT,
        "select $__unixEpochNanoFilter(time)",
        "select time >= 1523556000000000000 AND time <= 1523556300000000000",
    ),
    (CONTEXT, "select $__unixEpochNanoFrom()", "select 1523556000000000000"),
    (CONTEXT, "select $__unixEpochNanoTo()", "select 1523556300000000000"),
    (
        CONTEXT,
        "SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')",
        "SELECT floor((time_column+time_adjustment)/300)*300",
    ),
    (
        CONTEXT,
        "SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')",
        'SELECT floor((time_column+time_adjustment)/300)*300 AS "time"',
    ),
    (
        CONTEXT_1965,
        "WHERE $__timeFilter(time_column)",
        "WHERE time_column BETWEEN '1960-02-01T07:00:00Z' AND '1965-02-03T08:00:00Z'",
    ),
    (
        CONTEXT_1965,
        "select $__unixEpochFilter(time)",
        "select time >= -312915600 AND time <= -154886400",
    ),
    (
        CONTEXT_1965,
        "select $__unixEpochNanoFilter(time)",
        "select time >= -312915600000000000 AND time <= -154886400000000000",
    ),
    (
        CONTEXT_1980,
        "WHERE $__timeFilter(time_column)",
        "WHERE time_column BETWEEN '1960-02-01T07:00:00Z' AND '1980-02-03T08:00:00Z'",
    ),
    (
        CONTEXT_1980,
        "select $__unixEpochFilter(time)",
        "select time >= -312915600 AND time <= 318412800",
    ),
    (
        CONTEXT_1980,
        "select $__unixEpochNanoFilter(time)",
        "select time >= -312915600000000000 AND time <= 318412800000000000",
    ),
    (
        CONTEXT_HALF,
        "WHERE $__timeFilter(time_column)",
        "WHERE time_column BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'",
    ),
    # TestInterpolateSQLCommenter (query interval 10m): comments go, macros in them too
    (CONTEXT, "SELECT 1 /*i='$__interval'*/", "SELECT 1 "),
    (CONTEXT, "SELECT 1 /*k='$__timeFilter(t'*/ WHERE (x = 1)", "SELECT 1  WHERE (x = 1)"),
    # derived from macros.go and sqleng.Interpolate, not in Grafana's tests
    (CONTEXT, "select $__timeEpoch(ts)", 'select extract(epoch from ts) as "time"'),
    (CONTEXT, "$__timeGroup(ts, '12d')", "floor(extract(epoch from ts)/1.0368e+06)*1.0368e+06"),
    (CONTEXT, "$__timeGroup(ts, 1d)", "floor(extract(epoch from ts)/86400)*86400"),
    (CONTEXT, "$__timeGroup(ts, '1w')", "floor(extract(epoch from ts)/604800)*604800"),
    (CONTEXT, "$__timeGroup(ts, 1h)", "floor(extract(epoch from ts)/3600)*3600"),
    (CONTEXT, "$__timeGroup(ts, '20ms')", "floor(extract(epoch from ts)/0.02)*0.02"),
    (CONTEXT, "$__timeGroup(ts, $__interval)", "floor(extract(epoch from ts)/600)*600"),
    (CONTEXT, "$__timeGroupAlias(ts, 5m, NULL)", f'{TG.replace("time_column", "ts")} AS "time"'),
    (CONTEXT, "$__timeGroup(ts, 5m, previous)", TG.replace("time_column", "ts")),
    (CONTEXT, "$__timeGroup(ts, 5m, 0)", TG.replace("time_column", "ts")),
    (CONTEXT, "select $__unixEpochFrom(), $__unixEpochTo()", "select 1523556000, 1523556300"),
    (CONTEXT, "select $__interval, $__interval_ms", "select 10m, 600000"),
    (CONTEXT, "select $__from, ${__to:date:seconds}", "select 1523556000000, 1523556300"),
    (CONTEXT, "select '${__from:date}'", "select '2018-04-12T18:00:00.000Z'"),
    (CONTEXT, "select 1 -- $__timeFilter(ts)\nfrom t", "select 1 \nfrom t"),
]


@pytest.mark.parametrize(("context", "sql", "expected"), MACRO_CASES)
def test_macros_expand_as_grafana_s_own_tests_say(
    context: QueryContext, sql: str, expected: str
) -> None:
    assert expand(sql, context) == expected


# stripSQLComments cases of macros_test.go (TestStripSQLComments), those without a
# SQLCommenter tag: newer Grafana keeps /*key='value'*/ tags, the backported stripper does not.
STRIP_CASES = [
    ("SELECT 1 -- a comment", "SELECT 1 "),
    ("SELECT /* a comment */ 1", "SELECT  1"),
    ("SELECT /*\n  multiline\n  comment\n*/ 1", "SELECT  1"),
    ("SELECT '-- not a comment' AS label", "SELECT '-- not a comment' AS label"),
    ("SELECT '/* not a comment */' AS label", "SELECT '/* not a comment */' AS label"),
    ('SELECT "col -- name" FROM t', 'SELECT "col -- name" FROM t'),
    ('SELECT "col /* name */" FROM t', 'SELECT "col /* name */" FROM t'),
    ("SELECT 'it''s fine -- not a comment' AS v", "SELECT 'it''s fine -- not a comment' AS v"),
    ('SELECT "col ""-- name""" FROM t', 'SELECT "col ""-- name""" FROM t'),
    ("SELECT '-- in string' AS a -- real comment", "SELECT '-- in string' AS a "),
    ("SELECT '/* in string */' AS a /* real comment */", "SELECT '/* in string */' AS a "),
    ("SELECT col FROM t WHERE col > 1", "SELECT col FROM t WHERE col > 1"),
    ("SELECT 1 -- comment\nFROM t", "SELECT 1 \nFROM t"),
    ("SELECT $$ -- not a comment $$", "SELECT $$ -- not a comment $$"),
    ("SELECT $$ /* not a comment */ $$", "SELECT $$ /* not a comment */ $$"),
    ("SELECT $body$ -- not a comment $body$", "SELECT $body$ -- not a comment $body$"),
    ("SELECT $__timeFrom() -- comment", "SELECT $__timeFrom() "),
    ("SELECT $1 -- comment", "SELECT $1 "),
    ("SELECT 1 /*range='$__timeFilter(t)'*/", "SELECT 1 "),
    # derived from the Go loop: an unclosed block comment leaves the SQL's last character
    ("SELECT /* abc", "SELECT c"),
]


@pytest.mark.parametrize(("sql", "expected"), STRIP_CASES)
def test_comments_are_stripped_as_grafana_strips_them(sql: str, expected: str) -> None:
    assert _strip_comments(sql) == expected


def with_variables(**variables: str | list[str]) -> QueryContext:
    return dataclasses.replace(CONTEXT, variables=variables)


# interpolationTruthTable.test.ts (PostgreSQL data source) and variable-interpolation.test.ts
VARIABLE_CASES = [
    ("WHERE host = $host", {"host": "server01"}, "WHERE host = server01"),
    ("WHERE host = '$host'", {"host": "server01"}, "WHERE host = 'server01'"),
    ("WHERE host IN ($host)", {"host": ["srv1", "srv2"]}, "WHERE host IN ('srv1','srv2')"),
    (
        "WHERE host IN (${host:sqlstring})",
        {"host": ["srv1", "srv2"]},
        "WHERE host IN ('srv1','srv2')",
    ),
    ("WHERE host IN ('$host')", {"host": ["srv1", "srv2"]}, "WHERE host IN (''srv1','srv2'')"),
    (
        "WHERE latency_ms IN (${latency:csv})",
        {"latency": ["50", "75"]},
        "WHERE latency_ms IN (50,75)",
    ),
    ("WHERE hostname = $hostname", {"hostname": ["app1"]}, "WHERE hostname = 'app1'"),
    (
        "ON d.region = ANY(ARRAY[$region])",
        {"region": ["us", "eu"]},
        "ON d.region = ANY(ARRAY['us','eu'])",
    ),
    (
        'SELECT * FROM "$schema"."$table"',
        {"schema": "public", "table": "orders"},
        'SELECT * FROM "public"."orders"',
    ),
    (
        "LIMIT ${limit:csv} OFFSET ${offset:csv}",
        {"limit": "100", "offset": "200"},
        "LIMIT 100 OFFSET 200",
    ),
    ("WHERE name = '$user'", {"user": "O'Brien"}, "WHERE name = 'O''Brien'"),
    (
        "WHERE name IN ($users)",
        {"users": ["O'Brien", "D'Angelo"]},
        "WHERE name IN ('O''Brien','D''Angelo')",
    ),
    ("WHERE name IN ($users)", {"users": []}, "WHERE name IN ()"),
    ("WHERE hostname ILIKE '%$host%'", {"host": "app1"}, "WHERE hostname ILIKE '%app1%'"),
    # the other syntaxes and formats of Grafana's format registry (scenes)
    ("${host} [[host]] [[host:csv]]", {"host": ["a", "b"]}, "'a','b' 'a','b' a,b"),
    ("${host:raw} ${host:pipe} ${host:glob}", {"host": ["a", "b"]}, "a,b a|b {a,b}"),
    ("${host:singlequote}", {"host": ["it's", "b"]}, "'it\\'s','b'"),
    ("${host:doublequote}", {"host": 'say "hi"'}, '"say \\"hi\\""'),
    ("${host:sqlstring}", {"host": 'it\'s "x"'}, "'it''s \\\"x\\\"'"),
    ("${host:raw}", {"host": "it's"}, "it's"),
    ("${host:join: OR }", {"host": ["a", "b"]}, "a OR b"),
    (
        "$__timeGroupAlias(ts, $bucket)",
        {"bucket": "5m"},
        'floor(extract(epoch from ts)/300)*300 AS "time"',
    ),
    (
        "WHERE $__timeFilter(ts) AND region IN ($region)",
        {"region": ["us", "eu"]},
        "WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
        " AND region IN ('us','eu')",
    ),
]


@pytest.mark.parametrize(("sql", "variables", "expected"), VARIABLE_CASES)
def test_template_variables_are_interpolated_as_the_sql_data_source_does(
    sql: str, variables: dict[str, str | list[str]], expected: str
) -> None:
    assert expand(sql, with_variables(**variables)) == expected


def test_variable_values_are_not_reinterpolated_but_reach_the_macro_engine() -> None:
    # the browser does not rescan a value; the server then expands what it finds
    context = with_variables(label="$other", column="$__time(ts)")
    with pytest.raises(UndefinedVariableError):
        expand("$other", context)
    assert expand("select '$label'", with_variables(label="plain")) == "select 'plain'"
    assert expand("select $column", context) == 'select ts AS "time"'


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("select $__schema()", MacroError, 'unknown macro "__schema"'),
        ("WHERE $__timeFliter(ts)", MacroError, 'unknown macro "__timeFliter"'),
        ("$__timeGroup(ts)", MacroError, "macro __timeGroup needs time column and interval"),
        ("$__unixEpochGroupAlias(ts)", MacroError, "macro __unixEpochGroup needs time column"),
        ("$__timeGroup(ts, 'often')", MacroError, "error parsing interval 'often'"),
        ("$__timeGroup(ts, 0s)", MacroError, "interval must be positive, got 0s"),
        ("$__timeGroup(ts, 5m, none)", MacroError, "error parsing fill value none"),
        ("$__timeGroup(ts, 1M)", MacroError, "depends on Grafana's wall clock"),
        ("WHERE host = $hots", UndefinedVariableError, r"\$hots is not a template variable"),
        ("WHERE host IN (${hots:csv})", UndefinedVariableError, "hots"),
        ("GROUP BY $__intervall", UndefinedVariableError, r"\$__intervall is neither"),
        ("WHERE x = ${__unknown}", UndefinedVariableError, "__unknown"),
        ("WHERE host = ${host:lucene}", ValueError, "format 'lucene' is not supported"),
        ("WHERE host = ${host.name}", ValueError, "field paths"),
    ],
)
def test_what_grafana_rejects_or_would_send_broken_raises(
    sql: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        expand(sql, with_variables(host="a"))


def test_a_query_context_holds_what_grafana_can_hold() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        QueryContext(start.replace(tzinfo=None), start, timedelta(minutes=1))
    with pytest.raises(ValueError, match="whole milliseconds"):
        QueryContext(start + timedelta(microseconds=1), start, timedelta(minutes=1))
    with pytest.raises(ValueError, match="positive whole number of ms"):
        QueryContext(start, start, timedelta(0))
    rome = QueryContext(
        datetime.fromisoformat("2026-03-01T01:00:00+01:00"), start, timedelta(minutes=1)
    )
    assert rome.time_from == start and rome.time_from.tzinfo == UTC


@pytest.mark.parametrize(
    ("span", "max_data_points", "min_interval", "expected"),
    [
        (timedelta(days=1), 500, "1m", timedelta(minutes=2)),  # 172.8 s -> 2m
        (timedelta(hours=1), 1000, None, timedelta(seconds=5)),  # 3.6 s -> 5s
        (timedelta(hours=1), 1000, "1m", timedelta(minutes=1)),  # raised to the SQL default
        (timedelta(days=7), 1200, "10", timedelta(minutes=10)),  # unit-less = seconds
        (timedelta(days=30), 500, "1m", timedelta(hours=1)),  # 5184 s -> 1h
        (timedelta(days=365), 100, "1m", timedelta(days=1)),  # 3.65 d -> 1d
        (timedelta(days=730), 100, "1m", timedelta(days=7)),  # 7.3 d -> 1w
        (timedelta(minutes=5), 500, "1ms", timedelta(milliseconds=500)),  # 600 ms -> 500ms
    ],
)
def test_interval_for_follows_grafana_s_rounding_table(
    span: timedelta, max_data_points: int, min_interval: str | None, expected: timedelta
) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    got = interval_for(
        start, start + span, max_data_points=max_data_points, min_interval=min_interval
    )
    assert got == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (timedelta(minutes=2), "select 2m, 120000, floor(extract(epoch from ts)/120)*120"),
        (timedelta(days=7), "select 7d, 604800000, floor(extract(epoch from ts)/604800)*604800"),
        # the browser writes $__interval in its largest whole unit: 1.5 s becomes 1s
        (timedelta(milliseconds=1500), "select 1s, 1500, floor(extract(epoch from ts)/1)*1"),
        (timedelta(milliseconds=500), "select 500ms, 500, floor(extract(epoch from ts)/0.5)*0.5"),
    ],
)
def test_interval_variables_are_the_browser_s(interval: timedelta, expected: str) -> None:
    context = dataclasses.replace(CONTEXT, interval=interval)
    sql = "select $__interval, $__interval_ms, $__timeGroup(ts, $__interval)"
    assert expand(sql, context) == expected


MS_RANGE = st.integers(
    min_value=(datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
    // timedelta(milliseconds=1),
    max_value=(datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
    // timedelta(milliseconds=1),
).map(lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))


@given(
    start=MS_RANGE,
    end=MS_RANGE,
    column=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True),
)
def test_time_filter_parses_back_to_the_range(start: datetime, end: datetime, column: str) -> None:
    sql = expand(f"$__timeFilter({column})", QueryContext(start, end, timedelta(minutes=1)))
    match = re.fullmatch(r"(\w+) BETWEEN '([^']+)' AND '([^']+)'", sql)
    assert match is not None, sql
    assert match.group(1) == column
    assert datetime.fromisoformat(match.group(2)) == start
    assert datetime.fromisoformat(match.group(3)) == end
