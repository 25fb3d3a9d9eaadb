"""campusPriority: the local write that would lose everywhere else is refused (issue 14).

Under campusPriority a campus's own write over a version from a higher-priority campus
used to commit there, travel, and lose at every other member: the ring diverged for
good. The guard trigger (sync/priorityguard.py) refuses it where it is made.

- On one real server, the trigger and core.conflicts.local_write_allowed agree on every
  (policy, writer of the row's version, operation) case.
- In a 3-member ring with writers at every member before, during and after, C's
  updates and deletes of H's rows are refused (the ledger records the refusal, not an
  ack); C's updates of its own rows and H's of C's succeed; every member ends with
  identical data holding every acknowledged write. With the guard off
  (`priorityguard.keep` replaced by a no-op) the same script diverges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.core.conflicts import Policy, local_write_allowed
from ringkeeper.engines import EngineProfile, profile_for
from ringkeeper.sync import priorityguard
from ringkeeper.sync.capture import prepare_capture
from ringkeeper.sync.catalog import TableInfo
from ringkeeper.sync.origins import ensure_origins
from waiting import await_until as wait_until

from .ringlocal import LocalRing

pytestmark = pytest.mark.postgres

RING = "g"
# The row's version, written by: None = here (no origin).
PRIOS = {"h": 300, "c": 200, "peer": 200, "l": 100}
LOCAL = "c"


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[PgServer]:
    why = unavailable("17")
    if why:
        pytest.skip(why)
    s = PgServer("17", name="guard")
    s.start()
    try:
        s.psql("CREATE SCHEMA lis; CREATE TABLE lis.t (id int PRIMARY KEY, v text)")
        yield s
    finally:
        s.destroy()


@contextlib.asynccontextmanager
async def _captured() -> AsyncIterator[tuple[PgServer, asyncpg.Connection, EngineProfile,
                                            list[TableInfo]]]:
    """A server whose lis tables are captured by ring g, with its members' origins."""
    async with _server() as s:
        conn = await asyncpg.connect(s.dsn())
        try:
            profile = profile_for("postgresql", "17")
            tables, _ = await prepare_capture(conn, RING, ["lis.*"], [])
            await ensure_origins(conn, profile, RING, list(PRIOS))
            yield s, conn, profile, tables
        finally:
            await conn.close()


async def _write_as(conn: asyncpg.Connection, origin: str | None, sql: str,
                    *args: object) -> None:
    """Commit `sql` as the ring's applier does: replica role, under `origin`'s
    replication origin and its commit time; None: a plain local write."""
    if origin is None:
        await conn.execute(sql, *args)
        return
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("SELECT pg_replication_origin_session_setup($1)", f"rk_{RING}_{origin}")
    try:
        await conn.execute("BEGIN")
        await conn.execute(sql, *args)
        await conn.execute("SELECT pg_replication_origin_xact_setup('0/10', now())")
        await conn.execute("COMMIT")
    finally:
        await conn.execute("SELECT pg_replication_origin_session_reset()")
        await conn.execute("RESET session_replication_role")


async def _try(conn: asyncpg.Connection, sql: str, *args: object) -> str | None:
    """None when the local write commits, else the refusal's SQLSTATE and hint."""
    try:
        await conn.execute(sql, *args)
    except asyncpg.PostgresError as exc:
        return f"{exc.sqlstate} {getattr(exc, 'hint', '')} {exc}"
    return None


