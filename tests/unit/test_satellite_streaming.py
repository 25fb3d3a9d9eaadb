"""The Satellite's Streaming condition (core.satsync.streaming_of): True only while the
parent's sidecar reports both links carrying changes and the drain working; otherwise
False naming the link and quoting its message. On the local cluster the spool link once
failed on every attempt while status said Online (issue 17): this is what now says so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core.satsync import (
    Streaming,
    streaming_condition,
    streaming_event,
    streaming_of,
    sync_status,
)

UP = {"state": "Streaming"}
DOWN = {"state": "Streaming"}
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(("entry", "reason", "says"), [
    (None, Streaming.PARENT_UNREAD, "did not answer"),
    ({"up": UP, "down": DOWN}, Streaming.STREAMING, "stream"),
    ({"up": {"state": "CatchingUp"}, "down": {"state": "CatchingUp"}}, Streaming.STREAMING,
     "stream"),
    ({"up": {"state": "Down", "message": "connection refused"}, "down": DOWN},
     Streaming.UP_STOPPED, "satellite -> parent link is Down: connection refused"),
    ({"up": UP, "down": {"state": "Down", "message": "[Errno -2] Name or service not known"}},
     Streaming.SPOOL_STOPPED, "parent -> spool link is Down: [Errno -2]"),
    ({"up": UP}, Streaming.SPOOL_STOPPED, "not reported"),
    ({"up": "Streaming", "down": DOWN}, Streaming.UP_STOPPED, "not reported"),
    ({"up": UP, "down": DOWN, "drainError": "relation lis.x does not exist"},
     Streaming.DRAIN_FAILING, "lis.x does not exist"),
])
def test_streaming_of(entry: dict[str, Any] | None, reason: Streaming, says: str) -> None:
    got, message = streaming_of(entry)
    assert got is reason
    assert says in message


def test_condition_and_phase_agree() -> None:
    base = {"connected": True, "parentBacklogRows": 0, "satelliteBacklogBytes": 0,
            "copy": {"state": "Done"}, "copyUp": {"state": "Done"}, "up": UP, "down": DOWN}
    conds = streaming_condition([], base, NOW, 3)
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in conds] == [
        ("Streaming", "True", "BothWays", 3)]
    assert sync_status(base, ready=True)["phase"] == "Online"
    stopped = {**base, "down": {"state": "Stalled", "message": "x" * 1000}}
    conds = streaming_condition(conds, stopped, NOW, 3)
    assert (conds[0]["status"], conds[0]["reason"]) == ("False", "SpoolLinkStopped")
    assert len(conds[0]["message"]) < 400  # a link's long message is cut
    assert sync_status(stopped, ready=True)["phase"] == "Syncing"
    assert streaming_condition(conds, None, NOW, 3)[0]["reason"] == "ParentUnread"


@pytest.mark.parametrize(("before", "after", "want"), [
    (None, {"status": "False", "reason": "ParentUnread"}, None),  # joining: no Event
    (None, {"status": "True", "reason": "BothWays"}, ("BothWays", False)),  # connected
    ({"status": "False", "reason": "SpoolLinkStopped"}, {"status": "True", "reason": "BothWays"},
     ("BothWays", False)),  # reconnected
    ({"status": "True", "reason": "BothWays"}, {"status": "False", "reason": "UpLinkStopped"},
     ("UpLinkStopped", True)),  # disconnected
    ({"status": "False", "reason": "UpLinkStopped"},
     {"status": "False", "reason": "SpoolLinkStopped"}, None),  # still stopped
    ({"status": "True", "reason": "BothWays"}, {"status": "True", "reason": "BothWays"}, None),
])
def test_streaming_event(before: dict[str, Any] | None, after: dict[str, Any],
                         want: tuple[str, bool] | None) -> None:
    assert streaming_event(before, after) == want
