"""Per-table objects the ring needs to converge, beyond the tombstone trigger.

- A TRUNCATE guard: TRUNCATE does not travel (the publication leaves it out, and no
  conflict rule can weigh it against other campuses' writes), so it would empty a
  table at one member only, silently (issue 14, item 4). A BEFORE TRUNCATE trigger
  refuses it with a message that says how to clear a table across the ring. It is
  enabled as usual, not ALWAYS: the ring's own sessions (session_replication_role =
  replica) are not refused, and an administrator can empty one member's copy on
  purpose the same way (before a re-seed).
- REPLICA IDENTITY FULL on tables with a column that can be stored out of line: the
  old row is then logged whole, TOASTed values included, so an update that leaves a
  large value alone still carries it (pgoutput.new_values) and can be applied where
  the row is missing or is another version (issue 14, item 3). The price is WAL: each
  update or delete of such a table logs the old row in full. A table whose owner chose
  its replica identity (an index, FULL, NOTHING) is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:  # catalog calls ensure() from prepare_capture
    from .catalog import TableInfo

log = logging.getLogger(__name__)

GUARD_SQL = """
CREATE OR REPLACE FUNCTION ringkeeper.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = format('TRUNCATE of %I.%I is refused: the table is replicated by a '
                         'ringkeeper ring, and TRUNCATE would empty it at this member only',
                         TG_TABLE_SCHEMA, TG_TABLE_NAME),
        HINT = format('To clear it at every member, DELETE FROM %I.%I (deletes travel the '
                      'ring and leave tombstones). To empty it at this member only (before '
                      'a re-seed), run TRUNCATE after SET session_replication_role = replica.',
                      TG_TABLE_SCHEMA, TG_TABLE_NAME);
END
$fn$;
"""


async def ensure(conn: asyncpg.Connection, tables: Sequence[TableInfo]) -> None:
    """Install the TRUNCATE guard and set REPLICA IDENTITY FULL where needed (idempotent)."""
    if not tables:
        return
    quoted = [t.quoted for t in tables]
    missing = await conn.fetch(
        "SELECT c.oid::regclass::text AS rel FROM pg_class c "
        "WHERE c.oid = ANY($1::text[]::regclass[]) AND NOT EXISTS (SELECT 1 FROM pg_trigger g "
        "WHERE g.tgrelid = c.oid AND g.tgname = 'ringkeeper_no_truncate')", quoted)
    if missing:
        await conn.execute(GUARD_SQL)
    for r in missing:
        await conn.execute(
            f"CREATE TRIGGER ringkeeper_no_truncate BEFORE TRUNCATE ON {r['rel']} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ringkeeper.refuse_truncate()")
    full = await conn.fetch(
        "SELECT c.oid::regclass::text AS rel FROM pg_class c "
        "WHERE c.oid = ANY($1::text[]::regclass[]) AND c.relreplident = 'd' "
        "AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
        "AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attlen = -1 AND a.attstorage <> 'p')", quoted)
    for r in full:
        log.info("setting REPLICA IDENTITY FULL on %s: it has columns stored out of line",
                 r["rel"])
        await conn.execute(f"ALTER TABLE {r['rel']} REPLICA IDENTITY FULL")
