"""The ringkeeper schema inside each member's database, created idempotently.

The sidecar may restart at any point, and a member may be a fresh promotion of a
standby, so the schema is created "if missing" every time a sidecar sets a member up:
tombstones, the conflict log, changed keys, slot and copy history, the capture rules
with the event trigger function that adds tables created later, the relay table and
the tombstone trigger function. One string, applied under an advisory lock.
"""

from __future__ import annotations

import asyncpg

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
-- Per ring under campusPriority: each origin's campus and priority, and which is this
-- member (sync/priorityguard.py keeps it; no rows: the guard is off).
CREATE TABLE IF NOT EXISTS ringkeeper.member_priority (
    ring text NOT NULL,
    member text NOT NULL,
    origin text NOT NULL,
    priority integer NOT NULL,
    local boolean NOT NULL DEFAULT false,
    PRIMARY KEY (ring, member)
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
    -- The tables this DDL may have brought into a ring: those it names; every table of
    -- a schema it names (CREATE SCHEMA ... CREATE TABLE reports its tables, but ALTER
    -- SCHEMA ... RENAME only the schema); and, when it altered a partitioned table (a
    -- partition it detached is not reported at all), every plain table a ring's rules
    -- match that has no tombstone trigger yet.
    FOR obj IN WITH d AS (SELECT objid, object_type FROM pg_event_trigger_ddl_commands())
               SELECT c.oid AS objid FROM pg_class c
                WHERE c.oid IN (SELECT objid FROM d WHERE object_type = 'table')
                   OR c.relnamespace IN (SELECT objid FROM d WHERE object_type = 'schema')
                   OR (c.relkind = 'r' AND NOT c.relispartition
                       AND EXISTS (SELECT 1 FROM d JOIN pg_class pc ON pc.oid = d.objid
                                    WHERE d.object_type = 'table' AND pc.relkind = 'p')
                       AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid
                                          AND t.tgname = 'ringkeeper_tombstone')
                       AND EXISTS (SELECT 1 FROM ringkeeper.capture_rules r,
                                          pg_namespace n, unnest(r.include) AS p(pat)
                                    WHERE n.oid = c.relnamespace
                                      AND n.nspname || '.' || c.relname
                                          LIKE ringkeeper.pattern_like(p.pat))) LOOP
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
        -- The campusPriority guard (sync/priorityguard.py), off unless a ring here is
        -- under campusPriority; the sidecar creates the function.
        IF EXISTS (SELECT 1 FROM ringkeeper.capture_rules)
           AND to_regprocedure('ringkeeper.priority_guard()') IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = obj.objid
                              AND tgname = 'ringkeeper_priority_guard') THEN
            EXECUTE format('CREATE TRIGGER ringkeeper_priority_guard BEFORE INSERT OR UPDATE '
                           'OR DELETE ON %I.%I FOR EACH ROW EXECUTE FUNCTION '
                           'ringkeeper.priority_guard(%L)', rel.nspname, rel.relname, keyexpr);
            IF NOT EXISTS (SELECT 1 FROM ringkeeper.member_priority) THEN
                EXECUTE format('ALTER TABLE %I.%I DISABLE TRIGGER ringkeeper_priority_guard',
                               rel.nspname, rel.relname);
            END IF;
        END IF;
    END LOOP;
END
$fn$;
-- Changes of a table whose shape differs here (a column, the table or its key missing:
-- DDL drift) wait here, in arrival order, until the table matches again; only that
-- table stops (sync/parking.py). Values are the upstream tuple's text forms, with
-- {"u": true} for an unchanged out-of-line value.
CREATE TABLE IF NOT EXISTS ringkeeper.parked (
    id bigserial PRIMARY KEY,
    relation text NOT NULL,
    nsp text NOT NULL,
    name text NOT NULL,
    upstream_columns text[] NOT NULL,
    origin text NOT NULL,
    origin_lsn bigint NOT NULL,
    commit_ts timestamptz NOT NULL,
    op text NOT NULL,
    old_kind text,
    new_values jsonb,
    old_values jsonb,
    reason text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS parked_relation ON ringkeeper.parked (relation, id);
-- A delete that wins at a member where the row is not (only a tombstone is written)
-- is passed on as a row here, inserted and deleted in the transaction that applies it,
-- under the delete's true origin: the next member's link reads the insert and applies
-- it as that delete (sync/apply.py). The table is in the ring's publication and stays
-- empty.
-- A parent's store-and-forward spool for its satellites (sync/satellite.py): each row
-- one transaction (or one part of a large one) bound for `satellite`, already filtered,
-- written before the parent's slot for the satellite is confirmed and deleted only
-- after the satellite committed it. Not in any publication (schema ringkeeper).
CREATE TABLE IF NOT EXISTS ringkeeper.satellite_spool (
    satellite text NOT NULL,
    seq bigserial,
    origin text NOT NULL,
    origin_lsn bigint NOT NULL,
    commit_ts timestamptz NOT NULL,
    part integer NOT NULL DEFAULT 0,
    last boolean NOT NULL DEFAULT true,
    changes bytea NOT NULL,
    PRIMARY KEY (satellite, seq)
);
-- How many changed rows a spool row carries: the backlog (spec.backlog.maxRows) counts
-- changed rows, not spool rows (a transaction, or 2,000 changes of a large one).
ALTER TABLE ringkeeper.satellite_spool ADD COLUMN IF NOT EXISTS nchanges integer NOT NULL
    DEFAULT 1;
CREATE TABLE IF NOT EXISTS ringkeeper.relay (
    nsp text NOT NULL,
    name text NOT NULL,
    key jsonb NOT NULL,
    PRIMARY KEY (nsp, name, key)
);
-- Keys travel as JSON arrays of each key column's text form; the trigger builds the
-- same form from the deleted row, in UTC and ISO style like the sync sessions.
-- SECURITY DEFINER: it fires for the application's role, which has no rights on schema
-- ringkeeper (its deletes failed with "permission denied for schema ringkeeper"). Only
-- a trigger can call it, and EXECUTE is revoked from PUBLIC below, so no other role can
-- attach it (its argument is run as SQL).
CREATE OR REPLACE FUNCTION ringkeeper.tombstone() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog SET TimeZone = 'UTC'
SET DateStyle = 'ISO'
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
REVOKE ALL ON FUNCTION ringkeeper.tombstone() FROM PUBLIC;
REVOKE ALL ON FUNCTION ringkeeper.capture_new_tables() FROM PUBLIC;
"""


async def ensure_schema(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        # Two sidecars (an old and a new primary's) may race here; serialise them.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ringkeeper.schema'))")
        await conn.execute(SCHEMA_SQL)
