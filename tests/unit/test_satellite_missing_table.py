"""A satellite table that does not exist at the parent (issue 17, bad input): the parent's
sidecar reports it (`missingAtParent`) and the Satellite's Streaming condition says
TableMissingAtParent, naming the tables, the parent and what to do, ahead of the stopped
link it causes (core.satsync.streaming_of). The lookup's SQL on a real server is in
tests/integration/test_satellite_missing_table_pg.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core.satsync import Streaming, missing_at_parent, streaming_condition, streaming_of
from ringkeeper.sync.linkreport import LinkReport
from ringkeeper.sync.satreport import SatelliteReport

UP = {"state": "Streaming"}
DOWN = {"state": "Streaming"}
STOPPED = {"state": "Down", "message": 'relation "lis.extra" does not exist'}
NOW = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(("entry", "reason", "says"), [
    # the missing table comes first, before the link it stops
    ({"parent": "fy", "missingAtParent": ["lis.extra"], "up": STOPPED, "down": DOWN},
     Streaming.TABLE_MISSING_AT_PARENT,
     "table(s) lis.extra of the satellite do not exist at its parent fy: create each at "
     "every ring member"),
    ({"parent": "fy", "missingAtParent": ["lis.a", "lis.b"], "up": UP, "down": DOWN},
     Streaming.TABLE_MISSING_AT_PARENT, "lis.a, lis.b"),
    ({"missingAtParent": ["lis.a"], "up": UP, "down": DOWN},
     Streaming.TABLE_MISSING_AT_PARENT, "at its parent its parent"),
    ({"parent": "fy", "missingAtParent": [f"s.t{i}" for i in range(12)], "up": UP,
      "down": DOWN}, Streaming.TABLE_MISSING_AT_PARENT, "s.t9 and 2 more"),
    # none missing, or not looked yet: the links decide as before
    ({"parent": "fy", "missingAtParent": [], "up": UP, "down": DOWN}, Streaming.STREAMING,
     "stream"),
    ({"parent": "fy", "missingAtParent": None, "up": UP, "down": DOWN}, Streaming.STREAMING,
     "stream"),
    ({"parent": "fy", "up": STOPPED, "down": DOWN}, Streaming.UP_STOPPED,
     "lis.extra\" does not exist"),
    ({"parent": "fy", "missingAtParent": "lis.extra", "up": UP, "down": DOWN},
     Streaming.STREAMING, "stream"),  # not a list: not the sidecar's shape, ignored
])
def test_streaming_of_a_missing_table(entry: dict[str, Any], reason: Streaming,
                                      says: str) -> None:
    got, message = streaming_of(entry)
    assert got is reason, message
    assert says in message


def test_the_condition_says_what_to_run_and_stays_short() -> None:
    entry = {"parent": "fy", "missingAtParent": ["lis." + "x" * 200] * 30, "up": STOPPED,
             "down": DOWN}
    [cond] = streaming_condition([], entry, NOW, 2)
    assert (cond["status"], cond["reason"]) == ("False", "TableMissingAtParent")
    assert "spec.tables" in cond["message"] and "primary key" in cond["message"]
    assert len(cond["message"]) < 2000


def test_missing_at_parent_reads_only_a_list() -> None:
    assert missing_at_parent({"missingAtParent": ("a.b",)}) == ["a.b"]
    assert missing_at_parent({"missingAtParent": {"a.b": 1}}) == []
    assert missing_at_parent({}) == []


def test_the_sidecar_report_carries_it() -> None:
    rep = SatelliteReport("xd", "fy", LinkReport("xd", "fy", "up"),
                          LinkReport("fy", "xd", "down"))
    assert rep.as_dict()["missingAtParent"] is None  # not looked yet
    rep.missing_at_parent = ("lis.extra",)
    entry = rep.as_dict()
    assert entry["missingAtParent"] == ["lis.extra"] and entry["parent"] == "fy"
    assert streaming_of(entry)[0] is Streaming.TABLE_MISSING_AT_PARENT
