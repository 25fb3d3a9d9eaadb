"""The replication ring against real PostgreSQL 15, 17 and 18 servers.

Each test builds a ring of local servers and runs the real sync sidecars on them
(in-process, or as `ringkeeper sync` processes where a test kills them). An
ALWAYS trigger at every member counts each row the ring applies, so "exactly
once" is counted, not assumed: a duplicate apply would count twice, a gap would
count short.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import asyncpg
import pytest

from pgserver import unavailable

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.postgres

for _m in ("15", "17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

AUDIT = """
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.applied (op text, id bigint, origin text);
CREATE OR REPLACE FUNCTION audit.count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Only changes the ring applies (a replica-role session), never local writes.
  IF current_setting('session_replication_role') = 'replica' THEN
    INSERT INTO audit.applied VALUES (TG_OP, NEW.id, NEW.campus);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER audit_count AFTER INSERT OR UPDATE ON lis.samples
  FOR EACH ROW EXECUTE FUNCTION audit.count();
ALTER TABLE lis.samples ENABLE ALWAYS TRIGGER audit_count;
"""


async def write_load(ring: LocalRing, member: str, index: int, txns: int, *,
                     rows: int = 5, seed: int = 0) -> dict[str, int]:
    """Inserts, updates of this member's own rows, and result rows, in small transactions."""
    rnd = random.Random(seed or index)
    conn = await ring.conn(member)
    counts = {"inserted": 0, "updated": 0}
    try:
        next_id = index * 10_000_000
        mine: list[int] = []
        for _ in range(txns):
            async with conn.transaction():
                for _ in range(rows):
                    next_id += 1
                    await conn.execute(
                        "INSERT INTO lis.samples (id, campus, patient, status, result, flags, "
                        "payload) VALUES ($1, $2, $3, 'collected', $4, $5, $6)",
                        next_id, member, f"p-{rnd.randrange(1000)}",
                        rnd.randrange(10**6) / 1000, ["a", member], rnd.randbytes(8))
                    await conn.execute(
                        "INSERT INTO lis.results VALUES ($1, 'GLU', $2, 'ok')", next_id,
                        rnd.random() * 10)
                    mine.append(next_id)
                    counts["inserted"] += 1
                if len(mine) > 10:
                    victim = rnd.choice(mine[:-5])
                    await conn.execute(
                        "UPDATE lis.samples SET status = 'verified', result = result + 1 "
                        "WHERE id = $1", victim)
                    counts["updated"] += 1
            await asyncio.sleep(0)
    finally:
        await conn.close()
    return counts


async def audit_counts(ring: LocalRing, member: str) -> tuple[int, int, int]:
    conn = await ring.conn(member)
    try:
        ins = await conn.fetchval("SELECT count(*) FROM audit.applied WHERE op = 'INSERT'")
        upd = await conn.fetchval("SELECT count(*) FROM audit.applied WHERE op = 'UPDATE'")
        dup = await conn.fetchval(
            "SELECT count(*) FROM (SELECT id FROM audit.applied WHERE op = 'INSERT' "
            "GROUP BY id HAVING count(*) > 1) d")
        return int(ins), int(upd), int(dup)
    finally:
        await conn.close()


async def conflicts(ring: LocalRing, member: str) -> list[asyncpg.Record]:
    conn = await ring.conn(member)
    try:
        return list(await conn.fetch("SELECT * FROM ringkeeper.conflicts ORDER BY id"))
    finally:
        await conn.close()


@pytest.fixture
async def ring4() -> object:
    ring = LocalRing(("15", "17", "18", "17"), bypass_after=5)
    ring.start_servers()
    for n in ring.names:
        ring.servers[n].psql(AUDIT)
    yield ring
    await ring.stop_all()
    ring.destroy()


