"""core.ringmember: member steps, slot ownership, link faults, routing and how far a
source may be told this member is (confirmable), as tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.core import names
from ringkeeper.core.liveness import LinkFault
from ringkeeper.core.ringmember import (
    MemberFacts,
    MemberStepKind,
    TableCopy,
    bypassed,
    confirmable,
    down_since,
    inbound,
    link_fault,
    needs_hold,
    over_budget,
    own_slots,
    pending_copies,
    plan_member,
    recreated_slot_gap,
    route,
    table_copy_step,
)


@pytest.mark.parametrize(("facts", "kind", "bypass"), [
    (MemberFacts("b", "a", 100.0, 60.0), MemberStepKind.MOVE, False),
    (MemberFacts("b", "a", 100.0, 60.0, down_since=50.0), MemberStepKind.DOWN, False),
    (MemberFacts("b", "a", 100.0, 60.0, down_since=40.0), MemberStepKind.BYPASS, True),
    (MemberFacts("b", "a", 100.0, 60.0, down_since=10.0), MemberStepKind.BYPASS, True),
    (MemberFacts("b", "a", 100.0, 60.0, needs_reseed=True), MemberStepKind.RESEED, False),
    (MemberFacts("b", "a", 100.0, 60.0, behind_budget=True), MemberStepKind.RESEED, False),
    # A member to re-seed that is also down too long is still routed around.
    (MemberFacts("b", "a", 100.0, 60.0, down_since=0.0, needs_reseed=True),
     MemberStepKind.RESEED, True),
    # The sidecar never bypasses its own member.
    (MemberFacts("a", "a", 100.0, 60.0, down_since=0.0), MemberStepKind.MOVE, False),
])
def test_plan_member(facts: MemberFacts, kind: MemberStepKind, bypass: bool) -> None:
    step = plan_member(facts)
    assert (step.kind, step.bypass) == (kind, bypass)
    assert step.holds == (kind != MemberStepKind.RESEED)
    assert step.reason


def test_bypassed_only_past_the_window() -> None:
    down = {"b": 10.0, "c": 80.0, "a": 0.0}
    assert bypassed(down, local="a", now=100.0, bypass_after=60.0) == frozenset({"b"})


@pytest.mark.parametrize(("lag", "budget", "want"), [
    (None, 100, False), (80, 100, False), (81, 100, True), (0, 0, False)])
def test_over_budget(lag: int | None, budget: int, want: bool) -> None:
    assert over_budget(lag, budget) is want


@pytest.mark.parametrize(("members", "topology", "me", "want"), [
    (["a", "b"], "ring", "a", [names.link_slot_name("r", "a", "b")]),
    (["a", "b", "c"], "ring", "c",
     [names.hold_slot_name("r", "c"), names.link_slot_name("r", "c", "a")]),
    (["a", "b", "c"], "ring", "a",
     [names.hold_slot_name("r", "a"), names.link_slot_name("r", "a", "b")]),
    (["a", "b", "c"], "mesh", "b",
     [names.link_slot_name("r", "b", "a"), names.link_slot_name("r", "b", "c")]),
])
def test_own_slots(members: list[str], topology: str, me: str, want: list[str]) -> None:
    assert own_slots("r", me, members, topology) == want
    assert needs_hold(topology, members) == (topology == "ring" and len(members) > 2)


def test_inbound_around_a_bypassed_member() -> None:
    got = inbound("r", "c", ["a", "b", "c"], "ring", frozenset({"b"}))
    assert list(got) == ["a->c"]
    lk = got["a->c"]
    assert lk.slot == names.link_slot_name("r", "a", "c")
    assert lk.bypassing == ("b",) and lk.carries == frozenset({"a", "b"})
    assert list(inbound("r", "c", ["a", "b", "c"], "ring", frozenset())) == ["b->c"]
    # Its own member is never bypassed by its own sidecar.
    assert list(inbound("r", "c", ["a", "b", "c"], "ring", frozenset({"c"}))) == ["b->c"]


@pytest.mark.parametrize(("kw", "want"), [
    ({"slot_lost": True, "silent": False, "unreachable": False, "own_answers": True},
     LinkFault.SLOT_LOST),
    ({"slot_lost": False, "silent": True, "unreachable": True, "own_answers": True},
     LinkFault.SOURCE_SILENT),
    ({"slot_lost": False, "silent": False, "unreachable": True, "own_answers": True},
     LinkFault.SOURCE_UNREACHABLE),
    ({"slot_lost": False, "silent": False, "unreachable": True, "own_answers": False},
     LinkFault.TARGET_UNREACHABLE),
    ({"slot_lost": False, "silent": True, "unreachable": True, "own_answers": False},
     LinkFault.TARGET_UNREACHABLE),
    ({"slot_lost": False, "silent": False, "unreachable": False, "own_answers": True},
     LinkFault.FAILED),
])
def test_link_fault(kw: dict[str, bool], want: LinkFault) -> None:
    assert link_fault(**kw) == want


@pytest.mark.parametrize(("fault", "silent_since", "want"), [
    (LinkFault.SOURCE_SILENT, 42.0, 42.0), (LinkFault.SOURCE_SILENT, None, 100.0),
    (LinkFault.SOURCE_UNREACHABLE, 42.0, 100.0), (LinkFault.TARGET_UNREACHABLE, None, None),
    (LinkFault.FAILED, None, None), (LinkFault.SLOT_LOST, None, None)])
def test_down_since(fault: LinkFault, silent_since: float | None,
                    want: float | None) -> None:
    assert down_since(fault, now=100.0, silent_since=silent_since) == want


def test_recreated_slot_gap_and_pending_copies() -> None:
    assert recreated_slot_gap("s", created=True, had_before=True) is not None
    assert recreated_slot_gap("s", created=True, had_before=False) is None
    assert recreated_slot_gap("s", created=False, had_before=True) is None


T1, T2 = "lis.samples", "lis.orders"


@pytest.mark.parametrize(("tables", "done", "want"), [
    # Nothing copied yet: every table from every other member, in ring order.
    ([T1, T2], set(), {"a": [T1, T2], "c": [T1, T2]}),
    # Everything copied: nothing pending.
    ([T1, T2], {("a", T1), ("a", T2), ("c", T1), ("c", T2)}, {}),
    # Issue 14: b copied a and c when it had only T1; T2 appeared here later. A
    # per-member mark called it done; per table it is pending from both.
    ([T1, T2], {("a", T1), ("c", T1)}, {"a": [T2], "c": [T2]}),
    # A copy cut short after one table of a: only the rest of a, and all of c.
    ([T1, T2], {("a", T1)}, {"a": [T2], "c": [T1, T2]}),
    # A table that left the replicated set is not owed; one copied from b itself never.
    ([T1], {("a", T2), ("b", T1)}, {"a": [T1], "c": [T1]}),
    # No tables: nothing to copy from anyone.
    ([], set(), {}),
])
def test_pending_copies_per_source_and_table(tables: list[str], done: set[tuple[str, str]],
                                             want: dict[str, list[str]]) -> None:
    assert pending_copies("b", ["a", "b", "c"], tables, frozenset(done)) == want


@pytest.mark.parametrize(("at_source", "published", "want"), [
    (True, True, TableCopy.COPY),  # the slot decodes every row after the snapshot
    (True, False, TableCopy.WAIT),  # rows after the snapshot would be in neither
    (False, False, TableCopy.ABSENT),  # the event trigger publishes it at birth
    (False, True, TableCopy.ABSENT),
])
def test_table_copy_step(at_source: bool, published: bool, want: TableCopy) -> None:
    assert table_copy_step(at_source=at_source, published=published) == want


ORIGIN_C = (names.origin_name("r", "c"), 77)


@pytest.mark.parametrize(("origin", "carries", "local", "want"), [
    (None, None, None, ("a", 10)),  # the source's own write
    (ORIGIN_C, None, None, ("c", 77)),  # forwarded: true origin and its LSN
    (ORIGIN_C, frozenset({"a"}), None, None),  # an origin the link does not carry
    (ORIGIN_C, None, "c", None),  # the target's own change coming back
    ((names.origin_name("r", names.SEED), 5), None, None, None),  # a seed copy
    (("someone_else", 5), None, None, ("a", 10)),  # not a ring origin: the source's
])
def test_route(origin: tuple[str, int] | None, carries: frozenset[str] | None,
               local: str | None, want: tuple[str, int] | None) -> None:
    assert route("r", "a", 10, origin, carries, local) == want


# confirmable: (applied_end, seen_end, drained, part_open) -> the position reported.
@pytest.mark.parametrize(("applied", "seen", "drained", "part_open", "want"), [
    (100, 0, True, False, 100),  # nothing seen yet: what is applied
    (100, 500, True, False, 500),  # quiet: the keepalive's end, nothing for us before it
    (500, 100, True, False, 500),  # never backwards
    # Unsafe cases: each would confirm past what this member has applied.
    (100, 500, False, False, 100),  # read but still queued: not applied yet
    (100, 500, True, True, 100),  # a large transaction half applied
    (100, 500, False, True, 100),
])
def test_confirmable(applied: int, seen: int, drained: bool, part_open: bool,
                     want: int) -> None:
    assert confirmable(applied_end=applied, seen_end=seen, drained=drained,
                       part_open=part_open) == want


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.booleans(), st.booleans())
def test_confirmable_never_passes_applied_unless_safe(applied: int, seen: int,
                                                      drained: bool, part_open: bool) -> None:
    got = confirmable(applied_end=applied, seen_end=seen, drained=drained,
                      part_open=part_open)
    assert got >= applied
    if not drained or part_open:
        assert got == applied
    else:
        assert got <= max(applied, seen)
