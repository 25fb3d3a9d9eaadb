"""Deterministic conflict resolution, so every member picks the same winner.

Two writes to one row at two campuses meet at each member in a different order.
Whatever the order, each member must keep the same version, or the ring
diverges. The decision therefore uses only values that travel with the change:
the original commit time, the origin campus's priority, and its name.

Convergence by construction: a member passes on every change that wins there
(`forwards`), so the write that wins by the policy travels the whole ring and wins
at every member; a change that loses is stopped where it loses, and what beat it
there was passed on when it won. Tested against a model of whole rings with random
histories (tests/unit/test_convergence_model.py), which uses these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ..api.v1alpha1.ring import ConflictPolicy
from . import names

# The spec's enum is the one vocabulary for policies (conflicts.policy in a ring).
Policy = ConflictPolicy


class Kind(StrEnum):
    INSERT_EXISTS = "insert_exists"  # insert of a key that is already there
    UPDATE_MISSING = "update_missing"  # update of a row that is not there
    DELETE_MISSING = "delete_missing"  # delete of a row that is not there
    UPDATE_UPDATE = "update_update"  # concurrent updates of one row
    UPDATE_DELETED = "update_deleted"  # update of a row a tombstone says was deleted
    UNIQUE_CLASH = "unique_clash"  # the row clashes with another key on a unique column


@dataclass(frozen=True)
class Version:
    """One version of a row: who wrote it, when (at its origin), and whether it is a delete."""

    origin: str
    committed_at: datetime
    priority: int = 100
    deleted: bool = False


def _key(v: Version, policy: Policy) -> tuple[object, ...]:
    if policy == Policy.CAMPUS_PRIORITY:
        return (v.priority, v.committed_at, v.origin)
    return (v.committed_at, v.priority, v.origin)


def winner(local: Version, incoming: Version, policy: Policy | str) -> Version:
    """The version every member keeps. Ties fall to priority, then to the origin's name,
    so the answer never depends on arrival order."""
    p = Policy(policy)
    return incoming if _key(incoming, p) > _key(local, p) else local


class Op(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Action(StrEnum):
    INSERT = "insert"  # write the incoming row as new
    UPDATE = "update"  # overwrite the local row with the incoming one
    DELETE = "delete"  # remove the local row (the tombstone trigger records it)
    TOMBSTONE = "tombstone"  # nothing to remove: remember the delete and relay it
    SKIP = "skip"  # the local version stays


@dataclass(frozen=True)
class Decision:
    action: Action
    conflict: Kind | None
    reason: str


def decide(op: Op, incoming: Version, row: Version | None, tombstone: Version | None,
           policy: Policy | str, *, complete: bool = True) -> Decision:
    """What one incoming change does to one key, given the local row and tombstone.

    `row` is the local row's version, `tombstone` the latest delete recorded for the
    key. `complete` is False when an update lacks unchanged TOASTed values, so it
    cannot stand in for a missing row. Only cases where two campuses' writes meet are
    conflicts: a row last written by the same origin, older than the change, is the
    normal sequence of that origin's writes.
    """
    if row is not None:
        if row.origin == incoming.origin and row.committed_at >= incoming.committed_at:
            # No two campuses met: the row holds this very write (copied at setup and
            # streamed too) or a later one of the same origin. Whichever brought it here
            # also took it on to the next member (initial copies are forwarded like
            # any applied write, sync/seed.py), so nothing is written and nothing logged.
            return Decision(Action.SKIP, None, f"holds this or a later write from {row.origin}")
        if row.origin == incoming.origin:
            return Decision(Action.DELETE if op == Op.DELETE else Action.UPDATE, None,
                            f"a later write from {row.origin}")
        keep = winner(row, incoming, policy)
        wins = keep is incoming
        if op == Op.INSERT:
            return Decision(Action.UPDATE if wins else Action.SKIP, Kind.INSERT_EXISTS,
                            _why(wins, keep, policy))
        # Two campuses' writes met only if the incoming change loses: a newer local
        # version from elsewhere. Overwriting an older version is the normal sequence
        # (the other side, where the newer write stays, records the conflict).
        kind = None if wins else Kind.UPDATE_UPDATE
        action = Action.UPDATE if op == Op.UPDATE else Action.DELETE
        return Decision(action if wins else Action.SKIP, kind, _why(wins, keep, policy))
    # No local row.
    if tombstone is not None and winner(tombstone, incoming, policy) is tombstone:
        if op == Op.DELETE:
            return Decision(Action.SKIP, None, "already deleted by a newer or equal delete")
        return Decision(Action.SKIP, Kind.UPDATE_DELETED,
                        f"a delete from {tombstone.origin} is newer: the row stays deleted")
    if op == Op.INSERT:
        return Decision(Action.INSERT, None, "new row")
    if op == Op.UPDATE:
        if not complete:
            return Decision(Action.SKIP, Kind.UPDATE_MISSING,
                            "row missing and the update lacks unchanged TOASTed values: "
                            "left for verification repair")
        return Decision(Action.INSERT, Kind.UPDATE_MISSING,
                        "row missing: applying the incoming update as the row")
    return Decision(Action.TOMBSTONE, Kind.DELETE_MISSING,
                    "row missing: recording a tombstone so a late write cannot resurrect it")


def forwards(decision: Decision) -> bool:
    """Whether the member passes the change on to the next member of the ring.

    Every change that wins here must travel on, whatever it does to the local table:
    an insert, update or delete does so by being in this member's WAL, and a delete
    of a row that is not here (Action.TOMBSTONE) by a relayed delete
    (ringkeeper.relay). Were a winning delete of an absent row stopped here, the
    members after this one would never hear of it, and an older write they hold
    would survive there (issue 14, item 2). A change that loses (SKIP) is not passed
    on: the version that beat it was passed on when it won here.
    """
    return decision.action != Action.SKIP


def decide_clash(incoming: Version, other: Version, policy: Policy | str) -> Decision:
    """An incoming row clashes on a unique column (not its key) with another row here,
    which `other` wrote. Both cannot stay, and whatever the arrival order every member
    must keep the same one: the policy's winner of the two writes, and the loser's key
    goes. DELETE: remove the other row (in this transaction, under the incoming change's
    origin, so the removal travels on like any delete) and apply the change. SKIP: the
    other row stays, the change is not applied, and the row an update would have changed
    is removed (its older version must not stay here while the members that applied the
    update remove it when the winner reaches them)."""
    keep = winner(other, incoming, policy)
    if keep is incoming:
        return Decision(Action.DELETE, Kind.UNIQUE_CLASH,
                        f"clashes on a unique column with a row from {other.origin}: the "
                        f"incoming write wins ({Policy(policy).value}) and that row goes")
    return Decision(Action.SKIP, Kind.UNIQUE_CLASH,
                    f"clashes on a unique column with a row from {other.origin}, which wins "
                    f"({Policy(policy).value}): not applied here")


def local_write_allowed(policy: Policy | str, local_priority: int,
                        row_priority: int | None) -> bool:
    """Whether a user's write at this member may replace the version of a row it holds.

    A local write is not weighed by `decide` here: it commits, then meets the other
    members' versions there. Under campusPriority a write over a version from a campus
    of higher priority loses at every other member (priority comes before time) while
    it stays here, so the ring would diverge for good; such a write is refused instead
    (the guard trigger of sync/priorityguard.py, which implements this same rule).
    `row_priority` is the priority of the campus that wrote the version, None when the
    version was written here or its origin is unknown (frozen, pre-ring, a foreign
    origin): those lose to any newer local write everywhere, or are this member's own.
    Equal priority is allowed: the newer commit time wins everywhere. Under
    lastWriterWins every local write is the newest, so it wins everywhere."""
    if Policy(policy) != Policy.CAMPUS_PRIORITY or row_priority is None:
        return True
    return row_priority <= local_priority


def priority_rows(ring: str, local: str, policy: Policy | str,
                  priorities: Mapping[str, int]) -> list[tuple[str, str, int, bool]]:
    """What the guard's table (ringkeeper.member_priority) holds for one ring at one
    member: (campus, its replication origin, its priority, whether it is this member),
    sorted; nothing unless the ring is under campusPriority (the guard is then off)."""
    if Policy(policy) != Policy.CAMPUS_PRIORITY:
        return []
    return sorted((m, names.origin_name(ring, m), p, m == local)
                  for m, p in priorities.items())


def _why(wins: bool, keep: Version, policy: Policy | str) -> str:
    return (f"{'incoming' if wins else 'local'} version from {keep.origin} wins "
            f"({Policy(policy).value})")
