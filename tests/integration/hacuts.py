"""Tools for cutting a LocalCampus apart and playing the operator's HA loop over it.

- TcpProxy: replication runs through it (the Campus file gives the primary's pod
  address as the proxy's); `cut()` black-holes every byte both ways, as a partition
  that drops packets would (connections stay open, nothing arrives); `heal()` resets the
  held connections and forwards again.
- OperatorLoop: what controller.campus.ha_cycle decides, cycle by cycle, on the agents'
  answers: core.ha.standby_cut and primary_verdict, the synchronous snapshot and
  status.instances while healthy, failingSince while suspect, run_failover when failed.
- Writer: a ledger of acknowledged commits through whichever instance the Campus names
  primary, with the time each one returned.
- RoleSampler: several times a second, every instance is asked to acknowledge an INSERT;
  two instances acknowledging in the same round, or the old primary acknowledging after
  another instance did, is a split brain.

bench/failover.py uses these for its local scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from integration.localcampus import LocalCampus, agent_client
from ringkeeper.controller.failover import FailoverOutcome, run_failover
from ringkeeper.core.ha import instances_status, snapshot_to_status
from ringkeeper.core.haplan import CampusSnapshot, HaStepKind, plan_cycle


class TcpProxy:
    """host:port -> target:port, with a switch that drops every byte (a black hole)."""

    def __init__(self, host: str, target: str, port: int = 5432) -> None:
        self.host, self.target, self.port = host, target, port
        self.black_hole = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.forwarding = 0  # connections being forwarded now
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, self.host, self.port)

    async def stop(self) -> None:
        self._reset_all()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def cut(self) -> None:
        self.black_hole = True

    def heal(self) -> None:
        """Connections held through the cut are reset (their peers' timeouts would end
        them); new ones are forwarded."""
        self._reset_all()
        self.black_hole = False

    def _reset_all(self) -> None:
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        self.writers.add(writer)
        if self.black_hole:  # accepted, never answered
            await self._drain_into_nothing(reader)
            return
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(self.target, self.port), 3)
        except (OSError, TimeoutError):
            writer.close()
            return
        self.writers.add(up_w)
        self.forwarding += 1
        try:
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer),
                                 return_exceptions=True)
        finally:
            self.forwarding -= 1
        for w in (writer, up_w):
            w.close()
            self.writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data or writer.is_closing():
                break
            if self.black_hole:
                continue  # dropped: the other side never hears of it
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _drain_into_nothing(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass


async def gather_status(agents: Any, ips: Mapping[str, str], names: list[str],
                        deadline: float = 2.0) -> dict[str, Any]:
    async def one(n: str) -> Any:
        if n not in ips:
            return None
        try:
            return await asyncio.wait_for(agents.status(ips[n]), deadline)
        except TimeoutError:
            return None

    results = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, results, strict=True))


@dataclass
class OperatorLoop:
    """One operator, as controller.campus.ha_cycle decides (without Kubernetes)."""

    c: LocalCampus
    http: aiohttp.ClientSession
    detection: float
    ips: dict[str, str] = field(default_factory=dict)
    period: float = 0.5
    outcomes: list[tuple[float, FailoverOutcome]] = field(default_factory=list)
    failing_since: datetime | None = None
    first_suspect: float | None = None
    last_reason: str = ""
    last_facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ips:
            self.ips = dict(self.c.ips)
        self.agents = agent_client(self.http)

    async def cycle(self) -> FailoverOutcome | None:
        campus = await self.c.store.read()
        status = campus.get("status") or {}
        current = status.get("currentPrimary")
        assert current, "the campus has a primary"
        raws = await gather_status(self.agents, self.ips, self.c.names)
        self.last_facts = {n: None if r is None else {
            "ha": r.get("ha"), "standbys": (r.get("server") or {}).get("standbys"),
            "receiver": (r.get("server") or {}).get("receiver")} for n, r in raws.items()}
        # The decision is controller.campus.ha_cycle's own: core.haplan.plan_cycle.
        step = plan_cycle(CampusSnapshot(
            name=self.c.name, spec=campus["spec"], names=tuple(self.c.names),
            current=current, target=status.get("targetPrimary"),
            failing_since=self.failing_since, last_failover=status.get("lastFailover"),
            raws=raws, ready={n: raws[n] is not None for n in raws},
            addressed=frozenset(self.ips), switchover=None, now=datetime.now(UTC),
            since_write=float("inf")))
        self.last_reason = step.reason
        if step.kind is HaStepKind.PUBLISH:
            self.failing_since, self.first_suspect = None, None
            patch: dict[str, Any] = {"failingSince": None, "instances": instances_status(
                # The pod addresses the agents resolve (the proxy's, where one is used).
                self.c.names, raws, campus.get("podIPs") or self.c.ips,
                {n: raws[n] is not None for n in raws},
                raws.get(current))}
            if step.sync is not None:
                patch["syncSnapshot"] = snapshot_to_status(step.sync)
            await self.c.store.patch_status(patch, None)
            return None
        if step.kind is HaStepKind.MARK_SUSPECT:
            self.failing_since, self.first_suspect = step.failing_since, time.monotonic()
            stamp = (step.failing_since or datetime.now(UTC)).replace(microsecond=0)
            await self.c.store.patch_status(
                {"failingSince": stamp.isoformat().replace("+00:00", "Z")}, None)
            return None
        if step.kind is HaStepKind.AWAIT_SUSPECT:
            return None
        assert step.kind in (HaStepKind.FAILOVER, HaStepKind.RESUME_FAILOVER), step
        outcome = await run_failover(store=self.c.store, agents=self.agents,
                                     roles=self.c.recorder, events=self.c.recorder,
                                     ips=self.ips, reason=step.reason)
        self.outcomes.append((time.monotonic(), outcome))
        self.failing_since, self.first_suspect = None, None
        return outcome

    async def until_failover(self, timeout: float) -> tuple[float, FailoverOutcome]:
        """Cycles until a failover ran; (when it returned, its outcome)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = time.monotonic()
            outcome = await self.cycle()
            if outcome is not None:
                return self.outcomes[-1][0], outcome
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t)))
        raise AssertionError(f"no failover within {timeout:.0f}s; last verdict: "
                             f"{self.last_reason}; facts: {self.last_facts}")

    async def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.monotonic()
            await self.cycle()
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t)))


