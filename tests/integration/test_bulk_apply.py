"""The bulk apply path against real servers: values that need quoting arrive intact,
conflicts still go through the rules, and changed keys reach incremental verification."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from pgserver import unavailable
from ringkeeper.core.verify import MemberConn
from ringkeeper.verify.runner import verify

from .ringlocal import LocalRing, wait_until

pytestmark = pytest.mark.skipif(bool(unavailable("15") or unavailable("18")),
                                reason="needs PostgreSQL 15 and 18")

NASTY = ["plain", "it's", 'say "hi"', "back\\slash", "{braces,commas}", "NULL", "",
         "tab\there", "new\nline", "héllo ☃ 中文", " padded ", "\\x41", "a'b\"c\\d{e}f,g"]


def _streaming(ring: LocalRing) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(sc.state.role == "Primary" and bool(sc.state.links) and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in ring.sidecars.values())
    return check


@contextlib.asynccontextmanager
async def started(majors: tuple[str, ...], *, server_sql: dict[str, str] | None = None
                  ) -> AsyncIterator[LocalRing]:
    """A local ring with every sidecar streaming; everything is torn down after."""
    ring = LocalRing(majors)
    ring.start_servers()
    try:
        for n, sql in (server_sql or {}).items():
            ring.servers[n].psql(sql)
        for n in ring.names:
            ring.start_sidecar(n)
        await wait_until("links streaming", _streaming(ring), 60)
        yield ring
    finally:
        await ring.stop_all()
        ring.destroy()


async def _links(ring: LocalRing, member: str) -> list[dict[str, object]]:
    return [lk.as_dict() for lk in ring.sidecars[member].state.links.values()]


async def test_bulk_path_keeps_every_value_and_marks_keys() -> None:
    async with started(("15", "18")) as ring:
        a = await ring.conn("a")
        try:
            for i, v in enumerate(NASTY * 20):
                await a.execute(
                    "INSERT INTO lis.samples (id, campus, patient, status, result, flags, "
                    "payload) VALUES ($1, 'a', $2, $3, $4, $5, $6)", i + 1, v,
                    v or "x", i / 7, [v, None, v], v.encode())
            async with a.transaction():
                await a.execute("UPDATE lis.samples SET patient = NULL, status = 'updated' "
                                "WHERE id % 3 = 0")
                await a.execute("DELETE FROM lis.samples WHERE id % 5 = 0")
            # Small transactions (values as typed parameters, a few rows per statement).
            for i in range(1, 120, 7):
                async with a.transaction():
                    await a.execute("UPDATE lis.samples SET patient = $2, result = $3 "
                                    "WHERE id = ANY($1::bigint[])", [i, i + 1, i + 2],
                                    NASTY[i % len(NASTY)], -i / 3)
                    await a.execute("DELETE FROM lis.samples WHERE id = ANY($1::bigint[])",
                                    [i + 3, i + 4])
            # One key deleted and inserted again, another inserted and then updated, each
            # in one transaction: a single statement cannot see its own groups' rows.
            async with a.transaction():
                await a.execute("DELETE FROM lis.samples WHERE id = 2")
                await a.execute("INSERT INTO lis.samples (id, campus, status, patient) "
                                "VALUES (2, 'a', 'again', 'it''s back')")
            async with a.transaction():
                await a.execute("INSERT INTO lis.samples (id, campus, status) "
                                "VALUES (100000, 'a', 'new')")
                await a.execute("UPDATE lis.samples SET status = 'newer' WHERE id = 100000")
        finally:
            await a.close()
        await ring.wait_converged(("lis.samples",), timeout=60)
        links = await _links(ring, "b")
        assert links and int(links[0]["bulkScripts"]) > 0, links  # type: ignore[call-overload]

        await ring.stop_all()  # so the damage below stays at b
        b = await ring.conn("b")
        try:
            # The bulk path recorded every applied key, once per transaction and table.
            keys = await b.fetchval("SELECT count(DISTINCT k) FROM ringkeeper.dirty_key_sets, "
                                    "unnest(keys) k WHERE relation = 'lis.samples'")
            assert keys >= len(NASTY * 20)
            await b.execute("UPDATE lis.samples SET status = 'damaged' WHERE id = 7")
        finally:
            await b.close()
        members = [MemberConn.for_ring(ring.ring, n, ring.servers[n].dsn(), priority=100)
                   for n in ring.names]
        report = await verify(members, ["lis.samples"], mode="incremental", settle_seconds=0)
        t = report.tables[0]
        assert t.keys_touched >= len(NASTY * 20)
        assert [list(d.key) for d in report.differences] == [["7"]]


async def test_conflicting_insert_falls_back_to_the_rules() -> None:
    async with started(("15", "18")) as ring:
        await ring.stop_all()
        conns: dict[str, asyncpg.Connection] = {n: await ring.conn(n) for n in ring.names}
        try:
            # Both members write key 5 while the ring is stopped (their slots keep it):
            # at b, a's insert finds b's own row, so a's transaction cannot take the bulk
            # path and the rules decide (a's is newer).
            await conns["b"].execute("INSERT INTO lis.samples (id, campus, status) "
                                     "VALUES (5, 'b', 'older')")
            await conns["a"].execute("INSERT INTO lis.samples (id, campus, status) "
                                     "SELECT g, 'a', 'newer' FROM generate_series(1, 50) g")
            for n in ring.names:
                ring.start_sidecar(n)
            await ring.wait_converged(("lis.samples",), timeout=60)
            assert await conns["b"].fetchval(
                "SELECT status FROM lis.samples WHERE id = 5") == "newer"
            logged = await conns["b"].fetch("SELECT kind FROM ringkeeper.conflicts")
            assert [r["kind"] for r in logged] == ["insert_exists"]
            links = await _links(ring, "b")
            assert int(links[0]["bulkMisses"]) >= 1, links  # type: ignore[call-overload]
        finally:
            for c in conns.values():
                await c.close()


FAIL_ONCE = """
CREATE SCHEMA ctl;
CREATE SEQUENCE ctl.small;
CREATE SEQUENCE ctl.large;
CREATE FUNCTION ctl.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- nextval is not undone by the rollback: the first attempt fails, the next passes.
    IF (NEW.id = 25 AND nextval('ctl.small') = 1)
            OR (NEW.id = 3000 AND nextval('ctl.large') = 1) THEN
        RAISE EXCEPTION 'injected failure at row %', NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE INSERT ON lis.samples FOR EACH ROW
    EXECUTE FUNCTION ctl.fail_once();
