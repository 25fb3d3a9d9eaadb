"""The snapshot trusts the primary's own synchronous_standby_names over the spec."""

from __future__ import annotations

import pytest

from ringkeeper.core.ha import parse_standby_names, snapshot_from_status, sync_snapshot

SPEC = {"instances": 3, "synchronous": {"method": "any", "number": 2}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('ANY 1 ("c-1", "c-2")', ("any", 1, ("c-1", "c-2")), id="any"),
        pytest.param('FIRST 2 ("c-1","c-2")', ("first", 2, ("c-1", "c-2")), id="first"),
        pytest.param("c-1", None, id="bare-name-unparsed"),
        pytest.param("", None, id="asynchronous"),
    ],
)
def test_parse_standby_names(text: str, expected: object) -> None:
    assert parse_standby_names(text) == expected


def test_running_setting_wins_over_spec() -> None:
    raw = {"server": {"sync_names": 'ANY 1 ("c-1", "c-2")', "current_lsn": "0/10",
                      "standbys": [{"application_name": "c-1", "state": "streaming",
                                    "sync_state": "quorum"}]}}
    snap = sync_snapshot(SPEC, "c", "c-0", raw)
    assert snap is not None
    assert (snap.method, snap.number, snap.standbys, snap.confirming) == (
        "any", 1, ("c-1", "c-2"), ("c-1",))


def test_asynchronous_primary_gives_empty_snapshot() -> None:
    snap = sync_snapshot(SPEC, "c", "c-0", {"server": {"sync_names": "", "current_lsn": "0/10"}})
    assert snap is not None and snap.number == 0 and snap.standbys == ()


def test_stored_snapshot_number_is_capped() -> None:
    snap = snapshot_from_status({"method": "ANY", "number": 3, "standbys": ["c-1", "c-2"]})
    assert snap is not None and (snap.method, snap.number) == ("any", 2)
