"""Ring routing: who sends what to whom, so every change reaches every member once.

Native logical replication knows only "forward nothing" (origin = none: a ring
stops after one hop) or "forward everything" (origin = any: a ring loops). Here
every change keeps its true origin, and a link forwards a change unless the
change would arrive back where it started, or where it has already been.

- ring: A->B->C->D->A. Each member forwards what it applied from upstream plus
  its own writes; the link into N drops changes that originated at N. A change
  from A travels B, C, D and stops before A: each member gets it exactly once.
- mesh: every member sends only its own writes to every other member.
- healing: a member that is down past bypassAfterSeconds is skipped; its
  upstream feeds the next live member, so the ring closes around the gap.
- satellites: a satellite hangs off one member (its parent), not in the ring. Its
  changes enter the ring at its parent under the satellite's own origin and travel
  like the parent's own; the link into the parent never carries them back (the
  parent has them, and its satellites' changes are not its to receive), and the
  parent's sync to a satellite carries every origin but the satellite's.

This module decides; the sync sidecar carries the decision out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..api.v1alpha1.ring import Topology

__all__ = ["Link", "Topology", "hops_to", "links", "path_of"]


@dataclass(frozen=True)
class Link:
    source: str
    target: str
    # Origins this link carries. For a ring, everything except the target's own changes
    # (and, around a bypassed member, that member's too: it is not there to forward).
    forwards_origins: frozenset[str]
    bypassing: tuple[str, ...] = ()

    def carries(self, origin: str) -> bool:
        return origin in self.forwards_origins


def _check_satellites(members: Sequence[str], satellites: Mapping[str, str]) -> None:
    for sat, parent in satellites.items():
        if sat in members:
            raise ValueError(f"satellite {sat} has a ring member's name")
        if parent not in members:
            raise ValueError(f"satellite {sat}'s parent {parent} is not a ring member")


def links(members: Sequence[str], topology: Topology | str,
          down: frozenset[str] = frozenset(),
          satellites: Mapping[str, str] | None = None) -> list[Link]:
    """The links of a ring or mesh, skipping members that are bypassed (down too long).
    `satellites` (satellite -> parent member) adds their origins: each link carries a
    satellite's changes as its parent's, except the link into that parent."""
    if len(set(members)) != len(members):
        raise ValueError("ring members must be distinct")
    sats = dict(satellites or {})
    _check_satellites(members, sats)
    live = [m for m in members if m not in down]
    if len(live) < 2:
        return []
    everyone = frozenset(members) | frozenset(sats)

    def own(member: str) -> frozenset[str]:
        """The origins whose changes enter the ring at `member`."""
        return frozenset({member}) | frozenset(s for s, p in sats.items() if p == member)

    if Topology(topology) == Topology.MESH:
        return [Link(s, t, own(s)) for s in live for t in live if s != t]
    out = []
    for i, source in enumerate(live):
        target = live[(i + 1) % len(live)]
        # The members between source and target in the configured order are bypassed.
        start = members.index(source)
        skipped = []
        j = (start + 1) % len(members)
        while members[j] != target:
            skipped.append(members[j])
            j = (j + 1) % len(members)
        out.append(Link(source, target, everyone - own(target), tuple(skipped)))
    return out


def path_of(origin: str, members: Sequence[str], topology: Topology | str,
            down: frozenset[str] = frozenset(),
            satellites: Mapping[str, str] | None = None) -> list[str]:
    """The members and satellites a change from `origin` (a member or a satellite)
    reaches, in order (for tests and status): a satellite's change first reaches its
    parent; each member reached (or writing) passes it on to its own satellites, all
    but the one it came from."""
    sats = dict(satellites or {})
    _check_satellites(members, sats)
    entry = sats.get(origin, origin)  # where the change enters the ring

    def with_satellites(member: str) -> list[str]:
        return [member, *(s for s, p in sats.items() if p == member and s != origin)]

    reached: list[str] = [] if entry == origin else [entry]
    if Topology(topology) == Topology.MESH:
        reached += [m for m in members if m != entry and m not in down]
    else:
        by_source = {lk.source: lk for lk in links(members, topology, down, sats)}
        at = entry
        while at in by_source:
            lk = by_source[at]
            if not lk.carries(origin) or lk.target in reached or lk.target == entry:
                break
            reached.append(lk.target)
            at = lk.target
    out = [s for s, p in sats.items() if p == entry and s != origin] if entry == origin \
        else []
    for m in reached:
        out += with_satellites(m)
    return out


def hops_to(origin: str, target: str, members: Sequence[str],
            topology: Topology | str,
            satellites: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The links (source, target) a change written at `origin` crosses to reach
    `target`, in order, with every member up. A member copying `origin`'s rows needs
    the slots of all of them to exist before it takes its snapshot: a write after the
    snapshot then travels every hop (see sync/seed.py). A satellite's change first
    crosses (satellite, parent); one for a satellite ends with (parent, satellite)."""
    sats = dict(satellites or {})
    _check_satellites(members, sats)
    if origin == target:
        return []
    head: list[tuple[str, str]] = []
    tail: list[tuple[str, str]] = []
    if origin in sats:
        head = [(origin, sats[origin])]
    if target in sats:
        tail = [(sats[target], target)]
    entry, exit_ = sats.get(origin, origin), sats.get(target, target)
    if entry == exit_:
        return head + tail
    by_source = {lk.source: lk for lk in links(members, topology, satellites=sats)}
    if Topology(topology) == Topology.MESH:
        return [*head, (entry, exit_), *tail]
    out: list[tuple[str, str]] = list(head)
    at = entry
    while at != exit_:
        lk = by_source.get(at)
        if lk is None or not lk.carries(origin) or len(out) >= len(members) + 1:
            raise ValueError(f"no path from {origin} to {target} in {list(members)}")
        out.append((lk.source, lk.target))
        at = lk.target
    return out + tail
