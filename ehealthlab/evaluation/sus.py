"""System Usability Scale responses (indicators.md, "User and public-sector response"). Pure.

The SUS (Brooke 1996) is ten statements answered from 1 (strongly disagree) to 5 (strongly
agree); odd statements are worded positively, even ones negatively, so a response scores
2.5 x (sum of (odd item - 1) + sum of (5 - even item)): 0 to 100 in steps of 2.5, 50 when
every answer is neutral.

Responses come from a CSV file (`ehealthlab sus import`, columns of interfaces-v1.md:
`answered_on`, `respondent`, `patient_id` (optional), `municipality`, `item1`…`item10`) or
from a FHIR QuestionnaireResponse (ehealthlab/fhir/questionnaires/). `parse_csv` reads a
whole file and reports every problem of every row at once, each naming its line and column,
so that a file is imported entirely or not at all (sus_store.py checks what only the store
knows: that patients and municipalities exist).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal
from uuid import UUID

from ehealthlab.errors import InvalidInputError

ITEM_COUNT = 10
#: the lowest and highest answer of an item
LOWEST, HIGHEST = 1, 5
Respondent = Literal["patient", "carer", "professional"]
RESPONDENTS: tuple[Respondent, ...] = ("patient", "carer", "professional")

#: the ten statements, in the standard English wording (Brooke 1996)
STATEMENTS: tuple[str, ...] = (
    "I think that I would like to use this system frequently.",
    "I found the system unnecessarily complex.",
    "I thought the system was easy to use.",
    "I think that I would need the support of a technical person to be able to use this system.",
    "I found the various functions in this system were well integrated.",
    "I thought there was too much inconsistency in this system.",
    "I would imagine that most people would learn to use this system very quickly.",
    "I found the system very cumbersome to use.",
    "I felt very confident using the system.",
    "I needed to learn a lot of things before I could get going with this system.",
)
#: what each answer means
ANSWERS: tuple[str, ...] = (
    "Strongly disagree",
    "Disagree",
    "Neither agree nor disagree",
    "Agree",
    "Strongly agree",
)

ITEM_COLUMNS = tuple(f"item{n}" for n in range(1, ITEM_COUNT + 1))
COLUMNS = ("answered_on", "respondent", "patient_id", "municipality", *ITEM_COLUMNS)
REQUIRED_COLUMNS = tuple(column for column in COLUMNS if column != "patient_id")

_ISTAT = re.compile(r"[0-9]{6}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: problems listed in one error message at most (the count says how many there were)
MAX_LISTED = 100


def sus_score(items: Sequence[int]) -> float:
    """The SUS score of ten answers from 1 to 5; ValueError for anything else."""
    if len(items) != ITEM_COUNT:
        raise ValueError(f"a SUS response has {ITEM_COUNT} items, not {len(items)}")
    for item in items:
        if type(item) is not int or not LOWEST <= item <= HIGHEST:
            raise ValueError(
                f"SUS items are whole numbers from {LOWEST} to {HIGHEST}, not {item!r}"
            )
    odd = sum(item - 1 for item in items[0::2])
    even = sum(5 - item for item in items[1::2])
    return 2.5 * (odd + even)


@dataclass(frozen=True, slots=True)
class SusResponse:
    """One response, checked: its items are ten answers from 1 to 5."""

    answered_on: date
    respondent: Respondent
    patient_id: UUID | None
    #: ISTAT code of the municipality (6 digits; that it exists is the store's to check)
    municipality: str
    items: tuple[int, ...]
    #: where it came from, for messages: the CSV line (1 is the header)
    line: int = 0

    @property
    def score(self) -> float:
        return sus_score(self.items)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file: its line (0: the file as a whole) and column."""

    line: int
    column: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "the file"
        return (
            f"{where}, {self.column}: {self.message}" if self.column else f"{where}: {self.message}"
        )