async def test_four_member_mixed_ring_converges_exactly_once(ring4: LocalRing) -> None:
    ring = ring4
    for n in ring.names:
        ring.start_sidecar(n)
    await wait_until("sidecars set up", _all_streaming(ring), 30)
    counts = await asyncio.gather(*(write_load(ring, n, i + 1, 60)
                                    for i, n in enumerate(ring.names)))
    await ring.wait_converged(("lis.samples", "lis.results"), timeout=90)
    total_ins = sum(c["inserted"] for c in counts)
    total_upd = sum(c["updated"] for c in counts)
    for n, c in zip(ring.names, counts, strict=True):
        ins, upd, dup = await audit_counts(ring, n)
        # Every other member's rows once; its own never (nothing loops back).
        assert (ins, upd, dup) == (total_ins - c["inserted"], total_upd - c["updated"], 0), n
        assert await conflicts(ring, n) == [], f"unexpected conflicts at {n}"
    sums = await ring.checksums()
    assert sums["a"].startswith(f"{total_ins}:")
    # Origins kept: each row's commit time at every member is the original one.
    conn = await ring.conn("c")
    try:
        origins = await conn.fetch(
            "SELECT campus, count(*) FROM lis.samples s LEFT JOIN LATERAL "
            "pg_xact_commit_timestamp_origin(s.xmin) x ON true JOIN pg_replication_origin o "
            "ON o.roident = x.roident GROUP BY campus ORDER BY campus")
        assert {r["campus"] for r in origins} == {"a", "b", "d"}
    finally:
        await conn.close()


def _all_streaming(ring: LocalRing) -> object:
    async def check() -> bool:
        return all(sc.state.role == "Primary" and sc.state.links and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in ring.sidecars.values())
    return check


async def test_conflicting_writes_resolve_identically_and_are_logged() -> None:
    ring = LocalRing(("15", "18", "17"), priorities={"a": 300, "b": 200, "c": 100})
    ring.start_servers()
    try:
        # Common starting rows everywhere (as if replicated), then writes that collide.
        for n in ring.names:
            ring.servers[n].psql(
                "INSERT INTO lis.samples (id, campus, status, collected_at) SELECT g, 'seed', "
                "'new', '2026-01-01' FROM generate_series(1, 20) g")
        # Slots exist from here on; the sidecars stop so the writes below collide.
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", _all_streaming(ring), 30)
        await ring.stop_all()
        order = ["c", "a", "b"]  # commit order: b's writes are the newest
        for n in order:
            s = ring.servers[n]
            s.psql(f"UPDATE lis.samples SET status = 'by-{n}' WHERE id BETWEEN 1 AND 10")
            s.psql("INSERT INTO lis.samples (id, campus, status, collected_at) "
                   f"VALUES (100, '{n}', 'ins-{n}', '2026-01-02')")
            await asyncio.sleep(0.01)
        # A delete at a (older) against an update at c (newer) of row 15.
        ring.servers["a"].psql("DELETE FROM lis.samples WHERE id = 15")
        await asyncio.sleep(0.01)
        ring.servers["c"].psql("UPDATE lis.samples SET status = 'late-update' WHERE id = 15")
        # An update at b (older) against a delete at c (newer) of row 16.
        ring.servers["b"].psql("UPDATE lis.samples SET status = 'doomed' WHERE id = 16")
        await asyncio.sleep(0.01)
        ring.servers["c"].psql("DELETE FROM lis.samples WHERE id = 16")
        for n in ring.names:
            ring.start_sidecar(n)
        await ring.wait_converged(timeout=60)
        conn = await ring.conn("a")
        try:
            rows = {r["id"]: r["status"] for r in await conn.fetch(
                "SELECT id, status FROM lis.samples WHERE id IN (1, 10, 15, 16, 100)")}
        finally:
            await conn.close()
        assert rows == {1: "by-b", 10: "by-b", 15: "late-update", 100: "ins-b"}
        logged = [r for n in ring.names for r in await conflicts(ring, n)]
        kinds = {r["kind"] for r in logged}
        assert "insert_exists" in kinds and "update_update" in kinds
        assert all(r["remote_origin"] in ring.names for r in logged)
        assert any(r["key"] == "[\"100\"]" for r in logged)
    finally:
        await ring.stop_all()
        ring.destroy()


