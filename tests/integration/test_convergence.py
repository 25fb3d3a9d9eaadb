"""Convergence by construction on real servers (issue 14, items 2, 3 and 4).

Rings of real PostgreSQL 15, 17 and 18 servers with the real sync sidecars: a winning
delete of a row a member does not have is passed on (ringkeeper.relay), updates that
leave a TOASTed value alone carry it (REPLICA IDENTITY FULL, pgoutput.new_values), a
conflict storm ends identical everywhere with no deleted row back, and TRUNCATE of a
replicated table is refused with a message that says what to do instead.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import pytest

from pgserver import unavailable
from ringkeeper.core import names

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.postgres

for _m in ("15", "17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)


def streaming(ring: LocalRing) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(sc.state.role == "Primary" and sc.state.links and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in ring.sidecars.values())
    return check


async def fetch(ring: LocalRing, member: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await ring.conn(member)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def settled(ring: LocalRing, timeout: float = 60) -> None:
    """Identical everywhere, and still so after the links had time to bring anything
    left (a state that only looks converged for a moment does not pass)."""
    await ring.wait_converged(timeout=timeout)
    await asyncio.sleep(2)
    sums = await ring.checksums()
    assert len(set(sums.values())) == 1, sums


async def test_delete_update_delete_ends_absent_everywhere() -> None:
    """Issue 14's script: A deletes at t0, B updates at t1, D deletes at t2, and D's
    delete reaches A (which no longer has the row) before B's update. Before the fix
    the row survived at B and C."""
    ring = LocalRing(("15", "17", "18", "17"))
    ring.start_servers()
    try:
        ring.servers["a"].psql("INSERT INTO lis.samples (id, campus, status) "
                               "VALUES (1, 'a', 'new'), (2, 'a', 'new')")
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", streaming(ring), 30)
        await ring.wait_converged(timeout=30)
        await ring.stop_all()
        ring.servers["a"].psql("DELETE FROM lis.samples WHERE id = 1")
        await asyncio.sleep(0.02)
        ring.servers["b"].psql("UPDATE lis.samples SET status = 'by-b' WHERE id = 1")
        await asyncio.sleep(0.02)
        ring.servers["d"].psql("DELETE FROM lis.samples WHERE id = 1")
        # Only the link d -> a first: D's delete meets A's tombstone, not B's update.
        ring.start_sidecar("a")
        origin_d = names.origin_name(ring.ring, "d")

        async def a_has_ds_tombstone() -> bool:
            rows = await fetch(ring, "a",
                               "SELECT o.roname FROM ringkeeper.tombstones tb, "
                               "pg_xact_commit_timestamp_origin(tb.xmin) x "
                               "JOIN pg_replication_origin o ON o.roident = x.roident "
                               "WHERE tb.relation = 'lis.samples' AND tb.key = '[\"1\"]'")
            return bool(rows) and rows[0]["roname"] == origin_d

        await wait_until("D's delete recorded at A", a_has_ds_tombstone, 30)
        for n in ("b", "c", "d"):
            ring.start_sidecar(n)
        await settled(ring)
        for n in ring.names:
            ids = [r["id"] for r in await fetch(ring, n, "SELECT id FROM lis.samples")]
            assert ids == [2], f"{n} holds {ids}"
            assert await fetch(ring, n, "SELECT * FROM ringkeeper.relay") == []
        # B kept its update against A's older delete and logged it; D's delete reached
        # B and C through A's relay.
        kinds = {(n, r["kind"]) for n in ring.names for r in await fetch(
            ring, n, "SELECT kind FROM ringkeeper.conflicts")}
        assert ("a", "delete_missing") in kinds and ("b", "update_update") in kinds, kinds
    finally:
        await ring.stop_all()
        ring.destroy()


def incompressible(n: int, seed: int) -> str:
    rnd = random.Random(seed)
    return "".join(rnd.choices(string.ascii_letters + string.digits, k=n))


async def test_updates_of_toasted_rows_converge_and_truncate_is_refused() -> None:
    """An update of a small column of a row with a ~20 kB TOASTed value, applied where
    the row is missing (deleted earlier by another member) or is another member's older
    version with another large value: both ended in 2-2 splits before the fix."""
    ring = LocalRing(("17", "15", "18", "17"))
    ring.start_servers()
    big = {k: incompressible(20_000, k) for k in (1, 2)}
    try:
        conn = await ring.conn("a")
        try:
            for k, text in big.items():
                await conn.execute("INSERT INTO lis.samples (id, campus, status, patient) "
                                   "VALUES ($1, 'a', 'new', $2)", k, text)
            stored = await conn.fetchval(
                "SELECT pg_column_size(patient) FROM lis.samples WHERE id = 1")
            assert 15_000 < stored < 25_000  # stored out of line, not compressed away
        finally:
            await conn.close()
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", streaming(ring), 30)
        await ring.wait_converged(timeout=30)
        for n in ring.names:
            ident = await fetch(ring, n, "SELECT relreplident::text FROM pg_class "
                                         "WHERE oid = 'lis.samples'::regclass")
            assert ident[0]["relreplident"] == "f", n
        await ring.stop_all()
        # Row 1: missing at c (c deleted it, older) when a's update arrives.
        ring.servers["c"].psql("DELETE FROM lis.samples WHERE id = 1")
        # Row 2: c writes another large value (older), a then changes the status only.
        other = incompressible(20_000, 99)
        ring.servers["c"].psql(f"UPDATE lis.samples SET patient = '{other}' WHERE id = 2")
        await asyncio.sleep(0.02)
        ring.servers["a"].psql("UPDATE lis.samples SET status = 'by-a' WHERE id IN (1, 2)")
        for n in ring.names:
            ring.start_sidecar(n)
        await settled(ring)
        for n in ring.names:
            rows = {r["id"]: (r["status"], r["patient"]) for r in await fetch(
                ring, n, "SELECT id, status, patient FROM lis.samples")}
            assert rows == {1: ("by-a", big[1]), 2: ("by-a", big[2])}, \
                {k: (s, p[:10]) for k, (s, p) in rows.items()}

        # TRUNCATE of a replicated table is refused and says what to do instead.
        conn = await ring.conn("b")
        try:
            with pytest.raises(asyncpg.FeatureNotSupportedError) as err:
                await conn.execute("TRUNCATE lis.samples")
            assert "refused" in str(err.value) and "DELETE FROM lis.samples" in \
                (err.value.hint or "")
            assert await conn.fetchval("SELECT count(*) FROM lis.samples") == 2
            # An administrator can still empty one member's copy on purpose.
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica; "
                                   "TRUNCATE lis.results")
        finally:
            await conn.close()
    finally:
        await ring.stop_all()
        ring.destroy()


@dataclass(frozen=True)
class Write:
    key: int
    deleted: bool
    status: str
    member: str
    at: datetime


async def writer(ring: LocalRing, member: str, keys: int, until: float,
                 seed: int) -> list[Write]:
    """Random inserts, updates (of a small column, or of a large one stored out of line)
    and deletes of shared keys; each acknowledged write is recorded with its commit
    time."""
    rnd = random.Random(seed)
    out: list[Write] = []
    conn = await ring.conn(member)
    n = 0
    try:
        while time.monotonic() < until:
            key = rnd.randrange(keys)
            n += 1
            status = f"{member}-{n}"
            op = rnd.choice(("update", "update", "big", "delete", "insert"))
            async with conn.transaction():
                if op == "delete":
                    done = await conn.execute("DELETE FROM lis.samples WHERE id = $1", key)
                    hit = done != "DELETE 0"
                elif op == "update":  # a TOASTed value, if the row has one, travels as
                    done = await conn.execute(  # unchanged
                        "UPDATE lis.samples SET status = $2, campus = $3 WHERE id = $1",
                        key, status, member)
                    hit = done != "UPDATE 0"
                elif op == "big":  # stored out of line (6 kB that do not compress)
                    done = await conn.execute(
                        "UPDATE lis.samples SET status = $2, patient = $3 WHERE id = $1",
                        key, status, incompressible(6_000, rnd.randrange(10**9)))
                    hit = done != "UPDATE 0"
                else:
                    done = await conn.execute(
                        "INSERT INTO lis.samples (id, campus, status) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING", key, member, status)
                    hit = done != "INSERT 0 0"
                xid = await conn.fetchval("SELECT pg_current_xact_id()::xid")
            if hit:
                at = await conn.fetchval("SELECT pg_xact_commit_timestamp($1::xid)", xid)
                out.append(Write(key, op == "delete", status, member, at))
            await asyncio.sleep(0)
    finally:
        await conn.close()
    return out


async def test_conflict_storm_converges_without_resurrection() -> None:
    ring = LocalRing(("15", "17", "18", "17"))
    ring.start_servers()
    keys = 200
    try:
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", streaming(ring), 30)
        ring.servers["a"].psql("INSERT INTO lis.samples (id, campus, status) "
                               f"SELECT g, 'a', 'seed' FROM generate_series(0, {keys - 1}) g")
        await ring.wait_converged(timeout=30)
        until = time.monotonic() + 20
        ledgers = await asyncio.gather(*(writer(ring, n, keys, until, i + 1)
                                         for i, n in enumerate(ring.names)))
        t_converge = time.monotonic()
        await settled(ring, timeout=90)
        writes = [w for ledger in ledgers for w in ledger]
        print(f"storm: {len(writes)} acknowledged writes, converged "
              f"{time.monotonic() - t_converge - 2:.1f} s after the writers stopped")
        assert len(writes) > 1000, len(writes)
        latest: dict[int, Write] = {}
        for w in writes:
            # The policy: newest commit time, then priority (equal here), then name.
            have = latest.get(w.key)
            if have is None or (w.at, w.member) > (have.at, have.member):
                latest[w.key] = w
        for n in ring.names:
            rows = {r["id"]: r["status"] for r in await fetch(
                ring, n, "SELECT id, status FROM lis.samples")}
            resurrected = [k for k, w in latest.items() if w.deleted and k in rows]
            assert resurrected == [], f"{n}: deleted last, yet present: {resurrected}"
            wrong = {k: (rows.get(k), w.status) for k, w in latest.items()
                     if not w.deleted and rows.get(k) != w.status}
            assert wrong == {}, f"{n}: not the last write: {wrong}"
        deletes = sum(w.deleted for w in latest.values())
        assert deletes > 10  # the ledger's check had deletes to check
        logged = [len(await fetch(ring, n, "SELECT 1 FROM ringkeeper.conflicts"))
                  for n in ring.names]
        assert sum(logged) > 0
    finally:
        await ring.stop_all()
        ring.destroy()


CODES = ("CREATE TABLE IF NOT EXISTS lis.codes (id bigint PRIMARY KEY, "
         "code text NOT NULL UNIQUE, note text)")


async def codes(ring: LocalRing, member: str) -> dict[int, str]:
    return {r["id"]: r["code"] for r in await fetch(ring, member,
                                                    "SELECT id, code FROM lis.codes")}


async def test_unique_clash_on_a_non_key_column_is_a_logged_conflict_not_a_stop() -> None:
    """Two members give one unique code to two different keys (by insert and by update):
    the later write keeps the code, the other key goes everywhere, each resolution is in
    ringkeeper.conflicts, and the ring goes on (issue 14, item 7). Before, the link
    stopped at the unique violation and retried it for ever."""
    ring = LocalRing(("15", "18", "17"))
    ring.start_servers()
    try:
        for n in ring.names:
            ring.servers[n].psql(CODES)
        ring.servers["a"].psql("INSERT INTO lis.codes VALUES (10, 'P', 'a'), (11, 'Q', 'a')")
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("sidecars set up", streaming(ring), 30)

        async def same(expected: dict[int, str] | None = None) -> bool:
            got = [await codes(ring, n) for n in ring.names]
            return all(g == got[0] for g in got) and (expected is None or got[0] == expected)

        await wait_until("codes everywhere", lambda: same({10: "P", 11: "Q"}), 30)
        await ring.stop_all()
        ring.servers["a"].psql("INSERT INTO lis.codes VALUES (1, 'X', 'a'); "
                               "UPDATE lis.codes SET code = 'R' WHERE id = 10")
        await asyncio.sleep(0.02)
        ring.servers["b"].psql("INSERT INTO lis.codes VALUES (2, 'X', 'b'); "
                               "UPDATE lis.codes SET code = 'R' WHERE id = 11")
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("the later writes everywhere", lambda: same({2: "X", 11: "R"}), 60)
        await asyncio.sleep(2)
        assert await same({2: "X", 11: "R"})
        clashes = [r for n in ring.names for r in await fetch(
            ring, n, "SELECT kind, resolution, reason FROM ringkeeper.conflicts "
                     "WHERE kind = 'unique_clash'")]
        assert {r["resolution"] for r in clashes} == {"apply_remote", "keep_local"}, clashes
        # The ring still runs.
        ring.servers["c"].psql("INSERT INTO lis.codes VALUES (3, 'Z', 'c')")
        await wait_until("a new row everywhere",
                         lambda: same({2: "X", 3: "Z", 11: "R"}), 30)
        assert all(lk.state == "Streaming" for sc in ring.sidecars.values()
                   for lk in sc.state.links.values())
    finally:
        await ring.stop_all()
        ring.destroy()
