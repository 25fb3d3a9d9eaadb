"""The campusPriority guard: refuse the local write that would lose everywhere else.

Under campusPriority the winner of two versions is decided by priority first. A
user's write at campus C over a row whose version came from a campus H of higher
priority commits at C (a local write is not weighed by the conflict rules), travels
the ring and loses at every other member, where H's version beats it: C keeps its
version, everyone else H's, for good. So such a write is refused where it is made,
with the campus to write it at (core.conflicts.local_write_allowed is the rule; the
trigger below implements the same one).

- `ringkeeper.member_priority` (in the ring schema) holds, per ring under
  campusPriority, each origin's campus and priority and which one is this member;
  the member's sidecar keeps it equal to its ring config (`keep`, at setup and every
  table refresh). A ring under another policy has no rows.
- `ringkeeper.priority_guard(key expression)` is a BEFORE INSERT OR UPDATE OR DELETE
  row trigger on every replicated table (`ringkeeper_priority_guard`), enabled as
  usual, not ALWAYS: the ring's apply sessions (session_replication_role = replica)
  pass; user sessions (origin) are checked. UPDATE and DELETE read the row's version
  from its xmin's commit origin; an INSERT reads the tombstone of its key (a delete
  from a higher-priority campus beats the insert everywhere else, too).
- The triggers are enabled only while some ring at this server is under
  campusPriority (rows in member_priority), disabled otherwise (no cost per row).
  Tables created later get the trigger from the capture event trigger
  (sync/ringschema.py), in the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import asyncpg

from ..base.sqlquote import quote_ident
from ..contracts.ringconfig import RingConfig
from ..core.conflicts import Policy, priority_rows
from ..engines import EngineProfile, profile_for
from .catalog import TableInfo

log = logging.getLogger(__name__)

TRIGGER = "ringkeeper_priority_guard"
# Class 23 (integrity constraint violation): applications treat it as a refusal that a
# retry will not cure, which it is.
SQLSTATE = "23RK1"


def guard_function_body(profile: EngineProfile) -> str:
    """The trigger function's body, with the engine's names for the commit origin of
    an xid and the replication origin catalog. Settings as in ringkeeper.tombstone():
    the key is built in the same text form as a tombstone's key."""
    s = profile.sql
    return f"""
DECLARE
    roid oid;
    k jsonb;
    w record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE 'SELECT jsonb_build_array(' || TG_ARGV[0] || ')' INTO k USING NEW;
        SELECT (x.o).roident INTO roid
          FROM (SELECT {s.xact_commit_timestamp_origin}(t.xmin) AS o
                  FROM ringkeeper.tombstones t
                 WHERE t.relation = TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
                   AND t.key = k) x;
    ELSE
        SELECT o.roident INTO roid FROM {s.xact_commit_timestamp_origin}(OLD.xmin) o;
    END IF;
    -- Written here, frozen or before commit timestamps: this member's own, allowed.
    IF roid IS NOT NULL AND roid <> 0 THEN
        SELECT m.ring, m.member, m.priority, l.member AS here, l.priority AS here_priority
          INTO w
          FROM {s.replication_origin} o
          JOIN ringkeeper.member_priority m ON m.origin = o.roname
          JOIN ringkeeper.member_priority l ON l.ring = m.ring AND l.local
         WHERE o.roident = roid AND m.priority > l.priority
         LIMIT 1;
        IF FOUND THEN
            IF k IS NULL THEN
                EXECUTE 'SELECT jsonb_build_array(' || TG_ARGV[0] || ')' INTO k USING OLD;
            END IF;
            RAISE EXCEPTION USING ERRCODE = '{SQLSTATE}',
                MESSAGE = format(
                    '%s of %I.%I key %s is refused: its current version was %s by campus %s '
                    '(priority %s), which outranks this campus %s (priority %s) under '
                    'campusPriority in ring %s; the write would stay here and lose at '
                    'every other member',
                    TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, k,
                    CASE TG_OP WHEN 'INSERT' THEN 'deleted' ELSE 'written' END,
                    w.member, w.priority, w.here, w.here_priority, w.ring),
                HINT = format('write it at %s, or use lastWriterWins', w.member);
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
"""