async def test_the_trigger_refuses_exactly_what_the_core_rule_refuses() -> None:
    async with _captured() as (_, conn, profile, tables):
        checked = 0
        for policy in (Policy.CAMPUS_PRIORITY, Policy.LAST_WRITER_WINS,
                       Policy.CAMPUS_PRIORITY):
            on = await priorityguard.keep(conn, profile, RING, LOCAL, policy, PRIOS, tables)
            assert on == (policy == Policy.CAMPUS_PRIORITY)
            await conn.execute("DELETE FROM lis.t; DELETE FROM ringkeeper.tombstones")
            writers: list[str | None] = [None, "seed", *PRIOS]
            for i, who in enumerate(writers):
                origin = "_seed" if who == "seed" else who
                prio = None if who in (None, "seed") else PRIOS[who]
                allowed = local_write_allowed(policy, PRIOS[LOCAL], prio)
                base = i * 10
                # UPDATE and DELETE of a row whose version `who` wrote.
                for op, sql in (("update", "UPDATE lis.t SET v = 'local' WHERE id = $1"),
                                ("delete", "DELETE FROM lis.t WHERE id = $1")):
                    key = base + (1 if op == "update" else 2)
                    await _write_as(conn, origin, "INSERT INTO lis.t VALUES ($1, 'x')", key)
                    got = await _try(conn, sql, key)
                    assert (got is None) == allowed, (policy, who, op, got)
                    if got is not None:
                        hint = f"{priorityguard.SQLSTATE} write it at {who},"
                        assert got.startswith(hint), got
                        assert f"lis.t key [\"{key}\"]" in got and f"campus {who}" in got, got
                    checked += 1
                # INSERT of a key whose last delete `who` made (its tombstone).
                key = base + 3
                await _write_as(conn, None, "INSERT INTO lis.t VALUES ($1, 'x')", key)
                await _write_as(conn, origin, "DELETE FROM lis.t WHERE id = $1", key)
                got = await _try(conn, "INSERT INTO lis.t VALUES ($1, 'again')", key)
                assert (got is None) == allowed, (policy, who, "insert", got)
                checked += 1
            # The ring's own sessions (replica) are never refused.
            await _write_as(conn, "h", "INSERT INTO lis.t VALUES (999, 'h')")
            await _write_as(conn, "l", "UPDATE lis.t SET v = 'l' WHERE id = 999")
        assert checked == 3 * 6 * 3
        # A table created while the ring runs gets the guard from the event trigger,
        # in the current state (on).
        await conn.execute("CREATE TABLE lis.late (id int PRIMARY KEY, v text)")
        await _write_as(conn, "h", "INSERT INTO lis.late VALUES (1, 'h')")
        got = await _try(conn, "UPDATE lis.late SET v = 'c' WHERE id = 1")
        assert got is not None and got.startswith(priorityguard.SQLSTATE), got


async def test_an_application_role_without_ring_rights_is_served_by_the_triggers() -> None:
    """Applications write as their own role, with no rights on schema ringkeeper: the
    tombstone trigger (every DELETE) and the guard must still run for them (they are
    SECURITY DEFINER); before, every DELETE by such a role failed with "permission
    denied for schema ringkeeper" (the syncCrash drill's load saw it)."""
    async with _captured() as (s, conn, profile, tables):
        await priorityguard.keep(conn, profile, RING, LOCAL, Policy.CAMPUS_PRIORITY,
                                 PRIOS, tables)
        await conn.execute(
            "CREATE ROLE clerk LOGIN PASSWORD 'clerk-pw'; "
            "GRANT USAGE, CREATE ON SCHEMA lis TO clerk; "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON lis.t TO clerk")
        await conn.execute("INSERT INTO lis.t VALUES (1, 'mine'), (2, 'mine')")
        await _write_as(conn, "h", "INSERT INTO lis.t VALUES (3, 'h')")
        app = await asyncpg.connect(host=s.host, port=s.port, database=s.database,
                                    user="clerk", password="clerk-pw")
        try:
            assert await app.fetchval("SELECT current_user") == "clerk"
            assert await app.fetchval(
                "SELECT has_schema_privilege('ringkeeper', 'USAGE')") is False
            assert await _try(app, "DELETE FROM lis.t WHERE id = 1") is None
            assert await _try(app, "UPDATE lis.t SET v = 'again' WHERE id = 2") is None
            got = await _try(app, "UPDATE lis.t SET v = 'c' WHERE id = 3")
            assert got is not None and got.startswith(priorityguard.SQLSTATE), got
            # A table the application creates joins the ring (event trigger) and
            # its deletes leave tombstones too.
            await app.execute("CREATE TABLE lis.notes (id int PRIMARY KEY, v text)")
            await app.execute("INSERT INTO lis.notes VALUES (7, 'x')")
            assert await _try(app, "DELETE FROM lis.notes WHERE id = 7") is None
        finally:
            await app.close()
        assert await conn.fetchval(
            "SELECT count(*) FROM ringkeeper.tombstones WHERE (relation, key) IN "
            "(('lis.t', '[\"1\"]'::jsonb), ('lis.notes', '[\"7\"]'::jsonb))") == 2


# -- a whole ring -------------------------------------------------------------------------

H, MID, C = "a", "b", "c"  # priorities 300, 200, 100


class Writers:
    """One writer per member inserting its own rows and updating its earlier ones, until
    told to stop; each acknowledged commit goes into the ledger (id -> status, None for
    a delete). A writer only ever touches its own rows, and only its last three."""

    def __init__(self, ring: LocalRing) -> None:
        self.ring = ring
        self.ledger: dict[int, str | None] = {}
        self.stop = asyncio.Event()
        self.acked: dict[str, int] = {}

    async def run(self, member: str, index: int) -> None:
        conn = await self.ring.conn(member)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                sid = index * 1_000_000 + n
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO lis.samples (id, campus, status) VALUES ($1, $2, 'new')",
                        sid, member)
                    if n > 3 and n % 3 == 0:
                        await conn.execute("UPDATE lis.samples SET status = 'done' "
                                           "WHERE id = $1", sid - 3)
                self.ledger[sid] = "new"
                if n > 3 and n % 3 == 0:
                    self.ledger[sid - 3] = "done"
                self.acked[member] = n
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


