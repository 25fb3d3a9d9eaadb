"""Transaction assembly: pgoutput messages in, whole transactions (or bounded parts of
a large one) out, in stream order. Pure: no I/O, fed one message at a time.

A link's reader feeds every message of a batch read from the source and puts the
bundles this returns on its queue. Row messages of a transaction that is not this
link's to bring (core.ringmember.route) are not even parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..core.ringmember import route
from .apply import Txn
from .pgoutput import Begin, Commit, Delete, Insert, Origin, Relation, Update, parse

PART_ROWS = 2000  # a transaction larger than this is applied in parts of this size
BUNDLE_ROWS = 2000  # rows per queue item
_ROW_MESSAGES = frozenset(b"IUD")


@dataclass(frozen=True)
class Skip:
    """A transaction this member does not take (its own, a seed copy, not carried)."""

    end_lsn: int


@dataclass
class Part:
    """A piece of a transaction too large to hold whole."""

    origin: str
    origin_lsn: int
    commit_ts: datetime
    changes: list[Insert | Update | Delete]
    first: bool
    end_lsn: int | None = None  # set on the last part


Event = Relation | Txn | Skip | Part


class Assembler:
    """The reader's state between messages: the open transaction, its routing (decided
    at its first row, once its Origin message, if any, has come), its rows so far, and
    the bundle being filled.

    feed() returns a bundle when it holds BUNDLE_ROWS rows or more; take() returns
    what is left at the end of a batch. Relation messages travel in order with the
    transactions; keepalives never reach here; Truncate, Type and logical messages
    are dropped (as before: the ring does not replicate them)."""

    def __init__(self, ring: str, source: str, local: str | None,
                 carries: frozenset[str] | None, *, part_rows: int = PART_ROWS,
                 bundle_rows: int = BUNDLE_ROWS) -> None:
        self.ring, self.source, self.local, self.carries = ring, source, local, carries
        self.part_rows, self.bundle_rows = part_rows, bundle_rows
        self._bundle: list[Event] = []
        self._rows = 0
        self._begin: Begin | None = None
        self._origin: Origin | None = None
        self._routed: tuple[str, int] | None = None
        self._decided = False
        self._changes: list[Insert | Update | Delete] = []
        self._parts = 0

    @property
    def in_transaction(self) -> bool:
        """Whether a Begin has come without its Commit (a keepalive read now does not
        say that everything before it is queued)."""
        return self._begin is not None

    def take(self) -> list[Event]:
        """The events assembled so far and not yet returned."""
        out, self._bundle, self._rows = self._bundle, [], 0
        return out

    def feed(self, data: bytes) -> list[Event] | None:
        """One pgoutput message; a full bundle when one is ready."""
        if data[0] in _ROW_MESSAGES:
            begin = self._begin
            if not self._decided and begin is not None:
                o = self._origin
                self._routed = route(self.ring, self.source, begin.final_lsn,
                                     None if o is None else (o.name, o.origin_lsn),
                                     self.carries, self.local)
                self._decided = True
            routed = self._routed
            if routed is None:
                return None  # not ours to bring (or outside a transaction): not parsed
            msg = parse(data)
            assert isinstance(msg, (Insert, Update, Delete))
            self._changes.append(msg)
            if len(self._changes) >= self.part_rows:
                assert begin is not None
                self._bundle.append(Part(routed[0], routed[1], begin.commit_ts,
                                         self._changes, first=self._parts == 0))
                self._parts += 1
                self._rows += len(self._changes)
                self._changes = []
            return None  # as before: a bundle is only cut after a non-row message
        msg = parse(data)
        if isinstance(msg, Begin):
            self._begin, self._origin, self._routed = msg, None, None
            self._changes, self._parts, self._decided = [], 0, False
        elif isinstance(msg, Origin):
            self._origin = msg
        elif isinstance(msg, Relation):
            self._bundle.append(msg)
        elif isinstance(msg, Commit):
            self._commit(msg)
        if self._rows >= self.bundle_rows:
            return self.take()
        return None

    def _commit(self, msg: Commit) -> None:
        begin, routed, changes = self._begin, self._routed, self._changes
        if begin is None:
            return
        if self._parts:
            assert routed is not None
            self._bundle.append(Part(routed[0], routed[1], begin.commit_ts, changes,
                                     first=False, end_lsn=msg.end_lsn))
        elif changes and routed is not None:
            self._bundle.append(Txn(routed[0], routed[1], begin.commit_ts, msg.end_lsn,
                                    changes))
        else:
            self._bundle.append(Skip(msg.end_lsn))
        self._rows += len(changes)
        self._begin, self._changes, self._parts = None, [], 0
