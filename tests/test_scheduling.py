"""The suite's module order (tests/scheduling.py): long modules first, then those reading the
simulated pilot, each module kept whole and in collection order within its rank."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from scheduling import pytest_collection_modifyitems


@dataclass
class Item:
    """What the ordering reads of a collected test."""

    nodeid: str
    fixturenames: list[str] = field(default_factory=list)
    long: bool = False

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "long" and self.long else None


def ordered(items: list[Item]) -> list[str]:
    collected = cast(list[pytest.Item], items)
    pytest_collection_modifyitems(collected)
    return [cast(Any, item).nodeid for item in collected]


def test_long_modules_come_first_then_the_pilots_readers_each_module_whole() -> None:
    items = [
        Item("tests/test_a.py::one"),
        Item("tests/test_b.py::reads", ["simulated_pilot"]),
        Item("tests/test_c.py::short"),
        Item("tests/test_c.py::slow", long=True),
        Item("tests/test_a.py::two"),
        Item("tests/test_b.py::other"),
        Item("tests/test_d.py::slow", long=True),
    ]
    assert ordered(items) == [
        "tests/test_c.py::short",  # a module with one long test goes first whole
        "tests/test_c.py::slow",
        "tests/test_d.py::slow",
        "tests/test_b.py::reads",
        "tests/test_b.py::other",
        "tests/test_a.py::one",
        "tests/test_a.py::two",
    ]


@pytest.mark.parametrize(
    "nodeids",
    [[], ["tests/test_a.py::x"], ["tests/test_a.py::x", "tests/test_b.py::y[p::q]"]],
)
def test_without_long_modules_or_readers_the_order_is_collections(nodeids: list[str]) -> None:
    assert ordered([Item(n) for n in nodeids]) == nodeids
