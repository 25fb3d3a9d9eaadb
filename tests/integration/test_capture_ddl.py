"""A table that DDL brings into a ring is captured by that DDL's own transaction (issue 14).

The capture event trigger (sync/capture.py, ringkeeper.capture_new_tables) adds a table
to the ring's publication, with its tombstone trigger, inside the transaction that made
it, so a row written right after is decoded for the ring. It used to fire only on
CREATE TABLE, CREATE TABLE AS, SELECT INTO and ALTER TABLE, and to look only at the
tables the DDL named; three ways of bringing a table into a ring's patterns were left
to the sidecar's 10 s refresh, and rows written before it never travelled:

- `CREATE SCHEMA lis CREATE TABLE ...` (the statement's tag is CREATE SCHEMA);
- `ALTER SCHEMA staging RENAME TO lab` (only the schema is reported);
- `ALTER TABLE ... DETACH PARTITION` (only the parent is reported; the partition,
  standalone now, is not).

On real servers of each major: each statement runs in a transaction that, before its
commit, must already find the table in the publication and its tombstone trigger on.
An older Ringkeeper's trigger (fewer tags) is replaced when the capture is prepared.
"""

from __future__ import annotations

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.core import names
from ringkeeper.sync.capture import CAPTURE_TAGS, prepare_capture

pytestmark = pytest.mark.postgres

RING = "ddl"
INCLUDE = ["lis.*", "lab.*"]


async def _captured_in_txn(conn: asyncpg.Connection, ddl: str, table: str) -> None:
    """Run `ddl`, then, before its commit, find `table` published and triggered."""
    schema, name = table.split(".")
    async with conn.transaction():
        await conn.execute(ddl)
        published = await conn.fetchval(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 "
            "AND schemaname = $2 AND tablename = $3", names.publication_name(RING),
            schema, name)
        triggered = await conn.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'ringkeeper_tombstone' "
            "AND tgrelid = to_regclass($1)", table)
        assert (published, triggered) == (1, "A"), (ddl, published, triggered)


@pytest.mark.parametrize("major", ["15", "17", "18"])
async def test_ddl_that_brings_a_table_into_the_ring_captures_it_in_its_transaction(
        major: str) -> None:
    why = unavailable(major)
    if why:
        pytest.skip(why)
    s = PgServer(major, name=f"ddl{major}")
    s.start()
    try:
        conn = await asyncpg.connect(s.dsn())
        try:
            # An older Ringkeeper's trigger, with the tags it had: replaced.
            await prepare_capture(conn, RING, INCLUDE, [])
            await conn.execute("DROP EVENT TRIGGER ringkeeper_capture")
            await conn.execute(
                "CREATE EVENT TRIGGER ringkeeper_capture ON ddl_command_end WHEN TAG IN "
                "('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE') "
                "EXECUTE FUNCTION ringkeeper.capture_new_tables()")
            await prepare_capture(conn, RING, INCLUDE, [])
            tags = await conn.fetchval("SELECT evttags FROM pg_event_trigger "
                                       "WHERE evtname = 'ringkeeper_capture'")
            assert sorted(tags) == sorted(CAPTURE_TAGS)

            await _captured_in_txn(
                conn, "CREATE SCHEMA lis CREATE TABLE orders (id int PRIMARY KEY, v text)",
                "lis.orders")
            await conn.execute("CREATE SCHEMA staging; "
                               "CREATE TABLE staging.results (id int PRIMARY KEY)")
            await _captured_in_txn(conn, "ALTER SCHEMA staging RENAME TO lab", "lab.results")
            await conn.execute(
                "CREATE TABLE lis.samples (id int PRIMARY KEY) PARTITION BY RANGE (id); "
                "CREATE TABLE lis.samples_old PARTITION OF lis.samples "
                "FOR VALUES FROM (0) TO (1000)")
            await _captured_in_txn(conn, "ALTER TABLE lis.samples DETACH PARTITION "
                                         "lis.samples_old", "lis.samples_old")
            # What always worked still does; a table outside the patterns stays out.
            await _captured_in_txn(conn, "CREATE TABLE lab.plain (id int PRIMARY KEY)",
                                   "lab.plain")
            await conn.execute("CREATE TABLE public.other (id int PRIMARY KEY)")
            assert not await conn.fetchval(
                "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'other'")
        finally:
            await conn.close()
    finally:
        s.destroy()
