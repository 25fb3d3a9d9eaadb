"""A parent member's sidecar keeps its satellites in sync: up, down through a spool, and
what it reports of them.

Per satellite three loops, each reconnecting with backoff on its own:

- up: a LinkStream reads the satellite's slot (its publication of the satellite's
  tables, `origin none`: only the satellite's own writes) and applies at the parent
  under the satellite's origin with the ring's conflict policy; the ring's links
  carry that origin on (core.ring). While the satellite is away its own WAL, held by
  that slot, is its backlog; on reconnect the link drains it in commit order.
- spool: a LinkStream reads the parent's slot for the satellite (every origin but the
  satellite's) into the parent's spool (sync/satspool.SpoolWriter), so the slot is
  confirmed as it goes and never pins the parent's WAL.
- drain: the spool applied at the satellite in order (sync/satspool.SpoolDrain).

Before the spool loop first reads the parent's slot, it copies the parent's filtered
rows of the satellite's tables into the spool from a snapshot taken after that slot
exists (sync/satcopy.py): a satellite joining a parent that holds rows gets them all.
Likewise, before the up link first reads the satellite's slot, the satellite's own rows
(written before that slot existed) are copied to the parent under its origin, as the
ring's seed copies a member's rows (sync/seed.copy_member_rows), and the ring carries
them on.

Decisions (routing, the row filter) are core's; this module connects and acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..contracts.ringconfig import RingConfig, SatelliteInfo
from ..core import names, ringmember
from ..core.liveness import APPLY_STATEMENT_SECONDS, SLOW_STATEMENT_SECONDS, statement_seconds
from ..engines import EngineProfile, profile_for
from . import catalog
from .apply import Applier
from .capture import prepare_capture
from .configsource import ConfigSource
from .connections import close_quietly, connect
from .errors import LINK_ERRORS, MEMBER_ERRORS, TRANSIENT, UNREACHABLE
from .link import PARK_RETRY_EVERY, LinkStream, SourceSilent
from .linkreport import LinkReport
from .origins import ensure_origins
from .satcopy import copy_done, copy_to_spool
from .satreport import SatelliteReport
from .satspool import SpoolDrain, SpoolWriter, spool_backlog
from .seed import SeedProgress, copied_tables, copy_member_rows
from .slots import ensure_slot

log = logging.getLogger(__name__)

DRAIN_IDLE = 0.2  # seconds between looks at an empty spool

# Which of the given schema.table names have no relation here. Names travel as a bind
# parameter and are quoted by format('%I'), never spliced into the statement.
MISSING_TABLES_SQL = (
    "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(format('%I.%I', "
    "split_part(t, '.', 1), split_part(t, '.', 2))) IS NULL ORDER BY t")


async def missing_tables(conn: Any, tables: tuple[str, ...]) -> tuple[str, ...]:
    """The satellite's tables that do not exist at the parent (`conn`)."""
    return tuple(r[0] for r in await conn.fetch(MISSING_TABLES_SQL, list(tables)))


@dataclass
class _Running:
    info: SatelliteInfo
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def prepare_satellite(cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile,
                            stmt: float) -> None:
    """The satellite's side, idempotently: the ringkeeper schema, the publication of its
    tables (before its slot), tombstone triggers, and every ring origin its applier
    uses."""
    if sat.dsn is None:
        raise OSError(f"satellite {sat.name} has no address yet")
    conn = await connect(sat.dsn, command_timeout=SLOW_STATEMENT_SECONDS, timeout=stmt)
    try:
        await catalog.check_server(conn)
        await prepare_capture(conn, cfg.ring, sat.table_names, ())
        await ensure_origins(conn, profile, cfg.ring, cfg.origins)
    finally:
        await close_quietly(conn)


