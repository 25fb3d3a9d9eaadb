"""What an instance does, from the Campus and its data folder: a decision table."""

from __future__ import annotations

import pytest

from ringkeeper.core.instance import (
    CampusView,
    DataState,
    Plan,
    running_primary_must_step_down,
    self_fence_due,
    start_plan,
)

E, P, R = DataState.EMPTY, DataState.PRIMARY, DataState.REPLICA


@pytest.mark.parametrize(
    ("me", "data", "view", "plan", "upstream"),
    [
        pytest.param("c-0", E, CampusView(None, "c-0"), Plan.INITDB, None, id="first-primary"),
        pytest.param("c-1", E, CampusView(None, "c-0"), Plan.WAIT, None, id="replica-waits"),
        pytest.param("c-1", E, CampusView("c-0", "c-0"), Plan.BASEBACKUP, "c-0",
                     id="new-replica-copies"),
        pytest.param("c-0", P, CampusView("c-0", "c-0"), Plan.START_PRIMARY, None,
                     id="primary-restarts"),
        pytest.param("c-1", R, CampusView("c-0", "c-0"), Plan.START_REPLICA, "c-0",
                     id="replica-restarts"),
        pytest.param("c-0", P, CampusView("c-1", "c-1"), Plan.REWIND, "c-1",
                     id="former-primary-rewinds"),
        pytest.param("c-0", P, CampusView("c-0", "c-1"), Plan.FENCE, None,
                     id="old-primary-during-failover-stays-down"),
        pytest.param("c-2", R, CampusView("c-0", "c-1"), Plan.WAIT, None,
                     id="bystander-waits-during-failover"),
        pytest.param("c-1", R, CampusView("c-0", "c-1"), Plan.START_REPLICA, "c-0",
                     id="target-waits-for-promote-call"),
        pytest.param("c-0", E, CampusView("c-0", "c-0"), Plan.WAIT, None,
                     id="empty-primary-never-reinitialises"),
        pytest.param("c-1", R, CampusView("c-0", "c-0", frozenset({"c-1"})), Plan.FENCE, None,
                     id="fenced-by-annotation"),
    ],
)
def test_start_plan(me: str, data: DataState, view: CampusView, plan: Plan,
                    upstream: str | None) -> None:
    d = start_plan(me, data, view)
    assert (d.plan, d.upstream) == (plan, upstream), d.reason


@pytest.mark.parametrize(
    ("view", "steps_down"),
    [
        pytest.param(CampusView("c-0", "c-0"), False, id="still-primary"),
        pytest.param(CampusView("c-0", "c-1"), True, id="failover-to-other"),
        pytest.param(CampusView("c-1", "c-1"), True, id="other-is-primary"),
        pytest.param(CampusView("c-1", "c-0"), False, id="promoted-before-status-caught-up"),
        pytest.param(CampusView("c-0", "c-0", frozenset({"c-0"})), True, id="fenced"),
    ],
)
def test_running_primary_steps_down(view: CampusView, steps_down: bool) -> None:
    assert (running_primary_must_step_down("c-0", view) is not None) == steps_down


def test_self_fence_threshold() -> None:
    assert not self_fence_due(2.9, 3)
    assert self_fence_due(3.0, 3)
