"""How far a member's slots may move on without losing a change another member needs.

A slot on member S is a promise to keep S's WAL until the changes in it are safe.
"Safe" differs by slot: the slot S's downstream reads from may move as soon as that
downstream has durably applied (or knowingly skipped) a transaction; the hold slot,
which lets the ring heal around a dead member, may only move past a transaction
once every member that should receive it has it. Both answers come from the same
ledger: each member's flushed per-origin progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TxnMark:
    """A transaction as read from S's slot: where it ends in S's WAL, and its true origin."""

    end_lsn: int
    origin: str
    origin_lsn: int


def holds(mark: TxnMark, member: str, progress: Mapping[str, Mapping[str, int]]) -> bool:
    """Whether `member` has durably applied this transaction (its origin always has)."""
    if member == mark.origin:
        return True
    return progress.get(member, {}).get(mark.origin, 0) >= mark.origin_lsn


def safe_advance(marks: Iterable[TxnMark], holders: Iterable[str],
                 progress: Mapping[str, Mapping[str, int]],
                 forwarded: frozenset[str] | None = None) -> int | None:
    """End LSN of the longest prefix of `marks` every holder has, or None if none.

    Transactions whose origin is not `forwarded` (a seed copy, a foreign origin) are
    not owed to anyone and never hold a slot back.
    """
    members = list(holders)
    out: int | None = None
    for mark in marks:
        owed = forwarded is None or mark.origin in forwarded
        if owed and not all(holds(mark, m, progress) for m in members):
            break
        out = mark.end_lsn
    return out
