"""The records the applier's parts hand each other (sync/apply.py assembles them).

Kept in their own module because every part uses them, the link and the assembler build
`Txn`, and they hold no connection: a routed upstream transaction, one row change as
text, the applier's counters, and the error whose message names what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..core.conflicts import Op
from .pgoutput import Delete, Insert, Update

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ApplyError(RuntimeError):
    """A change cannot be applied as the target is; the message names what to fix."""


@dataclass
class Change:
    op: Op
    key: tuple[str, ...]
    values: dict[str, str | None]  # column -> text; unchanged TOAST columns left out
    complete: bool  # no unchanged TOAST values
    old_key: tuple[str, ...] | None = None  # an update that changed the key
    key_json: str = ""

    def __post_init__(self) -> None:
        if not self.key_json:
            self.key_json = json.dumps(list(self.key), ensure_ascii=False,
                                       separators=(",", ":"))


@dataclass
class Txn:
    """One whole upstream transaction, routed: what the bulk path applies."""

    origin: str
    origin_lsn: int
    commit_ts: datetime
    end_lsn: int
    changes: list[Insert | Update | Delete]


@dataclass
class Stats:
    txns: int = 0
    rows: int = 0
    skipped_txns: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    last_commit_ts: datetime | None = None
    last_applied_at: datetime | None = None

