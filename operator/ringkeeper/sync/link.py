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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from ..api.v1alpha1.ring import LinkState
from ..core import names, ringmember
from ..core.liveness import (
    LinkFault,
    LinkObservation,
    judge_link,
    liveness_seconds,
    ping_seconds,
    statement_seconds,
)
from ..core.ringmember import confirmable
from ..engines import EngineProfile
from . import catalog
from .apply import Applier, Txn
from .assembly import Assembler, Event, Part, Skip
from .origins import origin_progress
from .pgoutput import Begin, Origin, Relation
from .slots import ensure_slot
from .walstream import WalStream, ensure_scram

log = logging.getLogger(__name__)

QUEUE_BUNDLES = 8  # queue items between reader and applier: with the above, the memory bound
FLUSH_EVERY = 0.2  # seconds between progress flushes (and feedback) while busy
# A queue item of fewer events than this, alone in the queue and taken within LINGER
# seconds of the last apply, waits LINGER for more: at hundreds of small transactions a
# second, applying each alone costs the sidecar and the target more than the rows. A
# trickle (nothing applied in the last LINGER) and a backlog (more queued) never wait.
LINGER = 0.005
LINGER_EVENTS = 64


@dataclass
class LinkReport:
    """What this sidecar knows and reports of one inbound link, updated as it runs:
    state, lag, counters. `as_dict` is one entry of the member's report; the operator
    turns the reports into the ring's status (api.v1alpha1.ring.LinkStatus, a different
    thing: the CRD's model, written by the operator)."""

    source: str
    target: str
    slot: str
    state: LinkState = LinkState.PENDING
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    rows_per_second: float = 0.0
    last_applied_at: datetime | None = None
    conflicts: int = 0
    message: str | None = None
    applied_txns: int = 0
    skipped_txns: int = 0
    bypassing: tuple[str, ...] = ()
    bulk_scripts: int = 0  # scripts of many transactions applied in one round trip
    bulk_misses: int = 0  # scripts that met a conflict and went row by row
    # Liveness (core.liveness): whether the stream runs, why the last attempt ended,
    # when (monotonic) the link last heard from its source, and whether this member
    # still copies other members' rows (links then report CatchingUp).
    running: bool = False
    fault: LinkFault | None = None
    heard_at: float | None = None
    copies_pending: bool = False
    _rate: list[tuple[float, int]] = field(default_factory=list)

    def stopped(self, fault: LinkFault | None, message: str | None) -> None:
        """The link does not run (any more): its state and lag follow from `fault`."""
        self.running, self.fault, self.message = False, fault, message
        self._judge_stopped()

    def _judge_stopped(self) -> None:
        now = time.monotonic()
        v = judge_link(LinkObservation(
            running=False, silence=0.0, idle=True, commit_lag=None, catching_up=False,
            fault=self.fault,
            since_alive=None if self.heard_at is None else now - self.heard_at), 1.0)
        self.state = v.state
        if v.lag_seconds is not None:
            self.lag_seconds = round(max(self.lag_seconds or 0.0, v.lag_seconds), 3)

    def as_dict(self) -> dict[str, object]:
        if not self.running and self.fault is not None:
            self._judge_stopped()  # the lag of a stopped link grows with the outage
        return {
            "from": self.source, "to": self.target, "slot": self.slot,
            "state": str(self.state),
            "lagBytes": self.lag_bytes, "lagSeconds": self.lag_seconds,
            "rowsPerSecond": round(self.rows_per_second, 1),
            "lastAppliedAt": self.last_applied_at.isoformat() if self.last_applied_at else None,
            "conflicts": self.conflicts, "message": self.message,
            "appliedTxns": self.applied_txns, "skippedTxns": self.skipped_txns,
            "bypassing": list(self.bypassing),
            "bulkScripts": self.bulk_scripts, "bulkMisses": self.bulk_misses,
        }

    def note_rows(self, total_rows: int) -> None:
        now = time.monotonic()
        self._rate.append((now, total_rows))
        self._rate = [(t, n) for t, n in self._rate if now - t <= 10]
        t0, n0 = self._rate[0]
        self.rows_per_second = (total_rows - n0) / (now - t0) if now > t0 else 0.0


class SlotLost(RuntimeError):
    """The source's slot is gone or invalidated: this member needs a re-seed."""


class SourceSilent(TimeoutError):
    """The replication stream said nothing (no change, no keepalive answering our
    pings) for the liveness window: the source is hung or cut off."""

    def __init__(self, message: str, silence: float) -> None:
        super().__init__(message)
        self.silence = silence
        self.since = time.monotonic() - silence  # when the source fell silent


async def connect(dsn: str, *, command_timeout: float,
                  timeout: float = 5.0) -> asyncpg.Connection:
    """A connection whose statements time out after `command_timeout` seconds: each
    caller says how long its statements may take (core.liveness), so a frozen server
    costs a bounded wait, never the 300 s that once hid a hung member."""
    await ensure_scram(dsn, timeout=timeout)  # external members: SCRAM or nothing
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=timeout, command_timeout=command_timeout,
        server_settings={"application_name": "ringkeeper-sync"})
    return conn


async def close_quietly(conn: asyncpg.Connection | None, timeout: float = 2.0) -> None:
    """Close a connection without waiting on a server that may be frozen."""
    if conn is None or conn.is_closed():
        return
    with contextlib.suppress(Exception):
        await conn.close(timeout=timeout)
    if not conn.is_closed():
        conn.terminate()


def route(ring: str, source: str, begin: Begin, origin: Origin | None,
          carries: frozenset[str] | None, local: str | None = None) -> tuple[str, int] | None:
    """core.ringmember.route for a transaction's Begin and Origin messages."""
    return ringmember.route(ring, source, begin.final_lsn,
                            None if origin is None else (origin.name, origin.origin_lsn),
                            carries, local)


