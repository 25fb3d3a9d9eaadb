"""Verification and repair between real PostgreSQL 15 and 18 servers (and a 17 third member).

Every test works in a fresh database on each server, writes the same data to every
member the way a converged ring would hold it, injects known differences, and checks that
verification names exactly those, that repair removes them with the original commit
timestamps, and that a busy but healthy ring reports nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.verify import (
    MemberConn,
    Progress,
    Report,
    VerifyError,
    load_report,
    repair,
    verify,
    write_report,
)

pytestmark = pytest.mark.postgres

RING = "ring"
MAJORS = ("15", "18", "17")  # a, b (required), c (three-member cases)
_db_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[PgServer]]:
    for m in MAJORS[:2]:
        if reason := unavailable(m):
            pytest.skip(reason)
    started: list[PgServer] = []
    try:
        for i, m in enumerate(MAJORS):
            if i == 2 and unavailable(m):
                break
            s = PgServer(m, name=f"verify-{m}", settings={"fsync": "off",
                                                         "synchronous_commit": "off"})
            s.start()
            started.append(s)
        yield started
    finally:
        for s in started:
            s.destroy()


@dataclass
class Ring:
    """A fresh database on each server, as ring members a, b (, c)."""

    members: list[MemberConn]
    conns: list[Any]

    @property
    def a(self) -> Any:
        return self.conns[0]

    @property
    def b(self) -> Any:
        return self.conns[1]

    async def all(self, sql: str, *args: Any) -> None:
        for c in self.conns:
            await c.execute(sql, *args)


@pytest.fixture
async def ring(servers: list[PgServer]) -> AsyncIterator[Ring]:
    db = f"verify_{next(_db_numbers)}"
    admin = [await asyncpg.connect(s.dsn()) for s in servers]
    for c in admin:
        await c.execute(f"CREATE DATABASE {db}")
        await c.close()
    members = [MemberConn.for_ring(RING, name, s.dsn(db), priority=100)
               for name, s in zip("abc", servers, strict=False)]
    conns = [await asyncpg.connect(m.dsn) for m in members]
    try:
        yield Ring(members, conns)
    finally:
        for c in conns:
            await c.close()


EDGE_TABLE = """
CREATE TABLE items (
  id int PRIMARY KEY, n numeric, ts timestamptz, f float8, f4 float4, t text, b bytea,
  j jsonb, js json, arr int[], narr numeric[], iv interval, d date);
"""
# Filler rows identical everywhere (ids 1..3000), then edge rows from 10001.
FILL = """
INSERT INTO items SELECT g, g / 7.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 min',
  g / 3.0, g / 3.0, 'row ' || g, decode(md5(g::text), 'hex'),
  jsonb_build_object('g', g, 'h', 'x'), json_build_object('g', g), ARRAY[g, g + 1],
  ARRAY[g / 4.0], g * interval '1 second', '2024-01-01'::date + g
