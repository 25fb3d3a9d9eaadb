"""Parked changes (sync/parking.py) come back as the messages they were: values, nulls,
unchanged out-of-line markers and the old row's kind survive the round trip through
ringkeeper.parked's JSON."""

from __future__ import annotations

import pytest

from ringkeeper.sync.parking import _from_json, _to_json, parked_message
from ringkeeper.sync.pgoutput import UNCHANGED, Delete, Insert, Update
from ringkeeper.sync.records import ApplyError


@pytest.mark.parametrize("tup", [
    ("1", None, "x\ny", 'quote"s', "\\x00ff"),
    ("42", UNCHANGED, None),
    (),
])
def test_values_round_trip(tup: tuple[object, ...]) -> None:
    assert _from_json(_to_json(tup)) == tup  # type: ignore[arg-type]


def test_bytes_become_their_text() -> None:
    assert _from_json(_to_json((b"abc",))) == ("abc",)


def test_none_stays_none() -> None:
    assert _to_json(None) is None and _from_json(None) is None


@pytest.mark.parametrize(("op", "kind", "new", "old", "want"), [
    ("I", None, ("1", "a"), None, Insert(0, ("1", "a"))),
    ("U", "O", ("1", UNCHANGED), ("1", "big"), Update(0, ("1", "big"), "O", ("1", UNCHANGED))),
    ("U", None, ("1", "b"), None, Update(0, None, None, ("1", "b"))),
    ("D", "K", None, ("1", None), Delete(0, ("1", None), "K")),
    ("D", None, None, ("1",), Delete(0, ("1",), "K")),
])
def test_parked_message(op: str, kind: str | None, new: tuple[object, ...] | None,
                        old: tuple[object, ...] | None, want: object) -> None:
    got = parked_message(op, kind, _to_json(new), _to_json(old))  # type: ignore[arg-type]
    assert got == want


@pytest.mark.parametrize(("op", "new", "old"), [("I", None, None), ("D", None, None),
                                                ("X", None, None)])
def test_a_parked_row_without_its_values_is_an_error(op: str, new: str | None,
                                                     old: str | None) -> None:
    with pytest.raises(ApplyError):
        parked_message(op, None, new, old)
