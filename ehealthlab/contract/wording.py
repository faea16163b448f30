"""How the platform writes device data into messages for people.

Details of rejections are read by start-up engineers and stored as text, so what a device
sent is quoted escaped (no control characters, no NUL that PostgreSQL would refuse) and
cut short, and numbers are written as a person would write them.
"""

from __future__ import annotations

#: the dash of ranges in details, as the contract's example writes them (an en dash)
EN_DASH = "\u2013"

#: longest piece of device text worth quoting back
QUOTE_LIMIT = 40


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` quoted for a human message: control characters escaped, long text cut."""
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def format_number(value: float) -> str:
    """A number as a person writes it: 900, 36.6, 37.7778 (six significant digits)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".6g")


def json_type(value: object) -> str:
    """What a JSON value is, in JSON's own words: 'a string', 'an array', 'null'…"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
