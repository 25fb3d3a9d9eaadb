"""The sync sidecar of one member: set the member up, run its inbound links, and
keep them running around members that are down.

It acts only while its own database is a primary (a standby's sidecar waits), so
after an in-campus failover the sidecar next to the new primary takes over from
the slots it finds there. Decisions (which member feeds this one, how far a slot
may move) are pure functions in core; this module connects and acts on them.

This module is the member loop and each link's reconnect loop; beside it: the hold
slot (hold.py), copies of other members' rows (copies.py), the slots on the sources
(inbound.py), what the member reports (memberstate.py), which failures are retried
(errors.py) and where the ring config comes from (configsource.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from ..contracts.ringconfig import RingConfig
from ..core import ringmember
from ..core.liveness import (
    APPLY_STATEMENT_SECONDS,
    SLOW_STATEMENT_SECONDS,
    LinkFault,
    statement_seconds,
)
from ..engines import EngineProfile, profile_for
from . import catalog, priorityguard
from .apply import Applier
from .capture import prepare_capture
from .configsource import ConfigSource
from .connections import close_quietly, connect
from .copies import InitialCopies
from .errors import LINK_ERRORS, MEMBER_ERRORS, TRANSIENT, UNREACHABLE
from .hold import HoldKeeper
from .inbound import drop_inbound_slot, ensure_inbound_slot
from .link import LinkStream, SourceSilent
from .linkopen import SlotLost
from .linkreport import LinkReport
from .memberstate import MemberState
from .origins import ensure_origins
from .satellite import SatelliteKeeper
from .slots import ensure_slot

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between checks that this member's own database answers


class OwnDatabaseDown(ConnectionError):
    """This member's own database (every inbound link's target) does not answer: the
    member is reported Unreachable and its links TargetDown, never its upstream Down."""


class Sidecar:
    """One member's sidecar: its state, its links' tasks, and the members it found down
    (`_down_since`, which the link loops fill and the hold keeper reads)."""

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
        self._probed: dict[str, float] = {}
        self.hold = HoldKeeper(member, self.state, self._down_since)
        self.copies = InitialCopies(member, local_dsn, self.state)
        self.satellites = SatelliteKeeper(member, local_dsn, config)
        self.state.satellites = self.satellites.reports

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
        await priorityguard.keep_config(local, cfg, self.member, tables)
        if refused:
            log.warning("tables without a primary key are not replicated: %s",
                        ", ".join(refused))
        await ensure_origins(local, profile, cfg.ring, cfg.origins)
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
        await priorityguard.keep_config(local, cfg, self.member, tables)

    async def _serve(self, local: asyncpg.Connection, cfg: RingConfig,
                     profile: EngineProfile, stop: asyncio.Event) -> None:
        """Run inbound links and the hold keeper until the config changes or we stop."""
        tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        started: dict[str, ringmember.Inbound] = {}  # what each running link was started as
        last_hold = 0.0
        last_tables = time.monotonic()
        stmt = statement_seconds(cfg.bypass_after_seconds)
        # This member's satellites (sync/satellite.py) run beside its inbound links.
        sat_stop = asyncio.Event()
        sat_task = asyncio.create_task(self.satellites.run(profile, sat_stop))

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
                pending = await self.copies.pending(local, cfg)
                if pending and self.copies.due():
                    # Applying a copy takes each origin's replication origin in a session
                    # of its own, which a link's session may hold: links wait meanwhile
                    # (their slots keep everything).
                    await stop_links()
                    for lk in self.state.links.values():
                        lk.stopped(None, "paused while this member copies other members' rows")
                    pending = await self.copies.copy(local, cfg, profile, pending)
                # Not Ready while another member's rows are missing here: streaming
                # links say CatchingUp. Links start anyway: the other members' copies
                # and this one's retry must not wait for a member that is down.
                for lk in self.state.links.values():
                    lk.copies_pending = bool(pending)
                wanted = self._inbound(cfg)
                unused: list[str] = []
                for key in list(tasks):
                    # Restarted when its carried origins change (a satellite came or went).
                    if key not in wanted or tasks[key][0].done() or \
                            started.get(key, wanted[key]).carries != wanted[key].carries:
                        started.pop(key, None)
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
                        started[key] = inb
                        tasks[key] = (asyncio.create_task(self._link_loop(
                            cfg, profile, inb.source, inb.slot, inb.carries, inb.bypassing,
                            ev)), ev)
                for key in unused:
                    # After the new links started; not on a member found down (a hung
                    # one would hold this loop for a time-out; its slot serves again
                    # when it is back).
                    if key.split("->", 1)[0] not in self._down_since:
                        await drop_inbound_slot(cfg, self.member, key)
                await self._probe_down(cfg, stmt)
                if time.monotonic() - last_tables >= 10:
                    # Tables created after the ring started join it (and leave when dropped).
                    last_tables = time.monotonic()
                    await self.refresh_tables(local, cfg)
                if cfg.topology != "mesh" and time.monotonic() - last_hold >= self.hold_every:
                    last_hold = time.monotonic()
                    try:
                        await self.hold.keep_hold(local, cfg, profile)
                    except TRANSIENT as exc:
                        log.warning("hold slot: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                if await local.fetchval("SELECT pg_is_in_recovery()", timeout=stmt):
                    self.state.role = "Standby"
                    return
        finally:
            sat_stop.set()
            await stop_links()
            await self.satellites.finish(sat_task, 4 * stmt)

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
        return ringmember.inbound(cfg.ring, self.member, cfg.names, cfg.topology, down,
                                  cfg.satellite_parents())

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
                await ensure_inbound_slot(cfg, source, slot, src_profile, info.dsn)
                local = await connect(self.local_dsn, command_timeout=APPLY_STATEMENT_SECONDS,
                                      timeout=stmt)
                # Satellites' origins (one may have joined the config since setup).
                await ensure_origins(local, profile, cfg.ring, (await self.config()).origins)
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