Mismatch = tuple[int, str | None, str | None]  # key, the ledger's, the member's


async def _mismatches(ring: LocalRing,
                     ledger: dict[int, str | None]) -> dict[str, list[Mismatch]]:
    out: dict[str, list[Mismatch]] = {}
    for m in ring.names:
        conn = await ring.conn(m)
        try:
            have = {r["id"]: r["status"] for r in await conn.fetch(
                "SELECT id, status FROM lis.samples")}
        finally:
            await conn.close()
        out[m] = [(k, want, have.get(k)) for k, want in sorted(ledger.items())
                  if have.get(k) != want]
    return out


async def _at(ring: LocalRing, member: str, ids: list[int]) -> int:
    conn = await ring.conn(member)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM lis.samples WHERE id = ANY($1)",
                                       ids))
    finally:
        await conn.close()


async def _scenario(ring: LocalRing) -> tuple[Writers, list[tuple[int, str]], list[int]]:
    """Writers everywhere; H writes rows, C tries to update and delete them (and to
    re-insert a key H deleted), H updates and deletes old rows of C's. Returns the
    writers (ledger), C's refusals and the keys C changed over H's versions."""
    writers = Writers(ring)
    tasks = [asyncio.create_task(writers.run(m, i + 1)) for i, m in enumerate(ring.names)]
    refused: list[tuple[int, str]] = []
    c_acked: list[int] = []
    try:
        await asyncio.sleep(0.5)  # writes before the ring exists
        for n in ring.names:
            ring.start_sidecar(n)

        async def streaming() -> bool:
            return all(sc.state.links and all(lk.state == "Streaming"
                                              for lk in sc.state.links.values())
                       for sc in ring.sidecars.values())
        await wait_until("every link streams", streaming, 90)

        h_ids = list(range(9_000_001, 9_000_021))
        h = await ring.conn(H)
        c = await ring.conn(C)
        try:
            for i in h_ids:
                await h.execute("INSERT INTO lis.samples (id, campus, status) "
                                "VALUES ($1, 'a', 'h')", i)
                writers.ledger[i] = "h"

            async def h_rows_at_c() -> bool:
                return await _at(ring, C, h_ids) == len(h_ids)
            await wait_until("H's rows reach C", h_rows_at_c, 60)
            # C writes over H's versions: updates, deletes.
            for i in h_ids:
                sql = ("DELETE FROM lis.samples WHERE id = $1" if i % 4 == 0 else
                       "UPDATE lis.samples SET status = 'c' WHERE id = $1")
                try:
                    await c.execute(sql, i)
                except asyncpg.PostgresError as exc:
                    refused.append((i, f"{exc.sqlstate} {getattr(exc, 'hint', '')}"))
                else:
                    writers.ledger[i] = None if i % 4 == 0 else "c"
                    c_acked.append(i)
            # H updates and deletes old rows of C's (C's writer no longer touches them).
            c_old = [3_000_000 + n for n in range(1, max(writers.acked[C] - 5, 1))][:12]
            assert len(c_old) >= 6, writers.acked
            for i in c_old[:8]:
                await h.execute("UPDATE lis.samples SET status = 'h-over-c' WHERE id = $1", i)
                writers.ledger[i] = "h-over-c"
            gone = c_old[8:10]
            for i in gone:
                await h.execute("DELETE FROM lis.samples WHERE id = $1", i)
                writers.ledger[i] = None

            async def h_deletes_at_c() -> bool:
                return await _at(ring, C, gone) == 0
            await wait_until("H's deletes reach C", h_deletes_at_c, 60)
            # C re-inserts a key H deleted: the delete would beat it everywhere else.
            try:
                await c.execute("INSERT INTO lis.samples (id, campus, status) "
                                "VALUES ($1, 'c', 'c-again')", gone[0])
            except asyncpg.PostgresError as exc:
                refused.append((gone[0], f"{exc.sqlstate} {getattr(exc, 'hint', '')}"))
            else:
                writers.ledger[gone[0]] = "c-again"
                c_acked.append(gone[0])
            # C's updates of its own rows: its writer keeps doing them, and here too.
            mine = c_old[10]
            await c.execute("UPDATE lis.samples SET status = 'c-own' WHERE id = $1", mine)
            writers.ledger[mine] = "c-own"
        finally:
            await h.close()
            await c.close()
        await asyncio.sleep(1.0)  # writes after
    finally:
        writers.stop.set()
        await asyncio.gather(*tasks)
    return writers, refused, c_acked


