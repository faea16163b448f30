"""pip-audit over the pinned runtime dependencies (deploy/constraints.txt), for CI.

A known vulnerability fails the run, naming each advisory. An advisory database that cannot
be reached (no network, a service down) never does: one line says the dependencies were not
audited, and the run goes on — CI must not fail at random. pip-audit itself does not tell
these apart well: against an unreachable PyPI it reports every package "not found on PyPI"
and exits 0 with "No known vulnerabilities found", so the decision is made here, from its
JSON report (`decide`, a pure function the suite tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
PREFIX = "pip-audit:"


class Verdict(NamedTuple):
    exit_code: int
    lines: list[str]


def decide(returncode: int, stdout: str, stderr: str) -> Verdict:
    """What to print and whether to fail, from one pip-audit run (`-f json`)."""
    try:
        report: dict[str, Any] = json.loads(stdout)
        dependencies: list[dict[str, Any]] = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        return Verdict(0, [f"{PREFIX} the advisory database could not be reached, dependencies "
                           f"not audited (exit {returncode}: {last.strip()[:200]})"])  # fmt: skip
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    lines = []
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            aliases = ", ".join(vuln.get("aliases") or [])
            lines.append(
                f"{PREFIX} {dependency['name']} {dependency.get('version', '?')}: {vuln['id']}"
                + (f" ({aliases})" if aliases else "")
                + f"; fixed in {fixed}: {(vuln.get('description') or '').strip()[:300]}"
            )
    if skipped:
        lines.append(
            f"{PREFIX} the advisory database could not be reached for {len(skipped)} of "
            f"{len(dependencies)} dependencies, not audited: {', '.join(skipped[:8])}"
            + (", …" if len(skipped) > 8 else "")
        )
    if vulnerable:
        return Verdict(1, lines)
    if audited:
        lines.append(f"{PREFIX} {audited} dependencies audited, no known vulnerability")
    return Verdict(0, lines)


def main() -> int:
    command = [
        sys.executable, "-m", "pip_audit", "--requirement", str(CONSTRAINTS), "--no-deps",
        "--disable-pip", "--format", "json", "--progress-spinner", "off", "--timeout", "10",
    ]  # fmt: skip
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        print(f"{PREFIX} the advisory database did not answer in 300 s, dependencies not audited")
        return 0
    verdict = decide(run.returncode, run.stdout, run.stderr)
    for line in verdict.lines:
        print(line)
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
