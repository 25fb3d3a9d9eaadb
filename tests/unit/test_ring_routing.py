"""Ring routing and conflict resolution: the pure rules the sync sidecar will follow."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.core.conflicts import Action, Kind, Op, Policy, Version, decide, winner
from ringkeeper.core.ring import Topology, links, path_of

MEMBERS = ["zhaohui", "wangjiangshan", "yuecheng", "fuyang"]


@pytest.mark.parametrize("topology", [Topology.RING, Topology.MESH])
def test_every_change_reaches_every_other_member_exactly_once(topology: Topology) -> None:
    for origin in MEMBERS:
        reached = path_of(origin, MEMBERS, topology)
        assert sorted(reached) == sorted(m for m in MEMBERS if m != origin)
        assert len(reached) == len(set(reached)), "no member gets a change twice"
        assert origin not in reached, "a change never loops back to its origin"


def test_ring_order_follows_the_members() -> None:
    assert path_of("yuecheng", MEMBERS, "ring") == ["fuyang", "zhaohui", "wangjiangshan"]
    ring = links(MEMBERS, "ring")
    assert [(lk.source, lk.target) for lk in ring] == [
        ("zhaohui", "wangjiangshan"), ("wangjiangshan", "yuecheng"), ("yuecheng", "fuyang"),
        ("fuyang", "zhaohui")]
    # The link into a member drops that member's own changes.
    assert all(not lk.carries(lk.target) for lk in ring)


def test_ring_heals_around_a_dead_member() -> None:
    down = frozenset({"yuecheng"})
    ring = links(MEMBERS, "ring", down)
    healed = next(lk for lk in ring if lk.source == "wangjiangshan")
    assert healed.target == "fuyang" and healed.bypassing == ("yuecheng",)
    for origin in MEMBERS:
        if origin in down:
            continue
        reached = path_of(origin, MEMBERS, "ring", down)
        assert sorted(reached) == sorted(m for m in MEMBERS if m not in down | {origin})


def test_mesh_sends_only_own_changes() -> None:
    mesh = links(MEMBERS, "mesh")
    assert len(mesh) == 12
    assert all(lk.forwards_origins == frozenset({lk.source}) for lk in mesh)


def test_too_few_live_members_means_no_links() -> None:
    assert links(["a", "b"], "ring", frozenset({"b"})) == []
    with pytest.raises(ValueError, match="distinct"):
        links(["a", "a"], "ring")


T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def v(origin: str, seconds: float, priority: int = 100, deleted: bool = False) -> Version:
    return Version(origin, T0 + timedelta(seconds=seconds), priority, deleted)


@pytest.mark.parametrize(
    ("a", "b", "policy", "expected"),
    [
        pytest.param(v("zh", 1), v("yc", 2), Policy.LAST_WRITER_WINS, "yc", id="newer-wins"),
        pytest.param(v("zh", 2, 400), v("yc", 2, 200), Policy.LAST_WRITER_WINS, "zh",
                     id="tie-priority"),
        pytest.param(v("a", 2), v("b", 2), Policy.LAST_WRITER_WINS, "b", id="tie-name"),
        pytest.param(v("zh", 1, 400), v("yc", 9, 200), Policy.CAMPUS_PRIORITY, "zh",
                     id="priority-beats-time"),
    ],
)
def test_winner(a: Version, b: Version, policy: Policy, expected: str) -> None:
    assert winner(a, b, policy).origin == expected
    assert winner(b, a, policy).origin == expected, "arrival order must not matter"


def test_winner_is_order_independent_property() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        a = v(rnd.choice("abc"), rnd.randint(0, 3), rnd.choice([100, 200]))
        b = v(rnd.choice("abc"), rnd.randint(0, 3), rnd.choice([100, 200]))
        for policy in Policy:
            assert winner(a, b, policy) == winner(b, a, policy) or a == b


def test_tombstone_blocks_a_late_update() -> None:
    tomb = v("zh", 5, deleted=True)
    late = v("yc", 3)
    d = decide(Op.UPDATE, late, None, tomb, "lastWriterWins")
    assert d.action == Action.SKIP and d.conflict == Kind.UPDATE_DELETED
    assert "stays deleted" in d.reason


def test_missing_rows() -> None:
    assert decide(Op.UPDATE, v("zh", 1), None, None, "lastWriterWins").action == Action.INSERT
    assert decide(Op.DELETE, v("zh", 1, deleted=True), None, None,
                  "lastWriterWins").action == Action.TOMBSTONE