class SatelliteKeeper:
    """The satellites of one member, run from its sidecar while it is primary."""

    def __init__(self, member: str, local_dsn: str, config: ConfigSource) -> None:
        self.member = member
        self.local_dsn = local_dsn
        self.config = config
        self.reports: dict[str, SatelliteReport] = {}
        self._running: dict[str, _Running] = {}
        # The up and drain loops both prepare the satellite: one at a time (two sessions
        # creating its triggers at once fail one of them).
        self._prepare = asyncio.Lock()

    async def run(self, profile: EngineProfile, stop: asyncio.Event) -> None:
        """Keep every satellite of this member running until `stop`; a failure of this
        loop itself (the config unreadable, say) is logged and retried, never fatal to
        the member's links."""
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._run(profile, stop)
                return
            except MEMBER_ERRORS as exc:  # LINK_ERRORS and ValueError
                log.warning("satellites of %s: %s", self.member, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    async def _run(self, profile: EngineProfile, stop: asyncio.Event) -> None:
        last_measure = 0.0
        try:
            while not stop.is_set():
                cfg = await self.config()
                wanted = {s.name: s for s in cfg.satellites_of(self.member)}
                for name in list(self._running):
                    if wanted.get(name) != self._running[name].info:
                        await self._end(name)
                        if name not in wanted:
                            self.reports.pop(name, None)
                for name, sat in wanted.items():
                    if name not in self._running:
                        self._start(cfg, sat, profile)
                if time.monotonic() - last_measure >= 1.0 and wanted:
                    last_measure = time.monotonic()
                    await self._measure(cfg)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            for name in list(self._running):
                await self._end(name)

    async def finish(self, task: asyncio.Task[None], timeout: float) -> None:
        """Wait for `run` (told to stop) to end, at most `timeout`; never raises."""
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            log.warning("satellites of %s did not stop in time", self.member)
        except MEMBER_ERRORS as exc:
            log.warning("satellites of %s: %s", self.member, exc)

    def _start(self, cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile) -> None:
        up_slot = names.link_slot_name(cfg.ring, sat.name, self.member)
        down_slot = names.link_slot_name(cfg.ring, self.member, sat.name)
        rep = self.reports.get(sat.name)
        if rep is None:
            rep = SatelliteReport(sat.name, self.member,
                                  LinkReport(sat.name, self.member, up_slot),
                                  LinkReport(self.member, sat.name, down_slot))
            self.reports[sat.name] = rep
        rep.tables = sat.table_names
        run = _Running(sat, asyncio.Event())
        for loop in (self._up, self._spool, self._drain):
            run.tasks.append(asyncio.create_task(
                self._retry(loop, cfg, sat, profile, rep, run.stop)))
        self._running[sat.name] = run

    async def _end(self, name: str) -> None:
        run = self._running.pop(name)
        run.stop.set()
        _, late = await asyncio.wait(run.tasks, timeout=10)
        for t in late:
            t.cancel()
        if late:
            await asyncio.wait(late, timeout=10)

    async def _measure(self, cfg: RingConfig) -> None:
        stmt = statement_seconds(cfg.bypass_after_seconds)
        try:
            conn = await connect(self.local_dsn, command_timeout=stmt, timeout=stmt)
        except TRANSIENT as exc:
            log.warning("satellite backlog: %s", exc)
            return
        try:
            for name, rep in self.reports.items():
                rep.spool_rows, rep.spool_bytes, rep.spool_oldest_hours = \
                    await spool_backlog(conn, name)
                rep.measured()
                rep.missing_at_parent = await missing_tables(conn, rep.tables)
        except TRANSIENT as exc:
            log.warning("satellite backlog: %s", exc)
        finally:
            await close_quietly(conn)

    async def _retry(self, loop: Callable[..., Coroutine[Any, Any, None]], cfg: RingConfig,
                     sat: SatelliteInfo, profile: EngineProfile, rep: SatelliteReport,
                     stop: asyncio.Event) -> None:
        """One loop, again after each failure with backoff; the failure in the report."""
        backoff = 0.2
        report = {self._up: rep.up, self._spool: rep.down}.get(loop)
        while not stop.is_set():
            try:
                await loop(cfg, sat, profile, rep, stop)
                backoff = 0.2
                if report is not None and report.running:
                    report.stopped(None, None)
            except LINK_ERRORS as exc:
                message = str(exc) or type(exc).__name__
                fault = ringmember.link_fault(
                    slot_lost=False, silent=isinstance(exc, SourceSilent),
                    unreachable=isinstance(exc, UNREACHABLE), own_answers=True)
                if report is not None:
                    report.stopped(fault, message)
                else:
                    rep.drain_error = message
                log.warning("satellite %s (%s): %s", sat.name, loop.__name__.strip("_"),
                            message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 3.0)

    async def _members_know(self, cfg: RingConfig, sat: SatelliteInfo, stmt: float) -> None:
        """Raise until every other member that answers has the satellite's origin. A
        member's sidecar makes it when it reads a config with the satellite (setup, or
        a link restarted for new carried origins, sync/sidecar.py), so a member with the
        origin no longer reads this member with `origin 'none'`: a satellite change
        applied here before that could be filtered out and confirmed past, lost there.
        A member that does not answer reads the config afresh when it is back."""
        origin = names.origin_name(cfg.ring, sat.name)
        for m in cfg.members:
            if m.name == self.member or m.dsn is None:
                continue
            try:
                conn = await connect(m.dsn, command_timeout=stmt, timeout=stmt)
            except TRANSIENT:
                continue
            try:
                table = profile_for(m.engine, m.version).sql.replication_origin
                known = await conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE roname = $1", origin)
            finally:
                await close_quietly(conn)
            if not known:
                raise RuntimeError(f"member {m.name} has not read satellite {sat.name} in "
                                   "its config yet: the satellite's writes wait for it")

    async def _up(self, cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile,
                  rep: SatelliteReport, stop: asyncio.Event) -> None:
        """The satellite's own writes, applied here under its origin, once every member
        carries that origin on."""
        stmt = statement_seconds(cfg.bypass_after_seconds)
        await self._members_know(cfg, sat, stmt)
        sat_profile = profile_for(sat.engine, sat.version)
        async with self._prepare:
            await prepare_satellite(cfg, sat, sat_profile, stmt)
        assert sat.dsn is not None
        local = await connect(self.local_dsn, command_timeout=APPLY_STATEMENT_SECONDS,
                              timeout=stmt)
        try:
            # The satellite's origin here (it may have joined the config after setup).
            await ensure_origins(local, profile, cfg.ring, cfg.origins)
            await self._copy_up(cfg, sat, profile, sat_profile, rep, local, stmt)
            applier = Applier(local, profile, cfg.ring, self.member, cfg.priorities(),
                              cfg.policy)
            await applier.start()
            link = LinkStream(ring=cfg.ring, source=sat.name, local=self.member,
                              source_dsn=sat.dsn, slot=rep.up.slot, applier=applier,
                              profile=profile, source_profile=sat_profile,
                              carries=frozenset({sat.name}), status=rep.up,
                              bypass_after_seconds=cfg.bypass_after_seconds)
            await link.open()
            rep.touch()
            await link.run(stop)
        finally:
            await close_quietly(local)

    async def _copy_up(self, cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile,
                       sat_profile: EngineProfile, rep: SatelliteReport,
                       local: Any, stmt: float) -> None:
        """The satellite's own rows of its tables not yet copied here: from a snapshot
        of the satellite taken after its up slot exists (the seed's rule, module
        docstring of sync/seed.py), applied here under its origin, LSN 0/0."""
        done = {rel for src, rel in await copied_tables(local, cfg.ring) if src == sat.name}
        if rep.copy_up is not None and rep.copy_up.state == "Done" and \
                set(sat.table_names) <= done:
            return
        progress = rep.copy_up = SeedProgress(self.member, sat.name)
        if set(sat.table_names) <= done:
            progress.state = "Done"
            return
        assert sat.dsn is not None
        src = await connect(sat.dsn, command_timeout=SLOW_STATEMENT_SECONDS, timeout=stmt)
        try:
            await ensure_slot(src, sat_profile, rep.up.slot, cfg.ring)
        finally:
            await close_quietly(src)
        tables, _ = await catalog.replicated_tables(
            local, [t for t in sat.table_names if t not in done], [])
        progress.state = "Copying"
        try:
            result = await copy_member_rows(
                self.local_dsn, profile, cfg.ring, self.member, cfg.names,
                cfg.priorities(), cfg.policy, sat.name, sat.dsn, tables, progress)
        except BaseException as exc:
            progress.state, progress.message = "Waiting", str(exc) or type(exc).__name__
            raise
        missing = set(sat.table_names) - done - {t.relation for t in tables}
        if result.waiting or missing:
            progress.state = "Waiting"
            progress.message = ("the satellite's own rows of "
                                f"{', '.join(sorted({*result.waiting, *missing}))} wait: "
                                "not in its publication, or not a ring table here")
            raise RuntimeError(progress.message)
        progress.state = "Done"

    async def _spool(self, cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile,
                     rep: SatelliteReport, stop: asyncio.Event) -> None:
        """The parent's slot for the satellite, into the parent's spool."""
        stmt = statement_seconds(cfg.bypass_after_seconds)
        local = await connect(self.local_dsn, command_timeout=SLOW_STATEMENT_SECONDS,
                              timeout=stmt)
        try:
            if rep.copy.state != "Done":
                if await copy_done(local, sat):
                    progress = rep.copy  # a copy's progress, not a link's state
                    progress.state = "Done"
                else:
                    # The slot first (at its consistent point), then the snapshot; the
                    # link below reads the slot only once the copy is in the spool.
                    await ensure_slot(local, profile, rep.down.slot, cfg.ring)
                    await copy_to_spool(self.local_dsn, profile, cfg, sat, self.member,
                                        rep.copy)
            writer = SpoolWriter(local, profile, cfg.ring, sat)
            await writer.start()
            link = LinkStream(ring=cfg.ring, source=self.member, local=sat.name,
                              source_dsn=self.local_dsn, slot=rep.down.slot, applier=writer,
                              profile=profile, source_profile=profile,
                              carries=frozenset(cfg.origins) - {sat.name}, status=rep.down,
                              bypass_after_seconds=cfg.bypass_after_seconds)
            await link.open()
            await link.run(stop)
        finally:
            await close_quietly(local)

    async def _drain(self, cfg: RingConfig, sat: SatelliteInfo, profile: EngineProfile,
                     rep: SatelliteReport, stop: asyncio.Event) -> None:
        """The spool, applied at the satellite in order."""
        stmt = statement_seconds(cfg.bypass_after_seconds)
        sat_profile = profile_for(sat.engine, sat.version)
        async with self._prepare:
            await prepare_satellite(cfg, sat, sat_profile, stmt)
        assert sat.dsn is not None
        parent = await connect(self.local_dsn, command_timeout=stmt, timeout=stmt)
        target = None
        try:
            target = await connect(sat.dsn, command_timeout=APPLY_STATEMENT_SECONDS,
                                   timeout=stmt)
            applier = Applier(target, sat_profile, cfg.ring, sat.name, cfg.priorities(),
                              cfg.policy)
            await applier.start()
            drain = SpoolDrain(parent, applier, sat_profile, cfg.ring, sat.name)
            rep.drain_error = None
            base = rep.drained_rows
            last_park = 0.0
            while not stop.is_set():
                if time.monotonic() - last_park >= PARK_RETRY_EVERY:
                    # Changes parked at the satellite (a table it lacked) are applied
                    # once the table matches; until then the report says what waits.
                    last_park = time.monotonic()
                    parked = await drain.retry_parked()
                    rep.drain_error = ("changes wait at the satellite for "
                                       + "; ".join(f"{t}: {why}" for t, why in
                                                   sorted(parked.items()))) if parked else None
                try:
                    n = await asyncio.wait_for(drain.once(), APPLY_STATEMENT_SECONDS)
                except BaseException:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(applier.abort(), stmt)
                    raise
                rep.touch()
                rep.drained_rows = base + drain.stats.applied_rows
                if n == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), DRAIN_IDLE)
        finally:
            await close_quietly(target)
            await close_quietly(parent)
