"""The sync sidecar of one member: set the member up, pull its inbound links, keep
its hold slot honest, and report.

It acts only while its own database is a primary (a standby's sidecar waits), so
after an in-campus failover the sidecar next to the new primary takes over from
the slots it finds there. Decisions (which member feeds this one, how far a slot
may move) are pure functions in core; this module connects and acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..base.lsn import lsn_to_str, str_to_lsn
from ..contracts.ringconfig import RingConfig
from ..core import names, retention, ringmember
from ..core.liveness import (
    APPLY_STATEMENT_SECONDS,
    SLOW_STATEMENT_SECONDS,
    LinkFault,
    statement_seconds,
)
from ..core.ring import hops_to
from ..engines import EngineProfile, profile_for
from . import catalog
from .apply import Applier
from .capture import prepare_capture, publication_exists
from .connections import close_quietly, connect
from .link import LinkStream, SourceSilent
from .linkopen import SlotLost
from .linkreport import LinkReport
from .origins import ensure_origins, origin_progress
from .seed import SeedProgress, copied_tables, copy_member_rows
from .slots import copy_slot, drop_slot, ensure_slot, slot_exists, wait_consistent

log = logging.getLogger(__name__)

ConfigSource = Callable[[], Awaitable[RingConfig]]

# Failures that a reconnect may cure: the network, a restarting server, a closed socket.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
LINK_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT, RuntimeError)
MEMBER_ERRORS: tuple[type[BaseException], ...] = (*LINK_ERRORS, ValueError)
# Failures that say the server at the other end does not answer (rather than refused).
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError)
CHECK_EVERY = 1.0  # seconds between checks that this member's own database answers


class OwnDatabaseDown(ConnectionError):
    """This member's own database (every inbound link's target) does not answer: the
    member is reported Unreachable and its links TargetDown, never its upstream Down."""


@dataclass
class MemberState:
    member: str
    role: str = "Unknown"  # Primary, Standby, Unreachable
    error: str | None = None
    refused_tables: list[str] = field(default_factory=list)
    tables: int = 0
    links: dict[str, LinkReport] = field(default_factory=dict)
    seeding: SeedProgress | None = None
    gaps: list[str] = field(default_factory=list)
    needs_reseed: set[str] = field(default_factory=set)
    hold_lag_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "member": self.member, "role": self.role, "error": self.error,
            "tables": self.tables, "refusedTables": self.refused_tables,
            "links": [lk.as_dict() for lk in self.links.values()],
            "seeding": self.seeding.as_dict() if self.seeding else None,
            "gaps": self.gaps, "needsReseed": sorted(self.needs_reseed),
            "holdLagBytes": self.hold_lag_bytes,
        }


class Sidecar:
    def __init__(self, member: str, local_dsn: str, config: ConfigSource, *,
                 poll_seconds: float = 0.05, hold_every: float = 10.0) -> None:
        self.member = member
        self.local_dsn = local_dsn
        self.config = config
        self.poll = poll_seconds
        self.hold_every = hold_every
        self.state = MemberState(member)
        self.ring = ""
        self._down_since: dict[str, float] = {}
        self._progress_cache: dict[str, dict[str, int]] = {}
        self._probed: dict[str, float] = {}
        self._samples: list[retention.OriginSample] = []  # origin status, for the hold slot
        self._copy_retry_at = 0.0  # when to try pending initial copies again
        self._copy_backoff = 1.0

    # -- main loop ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                await self._run_primary(stop)
                backoff = 0.2
            except OwnDatabaseDown as exc:
                self.state.role = "Unreachable"
                self.state.error = str(exc)
                for lk in self.state.links.values():
                    lk.stopped(LinkFault.TARGET_UNREACHABLE, str(exc))
                log.warning("member %s: %s", self.member, exc)
            except MEMBER_ERRORS as exc:
                self.state.error = str(exc)
                log.warning("member %s: %s", self.member, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _run_primary(self, stop: asyncio.Event) -> None:
        cfg = await self.config()
        me = cfg.member(self.member)
        profile = profile_for(me.engine, me.version)
        stmt = statement_seconds(cfg.bypass_after_seconds)
        try:
            # Setup and the hold slot's moves may take long (slot creation waits for
            # running transactions); the watchdog below finds a hung server sooner.
            local = await connect(self.local_dsn, command_timeout=SLOW_STATEMENT_SECONDS,
                                  timeout=stmt)
            standby = await local.fetchval("SELECT pg_is_in_recovery()", timeout=stmt)
        except UNREACHABLE as exc:
            raise OwnDatabaseDown(self._own_down_message(exc)) from exc
        try:
            if standby:
                self.state.role = "Standby"
                self.state.error = None
                await asyncio.wait_for(stop.wait(), 2.0)
                return
            self.state.role = "Primary"
            await self.setup(local, cfg, profile)
            self.state.error = None
            serve = asyncio.create_task(self._serve(local, cfg, profile, stop))
            watch = asyncio.create_task(self._watch_own(stmt))
            try:
                await asyncio.wait({serve, watch}, return_when=asyncio.FIRST_COMPLETED)
                if watch.done():
                    watch.result()  # raises OwnDatabaseDown
                serve.result()
            finally:
                for t in (serve, watch):
                    t.cancel()
                # serve's clean-up stops the links, each within a bounded time.
                await asyncio.wait({serve, watch}, timeout=4 * stmt)
        finally:
            await close_quietly(local)

    def _own_down_message(self, exc: BaseException) -> str:
        why = str(exc) or type(exc).__name__
        return (f"member {self.member}'s own database does not answer ({why}): its "
                "inbound links are TargetDown, their sources are not blamed")

    async def _watch_own(self, stmt: float) -> None:
        """Raise OwnDatabaseDown once this member's own database stops answering.

        A frozen server keeps its sockets open, so only a statement with a time-out
        shows it; this one runs beside the serve loop on its own connection, so no
        long statement elsewhere delays it. Links are marked TargetDown at once."""
        try:
            conn = await connect(self.local_dsn, command_timeout=stmt, timeout=stmt)
            try:
                while True:
                    await conn.fetchval("SELECT 1")
                    await asyncio.sleep(CHECK_EVERY)
            finally:
                await close_quietly(conn)
        except UNREACHABLE as exc:
            message = self._own_down_message(exc)
            self.state.role, self.state.error = "Unreachable", message
            for lk in self.state.links.values():
                lk.stopped(LinkFault.TARGET_UNREACHABLE, message)
            raise OwnDatabaseDown(message) from exc

    async def _own_answers(self, stmt: float) -> bool:
        """Whether this member's own database answers a statement within `stmt`."""
        try:
            conn = await connect(self.local_dsn, command_timeout=stmt, timeout=stmt)
        except UNREACHABLE:
            return False
        try:
            await conn.fetchval("SELECT 1")
            return True
        except UNREACHABLE:
            return False
        finally:
            await close_quietly(conn)

    async def setup(self, local: asyncpg.Connection, cfg: RingConfig,
                    profile: EngineProfile) -> list[catalog.TableInfo]:
        await catalog.check_server(local)
        # The publication (and the event trigger that adds tables created later) before
        # any slot: see capture.prepare_capture.
        tables, refused = await prepare_capture(local, cfg.ring, cfg.include, cfg.exclude)
        self.state.refused_tables = refused
        self.state.tables = len(tables)
        if refused:
            log.warning("tables without a primary key are not replicated: %s",
                        ", ".join(refused))
        await ensure_origins(local, profile, cfg.ring, cfg.names)
        for slot in ringmember.own_slots(cfg.ring, self.member, cfg.names, cfg.topology):
            had_before = await local.fetchval(
                "SELECT count(*) FROM ringkeeper.slot_history WHERE slot = $1", slot)
            created = await ensure_slot(local, profile, slot, cfg.ring)
            gap = ringmember.recreated_slot_gap(slot, created=created,
                                                had_before=bool(had_before))
            if gap is not None and gap not in self.state.gaps:
                self.state.gaps.append(gap)
        return tables

    async def refresh_tables(self, local: asyncpg.Connection, cfg: RingConfig) -> None:
        """A backstop to the event trigger (which adds a new table in the transaction
        that creates it): drops tables dropped or excluded, follows spec changes."""
        tables, refused = await prepare_capture(local, cfg.ring, cfg.include,
                                                cfg.exclude, schema=False)
        self.state.refused_tables = refused
        self.state.tables = len(tables)

    async def _serve(self, local: asyncpg.Connection, cfg: RingConfig,
                     profile: EngineProfile, stop: asyncio.Event) -> None:
        """Run inbound links and the hold keeper until the config changes or we stop."""
        tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        last_hold = 0.0
        last_tables = time.monotonic()
        stmt = statement_seconds(cfg.bypass_after_seconds)

        async def end(ending: list[tuple[asyncio.Task[None], asyncio.Event]],
                      grace: float = stmt) -> None:
            """Stop link tasks; one stuck on a hung server is cancelled after `grace`
            (a cancelled link only reads again what it had applied: progress skips it)."""
            for _task, ev in ending:
                ev.set()
            running = {task for task, _ in ending}
            if not running:
                return
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2 * stmt)

        async def stop_links() -> None:
            await end([tasks.pop(key) for key in list(tasks)])

        try:
            while not stop.is_set():
                cfg = await self.config()
                pending = await self._pending_copies(local, cfg)
                if pending and time.monotonic() >= self._copy_retry_at:
                    # Applying a copy takes each origin's replication origin in a session
                    # of its own, which a link's session may hold: links wait meanwhile
                    # (their slots keep everything).
                    await stop_links()
                    for lk in self.state.links.values():
                        lk.stopped(None, "paused while this member copies other members' rows")
                    pending = await self._copy_members(local, cfg, profile, pending)
                # Not Ready while another member's rows are missing here: streaming
                # links say CatchingUp. Links start anyway: the other members' copies
                # and this one's retry must not wait for a member that is down.
                for lk in self.state.links.values():
                    lk.copies_pending = bool(pending)
                wanted = self._inbound(cfg)
                unused: list[str] = []
                for key in list(tasks):
                    if key not in wanted or tasks[key][0].done():
                        # Re-routing around a hung member must not wait on it long.
                        await end([tasks.pop(key)], grace=1.0)
                        if key not in wanted:
                            self.state.links.pop(key, None)
                            unused.append(key)
                for key, inb in wanted.items():
                    if key not in tasks:
                        if inb.bypassing:
                            log.info("link %s starts, bypassing %s", key,
                                     ", ".join(inb.bypassing))
                        ev = asyncio.Event()
                        tasks[key] = (asyncio.create_task(self._link_loop(
                            cfg, profile, inb.source, inb.slot, inb.carries, inb.bypassing,
                            ev)), ev)
                for key in unused:
                    # After the new links started; not on a member found down (a hung
                    # one would hold this loop for a time-out; its slot serves again
                    # when it is back).
                    if key.split("->", 1)[0] not in self._down_since:
                        await self._drop_inbound_slot(cfg, key)
                await self._probe_down(cfg, stmt)
                if time.monotonic() - last_tables >= 10:
                    # Tables created after the ring started join it (and leave when dropped).
                    last_tables = time.monotonic()
                    await self.refresh_tables(local, cfg)
                if cfg.topology != "mesh" and time.monotonic() - last_hold >= self.hold_every:
                    last_hold = time.monotonic()
                    try:
                        await self.keep_hold(local, cfg, profile)
                    except TRANSIENT as exc:
                        log.warning("hold slot: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                if await local.fetchval("SELECT pg_is_in_recovery()", timeout=stmt):
                    self.state.role = "Standby"
                    return
        finally:
            await stop_links()

    async def _probe_down(self, cfg: RingConfig, stmt: float) -> None:
        """A bypassed member is not read from, so ask it directly whether it is back."""
        now = time.monotonic()
        for name, since in list(self._down_since.items()):
            if now - since < cfg.bypass_after_seconds or now - self._probed.get(name, 0) < 1:
                continue
            self._probed[name] = now
            info = cfg.member(name)
            if info.dsn is None:
                continue
            try:
                conn = await connect(info.dsn, timeout=2, command_timeout=stmt)
            except TRANSIENT:
                continue
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    log.info("member %s is back: the ring closes through it again", name)
                    self._down_since.pop(name, None)
            except TRANSIENT:
                continue  # still hung (a frozen server accepts, then never answers)
            finally:
                await close_quietly(conn)

    def _inbound(self, cfg: RingConfig) -> dict[str, ringmember.Inbound]:
        """The links that feed this member now (core.ringmember), around the members
        down past bypassAfterSeconds."""
        down = ringmember.bypassed(self._down_since, local=self.member, now=time.monotonic(),
                                   bypass_after=cfg.bypass_after_seconds)
        return ringmember.inbound(cfg.ring, self.member, cfg.names, cfg.topology, down)

    async def _link_loop(self, cfg: RingConfig, profile: EngineProfile, source: str,
                         slot: str, carries: frozenset[str] | None,
                         bypassing: tuple[str, ...], stop: asyncio.Event) -> None:
        key = f"{source}->{self.member}"
        status = self.state.links.setdefault(key, LinkReport(source, self.member, slot))
        status.slot, status.bypassing = slot, bypassing
        stmt = statement_seconds(cfg.bypass_after_seconds)
        backoff = 0.2
        while not stop.is_set():
            info = (await self.config()).member(source)
            local: asyncpg.Connection | None = None
            try:
                if info.dsn is None:
                    raise OSError(f"member {source} has no primary to connect to")
                src_profile = profile_for(info.engine, info.version)
                await self._ensure_inbound_slot(cfg, source, slot, src_profile, info.dsn)
                local = await connect(self.local_dsn, command_timeout=APPLY_STATEMENT_SECONDS,
                                      timeout=stmt)
                applier = Applier(local, profile, cfg.ring, self.member, cfg.priorities(),
                                  cfg.policy)
                await applier.start()
                link = LinkStream(ring=cfg.ring, source=source, local=self.member,
                            source_dsn=info.dsn, slot=slot, applier=applier,
                            profile=profile, source_profile=src_profile, carries=carries,
                            status=status, bypass_after_seconds=cfg.bypass_after_seconds)
                await link.open()
                self._down_since.pop(source, None)
                backoff = 0.2
                await link.run(stop)
                if status.running:
                    status.stopped(None, None)
            except SlotLost as exc:
                status.stopped(ringmember.link_fault(slot_lost=True, silent=False,
                                                     unreachable=False, own_answers=True),
                               str(exc))
            except LINK_ERRORS as exc:
                message = str(exc) or (
                    f"{type(exc).__name__}: {source} gave no answer within {stmt:g}s"
                    if isinstance(exc, TimeoutError) else type(exc).__name__)
                unreachable = isinstance(exc, UNREACHABLE)
                silent = exc if isinstance(exc, SourceSilent) else None
                # Asked only when the peer did not answer: was it this member's own
                # database (never bypass the source for it)?
                own = not unreachable or await self._own_answers(stmt)
                fault = ringmember.link_fault(slot_lost=False, silent=silent is not None,
                                              unreachable=unreachable, own_answers=own)
                since = ringmember.down_since(fault, now=time.monotonic(),
                                              silent_since=None if silent is None else silent.since)
                if since is not None:
                    self._down_since.setdefault(source, since)
                if fault == LinkFault.TARGET_UNREACHABLE:
                    message = self._own_down_message(exc)
                status.stopped(fault, message)
                log.warning("link %s: %s", key, status.message)
            finally:
                await close_quietly(local)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 3.0)

    async def _ensure_inbound_slot(self, cfg: RingConfig, source: str, slot: str,
                                   src_profile: EngineProfile, dsn: str, *,
                                   publish: bool = False) -> None:
        """A ring slot this member lacks on `source` (it bypasses a dead member, joined,
        or the ring was re-ordered) starts as a copy of the source's hold slot: the hold
        slot kept everything some member still lacks, this one included, so nothing
        between the old and the new reader is lost. Replays are skipped by progress."""
        # Slot creation waits for transactions running at the source: the long time-out.
        src = await connect(dsn, command_timeout=SLOW_STATEMENT_SECONDS,
                            timeout=statement_seconds(cfg.bypass_after_seconds))
        try:
            if await slot_exists(src, src_profile, slot):
                await wait_consistent(src, src_profile, slot)
                if not await publication_exists(src, cfg.ring):
                    await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude)
                elif publish:
                    await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude,
                                          schema=False)
                return
            # The source's own sidecar may not have run yet: its publication (and event
            # trigger) first, or the slot could not decode with it.
            await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude)
            hold = names.hold_slot_name(cfg.ring, source)
            if cfg.topology != "mesh" and await slot_exists(src, src_profile, hold):
                await wait_consistent(src, src_profile, hold)
                if await copy_slot(src, src_profile, hold, slot):
                    log.info("slot %s on %s starts from the hold slot", slot, source)
            await ensure_slot(src, src_profile, slot, cfg.ring)
        finally:
            await close_quietly(src)

    async def _drop_inbound_slot(self, cfg: RingConfig, key: str) -> None:
        """A link no longer used leaves its slot behind, holding WAL: drop it. Safe even
        if it is needed again later: a new one starts from the hold slot."""
        source = key.split("->", 1)[0]
        slot = names.link_slot_name(cfg.ring, source, self.member)
        if cfg.topology == "mesh" and source in cfg.names:
            return
        with contextlib.suppress(*TRANSIENT, KeyError):
            info = cfg.member(source)
            if info.dsn:
                stmt = statement_seconds(cfg.bypass_after_seconds)
                src = await connect(info.dsn, command_timeout=stmt, timeout=stmt)
                try:
                    await drop_slot(src, profile_for(info.engine, info.version), slot)
                finally:
                    await close_quietly(src)

    # -- retention -------------------------------------------------------------------
    async def member_progress(self, cfg: RingConfig) -> dict[str, dict[str, int]]:
        """Flushed per-origin progress of every member; the last known for unreachable ones."""
        for m in cfg.members:
            if m.name == self.member or m.dsn is None or m.name in self._down_since:
                continue  # a member found down keeps its last known progress
            try:
                conn = await connect(m.dsn, timeout=2,
                                     command_timeout=statement_seconds(cfg.bypass_after_seconds))
                try:
                    self._progress_cache[m.name] = await origin_progress(
                        conn, profile_for(m.engine, m.version), cfg.ring)
                finally:
                    await close_quietly(conn)
            except TRANSIENT:
                pass
        return self._progress_cache

    async def keep_hold(self, local: asyncpg.Connection, cfg: RingConfig,
                        profile: EngineProfile) -> None:
        """Move this member's hold slot to what every other member has.

        Nothing is decoded for it: the facts are this member's WAL position, its origin
        status (where each origin's latest applied transaction ended here), every
        member's flushed progress and its own link slots' confirmed positions; the
        decision is core.retention.hold_target. Only the move itself reads the WAL, in
        fast-forward (no output plugin)."""
        s = profile.sql
        hold = names.hold_slot_name(cfg.ring, self.member)
        if not needs_hold(cfg):
            # Two members: no one to bypass to, and the link slot keeps what the other
            # lacks. A hold slot left from a larger ring would only pin WAL.
            if await slot_exists(local, profile, hold):
                await drop_slot(local, profile, hold)
            return
        if await ensure_slot(local, profile, hold, cfg.ring):
            return  # the ring grew past two members: the hold slot starts here
        prefix = names.origin_prefix(cfg.ring)
        now_lsn = str_to_lsn(await local.fetchval(f"SELECT {s.current_wal_lsn}()::text"))
        status = await local.fetch(
            f"SELECT external_id, remote_lsn::text AS remote, local_lsn::text AS local "
            f"FROM {s.replication_origin_status} WHERE starts_with(external_id, $1)", prefix)
        for r in status:
            origin = names.member_of_origin(cfg.ring, r["external_id"])
            if origin is None or r["remote"] is None or r["local"] is None:
                continue
            sample = retention.OriginSample(origin, str_to_lsn(r["local"]),
                                            str_to_lsn(r["remote"]))
            if not self._samples or sample not in self._samples[-len(status):]:
                self._samples.append(sample)
        slots = {r["slot_name"]: r for r in await local.fetch(
            f"SELECT slot_name, confirmed_flush_lsn::text AS flushed, "
            f"{s.wal_lsn_diff}({s.current_wal_lsn}(), restart_lsn)::bigint AS lag "
            f"FROM {s.replication_slots} WHERE starts_with(slot_name, $1)", prefix)}
        row = slots.get(hold)
        if row is None or row["flushed"] is None:
            return
        at = str_to_lsn(row["flushed"])
        self.state.hold_lag_bytes = int(row["lag"]) if row["lag"] is not None else None
        outbound = {m: str_to_lsn(r["flushed"]) for m in cfg.names if m != self.member
                    and (r := slots.get(names.link_slot_name(cfg.ring, self.member, m)))
                    is not None and r["flushed"] is not None}
        progress = await self.member_progress(cfg)
        holders = [m for m in cfg.names if m != self.member and m not in self.state.needs_reseed]

        def target(who: list[str]) -> int | None:
            return retention.hold_target(
                member=self.member, holders=who, progress=progress, samples=self._samples,
                now_lsn=now_lsn, outbound=outbound, owed=frozenset(cfg.names))

        if ringmember.over_budget(self.state.hold_lag_bytes, cfg.max_slot_wal_keep_bytes):
            # Keep the disk: a member this far behind gets a re-seed, not more WAL.
            behind = frozenset(retention.behind(holders, at, target))
            now = time.monotonic()
            steps = {m: ringmember.plan_member(ringmember.MemberFacts(
                m, self.member, now, cfg.bypass_after_seconds, self._down_since.get(m),
                behind_budget=m in behind)) for m in holders}
            for m, step in steps.items():
                if not step.holds:
                    log.warning("member %s: %s", self.member, step.reason)
                    self.state.needs_reseed.add(m)
            holders = [m for m in holders if steps[m].holds]
        moved = target(holders)
        if moved is not None and moved > at:
            await local.execute(f"SELECT {s.replication_slot_advance}($1, $2::text::pg_lsn)",
                                hold, lsn_to_str(moved))
            at = moved
        # Samples wholly behind the slot can no longer bound anything it may pass.
        self._samples = [x for x in self._samples if x.local_end >= at]

    # -- initial copies ----------------------------------------------------------------
    async def _pending_copies(self, local: asyncpg.Connection,
                              cfg: RingConfig) -> dict[str, list[str]]:
        """Source -> tables still to copy from it: per (source, table), so a table that
        joined this member's replicated set after a source's copy ran is copied too."""
        tables, _ = await catalog.replicated_tables(local, cfg.include, cfg.exclude)
        done = await copied_tables(local, cfg.ring)
        return ringmember.pending_copies(self.member, cfg.names,
                                         [t.relation for t in tables], frozenset(done))

    async def _copy_members(self, local: asyncpg.Connection, cfg: RingConfig,
                            profile: EngineProfile,
                            pending: dict[str, list[str]]) -> dict[str, list[str]]:
        """Copy each pending member's own rows of its pending tables here
        (sync/seed.py); returns what is still pending (a member that cannot be reached,
        or a table not yet in its publication, is tried again later)."""
        progress = self.state.seeding
        if progress is None or progress.state == "Done":
            progress = self.state.seeding = SeedProgress(self.member, "")
        progress.state = "Copying"
        tables = {t.relation: t for t in
                  (await catalog.replicated_tables(local, cfg.include, cfg.exclude))[0]}
        left: dict[str, list[str]] = {}
        for source, wanted in pending.items():
            todo = [tables[r] for r in wanted if r in tables]
            if not todo:
                continue  # left the replicated set meanwhile
            progress.source = source
            try:
                # The tables join the publication of every server on the path before
                # the snapshot: only then is each one's copy gap-free (seed.py).
                await self._ensure_path(cfg, source, publish=True)
                info = cfg.member(source)
                assert info.dsn is not None  # _ensure_path connected to it
                result = await copy_member_rows(
                    self.local_dsn, profile, cfg.ring, self.member, cfg.names,
                    cfg.priorities(), cfg.policy, source, info.dsn, todo, progress)
            except MEMBER_ERRORS as exc:
                left[source] = [t.relation for t in todo]
                progress.message = f"copy of {source}'s rows waits: {exc}"
                log.warning("member %s: %s", self.member, progress.message)
                continue
            if result.waiting:
                left[source] = result.waiting
                progress.message = (f"copy of {source}'s rows of {', '.join(result.waiting)} "
                                    f"waits until {source}'s publication carries them")
                log.warning("member %s: %s", self.member, progress.message)
        if left:
            progress.state = "Waiting"
            self._copy_retry_at = time.monotonic() + self._copy_backoff
            self._copy_backoff = min(self._copy_backoff * 2, 30.0)
        else:
            progress.state, progress.message, progress.source = "Done", None, ""
            self._copy_backoff = 1.0
        return left

    async def _ensure_path(self, cfg: RingConfig, source: str, *,
                           publish: bool = False) -> None:
        """Every slot a write at `source` crosses on its way here exists (each with its
        publication first) and is consistent, so a snapshot of `source` taken after
        this returns misses nothing that the slots will not bring. With `publish`,
        every server on the path also has each of its ring tables in its publication
        now (its own sidecar adds a table missed by its event trigger only every
        10 s): a table's copy waits for that (core.ringmember.table_copy_step)."""
        for u, v in hops_to(source, self.member, cfg.names, cfg.topology):
            info = cfg.member(u)
            if info.dsn is None:
                raise OSError(f"member {u} has no primary to connect to")
            await self._ensure_inbound_slot(cfg, u, names.link_slot_name(cfg.ring, u, v),
                                            profile_for(info.engine, info.version), info.dsn,
                                            publish=publish)


def needs_hold(cfg: RingConfig) -> bool:
    """Whether this ring keeps a hold slot (core.ringmember.needs_hold)."""
    return ringmember.needs_hold(cfg.topology, cfg.names)


def file_config(path: str) -> ConfigSource:
    from pathlib import Path

    async def load() -> RingConfig:
        return await asyncio.to_thread(RingConfig.load, Path(path))

    return load
