"""A link's applying and its bookkeeping: how far this member has applied.

The link's run loop hands queued events here and asks how far the source may be told
this member is. Both turn on the same few facts (the end of the last transaction
applied or skipped, whether a large transaction is half applied, whether origin
progress must be flushed before the next report), so they live together, apart from
the stream's I/O and liveness.
"""

from __future__ import annotations

from ..core.ringmember import confirmable
from ..engines import EngineProfile
from .apply import Applier, Txn
from .assembly import Event, Part, Skip
from .origins import origin_progress
from .pgoutput import Relation


class ApplyCursor:
    """Applies a link's events through its Applier and remembers how far it got."""

    def __init__(self, applier: Applier, profile: EngineProfile, ring: str) -> None:
        self.applier = applier
        self.profile = profile
        self.ring = ring
        self.end = 0  # end LSN of the last transaction applied or skipped here
        self.part_applying = False
        self.skipped = 0  # transactions not taken (besides the applier's own count)
        self.applied = False  # applied something since progress was last flushed

    def confirmable(self, seen_end: int, drained: bool) -> int:
        """How far the source may be told this member is (core.ringmember.confirmable)."""
        return confirmable(applied_end=self.end, seen_end=seen_end, drained=drained,
                           part_open=self.part_applying)

    async def flush_progress(self) -> None:
        """This member's progress for what it applied, on disk (skipped transactions
        need no flush): only then may the source forget it."""
        if self.applied:
            await self.applier.settle()
            await origin_progress(self.applier.conn, self.profile, self.ring)
            self.applied = False

    async def retry_parked(self) -> dict[str, str]:
        """Apply what waits for tables that match again (sync/parking.py), never inside
        a transaction applied in parts; the tables still parked, with why."""
        applier = self.applier
        if self.part_applying:
            return applier.parked_tables()
        if applier.parked_waiting:
            self.applied = True  # a replay moves progress: flushed with the rest
        still = await applier.retry_parked()
        return {**applier.parked_tables(), **still}

    async def apply(self, events: list[Event]) -> None:
        applier = self.applier
        run: list[Txn] = []
        for ev in events:
            if isinstance(ev, Txn):
                run.append(ev)
                continue
            if run:
                await self._apply_run(run)
                run = []
            if isinstance(ev, Relation):
                await applier.relation(ev)
            elif isinstance(ev, Skip):
                self.skipped += 1
                self.end = max(self.end, ev.end_lsn)
            else:
                await self._apply_part(ev)
        if run:
            await self._apply_run(run)

    async def _apply_run(self, run: list[Txn]) -> None:
        self.applied = True
        await self.applier.apply_txns(run)
        self.end = max(self.end, run[-1].end_lsn)

    async def _apply_part(self, part: Part) -> None:
        applier = self.applier
        self.applied = True
        if part.first:
            self.part_applying = applier.wanted(part.origin, part.origin_lsn)
            if self.part_applying:
                await applier.begin(part.origin, part.origin_lsn, part.commit_ts)
        if self.part_applying:
            for m in part.changes:
                await applier.change(m.relid, m)
        if part.end_lsn is not None:
            if self.part_applying:
                await applier.commit()
            else:
                self.skipped += 1
            self.part_applying = False
            self.end = max(self.end, part.end_lsn)
