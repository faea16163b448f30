"""The CI gate around pip-audit (scripts/audit_dependencies.py): a known vulnerability fails
with its advisory; an advisory database that cannot be reached is said in one line and never
fails. The decision is a pure function of pip-audit's output, tested here without network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "audit_dependencies.py"
_spec = importlib.util.spec_from_file_location("audit_dependencies", SCRIPT)
assert _spec is not None and _spec.loader is not None
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)


def report(*dependencies: dict) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


CLEAN = {"name": "jinja2", "version": "3.1.6", "vulns": []}
UNREACHABLE = {
    "name": "anyio",
    "skip_reason": "Dependency not found on PyPI and could not be audited: anyio (4.16.0)",
}
VULNERABLE = {
    "name": "jinja2",
    "version": "3.1.2",
    "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"],
               "aliases": ["CVE-2024-22195"], "description": "xmlattr accepts keys with spaces"}],
}  # fmt: skip


def test_a_vulnerability_fails_naming_the_advisory_and_the_fix():
    verdict = audit.decide(1, report(VULNERABLE, CLEAN), "")
    assert verdict.exit_code == 1
    [line] = verdict.lines
    assert "jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (CVE-2024-22195); fixed in 3.1.3" in line


def test_nothing_known_passes_and_says_how_many_were_audited():
    verdict = audit.decide(0, report(CLEAN, CLEAN), "")
    assert verdict == (0, ["pip-audit: 2 dependencies audited, no known vulnerability"])


def test_an_unreachable_database_is_one_line_and_never_fails():
    # pip-audit's own verdict here is "No known vulnerabilities found", exit 0: misleading
    verdict = audit.decide(0, report(UNREACHABLE, UNREACHABLE), "No known vulnerabilities found")
    assert verdict.exit_code == 0
    [line] = verdict.lines
    assert "could not be reached for 2 of 2 dependencies, not audited" in line


def test_no_report_at_all_is_one_line_and_never_fails():
    stderr = "Traceback ...\nrequests.exceptions.ConnectionError: Failed to resolve 'api.osv.dev'"
    verdict = audit.decide(1, "", stderr)
    assert verdict.exit_code == 0
    [line] = verdict.lines
    assert line.startswith("pip-audit: the advisory database could not be reached")
    assert "ConnectionError" in line


def test_a_vulnerability_fails_even_when_part_of_the_database_was_unreachable():
    verdict = audit.decide(1, report(VULNERABLE, UNREACHABLE), "")
    assert verdict.exit_code == 1
    assert len(verdict.lines) == 2
