"""A hung member (its PostgreSQL frozen with SIGSTOP) is detected and bypassed.

A frozen server keeps its sockets open: nothing fails, everything waits. Issue 14
saw a ring where nothing written elsewhere reached the member after the frozen one
while its link said Streaming, lag 0. Here a ring of three real servers with real
sidecars runs a writer at every member that keeps a ledger of every acknowledged
commit; member b's postmaster and every backend are stopped (SIGSTOP), and the test
shows that

(a) rows written at a (before b) reach c (after b) within bypassAfterSeconds plus
    SLACK while b is frozen;
(b) during the freeze neither b's incoming link (a->b, TargetDown: b's own database,
    not a, is at fault) nor its outgoing one (b->c) says Streaming with lag 0;
(c) after the thaw every acknowledged commit is at every member.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.api.v1alpha1.ring import LinkState
from ringkeeper.core.liveness import liveness_seconds, statement_seconds

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.postgres

MAJORS = ("17", "18", "15")
for _m in set(MAJORS):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

BYPASS_AFTER = 8
# Beyond bypassAfterSeconds: the serve loop's pace (its calls to the frozen member
# time out), stopping the old link, copying a's hold slot for the new one, and the
# first apply.
SLACK = 10.0


def server_processes(server: PgServer) -> list[int]:
    """The postmaster (from postmaster.pid) and every process below it. Backends call
    setsid(), so a process-group signal would miss them: walk the parent links."""
    root = int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], deque([root])
    while todo:
        pid = todo.popleft()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class Writer:
    """Single-row transactions at one member; `acked` holds every id whose COMMIT
    returned. A commit that timed out is not acknowledged (it may or may not land)."""

    ring: LocalRing
    member: str
    base: int
    acked: list[int] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    failures: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        next_id = self.base
        conn: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.ring.servers[self.member].dsn(),
                                                 timeout=2, command_timeout=2)
                next_id += 1
                await conn.execute(
                    "INSERT INTO lis.samples (id, campus, status) VALUES ($1, $2, 'new')",
                    next_id, self.member)
                self.acked.append(next_id)
                self.acked_at.append(time.monotonic())
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError):
                self.failures += 1
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(0.2)
                continue
            await asyncio.sleep(0.05)
        if conn is not None:
            await conn.close()


async def missing_at(ring: LocalRing, writers: list[Writer]) -> dict[str, int]:
    """Per member, how many acknowledged ids (of every writer) it lacks."""
    want = [i for w in writers for i in w.acked]
    out = {}
    for n in ring.names:
        c = await ring.conn(n)
        try:
            have = await c.fetchval("SELECT count(*) FROM lis.samples WHERE id = ANY($1)",
                                    want)
        finally:
            await c.close()
        out[n] = len(want) - int(have)
    return out


async def present(ring: LocalRing, member: str, row_id: int) -> bool:
    c = await ring.conn(member)
    try:
        return bool(await c.fetchval("SELECT EXISTS (SELECT 1 FROM lis.samples WHERE id = $1)",
                                     row_id))
    finally:
        await c.close()


async def test_frozen_member_is_bypassed_and_nothing_acknowledged_is_lost() -> None:
    ring = LocalRing(MAJORS, bypass_after=BYPASS_AFTER)
    ring.start_servers()
    stop = asyncio.Event()
    writers = [Writer(ring, n, (i + 1) * 10_000_000) for i, n in enumerate(ring.names)]
    tasks: list[asyncio.Task[None]] = []
    try:
        await _freeze_and_thaw(ring, writers, stop, tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ring.stop_all()
        ring.destroy()


async def _freeze_and_thaw(ring: LocalRing, writers: list[Writer], stop: asyncio.Event,
                           tasks: list[asyncio.Task[None]]) -> None:
    await ring.start_streaming()
    tasks += [asyncio.create_task(w.run(stop)) for w in writers]
    await asyncio.sleep(3)  # commits before the fault
    a, b, _ = writers
    sc_b, sc_c = ring.sidecars["b"], ring.sidecars["c"]
    frozen = server_processes(ring.servers["b"])
    try:
        signal_all(frozen, signal.SIGSTOP)
        t0 = time.monotonic()
        # Judge statuses only once detection had its time: the silence window (plus a
        # ping interval) for b->c, the own-database check's statement time-out for a->b.
        judged_from = t0 + statement_seconds(BYPASS_AFTER) + 3
        first_a = len(a.acked)  # a's first commit during the freeze
        arrived: float | None = None
        left_streaming: float | None = None
        bypass_at: float | None = None
        samples = 0
        while time.monotonic() - t0 < BYPASS_AFTER + SLACK + 5:
            now = time.monotonic()
            out = sc_c.state.links.get("b->c")
            inc = sc_b.state.links.get("a->b")
            if left_streaming is None and (out is None or out.state != LinkState.STREAMING):
                left_streaming = now - t0
            via_a = sc_c.state.links.get("a->c")
            if bypass_at is None and via_a is not None and via_a.bypassing == ("b",):
                bypass_at = now - t0
            if now >= judged_from:
                samples += 1
                # (b) never Streaming with lag 0 while b is frozen.
                if out is not None:
                    assert out.state in (LinkState.STALLED, LinkState.DOWN), out.as_dict()
                    assert (out.lag_seconds or 0) >= liveness_seconds(BYPASS_AFTER), \
                        out.as_dict()
                assert inc is not None and inc.state == LinkState.TARGET_DOWN, \
                    inc and inc.as_dict()
                assert (inc.lag_seconds or 0) > 0, inc.as_dict()
                assert sc_b.state.role == "Unreachable", sc_b.state.as_dict()
                # b's own outage is not blamed on a.
                assert "a" not in sc_b._down_since, sc_b._down_since
            if arrived is None and len(a.acked) > first_a and \
                    await present(ring, "c", a.acked[first_a]):
                arrived = now - t0
            if arrived is not None and now >= judged_from + 3:
                break
            await asyncio.sleep(0.25)
        print(f"\nliveness {liveness_seconds(BYPASS_AFTER)}s, bypassAfterSeconds "
              f"{BYPASS_AFTER}s: b->c left Streaming after {left_streaming}s, c bypassed "
              f"b after {bypass_at}s, a's first row written in the freeze reached c after "
              f"{arrived}s; {samples} status samples during the freeze")
        assert samples >= 4
        # (a) a's rows reach c while b is frozen, within bypassAfterSeconds + SLACK.
        assert arrived is not None and arrived <= BYPASS_AFTER + SLACK, arrived
        assert bypass_at is not None
    finally:
        signal_all(frozen, signal.SIGCONT)
    thawed = time.monotonic()
    await asyncio.sleep(3)  # commits after the thaw
    stop.set()
    await asyncio.gather(*tasks)
    assert all(len(w.acked) > 0 for w in writers)
    assert b.acked_at[-1] > thawed, "b's writer did not commit after the thaw"

    async def complete() -> bool:
        return not any((await missing_at(ring, writers)).values())

    # (c) every acknowledged commit at every member.
    try:
        await wait_until("every acknowledged commit at every member", complete, 60)
    except AssertionError:
        raise AssertionError(f"acknowledged commits missing: {await missing_at(ring, writers)}"
                             f" of {sum(len(w.acked) for w in writers)}") from None
    await wait_until("the ring to close through b again",
                     lambda: _streams(ring, "c", "b->c"), 30)


async def _streams(ring: LocalRing, member: str, key: str) -> bool:
    lk = ring.sidecars[member].state.links.get(key)
    return lk is not None and lk.state == LinkState.STREAMING
