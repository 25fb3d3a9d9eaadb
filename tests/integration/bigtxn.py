"""One big transaction crossing a ring of `ringkeeper sync` processes, with a small
writer at another member: the scenario of issue 14 item 6, shared by
tests/integration/test_big_txn.py (200k rows) and bench/ring.py (1M rows).

The ring is a -> b -> c -> a. The big transaction is committed at a (one INSERT of
`rows` rows) and crosses b, then c. Meanwhile b commits one small row every 50 ms and
records each in a ledger (id, when acknowledged); watchers at every member note when
each ledger row first appears there, so the latency is measured per row, not
inferred. A sidecar's peak memory is its process's VmHWM (/proc/<pid>/status).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ringlocal import LocalRing, wait_until

SMALL_BASE = 1_000_000_000  # small writes' ids: far above the big transaction's
SMALL_EVERY = 0.05  # seconds between small writes
WRITER, FAR = "b", "a"  # b's writes reach c, then a (the far member)


def vm_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for pid {pid} (process gone?)")


def p99(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


@dataclass
class Result:
    rows: int
    big_at: dict[str, int] = field(default_factory=dict)  # big rows present per member
    base_rss_mb: dict[str, float] = field(default_factory=dict)  # before the big txn
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # VmHWM at the end
    last_member_s: float = 0.0  # big txn's commit at a -> all rows at c
    small_written: int = 0
    small_missing: dict[str, list[int]] = field(default_factory=dict)
    small_latency_ms: dict[str, list[float]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    def small_p99_ms(self, member: str = FAR) -> float:
        return p99(self.small_latency_ms.get(member, []))

    def summary(self) -> str:
        lat = {m: (round(self.small_p99_ms(m)), round(max(v, default=0)))
               for m, v in self.small_latency_ms.items()}
        return (f"rows={self.rows} at={self.big_at} base_rss_mb={self.base_rss_mb} "
                f"peak_rss_mb={self.peak_rss_mb} last_member_s={self.last_member_s:.1f} "
                f"small_written={self.small_written} small (p99, max) ms={lat} "
                f"missing={ {m: len(v) for m, v in self.small_missing.items()} }")


async def _all_linked(ring: LocalRing) -> bool:
    """Every member's slot for its successor is held by a streaming link."""
    for n in ring.names:
        c = await ring.conn(n)
        try:
            if not await c.fetchval("SELECT count(*) = 1 FROM pg_replication_slots "
                                    "WHERE active AND slot_type = 'logical'"):
                return False
        finally:
            await c.close()
    return True


async def run(rows: int, log_dir: Path, majors: tuple[str, str, str] = ("17", "15", "18"),
              timeout: float = 600, bypass_after: int = 60) -> Result:
    # bypassAfterSeconds at its default (60) unless asked: at 5 s (a 1.25 s liveness
    # window) the link b->c was once cut again and again while the walsender decoded the
    # big transaction (1M rows: 19 cuts in 300 s, nothing crossed); the watchdog's
    # probe of the source's walsender (core.liveness.walsender_busy) keeps such a link,
    # and test_walsender_busy.py tests that on its own.
    ring = LocalRing(majors, bypass_after=bypass_after)
    res = Result(rows)
    ring.start_servers()
    try:
        for n in ring.names:
            ring.start_process(n, log_dir / f"{n}.log")
        await wait_until("every link streaming", lambda: _all_linked(ring), 60)
        await asyncio.sleep(1)  # the links' first idle round done: a settled baseline
        pids = {n: ring.procs[n].pid for n in ring.names}
        res.base_rss_mb = {n: round(vm_kb(p, "VmRSS") / 1024, 1) for n, p in pids.items()}

        conns = {n: await ring.conn(n) for n in ring.names}
        watch = {n: await ring.conn(n) for n in ring.names if n != WRITER}
        writer = await ring.conn(WRITER)
        acked: dict[int, float] = {}
        seen: dict[str, dict[int, float]] = {n: {} for n in ring.names if n != WRITER}
        stop = asyncio.Event()

        async def small_writer() -> None:
            k = 0
            while not stop.is_set():
                k += 1
                await writer.execute("INSERT INTO lis.samples (id, campus, status) "
                                     "VALUES ($1, 'b', 'small')", SMALL_BASE + k)
                acked[SMALL_BASE + k] = time.monotonic()
                await asyncio.sleep(SMALL_EVERY)

        async def watcher(n: str) -> None:
            # b's writes arrive in b's commit order: the highest id seen says all below it
            # are there (checked row by row at the end).
            c = watch[n]
            while True:
                top = await c.fetchval("SELECT max(id) FROM lis.samples WHERE id > $1",
                                       SMALL_BASE)
                now = time.monotonic()
                if top is not None:
                    for i in range(SMALL_BASE + 1, top + 1):
                        seen[n].setdefault(i, now)
                if stop.is_set() and top is not None and top >= max(acked, default=0):
                    return
                await asyncio.sleep(0.02)

        async def big_at(n: str) -> int:
            got: int = await conns[n].fetchval(
                "SELECT count(*) FROM lis.samples WHERE id BETWEEN 1 AND $1", rows)
            return got

        wtask = asyncio.create_task(small_writer())
        watchers = [asyncio.create_task(watcher(n)) for n in seen]
        try:
            await asyncio.sleep(2)  # small writes flowing before the big one
            await conns["a"].execute(
                "INSERT INTO lis.samples (id, campus, patient, status, result) "
                "SELECT g, 'a', 'p' || g, 'big', g FROM generate_series(1, $1) g", rows)
            t0 = time.monotonic()

            async def everywhere() -> bool:
                return all([await big_at(n) == rows for n in ring.names])

            await wait_until("the big transaction at every member", everywhere, timeout, 0.2)
            res.last_member_s = time.monotonic() - t0
            await asyncio.sleep(2)  # small writes after it, too
        finally:
            stop.set()
            await wtask
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
        res.small_written = len(acked)
        res.big_at = {n: await big_at(n) for n in ring.names}
        for n in ring.names:
            have = {r["id"] for r in await conns[n].fetch(
                "SELECT id FROM lis.samples WHERE id > $1", SMALL_BASE)}
            res.small_missing[n] = sorted(set(acked) - have)
        for n, got in seen.items():
            res.small_latency_ms[n] = [(got[i] - acked[i]) * 1000 for i in acked]
        res.peak_rss_mb = {n: round(vm_kb(p, "VmHWM") / 1024, 1) for n, p in pids.items()}
        for c in [*conns.values(), *watch.values(), writer]:
            await c.close()
        return res
    finally:
        for n in ring.names:
            with contextlib.suppress(OSError):
                res.logs[n] = (log_dir / f"{n}.log").read_text()[-3000:]
        ring.destroy()
