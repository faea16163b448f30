"""The broker's receive stamp: reading it from a message, building the plugin that adds it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ehealthlab.errors import MissingDependencyError
from ehealthlab.mqtt import RECEIVE_STAMP_PROPERTY, broker_receive_time
from ehealthlab.stack.plugin import PLUGIN_NAME, build_receive_stamp_plugin

STAMP = datetime(2026, 3, 10, 7, 0, 0, 123000, tzinfo=UTC)
STAMP_MS = str(int(STAMP.timestamp() * 1000))


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (None, None),
        ([], None),
        ([("other", "1")], None),
        ([(RECEIVE_STAMP_PROPERTY, STAMP_MS)], STAMP),
        # a publisher's own property of that name comes first; the broker's is appended last
        ([(RECEIVE_STAMP_PROPERTY, "0"), ("x", "y"), (RECEIVE_STAMP_PROPERTY, STAMP_MS)], STAMP),
        ([(RECEIVE_STAMP_PROPERTY, "not a number")], None),
        ([(RECEIVE_STAMP_PROPERTY, "9" * 40)], None),
    ],
)
def test_the_last_stamp_of_a_message_is_the_brokers(properties, expected):
    assert broker_receive_time(properties) == expected


def test_the_plugin_is_built_once_per_source_version(tmp_path):
    built = build_receive_stamp_plugin(tmp_path)
    assert built.name.startswith(PLUGIN_NAME) and built.suffix == ".so"
    assert built.read_bytes()[:4] == b"\x7fELF"
    first_build = built.stat().st_mtime_ns
    assert build_receive_stamp_plugin(tmp_path) == built
    assert built.stat().st_mtime_ns == first_build


def test_missing_headers_name_the_packages_to_install(tmp_path):
    with pytest.raises(MissingDependencyError, match="mosquitto-dev"):
        build_receive_stamp_plugin(tmp_path / "out", include_dir=tmp_path / "no-headers")
