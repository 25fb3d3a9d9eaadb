"""Pure decisions of a satellite's initial copy and backlog limits (core/satsync.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ringkeeper.core import names
from ringkeeper.core.satsync import (
    BACKLOG_CONDITION,
    Backlog,
    backlog_condition,
    backlog_of,
    backlog_verdict,
    copy_origin,
    sync_status,
)

RING = "lis"
WRITERS = frozenset({"a", "b", "s", "t"})


@pytest.mark.parametrize(("roname", "want"), [
    (None, "a"),  # written at the parent, no origin
    (names.origin_name(RING, "a"), "a"),
    (names.origin_name(RING, "b"), "b"),  # a ring member's row keeps its origin
    (names.origin_name(RING, "t"), "t"),  # another satellite's
    (names.origin_name(RING, "s"), None),  # the satellite's own: never copied back
    (names.seed_origin(RING), names.SEED),
    ("pg_foreign_origin", "a"),  # a foreign origin: the parent's
    (names.origin_name(RING, "gone"), "a"),  # a writer no longer in the ring
])
def test_copy_origin(roname: str | None, want: str | None) -> None:
    assert copy_origin(RING, "a", "s", WRITERS, roname) == want




@pytest.mark.parametrize(("rows", "size", "age", "want"), [
    (0, 0, None, Backlog.WITHIN),
    (1000, 10_000, 72.0, Backlog.NEAR),  # at the limits: not past them, but near
    (800, 8_000, 57.6, Backlog.WITHIN),  # at 80 %: not past the warning yet
    (801, 0, None, Backlog.NEAR),
    (0, 8_001, None, Backlog.NEAR),
    (0, 0, 57.7, Backlog.NEAR),
    (1001, 0, None, Backlog.FULL),
    (0, 10_001, None, Backlog.FULL),
    (5, 100, 72.5, Backlog.OLD),
    (1001, 0, 100.0, Backlog.FULL),  # full outranks old
    (None, None, None, Backlog.WITHIN),  # nothing measured: nothing claimed
])
def test_backlog_verdict(rows: int | None, size: int | None, age: float | None,
                         want: Backlog) -> None:
    verdict, message = backlog_verdict(rows=rows, size=size, oldest_age_hours=age,
                                       max_rows=1000, max_bytes=10_000, max_age_hours=72.0)
    assert verdict is want
    if want is not Backlog.WITHIN:
        # What to do, and that nothing is dropped.
        assert "nothing is dropped" in message and "re-seed" in message
        assert "bring the satellite's link back" in message.lower()


def _verdict(entry: dict[str, object], limits: dict[str, object]) -> Backlog:
    got = backlog_of(entry, limits, 10**9)
    assert got is not None
    return got[0]


def test_backlog_of_reads_the_report_entry_and_spec() -> None:
    entry: dict[str, object] = {"parentBacklogRows": 2001, "parentBacklogBytes": 5,
                                "parentBacklogOldestHours": 1.0}
    assert backlog_of(None, {"maxRows": 2000}, 10) is None
    assert _verdict(entry, {"maxRows": 2000}) is Backlog.FULL
    assert _verdict(entry, {"maxRows": 3000}) is Backlog.WITHIN
    assert _verdict(entry, {"maxRows": 2400}) is Backlog.NEAR
    old = {**entry, "parentBacklogOldestHours": 80.0}
    assert _verdict(old, {"maxRows": 3000}) is Backlog.OLD
    assert _verdict(old, {"maxRows": 3000, "maxAgeHours": 100}) is Backlog.WITHIN
    assert _verdict(old, {"maxRows": 3000, "maxAgeHours": 90}) is Backlog.NEAR
    assert _verdict({**entry, "parentBacklogRows": True}, {"maxRows": 0}) is Backlog.WITHIN


def test_backlog_condition_and_one_event_per_change() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    conds, event = backlog_condition([], Backlog.WITHIN, "ok", now, 1)
    assert event is None
    assert conds[0]["type"] == BACKLOG_CONDITION and conds[0]["status"] == "False"
    conds, event = backlog_condition(conds, Backlog.NEAR, "near", now, 1)
    assert event == ("BacklogNearLimit", True) and conds[0]["status"] == "False"
    conds, event = backlog_condition(conds, Backlog.FULL, "full", now, 1)
    assert event == ("BacklogFull", True) and conds[0]["status"] == "True"
    conds, event = backlog_condition(conds, Backlog.FULL, "full", now, 1)
    assert event is None  # said already
    conds, event = backlog_condition(conds, Backlog.OLD, "old", now, 1)
    assert event == ("BacklogOld", True) and conds[0]["reason"] == "BacklogOld"
    conds, event = backlog_condition(conds, Backlog.WITHIN, "ok", now, 1)
    assert event == ("Within", False) and conds[0]["status"] == "False"


def test_sync_status_copying_and_backlog_full() -> None:
    base = {"connected": True, "parentBacklogRows": 0, "satelliteBacklogBytes": 0,
            "copy": {"state": "Done"}, "copyUp": {"state": "Done"},
            "up": {"state": "Streaming"}, "down": {"state": "CatchingUp"}}
    assert sync_status(base, ready=True)["phase"] == "Online"
    copying = {**base, "copy": {"state": "Copying", "percent": 40.0}}
    assert sync_status(copying, ready=True)["phase"] == "Copying"
    up = {**base, "copyUp": {"state": "Waiting"}}
    assert sync_status(up, ready=True)["phase"] == "Copying"
    assert sync_status(copying, ready=True, backlog=Backlog.FULL)["phase"] == "BacklogFull"
    assert sync_status({**base, "connected": False}, ready=True,
                       backlog=Backlog.OLD)["phase"] == "Offline"
    assert "phase" not in sync_status(copying, ready=False)


def test_sync_status_shows_each_side_and_the_catch_up() -> None:
    """Backlog on each side and the catch-up's share and ETA, as the parent reports them;
    an ETA that is not known (nothing drains) is not claimed."""
    entry = {"connected": True, "parentBacklogRows": 1200, "parentBacklogBytes": 9000,
             "satelliteBacklogBytes": 4096, "copy": {"state": "Done"},
             "copyUp": {"state": "Done"}, "up": {"state": "Streaming"},
             "down": {"state": "Streaming"},
             "catchUp": {"percent": 40.0, "rowsPerSecond": 600.0, "etaSeconds": 2.0}}
    st = sync_status(entry, ready=True)
    assert (st["parentBacklogRows"], st["parentBacklogBytes"], st["satelliteBacklogBytes"]) \
        == (1200, 9000, 4096)
    assert (st["catchUpPercent"], st["catchUpEtaSeconds"]) == (40.0, 2.0)
    stalled = sync_status({**entry, "catchUp": {"percent": 0.0, "etaSeconds": None},
                           "satelliteBacklogBytes": None}, ready=True)
    assert "catchUpEtaSeconds" not in stalled and "satelliteBacklogBytes" not in stalled
    assert stalled["catchUpPercent"] == 0.0
