"""What a member needs before any slot on it decodes: the capture side of a ring.

The publication of the ring's tables, the capture rules and the event trigger that
adds tables created later, and the tombstone trigger on every table, created
idempotently by whoever creates a slot on a server first (prepare_capture says why the
order matters).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..base.sqlquote import quote_ident
from ..core import names
from . import convergence
from .catalog import RELAY, TableInfo, replicated_tables
from .ringschema import ensure_schema

# The DDL after which ringkeeper.capture_new_tables looks for tables a ring now covers:
# tables made or renamed, keys added, partitions detached (ALTER TABLE), a schema made
# with its tables in one statement, a schema renamed into a ring's patterns. Constants:
# they are written into the server's DDL as literals.
CAPTURE_TAGS = ("ALTER SCHEMA", "ALTER TABLE", "CREATE SCHEMA", "CREATE TABLE",
                "CREATE TABLE AS", "SELECT INTO")


async def ensure_publication(conn: asyncpg.Connection, ring: str,
                             tables: Sequence[TableInfo]) -> None:
    pub = names.publication_name(ring)
    exists = await conn.fetchval("SELECT count(*) FROM pg_publication WHERE pubname = $1", pub)
    if not exists:
        # TRUNCATE does not travel: in a multi-active ring one campus must not be able
        # to empty a table everywhere with a statement no conflict rule can weigh.
        await conn.execute(f"CREATE PUBLICATION {quote_ident(pub)} "
                           "WITH (publish = 'insert, update, delete')")
    current = {f"{r['schemaname']}.{r['tablename']}" for r in await conn.fetch(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", pub)}
    wanted = {t.relation: t for t in tables}
    wanted[RELAY.relation] = RELAY  # relayed deletes travel too (sync/apply.py)
    add = [wanted[r].quoted for r in sorted(set(wanted) - current)]
    drop = sorted(current - set(wanted))
    if add:
        await conn.execute(f"ALTER PUBLICATION {quote_ident(pub)} ADD TABLE {', '.join(add)}")
    if drop:
        quoted = [".".join(quote_ident(p) for p in r.split(".", 1)) for r in drop]
        await conn.execute(
            f"ALTER PUBLICATION {quote_ident(pub)} DROP TABLE {', '.join(quoted)}")


async def publication_exists(conn: asyncpg.Connection, ring: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_publication WHERE pubname = $1",
                                    names.publication_name(ring)))


async def prepare_capture(conn: asyncpg.Connection, ring: str, include: Sequence[str],
                          exclude: Sequence[str], *,
                          schema: bool = True) -> tuple[list[TableInfo], list[str]]:
    """Everything a member needs before any slot on it is created, idempotently:
    the ringkeeper schema, the publication of the ring's tables, the tombstone
    triggers, the capture rules and the event trigger that adds tables created later.

    Whoever creates a slot on a server calls this first (the member's own sidecar, or
    a downstream one whose upstream's sidecar has not run yet): a slot created before
    its publication cannot decode with it (PostgreSQL 15 and 17 fail the link with
    "publication does not exist" for ever; 18 only warns and sends nothing for the
    tables), so the order is what makes a start order safe. Returns the tables and
    the refused ones. `schema=False` skips re-creating the schema's objects (the
    periodic refresh: they exist)."""
    if schema:
        await ensure_schema(conn)
    tables, refused = await replicated_tables(conn, include, exclude)
    pub = names.publication_name(ring)
    async with conn.transaction():
        # Sidecars of several members may prepare one server at once.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ringkeeper.capture'))")
        await conn.execute(
            "INSERT INTO ringkeeper.capture_rules (ring, publication, include, exclude) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (ring) DO UPDATE SET "
            "publication = EXCLUDED.publication, include = EXCLUDED.include, "
            "exclude = EXCLUDED.exclude", ring, pub, list(include), list(exclude))
        tags = await conn.fetchval(
            "SELECT evttags FROM pg_event_trigger WHERE evtname = 'ringkeeper_capture'")
        if tags is None or sorted(tags) != sorted(CAPTURE_TAGS):
            # Created, or re-created by an older Ringkeeper with fewer tags.
            await conn.execute("DROP EVENT TRIGGER IF EXISTS ringkeeper_capture")
            listed = ", ".join("'" + t + "'" for t in CAPTURE_TAGS)
            await conn.execute(
                f"CREATE EVENT TRIGGER ringkeeper_capture ON ddl_command_end WHEN TAG IN "
                f"({listed}) EXECUTE FUNCTION ringkeeper.capture_new_tables()")
        await ensure_publication(conn, ring, tables)
    # Not in the transaction above: each trigger takes its table's lock, and holding
    # one while waiting for the next deadlocks with the application's transactions.
    await ensure_tombstone_triggers(conn, tables)
    return tables, refused


async def ensure_tombstone_triggers(conn: asyncpg.Connection,
                                    tables: Sequence[TableInfo]) -> None:
    have = {r["rel"] for r in await conn.fetch(
        "SELECT tgrelid::regclass::text AS rel FROM pg_trigger "
        "WHERE tgname = 'ringkeeper_tombstone'")}
    for t in tables:
        if t.quoted in have or t.relation in have or t.name in have:
            continue
        expr = ", ".join(f"($1).{quote_ident(c)}::text" for c in t.key)
        literal = "'" + expr.replace("'", "''") + "'"
        try:
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TRIGGER ringkeeper_tombstone AFTER DELETE ON {t.quoted} "
                    f"FOR EACH ROW EXECUTE FUNCTION ringkeeper.tombstone({literal})")
                # ALWAYS: deletes applied by the ring (session_replication_role =
                # replica) need their tombstone as much as local ones.
                await conn.execute(
                    f"ALTER TABLE {t.quoted} ENABLE ALWAYS TRIGGER ringkeeper_tombstone")
        except asyncpg.DuplicateObjectError:
            pass  # another sidecar preparing this server (or the event trigger) was first
    await convergence.ensure(conn, tables)  # TRUNCATE guard, REPLICA IDENTITY FULL
