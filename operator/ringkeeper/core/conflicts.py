"""Deterministic conflict resolution, so every member picks the same winner.

Two writes to one row at two campuses meet at each member in a different order.
Whatever the order, each member must keep the same version, or the ring
diverges. The decision therefore uses only values that travel with the change:
the original commit time, the origin campus's priority, and its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ..api.v1alpha1.ring import ConflictPolicy

# The spec's enum is the one vocabulary for policies (conflicts.policy in a ring).
Policy = ConflictPolicy


class Kind(StrEnum):
    INSERT_EXISTS = "insert_exists"  # insert of a key that is already there
    UPDATE_MISSING = "update_missing"  # update of a row that is not there
    DELETE_MISSING = "delete_missing"  # delete of a row that is not there
    UPDATE_UPDATE = "update_update"  # concurrent updates of one row
    UPDATE_DELETED = "update_deleted"  # update of a row a tombstone says was deleted


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


@dataclass(frozen=True)
class Resolution:
    kind: Kind
    apply_incoming: bool
    keep: Version
    reason: str


def resolve(kind: Kind, local: Version | None, incoming: Version,
            policy: Policy | str) -> Resolution:
    """Decide one conflict. `local` is the row's current version or its tombstone."""
    if local is None:
        # update/delete of a row never seen here: an update becomes the row (the insert is
        # still on its way or was lost); a delete has nothing to do but leaves a tombstone.
        apply = kind == Kind.UPDATE_MISSING
        return Resolution(kind, apply, incoming,
                          "no local version: applying the incoming update as the row"
                          if apply else "nothing to delete: recording a tombstone")
    keep = winner(local, incoming, policy)
    apply = keep is incoming
    why = (f"{'incoming' if apply else 'local'} version from {keep.origin} wins "
           f"({Policy(policy).value})")
    if local.deleted and not incoming.deleted and not apply:
        why += "; the tombstone keeps the row deleted"
    return Resolution(kind, apply, keep, why)