def guard_function_sql(profile: EngineProfile) -> str:
    """SECURITY DEFINER, as ringkeeper.tombstone(): it runs for the application's role,
    which cannot read schema ringkeeper; EXECUTE is revoked from PUBLIC (only the ring's
    superuser attaches it, and its argument is run as SQL)."""
    return ("CREATE OR REPLACE FUNCTION ringkeeper.priority_guard() RETURNS trigger "
            "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog "
            "SET TimeZone = 'UTC' SET DateStyle = 'ISO' SET IntervalStyle = 'postgres' "
            "SET extra_float_digits = '3' SET bytea_output = 'hex' AS "
            f"$fn${guard_function_body(profile)}$fn$; "
            "REVOKE ALL ON FUNCTION ringkeeper.priority_guard() FROM PUBLIC")


async def keep(conn: asyncpg.Connection, profile: EngineProfile, ring: str, member: str,
               policy: Policy | str, priorities: Mapping[str, int],
               tables: Sequence[TableInfo]) -> bool:
    """Make this server's guard match the ring config (idempotent; writes only what
    differs): the function, this ring's rows of member_priority, a trigger on every
    table, enabled while any ring here is under campusPriority. Returns that state."""
    wanted = priority_rows(ring, member, policy, priorities)
    body = guard_function_body(profile)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ringkeeper.priority'))")
        fn = await conn.fetchrow(
            "SELECT prosrc, prosecdef FROM pg_proc WHERE oid = "
            "to_regprocedure('ringkeeper.priority_guard()')")
        if fn is None or fn["prosrc"] != body or not fn["prosecdef"]:
            await conn.execute(guard_function_sql(profile))
        have = {(r["member"], r["origin"], r["priority"], r["local"]) for r in await conn.fetch(
            "SELECT member, origin, priority, local FROM ringkeeper.member_priority "
            "WHERE ring = $1", ring)}
        if have != set(wanted):
            await conn.execute("DELETE FROM ringkeeper.member_priority WHERE ring = $1", ring)
            await conn.executemany(
                "INSERT INTO ringkeeper.member_priority (ring, member, origin, priority, local) "
                "VALUES ($1, $2, $3, $4, $5)", [(ring, *row) for row in wanted])
            log.info("ring %s: campusPriority guard %s at %s", ring,
                     "on" if wanted else "off", member)
        enabled = bool(await conn.fetchval("SELECT count(*) FROM ringkeeper.member_priority"))
    await ensure_triggers(conn, tables, enabled=enabled)
    return enabled


async def keep_config(conn: asyncpg.Connection, cfg: RingConfig, member: str,
                      tables: Sequence[TableInfo]) -> bool:
    """`keep` from the sidecar's ring config (at setup and every table refresh, so a
    policy or priority change reaches the guard within one refresh)."""
    me = cfg.member(member)
    return await keep(conn, profile_for(me.engine, me.version), cfg.ring, member,
                      cfg.policy, cfg.priorities(), tables)


async def ensure_triggers(conn: asyncpg.Connection, tables: Sequence[TableInfo], *,
                          enabled: bool) -> None:
    """A guard trigger on every table, each enabled or disabled as asked. Each table in
    a transaction of its own: holding one table's lock while waiting for the next
    deadlocks with the application's transactions (as for the tombstone triggers)."""
    if not tables:
        return
    state = {r["rel"]: r["tgenabled"] for r in await conn.fetch(
        "SELECT g.tgrelid::regclass::text AS rel, g.tgenabled::text AS tgenabled "
        "FROM pg_trigger g WHERE g.tgname = $1 "
        "AND g.tgrelid = ANY($2::text[]::regclass[])", TRIGGER, [t.quoted for t in tables])}
    want = "O" if enabled else "D"
    for t in tables:
        current = state.get(t.quoted, state.get(t.relation, state.get(t.name)))
        if current == want:
            continue
        expr = ", ".join(f"($1).{quote_ident(c)}::text" for c in t.key)
        literal = "'" + expr.replace("'", "''") + "'"
        try:
            async with conn.transaction():
                if current is None:
                    await conn.execute(
                        f"CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE ON "
                        f"{t.quoted} FOR EACH ROW EXECUTE FUNCTION "
                        f"ringkeeper.priority_guard({literal})")
                verb = "ENABLE" if enabled else "DISABLE"
                await conn.execute(f"ALTER TABLE {t.quoted} {verb} TRIGGER {TRIGGER}")
        except asyncpg.DuplicateObjectError:
            pass  # the event trigger was first; its state is set at the next refresh
