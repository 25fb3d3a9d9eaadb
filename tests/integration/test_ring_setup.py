"""Ring setup under live writes, judged by a ledger of every acknowledged write.

Real PostgreSQL 15, 17 and 18 servers and real `ringkeeper sync` processes. A
writer at every member commits small transactions continuously BEFORE, DURING and
AFTER the ring is set up and records each commit the server acknowledged (key,
origin). Afterwards every recorded key must be at every member with the same
content: a write lost while slots, publications or copies were being made shows as
a missing key, a doubled or diverged one as differing content. The last test shows
the checker finds a row removed at one member behind the ring's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgserver import free_port, unavailable

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.postgres

for _m in ("15", "17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

NEW_TABLE = """
CREATE TABLE lis.orders (
    id bigint PRIMARY KEY,
    campus text NOT NULL,
    item text NOT NULL,
    amount numeric(10, 2)
)
"""


@dataclass
class Ledger:
    """Every write a server acknowledged: table -> key -> origin."""

    keys: dict[str, dict[int, str]] = field(default_factory=dict)

    def record(self, table: str, key: int, origin: str) -> None:
        self.keys.setdefault(table, {})[key] = origin

    def count(self, origin: str) -> int:
        return sum(1 for t in self.keys.values() for o in t.values() if o == origin)


async def ledger_writer(ring: LocalRing, member: str, index: int, ledger: Ledger,
                        stop: asyncio.Event, *, table: str = "lis.samples",
                        pause: float = 0.01) -> None:
    """Small transactions at `member` until stopped: an insert into `table` (and a
    result row for samples), every 10th also an update of an earlier own row. Only
    commits the server acknowledged are recorded."""
    conn = await ring.conn(member)
    n = 0
    base = index * 10_000_000
    try:
        while not stop.is_set():
            n += 1
            key = base + n
            async with conn.transaction():
                if table == "lis.samples":
                    await conn.execute(
                        "INSERT INTO lis.samples (id, campus, patient, status, result, flags) "
                        "VALUES ($1, $2, $3, 'collected', $4, $5)", key, member, f"p-{n}",
                        n / 7, ["ledger", member])
                    await conn.execute("INSERT INTO lis.results VALUES ($1, 'GLU', $2, $3)",
                                       key, n / 3, member)
                    if n > 10 and n % 10 == 0:
                        await conn.execute("UPDATE lis.samples SET status = 'verified', "
                                           "result = result + 1 WHERE id = $1", key - 5)
                else:
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, $2, $3, $4)", key,
                                       member, f"item-{n}", n / 4)
            ledger.record(table, key, member)
            if table == "lis.samples":
                ledger.record("lis.results", key, member)
            await asyncio.sleep(pause)
    finally:
        await conn.close()


KEYS = {"lis.samples": "id", "lis.results": "sample_id", "lis.orders": "id"}


async def check_ledger(ring: LocalRing, ledger: Ledger) -> dict[str, list[str]]:
    """Problems per member: keys missing there, or whose content differs from the
    member the write came from. Empty when every acknowledged write is everywhere."""
    problems: dict[str, list[str]] = {}
    rows: dict[str, dict[str, dict[int, str]]] = {}
    for n in ring.names:
        conn = await ring.conn(n)
        try:
            await conn.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
            rows[n] = {}
            for table, keys in ledger.keys.items():
                k = KEYS[table]
                got = await conn.fetch(
                    f"SELECT t.{k} AS k, t::text AS row FROM {table} t "
                    f"WHERE t.{k} = ANY($1::bigint[])", list(keys))
                rows[n][table] = {int(r["k"]): str(r["row"]) for r in got}
        finally:
            await conn.close()
    for n in ring.names:
        for table, keys in ledger.keys.items():
            for key, origin in keys.items():
                here = rows[n][table].get(key)
                if here is None:
                    problems.setdefault(n, []).append(f"{table} {key} (from {origin}) missing")
                elif here != rows[origin][table].get(key):
                    problems.setdefault(n, []).append(f"{table} {key} (from {origin}) differs")
    return problems


async def explain(ring: LocalRing, table: str, key: int) -> dict[str, object]:
    """Where a key is, with its commit origin and time at each member (for a failure)."""
    out: dict[str, object] = {}
    for n in ring.names:
        conn = await ring.conn(n)
        try:
            out[n] = await conn.fetchrow(
                f"SELECT t.xmin::text, x.timestamp, o.roname FROM {table} t LEFT JOIN LATERAL "
                "pg_xact_commit_timestamp_origin(t.xmin) x ON true LEFT JOIN "
                f"pg_replication_origin o ON o.roident = x.roident WHERE t.{KEYS[table]} = $1",
                key)
        finally:
            await conn.close()
    return out


async def wait_ledger(ring: LocalRing, ledger: Ledger, timeout: float = 60) -> None:
    """Until every acknowledged write is everywhere. The timeout is generous: on a busy
    2-CPU machine a ring that is still catching up (the links' lag is printed on
    failure) is not a ring that lost rows."""
    deadline = time.monotonic() + timeout
    problems: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        problems = await check_ledger(ring, ledger)
        if not problems:
            return
        await asyncio.sleep(0.5)
    summary = {n: f"{len(p)} problem(s), first: {p[:3]}" for n, p in problems.items()}
    for n, p in problems.items():
        table, key = p[0].split()[:2]
        print(n, p[0], await explain(ring, table, int(key)))
    raise AssertionError(f"acknowledged writes missing or different: {summary}")


class Sidecars:
    """`ringkeeper sync` processes with their status endpoints."""

    def __init__(self, ring: LocalRing, logdir: Path) -> None:
        self.ring = ring
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.writers: list[tuple[asyncio.Event, list[asyncio.Task[None]]]] = []

    def start(self, name: str) -> None:
        port = free_port()
        self.ports[name] = port
        argv = [sys.executable, "-m", "ringkeeper", "sync", "--member", name,
                "--local-dsn", self.ring.servers[name].dsn(), "--ring-file",
                str(self.ring.config_path), "--status-address", "127.0.0.1",
                "--status-port", str(port)]
        with (self.logdir / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def status(self, name: str) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/status",
                                        timeout=2) as r:
                data: dict[str, object] = json.loads(r.read())
                return data
        except OSError:
            return None

    def states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for n in self.procs:
            st = self.status(n) or {}
            links = st.get("links") or []
            assert isinstance(links, list)
            for lk in links:
                out[f"{lk['from']}->{lk['to']}"] = str(lk["state"])
        return out

    async def all_streaming(self) -> bool:
        states = await asyncio.to_thread(self.states)
        return len(states) == len(self.procs) and set(states.values()) == {"Streaming"}

    def stop(self) -> None:
        for name, proc in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
            del name
        self.procs.clear()

    async def wait_streaming(self, timeout: float = 40) -> None:
        try:
            await wait_until("every link streaming", self.all_streaming, timeout, interval=0.5)
        except AssertionError:
            print(self.states(), [self.status(n) for n in self.procs], self.logs())
            raise

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                         for p in sorted(self.logdir.glob("*.log")))


class SetupRing(LocalRing):
    def write_config(self) -> None:
        """LocalRing's config, with the TLS block external members must name (the local
        servers' DSNs carry no CA, so nothing else changes)."""
        super().write_config()
        data = json.loads(self.config_path.read_text())
        for m in data["spec"]["members"]:
            m["external"].setdefault("tls", {"caSecret": {"name": "x", "key": "ca.crt"}})
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.config_path)


