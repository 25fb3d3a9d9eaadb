"""Issue 15 on real servers: a hung primary, a thawed one, a rejoin after SIGKILL.

Real PostgreSQL 17 servers run by real `ringkeeper agent` processes (LocalCampus), the
operator's failover runner driven directly. Every test keeps a ledger of acknowledged
writes (a commit that returned) before, during and after the failure, and finds each
one on every instance at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from integration.localcampus import LocalCampus, agent_client, wait_until
from integration.test_agent_failover import (  # noqa: F401 (fixtures)
    _bootstrap,
    _need,
    _record_snapshot,
    root,
    session,
)
from ringkeeper.controller.failover import run_failover
from ringkeeper.core.ha import PrimaryState, fence_barrier, primary_verdict, to_report

pytestmark = pytest.mark.postgres

DETECTION = 2.0
# Above the detection delay (admission keeps it below; the file agent skips admission):
# the thaw below slows the API server to 1 s a read, and a limit of 1 s would fence the
# new primary too, whose peers do not all vouch for it while the old one rejoins.
SELF_FENCE = 3
SPEC = {"synchronous": {"method": "any", "number": 1, "dataDurability": "required"},
        "failover": {"detectionDelaySeconds": int(DETECTION),
                     "selfFenceAfterSeconds": SELF_FENCE}}


class Ledger:
    """Writes through whichever instance the Campus names primary; records each commit
    that returned. A write that times out or fails is not acknowledged and not recorded."""

    def __init__(self, c: LocalCampus) -> None:
        self.c = c
        self.acked: set[int] = set()
        self.next = 0
        self.stop = asyncio.Event()

    def primary(self) -> str:
        return str(json.loads(self.c.file.read_text())["status"]["currentPrimary"])

    async def write_one(self, name: str | None = None, timeout: float = 2.0) -> bool:
        i, self.next = self.next, self.next + 1
        try:
            conn = await asyncpg.connect(**self.c.dsn(name or self.primary()), timeout=timeout)
        except Exception:
            return False
        try:
            await conn.execute("INSERT INTO acked VALUES ($1, $2)", i, f"row {i}",
                               timeout=timeout)
        except Exception:  # any client-side failure (asyncpg's InternalClientError after
            return False  # a cancelled wait, too): not acknowledged
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1)
        self.acked.add(i)
        return True

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.write_one()
            await asyncio.sleep(0.05)

    async def missing_on(self, name: str) -> set[int]:
        conn = await asyncpg.connect(**self.c.dsn(name), timeout=5)
        try:
            have = {r["id"] for r in await conn.fetch("SELECT id FROM acked")}
        finally:
            await conn.close()
        return self.acked - have


@contextlib.asynccontextmanager
async def ledger(c: LocalCampus) -> AsyncIterator[Ledger]:
    conn = await asyncpg.connect(**c.dsn(c.names[0]), timeout=5)
    await conn.execute("CREATE TABLE acked (id int PRIMARY KEY, v text)")
    await conn.close()
    led = Ledger(c)
    task = asyncio.get_running_loop().create_task(led.run())
    try:
        yield led
    finally:
        led.stop.set()
        await task


async def _everything_everywhere(c: LocalCampus, led: Ledger) -> None:
    """Every acknowledged write is on every instance (replicas replay within a minute)."""
    for name in c.names:
        async def complete(name: str = name) -> bool:
            return not await led.missing_on(name)

        await wait_until(f"every acknowledged write on {name}", complete, timeout=60)


async def _detect_and_fail_over(c: LocalCampus, http: aiohttp.ClientSession, old: str
                                ) -> tuple[str, float, float]:
    """Play the operator's HA loop: probe the primary, call it failed with primary_verdict
    after the detection delay, run the failover runner. Returns (promoted, seconds from the
    first failed probe to the runner's return, seconds the runner took)."""
    agents = agent_client(http)
    failing_since: datetime | None = None
    first_failed = 0.0
    while True:
        probe_at, probe_mono = datetime.now(UTC), time.monotonic()
        raw = await agents.status(c.ips[old])
        verdict = primary_verdict(old, to_report(old, raw), raw is not None, failing_since,
                                  probe_at, DETECTION)
        if verdict.state == PrimaryState.HEALTHY:
            failing_since = None
        elif failing_since is None:
            failing_since, first_failed = verdict.failing_since, probe_mono
        if verdict.state == PrimaryState.FAILED:
            break
        await asyncio.sleep(0.2)
    t0 = time.monotonic()
    outcome = await run_failover(store=c.store, agents=agents, roles=c.recorder,
                                 events=c.recorder, ips=c.ips, reason="primary failed")
    done = time.monotonic()
    assert outcome.promoted in c.names and outcome.promoted != old, outcome.message
    return outcome.promoted, done - first_failed, done - t0


def _stopped(pid: int | None) -> bool:
    """Whether a process is stopped (state T in /proc/<pid>/stat)."""
    if pid is None:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


THAW_WINDOW = 0.25  # seconds: the watchdog's period plus one scheduling round


async def _sample_never_writable(c: LocalCampus, name: str, seconds: float
                                 ) -> tuple[int, list[str]]:
    """Several times a second: a fresh connection asks pg_is_in_recovery() and tries an
    INSERT. An INSERT that returns is a violation, and so is a false answer later than
    THAW_WINDOW after the thaw. Within that window the thawed postmaster may answer one
    connection before the thawed agent's watchdog (every 0.1 s) has killed it: the known
    residual (closing it needs a guard inside the server); it is printed, not hidden."""
    violations: list[str] = []
    samples = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples += 1
        since = seconds - (end - time.monotonic())
        at = f"{since:.2f}s after thaw"
        try:
            conn = await asyncpg.connect(**c.dsn(name), timeout=0.5)
        except Exception:
            await asyncio.sleep(0.15)
            continue
        try:
            with contextlib.suppress(Exception):
                if await conn.fetchval("SELECT pg_is_in_recovery()", timeout=0.5) is False:
                    if since > THAW_WINDOW:
                        violations.append(f"out of recovery {at}")
                    else:
                        print(f"residual: out of recovery {at} (within the watchdog's window)")
            try:
                await conn.execute("INSERT INTO acked VALUES ($1, 'thawed')", -samples,
                                   timeout=0.5)
            except Exception:
                pass  # refused, timed out, cancelled: not a write
            else:
                violations.append(f"INSERT acknowledged {at}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 0.5)
        await asyncio.sleep(0.15)
    return samples, violations


async def test_frozen_primary_replaced_fast_and_never_writable_after_thaw(
        root: Path, session: aiohttp.ClientSession) -> None:  # noqa: F811
    _need("17")
    c = LocalCampus(root / "campus", "17", subnet=6)
    agents = agent_client(session)
    try:
        await _bootstrap(c, session, SPEC)
        old = c.names[0]
        async with ledger(c) as led:
            await wait_until("writes before", lambda: _true(len(led.acked) >= 20))
            await _record_snapshot(c, session, old)
            c.freeze(old)
            promoted, since_failed, runner = await _detect_and_fail_over(c, session, old)
            print(f"failover runner {runner:.2f}s; first failed probe to promoted "
                  f"{since_failed:.2f}s")
            # The old primary is frozen, so its fence call gets no answer: the runner
            # waits out the fence barrier (core.ha.fence_barrier) before promoting.
            barrier = fence_barrier(False, SELF_FENCE)
            assert runner <= barrier + 5.0, f"the failover runner took {runner:.1f}s"
            assert since_failed <= DETECTION + barrier + 5.0, (
                f"{since_failed:.1f}s from the first failed probe to the new primary")
            # Writes through the new primary commit (ANY 1: the surviving replica follows)
            # while the old primary is still frozen.
            assert _stopped(c.server_pid(old)), "the old primary must still be frozen"
            t = time.monotonic()
            for _ in range(10):
                assert await led.write_one(promoted, timeout=5.0), "write on the new primary"
            assert time.monotonic() - t < 5.0
            assert _stopped(c.server_pid(old))
            before_thaw = len(led.acked)
            # The thawed agent learns the Campus only a second later (a slow API server,
            # as in the chaos run): its server must be unwritable before that answer.
            c.set_latency(1.0)
            c.thaw(old)
            samples, violations = await _sample_never_writable(c, old, 4.0)
            c.set_latency(0)
            print(f"{samples} samples of the thawed primary, violations: {violations}")
            assert samples >= 12
            assert violations == [], violations

            async def rejoined() -> bool:
                st = await agents.status(c.ips[old])
                return bool(st and st["role"] == "replica" and st["upstream"] == promoted)

            await wait_until("the thawed primary rejoining", rejoined, timeout=120)
            st = await agents.status(c.ips[old])
            assert st is not None
            assert (st["rejoinsByRewind"], st["rejoinsByBasebackup"]) == (1, 0), st
            await wait_until("writes after", lambda: _true(len(led.acked) >= before_thaw + 20))
        await _everything_everywhere(c, led)
    except BaseException:
        for n in c.names:
            print(f"--- {n}\n{c.log(n)}\n--- {n} server\n{c.server_log(n)}")
        raise
    finally:
        c.stop_all()


@pytest.mark.parametrize("major", ["15", "17"])
async def test_rejoin_after_sigkill_uses_pg_rewind(
        root: Path, session: aiohttp.ClientSession, major: str) -> None:  # noqa: F811
    """15 as well: before 16, pg_rewind right after a promotion found "the same timeline"
    unless the source had checkpointed, and the rejoined instance could never follow."""
    _need(major)
    c = LocalCampus(root / "campus", major, subnet=7)
    agents = agent_client(session)
    try:
        await _bootstrap(c, session, SPEC)
        old = c.names[0]
        async with ledger(c) as led:
            await wait_until("writes before", lambda: _true(len(led.acked) >= 50))
            await _record_snapshot(c, session, old)
            c.kill(old)  # SIGKILL the agent and its server mid-write
            promoted, _, _ = await _detect_and_fail_over(c, session, old)
            n = len(led.acked)
            await wait_until("writes on the new primary", lambda: _true(len(led.acked) >= n + 50))
            c.start(old)

            async def rejoined() -> bool:
                st = await agents.status(c.ips[old])
                return bool(st and st["role"] == "replica" and st["upstream"] == promoted)

            await wait_until("the killed primary rejoining", rejoined, timeout=120)
            st = await agents.status(c.ips[old])
            assert st is not None
            assert (st["rejoinsByRewind"], st["rejoinsByBasebackup"]) == (1, 0), st
            assert "crash recovery first: True" in c.log(old)
            n = len(led.acked)
            await wait_until("writes after", lambda: _true(len(led.acked) >= n + 20))
        await _everything_everywhere(c, led)
    except BaseException:
        for n in c.names:
            print(f"--- {n}\n{c.log(n)}\n--- {n} server\n{c.server_log(n)}")
        raise
    finally:
        c.stop_all()


async def _true(value: Any) -> Any:
    return value
