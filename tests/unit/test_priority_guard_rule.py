"""core.conflicts.local_write_allowed as a table, and what the guard's table holds.

The rule is derived, not assumed: a local write is allowed exactly when the version it
writes beats the version it replaces by the policy's own order (core.conflicts.winner),
with a newer commit time, which is what makes it win at every other member too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.core.conflicts import Policy, Version, local_write_allowed, priority_rows, winner

KINGBASE = "V9R1"

T0 = datetime(2026, 1, 1, tzinfo=UTC)

CASES = [
    # policy, this member's priority, the row's writer's priority (None: here), allowed
    (Policy.CAMPUS_PRIORITY, 100, 200, False),
    (Policy.CAMPUS_PRIORITY, 100, 101, False),
    (Policy.CAMPUS_PRIORITY, 100, 100, True),
    (Policy.CAMPUS_PRIORITY, 100, 99, True),
    (Policy.CAMPUS_PRIORITY, 100, -1, True),  # the seed origin
    (Policy.CAMPUS_PRIORITY, 100, None, True),
    (Policy.CAMPUS_PRIORITY, 0, 1, False),
    (Policy.LAST_WRITER_WINS, 100, 200, True),
    (Policy.LAST_WRITER_WINS, 100, 100, True),
    (Policy.LAST_WRITER_WINS, 100, None, True),
    ("campusPriority", 1, 2, False),
]


@pytest.mark.parametrize(("policy", "local", "row", "allowed"), CASES)
def test_local_write_allowed(policy: Policy | str, local: int, row: int | None,
                             allowed: bool) -> None:
    assert local_write_allowed(policy, local, row) is allowed


@pytest.mark.parametrize(("policy", "local", "row", "allowed"), CASES)
def test_allowed_exactly_when_the_local_write_wins_by_the_policy(
        policy: Policy | str, local: int, row: int | None, allowed: bool) -> None:
    if row is None:
        return  # the member's own version: its own later write replaces it everywhere
    old = Version("elsewhere", T0, row)
    new = Version("here", T0 + timedelta(seconds=1), local)
    assert (winner(old, new, policy) is new) is allowed


def test_priority_rows_only_under_campus_priority() -> None:
    prios = {"north": 300, "south": 100, "sat": 100}
    assert priority_rows("lis", "south", Policy.LAST_WRITER_WINS, prios) == []
    assert priority_rows("lis", "south", Policy.CAMPUS_PRIORITY, prios) == [
        ("north", "rk_lis_north", 300, False),
        ("sat", "rk_lis_sat", 100, False),
        ("south", "rk_lis_south", 100, True),
    ]


def test_the_guard_function_uses_the_engines_names() -> None:
    """The trigger reads the row's commit origin and the origin catalog by the names of
    the member's engine (KingbaseES renames pg_* to sys_*)."""
    from ringkeeper.engines import profile_for
    from ringkeeper.sync.priorityguard import guard_function_body

    pg = guard_function_body(profile_for("postgresql", "17"))
    assert "pg_xact_commit_timestamp_origin(OLD.xmin)" in pg
    assert "FROM pg_replication_origin o" in pg
    kb = guard_function_body(profile_for("kingbase", KINGBASE))
    assert "sys_xact_commit_timestamp_origin(OLD.xmin)" in kb
    assert "FROM sys_replication_origin o" in kb
    assert "pg_" not in kb