@contextlib.asynccontextmanager
async def ring_of(majors: tuple[str, ...], tmp_path: Path):  # type: ignore[no-untyped-def]
    ring = SetupRing(majors)
    ring.start_servers()
    sidecars = Sidecars(ring, tmp_path)
    try:
        yield ring, sidecars
    finally:
        for stop, tasks in sidecars.writers:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        sidecars.stop()
        ring.destroy()


async def run_writers(ring: LocalRing, ledger: Ledger, sidecars: Sidecars,
                      table: str = "lis.samples",
                      pause: float = 0.02) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ledger_writer(ring, n, i + 1, ledger, stop, table=table,
                                               pause=pause))
             for i, n in enumerate(ring.names)]
    sidecars.writers.append((stop, tasks))
    return stop, tasks


async def finish(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.gather(*tasks)


async def test_all_sidecars_at_once_while_writes_run(tmp_path: Path) -> None:
    async with ring_of(("15", "17", "18", "17"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        # Four servers, four sidecars and four writers share this 2-CPU machine: a
        # slower writer leaves the ring the CPU to catch up within the test's time.
        stop, writers = await run_writers(ring, ledger, sidecars, pause=0.03)
        await asyncio.sleep(1.5)  # writes before any slot or publication exists
        before = {n: ledger.count(n) for n in ring.names}
        for n in ring.names:
            sidecars.start(n)
        await sidecars.wait_streaming()
        await asyncio.sleep(2)  # and after
        await finish(stop, writers)
        assert all(v > 10 for v in before.values()), before
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=20)


# The ring part of `make demo`, reduced: a ring set up while every member writes, in a
# different start order and timing each round, must end with every acknowledged write at
# every member, every time (issue 14: "converges on a new machine every time").
SETUP_ROUNDS = int(os.environ.get("RINGKEEPER_SETUP_ROUNDS", "5"))


# Once, under heavy machine load, round 1 (start order c, b, a) ended with 57 of c's
# acknowledged rows missing at b, a contiguous window; not reproduced in more than 60
# rounds since (local and CI, each listed XPASS while this was marked xfail). A test
# that cannot fail proves nothing: a lost window fails the build, and the test prints
# every server's slots, origin progress and slot history for the diagnosis.
@pytest.mark.parametrize("seed", range(SETUP_ROUNDS))
async def test_setup_under_writes_converges_every_time(tmp_path: Path, seed: int) -> None:
    import random

    rnd = random.Random(seed)
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        stop, writers = await run_writers(ring, ledger, sidecars, pause=0.03)
        await asyncio.sleep(rnd.uniform(0.3, 1.5))  # writes before any slot exists
        order = list(ring.names)
        rnd.shuffle(order)
        for n in order:
            sidecars.start(n)
            await asyncio.sleep(rnd.uniform(0.0, 1.0))  # and between sidecar starts
        await sidecars.wait_streaming()
        await asyncio.sleep(1)  # and after
        await finish(stop, writers)
        print(f"round {seed}: start order {order}, acknowledged "
              f"{ {n: ledger.count(n) for n in ring.names} }")
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            for n in ring.names:
                print(n, ring.servers[n].psql(
                    "SELECT slot_name, restart_lsn, confirmed_flush_lsn "
                    "FROM pg_replication_slots ORDER BY 1"))
                print(n, ring.servers[n].psql(
                    "SELECT external_id, remote_lsn, local_lsn "
                    "FROM pg_replication_origin_status ORDER BY 1"))
                print(n, ring.servers[n].psql(
                    "SELECT slot, created_lsn FROM ringkeeper.slot_history ORDER BY 1"))
            raise
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=20)


async def test_sidecars_started_one_by_one_while_writes_run(tmp_path: Path) -> None:
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        stop, writers = await run_writers(ring, ledger, sidecars)
        await asyncio.sleep(1)
        # c, whose upstream b has not started, comes first: it makes b's publication
        # and slot itself.
        sidecars.start("c")

        async def c_streams() -> bool:
            states: dict[str, str] = await asyncio.to_thread(sidecars.states)
            return states.get("b->c") == "Streaming"

        await wait_until("c's link from b streaming", c_streams, 30, interval=0.5)
        assert ring.servers["b"].psql(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'rk_lis'") == "1"
        for n in ("a", "b"):
            await asyncio.sleep(2)
            sidecars.start(n)
        await sidecars.wait_streaming()
        await asyncio.sleep(1.5)
        await finish(stop, writers)
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise


async def test_pre_existing_rows_at_every_member_travel(tmp_path: Path) -> None:
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        for i, n in enumerate(ring.names):
            ring.servers[n].psql(
                "INSERT INTO lis.samples (id, campus, status, result) SELECT g, "
                f"'{n}', 'old', g / 3.0 FROM generate_series({(i + 1) * 100_000 + 1}, "
                f"{(i + 1) * 100_000 + 1000}) g")
        ledger = Ledger()
        for i, n in enumerate(ring.names):
            for k in range((i + 1) * 100_000 + 1, (i + 1) * 100_000 + 1001):
                ledger.record("lis.samples", k, n)
        stop, writers = await run_writers(ring, ledger, sidecars)
        await asyncio.sleep(1)
        for n in ring.names:
            sidecars.start(n)
        await sidecars.wait_streaming()
        await asyncio.sleep(1.5)
        await finish(stop, writers)
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=20)
        # The copies kept each row's true origin: at a, c's old rows say c.
        conn = await ring.conn("a")
        try:
            origin = await conn.fetchval(
                "SELECT o.roname FROM lis.samples s, pg_xact_commit_timestamp_origin(s.xmin) "
                "x JOIN pg_replication_origin o ON o.roident = x.roident WHERE s.id = 300001")
            assert origin == "rk_lis_c"
            logged = await conn.fetch("SELECT kind, relation, key, local_origin, "
                                      "local_committed_at, remote_origin, remote_committed_at, "
                                      "reason FROM ringkeeper.conflicts LIMIT 5")
            assert logged == []  # rows both copied and streamed are not conflicts
        finally:
            await conn.close()


async def test_table_created_while_the_ring_runs_is_captured_from_its_first_row(
        tmp_path: Path) -> None:
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        for n in ring.names:
            sidecars.start(n)
        await sidecars.wait_streaming()
        ledger = Ledger()
        stop = asyncio.Event()
        writers: list[asyncio.Task[None]] = []
        sidecars.writers.append((stop, writers))
        # Each campus creates the table on its own schedule and writes at once; rows
        # from a campus that has it reach one that does not yet, and wait there.
        for i, n in enumerate(ring.names):
            ring.servers[n].psql(NEW_TABLE)
            writers.append(asyncio.create_task(ledger_writer(
                ring, n, i + 1, ledger, stop, table="lis.orders", pause=0.005)))
            if n == "a":
                # b has no such table yet: its link from a parks that table's rows
                # (sync/parking.py), keeps streaming the others, and says why.
                async def b_waits() -> str | None:
                    st = await asyncio.to_thread(sidecars.status, "b") or {}
                    links: Any = st.get("links") or []
                    for lk in links:
                        for pk in lk.get("parked") or [] if lk["from"] == "a" else []:
                            if pk["table"] == "lis.orders" and \
                                    "lis.orders does not exist" in pk["reason"]:
                                return str(pk["reason"])
                    return None

                await wait_until("b's link from a waiting for lis.orders", b_waits, 10)
            await asyncio.sleep(1.5)
        await asyncio.sleep(2)
        await finish(stop, writers)
        assert ledger.count("a") > 100
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise
        await wait_until("every link streaming again", sidecars.all_streaming, 20, interval=0.5)


async def seeding_done(sidecars: Sidecars, name: str) -> bool:
    st = await asyncio.to_thread(sidecars.status, name) or {}
    seeding: Any = st.get("seeding") or {}
    return bool(seeding.get("state") == "Done")


async def test_table_that_appears_after_a_members_copy_is_copied_from_every_member(
        tmp_path: Path) -> None:
    """Issue 14 (`make demo` lost one campus's first rows): a table one member already
    writes when the ring is set up, and that the others create only after their copies
    of that member ran. Its rows written before the ring's slots existed reach the
    others only by a copy of that table, made when it appears there."""
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        stop = asyncio.Event()
        writers: list[asyncio.Task[None]] = []
        sidecars.writers.append((stop, writers))
        ring.servers["a"].psql(NEW_TABLE)  # at a only, before any slot or publication
        writers.append(asyncio.create_task(ledger_writer(
            ring, "a", 1, ledger, stop, table="lis.orders", pause=0.01)))
        await asyncio.sleep(1)
        early = ledger.count("a")
        for n in ring.names:
            sidecars.start(n)
        for n in ("b", "c"):
            await wait_until(f"{n} copied the other members' rows",
                             lambda n=n: seeding_done(sidecars, n), 40, interval=0.5)
        # Now b and c create the table and write it at once, like every campus of the
        # demo creating the LIS schema while the ring sets up.
        for i, n in enumerate(("b", "c"), start=2):
            ring.servers[n].psql(NEW_TABLE)
            writers.append(asyncio.create_task(ledger_writer(
                ring, n, i, ledger, stop, table="lis.orders", pause=0.01)))
        await asyncio.sleep(3)
        await finish(stop, writers)
        assert early > 20, early
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise
        await wait_until("every link streaming", sidecars.all_streaming, 30, interval=0.5)


async def test_new_table_created_everywhere_at_once_while_the_ring_streams(
        tmp_path: Path) -> None:
    """The brief's case of issue 14: the ring streams, then every member creates a new
    table at the same moment and writes it at once (long before the sidecars' 10 s
    table refresh). Every acknowledged row of it must end at every member; the new
    table's per-table copies (each member's from every other) run while the ring is
    live and must neither lose nor double a row."""
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        stop, writers = await run_writers(ring, ledger, sidecars, pause=0.03)
        for n in ring.names:
            sidecars.start(n)
        await sidecars.wait_streaming()
        await asyncio.gather(*(asyncio.to_thread(ring.servers[n].psql, NEW_TABLE)
                               for n in ring.names))
        stop2, writers2 = await run_writers(ring, ledger, sidecars, table="lis.orders",
                                            pause=0.01)
        await asyncio.sleep(4)
        await finish(stop2, writers2)
        await finish(stop, writers)
        assert all(len([o for o in ledger.keys["lis.orders"].values() if o == n]) > 20
                   for n in ring.names), ledger.count("a")
        try:
            await wait_ledger(ring, ledger)
        except AssertionError:
            print(sidecars.states(), [sidecars.status(n) for n in sidecars.procs])
            print(sidecars.logs())
            raise
        await wait_until("every link streaming", sidecars.all_streaming, 30, interval=0.5)
        for n in ring.names:
            conflicts = ring.servers[n].psql(
                "SELECT count(*) FROM ringkeeper.conflicts WHERE relation = 'lis.orders'")
            assert conflicts == "0", (n, conflicts)  # a row copied and streamed is no conflict


async def test_checker_reports_a_row_removed_behind_the_rings_back(tmp_path: Path) -> None:
    async with ring_of(("15", "17", "18"), tmp_path) as (ring, sidecars):
        ledger = Ledger()
        stop, writers = await run_writers(ring, ledger, sidecars)
        await asyncio.sleep(0.5)
        for n in ring.names:
            sidecars.start(n)
        await sidecars.wait_streaming()
        await finish(stop, writers)
        await wait_ledger(ring, ledger)
        victim = next(k for k, o in ledger.keys["lis.samples"].items() if o == "a")
        conn: asyncpg.Connection = await ring.conn("b")
        try:
            # Under the seed origin, which no link forwards: the delete stays at b.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("SELECT pg_replication_origin_session_setup('rk_lis__seed')")
            await conn.execute("DELETE FROM lis.results WHERE sample_id = $1", victim)
            await conn.execute("DELETE FROM lis.samples WHERE id = $1", victim)
            await conn.execute("SELECT pg_replication_origin_session_reset()")
        finally:
            await conn.close()
        await asyncio.sleep(2)  # time enough for it to travel, were it to
        problems = await check_ledger(ring, ledger)
        assert problems == {"b": [f"lis.samples {victim} (from a) missing",
                                  f"lis.results {victim} (from a) missing"]}