class SusFileError(InvalidInputError):
    """A SUS file with problems: nothing of it is imported. One line, every problem named."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        tail = f"; and {more} more" if more > 0 else ""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{count} {noun}, nothing imported: {shown}{tail}")


def parse_csv(text: str, *, source: str = "") -> list[SusResponse]:
    """Every response of a SUS CSV file, or SusFileError naming every bad line and column.

    The header names the columns (any order; `patient_id` may be left out); a file written
    with semicolons (as spreadsheets in Italy do) is read as well as one with commas. Blank
    lines are skipped; a file without responses is refused.
    """
    text = text.removeprefix("\ufeff")
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if ";" in first_line and "," not in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise SusFileError(source, [Problem(1, "", f"not CSV ({exc})")]) from None
    if header is None or not any(cell.strip() for cell in header):
        raise SusFileError(source, [Problem(0, "", "it is empty: the header line is missing")])
    columns = [cell.strip().lower() for cell in header]
    problems = _header_problems(columns)
    if problems:
        raise SusFileError(source, problems)
    responses: list[SusResponse] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                problems.append(Problem(line, "", f"{len(row)} values for {len(columns)} columns"))
                continue
            parsed = _row(line, dict(zip(columns, row, strict=True)), problems)
            if parsed is not None:
                responses.append(parsed)
    except csv.Error as exc:
        problems.append(Problem(reader.line_num, "", f"not CSV ({exc})"))
    if not responses and not problems:
        problems.append(Problem(0, "", "it has a header but no responses"))
    if problems:
        raise SusFileError(source, problems)
    return responses


def _header_problems(columns: list[str]) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for column in columns:
        if column not in COLUMNS:
            problems.append(
                Problem(
                    1, column or "(blank)", f"is not a column of a SUS file ({', '.join(COLUMNS)})"
                )
            )
        elif column in seen:
            problems.append(Problem(1, column, "appears twice"))
        seen.add(column)
    for column in REQUIRED_COLUMNS:
        if column not in seen:
            problems.append(Problem(1, column, "the column is missing"))
    return problems


def _row(line: int, cells: dict[str, str], problems: list[Problem]) -> SusResponse | None:
    found = len(problems)

    def bad(column: str, message: str) -> None:
        problems.append(Problem(line, column, message))

    answered_on = _date(cells["answered_on"].strip(), lambda m: bad("answered_on", m))
    respondent_text = cells["respondent"].strip()
    respondent = next((r for r in RESPONDENTS if r == respondent_text), None)
    if respondent is None:
        bad("respondent", f"{_shown(respondent_text)} is not one of {', '.join(RESPONDENTS)}")
    patient_id = None
    patient_text = cells.get("patient_id", "").strip()
    if patient_text:
        try:
            patient_id = UUID(patient_text)
        except ValueError:
            bad("patient_id", f"{_shown(patient_text)} is not a patient id (a UUID)")
    municipality = cells["municipality"].strip()
    if not _ISTAT.fullmatch(municipality):
        bad("municipality", f"{_shown(municipality)} is not an ISTAT code (6 digits)")
    items: list[int] = []
    for column in ITEM_COLUMNS:
        text = cells[column].strip()
        if text in {str(n) for n in range(LOWEST, HIGHEST + 1)}:
            items.append(int(text))
        else:
            bad(column, f"{_shown(text)} is not an answer from {LOWEST} to {HIGHEST}")
    if len(problems) > found or answered_on is None or respondent is None:
        return None
    return SusResponse(answered_on, respondent, patient_id, municipality, tuple(items), line)


def _date(text: str, bad: Callable[[str], None]) -> date | None:
    if _DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    bad(f"{_shown(text)} is not a date (YYYY-MM-DD)")
    return None


def _shown(text: str) -> str:
    """A value as a message quotes it: short, and an empty one said so."""
    if not text:
        return "an empty value"
    return repr(text if len(text) <= 40 else text[:40] + "…")
