from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ringkeeper.core.conditions import condition, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_transition_time_moves_only_when_status_flips() -> None:
    c = set_condition([], type="Ready", status="False", reason="Starting", message="", now=T0)
    later = T0 + timedelta(minutes=5)
    same = set_condition(c, type="Ready", status="False", reason="Waiting", message="x", now=later)
    assert condition(same, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert condition(same, "Ready")["reason"] == "Waiting"
    flipped = set_condition(same, type="Ready", status="True", reason="Up", message="", now=later)
    assert condition(flipped, "Ready")["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_other_conditions_untouched_and_sorted() -> None:
    c = set_condition([], type="Ready", status="True", reason="Up", message="", now=T0)
    c = set_condition(c, type="Degraded", status="False", reason="Ok", message="", now=T0,
                      generation=3)
    assert [x["type"] for x in c] == ["Degraded", "Ready"]
    assert condition(c, "Degraded")["observedGeneration"] == 3