async def test_a_ring_under_campus_priority_converges_with_writes_everywhere() -> None:
    why = unavailable("15") or unavailable("17") or unavailable("18")
    if why:
        pytest.skip(why)
    ring = LocalRing(("17", "15", "18"), priorities={H: 300, MID: 200, C: 100},
                     policy="campusPriority")
    ring.start_servers()
    try:
        writers, refused, c_acked = await _scenario(ring)
        assert c_acked == [], c_acked
        assert len(refused) == 21, refused  # 20 rows of H's and the re-insert
        assert all(r.startswith(f"{priorityguard.SQLSTATE} write it at a, or use "
                                "lastWriterWins") for _, r in refused), refused
        await ring.wait_converged(timeout=90)
        bad = await _mismatches(ring, writers.ledger)
        assert bad == {m: [] for m in ring.names}, {m: b[:5] for m, b in bad.items()}
        assert sum(v is not None for v in writers.ledger.values()) > 100, len(writers.ledger)
    finally:
        await ring.stop_all()
        ring.destroy()


async def test_without_the_guard_the_ring_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same script with the guard never installed: C's writes are acknowledged,
    stay at C, and lose at A and B for good."""
    why = unavailable("15") or unavailable("17") or unavailable("18")
    if why:
        pytest.skip(why)

    async def off(*_args: object, **_kw: object) -> bool:
        return False
    monkeypatch.setattr(priorityguard, "keep_config", off)
    ring = LocalRing(("17", "15", "18"), priorities={H: 300, MID: 200, C: 100},
                     policy="campusPriority")
    ring.start_servers()
    try:
        writers, refused, c_acked = await _scenario(ring)
        assert refused == [] and len(c_acked) == 21, (refused, c_acked)

        async def settled() -> bool:  # every writer's last row is everywhere
            last = [i * 1_000_000 + writers.acked[m] for i, m in
                    enumerate(ring.names, start=1)]
            return all([await _at(ring, m, last) == 3 for m in ring.names])
        await wait_until("the writers' last rows everywhere", settled, 90)
        await asyncio.sleep(2.0)
        bad = await _mismatches(ring, writers.ledger)
        assert bad[C] == []
        lost = {k for k, _, _ in bad[H]}
        assert lost == set(c_acked), bad[H][:5]
        assert {k for k, _, _ in bad[MID]} == set(c_acked)
        sums = await ring.checksums()
        assert sums[C] != sums[H] == sums[MID]
    finally:
        await ring.stop_all()
        ring.destroy()
