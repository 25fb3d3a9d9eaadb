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

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.core.conflicts import Policy, local_write_allowed
from ringkeeper.engines import profile_for
from ringkeeper.sync import priorityguard
from ringkeeper.sync.capture import prepare_capture
from ringkeeper.sync.origins import ensure_origins

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
    async with _server() as s:
        conn = await asyncpg.connect(s.dsn())
        try:
            profile = profile_for("postgresql", "17")
            tables, _ = await prepare_capture(conn, RING, ["lis.*"], [])
            await ensure_origins(conn, profile, RING, list(PRIOS))
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
        finally:
            await conn.close()
