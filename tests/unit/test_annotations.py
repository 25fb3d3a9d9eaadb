"""Annotations are parsed by pure functions: a malformed one is an error, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.core.annotations import (
    ANNOTATIONS_CONDITION,
    annotations_condition,
    parse_fenced,
    parse_switchover,
)

NAMES = ["zhaohui-0", "zhaohui-1", "zhaohui-2"]
NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("text,value", [
    (None, ()), ("", ()), ("  ", ()), ("[]", ()),
    ('["zhaohui-2"]', ("zhaohui-2",)),
    ('["zhaohui-2", "zhaohui-0"]', ("zhaohui-0", "zhaohui-2")),
])
def test_fenced_good(text: str | None, value: tuple[str, ...]) -> None:
    parsed = parse_fenced(text, NAMES)
    assert parsed.ok and parsed.value == value


@pytest.mark.parametrize("text,why", [
    ("zhaohui-2", "is not JSON"),
    ('["zhaohui-2"', "is not JSON"),
    ('{"a": 1}', "is not a JSON list"),
    ('"zhaohui-2"', "is not a JSON list"),
    ("[1, \"zhaohui-2\"]", "which is not an instance name"),
    ('[["zhaohui-2"]]', "which is not an instance name"),
    ('[null]', "which is not an instance name"),
    ('["Zhaohui-2"]', "which is not an instance name"),
    ('["zhaohui-9"]', "zhaohui-9, which is not an instance of this campus"),
    ('["zhaohui-1", "zhaohui-1"]', "names zhaohui-1 twice"),
    ("[" + '"zhaohui-1",' * 1000 + "]", "is longer than 4096 characters"),
    ("[" * 1000, "nests too deeply"),
    ("[" * 4000 + "]" * 96, "nests too deeply"),
])
def test_fenced_bad(text: str, why: str) -> None:
    parsed = parse_fenced(text, NAMES)
    assert not parsed.ok and parsed.value == ()
    assert parsed.error is not None and why in parsed.error
    assert parsed.error.startswith("ringkeeper.io/fenced-instances: ")


def test_error_quotes_control_characters_safely() -> None:
    parsed = parse_fenced("\x1b[31m[oops\n", NAMES)
    assert parsed.error is not None
    assert "\x1b" not in parsed.error and "\n" not in parsed.error


@given(st.text(max_size=200))
def test_fenced_never_raises(text: str) -> None:
    parsed = parse_fenced(text, NAMES)
    assert parsed.ok or parsed.error
    assert set(parsed.value) <= set(NAMES)


def test_switchover() -> None:
    assert parse_switchover(None, NAMES).value is None
    assert parse_switchover("zhaohui-1", NAMES).value == "zhaohui-1"
    bad = parse_switchover("zhaohui-1\n", NAMES)
    assert not bad.ok and bad.value is None


def test_condition_written_on_change_only() -> None:
    assert annotations_condition([], [None], NOW) is None
    err = parse_fenced("nope", NAMES).error
    first = annotations_condition([], [err], NOW)
    assert first is not None
    (cond,) = [c for c in first if c["type"] == ANNOTATIONS_CONDITION]
    assert (cond["status"], cond["reason"]) == ("False", "InvalidAnnotation")
    assert "is not JSON" in cond["message"]
    assert annotations_condition(first, [err], NOW) is None
    fixed = annotations_condition(first, [None], NOW)
    assert fixed is not None
    assert [c["status"] for c in fixed if c["type"] == ANNOTATIONS_CONDITION] == ["True"]
    assert annotations_condition(fixed, [None], NOW) is None
