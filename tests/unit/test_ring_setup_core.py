"""Pure rules of ring setup under live writes: which slots a copy waits for, whose
rows a member copies, and that a write arriving twice is not a conflict."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.core import names
from ringkeeper.core.conflicts import Action, Kind, Op, Version, decide
from ringkeeper.core.ring import hops_to, path_of
from ringkeeper.sync.seed import copy_origin

MEMBERS = ["a", "b", "c", "d"]
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_hops_follow_the_ring_to_the_target() -> None:
    assert hops_to("b", "a", MEMBERS, "ring") == [("b", "c"), ("c", "d"), ("d", "a")]
    assert hops_to("d", "a", MEMBERS, "ring") == [("d", "a")]
    assert hops_to("a", "a", MEMBERS, "ring") == []
    assert hops_to("b", "a", MEMBERS, "mesh") == [("b", "a")]


@pytest.mark.parametrize("topology", ["ring", "mesh"])
def test_hops_end_where_a_change_reaches_the_target(topology: str) -> None:
    for origin in MEMBERS:
        for target in MEMBERS:
            if origin == target:
                continue
            hops = hops_to(origin, target, MEMBERS, topology)
            assert hops[0][0] == origin and hops[-1][1] == target
            assert all(x[1] == y[0] for x, y in itertools.pairwise(hops))
            assert target in path_of(origin, MEMBERS, topology)


def test_hops_refuse_a_target_outside_the_ring() -> None:
    with pytest.raises(ValueError, match="no path"):
        hops_to("a", "z", MEMBERS, "ring")


@pytest.mark.parametrize(("roname", "copied_as"), [
    (None, "b"),  # written at b (or frozen, or from before track_commit_timestamp)
    ("rk_lis_b", "b"),
    ("rk_lis_c", None),  # c wrote it last: c's own copy brings it
    ("rk_lis_a", None),  # the copying member's own row came back: not b's to send
    ("rk_lis_gone", "b"),  # a member no longer in the ring: only b has it now
    ("pg_16384", "b"),  # a foreign origin (another replication tool)
    (names.seed_origin("lis"), names.SEED),  # a stock-sync copy stays the oldest version
])
def test_whose_rows_a_member_copies(roname: str | None, copied_as: str | None) -> None:
    assert copy_origin("lis", "b", MEMBERS, roname) == copied_as


def v(origin: str, sec: int) -> Version:
    return Version(origin, T0 + timedelta(seconds=sec), 100)


@pytest.mark.parametrize(("op", "incoming", "row", "action"), [
    # The same write twice (copied at setup and streamed), or an older one of the same
    # origin: the row holds it already; whatever brought it here forwarded it.
    (Op.INSERT, v("b", 5), v("b", 5), Action.SKIP),
    (Op.UPDATE, v("b", 5), v("b", 5), Action.SKIP),
    (Op.DELETE, v("b", 5), v("b", 5), Action.SKIP),
    (Op.INSERT, v("b", 1), v("b", 5), Action.SKIP),
    (Op.UPDATE, v("b", 1), v("b", 5), Action.SKIP),
    # A newer one of the same origin replaces it, conflict-free.
    (Op.INSERT, v("b", 9), v("b", 5), Action.UPDATE),
])
def test_one_origins_writes_never_conflict(op: Op, incoming: Version, row: Version,
                                           action: Action) -> None:
    d = decide(op, incoming, row, None, "lastWriterWins")
    assert (d.action, d.conflict) == (action, None)


def test_two_origins_still_conflict() -> None:
    d = decide(Op.INSERT, v("b", 5), v("c", 5), None, "lastWriterWins")
    assert d.conflict == Kind.INSERT_EXISTS
