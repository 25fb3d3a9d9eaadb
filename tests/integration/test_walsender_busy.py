"""A busy walsender is not a hung member; a stuck one still is.

A walsender answers the link's pings between WAL records, and one record can take it
longer than the liveness window on a loaded host. Before the probe
(core.liveness.walsender_busy), a 1M-row transaction at bypassAfterSeconds 5 never
reached the third member: its link was ended 19 times in 300 s while the walsender
decoded, and each new session decoded the transaction from its start again.

Here, on a ring of two real servers with real sidecars and a writer at each member
that keeps a ledger of every acknowledged commit, the walsender of the link a->b alone
is stopped (SIGSTOP; its server and every other backend keep running):

(a) for less than BUSY_GRACE_WINDOWS liveness windows: the link is kept (same walsender,
    never stopped), and says Stalled with a lag, not Streaming with lag 0, meanwhile;
(b) for longer: the link is ended as a silent source, as a hung server's would be;
(c) afterwards every acknowledged commit is at both members (and the check fails on a
    row deleted on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest

from pgserver import unavailable
from ringkeeper.api.v1alpha1.ring import LinkState
from ringkeeper.core.liveness import BUSY_GRACE_WINDOWS, liveness_seconds
from ringkeeper.sync.linkreport import LinkReport

from .ringlocal import LocalRing, wait_until
from .test_ring_liveness import Writer, missing_at

pytestmark = pytest.mark.postgres

MAJORS = ("17", "18")
for _m in set(MAJORS):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

BYPASS_AFTER = 5
LIVENESS = liveness_seconds(BYPASS_AFTER)  # 1.25 s
GRACE = BUSY_GRACE_WINDOWS * LIVENESS  # 5 s without progress


async def _walsender(ring: LocalRing, slot: str) -> int | None:
    c = await ring.conn("a")
    try:
        pid = await c.fetchval("SELECT active_pid FROM pg_replication_slots "
                               "WHERE slot_name = $1", slot)
        return int(pid) if pid is not None else None
    finally:
        await c.close()


def _link(ring: LocalRing) -> LinkReport | None:
    return next((lk for lk in ring.sidecars["b"].state.links.values() if lk.source == "a"),
                None)


async def test_busy_walsender_keeps_its_link_and_a_stuck_one_loses_it() -> None:
    ring = LocalRing(MAJORS, bypass_after=BYPASS_AFTER)
    ring.start_servers()
    stop = asyncio.Event()
    writers = [Writer(ring, n, (i + 1) * 10_000_000) for i, n in enumerate(ring.names)]
    tasks: list[asyncio.Task[None]] = []
    slot = f"rk_{ring.ring}_a_to_b"
    pid: int | None = None
    try:
        await ring.start_streaming()
        tasks += [asyncio.create_task(w.run(stop)) for w in writers]
        await asyncio.sleep(2)  # commits before the fault
        pid = await _walsender(ring, slot)
        assert pid is not None

        # (a) Stopped for less than the grace: kept.
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        seen: set[LinkState] = set()
        while time.monotonic() - t0 < GRACE * 0.7:
            lk = _link(ring)
            assert lk is not None and lk.running and lk.fault is None, lk and lk.as_dict()
            seen.add(lk.state)
            # Never Down while it runs: not even while the watchdog asks the source's
            # server whether the walsender is busy (core.liveness.judge_link).
            assert lk.state != LinkState.DOWN, lk.as_dict()
            if lk.state == LinkState.STREAMING and time.monotonic() - t0 > LIVENESS * 1.5:
                assert not lk.lag_seconds, "Streaming with a lag: judged on stale data"
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGCONT)
        assert LinkState.STALLED in seen, seen
        await asyncio.sleep(LIVENESS)
        lk = _link(ring)
        assert lk is not None and lk.running and lk.fault is None, lk and lk.as_dict()
        assert await _walsender(ring, slot) == pid, "the link was ended and opened again"

        # (b) Stopped past the grace: ended as a silent source.
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        ended: float | None = None
        try:
            while time.monotonic() - t0 < GRACE + 4 * LIVENESS + 5:
                lk = _link(ring)
                if lk is not None and not lk.running:
                    ended = time.monotonic() - t0
                    assert "hung or cut off" in (lk.message or ""), lk.as_dict()
                    break
                await asyncio.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"\nliveness {LIVENESS}s, grace {GRACE}s: a stuck walsender's link ended "
              f"after {ended}s")
        assert ended is not None and ended >= GRACE, ended
        await asyncio.sleep(2)  # commits after the fault
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        # (c) Every acknowledged commit at both members.
        async def converged() -> bool:
            return not any((await missing_at(ring, writers)).values())

        await wait_until("every acknowledged commit at both members", converged, 60)
        assert all(w.acked for w in writers)
        await ring.stop_all()
        b = await ring.conn("b")
        try:
            await b.execute("DELETE FROM lis.samples WHERE id = $1", writers[0].acked[0])
        finally:
            await b.close()
        assert await missing_at(ring, writers) == {"a": 0, "b": 1}, "the check missed a row"
    finally:
        await ring.stop_all()
        ring.destroy()
