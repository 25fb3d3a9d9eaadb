"""What a ring keeps inside each member's database, created idempotently.

The sidecar may restart at any point, and a member may be a fresh promotion of a
standby, so every object is created "if missing" and checked rather than assumed:
the ringkeeper schema (tombstones, conflict log, changed keys), the publication of
the selected tables, the delete trigger that records tombstones, one replication
origin per member, and the member's logical slots.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ..base.lsn import str_to_lsn
from ..base.sqlquote import quote_ident as quote_ident
from ..core import names
from ..engines import EngineProfile
from . import convergence

log = logging.getLogger(__name__)

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS ringkeeper;
CREATE TABLE IF NOT EXISTS ringkeeper.tombstones (
    relation text NOT NULL,
    key jsonb NOT NULL,
    PRIMARY KEY (relation, key)
);
CREATE TABLE IF NOT EXISTS ringkeeper.conflicts (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ring text NOT NULL,
    relation text NOT NULL,
    key jsonb NOT NULL,
    kind text NOT NULL,
    resolution text NOT NULL,
    local_origin text,
    local_committed_at timestamptz,
    remote_origin text NOT NULL,
    remote_committed_at timestamptz,
    reason text
);
CREATE TABLE IF NOT EXISTS ringkeeper.dirty_keys (
    relation text NOT NULL,
    key jsonb NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (relation, key)
);
-- The bulk apply path records changed keys as one row per table and script:
-- keys[i][j] is key column i of the j-th key (a 2-D text array, like dirty_keys' text).
CREATE TABLE IF NOT EXISTS ringkeeper.dirty_key_sets (
    relation text NOT NULL,
    keys text[] NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The bulk apply path's premise check (sync/bulk.py): RK001 sends a transaction to
-- the row-by-row path.
CREATE OR REPLACE FUNCTION ringkeeper.fast_path_check(missed bigint) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF missed <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'RK001',
            MESSAGE = format('bulk apply: %s row(s) need the conflict rules', missed);
    END IF;
END $fn$;

CREATE TABLE IF NOT EXISTS ringkeeper.slot_history (
    slot text NOT NULL,
    created_lsn pg_lsn NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (slot, created_lsn)
);
CREATE TABLE IF NOT EXISTS ringkeeper.seed_state (
    ring text NOT NULL,
    source text NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (ring)
);
-- Which tables each ring carries, for the event trigger below (the sidecar keeps it
-- equal to the ring's spec): schema.table patterns where * matches any run.
CREATE TABLE IF NOT EXISTS ringkeeper.capture_rules (
    ring text PRIMARY KEY,
    publication text NOT NULL,
    include text[] NOT NULL,
    exclude text[] NOT NULL
);
-- Per-member copies, no longer read (issue 14: see initial_copy_tables).
CREATE TABLE IF NOT EXISTS ringkeeper.initial_copies (
    ring text NOT NULL,
    source text NOT NULL,
    rows_copied bigint NOT NULL DEFAULT 0,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ring, source)
);
-- Which tables this member has copied from which member (setup, joins, tables that join
-- later): sync/seed.py. `absent`: not at the source then, nothing of its to copy.
CREATE TABLE IF NOT EXISTS ringkeeper.initial_copy_tables (
    ring text NOT NULL,
    source text NOT NULL,
    relation text NOT NULL,
    rows_copied bigint NOT NULL DEFAULT 0,
    absent boolean NOT NULL DEFAULT false,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ring, source, relation)
);
CREATE OR REPLACE FUNCTION ringkeeper.pattern_like(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT replace(replace(replace(replace(pattern, '\\', '\\\\'), '%', '\\%'), '_',
                                           '\\_'),
                   '*', '%')
$fn$;
-- A table created (or given a key) while the ring runs joins each matching ring's
-- publication in the transaction that created it, so its first row is captured; the
-- tombstone trigger comes with it. SECURITY DEFINER: the application's role creates
-- tables, the publication belongs to the ring's superuser.
CREATE OR REPLACE FUNCTION ringkeeper.capture_new_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
    obj record;
    rule record;
    rel record;
    keyexpr text;
BEGIN
    FOR obj IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                WHERE object_type IN ('table') LOOP
        SELECT n.nspname, c.relname INTO rel FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = obj.objid AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('information_schema', 'ringkeeper')
           AND n.nspname NOT LIKE 'pg\\_%';
        CONTINUE WHEN NOT FOUND;
        SELECT string_agg(format('($1).%I::text', a.attname), ', ' ORDER BY k.ord)
          INTO keyexpr
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = obj.objid
           AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2
                                WHERE i2.indrelid = obj.objid
                                  AND (i2.indisprimary OR
                                       (c.relreplident = 'i' AND i2.indisreplident))
                                ORDER BY i2.indisprimary DESC LIMIT 1);
        CONTINUE WHEN keyexpr IS NULL;  -- no key: refused, as the sidecar reports
        FOR rule IN SELECT r.* FROM ringkeeper.capture_rules r
                      JOIN pg_publication p ON p.pubname = r.publication
                     WHERE NOT p.puballtables LOOP
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM unnest(rule.include) AS p(pat)
                WHERE rel.nspname || '.' || rel.relname LIKE ringkeeper.pattern_like(p.pat));
            CONTINUE WHEN EXISTS (SELECT 1 FROM unnest(rule.exclude) AS p(pat)
                WHERE rel.nspname || '.' || rel.relname LIKE ringkeeper.pattern_like(p.pat));
            IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr
                             JOIN pg_publication p ON p.oid = pr.prpubid
                            WHERE p.pubname = rule.publication AND pr.prrelid = obj.objid) THEN
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', rule.publication,
                               rel.nspname, rel.relname);
            END IF;
        END LOOP;
        IF EXISTS (SELECT 1 FROM ringkeeper.capture_rules) AND NOT EXISTS (
                SELECT 1 FROM pg_trigger WHERE tgrelid = obj.objid
                   AND tgname = 'ringkeeper_tombstone') THEN
            EXECUTE format('CREATE TRIGGER ringkeeper_tombstone AFTER DELETE ON %I.%I '
                           'FOR EACH ROW EXECUTE FUNCTION ringkeeper.tombstone(%L)',
                           rel.nspname, rel.relname, keyexpr);
            EXECUTE format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER ringkeeper_tombstone',
                           rel.nspname, rel.relname);
        END IF;
    END LOOP;
END
$fn$;
-- A delete that wins at a member where the row is not (only a tombstone is written)
-- is passed on as a row here, inserted and deleted in the transaction that applies it,
-- under the delete's true origin: the next member's link reads the insert and applies
-- it as that delete (sync/apply.py). The table is in the ring's publication and stays
-- empty.
CREATE TABLE IF NOT EXISTS ringkeeper.relay (
    nsp text NOT NULL,
    name text NOT NULL,
    key jsonb NOT NULL,
    PRIMARY KEY (nsp, name, key)
);
-- Keys travel as JSON arrays of each key column's text form; the trigger builds the
-- same form from the deleted row, in UTC and ISO style like the sync sessions.
CREATE OR REPLACE FUNCTION ringkeeper.tombstone() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog SET TimeZone = 'UTC' SET DateStyle = 'ISO'
SET IntervalStyle = 'postgres' SET extra_float_digits = '3' SET bytea_output = 'hex' AS $fn$
DECLARE k jsonb;
BEGIN
    EXECUTE 'SELECT jsonb_build_array(' || TG_ARGV[0] || ')' INTO k USING OLD;
    INSERT INTO ringkeeper.tombstones (relation, key)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, k)
    ON CONFLICT (relation, key) DO UPDATE SET key = EXCLUDED.key;
    RETURN NULL;
END
$fn$;
"""

