"""One link: read a source member's slot, apply here, then let the slot move on.

The slot is read with pg_logical_slot_peek_binary_changes through a cursor, so a
large transaction streams through in bounded pieces instead of landing in memory,
and nothing is consumed until this member has durably applied it: the slot moves
(pg_replication_slot_advance) only to the end of transactions whose origin
progress here has been flushed. A crash anywhere re-reads from the slot, and the
per-origin progress skips what is already in; nothing is applied twice, nothing
is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from ..engines import EngineProfile
from . import catalog, names
from .apply import Applier
from .pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Origin,
    Relation,
    Update,
    lsn_to_str,
    parse,
)

log = logging.getLogger(__name__)

PEEK_CHANGES = 20000  # changes per peek; whole transactions, so a peek may return more
FETCH_ROWS = 2000  # rows pulled from the cursor at a time: the memory bound


@dataclass
class LinkStatus:
    source: str
    target: str
    slot: str
    state: str = "Pending"
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    rows_per_second: float = 0.0
    last_applied_at: datetime | None = None
    conflicts: int = 0
    message: str | None = None
    applied_txns: int = 0
    skipped_txns: int = 0
    bypassing: tuple[str, ...] = ()
    _rate: list[tuple[float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "from": self.source, "to": self.target, "slot": self.slot, "state": self.state,
            "lagBytes": self.lag_bytes, "lagSeconds": self.lag_seconds,
            "rowsPerSecond": round(self.rows_per_second, 1),
            "lastAppliedAt": self.last_applied_at.isoformat() if self.last_applied_at else None,
            "conflicts": self.conflicts, "message": self.message,
            "appliedTxns": self.applied_txns, "skippedTxns": self.skipped_txns,
            "bypassing": list(self.bypassing),
        }

    def note_rows(self, total_rows: int) -> None:
        now = time.monotonic()
        self._rate.append((now, total_rows))
        self._rate = [(t, n) for t, n in self._rate if now - t <= 10]
        t0, n0 = self._rate[0]
        self.rows_per_second = (total_rows - n0) / (now - t0) if now > t0 else 0.0


class SlotLost(RuntimeError):
    """The source's slot is gone or invalidated: this member needs a re-seed."""


async def connect(dsn: str, *, timeout: float = 5.0) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=timeout, command_timeout=300,
        server_settings={"application_name": "ringkeeper-sync"})
    return conn


class Link:
    """Pulls `source`'s changes into the local member through one slot on the source."""

    def __init__(self, *, ring: str, source: str, local: str, source_dsn: str,
                 slot: str, applier: Applier, profile: EngineProfile,
                 source_profile: EngineProfile, carries: frozenset[str] | None,
                 status: LinkStatus, poll_seconds: float = 0.05) -> None:
        self.ring = ring
        self.source = source
        self.local = local
        self.source_dsn = source_dsn
        self.slot = slot
        self.applier = applier
        self.profile = profile
        self.source_profile = source_profile
        self.carries = carries  # origins this link may bring (None: all but ours)
        self.status = status
        self.poll = poll_seconds
        self._src: asyncpg.Connection | None = None

    async def open(self) -> None:
        self._src = await connect(self.source_dsn)
        await catalog.apply_canonical_settings(self._src)
        # A ring's first link, or a member that joined: the slot starts here. (A slot
        # that existed and vanished is a failover gap; the source's sidecar reports it.)
        await catalog.ensure_slot(self._src, self.source_profile, self.slot)
        row = await self._src.fetchrow(
            f"SELECT wal_status FROM {self.source_profile.sql.replication_slots} "
            "WHERE slot_name = $1", self.slot)
        if row is not None and row["wal_status"] == "lost":
            raise SlotLost(f"slot {self.slot} on {self.source} lost WAL this member still "
                           "needed (max_slot_wal_keep_size): the member needs a re-seed")

    async def close(self) -> None:
        if self._src is not None:
            await self._src.close()
            self._src = None

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until stopped; errors propagate (the sidecar reconnects with backoff)."""
        if self._src is None:
            await self.open()
        self.status.state = "Streaming"
        self.status.message = None
        try:
            while not stop.is_set():
                got = await self.step()
                if not got:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll)
        finally:
            await self.close()

    async def step(self) -> int:
        """One peek: apply what is new, then advance the slot. Returns transactions read."""
        assert self._src is not None
        s = self.source_profile.sql
        pub = names.publication_name(self.ring)
        end: int | None = None
        txns = 0
        applying = False
        begin: Begin | None = None
        origin: Origin | None = None
        applier = self.applier
        try:
            async with self._src.transaction():
                cur = self._src.cursor(
                    f"SELECT data FROM {s.logical_slot_peek_binary_changes}($1, NULL, $2, "
                    "'proto_version', '1', 'publication_names', $3)",
                    self.slot, PEEK_CHANGES, pub, prefetch=FETCH_ROWS)
                async for rec in cur:
                    msg = parse(rec["data"])
                    if isinstance(msg, (Insert, Update, Delete)):
                        if begin is not None:
                            applying = await self._start(begin, origin)
                            begin = None
                        if applying:
                            await applier.change(msg.relid, msg)
                    elif isinstance(msg, Begin):
                        begin, origin, applying = msg, None, False
                    elif isinstance(msg, Origin):
                        origin = msg
                    elif isinstance(msg, Relation):
                        await applier.relation(msg)
                    elif isinstance(msg, Commit):
                        if applying:
                            await applier.commit()
                            self.status.applied_txns += 1
                        else:
                            self.status.skipped_txns += 1
                        begin, applying = None, False
                        end = msg.end_lsn
                        txns += 1
        except BaseException:
            await applier.abort()
            raise
        if end is not None:
            # Flush this member's progress before the source may forget the changes.
            await catalog.origin_progress(applier.conn, self.profile, self.ring)
            await self._src.execute(f"SELECT {s.replication_slot_advance}($1, $2::text::pg_lsn)",
                                    self.slot, lsn_to_str(end))
        await self._measure(txns)
        return txns

    async def _start(self, begin: Begin, origin: Origin | None) -> bool:
        if origin is not None:
            member = names.member_of_origin(self.ring, origin.name)
            if member == names.SEED:
                return False  # a stock-sync copy: local to the member that was seeded
            true_origin = member or self.source
            origin_lsn = origin.origin_lsn if member else begin.final_lsn
        else:
            true_origin, origin_lsn = self.source, begin.final_lsn
        if self.carries is not None and true_origin not in self.carries:
            return False
        if not self.applier.wanted(true_origin, origin_lsn):
            return False
        await self.applier.begin(true_origin, origin_lsn, begin.commit_ts)
        return True

    async def _measure(self, txns: int) -> None:
        assert self._src is not None
        s = self.source_profile.sql
        row = await self._src.fetchrow(
            f"SELECT {s.wal_lsn_diff}({s.current_wal_lsn}(), confirmed_flush_lsn)::bigint AS lag "
            f"FROM {s.replication_slots} WHERE slot_name = $1", self.slot)
        st = self.status
        st.lag_bytes = int(row["lag"]) if row is not None and row["lag"] is not None else None
        stats = self.applier.stats
        st.conflicts = sum(stats.conflicts.values())
        st.last_applied_at = stats.last_applied_at
        st.note_rows(stats.rows)
        if txns == 0:
            st.lag_seconds = 0.0
        elif stats.last_commit_ts is not None:
            st.lag_seconds = max(0.0, (datetime.now(UTC) - stats.last_commit_ts).total_seconds())