async def test_sigkill_sidecar_mid_batch_no_duplicate_no_gap(tmp_path: Path) -> None:
    ring = LocalRing(("17", "15"))
    ring.start_servers()
    try:
        for n in ring.names:
            ring.servers[n].psql(AUDIT)
        ring.start_process("b", tmp_path / "b.log")
        ring.start_sidecar("a")
        await asyncio.sleep(2)
        # Big transactions so a kill lands inside one.
        conn = await ring.conn("a")
        try:
            for k in range(12):
                await conn.execute(
                    "INSERT INTO lis.samples (id, campus, status, payload) "
                    "SELECT g, 'a', 'x', decode(md5(g::text), 'hex') "
                    f"FROM generate_series({k * 20000 + 1}, {(k + 1) * 20000}) g")
        finally:
            await conn.close()
        kills = 0
        for _ in range(6):
            await asyncio.sleep(random.uniform(0.3, 1.0))
            ring.kill_process("b")
            kills += 1
            ring.start_process("b", tmp_path / "b.log")
        await ring.wait_converged(timeout=120)
        ins, _, dup = await audit_counts(ring, "b")
        assert (ins, dup) == (240000, 0), (tmp_path / "b.log").read_text()[-3000:]
        assert await conflicts(ring, "b") == []
        assert kills == 6
    finally:
        if "b" in ring.procs:
            ring.kill_process("b")
        await ring.stop_all()
        ring.destroy()


async def test_member_down_ring_heals_around_it_and_it_catches_up(ring4: LocalRing) -> None:
    ring = ring4
    for n in ring.names:
        ring.start_sidecar(n)
    await wait_until("sidecars set up", _all_streaming(ring), 30)
    await write_load(ring, "a", 1, 10)
    await ring.wait_converged(timeout=60)
    ring.servers["b"].stop("immediate")
    # Writes continue at every live member while b is down.
    live = ["a", "c", "d"]
    await asyncio.gather(*(write_load(ring, n, 10 + i, 20) for i, n in enumerate(live)))

    async def bypassing() -> bool:
        lk = ring.sidecars["c"].state.links.get("a->c")
        return lk is not None and lk.bypassing == ("b",)

    await wait_until("c to bypass b", bypassing, 30)
    await ring.wait_converged(timeout=60, members=live)
    ring.servers["b"].start()
    await write_load(ring, "c", 20, 5)
    await ring.wait_converged(("lis.samples", "lis.results"), timeout=90)
    await wait_until("the ring to close through b again",
                     lambda: _has_link(ring, "c", "b->c"), 30)
    for n in ring.names:
        _, _, dup = await audit_counts(ring, n)
        assert dup == 0
        assert await conflicts(ring, n) == []


async def _has_link(ring: LocalRing, member: str, key: str) -> bool:
    return key in ring.sidecars[member].state.links and \
        ring.sidecars[member].state.links[key].state == "Streaming"


async def test_member_joins_with_stock_sync_while_writes_continue() -> None:
    ring = LocalRing(("17", "15", "18", "17"), seed=("d",))
    ring.members_in_config = ["a", "b", "c"]
    ring.start_servers()
    try:
        for n in ("a", "b", "c"):
            ring.start_sidecar(n)
        await asyncio.sleep(2)
        conn = await ring.conn("a")
        try:
            await conn.execute("INSERT INTO lis.samples (id, campus, status) "
                               "SELECT g, 'a', 'old' FROM generate_series(1, 30000) g")
        finally:
            await conn.close()
        await ring.wait_converged(timeout=60, members=["a", "b", "c"])
        writer = asyncio.create_task(write_load(ring, "b", 5, 200, rows=3))
        await asyncio.sleep(0.5)
        ring.members_in_config = ["a", "b", "c", "d"]
        ring.write_config()
        ring.start_sidecar("d")
        await writer
        await write_load(ring, "a", 6, 5)
        await ring.wait_converged(("lis.samples", "lis.results"), timeout=120)
        seeding = ring.sidecars["d"].state.seeding
        assert seeding is not None and seeding.state == "Done"
        assert seeding.rows_copied >= 30000 and seeding.percent == 100.0
    finally:
        await ring.stop_all()
        ring.destroy()


