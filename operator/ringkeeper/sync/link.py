"""One link: stream a source member's slot, apply here, then let the slot move on.

The slot is read over a replication connection (walstream): the source decodes each
change once, while this member applies what came before, so capture and apply
overlap. A reader task assembles whole transactions (a large one travels in bounded
parts) into a bounded queue; the apply loop hands runs of whole transactions to the
applier's bulk path. Nothing is consumed until this member has durably applied it:
the flush position reported to the source only moves to the end of transactions
whose origin progress here has been flushed. A crash anywhere re-reads from the slot,
and the per-origin progress skips what is already in; nothing is applied twice,
nothing is skipped.

This module is the stream's run loop and liveness; opening the link (its slot and
start options) is linkopen.py, the applying and how far it got is linkapply.py, and
what the link reports is linkreport.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import asyncpg

from ..core.liveness import (
    MIN_LIVENESS_SECONDS,
    LinkObservation,
    WalsenderProbe,
    judge_link,
    liveness_seconds,
    ping_seconds,
    statement_seconds,
    walsender_busy,
)
from ..engines import EngineProfile
from . import catalog
from .apply import Applier
from .assembly import Assembler, Event
from .connections import close_quietly, connect
from .linkapply import ApplyCursor
from .linkopen import claim_slot, only_source_changes, start_options
from .linkreport import LinkReport
from .walstream import WalStream

QUEUE_BUNDLES = 8  # queue items between reader and applier: with the above, the memory bound
FLUSH_EVERY = 0.2  # seconds between progress flushes (and feedback) while busy
# A queue item of fewer events than this, alone in the queue and taken within LINGER
# seconds of the last apply, waits LINGER for more: at hundreds of small transactions a
# second, applying each alone costs the sidecar and the target more than the rows. A
# trickle (nothing applied in the last LINGER) and a backlog (more queued) never wait.
LINGER = 0.005
PARK_RETRY_EVERY = 5.0  # seconds between tries to apply a parked table's changes
LINGER_EVENTS = 64


class SourceSilent(TimeoutError):
    """The replication stream said nothing (no change, no keepalive answering our
    pings) for the liveness window: the source is hung or cut off."""

    def __init__(self, message: str, silence: float) -> None:
        super().__init__(message)
        self.silence = silence
        self.since = time.monotonic() - silence  # when the source fell silent


class LinkStream:
    """Pulls `source`'s changes into the local member through one slot on the source:
    the running stream of one edge (core.ring.Link is the planned edge itself)."""

    def __init__(self, *, ring: str, source: str, local: str, source_dsn: str,
                 slot: str, applier: Applier, profile: EngineProfile,
                 source_profile: EngineProfile, carries: frozenset[str] | None,
                 status: LinkReport, bypass_after_seconds: float = 60.0) -> None:
        self.ring = ring
        self.source = source
        self.local = local
        self.source_dsn = source_dsn
        self.slot = slot
        self.applier = applier
        self.profile = profile
        self.source_profile = source_profile
        self.carries = carries  # origins this link may bring (None: all but ours)
        # A link that brings more than its source's own changes feeds a member that
        # forwards them (a ring of three or more): the applier flushes as it goes.
        applier.flush_scripts = not only_source_changes(source, carries)
        self.status = status
        self.liveness = liveness_seconds(bypass_after_seconds)
        self.ping_every = ping_seconds(bypass_after_seconds)
        self.statement = statement_seconds(bypass_after_seconds)
        self._commit_lag: float | None = None
        self._silent: SourceSilent | None = None  # set by the watchdog that ends the link
        self._src: asyncpg.Connection | None = None
        # The watchdog's own session at the source (the loop's _src may be mid-query):
        # it asks the server about the walsender when the stream falls silent.
        self._probe: asyncpg.Connection | None = None
        self._ws: WalStream | None = None
        self.cursor = ApplyCursor(applier, profile, ring)
        self._seen_end = 0  # source WAL end from a keepalive, all before it queued

    async def open(self) -> None:
        self._src = await connect(self.source_dsn, command_timeout=self.statement)
        await catalog.apply_canonical_settings(self._src)
        await claim_slot(self._src, self.source_profile, self.slot, self.ring, self.source)
        self._probe = await connect(self.source_dsn, command_timeout=self.statement)
        self._ws = await WalStream.open(self.source_dsn, timeout=self.statement)
        options = start_options(self.ring, self.source, self.carries, self.source_profile)
        await asyncio.wait_for(self._ws.start_logical(self.slot, 0, options), self.statement)

    async def close(self) -> None:
        if self._ws is not None:
            if self._silent is not None:
                self._ws.abort()  # a hung source would not answer a goodbye
            else:
                await self._ws.close()
            self._ws = None
        for conn in (self._src, self._probe):
            if conn is None:
                continue
            if self._silent is not None:
                conn.terminate()
            else:
                await close_quietly(conn)
        self._src = self._probe = None

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until stopped; errors propagate (the sidecar reconnects with backoff)."""
        if self._src is None:
            await self.open()
        assert self._ws is not None
        ws = self._ws
        st = self.status
        st.running, st.fault, st.message = True, None, None
        st.heard_at = ws.heard_at
        self._judge(ws, time.monotonic(), idle=True)
        queue: asyncio.Queue[list[Event]] = asyncio.Queue(maxsize=QUEUE_BUNDLES)
        reader = asyncio.create_task(self._read(ws, queue))
        stopper = asyncio.create_task(stop.wait())
        this = asyncio.current_task()
        assert this is not None
        self._silent = None
        watch = asyncio.create_task(self._watch(ws, queue, this))
        getter: asyncio.Task[list[Event]] | None = None
        last_flush = last_measure = last_park = time.monotonic()
        last_apply = 0.0
        try:
            while not stop.is_set():
                if getter is None:
                    getter = asyncio.create_task(queue.get())
                await asyncio.wait({getter, reader, stopper}, timeout=FLUSH_EVERY,
                                   return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    reader.result()  # raises what ended the stream
                    raise ConnectionResetError("replication stream ended")
                applied = getter.done()
                if applied:
                    events = getter.result()
                    getter = None
                    if (len(events) < LINGER_EVENTS and queue.empty()
                            and time.monotonic() - last_apply < LINGER):
                        # A trickle of small transactions: let a few more arrive, so
                        # they share one round trip instead of paying one each.
                        await asyncio.sleep(LINGER)
                        while not queue.empty():
                            events += queue.get_nowait()
                    await self.cursor.apply(events)
                    last_apply = time.monotonic()
                now = time.monotonic()
                idle = queue.empty()
                # Taken before any await below: everything the reader had seen up to it
                # is applied (or in the applier's last script, settled before feedback).
                end = self._confirmable(idle)
                # At most every FLUSH_EVERY, however often transactions trickle in: each
                # report flushes WAL here and wakes the source's walsender, and a link
                # that reported every small batch cost the source a share of its CPU.
                reported = end > ws.flushed and now - last_flush >= FLUSH_EVERY
                if reported:
                    await self._report(ws, end)
                    last_flush = now
                if now - last_park >= PARK_RETRY_EVERY:
                    # DDL drift stops one table (sync/parking.py): once it matches, what
                    # waits for it is applied, between transactions.
                    st.parked = await self.cursor.retry_parked()
                    last_park = now
                if applied or reported or now - last_measure >= 1.0:
                    # The source is asked for the slot's lag once a second at most.
                    await self._measure(idle, ask_source=now - last_measure >= 1.0)
                    if now - last_measure >= 1.0:
                        last_measure = now
                self._judge(ws, time.monotonic(), idle=idle)
            # Stopping: what is applied is flushed and reported, so the next start does
            # not read it again.
            end = self._confirmable(queue.empty() and (getter is None or not getter.done()))
            if end > ws.flushed:
                await self._report(ws, end)
                await asyncio.wait_for(ws.drain(), self.statement)
        except BaseException as exc:
            try:
                await asyncio.wait_for(self.applier.abort(), self.statement)
            except BaseException:
                # The target hangs: its connection is given up (the sidecar reconnects).
                self.applier.conn.terminate()
            if isinstance(exc, asyncio.CancelledError) and self._silent is not None:
                this.uncancel()  # the watchdog's cancel, not the sidecar's
                raise self._silent from None
            raise
        finally:
            for t in (reader, stopper, getter, watch):
                if t is not None:
                    t.cancel()
            await asyncio.gather(reader, stopper, watch, *([getter] if getter else []),
                                 return_exceptions=True)
            await self.close()

    async def _watch(self, ws: WalStream, queue: asyncio.Queue[list[Event]],
                     loop_task: asyncio.Task[object]) -> None:
        """Ping the source and judge the link's liveness beside the apply loop, which
        may wait on a statement (at either end): a source silent for the liveness
        window ends the link (SourceSilent) whatever the loop is waiting on."""
        seen: tuple[int, float] | None = None  # walsender read position, when it moved
        while True:
            await asyncio.sleep(self.ping_every)
            ws.feedback(reply=True)  # a ping: the walsender answers with a keepalive
            if not self._judge(ws, time.monotonic(), idle=queue.empty()):
                continue
            silence = ws.silence(time.monotonic())
            probe, seen = await self._probe_walsender(seen)
            if walsender_busy(probe, self.liveness):
                ws.excuse(time.monotonic())
                self._judge(ws, time.monotonic(), idle=queue.empty())
                continue
            self._silent = SourceSilent(
                f"no change or keepalive from {self.source} for {silence:.1f}s "
                f"(liveness {self.liveness:g}s): it is hung or cut off", silence)
            loop_task.cancel()
            return

    async def _probe_walsender(self, seen: tuple[int, float] | None
                               ) -> tuple[WalsenderProbe, tuple[int, float] | None]:
        """Ask the source, over the watchdog's session and within half the liveness
        window, whether this link's slot is held by a walsender and how far it has read
        (sent_lsn moves as it decodes, before it sends anything)."""
        s = self.source_profile.sql
        now = time.monotonic()
        if self._probe is None:
            return WalsenderProbe(False, False, False, 0.0), seen
        try:
            row = await self._probe.fetchrow(
                f"SELECT sl.active_pid IS NOT NULL AS active, "
                f"{s.wal_lsn_diff}(r.sent_lsn, '0/0')::bigint AS sent "
                f"FROM {s.replication_slots} sl LEFT JOIN {s.stat_replication} r "
                "ON r.pid = sl.active_pid WHERE sl.slot_name = $1", self.slot,
                timeout=max(MIN_LIVENESS_SECONDS, self.liveness / 2))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return WalsenderProbe(False, False, False, 0.0), seen
        sent = int(row["sent"]) if row is not None and row["sent"] is not None else None
        if row is None or not row["active"] or sent is None:
            return WalsenderProbe(True, False, False, 0.0), seen
        if seen is None or sent > seen[0]:
            return WalsenderProbe(True, True, seen is not None, 0.0), (sent, now)
        return WalsenderProbe(True, True, False, now - seen[1]), seen

    def _judge(self, ws: WalStream, now: float, *, idle: bool) -> bool:
        """State and lag of the running link (core.liveness.judge_link); True when its
        source has been silent for the whole liveness window."""
        st = self.status
        if not st.running:
            return False  # stopped from outside (the target's watchdog): that verdict holds
        st.heard_at = ws.heard_at
        v = judge_link(LinkObservation(
            running=True, silence=ws.silence(now), idle=idle, commit_lag=self._commit_lag,
            catching_up=bool(st.bypassing) or st.copies_pending, fault=None,
            since_alive=now - ws.heard_at, busy=ws.busy_since is not None), self.liveness)
        st.state = v.state
        st.lag_seconds = None if v.lag_seconds is None else round(v.lag_seconds, 3)
        return v.restart

    async def _report(self, ws: WalStream, end: int) -> None:
        """Tell the source it may forget everything before `end`, after this member's
        progress for what it applied is on disk (skipped transactions need no flush)."""
        await self.cursor.flush_progress()
        ws.feedback(end)

    def _confirmable(self, drained: bool) -> int:
        """How far the source may be told this member is (ApplyCursor.confirmable)."""
        return self.cursor.confirmable(self._seen_end, drained)

    async def _read(self, ws: WalStream, queue: asyncio.Queue[list[Event]]) -> None:
        """Assemble the stream into events (sync.assembly), in order, bounded by the
        queue; note how far the source's WAL is known to hold nothing more for us."""
        asm = Assembler(self.ring, self.source, self.local, self.carries)
        while True:
            batch = await ws.read()
            seen = ws.server_wal_end  # keepalives in this batch came after its data
            for data in batch:
                full = asm.feed(data)
                if full is not None:
                    await queue.put(full)
            rest = asm.take()
            if rest:
                await queue.put(rest)
            if not asm.in_transaction:
                # Every transaction the stream held before this keepalive position is
                # in the queue by now.
                self._seen_end = max(self._seen_end, seen)

    async def _measure(self, idle: bool, *, ask_source: bool = True) -> None:
        st = self.status
        if ask_source:
            assert self._src is not None
            s = self.source_profile.sql
            # Within the liveness window: a source that does not answer is as hung as a
            # silent stream (and the loop must come back to judge the link).
            wait = min(self.statement, self.liveness)
            try:
                row = await self._src.fetchrow(
                    f"SELECT {s.wal_lsn_diff}({s.current_wal_lsn}(), "
                    f"confirmed_flush_lsn)::bigint AS lag FROM {s.replication_slots} "
                    "WHERE slot_name = $1", self.slot, timeout=wait)
            except TimeoutError:
                self._silent = SourceSilent(
                    f"{self.source} did not answer the lag query within {wait:g}s "
                    "(liveness): it is hung or cut off", wait)
                raise self._silent from None
            st.lag_bytes = int(row["lag"]) if row is not None and row["lag"] is not None else None
            st.note_rows(self.applier.stats.rows)
        stats = self.applier.stats
        st.conflicts = sum(stats.conflicts.values())
        st.last_applied_at = stats.last_applied_at
        st.applied_txns = stats.txns
        st.bulk_scripts, st.bulk_misses = self.applier.bulk_scripts, self.applier.bulk_misses
        st.skipped_txns = stats.skipped_txns + self.cursor.skipped
        if idle:
            self._commit_lag = 0.0
        elif stats.last_commit_ts is not None:
            self._commit_lag = max(0.0, (datetime.now(UTC) - stats.last_commit_ts)
                                   .total_seconds())