FROM generate_series(1, 3000) g
"""

# Same value, different representation at a and b: must NOT be reported.
EQUAL_EDGES: list[tuple[int, str, str]] = [
    (10001, "n = 1.50", "n = 1.5"),
    (10002, "f = '-0'::float8, f4 = '-0'::float4", "f = 0, f4 = 0"),
    (10003, "f = 'NaN', f4 = 'NaN'", "f = 'NaN', f4 = 'NaN'"),
    (10004, "f = 1e-7, f4 = 1e-7", "f = 0.0000001, f4 = 0.0000001"),
    (10005, """j = '{"a": 1, "b": [1, 2]}'""", """j = '{"b": [1,2], "a": 1}'"""),
    (10006, """js = '{"a": 1}'""", """js = '{ "a" : 1 }'"""),
    (10007, "narr = ARRAY[1.50, 2.0]", "narr = ARRAY[1.5, 2]"),
    (10008, "t = 'é ö 漢字 😀'", "t = 'é ö 漢字 😀'"),
    (10009, "f = 'Infinity', n = 'NaN', d = 'infinity'",
     "f = 'Infinity', n = 'NaN', d = 'infinity'"),
]
# Real differences at b: must be reported, each exactly once, with its kind.
REAL_EDGES: list[tuple[int, str, str]] = [
    (10101, "t = ''", "t = NULL"),  # NULL is not ''
    (10102, "t = 'e\u0301'", "t = '\u00e9'"),  # decomposed vs composed é
    (10103, "b = '\\x00ff'", "b = '\\x00fe'"),
    (10104, "n = 2.5", "n = 2.51"),
    (10105, "f = 1e-7", "f = 1.0000001e-7"),
    (10106, """j = '{"a": 1}'""", """j = '{"a": "1"}'"""),
    (10107, "iv = '1 day'", "iv = '24 hours'"),
]


async def _edge_rows(ring: Ring) -> None:
    await ring.all(EDGE_TABLE)
    await ring.all(FILL)
    for key, at_a, at_b in EQUAL_EDGES + REAL_EDGES:
        for conn, sets in ((ring.a, at_a), (ring.b, at_b), *((c, at_a) for c in ring.conns[2:])):
            await conn.execute(f"INSERT INTO items (id) VALUES ({key})")
            await conn.execute(f"UPDATE items SET {sets} WHERE id = {key}")
    # The same instant entered in two session time zones.
    await ring.a.execute("SET TimeZone = 'America/New_York'; "
                         "INSERT INTO items (id, ts) VALUES (10010, '2024-02-29 19:00:00')")
    await ring.b.execute("SET TimeZone = 'Asia/Tokyo'; "
                         "INSERT INTO items (id, ts) VALUES (10010, '2024-03-01 09:00:00')")
    for c in ring.conns[2:]:
        await c.execute("INSERT INTO items (id, ts) VALUES (10010, '2024-03-01 00:00:00+00')")


async def _inject_structural(ring: Ring) -> None:
    await ring.b.execute("DELETE FROM items WHERE id IN (17, 2999)")  # missing on b
    await ring.b.execute("INSERT INTO items (id, t) VALUES (20000, 'only b'), (0, 'only b')")
    await ring.b.execute("UPDATE items SET t = 'changed' WHERE id = 1500")


def _found(report: Report) -> dict[tuple[str, ...], list[str]]:
    return {tuple(d.key): d.kinds for d in report.differences}


EXPECTED_KINDS: dict[tuple[str, ...], list[str]] = {
    **{(str(k),): ["differs"] for k, _, _ in REAL_EDGES},
    ("17",): ["missing_on"], ("2999",): ["missing_on"],
    ("20000",): ["extra_on"], ("0",): ["extra_on"],
    ("1500",): ["differs"],
}


@pytest.mark.parametrize("canonical", ["typed", "text"])
async def test_identical_rows_in_different_forms_compare_equal(ring: Ring,
                                                               canonical: str) -> None:
    await _edge_rows(ring)
    await ring.all("DELETE FROM items WHERE id > 10100")  # keep only equal-but-reworded rows
    seen: list[Progress] = []
    report = await verify(ring.members[:2], ["items"], mode="full", chunk_rows=500,
                          settle_seconds=0, canonical=canonical,  # type: ignore[arg-type]
                          progress=seen.append)
    t = report.tables[0]
    assert report.passed, report.render_text()
    assert t.rows == {"a": 3010, "b": 3010}
    assert t.chunks > 3 and t.chunks_differing == 0
    assert seen and seen[-1].chunks_done == t.chunks


@pytest.mark.parametrize("canonical", ["typed", "text"])
async def test_injected_differences_are_named_exactly(ring: Ring, canonical: str) -> None:
    await _edge_rows(ring)
    await _inject_structural(ring)
    report = await verify(ring.members[:2], ["public.items"], mode="full", chunk_rows=400,
                          leaf_rows=50, settle_seconds=0,
                          canonical=canonical)  # type: ignore[arg-type]
    assert _found(report) == EXPECTED_KINDS, report.render_text()
    t = report.tables[0]
    assert t.chunks_differing > 0 and t.keys_touched < 3000  # bisection, not a full fetch
    d = next(d for d in report.differences if d.key == ["10101"])
    assert d.versions["a"].values is not None and d.versions["a"].values["t"] == ""
    assert d.versions["b"].values is not None and d.versions["b"].values["t"] is None
    text = report.render_text()
    assert "missing_on" in text and "extra_on" in text and "10102" in text
    capped = await verify(ring.members[:2], ["items"], chunk_rows=400, leaf_rows=50,
                          settle_seconds=0, max_keys=3)
    assert capped.tables[0].truncated and len(capped.differences) == 3 and not capped.passed


async def _commit_info(conn: Any, key: int) -> tuple[datetime, str]:
    row = await conn.fetchrow(
        "SELECT c.timestamp, CASE WHEN c.roident = 0 THEN '' ELSE o.roname END AS origin "
        "FROM items i, pg_xact_commit_timestamp_origin(i.xmin) c "
        "LEFT JOIN pg_replication_origin o ON o.roident = c.roident WHERE i.id = $1", key)
    return row["timestamp"], row["origin"]


async def test_repair_from_source_keeps_original_commit_time(ring: Ring,
                                                            tmp_path: Path) -> None:
    await _edge_rows(ring)
    await _inject_structural(ring)
    members = ring.members[:2]
    report = await verify(members, ["items"], chunk_rows=400, settle_seconds=0)
    assert len(report.differences) == len(EXPECTED_KINDS)
    json_path, text_path = write_report(report, tmp_path / "verify.json")
    assert json.loads(json_path.read_text())["tables"][0]["table"] == "public.items"
    assert "10104" in text_path.read_text()
    report = load_report(json_path)

    before_b = await ring.b.fetch("SELECT id, t FROM items ORDER BY id")
    plan = await repair(report, members, source="a", dry_run=True)
    assert plan.dry_run and plan.applied == 0
    assert {(tuple(f.key), f.member, f.action) for f in plan.fixes} == {
        *(((str(k),), "b", "upsert") for k, _, _ in REAL_EDGES),
        (("17",), "b", "upsert"), (("2999",), "b", "upsert"), (("1500",), "b", "upsert"),
        (("20000",), "b", "delete"), (("0",), "b", "delete")}
    assert await ring.b.fetch("SELECT id, t FROM items ORDER BY id") == before_b

    done = await repair(report, members, source="a", dry_run=False)
    assert done.applied == len(EXPECTED_KINDS)
    again = await verify(members, ["items"], chunk_rows=400, settle_seconds=0)
    assert again.passed, again.render_text()
    for key in (10104, 17, 1500):
        ts_a, origin_a = await _commit_info(ring.a, key)
        ts_b, origin_b = await _commit_info(ring.b, key)
        assert ts_b == ts_a, key
        assert origin_a == "" and origin_b == "rk_ring_a"
    # 0/0 never moves the origin's replay position.
    lsn = await ring.b.fetchval("SELECT pg_replication_origin_progress('rk_ring_a', false)")
    assert lsn in (None, "0/0")  # never advanced
    # A second repair has nothing left to do.
    assert (await repair(report, members, source="a", dry_run=False)).applied == 0


async def test_three_members_repair_by_newest_commit(ring: Ring) -> None:
    if len(ring.members) < 3:
        pytest.skip("PostgreSQL 17 is not installed (third member)")
    a, b, c = ring.conns
    await ring.all("CREATE TABLE acct (region text, id int, balance numeric, "
                   "PRIMARY KEY (region, id))")
    await ring.all("INSERT INTO acct SELECT r, g, g * 10 FROM unnest(ARRAY['north', 'south']) r, "
                   "generate_series(1, 1500) g")
    await c.execute("UPDATE acct SET balance = -1 WHERE region = 'north' AND id = 7")
    await asyncio.sleep(0.02)
    await a.execute("UPDATE acct SET balance = -2 WHERE region = 'south' AND id = 9")
    await b.execute("DELETE FROM acct WHERE region = 'south' AND id = 1000")
    await c.execute("INSERT INTO acct VALUES ('west', 1, 0)")
    report = await verify(ring.members, None, chunk_rows=300, leaf_rows=40, settle_seconds=0)
    assert report.tables[0].table == "public.acct"
    found = {tuple(d.key): (d.missing_on, d.extra_on, d.differs_on)
             for d in report.differences}
    assert found == {
        ("north", "7"): ([], [], ["c"]),
        ("south", "9"): ([], [], ["b", "c"]),
        ("south", "1000"): (["b"], [], []),
        ("west", "1"): ([], ["c"], []),
    }
    c_ts, _ = (await c.fetchrow("SELECT pg_xact_commit_timestamp(xmin), 0 FROM acct "
                                "WHERE region = 'north' AND id = 7"))
    # The sidecar holds c's origin at a for a moment: repair waits for it.
    holder = await asyncpg.connect(ring.members[0].dsn)
    await holder.execute("SELECT pg_replication_origin_create('rk_ring_c')")
    await holder.execute("SELECT pg_replication_origin_session_setup('rk_ring_c')")
    release = asyncio.get_running_loop().call_later(
        0.5, lambda: asyncio.ensure_future(holder.close()))
    t0 = time.monotonic()
    result = await repair(report, ring.members, dry_run=False)  # ring policy
    release.cancel()
    await holder.close()
    assert result.applied == 2 + 2 + 1 + 2
    assert time.monotonic() - t0 >= 0.4  # it did wait for the busy origin
    again = await verify(ring.members, ["acct"], chunk_rows=300, settle_seconds=0)
    assert again.passed, again.render_text()
    for conn in (a, b):
        row = await conn.fetchrow("SELECT balance, pg_xact_commit_timestamp(xmin) AS ts "
                                  "FROM acct WHERE region = 'north' AND id = 7")
        assert row["balance"] == -1 and row["ts"] == c_ts
    assert await b.fetchval("SELECT count(*) FROM acct WHERE region = 'west'") == 1


async def test_table_without_primary_key_is_a_clear_error(ring: Ring) -> None:
    await ring.all("CREATE TABLE audit_log (at timestamptz, what text)")
    with pytest.raises(VerifyError, match="audit_log has no primary key"):
        await verify(ring.members[:2], ["audit_log"])
    report = await verify(ring.members[:2])
    assert report.skipped == {"public.audit_log": "no primary key"}
    assert "public.audit_log: NOT VERIFIED" in report.render_text()


async def _mark_dirty(conn: Any, keys: list[int]) -> None:
    """What the sidecar does in each applied transaction, in bulk."""
    await conn.execute("""
        CREATE SCHEMA IF NOT EXISTS ringkeeper;
        CREATE TABLE IF NOT EXISTS ringkeeper.dirty_keys (relation text NOT NULL,
          key jsonb NOT NULL, changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
          PRIMARY KEY (relation, key))""")
    await conn.execute("INSERT INTO ringkeeper.dirty_keys (relation, key) "
                       "SELECT 'public.big', jsonb_build_array(k::text) FROM unnest($1::int[]) k "
                       "ON CONFLICT (relation, key) DO UPDATE SET changed_at = clock_timestamp()",
                       keys)


async def test_incremental_touches_only_changed_keys(ring: Ring) -> None:
    members = ring.members[:2]
    await ring.all("CREATE TABLE big (id bigint PRIMARY KEY, v int, note text)")
    await ring.all("INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 200000) g")
    # 10,000 rows change at a and are applied at b; b's sidecar marks them dirty.
    changed = random.Random(6).sample(range(1, 200001), 10_000)
    await ring.all("UPDATE big SET v = v + 1 WHERE id = ANY($1::bigint[])", changed)
    await _mark_dirty(ring.b, changed)
    # Two of them went wrong at b; one damaged row elsewhere is NOT dirty.
    bad = sorted(changed[:2])
    await ring.b.execute("UPDATE big SET note = 'oops' WHERE id = ANY($1::bigint[])", bad)
    hidden = next(k for k in range(1, 200001) if k not in set(changed))
    await ring.b.execute("UPDATE big SET note = 'hidden' WHERE id = $1", hidden)

    t0 = time.monotonic()
    report = await verify(members, ["big"], mode="incremental", settle_seconds=0)
    took = time.monotonic() - t0
    t = report.tables[0]
    assert sorted(int(d.key[0]) for d in report.differences) == bad
    assert t.keys_touched == 10_000 and t.rows == {"a": 10_000, "b": 10_000}
    assert took < 10, took
    # A failed run keeps the differing keys for the next one, and only those: the
    # 9,998 keys found equal are not looked up again (continuous verification runs every
    # few minutes; a divergence left for a day must not make each pass re-read the day).
    for conn in (ring.a, ring.b):
        kept = await conn.fetch("SELECT key FROM ringkeeper.dirty_keys ORDER BY key")
        assert sorted(int(json.loads(r["key"])[0]) for r in kept) == bad
    again = await verify(members, ["big"], mode="incremental", settle_seconds=0)
    assert sorted(int(d.key[0]) for d in again.differences) == bad
    assert again.tables[0].keys_touched == 2

    await repair(report, members, source="a", dry_run=False)
    passed = await verify(members, ["big"], mode="incremental", settle_seconds=0)
    assert passed.passed and passed.tables[0].keys_touched == 2
    assert await ring.b.fetchval("SELECT count(*) FROM ringkeeper.dirty_keys") == 0
    nothing = await verify(members, ["big"], mode="incremental", settle_seconds=0)
    assert nothing.tables[0].keys_touched == 0
    # Only a full verification sees the damage no change recorded.
    full = await verify(members, ["big"], mode="full", settle_seconds=0)
    assert [d.key for d in full.differences] == [[str(hidden)]]


async def test_busy_healthy_ring_reports_nothing(ring: Ring) -> None:
    """A writer keeps changing rows at a and, 200 ms later, the same at b (a converged
    ring with lag). Only the one real, untouched difference may be reported."""
    members = ring.members[:2]
    await ring.all("CREATE TABLE hot (id int PRIMARY KEY, v int, at timestamptz)")
    await ring.all("INSERT INTO hot SELECT g, 0, '2024-01-01' FROM generate_series(1, 20000) g")
    await ring.b.execute("UPDATE hot SET v = -1 WHERE id = 20000")  # real damage
    wa, wb = [await asyncpg.connect(m.dsn) for m in members]
    stop = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()
    writes = 0
    lock = asyncio.Lock()

    async def later(key: int, value: int, at: datetime) -> None:
        await asyncio.sleep(0.2)
        async with lock:
            await wb.execute("UPDATE hot SET v = $2, at = $3 WHERE id = $1", key, value, at)

    async def writer() -> None:
        nonlocal writes
        rnd = random.Random(1)
        while not stop.is_set():
            key, value = rnd.randint(1, 19999), rnd.randint(1, 10**9)
            at = datetime.now(UTC)
            await wa.execute("UPDATE hot SET v = $2, at = $3 WHERE id = $1", key, value, at)
            writes += 1
            task = asyncio.create_task(later(key, value, at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(0.005)

    w = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.5)
        report = await verify(members, ["hot"], chunk_rows=1000, leaf_rows=100,
                              settle_seconds=1.0)
    finally:
        stop.set()
        await w
        await asyncio.gather(*pending)
        await wa.close()
        await wb.close()
    t = report.tables[0]
    assert [d.key for d in report.differences] == [["20000"]], report.render_text()
    assert not t.unsettled
    # The traffic really made chunks differ and keys get rechecked (the test can fail).
    assert writes > 100 and t.keys_rechecked > 1, (writes, t)
    assert await ring.a.fetchval("SELECT v FROM hot WHERE id = 1") is not None
    assert datetime.now(UTC) > report.started_at
