"""How far a member's slots may move on without losing a change another member needs.

A slot on member S is a promise to keep S's WAL until the changes in it are safe.
"Safe" differs by slot: the slot S's downstream reads from may move as soon as that
downstream has durably applied (or knowingly skipped) a transaction; the hold slot,
which lets the ring heal around a dead member, may only move past a transaction
once every member that should receive it has it. The hold slot's answer comes from
each member's flushed per-origin progress, S's origin status and the positions of
S's own link slots, without decoding anything (hold_target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class OriginSample:
    """One row of a member's pg_replication_origin_status at one moment: the latest
    transaction it had applied from `origin` ended at `local_end` in its own WAL and was
    at `origin_lsn` in the origin's."""

    origin: str
    local_end: int
    origin_lsn: int


def hold_target(*, member: str, holders: Iterable[str],
                progress: Mapping[str, Mapping[str, int]], samples: Iterable[OriginSample],
                now_lsn: int, outbound: Mapping[str, int],
                owed: frozenset[str]) -> int | None:
    """How far `member`'s hold slot may move, from facts that need no decoding.

    Moving the slot to L gives up every transaction whose commit record starts before L
    in `member`'s WAL; each must be held by every holder:

    - written at `member`: the holders apply them in commit order, so all before L are
      held if L <= min(progress[h][member]). Or, for a link slot of `member` read by X
      with confirmed position CF >= L: X has every one of them before CF, so they are
      held if every holder has at least what X has of `member`. (The second rule lets a
      quiet member move on: its own progress elsewhere only moves when it writes.)
    - applied here from origin O (owed, not `member`): applies from O are in O's order,
      so those before L were at most at the origin LSN of the earliest sample ending at
      or after L, or, if none does, of the newest sample (taken after `now_lsn` was
      read, hence L <= now_lsn). Every holder but O needs that much of O.

    Returns the largest such L among the known positions, or None.
    """
    hs = list(holders)
    by_origin: dict[str, list[OriginSample]] = {}
    for s in samples:
        if s.origin in owed and s.origin != member:
            by_origin.setdefault(s.origin, []).append(s)
    for ss in by_origin.values():
        ss.sort(key=lambda s: s.local_end)

    def has(h: str, origin: str) -> int:
        return progress.get(h, {}).get(origin, 0)

    local_min = min((has(h, member) for h in hs), default=now_lsn)
    reader_cover = [cf for x, cf in outbound.items()
                    if all(has(h, member) >= has(x, member) for h in hs)]

    def local_ok(lsn: int) -> bool:
        return lsn <= local_min or any(cf >= lsn for cf in reader_cover)

    def forwarded_ok(lsn: int) -> bool:
        for origin, ss in by_origin.items():
            bound = next((s.origin_lsn for s in ss if s.local_end >= lsn), ss[-1].origin_lsn)
            if not all(has(h, origin) >= bound for h in hs if h != origin):
                return False
        return True

    candidates = {now_lsn, local_min, *outbound.values(),
                  *(s.local_end for ss in by_origin.values() for s in ss)}
    for lsn in sorted((c for c in candidates if 0 < c <= now_lsn), reverse=True):
        if local_ok(lsn) and forwarded_ok(lsn):
            return lsn
    return None


def behind(holders: Iterable[str], at: int,
           target: Callable[[list[str]], int | None]) -> list[str]:
    """Holders that on their own keep the hold slot where it is (`target` gives how far
    the slot may move for a set of holders): the ones to re-seed when WAL runs short."""
    return [m for m in holders if (target([m]) or 0) <= at]