# Session settings that make text forms identical on every member and major.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


RELAY_NSP, RELAY_NAME = "ringkeeper", "relay"


class SetupError(RuntimeError):
    """A member cannot take part in the ring as it is; the message says how to fix it."""


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    key: tuple[str, ...]  # primary key (or replica identity index) columns, in order

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def quoted(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


RELAY = TableInfo(RELAY_NSP, RELAY_NAME, ("nsp", "name", "key"))


def matches(relation: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """schema.table patterns where * matches any run of characters (no other wildcard)."""
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(relation, pattern.replace("[", "[[]").replace("?", "[?]"))
    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


async def apply_canonical_settings(conn: asyncpg.Connection) -> None:
    await conn.execute("; ".join(f"SET {k} = '{v}'" for k, v in CANONICAL_SETTINGS.items()))


async def check_server(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT current_setting('wal_level') AS wal_level, "
        "current_setting('track_commit_timestamp') AS commit_ts, pg_is_in_recovery() AS standby")
    assert row is not None
    problems = []
    if row["wal_level"] != "logical":
        problems.append(f"wal_level is {row['wal_level']}, the ring needs logical")
    if row["commit_ts"] != "on":
        problems.append("track_commit_timestamp is off, conflict resolution needs it on")
    if row["standby"]:
        problems.append("the server is a standby; only a primary takes part in the ring")
    if problems:
        raise SetupError("; ".join(problems))


async def ensure_schema(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        # Two sidecars (an old and a new primary's) may race here; serialise them.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ringkeeper.schema'))")
        await conn.execute(SCHEMA_SQL)


async def replicated_tables(conn: asyncpg.Connection, include: Sequence[str],
                            exclude: Sequence[str]) -> tuple[list[TableInfo], list[str]]:
    """The tables the ring carries, and those selected but refused (no key to match on)."""
    rows = await conn.fetch(
        """
        SELECT n.nspname AS schema, c.relname AS name,
               (SELECT array_agg(a.attname ORDER BY k.ord)
                  FROM pg_index i
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid
                   AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident))
                   AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2
                                        WHERE i2.indrelid = c.oid
                                          AND (i2.indisprimary OR
                                               (c.relreplident = 'i' AND i2.indisreplident))
                                        ORDER BY i2.indisprimary DESC LIMIT 1)) AS key
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ringkeeper')
           AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY 1, 2
        """)
    tables: list[TableInfo] = []
    refused: list[str] = []
    for r in rows:
        rel = f"{r['schema']}.{r['name']}"
        if not matches(rel, include, exclude):
            continue
        if not r["key"]:
            refused.append(rel)
        else:
            tables.append(TableInfo(r["schema"], r["name"], tuple(r["key"])))
    return tables, refused


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
        if not await conn.fetchval(
                "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'ringkeeper_capture'"):
            await conn.execute(
                "CREATE EVENT TRIGGER ringkeeper_capture ON ddl_command_end WHEN TAG IN "
                "('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE') "
                "EXECUTE FUNCTION ringkeeper.capture_new_tables()")
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


async def ensure_origins(conn: asyncpg.Connection, profile: EngineProfile, ring: str,
                         members: Sequence[str]) -> None:
    s = profile.sql
    wanted = [names.origin_name(ring, m) for m in members] + [names.seed_origin(ring)]
    have = {r["roname"] for r in await conn.fetch(
        f"SELECT roname FROM {s.replication_origin}")}
    for origin in wanted:
        if origin not in have:
            await conn.execute(f"SELECT {s.replication_origin_create}($1)", origin)


async def slot_exists(conn: asyncpg.Connection, profile: EngineProfile, slot: str) -> bool:
    return bool(await conn.fetchval(
        f"SELECT count(*) FROM {profile.sql.replication_slots} WHERE slot_name = $1", slot))


async def ensure_slot(conn: asyncpg.Connection, profile: EngineProfile, slot: str,
                      ring: str | None = None) -> bool:
    """Create the logical slot if missing; True if it was created now (and so starts at
    the current WAL position: anything committed before it is not in it).

    With `ring`, the ring's publication must exist on this server first (see
    prepare_capture): a slot is never made before the publication it decodes with.
    Creation is serialised per slot by an advisory lock, and an existing slot is only
    reported once it is consistent, so a caller that takes a snapshot after this
    returns knows every later commit is in the slot."""
    if ring is not None and not await publication_exists(conn, ring):
        raise SetupError(f"publication {names.publication_name(ring)} does not exist yet: "
                         f"slot {slot} waits for it")
    key = f"ringkeeper.slot:{slot}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        return await _ensure_slot_locked(conn, profile, slot)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def wait_consistent(conn: asyncpg.Connection, profile: EngineProfile, slot: str,
                          timeout: float = 60.0) -> None:
    """Wait until `slot` (made by someone else, perhaps still being made) has reached
    its consistent point: until then commits may be missing from it."""
    deadline = time.monotonic() + timeout
    while True:
        row = await conn.fetchrow(
            f"SELECT confirmed_flush_lsn IS NOT NULL AS ready "
            f"FROM {profile.sql.replication_slots} WHERE slot_name = $1", slot)
        if row is None:
            raise SetupError(f"slot {slot} disappeared while waiting for it")
        if row["ready"]:
            return
        if time.monotonic() > deadline:
            raise SetupError(f"slot {slot} did not reach a consistent point in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _ensure_slot_locked(conn: asyncpg.Connection, profile: EngineProfile,
                              slot: str) -> bool:
    if await slot_exists(conn, profile, slot):
        await wait_consistent(conn, profile, slot)
        return False
    s = profile.sql
    if profile.failover_slots:
        # A failover slot is copied to standbys, so a promoted standby keeps capturing.
        lsn = await conn.fetchval(
            f"SELECT lsn::text FROM {s.create_logical_replication_slot}"
            "($1, $2, false, false, true)", slot, profile.logical_plugin)
    else:
        lsn = await conn.fetchval(
            f"SELECT lsn::text FROM {s.create_logical_replication_slot}($1, $2)",
            slot, profile.logical_plugin)
    await conn.execute(
        "INSERT INTO ringkeeper.slot_history (slot, created_lsn) VALUES ($1, $2::text::pg_lsn) "
        "ON CONFLICT DO NOTHING", slot, lsn)
    log.info("created logical slot %s at %s", slot, lsn)
    return True


async def slot_was_lost(conn: asyncpg.Connection, slot: str) -> bool:
    """Whether this member had the slot before (history says so) but it is new now:
    a failover to a standby without failover slots, so changes may be missing."""
    n = await conn.fetchval("SELECT count(*) FROM ringkeeper.slot_history WHERE slot = $1", slot)
    return bool(n and n > 1)


async def copy_slot(conn: asyncpg.Connection, profile: EngineProfile, source: str,
                    target: str) -> bool:
    key = f"ringkeeper.slot:{target}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        if await slot_exists(conn, profile, target):
            return False
        await conn.execute(f"SELECT {profile.sql.copy_logical_replication_slot}($1, $2)",
                           source, target)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def drop_slot(conn: asyncpg.Connection, profile: EngineProfile, slot: str) -> None:
    if await slot_exists(conn, profile, slot):
        await conn.execute(f"SELECT {profile.sql.drop_replication_slot}($1)", slot)


async def origin_progress(conn: asyncpg.Connection, profile: EngineProfile,
                          ring: str) -> dict[str, int]:
    """Durable per-origin progress: member -> origin LSN applied and flushed here.

    `flush => true` flushes WAL up to the commit of that progress first, so what it
    returns survives a crash: the basis for moving any slot on."""
    s = profile.sql
    rows = await conn.fetch(
        f"SELECT roname, {s.replication_origin_progress}(roname, true)::text AS lsn "
        f"FROM {s.replication_origin} WHERE starts_with(roname, $1)",
        names.origin_prefix(ring))
    out: dict[str, int] = {}
    for r in rows:
        member = names.member_of_origin(ring, r["roname"])
        if member is not None and r["lsn"]:
            out[member] = str_to_lsn(r["lsn"])
    return out
