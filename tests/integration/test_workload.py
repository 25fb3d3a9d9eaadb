"""The LIS workload against a real PostgreSQL 17 server: the ledger proves nothing
acknowledged was lost, and the check can fail.

1. Two sites (north, south) write into one database for a few seconds, with many
   corrections made from both sites at once (contested keys); the check passes, and every
   table got rows with keys from both sites' ranges.
2. Deleting one acknowledged result row behind the workload's back makes the check report
   exactly that key missing; setting another row back to an older version is reported
   stale; giving a second member a different (but allowed) winner of a contested row is a
   disagreement.
3. The CLI: `workload lis` at two independent databases (one per site), `workload check
   --own` passes (exit 0), the same ledger checked as a ring fails (each member lacks the
   other's rows), and a dropped row fails `--own` with exit 1 naming the key.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.workload import Ledger, LedgerProblem, Mix, SiteTarget, check, plan, run
from ringkeeper.workload import schema as lis_schema
from ringkeeper.workload.keys import decompose

pytestmark = pytest.mark.postgres
MAJOR = "17"
_dbs = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    if reason := unavailable(MAJOR):
        pytest.skip(reason)
    s = PgServer(MAJOR, name="workload-17", settings={"fsync": "off",
                                                       "synchronous_commit": "off"})
    s.start()
    try:
        yield s
    finally:
        s.destroy()


async def fresh_db(server: PgServer) -> str:
    name = f"lis{next(_dbs)}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.dsn(name)


def single_writer_key(ledger: Ledger, table: str) -> tuple[int, int]:
    for e in ledger.expectations():
        if e.table == table and not e.contested and None not in e.allowed:
            (rev,) = e.allowed
            assert rev is not None
            return e.key, rev
    raise AssertionError(f"no single-writer {table} key")


async def test_ledger_check_passes_then_names_the_dropped_commit(server: PgServer,
                                                               tmp_path: Path) -> None:
    dsn = await fresh_db(server)
    sites = [SiteTarget("north", 1, dsn), SiteTarget("south", 2, dsn)]
    ledger = Ledger(tmp_path / "ledger.jsonl")
    result = await run(sites, plan(specimens=120, duration=15, rate=40, workers=3,
                                   mix=Mix(correction=0.5, conflict=1.0), seed=7), ledger)
    ledger.close()
    assert not any(result.errors.values()), result.last_errors
    assert result.total("specimens") == 120
    assert result.total("results") >= 120 * 4
    assert result.total("cross_site_corrections") > 0
    contested = [e for e in ledger.expectations() if e.contested]
    assert contested and all(len(e.writers) == 2 for e in contested)
    # replaying the file gives the same expectations as the live ledger
    assert set(Ledger.load(tmp_path / "ledger.jsonl").expectations()) == set(
        ledger.expectations())

    conn = await asyncpg.connect(dsn)
    other = None
    try:
        for table in lis_schema.TABLES.values():
            owners = {decompose(r[0])[0] for r in await conn.fetch(
                f"SELECT {table.key} FROM {table.qualified}")}
            assert owners == {1, 2}, table.name
        report = await check({"m1": conn}, ledger)
        assert report.passed, report.as_dict()
        assert report.members["m1"].checked == len(ledger) == report.members["m1"].ok

        # a dropped acknowledged commit: exactly that key is missing
        dropped, _ = single_writer_key(ledger, "results")
        await conn.execute("DELETE FROM lis.results WHERE result_id = $1", dropped)
        report = await check({"m1": conn}, ledger)
        assert not report.passed
        assert report.count(LedgerProblem.MISSING) == 1
        assert sum(report.members["m1"].problems.values()) == 1
        assert [(f.problem, f.table, f.key) for f in report.examples] == [
            (LedgerProblem.MISSING, "results", dropped)]

        # an older version where the ledger acknowledged a newer one: stale
        order_key, last = single_writer_key(ledger, "orders")
        assert last != order_key  # orders are updated after their insert
        await conn.execute("UPDATE lis.orders SET rev = order_id WHERE order_id = $1",
                           order_key)
        report = await check({"m1": conn}, ledger)
        assert report.count(LedgerProblem.STALE) == 1
        assert {(f.problem, f.key) for f in report.examples} == {
            (LedgerProblem.MISSING, dropped), (LedgerProblem.STALE, order_key)}

        # a second member holding the other site's (allowed) winner of a contested row
        other_dsn = await fresh_db(server)
        other = await asyncpg.connect(other_dsn)
        await lis_schema.create(other)
        for t in ("sites", *lis_schema.TABLES):
            buf = io.BytesIO()
            await conn.copy_from_query(f"SELECT * FROM lis.{t}", output=buf)
            buf.seek(0)
            await other.copy_to_table(t, schema_name="lis", source=buf)
        e = contested[0]
        here = await conn.fetchval("SELECT rev FROM lis.results WHERE result_id = $1", e.key)
        (there,) = e.allowed - {here}
        await other.execute("UPDATE lis.results SET rev = $2 WHERE result_id = $1", e.key,
                            there)
        report = await check({"m1": conn, "m2": other}, ledger)
        assert report.count(LedgerProblem.DISAGREE) == 1
        assert report.count(LedgerProblem.MISSING) == 2  # the dropped row, at both members
        assert [f.key for f in report.examples if f.problem is LedgerProblem.DISAGREE] == [e.key]
    finally:
        await conn.close()
        if other is not None:
            await other.close()


async def test_check_counts_lost_transactions_not_rows(server: PgServer,
                                                       tmp_path: Path) -> None:
    """A commit of several rows lost whole counts one lost transaction (issue 18: the
    drill's lostTransactions counted an order with five items as six), a second commit
    lost counts two, and the rows are counted apart (lostRows)."""
    dsn = await fresh_db(server)
    ledger = Ledger(tmp_path / "txn.jsonl")
    result = await run([SiteTarget("north", 1, dsn)],
                       plan(specimens=30, duration=10, rate=30, workers=2, seed=3), ledger)
    ledger.close()
    assert not any(result.errors.values()), result.last_errors
    current = {(e.table, e.key): e for e in ledger.expectations() if not e.contested}
    commits: dict[int, list[tuple[str, int]]] = {}
    for e in current.values():
        (rev,) = e.acked
        serial = ledger.transaction_of(rev)
        if None not in e.allowed and len(e.allowed) == 1 and serial is not None:
            commits.setdefault(serial, []).append((e.table, e.key))
    big = next(rows for rows in commits.values() if len(rows) >= 3)
    single = next(rows for rows in commits.values() if len(rows) == 1)
    conn = await asyncpg.connect(dsn)
    try:
        assert (await check({"m1": conn}, ledger)).lost_transactions == 0
        for table, key in [*big, *single]:  # an older version: those commits are lost
            t = lis_schema.TABLES[table]
            await conn.execute(f"UPDATE {t.qualified} SET rev = 1 WHERE {t.key} = $1", key)
        report = await check({"m1": conn}, ledger)
    finally:
        await conn.close()
    assert report.lost_rows == len(big) + 1 == report.count(LedgerProblem.STALE)
    assert report.lost_transactions == 2, (len(big), report.as_dict())
    assert report.as_dict()["lostTransactions"] == 2
    assert report.as_dict()["members"]["m1"]["lostTransactions"] == 2


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringkeeper", "workload", *args],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=60)


async def test_cli_runs_and_checks_two_independent_sites(server: PgServer,
                                                          tmp_path: Path) -> None:
    env = {"RK_A": await fresh_db(server), "RK_B": await fresh_db(server)}
    ledger_path = tmp_path / "cli.jsonl"
    run_ = _cli("lis", "--dsn", "a=env:RK_A", "--dsn", "b=env:RK_B", "--duration", "3",
                "--rate", "20", "--workers", "2", "--ledger", str(ledger_path),
                "--progress-every", "1", env=env)
    assert run_.returncode == 0, run_.stderr
    assert "workload lis:" in run_.stderr  # progress lines
    assert "ringkeeper-test" not in run_.stdout + run_.stderr  # no password printed
    summary = json.loads(run_.stdout.strip().splitlines()[-1])
    assert summary["specimens"] > 0 and summary["errors"] == 0
    assert set(summary["ledger"]["sites"]) == {"a", "b"}

    own = _cli("check", "--ledger", str(ledger_path), "--dsn", "a=env:RK_A",
               "--dsn", "b=env:RK_B", "--own", env=env)
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["passed"] is True
    as_ring = _cli("check", "--ledger", str(ledger_path), "--dsn", "a=env:RK_A",
                   "--dsn", "b=env:RK_B", env=env)
    assert as_ring.returncode == 1  # each member lacks the other site's rows

    ledger = Ledger.load(ledger_path)
    key = next(e.key for e in ledger.expectations()
               if e.table == "reports" and e.writers == {"b"})
    conn: Any = await asyncpg.connect(env["RK_B"])
    try:
        assert await conn.execute("DELETE FROM lis.reports WHERE report_id = $1",
                                  key) == "DELETE 1"
    finally:
        await conn.close()
    dropped = _cli("check", "--ledger", str(ledger_path), "--dsn", "a=env:RK_A",
                   "--dsn", "b=env:RK_B", "--own", env=env)
    assert dropped.returncode == 1
    out = json.loads(dropped.stdout)
    assert out["members"]["a"]["missing"] == 0 and out["members"]["b"]["missing"] == 1
    assert [(f["problem"], f["member"], f["table"], f["key"]) for f in out["examples"]] == [
        ("missing", "b", "reports", key)]
    assert f"missing reports key {key}" in dropped.stderr


async def test_a_drill_schema_leaves_the_hospitals_lis_schema_alone(server: PgServer,
                                                                   tmp_path: Path) -> None:
    """The drill's load writes into its own schema: a `lis` schema the hospital owns (here
    one the writing role may not even use) is neither needed nor touched, and the check
    reads the drill's schema. The demo's first ring drill failed with "permission denied
    for schema lis" when the load still wrote there."""
    dsn = await fresh_db(server)
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CREATE ROLE app_drill LOGIN PASSWORD 'x'")
        await admin.execute(f"GRANT CREATE ON DATABASE {db} TO app_drill")
        await admin.execute("CREATE SCHEMA lis")  # the hospital's, not granted to app_drill
        await admin.execute("CREATE TABLE lis.results (result_id bigint PRIMARY KEY)")
        await admin.execute("INSERT INTO lis.results VALUES (42)")
    finally:
        await admin.close()
    user_dsn = f"postgresql://app_drill:x@{server.host}:{server.port}/{db}"
    ledger = Ledger(tmp_path / "drill.jsonl")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await run([SiteTarget("north", 1, user_dsn)], plan(specimens=5, duration=5, rate=10,
                                                            workers=1), Ledger())
    result = await run([SiteTarget("north", 1, user_dsn, "ringkeeper_drill")],
                       plan(specimens=20, duration=10, rate=20, workers=2), ledger)
    ledger.close()
    assert not any(result.errors.values()), result.last_errors
    assert result.total("specimens") == 20
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM lis.results") == 1  # untouched
        assert await conn.fetchval(
            "SELECT count(*) FROM ringkeeper_drill.results") >= 20
        report = await check({"m1": conn}, ledger, schema="ringkeeper_drill")
        assert report.passed and report.members["m1"].ok == len(ledger)
        # and the check can fail: one acknowledged row gone is named
        victim, _ = single_writer_key(ledger, "results")
        await conn.execute("DELETE FROM ringkeeper_drill.results WHERE result_id = $1",
                           victim)
        report = await check({"m1": conn}, ledger, schema="ringkeeper_drill")
        assert not report.passed and [f.key for f in report.examples] == [victim]
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["lis; DROP TABLE x", "Lis", "", "a" * 64, "lis.x", "1lis",
                                  "lis\n", "li's", "lis\"", "x" * 1_000_000],
                         ids=lambda v: repr(v)[:24])
def test_workload_schema_names_are_plain_identifiers(name: str) -> None:
    with pytest.raises(ValueError):
        SiteTarget("north", 1, "postgresql://x", name)