ALTER TABLE lis.samples ENABLE ALWAYS TRIGGER fail_once;
"""


async def test_transaction_failing_at_the_target_is_applied_on_retry() -> None:
    """PostgreSQL moves a replication origin's progress even for an aborted transaction
    that had set it up. A transaction that fails half-way at the target (here a trigger
    raising once, in a small transaction on the bulk path and in one large enough to be
    applied in parts) must be applied when tried again, never counted as applied."""
    async with started(("17", "18"), server_sql={"b": FAIL_ONCE}) as ring:
        a = await ring.conn("a")
        try:
            await a.execute("INSERT INTO lis.samples (id, campus, status) "
                            "SELECT g, 'a', 'small' FROM generate_series(1, 50) g")
            await a.execute("INSERT INTO lis.samples (id, campus, status) "
                            "SELECT g, 'a', 'large' FROM generate_series(1001, 6000) g")
        finally:
            await a.close()
        await ring.wait_converged(("lis.samples",), timeout=90)
        b = await ring.conn("b")
        try:
            assert await b.fetchval("SELECT count(*) FROM lis.samples") == 5050
            for seq in ("ctl.small", "ctl.large"):  # each failed once, then passed
                assert await b.fetchval(f"SELECT last_value FROM {seq}") == 2, seq
        finally:
            await b.close()


async def test_hold_slots_keep_up_without_decoding() -> None:
    """Every member's hold slot passes a burst of 20,000 rows written at one member once
    the ring has it everywhere, the members that only forwarded included (they move on
    by their link slots' confirmed positions, not by decoding their own WAL)."""
    async with started(("15", "17", "18")) as ring:
        a = await ring.conn("a")
        try:
            for lo in range(1, 20001, 2000):
                await a.execute("INSERT INTO lis.samples (id, campus, status) "
                                "SELECT g, 'a', 'burst' FROM generate_series($1::int, $2) g",
                                lo, lo + 1999)
        finally:
            await a.close()
        await ring.wait_converged(("lis.samples",), timeout=90)
        marks: dict[str, str] = {}
        for n in ring.names:
            c = await ring.conn(n)
            try:
                marks[n] = await c.fetchval("SELECT pg_current_wal_lsn()::text")
            finally:
                await c.close()

        async def passed() -> bool:
            for n in ring.names:
                c = await ring.conn(n)
                try:
                    if not await c.fetchval(
                            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM "
                            "pg_replication_slots WHERE slot_name = $2", marks[n],
                            f"rk_{ring.ring}_{n}_hold"):
                        return False
                finally:
                    await c.close()
            return True
        await wait_until("every hold slot past the burst", passed, 30)

        # WAL the ring does not carry (a table outside it) must not stay pinned either:
        # a caught-up link confirms the source's WAL end from its keepalives.
        a = await ring.conn("a")
        try:
            await a.execute("CREATE TABLE public.noise AS SELECT g FROM "
                            "generate_series(1, 50000) g")
            noise_end = await a.fetchval("SELECT pg_current_wal_lsn()::text")

            async def link_confirmed() -> bool:
                return bool(await a.fetchval(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots "
                    "WHERE slot_name = $2", noise_end, f"rk_{ring.ring}_a_to_b"))
            await wait_until("a's link slot past WAL it does not carry", link_confirmed, 30)
        finally:
            await a.close()


SAME_VERSION_AUDIT = """
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.written (id bigint, op text);
CREATE OR REPLACE FUNCTION audit.count_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.written VALUES (COALESCE(NEW.id, OLD.id), TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER count_write AFTER INSERT OR UPDATE OR DELETE ON lis.samples
    FOR EACH ROW EXECUTE FUNCTION audit.count_write();
ALTER TABLE lis.samples ENABLE ALWAYS TRIGGER count_write;
"""


@pytest.mark.parametrize("path", ["bulk", "row-by-row"])
async def test_a_version_that_arrives_twice_is_written_once(path: str) -> None:
    """A write copied at a join and streamed too arrives twice with the same origin and
    commit time: the second arrival must be skipped, on the bulk path and on the
    row-by-row path's set-based statements alike (both once wrote it again)."""
    from datetime import UTC, datetime

    from ringkeeper.engines import profile_for
    from ringkeeper.sync.apply import Applier
    from ringkeeper.sync.pgoutput import Column, Insert, Relation, Update
    from ringkeeper.sync.records import Txn

    async with started(("15", "18")) as ring:
        await ring.stop_all()
        b = await ring.conn("b")
        try:
            await b.execute(SAME_VERSION_AUDIT)
            cols = [str(r["attname"]) for r in await b.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'lis.samples'::regclass "
                "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum")]
            applier = Applier(b, profile_for("postgresql", "18"), ring.ring, "b",
                              {"a": 100, "b": 100}, "lastWriterWins")
            await applier.start()
            await applier.relation(Relation(1, "lis", "samples", "d", tuple(
                Column(c, 0, -1, c == "id") for c in cols)))

            def row(key: int, status: str) -> tuple[str | None, ...]:
                values = {"id": str(key), "campus": "a", "status": status,
                      "collected_at": "2026-12-01 12:00:00+00"}
                return tuple(values.get(c) for c in cols)

            at = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
            keys = range(1, 41)
            # The copy: each row as it was written at a, origin LSN 0/0.
            await applier.apply_txns([Txn("a", 0, at, 0, [Insert(1, row(k, "v1")) for k in keys])])
            await applier.settle()
            # The same write streamed: an update (and a delete) with that very version.
            same = Txn("a", 0x7000_0000_1000, at, 0x7000_0000_1100,
                       [Update(1, None, None, row(k, "v1")) for k in keys])
            if path == "bulk":
                await applier.apply_txns([same])
            else:
                await applier.apply_one(same)
            await applier.settle()
            # A later write of the same origin is still applied, on either path.
            later = Txn("a", 0x7000_0000_2000, at.replace(microsecond=123457), 0x7000_0000_2100,
                        [Update(1, None, None, row(k, "v2")) for k in keys])
            if path == "bulk":
                await applier.apply_txns([later])
            else:
                await applier.apply_one(later)
            await applier.settle()
            written = {(r["op"], int(r["n"])) for r in await b.fetch(
                "SELECT op, count(*) AS n FROM audit.written GROUP BY op")}
            assert written == {("INSERT", len(keys)), ("UPDATE", len(keys))}, written
            assert await b.fetchval("SELECT count(*) FROM lis.samples WHERE id <= 40 "
                                    "AND status = 'v2'") == len(keys)
        finally:
            await b.close()
