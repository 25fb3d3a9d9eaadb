"""Pure repair planning for verification: which member's row wins and what each other
member must change to match it.

Kept apart from the comparison (`verify.py`) because it has its own job and its own
dependency: it applies the ring's conflict policy (`conflicts.winner`), exactly as the
sync sidecar does live, so a repair never picks a different winner than replication would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from .conflicts import Policy, Version, winner
from .verify import KeyDifference, MemberConn, RowVersion

RepairOp = Literal["upsert", "delete"]


class Fix(BaseModel):
    """One change at one member that makes its row equal to the winning version.

    `origin` and `committed_at` are those of the winning version, so the repaired row
    carries the same original origin and commit time as everywhere else."""

    table: str
    key: list[str]
    member: str
    action: RepairOp
    source: str
    origin: str
    committed_at: datetime | None = None
    values: dict[str, str | None] | None = None
    reason: str = ""


_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def origin_member(origin: str | None, holder: str, members: Sequence[MemberConn]) -> str:
    """The member a version came from: the one whose origin name it carries, else the
    member holding it (an empty origin means written locally there)."""
    if origin:
        for m in members:
            if m.origin_name == origin:
                return m.name
    return holder


def policy_winner(versions: Mapping[str, RowVersion], members: Sequence[MemberConn],
                  policy: Policy | str = Policy.LAST_WRITER_WINS) -> str | None:
    """The member holding the version the ring's policy keeps, or None if no member has
    the row. lastWriterWins: newest original commit, then the origin's priority, then its
    name (the same order `conflicts.winner` applies live). An absent row never wins: a
    deletion leaves no commit time to compare, so repair by policy restores the newest
    row; choose a source member to propagate a deletion instead."""
    by_name = {m.name: m for m in members}
    best: tuple[str, Version] | None = None
    for holder in sorted(versions):
        v = versions[holder]
        if not v.present:
            continue
        who = origin_member(v.origin, holder, members)
        ref = by_name.get(who, by_name.get(holder))
        cand = Version(origin=who, committed_at=v.committed_at or _EPOCH,
                       priority=ref.priority if ref else 100)
        if best is None or winner(best[1], cand, policy) is cand:
            best = (holder, cand)
    return best[0] if best else None


def plan_fixes(diff: KeyDifference, members: Sequence[MemberConn], *,
               source: str | None = None,
               policy: Policy | str = Policy.LAST_WRITER_WINS) -> list[Fix]:
    """The fixes for one key: every member whose version differs from the winner's gets
    the winner's row (upsert), or loses its row when the winner (a source of truth) has
    none (delete). Versions must carry `values` for the winner when it has the row."""
    names = [m.name for m in members]
    by_name = {m.name: m for m in members}
    if source is not None:
        if source not in by_name:
            raise ValueError(f"source member {source!r} is not one of {names}")
        win: str | None = source
        reason = f"source of truth {source}"
    else:
        win = policy_winner(diff.versions, members, policy)
        reason = f"policy {Policy(policy).value}"
    if win is None:
        return []
    won = diff.versions.get(win, RowVersion())
    fixes: list[Fix] = []
    for m in names:
        if m == win:
            continue
        mine = diff.versions.get(m, RowVersion())
        if mine.row_hash == won.row_hash:
            continue
        if won.present:
            if won.values is None:
                raise ValueError(f"{diff.table} {diff.key}: no values fetched from {win}")
            origin = won.origin or by_name[win].origin_name
            fixes.append(Fix(table=diff.table, key=diff.key, member=m, action="upsert",
                             source=win, origin=origin, committed_at=won.committed_at,
                             values=won.values, reason=f"{reason}: take {win}'s row"))
        else:
            fixes.append(Fix(table=diff.table, key=diff.key, member=m, action="delete",
                             source=win, origin=by_name[win].origin_name,
                             reason=f"{reason}: {win} has no such row"))
    return fixes