class Writer:
    """Commits through the instance the Campus names primary; `acked` maps each
    acknowledged id to the monotonic time its commit returned."""

    def __init__(self, c: LocalCampus, pause: float = 0.05, writers: int = 1,
                 timeout: float = 2.0) -> None:
        self.c = c
        self.pause = pause
        self.writers = writers  # concurrent clients: one stuck on a dead primary is not all
        self.timeout = timeout
        self.acked: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.next = 0
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def primary(self) -> str:
        return str(json.loads(self.c.file.read_text())["status"]["currentPrimary"])

    async def write_one(self, timeout: float = 2.0) -> bool:
        i, self.next = self.next, self.next + 1
        self.started[i] = time.monotonic()
        try:
            conn = await asyncpg.connect(**self.c.dsn(self.primary()), timeout=timeout)
        except Exception:
            return False
        try:
            await conn.execute("INSERT INTO acked VALUES ($1, $2)", i, f"row {i}",
                               timeout=timeout)
        except Exception:  # timed out, cancelled, refused: not acknowledged
            return False
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1)
        self.acked[i] = time.monotonic()
        return True

    async def run(self) -> None:
        async def one() -> None:
            while not self.stop.is_set():
                await self.write_one(self.timeout)
                await asyncio.sleep(self.pause)

        await asyncio.gather(*(one() for _ in range(self.writers)))

    async def start(self) -> None:
        conn = await asyncpg.connect(**self.c.dsn(self.primary()), timeout=5)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY, v text)")
            await conn.execute("CREATE TABLE IF NOT EXISTS probe (id bigint PRIMARY KEY, "
                               "instance text)")
        finally:
            await conn.close()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    def outage_after(self, t: float) -> float | None:
        """Seconds from `t` to the first acknowledged commit of a write begun after it."""
        after = [v for i, v in self.acked.items() if self.started[i] >= t]
        return min(after) - t if after else None

    async def missing_on(self, name: str) -> set[int]:
        conn = await asyncpg.connect(**self.c.dsn(name), timeout=5)
        try:
            have = {r["id"] for r in await conn.fetch("SELECT id FROM acked")}
        finally:
            await conn.close()
        return set(self.acked) - have


class RoleSampler:
    """Every `every` seconds, each instance is asked (fresh connection, short timeouts)
    to acknowledge an INSERT into `probe`."""

    def __init__(self, c: LocalCampus, old: str, every: float = 0.25) -> None:
        self.c, self.old, self.every = c, old, every
        self.rounds = 0
        self.acks: list[tuple[float, str]] = []
        self.violations: list[str] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.seq = 0
        self.marks: list[tuple[float, str]] = []

    async def _probe(self, name: str) -> bool:
        self.seq += 1
        key = self.seq
        try:
            conn = await asyncpg.connect(**self.c.dsn(name), timeout=0.5)
        except Exception:
            return False
        try:
            await conn.execute("INSERT INTO probe VALUES ($1, $2)", key, name, timeout=0.7)
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 0.5)

    async def run(self) -> None:
        others_acked, watched = False, self.old
        while not self.stop.is_set():
            if self.old != watched:  # a new round of faults watches another old primary
                others_acked, watched = False, self.old
            self.rounds += 1
            t = time.monotonic()
            answers = await asyncio.gather(*(self._probe(n) for n in self.c.names))
            writable = [n for n, ok in zip(self.c.names, answers, strict=True) if ok]
            for n in writable:
                self.acks.append((t, n))
            if len(writable) > 1:
                self.violations.append(f"round {self.rounds}: {writable} all acknowledged"
                                       + self._when(t))
            # Judged against the primary this round watched: `old` may change while the
            # probes are out, and the next round starts a new watch (a change mid-round
            # once read the new round's primary against the last round's acks).
            if watched in writable and others_acked:
                self.violations.append(f"round {self.rounds}: the old primary {watched} "
                                       "acknowledged after another instance did"
                                       + self._when(t))
            others_acked = others_acked or any(n != watched for n in writable)
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - t)))

    def mark(self, what: str) -> None:
        """Note an event, so a violation can be read against the faults around it."""
        self.marks.append((time.monotonic(), what))

    def _when(self, t: float) -> str:
        before = [(at, what) for at, what in self.marks if at <= t]
        if not before:
            return ""
        at, what = before[-1]
        return f" ({t - at:.2f}s after {what})"

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
