"""What a sidecar does about each ring member, decided from a snapshot of facts.

The sync sidecar and its links gather facts (did the source answer, since when is it
silent, how far behind is the hold slot, which slots exist) and carry out what this
module decides, with no I/O here:

- plan_member: Move (keep it in the ring), Down (not answering, not yet bypassed),
  Bypass (down past bypassAfterSeconds: the ring closes around it) or Reseed (it fell
  behind the WAL budget: it gets a re-seed, not more WAL), each with a reason;
- own_slots / inbound: which slots a member owns, which links feed it (core.ring);
- link_fault: which failure of a link means its source is Down, and which is an Error;
- route: whether a transaction read from a source is this link's to bring;
- pending_copies / table_copy_step: which (source, table) copies a member still owes
  itself, and whether a copy of one table can be made now (sync/seed.py);
- confirmable: how far the source may be told this member is. Safety-critical:
  confirming past what this member durably applied loses those changes for good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..api.v1alpha1.ring import Topology
from . import names
from .liveness import LinkFault
from .ring import links

# The hold slot may keep at most this share of max_slot_wal_keep_size before the members
# that hold it back are re-seeded instead (PostgreSQL would invalidate the slot at 1.0).
RESEED_SHARE = 0.8


class MemberStepKind(StrEnum):
    MOVE = "Move"  # in the ring: read from it, keep WAL for it
    DOWN = "Down"  # does not answer; still in the ring until bypassAfterSeconds
    BYPASS = "Bypass"  # down too long: its upstream feeds its downstream
    RESEED = "Reseed"  # fell behind the WAL budget: no longer holds the hold slot back


@dataclass(frozen=True)
class MemberFacts:
    """One member, as the sidecar of `local` sees it at `now` (monotonic seconds)."""

    member: str
    local: str
    now: float
    bypass_after: float
    down_since: float | None = None  # when it stopped answering (None: it answers)
    needs_reseed: bool = False  # already found behind the WAL budget
    behind_budget: bool = False  # alone keeps the hold slot back while WAL runs short


@dataclass(frozen=True)
class MemberStep:
    kind: MemberStepKind
    reason: str
    bypass: bool = False  # the links route around it (Bypass, or Reseed while bypassed)

    @property
    def holds(self) -> bool:
        """Whether the hold slot keeps WAL for this member."""
        return self.kind != MemberStepKind.RESEED


def plan_member(f: MemberFacts) -> MemberStep:
    """What to do about one member. A member to re-seed stays out of the hold slot's
    holders whatever else is true of it; it is routed around only when it is also down
    past bypassAfterSeconds (a member that answers still takes what reaches it). The
    local member is never down or bypassed by its own sidecar."""
    down_for = None if f.down_since is None or f.member == f.local else f.now - f.down_since
    bypass = down_for is not None and down_for >= f.bypass_after
    if f.needs_reseed or f.behind_budget:
        return MemberStep(MemberStepKind.RESEED, f"{f.member} fell behind the WAL budget and "
                          "needs a re-seed", bypass=bypass)
    if bypass:
        assert down_for is not None
        return MemberStep(MemberStepKind.BYPASS, f"{f.member} down for {down_for:.1f}s "
                          f"(bypassAfterSeconds {f.bypass_after:g}): the ring closes "
                          "around it", bypass=True)
    if down_for is not None:
        return MemberStep(MemberStepKind.DOWN, f"{f.member} down for {down_for:.1f}s, bypassed "
                          f"after {f.bypass_after:g}s")
    return MemberStep(MemberStepKind.MOVE, f"{f.member} answers")


def over_budget(hold_lag_bytes: int | None, budget_bytes: int) -> bool:
    """Whether the hold slot keeps so much WAL that the members holding it back get a
    re-seed instead (the re-seed trigger)."""
    return hold_lag_bytes is not None and hold_lag_bytes > RESEED_SHARE * budget_bytes


def bypassed(down_since: Mapping[str, float], *, local: str, now: float,
             bypass_after: float) -> frozenset[str]:
    """Members the ring routes around: down for bypassAfterSeconds or more."""
    return frozenset(m for m, since in down_since.items()
                     if plan_member(MemberFacts(m, local, now, bypass_after, since)).bypass)


def needs_hold(topology: Topology | str, members: Sequence[str]) -> bool:
    """A hold slot lets the ring heal around a dead member, which takes a ring of
    three or more (a mesh reads every member directly)."""
    return Topology(topology) != Topology.MESH and len(members) > 2


def own_slots(ring: str, member: str, members: Sequence[str],
              topology: Topology | str) -> list[str]:
    """The slots `member` keeps on its own database, with every member up. The hold
    slot first, so it never starts after the slot it backs up. Each target has its own
    slot: a new successor never inherits a position another member moved on."""
    if Topology(topology) == Topology.MESH:
        return [names.link_slot_name(ring, member, t) for t in members if t != member]
    hold = [names.hold_slot_name(ring, member)] if needs_hold(topology, members) else []
    successors = [lk.target for lk in links(members, topology) if lk.source == member]
    return [*hold, *(names.link_slot_name(ring, member, t) for t in successors)]


@dataclass(frozen=True)
class Inbound:
    """A link that feeds `target`: read `slot` on `source`."""

    source: str
    slot: str
    carries: frozenset[str] | None  # origins this link may bring
    bypassing: tuple[str, ...]


def inbound(ring: str, target: str, members: Sequence[str], topology: Topology | str,
            down: frozenset[str],
            satellites: Mapping[str, str] | None = None) -> dict[str, Inbound]:
    """link key ("source->target") -> the link that feeds `target`, around `down`; with
    `satellites` (name -> parent) the links carry their origins too (core.ring)."""
    return {f"{lk.source}->{target}": Inbound(
                lk.source, names.link_slot_name(ring, lk.source, target),
                lk.forwards_origins, lk.bypassing)
            for lk in links(members, topology, down - {target}, satellites)
            if lk.target == target}


def link_fault(*, slot_lost: bool, silent: bool, unreachable: bool,
               own_answers: bool) -> LinkFault:
    """Why a link's attempt ended, from the kind of failure. An unreachable peer is
    the source only if this member's own database still answers (else TargetDown: the
    source is never blamed, so never bypassed, for this member's own failure); a
    refusal or a bug is Failed (Error): the source is up, so it is not bypassed."""
    if slot_lost:
        return LinkFault.SLOT_LOST
    if (unreachable or silent) and not own_answers:
        return LinkFault.TARGET_UNREACHABLE
    if silent:
        return LinkFault.SOURCE_SILENT
    if unreachable:
        return LinkFault.SOURCE_UNREACHABLE
    return LinkFault.FAILED


def down_since(fault: LinkFault, *, now: float, silent_since: float | None) -> float | None:
    """When the source of a link that ended with `fault` counts as down from (None: it
    does not): since it fell silent, so the bypass comes bypassAfterSeconds after the
    hang rather than after its detection; since now if it did not answer."""
    if fault == LinkFault.SOURCE_SILENT:
        return now if silent_since is None else silent_since
    if fault == LinkFault.SOURCE_UNREACHABLE:
        return now
    return None


def recreated_slot_gap(slot: str, *, created: bool, had_before: bool) -> str | None:
    """A slot this member owned before and had to create again (a failover without
    failover slots): changes committed just before it may have missed the ring."""
    if created and had_before:
        return (f"slot {slot} was re-created at this member (a failover without "
                "failover slots): changes committed just before it may not have "
                "reached the ring; run a verification with repair")
    return None


def pending_copies(member: str, members: Sequence[str], tables: Sequence[str],
                   done: frozenset[tuple[str, str]]) -> dict[str, list[str]]:
    """Source member -> the tables whose rows from it `member` has yet to copy
    (sync/seed.py), sources in ring order; a source with none pending is left out.

    Copies are kept per (source, table), not per source: a table that joins this
    member's replicated set after its copy of a source ran (created here later, as the
    demo's campuses create the LIS schema while the ring sets up) is pending from every
    other member until copied from each. A per-source mark would call it done, and the
    source's rows of it written before the ring's slots carried it would never come
    (issue 14: one campus's first rows missing at the others)."""
    out: dict[str, list[str]] = {}
    for m in members:
        if m == member:
            continue
        left = [t for t in tables if (m, t) not in done]
        if left:
            out[m] = left
    return out


class TableCopy(StrEnum):
    """What a copy does with one table of one source, judged in the snapshot it reads."""

    COPY = "Copy"  # in the source's publication: copy its rows now, then it is done
    ABSENT = "Absent"  # not at the source: nothing of the source's to copy; done
    WAIT = "Wait"  # at the source but not in its publication yet: copy it later


def table_copy_step(*, at_source: bool, published: bool) -> TableCopy:
    """Whether a copy of one table from a source, read in a snapshot taken after every
    slot on the path from the source exists and is consistent, covers every row of it
    together with the stream, with no gap.

    Published in that snapshot: the publication change committed before it, so a row
    committed before the snapshot is in the copy and one committed after is decoded as
    published by the (older, consistent) slot: COPY. Not at the source: the source's
    event trigger (created with its publication, before any slot there) adds the
    table in the transaction that creates it, so every row of it will travel: ABSENT,
    done with nothing copied. At the source but not published: rows committed after
    the snapshot and before the table joins the publication would be in neither, so
    the copy WAITs for the publication (the caller adds the table to it) and is made
    again after."""
    if not at_source:
        return TableCopy.ABSENT
    return TableCopy.COPY if published else TableCopy.WAIT


def route(ring: str, source: str, final_lsn: int, origin: tuple[str, int] | None,
          carries: frozenset[str] | None, local: str | None = None) -> tuple[str, int] | None:
    """(true origin, origin LSN) of a transaction read from `source` (its Begin's final
    LSN, its Origin message's (name, LSN) if any), or None when this link must not
    bring it: a stock-sync copy, the target's own change coming back, or an origin the
    link does not carry."""
    if origin is not None:
        member = names.member_of_origin(ring, origin[0])
        if member == names.SEED:
            return None  # a stock-sync copy: local to the member that was seeded
        true_origin = member or source
        origin_lsn = origin[1] if member else final_lsn
    else:
        true_origin, origin_lsn = source, final_lsn
    if true_origin == local or (carries is not None and true_origin not in carries):
        return None
    return true_origin, origin_lsn


def confirmable(*, applied_end: int, seen_end: int, drained: bool, part_open: bool) -> int:
    """How far the source may be told this member is.

    `applied_end`: the end of the last transaction this member applied (or knowingly
    skipped) in stream order; `seen_end`: the source's WAL end at the last keepalive
    read while no transaction was open, everything before it having been queued.
    Only when everything read is taken from the queue (`drained`) and no transaction
    is half applied (`part_open`) may the answer pass `applied_end`, to `seen_end`:
    what lies before it and was not sent is not for this link. Without that a quiet
    link would hold the slot's restart point, and so WAL, at its last transaction.
    Confirming anything further would let the source drop changes this member lacks.
    """
    if drained and not part_open:
        return max(applied_end, seen_end)
    return applied_end