def only_source_changes(source: str, carries: frozenset[str] | None) -> bool:
    """Whether a link brings nothing but what was written at its source (a mesh link,
    or a two-member ring), so the source may filter out every forwarded change."""
    return carries is not None and carries <= {source}


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
        self._ws: WalStream | None = None
        self._end = 0  # end LSN of the last transaction applied or skipped here
        self._seen_end = 0  # source WAL end from a keepalive, all before it queued
        self._part_applying = False
        self._skipped = 0  # transactions not taken (besides the applier's own count)
        self._applied = False  # applied something since progress was last flushed

    async def open(self) -> None:
        self._src = await connect(self.source_dsn, command_timeout=self.statement)
        await catalog.apply_canonical_settings(self._src)
        # A ring's first link, or a member that joined: the slot starts here. (A slot
        # that existed and vanished is a failover gap; the source's sidecar reports it.)
        # Never without the publication: a link without it would say Streaming while
        # PostgreSQL 18 sends nothing (15 and 17 fail).
        await ensure_slot(self._src, self.source_profile, self.slot, self.ring)
        s = self.source_profile.sql
        row = await self._src.fetchrow(
            f"SELECT wal_status, active_pid FROM {s.replication_slots} WHERE slot_name = $1",
            self.slot)
        if row is not None and row["wal_status"] == "lost":
            raise SlotLost(f"slot {self.slot} on {self.source} lost WAL this member still "
                           "needed (max_slot_wal_keep_size): the member needs a re-seed")
        if row is not None and row["active_pid"] is not None:
            # This link is the slot's only reader: a session still holding it is ours
            # from before a restart or a cut connection, waiting for its timeout.
            log.info("slot %s on %s still held by pid %s: ending that session", self.slot,
                     self.source, row["active_pid"])
            await self._src.execute(f"SELECT {s.terminate_backend}($1)", row["active_pid"])
            for _ in range(50):
                if not await self._src.fetchval(
                        f"SELECT active_pid IS NOT NULL FROM {s.replication_slots} "
                        "WHERE slot_name = $1", self.slot):
                    break
                await asyncio.sleep(0.1)
        self._ws = await WalStream.open(self.source_dsn, timeout=self.statement)
        pub = names.publication_name(self.ring)
        options = [("proto_version", "1"),
                   ("publication_names", '"' + pub.replace('"', '""') + '"')]
        if self.source_profile.origin_filter and only_source_changes(self.source,
                                                                      self.carries):
            # Forwarded changes would only be skipped here: the source never queues them.
            options.append(("origin", "none"))
        await asyncio.wait_for(self._ws.start_logical(self.slot, 0, options), self.statement)

    async def close(self) -> None:
        if self._ws is not None:
            if self._silent is not None:
                self._ws.abort()  # a hung source would not answer a goodbye
            else:
                await self._ws.close()
            self._ws = None
        if self._src is not None:
            if self._silent is not None:
                self._src.terminate()
            else:
                await close_quietly(self._src)
            self._src = None

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
        last_flush = last_measure = time.monotonic()
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
                    await self._apply(events)
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
        while True:
            await asyncio.sleep(self.ping_every)
            ws.feedback(reply=True)  # a ping: the walsender answers with a keepalive
            if self._judge(ws, time.monotonic(), idle=queue.empty()):
                silence = ws.silence(time.monotonic())
                self._silent = SourceSilent(
                    f"no change or keepalive from {self.source} for {silence:.1f}s "
                    f"(liveness {self.liveness:g}s): it is hung or cut off", silence)
                loop_task.cancel()
                return

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
            since_alive=now - ws.heard_at), self.liveness)
        st.state = v.state
        st.lag_seconds = None if v.lag_seconds is None else round(v.lag_seconds, 3)
        return v.restart

    async def _report(self, ws: WalStream, end: int) -> None:
        """Tell the source it may forget everything before `end`, after this member's
        progress for what it applied is on disk (skipped transactions need no flush)."""
        if self._applied:
            await self.applier.settle()
            await origin_progress(self.applier.conn, self.profile, self.ring)
            self._applied = False
        ws.feedback(end)

    def _confirmable(self, drained: bool) -> int:
        """How far the source may be told this member is (core.ringmember.confirmable)."""
        return confirmable(applied_end=self._end, seen_end=self._seen_end, drained=drained,
                           part_open=self._part_applying)

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

    async def _apply(self, events: list[Event]) -> None:
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
                self._skipped += 1
                self._end = max(self._end, ev.end_lsn)
            else:
                await self._apply_part(ev)
        if run:
            await self._apply_run(run)

    async def _apply_run(self, run: list[Txn]) -> None:
        self._applied = True
        await self.applier.apply_txns(run)
        self._end = max(self._end, run[-1].end_lsn)

    async def _apply_part(self, part: Part) -> None:
        applier = self.applier
        self._applied = True
        if part.first:
            self._part_applying = applier.wanted(part.origin, part.origin_lsn)
            if self._part_applying:
                await applier.begin(part.origin, part.origin_lsn, part.commit_ts)
        if self._part_applying:
            for m in part.changes:
                await applier.change(m.relid, m)
        if part.end_lsn is not None:
            if self._part_applying:
                await applier.commit()
            else:
                self._skipped += 1
            self._part_applying = False
            self._end = max(self._end, part.end_lsn)

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
        st.skipped_txns = stats.skipped_txns + self._skipped
        if idle:
            self._commit_lag = 0.0
        elif stats.last_commit_ts is not None:
            self._commit_lag = max(0.0, (datetime.now(UTC) - stats.last_commit_ts)
                                   .total_seconds())