async def test_failover_of_a_postgresql_17_member_mid_stream_loses_nothing() -> None:
    """Failover slots: the standby has the ring's slots, so its promotion loses nothing."""
    import os
    import subprocess

    from pgserver import PgServer, _as_pod_user

    ring = LocalRing(("17", "15"))
    ring.start_servers()
    primary = ring.servers["a"]
    primary.psql("SELECT pg_create_physical_replication_slot('sb')")
    standby = PgServer("17", name="a-standby")
    os.environ["PGPASSWORD"] = "ringkeeper-test"
    await asyncio.to_thread(
        subprocess.run, _as_pod_user([str(standby.bin / "pg_basebackup"), "-D",
                                      str(standby.data), "-d",
                                      primary.dsn() + "?application_name=standby", "-R",
                                      "-S", "sb", "-X", "stream"]),
        check=True, capture_output=True)
    with (standby.data / "postgresql.conf").open("a") as f:
        f.write(f"port = {standby.port}\nunix_socket_directories = '{standby.root}'\n"
                "synchronized_standby_slots = ''\nsynchronous_standby_names = ''\n"
                "sync_replication_slots = on\nhot_standby_feedback = on\n"
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                "password=ringkeeper-test dbname=postgres application_name=standby'\n")
    standby.start()
    # Synchronous (RPO 0), and logical readers never ahead of the standby's slot copies.
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
    primary.psql("ALTER SYSTEM SET synchronized_standby_slots = 'sb'")
    primary.psql("SELECT pg_reload_conf()")
    try:
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", _all_streaming(ring), 30)

        async def synced() -> bool:
            c: asyncpg.Connection = await asyncpg.connect(standby.dsn())
            try:
                return bool(await c.fetchval(
                    # a's link slot (a two-member ring keeps no hold slot)
                    "SELECT count(*) = 1 FROM pg_replication_slots WHERE synced "
                    "AND NOT temporary AND slot_name LIKE 'rk_lis_a_%'"))
            finally:
                await c.close()

        committed: list[int] = []

        async def writer() -> None:
            conn = await ring.conn("a")
            try:
                for i in range(1, 100000):
                    await conn.execute("INSERT INTO lis.samples (id, campus, status) "
                                       "VALUES ($1, 'a', 'x')", i)
                    committed.append(i)  # acknowledged: on the synchronous standby too
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return
            finally:
                if not conn.is_closed():
                    conn.terminate()

        task = asyncio.create_task(writer())
        # A synced slot becomes usable once its origin has moved past what the standby
        # kept (PostgreSQL 17 keeps it temporary until then): writes make that happen.
        # The slot sync worker backs off up to 30 s between rounds when nothing changed.
        await wait_until("the ring's slots synchronised to the standby", synced, 150)
        await asyncio.sleep(2)
        primary.stop("immediate")  # the primary dies mid-stream
        await task
        await ring.stop_sidecar("a")
        await asyncio.to_thread(
            subprocess.run, [str(standby.bin / "psql"), standby.dsn(), "-c",
                             "SELECT pg_promote()"], check=True, capture_output=True)
        ring.servers["a"] = standby  # the campus's primary is now the old standby
        ring.write_config()
        ring.start_sidecar("a")
        assert len(committed) > 100

        async def all_there() -> bool:
            c = await ring.conn("b")
            try:
                got = await c.fetchval("SELECT count(*) FROM lis.samples WHERE id = ANY($1)",
                                       committed)
                return bool(got == len(committed))
            finally:
                await c.close()

        await wait_until("every acknowledged row at the other member", all_there, 60)
        await ring.wait_converged(timeout=60)
        assert ring.sidecars["a"].state.gaps == []
    finally:
        await ring.stop_all()
        standby.destroy()
        primary.destroy()
        ring.servers["a"] = primary
        ring.destroy()
