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

This module decides; the sync sidecar carries the decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def links(members: Sequence[str], topology: Topology | str,
          down: frozenset[str] = frozenset()) -> list[Link]:
    """The links of a ring or mesh, skipping members that are bypassed (down too long)."""
    if len(set(members)) != len(members):
        raise ValueError("ring members must be distinct")
    live = [m for m in members if m not in down]
    if len(live) < 2:
        return []
    everyone = frozenset(members)
    if Topology(topology) == Topology.MESH:
        return [Link(s, t, frozenset({s})) for s in live for t in live if s != t]
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
        out.append(Link(source, target, everyone - {target}, tuple(skipped)))
    return out


def path_of(origin: str, members: Sequence[str], topology: Topology | str,
            down: frozenset[str] = frozenset()) -> list[str]:
    """The members a change from `origin` reaches, in order (for tests and status)."""
    if Topology(topology) == Topology.MESH:
        return [m for m in members if m != origin and m not in down]
    by_source = {lk.source: lk for lk in links(members, topology, down)}
    reached: list[str] = []
    at = origin
    while at in by_source:
        lk = by_source[at]
        if not lk.carries(origin) or lk.target in reached:
            break
        reached.append(lk.target)
        at = lk.target
    return reached


def hops_to(origin: str, target: str, members: Sequence[str],
            topology: Topology | str) -> list[tuple[str, str]]:
    """The links (source, target) a change written at `origin` crosses to reach
    `target`, in order, with every member up. A member copying `origin`'s rows needs
    the slots of all of them to exist before it takes its snapshot: a write after the
    snapshot then travels every hop (see sync/seed.py)."""
    if origin == target:
        return []
    by_source = {lk.source: lk for lk in links(members, topology)}
    if Topology(topology) == Topology.MESH:
        return [(origin, target)]
    out: list[tuple[str, str]] = []
    at = origin
    while at != target:
        lk = by_source.get(at)
        if lk is None or not lk.carries(origin) or len(out) >= len(members):
            raise ValueError(f"no path from {origin} to {target} in {list(members)}")
        out.append((lk.source, lk.target))
        at = lk.target
    return out
