"""Benchmark: the sync ring against native logical replication, on real local servers.

    make bench-ring                       # all three measurements (about 5 minutes)
    ROWS=50000 SECONDS=10 python bench/ring.py     # quick

1. Link apply throughput. A backlog of ROWS rows (TXN_ROWS rows per transaction, into
   lis.samples) is written at a stopped source and then applied at the target, by a
   native publication/subscription (copy_data = false, subscription disabled while the
   backlog is written) and by one Ringkeeper link (a 2-member ring whose target sidecar
   is stopped while the backlog is written, then started). Each mechanism has its own
   pair of servers (THROUGHPUT_MAJORS, default 17 -> 17) so neither decodes the other's
   WAL; ROUNDS rounds alternate which goes first; medians are reported. Throughput
   (`*_rows_per_s`, `ratio_vs_native`) is the apply rate from the first backlog row
   visible at the target to the last; `*_with_start` figures time from ALTER
   SUBSCRIPTION ... ENABLE / from launching the `ringkeeper sync` process (interpreter
   start, imports and setup included, about 0.7 s here) to the last row. CPU seconds of
   the source's and the target's server processes (and of this process, which hosts the
   link's sidecar) are reported per round. EXTRA_MAJORS (default 15,18) runs one more
   round of both on that pair (empty to skip). PROFILE=1 runs one more link round
   under cProfile (in-process sidecar) and prints the top functions.
2. End-to-end latency on a 4-member ring (LATENCY_MAJORS, default 15,17,18,17) with
   each sidecar a `ringkeeper sync` process: a writer commits RATE rows/s at member a
   (transactions of 10 rows) for SECONDS seconds; a watcher per other member polls
   max(id) every POLL_MS ms. A transaction's latency is the time from its commit
   returning at a to the first poll that saw it at the last of the other members.
3. Capture overhead: pgbench TPS (-c 4 -j 2 -T CAPTURE_SECONDS, scale 10) on member a of a
   2-member ring (CAPTURE_MAJORS, default 17,17), alternating runs without the ring's
   sidecars and with both running (a's writes captured and applied at b throughout), and
   (as a reference) with a native publication/subscription of the same tables instead
   (origin = none, subscribed by a third server n beside b, so b only holds rows the
   ring wrote; which of the two follows the run without alternates). With 2+ CPUs the
   machine is split in two "hosts" (CAPTURE_PIN=1, the default): a's server, its sidecar
   and pgbench on the first half of the CPUs, b's (and n's) server and b's sidecar on the
   other, in every run, so b's apply work does not count as a's capture cost. Between runs (sidecars
   stopped) every ring slot is advanced to the current WAL position: each "with" run
   starts with nothing queued, and whatever b had not applied by the end of a run is
   skipped rather than waited for (reported). b's and n's data directories are on
   /dev/shm (CAPTURE_B_TMPFS=1, the default) so their WAL and fsyncs do not queue on the
   disk a's commits wait for, as on two machines.

4. Setup under load: a ring (SETUP_MAJORS, default 15,17,18) is created over members that
   already hold 1,000 rows each while a writer at every member commits continuously
   before, during and after all sidecar processes start (SETUP_SECONDS, default 8, of
   writes after the start); every acknowledged commit is recorded in a ledger, and
   `setup_under_load_missing` counts ledger keys missing, or different from their origin,
   at any member once the ring has had up to 90 s to converge (must be 0;
   tests/integration/test_ring_setup.py holds the same check as tests).

5. A big transaction crossing a 3-member ring of `ringkeeper sync` processes (BIG_TXN_MAJORS,
   default 17,15,18; tests/integration/bigtxn.py, which tests/integration/test_big_txn.py
   runs at 200k rows): one INSERT of BIG_TXN_ROWS rows (default 1,000,000) committed at a
   crosses b, then c, while b commits one small row every 50 ms (ledger, until 2 s after the
   big rows are everywhere). `big_txn_peak_rss_mb` is the highest VmHWM of the three
   sidecar processes; `big_txn_last_member_s` the time from the big commit at a to all its
   rows at c; `small_write_p99_during_big_txn_ms` the p99 latency of b's small writes at a
   (their far member); `big_txn_small_missing` must be 0.

6. Conflict storm (bench/storm.py, also runnable alone): 4 writers over 50 shared keys of a
   3-member ring (STORM_MAJORS, default 15,17,18) update, delete and upsert for
   STORM_SECONDS (default 20); once the ring is quiet the verifier counts the keys that
   differ: `storm_diverged_keys` (full verification, must be 0) and
   `storm_diverged_keys_incremental` (what continuous verification would see). SKIP=storm
   skips it.

Progress goes to stdout; the last line is one JSON object. SKIP=throughput,latency,capture,setup,
big_txn skips parts. Every server and sidecar process is destroyed on exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "tests" / "integration")]

from storm import storm, storm_majors  # noqa: E402

from integration.ringlocal import LocalRing  # noqa: E402
from pgserver import PASSWORD, PgServer, unavailable  # noqa: E402
from ringkeeper.core import names  # noqa: E402

ROWS = int(os.environ.get("ROWS", "200000"))
TXN_ROWS = int(os.environ.get("TXN_ROWS", "100"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = float(os.environ.get("SECONDS", "25"))
RATE = int(os.environ.get("RATE", "1000"))
POLL_MS = float(os.environ.get("POLL_MS", "5"))
CAPTURE_SECONDS = int(os.environ.get("CAPTURE_SECONDS", "20"))
CAPTURE_PAIRS = int(os.environ.get("CAPTURE_PAIRS", "4"))
SCALE = int(os.environ.get("SCALE", "10"))
CAPTURE_PIN = os.environ.get("CAPTURE_PIN", "1") not in ("", "0")
CAPTURE_B_TMPFS = os.environ.get("CAPTURE_B_TMPFS", "1") not in ("", "0")
PROFILE = os.environ.get("PROFILE", "") not in ("", "0")
SKIP = {s for s in os.environ.get("SKIP", "").split(",") if s}
BIG_TXN_ROWS = int(os.environ.get("BIG_TXN_ROWS", "1000000"))


def _majors(var: str, default: str) -> tuple[str, ...]:
    return tuple(m for m in os.environ.get(var, default).split(",") if m)


THROUGHPUT_MAJORS = _majors("THROUGHPUT_MAJORS", "17,17")
EXTRA_MAJORS = _majors("EXTRA_MAJORS", "15,18")
LATENCY_MAJORS = _majors("LATENCY_MAJORS", "15,17,18,17")
CAPTURE_MAJORS = _majors("CAPTURE_MAJORS", "17,17")
SETUP_MAJORS = _majors("SETUP_MAJORS", "15,17,18")
SETUP_SECONDS = float(os.environ.get("SETUP_SECONDS", "8"))

# Everything started here, so any exit can tear it down.
RINGS: list[LocalRing] = []
SERVERS: list[PgServer] = []
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], timeout: float,
                   every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class BenchRing(LocalRing):
    """A LocalRing whose config selects other tables than lis.*."""

    include: tuple[str, ...] = ("lis.*",)
    roots: dict[str, Path] = field(default_factory=dict)  # data directory parents

    def start_servers(self, settings: dict[str, str] | None = None) -> None:
        from integration.ringlocal import SCHEMA

        for name, major in zip(self.names, self.majors, strict=True):
            kw = {"root": self.roots[name]} if name in self.roots else {}
            srv = PgServer(major, name=name, settings=dict(settings or {}), **kw)
            self.servers[name] = srv
            srv.start()
            srv.psql(SCHEMA)
        self.write_config()

    def write_config(self) -> None:
        super().write_config()
        data = json.loads(self.config_path.read_text())
        data["spec"]["tables"]["include"] = list(self.include)
        self.config_path.write_text(json.dumps(data))


def new_ring(majors: tuple[str, ...], ring: str, **kw: Any) -> BenchRing:
    r = BenchRing(majors, ring=ring, **kw)
    RINGS.append(r)
    return r


# Throughput servers: autovacuum off (VACUUM ANALYZE runs between rounds instead), so a
# worker woken by the previous round's rows does not compete with the next one.
QUIET = {"autovacuum": "off"}


def new_server(major: str, name: str, settings: dict[str, str] | None = None) -> PgServer:
    from integration.ringlocal import SCHEMA

    s = PgServer(major, name=name, settings=dict(settings or {}))
    SERVERS.append(s)
    s.start()
    s.psql(SCHEMA)
    return s


def conninfo(s: PgServer) -> str:
    return (f"host={s.host} port={s.port} user={s.user} password={PASSWORD} "
            f"dbname={s.database}")


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields from "state" on


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(int(d.name))[1]) == pid:
                    out.append(int(d.name))
    return out


def postmaster(s: PgServer) -> int:
    return int((s.data / "postmaster.pid").read_text().split()[0])


def proc_cpu(pid: int) -> float:
    """CPU seconds of one process (and its reaped children)."""
    return sum(int(x) for x in _stat(pid)[11:15]) / _TICK


def settle(*servers: PgServer) -> None:
    for s in servers:
        s.psql("VACUUM ANALYZE")
        s.psql("CHECKPOINT")


def server_cpu(s: PgServer) -> float:
    """CPU seconds used so far by a server: the postmaster, its live children, and the
    children it has reaped (cutime/cstime), so differences cover exited backends too."""
    pm = postmaster(s)
    f = _stat(pm)
    ticks = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    for c in _children(pm):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ticks += sum(int(x) for x in _stat(c)[11:13])
    return ticks / _TICK


def pin_server(s: PgServer, cpus: set[int]) -> None:
    """Pin a running server (postmaster and children; new backends inherit it)."""
    pm = postmaster(s)
    for pid in [pm, *_children(pm)]:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


@dataclass
class Cpu:
    """CPU seconds over one timed apply: source server, target server, sidecar."""

    src: float = 0.0
    dst: float = 0.0
    py: float = 0.0

    def line(self) -> str:
        return (f"CPU s: source server {self.src:.2f}, target server {self.dst:.2f}"
                + (f", target's sidecar {self.py:.2f}" if self.py else ""))


class CpuMeter:
    """pid: the sidecar process (counted from its start); 0: this process; None: none."""

    def __init__(self, src: PgServer, dst: PgServer) -> None:
        self.servers = (src, dst)
        self.start = (server_cpu(src), server_cpu(dst), time.process_time())

    def stop(self, pid: int | None) -> Cpu:
        src, dst = self.servers
        py = 0.0 if pid is None else (time.process_time() - self.start[2] if pid == 0
                                      else proc_cpu(pid))
        return Cpu(server_cpu(src) - self.start[0], server_cpu(dst) - self.start[1], py)


# -- 1. link apply throughput -----------------------------------------------------------
BACKLOG_SQL = (
    "INSERT INTO lis.samples (id, campus, patient, status, result, flags, payload) "
    "SELECT g, 'a', 'p-' || (g % 1000), 'collected', (g % 100000) / 1000.0, "
    "ARRAY['a', 'x'], decode(md5(g::text), 'hex') FROM generate_series($1::bigint, "
    "$2::bigint) g")


async def write_backlog(dsn: str, first: int, rows: int) -> float:
    """ROWS rows in transactions of TXN_ROWS rows (one statement each)."""
    t0 = time.monotonic()
    c = await asyncpg.connect(dsn)
    try:
        await c.execute("SET synchronous_commit = off")
        for lo in range(first, first + rows, TXN_ROWS):
            await c.execute(BACKLOG_SQL, lo, min(first + rows - 1, lo + TXN_ROWS - 1))
    finally:
        await c.close()
    return time.monotonic() - t0


async def wait_rows(dsn: str, first: int, rows: int, t0: float,
                    timeout: float = 600) -> tuple[float, float]:
    """Seconds from t0 until the first and the last backlog row are visible."""
    c = await asyncpg.connect(dsn)
    try:
        first_at = None
        while True:
            now = time.monotonic()
            if first_at is None and await c.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM lis.samples WHERE id = $1)", first):
                first_at = now - t0
            if first_at is not None and await c.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM lis.samples WHERE id = $1)",
                    first + rows - 1):
                done = time.monotonic() - t0
                n = await c.fetchval("SELECT count(*) FROM lis.samples WHERE id BETWEEN $1 "
                                     "AND $2", first, first + rows - 1)
                if n != rows:
                    raise RuntimeError(f"target has {n} of {rows} backlog rows")
                return first_at, done
            if now - t0 > timeout:
                raise RuntimeError(f"backlog not applied after {timeout}s")
            await asyncio.sleep(0.02)
    finally:
        await c.close()


class NativePair:
    def __init__(self, majors: tuple[str, str], tag: str) -> None:
        self.src = new_server(majors[0], f"native-src-{tag}", QUIET)
        self.dst = new_server(majors[1], f"native-dst-{tag}", QUIET)
        self.majors = majors

    async def setup(self) -> None:
        self.src.psql("CREATE PUBLICATION npub FOR TABLE lis.samples")
        self.dst.psql(f"CREATE SUBSCRIPTION nsub CONNECTION '{conninfo(self.src)}' "
                      "PUBLICATION npub WITH (copy_data = false)")
        await self._worker(True)
        await self.disable()

    async def _worker(self, running: bool) -> None:
        c = await asyncpg.connect(self.dst.dsn())
        try:
            async def check() -> bool:
                pid = await c.fetchval("SELECT max(pid) FROM pg_stat_subscription "
                                       "WHERE subname = 'nsub'")
                return (pid is not None) == running
            await wait_for(f"native apply worker {'up' if running else 'gone'}", check, 60)
        finally:
            await c.close()

    async def disable(self) -> None:
        self.dst.psql("ALTER SUBSCRIPTION nsub DISABLE")
        await self._worker(False)

    async def round(self, first: int) -> tuple[tuple[float, float], Cpu]:
        w = await write_backlog(self.src.dsn(), first, ROWS)
        self.src.psql("CHECKPOINT")
        meter = CpuMeter(self.src, self.dst)
        t0 = time.monotonic()
        self.dst.psql("ALTER SUBSCRIPTION nsub ENABLE")
        first_s, secs = await wait_rows(self.dst.dsn(), first, ROWS, t0)
        cpu = meter.stop(None)
        await self.disable()
        settle(self.src, self.dst)
        rate, steady = ROWS / secs, ROWS / (secs - first_s)
        say(f"native {'->'.join(self.majors)}: backlog written in {w:.1f}s; applied "
            f"{ROWS:,} rows in {secs - first_s:.2f}s = {steady:,.0f} rows/s after the first "
            f"row at {first_s:.2f}s ({rate:,.0f} rows/s with start); {cpu.line()}")
        return (rate, steady), cpu


class LinkPair:
    def __init__(self, majors: tuple[str, str], tag: str) -> None:
        self.ring = new_ring(majors, f"tp{tag}")
        self.majors = majors

    async def setup(self) -> None:
        r = self.ring
        r.start_servers(QUIET)
        for n in r.names:
            r.start_sidecar(n)
        await wait_for("the 2-member ring streaming", self._streaming, 60)
        await r.stop_all()

    async def _streaming(self) -> bool:
        return all(sc.state.role == "Primary" and sc.state.links and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in self.ring.sidecars.values())

    async def round(self, first: int,
                    profile: cProfile.Profile | None = None) -> tuple[tuple[float, float], Cpu]:
        r = self.ring
        src, dst = r.servers["a"], r.servers["b"]
        w = await write_backlog(src.dsn(), first, ROWS)
        src.psql("CHECKPOINT")
        meter = CpuMeter(src, dst)
        t0 = time.monotonic()
        # Only b's sidecar runs: it pulls a -> b. A `ringkeeper sync` process, or (to
        # profile it) an asyncio task in this process.
        if profile is not None:
            profile.enable()
            r.start_sidecar("b")
        else:
            r.start_process("b", r.root / "sync-b.log")
        try:
            first_s, secs = await wait_rows(dst.dsn(), first, ROWS, t0)
            cpu = meter.stop(0 if profile is not None else r.procs["b"].pid)
        finally:
            if profile is not None:
                profile.disable()
                await r.stop_sidecar("b")
            else:
                r.term_process("b")
        settle(src, dst)
        rate, steady = ROWS / secs, ROWS / (secs - first_s)
        say(f"link   {'->'.join(self.majors)}: backlog written in {w:.1f}s; applied "
            f"{ROWS:,} rows in {secs - first_s:.2f}s = {steady:,.0f} rows/s after the first "
            f"row at {first_s:.2f}s ({rate:,.0f} rows/s with start); {cpu.line()}")
        return (rate, steady), cpu


async def throughput(out: dict[str, Any]) -> None:
    a, b = THROUGHPUT_MAJORS[:2]
    say(f"== 1. apply throughput {a}->{b}: {ROWS:,} rows in {ROWS // TXN_ROWS:,} "
        f"transactions of {TXN_ROWS}, {ROUNDS} round(s)")
    native, link = NativePair((a, b), "main"), LinkPair((a, b), "main")
    await native.setup()
    await link.setup()
    n_rates: list[tuple[float, float]] = []
    l_rates: list[tuple[float, float]] = []
    n_cpu: list[Cpu] = []
    l_cpu: list[Cpu] = []
    for i in range(ROUNDS):
        first = 1 + i * ROWS
        order: list[tuple[Any, list[tuple[float, float]], list[Cpu]]] = [
            (native, n_rates, n_cpu), (link, l_rates, l_cpu)]
        for who, rates, cpus in order if i % 2 == 0 else order[::-1]:
            rate, cpu = await who.round(first)
            rates.append(rate)
            cpus.append(cpu)

    def cpu_med(cs: list[Cpu]) -> dict[str, float]:
        return {"source_pg": round(median([c.src for c in cs]), 2),
                "target_pg": round(median([c.dst for c in cs]), 2),
                **({"sidecar_py": round(median([c.py for c in cs]), 2)}
                   if any(c.py for c in cs) else {})}
    out.update({"throughput_majors": f"{a}->{b}", "rows": ROWS, "txn_rows": TXN_ROWS,
                "rounds": ROUNDS, "link_rows_per_s": round(median([x[1] for x in l_rates])),
                "native_rows_per_s": round(median([x[1] for x in n_rates])),
                "ratio_vs_native": round(median([x[1] for x in l_rates])
                                         / median([x[1] for x in n_rates]), 3),
                "link_rows_per_s_with_start": round(median([x[0] for x in l_rates])),
                "native_rows_per_s_with_start": round(median([x[0] for x in n_rates])),
                "ratio_vs_native_with_start": round(median([x[0] for x in l_rates])
                                                    / median([x[0] for x in n_rates]), 3),
                "link_rows_per_s_all": [round(x[1]) for x in l_rates],
                "native_rows_per_s_all": [round(x[1]) for x in n_rates],
                "link_cpu_s": cpu_med(l_cpu), "native_cpu_s": cpu_med(n_cpu)})
    say(f"throughput {a}->{b}: link {out['link_rows_per_s']:,} rows/s, native "
        f"{out['native_rows_per_s']:,} rows/s, ratio {out['ratio_vs_native']}")
    if PROFILE:
        prof = cProfile.Profile()
        await link.round(1 + ROUNDS * ROWS, prof)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        say("cProfile of one in-process link round (sorted by own time):\n" + buf.getvalue())
    if len(EXTRA_MAJORS) == 2:
        ea, eb = EXTRA_MAJORS
        say(f"== 1b. apply throughput {ea}->{eb}, one round")
        xn, xl = NativePair((ea, eb), "extra"), LinkPair((ea, eb), "extra")
        await xn.setup()
        await xl.setup()
        ((_, nr), _), ((_, lr), _) = await xn.round(1), await xl.round(1)
        key = f"{ea}_{eb}"
        out.update({f"link_rows_per_s_{key}": round(lr), f"native_rows_per_s_{key}": round(nr),
                    f"ratio_vs_native_{key}": round(lr / nr, 3)})
        for s in (xn.src, xn.dst):
            s.destroy()
        xl.ring.destroy()
    for s in (native.src, native.dst):
        s.destroy()
    link.ring.destroy()


# -- 2. end-to-end latency ----------------------------------------------------------------
async def latency(out: dict[str, Any]) -> None:
    ring = new_ring(LATENCY_MAJORS, "lat")
    say(f"== 2. end-to-end latency on a {len(ring.names)}-member ring "
        f"({', '.join(f'{n}={m}' for n, m in zip(ring.names, ring.majors, strict=True))}), "
        f"sidecars as processes; {RATE} rows/s at a for {SECONDS:.0f}s")
    ring.start_servers()
    for n in ring.names:
        ring.start_process(n, ring.root / f"sync-{n}.log")
    others = ring.names[1:]
    conns = {n: await ring.conn(n) for n in ring.names}
    try:
        # Ready when every member's link slot exists and a probe row written at a is
        # then visible everywhere.
        async def slots() -> bool:
            for i, n in enumerate(ring.names):
                succ = ring.names[(i + 1) % len(ring.names)]
                if not await conns[n].fetchval(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                        names.link_slot_name(ring.ring, n, succ)):
                    return False
            return True

        await wait_for("every member's link slot", slots, 60, 0.1)
        await conns["a"].execute("INSERT INTO lis.samples (id, campus, status) "
                                 "VALUES (-1, 'a', 'probe')")

        async def everywhere() -> bool:
            for n in others:
                if not await conns[n].fetchval("SELECT EXISTS (SELECT 1 FROM lis.samples "
                                               "WHERE id = -1)"):
                    return False
            return True

        t = time.monotonic()
        await wait_for("the probe row at every member", everywhere, 90, 0.1)
        say(f"ring up: probe row reached {', '.join(others)} in {time.monotonic() - t:.1f}s")

        per_txn = 10
        txns = int(SECONDS * RATE / per_txn)
        committed: list[float] = [0.0] * txns
        seen: dict[str, list[float | None]] = {n: [None] * txns for n in others}
        writing = [True]
        done_writing = [0]

        async def writer() -> None:
            c = conns["a"]
            start = time.monotonic()
            for k in range(txns):
                due = start + k * per_txn / RATE
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                lo = k * per_txn + 1
                await c.execute(BACKLOG_SQL, lo, lo + per_txn - 1)
                committed[k] = time.monotonic()
                done_writing[0] = k + 1
            writing[0] = False
            say(f"writer: {txns:,} transactions ({txns * per_txn:,} rows) in "
                f"{time.monotonic() - start:.1f}s")

        async def watcher(n: str) -> None:
            c = conns[n]
            got = 0  # transactions seen so far (applied in commit order)
            deadline = None
            while got < txns:
                asked = time.monotonic()
                top = await c.fetchval("SELECT coalesce(max(id), 0) FROM lis.samples")
                upto = min(txns, int(top) // per_txn)
                for k in range(got, upto):
                    seen[n][k] = asked
                got = max(got, upto)
                if not writing[0]:
                    deadline = deadline or asked + 60
                    if asked > deadline:
                        say(f"watcher {n}: {txns - got} transactions never arrived")
                        return
                await asyncio.sleep(POLL_MS / 1000)

        async def reporter() -> None:
            while writing[0]:
                await asyncio.sleep(5)
                k = done_writing[0]
                lag = {n: k - sum(1 for x in seen[n][:k] if x is not None) for n in others}
                say(f"latency run: {k * per_txn:,} rows written; transactions not yet "
                    f"visible: {lag}")

        await asyncio.gather(writer(), reporter(), *(watcher(n) for n in others))
    finally:
        for c in conns.values():
            await c.close()
        for n in list(ring.procs):
            ring.kill_process(n)
    warm = int(2 * RATE / per_txn)  # the first 2 s warm up
    lat: list[float] = []
    missing = 0
    for k in range(warm, txns):
        ts = [seen[n][k] for n in others]
        if any(x is None for x in ts):
            missing += 1
            continue
        lat.append((max(x for x in ts if x is not None) - committed[k]) * 1000)
    hop = {n: percentile([(x - committed[k]) * 1000 for k in range(warm, txns)
                          if (x := seen[n][k]) is not None], 50) for n in others}
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    say(f"latency to the last of {', '.join(others)}: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"max {max(lat, default=float('nan')):.0f} ms over {len(lat):,} transactions "
        f"(poll every {POLL_MS:g} ms); p50 per member {({n: round(v) for n, v in hop.items()})}"
        + (f"; {missing} never arrived" if missing else ""))
    out.update({"e2e_p50_ms": round(p50, 1), "e2e_p99_ms": round(p99, 1),
                "e2e_max_ms": round(max(lat, default=float("nan")), 1),
                "e2e_p50_ms_per_member": {n: round(v, 1) for n, v in hop.items()},
                "e2e_missing_txns": missing, "e2e_ring_majors": list(LATENCY_MAJORS),
                "e2e_rows_per_s": RATE, "e2e_seconds": SECONDS, "e2e_poll_ms": POLL_MS})
    ring.destroy()


# -- 3. capture overhead ------------------------------------------------------------------
def pgbench(s: PgServer, *args: str, cpus: set[int] | None = None) -> str:
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    argv = [str(s.bin / "pgbench"), "-h", s.host, "-p", str(s.port), "-U", s.user, *args,
            s.database]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if res.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {res.stderr[-2000:]}")
    return res.stdout + res.stderr


def _capture_roots() -> dict[str, Path]:
    if CAPTURE_B_TMPFS and os.path.isdir("/dev/shm"):
        return {n: Path(tempfile.mkdtemp(prefix="rk-pg-", dir="/dev/shm")) for n in ("b", "n")}
    return {}


async def capture(out: dict[str, Any]) -> None:
    roots = _capture_roots()
    ring = new_ring(CAPTURE_MAJORS, "cap", include=("public.pgbench_*",), roots=roots)
    a, b = ring.names
    cpus = sorted(os.sched_getaffinity(0))
    split: dict[str, set[int]] = {}
    if CAPTURE_PIN and len(cpus) >= 2:
        half = len(cpus) // 2
        split = {a: set(cpus[:half]), b: set(cpus[half:])}
    where = (f"; CPUs {sorted(split[a])} for a (server, sidecar, pgbench), "
             f"{sorted(split[b])} for b" if split else "; no CPU split")
    where += f"; b's data in {roots[b]}" if roots else "; b's data on a's disk"
    say(f"== 3. capture overhead: pgbench -c 4 -j 2 -T {CAPTURE_SECONDS} (scale {SCALE}) at "
        f"a ({CAPTURE_MAJORS[0]}), ring a<->b ({CAPTURE_MAJORS[1]}); {CAPTURE_PAIRS} pairs "
        f"of runs without / with the sidecars{where}")
    ring.start_servers()
    sa, sb = ring.servers[a], ring.servers[b]
    # The native reference's subscriber: a server of its own beside b (same CPUs, same
    # kind of disk), so b only ever holds rows the ring wrote.
    sn = PgServer(CAPTURE_MAJORS[1], name="n", settings={},
                  **({"root": roots["n"]} if roots else {}))
    SERVERS.append(sn)
    sn.start()
    await asyncio.gather(*(asyncio.to_thread(pgbench, s, "-i", "-q", "-s", str(SCALE))
                           for s in (sa, sb, sn)))
    origin_a = names.origin_name(ring.ring, a)
    for s in (sa, sb, sn):
        s.psql("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
    # b holds the same rows as if the ring had brought them from a (pgbench -i is
    # deterministic): rewritten under a's replication origin, so a's later updates take
    # the apply fast path instead of resolving a conflict per row.
    sb.psql(f"SELECT pg_replication_origin_create('{origin_a}'); "
            f"SELECT pg_replication_origin_session_setup('{origin_a}'); "
            "UPDATE pgbench_accounts SET abalance = abalance; "
            "UPDATE pgbench_tellers SET tbalance = tbalance; "
            "UPDATE pgbench_branches SET bbalance = bbalance;")
    for s in (sa, sb, sn):
        s.psql("VACUUM ANALYZE")
    if split:
        for n, s in ring.servers.items():
            pin_server(s, split[n])
        pin_server(sn, split[b])
    say("pgbench tables loaded at a and b")
    log = {n: ring.root / f"sync-{n}.log" for n in ring.names}

    async def max_hist(s: PgServer) -> int:
        c = await asyncpg.connect(s.dsn())
        try:
            return int(await c.fetchval("SELECT coalesce(max(id), 0) FROM pgbench_history"))
        finally:
            await c.close()

    async def caught_up(target: PgServer = sb) -> bool:
        return await max_hist(sa) == await max_hist(target)

    async def skip_queued() -> None:
        """Sidecars stopped: move every ring slot to the current WAL position."""
        for s in (sa, sb):
            s.psql("SELECT pg_replication_slot_advance(slot_name, pg_current_wal_lsn()) "
                   f"FROM pg_replication_slots WHERE slot_name LIKE 'rk_{ring.ring}_%'")

    async def ring_on() -> None:
        await skip_queued()
        for n in ring.names:
            ring.start_process(n, log[n])
            if split:
                os.sched_setaffinity(ring.procs[n].pid, split[n])
        t = time.monotonic()
        # Slots first (the first start creates them), then a probe from a applied at b.
        for n, other in ((a, b), (b, a)):
            c = await asyncpg.connect(ring.servers[n].dsn())
            try:
                want = [names.link_slot_name(ring.ring, n, other)]  # 2 members: no hold
                await wait_for(f"{n}'s slots", lambda c=c, want=want: c.fetchval(
                    "SELECT count(*) = 1 FROM pg_replication_slots "
                    "WHERE slot_name = ANY($1::text[])", want), 60, 0.1)
            finally:
                await c.close()
        sa.psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                "VALUES (1, 1, 1, 0, now())")
        await wait_for("a probe row from a at b", caught_up, 120, 0.1)
        say(f"sidecars up, a probe row from a reached b after {time.monotonic() - t:.1f}s")

    def ring_off() -> None:
        for n in list(ring.procs):
            ring.term_process(n)

    # The reference: what native logical replication of the same tables costs a (a
    # publication at a, a subscription at b with origin = none, enabled only for its runs).
    sa.psql("CREATE PUBLICATION bench_native FOR TABLE pgbench_accounts, pgbench_branches, "
            "pgbench_tellers, pgbench_history")
    sn.psql(f"CREATE SUBSCRIPTION bench_native CONNECTION '{conninfo(sa)}' PUBLICATION "
            "bench_native WITH (copy_data = false, enabled = false, origin = none)")

    async def until(what: str, s: PgServer, sql: str) -> None:
        c = await asyncpg.connect(s.dsn())
        try:
            await wait_for(what, lambda: c.fetchval(sql), 60, 0.1)
        finally:
            await c.close()

    async def native_on() -> None:
        sa.psql("SELECT pg_replication_slot_advance('bench_native', pg_current_wal_lsn())")
        sn.psql("ALTER SUBSCRIPTION bench_native ENABLE")
        await until("the native apply worker", sn, "SELECT pid IS NOT NULL FROM "
                    "pg_stat_subscription WHERE subname = 'bench_native'")
        sa.psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                "VALUES (1, 1, 1, 0, now())")
        await wait_for("a probe row from a at n (native)", lambda: caught_up(sn), 120, 0.1)

    async def native_off() -> None:
        sn.psql("ALTER SUBSCRIPTION bench_native DISABLE")
        await until("the native walsender gone", sa, "SELECT active_pid IS NULL FROM "
                    "pg_replication_slots WHERE slot_name = 'bench_native'")

    a_cpu: dict[str, list[float]] = {"server_without": [], "server_with": [],
                                     "sidecar_with": []}

    async def run(label: str) -> float:
        for s in (sa, sb, sn):
            s.psql("CHECKPOINT")
        c0 = server_cpu(sa)
        p0 = proc_cpu(ring.procs[a].pid) if a in ring.procs else None
        text = await asyncio.to_thread(pgbench, sa, "-c", "4", "-j", "2", "-T",
                                       str(CAPTURE_SECONDS), "-n", cpus=split.get(a))
        await asyncio.sleep(1)  # pgbench's backends exit and are reaped (cutime)
        srv = server_cpu(sa) - c0
        side = proc_cpu(ring.procs[a].pid) - p0 if p0 is not None else None
        a_cpu["server_with" if side is not None else "server_without"].append(srv)
        if side is not None:
            a_cpu["sidecar_with"].append(side)
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
        if m is None:
            raise RuntimeError(f"no tps in pgbench output: {text[-1000:]}")
        tps = float(m.group(1))
        say(f"pgbench {label}: {tps:,.0f} tps; CPU s of a's server {srv:.1f}"
            + (f", of a's sidecar {side:.1f}" if side is not None else ""))
        return tps

    without: list[float] = []
    with_ring: list[float] = []
    with_native: list[float] = []
    applied: list[float] = []
    await ring_on()  # the ring's objects and slots exist from here on
    ring_off()
    async def ring_run() -> None:
        await ring_on()
        h0 = await max_hist(sa)
        with_ring.append(await run("with the ring   "))
        ha, hb = await max_hist(sa), await max_hist(sb)
        ring_off()
        # pgbench_history ids are a's commit order, so b's max id says how far b got.
        applied.append((hb - h0) / max(1, ha - h0))
        say(f"during the run b applied {hb - h0:,} of a's {ha - h0:,} pgbench transactions "
            f"({applied[-1]:.0%}); the rest is skipped")

    async def native_run() -> None:
        await native_on()
        with_native.append(await run("with native rep."))
        await native_off()

    for i in range(CAPTURE_PAIRS):
        without.append(await run("without the ring"))
        # Which goes second alternates, so neither gains from running later.
        for step in (ring_run, native_run) if i % 2 == 0 else (native_run, ring_run):
            await step()
    ratios = [w / wo for w, wo in zip(with_ring, without, strict=True)]
    ratio = median(ratios)
    native_ratio = median([w / wo for w, wo in zip(with_native, without, strict=True)])
    say(f"reference: native logical replication of the same tables keeps "
        f"{native_ratio:.3f} of the TPS (median {median(with_native):,.0f} tps)")
    say(f"capture: median TPS without {median(without):,.0f}, with {median(with_ring):,.0f}; "
        f"median of paired ratios {ratio:.3f} ({[round(r, 3) for r in ratios]})")
    out.update({"capture_tps_ratio": round(ratio, 3),
                "capture_tps_ratio_native": round(native_ratio, 3),
                "capture_tps_with_native": [round(x) for x in with_native],
                "capture_tps_without": [round(x) for x in without],
                "capture_tps_with": [round(x) for x in with_ring],
                "capture_b_applied_fraction": [round(x, 3) for x in applied],
                "capture_a_cpu_s": {k: [round(x, 1) for x in v] for k, v in a_cpu.items()},
                "capture_cpu_split": ({n: sorted(c) for n, c in split.items()}
                                      if split else None),
                "capture_b_on_tmpfs": bool(roots),
                "capture_majors": list(CAPTURE_MAJORS), "capture_seconds": CAPTURE_SECONDS,
                "pgbench_scale": SCALE})
    ring.destroy()


# -- main ---------------------------------------------------------------------------------
async def setup_under_load(out: dict[str, Any]) -> None:
    from integration.test_ring_setup import Ledger, check_ledger, ledger_writer

    ring = new_ring(SETUP_MAJORS, "setup")
    say(f"== 4. setup under load: {len(ring.names)} members with 1,000 rows each, writes at "
        "every member before, during and after every sidecar starts")
    ring.start_servers()
    ledger = Ledger()
    for i, n in enumerate(ring.names):
        first = (i + 1) * 100_000 + 1
        ring.servers[n].psql(
            "INSERT INTO lis.samples (id, campus, status, result) SELECT g, "
            f"'{n}', 'old', g / 3.0 FROM generate_series({first}, {first + 999}) g")
        for k in range(first, first + 1000):
            ledger.record("lis.samples", k, n)
    stop = asyncio.Event()
    writers = [asyncio.create_task(ledger_writer(ring, n, i + 1, ledger, stop))
               for i, n in enumerate(ring.names)]
    try:
        await asyncio.sleep(1.5)
        for n in ring.names:
            ring.start_process(n, ring.root / f"sync-{n}.log")
        await asyncio.sleep(SETUP_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    t0 = time.monotonic()
    problems: dict[str, list[str]] = {}
    while time.monotonic() - t0 < 90:
        problems = await check_ledger(ring, ledger)
        if not problems:
            break
        await asyncio.sleep(1)
    missing = sum(len(p) for p in problems.values())
    keys = sum(len(t) for t in ledger.keys.values())
    out["setup_under_load_missing"] = missing
    out["setup_under_load_keys"] = keys
    out["setup_under_load_converged_after_s"] = (
        round(time.monotonic() - t0, 1) if not problems else None)
    say(f"   {keys} acknowledged keys, {missing} missing or different"
        + (f" (first: {next(iter(problems.values()))[:3]})" if problems else ""))
    for n in list(ring.procs):
        ring.term_process(n)


def teardown() -> None:
    for r in RINGS:
        for n in list(r.procs):
            with contextlib.suppress(Exception):
                r.kill_process(n)
        for s in r.servers.values():
            with contextlib.suppress(Exception):
                s.destroy()
        shutil.rmtree(r.root, ignore_errors=True)  # ring.json and the sidecars' logs
    for s in SERVERS:
        with contextlib.suppress(Exception):
            s.destroy()


async def big_txn(out: dict[str, Any]) -> None:
    from integration import bigtxn
    majors = _majors("BIG_TXN_MAJORS", "17,15,18")
    assert len(majors) == 3, "BIG_TXN_MAJORS names three majors"
    say(f"big transaction: {BIG_TXN_ROWS:,} rows at a, crossing b then c ({majors}), "
        "small writes at b every 50 ms")
    with tempfile.TemporaryDirectory(prefix="rk-bigtxn-") as logs:
        res = await bigtxn.run(BIG_TXN_ROWS, Path(logs), (majors[0], majors[1], majors[2]))
    say("big transaction: " + res.summary())
    out["big_txn_rows"] = BIG_TXN_ROWS
    out["big_txn_peak_rss_mb"] = max(res.peak_rss_mb.values())
    out["big_txn_base_rss_mb"] = max(res.base_rss_mb.values())
    out["big_txn_last_member_s"] = round(res.last_member_s, 1)
    out["small_write_p99_during_big_txn_ms"] = round(res.small_p99_ms(bigtxn.FAR))
    out["small_write_max_during_big_txn_ms"] = round(
        max(res.small_latency_ms.get(bigtxn.FAR, [0.0])))
    out["big_txn_small_writes"] = res.small_written
    out["big_txn_small_missing"] = sum(len(v) for v in res.small_missing.values())
    out["big_txn_rows_missing"] = sum(BIG_TXN_ROWS - n for n in res.big_at.values())


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "ring"}
    try:
        if "throughput" not in SKIP:
            await throughput(out)
        if "latency" not in SKIP:
            await latency(out)
        if "capture" not in SKIP:
            await capture(out)
        if "setup" not in SKIP:
            await setup_under_load(out)
        if "storm" not in SKIP:
            await storm(out, new_ring, say)
        if "big_txn" not in SKIP:
            await big_txn(out)
    finally:
        for r in RINGS:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.stop_all(), 30)
    out["seconds"] = round(time.monotonic() - T0, 1)
    out["cpus"] = os.cpu_count()
    return out


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def entry() -> None:
    needed = set(THROUGHPUT_MAJORS + EXTRA_MAJORS + LATENCY_MAJORS + CAPTURE_MAJORS +
                 SETUP_MAJORS + _majors("BIG_TXN_MAJORS", "17,15,18"))
    needed |= set(storm_majors())
    for m in sorted(needed):
        if reason := unavailable(m):
            sys.exit(f"cannot run: PostgreSQL {m}: {reason}")
    say("command: " + " ".join([sys.executable, *sys.argv]) + "  (env: " + ", ".join(
        f"{k}={os.environ[k]}" for k in ("ROWS", "TXN_ROWS", "ROUNDS", "SECONDS", "RATE",
                                          "CAPTURE_SECONDS", "CAPTURE_PAIRS", "SKIP",
                                          "PROFILE", "CAPTURE_PIN", "BIG_TXN_ROWS",
                                          "CAPTURE_B_TMPFS") if k in os.environ) + ")")
    # SIGTERM behaves like Ctrl-C: unwind through the finally blocks below.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out = asyncio.run(main())
    finally:
        teardown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    entry()
