"""Apply a remote transaction at this member, exactly once, keeping its true origin.

Each upstream transaction becomes one local transaction under the replication
origin of the campus that first committed it, with that campus's commit LSN and
time (pg_replication_origin_xact_setup). The commit then advances the origin's
progress atomically with the data: after any crash, progress says exactly which
transactions are in. The row's commit timestamp is the original one, so the next
conflict at this member compares original times, as every other member does.

Rows go in set-based batches (values travel as text and are cast to the target's
own column types). The fast path covers the normal case, a row last written by
the same origin; anything else takes the slow path, where the conflict rules in
core.conflicts decide and the decision is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from ..core import names
from ..core.conflicts import (
    Action,
    Decision,
    Kind,
    Op,
    Policy,
    Version,
    decide,
    decide_clash,
    forwards,
)
from ..engines import EngineProfile
from . import bulk
from .catalog import RELAY, apply_canonical_settings, quote_ident
from .pgoutput import (
    UNCHANGED,
    Delete,
    Insert,
    Relation,
    Update,
    Value,
    lsn_to_str,
    new_values,
    str_to_lsn,
)
from .txnkeys import SPILL_KEYS, TxnKeys

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
BULK_ROWS = 2000  # rows per bulk script (many upstream transactions, one round trip)
CLASSIC_AFTER_MISS = 32  # transactions applied row by row after a bulk script missed
MAX_PREPARED = 256  # transaction shapes kept prepared per session
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CLASH_LOG_EVERY = 10.0  # seconds between log lines about unique clashes (all are counted)
# A unique index besides the key (or an exclusion constraint) refusing a row.
_CLASHES = (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError)


class ApplyError(RuntimeError):
    """A change cannot be applied as the target is; the message names what to fix."""


@dataclass
class TableMap:
    """An upstream relation matched to the local table by schema and name."""

    relation: str
    quoted: str
    columns: list[str]  # local names, in upstream tuple order; None-like "" = ignored
    types: dict[str, str]  # local column -> format_type
    key: list[str]  # local key columns in key order
    key_pos: list[int]  # positions of key columns in the upstream tuple
    statements: dict[str, str] = field(default_factory=dict)  # row-by-row path's SQL
    positions: tuple[int, ...] = ()  # upstream positions of the columns applied here
    deferrable: bool = False  # has a deferrable unique/exclusion constraint
    namespace: str = ""
    name: str = ""
    relay: bool = False  # ringkeeper.relay: its rows are deletes passed on (see change())

    def __post_init__(self) -> None:
        self.positions = tuple(i for i, c in enumerate(self.columns) if c)


@dataclass
class Change:
    op: Op
    key: tuple[str, ...]
    values: dict[str, str | None]  # column -> text; unchanged TOAST columns left out
    complete: bool  # no unchanged TOAST values
    old_key: tuple[str, ...] | None = None  # an update that changed the key
    key_json: str = ""

    def __post_init__(self) -> None:
        if not self.key_json:
            self.key_json = json.dumps(list(self.key), ensure_ascii=False,
                                       separators=(",", ":"))


@dataclass
class Txn:
    """One whole upstream transaction, routed: what the bulk path applies."""

    origin: str
    origin_lsn: int
    commit_ts: datetime
    end_lsn: int
    changes: list[Insert | Update | Delete]


@dataclass
class _Script:
    """Bulk transactions on their way to one simple query. The keys they change are
    recorded in the first one: if a later one fails, its keys are marked changed a
    little early, which verification only reads as "look here"."""

    sql: list[str] = field(default_factory=list)
    batch: list[Txn] = field(default_factory=list)
    rows: int = 0
    keys: dict[str, list[list[str]]] = field(default_factory=dict)
    _first: int = -1  # where the first transaction's BEGIN is

    def add(self, txn: Txn, stmts: list[str], groups: list[bulk.Group]) -> None:
        if self._first < 0:
            self._first = len(self.sql)
        self.sql += stmts
        self.batch.append(txn)
        self.rows += len(txn.changes)
        for g in groups:
            have = self.keys.get(g.table.relation)
            if have is None:
                self.keys[g.table.relation] = bulk.group_keys(g)
            else:
                for col, new in zip(have, bulk.group_keys(g), strict=True):
                    col += new

    def text(self) -> str:
        sql = self.sql
        if self.keys:
            sql = [*sql[:self._first + 1], *bulk.dirty_sql(self.keys), *sql[self._first + 1:]]
        return ";\n".join(sql)


@dataclass
class Stats:
    txns: int = 0
    rows: int = 0
    skipped_txns: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    last_commit_ts: datetime | None = None
    last_applied_at: datetime | None = None


def _lsn_int(text: str | None) -> int:
    return str_to_lsn(text) if text else 0


class Applier:
    """Applies transactions at one member over one connection (one origin at a time)."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str, local: str,
                 priorities: dict[str, int], policy: Policy | str) -> None:
        self.conn = conn
        self.profile = profile
        self.ring = ring
        self.local = local
        self.priorities = priorities
        self.policy = Policy(policy)
        self.stats = Stats()
        self.progress: dict[str, int] = {}
        self._roident: dict[int, str] = {}
        self._tables: dict[int, TableMap] = {}
        self._by_name: dict[tuple[str, str], TableMap] = {}
        self._session_origin: str | None = None
        self._txn: tuple[str, int, datetime] | None = None
        self._pending: list[Change] = []
        self._pending_keys: set[tuple[str, ...]] = set()
        self._pending_table: TableMap | None = None
        # What the open transaction wrote, by key: bounded (spills to disk, txnkeys).
        self._txn_rows = TxnKeys()
        # Keys it changed, for verification: written to the target (inside the same
        # transaction) whenever SPILL_KEYS gather, and at COMMIT.
        self._txn_dirty: dict[str, set[str]] = {}
        self._txn_dirty_n = 0
        self._txn_conflicts: list[tuple[object, ...]] = []
        self._classic_left = 0
        self._clash_logged = 0.0
        self._clash_quiet = 0
        self._prepared = 0
        self.flush_scripts = False  # flush WAL after each script: this member forwards
        self._statements: dict[tuple[object, ...], tuple[str, list[bulk.Table]]] = {}
        self._inflight: tuple[asyncio.Future[str], list[Txn]] | None = None
        self.bulk_scripts = 0
        self.bulk_misses = 0

    # -- session ---------------------------------------------------------------------
    async def start(self) -> None:
        await apply_canonical_settings(self.conn)
        # replica: user triggers and foreign keys behave as in native apply (the change
        # was checked where it was first committed); commits need not wait for fsync
        # because slots only move on flushed progress (origin_progress(flush => true)).
        await self.conn.execute(
            "SET session_replication_role = replica; SET synchronous_commit = off; "
            "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off; "
            "SET standard_conforming_strings = on; SET plan_cache_mode = force_generic_plan")
        await self.conn.execute(f"PREPARE rk_xact AS SELECT "
                                f"{self.profile.sql.replication_origin_xact_setup}($1, $2); "
                                f"{bulk.DIRTY_PREPARE}")
        await self.refresh_origins()

    async def refresh_origins(self) -> None:
        await self.settle()
        s = self.profile.sql
        rows = await self.conn.fetch(
            f"SELECT roident, roname, {s.replication_origin_progress}(roname, false)::text AS lsn "
            f"FROM {s.replication_origin}")
        self._roident = {int(r["roident"]): r["roname"] for r in rows}
        for r in rows:
            member = names.member_of_origin(self.ring, r["roname"])
            if member is not None:
                self.progress[member] = max(self.progress.get(member, 0), _lsn_int(r["lsn"]))

    def version_of(self, roident: int | None, ts: datetime | None) -> Version:
        """A local row's or tombstone's version from its xmin's commit data."""
        if not roident:
            origin = self.local
        else:
            name = self._roident.get(roident, "")
            origin = names.member_of_origin(self.ring, name) or self.local
        when = ts or EPOCH  # frozen or pre-ring rows: older than anything that travels
        prio = -1 if origin == names.SEED else self.priorities.get(origin, 0)
        return Version(origin=origin, committed_at=when, priority=prio)

    def wanted(self, origin: str, origin_lsn: int) -> bool:
        """Whether a transaction from `origin` is new here (not ours, not applied yet).
        Origin LSN 0/0 marks an initial copy (sync/seed.py): always taken, under the
        conflict rules, which make a second arrival harmless."""
        return origin != self.local and (origin_lsn == 0 or
                                         origin_lsn > self.progress.get(origin, 0))

    # -- relations -------------------------------------------------------------------
    async def relation(self, rel: Relation) -> None:
        await self.settle()
        tm = await self._describe(rel.namespace, rel.name, [c.name for c in rel.columns])
        self._tables[rel.oid] = tm
        self._by_name[(rel.namespace, rel.name)] = tm

    async def _local_table(self, namespace: str, name: str) -> TableMap:
        """A table named by a relayed delete, matched by name (its upstream description
        may not have come on this stream): the local columns stand for upstream's."""
        tm = self._by_name.get((namespace, name))
        if tm is None:
            cols = await self.conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                f"{quote_ident(namespace)}.{quote_ident(name)}")
            tm = await self._describe(namespace, name, [r["attname"] for r in cols])
            self._by_name[(namespace, name)] = tm
        return tm

    async def _describe(self, namespace: str, name: str, upstream: list[str]) -> TableMap:
        """The local table `namespace.name` matched to upstream's columns."""
        qualified = f"{namespace}.{name}"
        rows = await self.conn.fetch(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, "
            "a.attgenerated <> '' AS generated FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum", f"{quote_ident(namespace)}.{quote_ident(name)}")
        if not rows:
            raise ApplyError(f"table {qualified} does not exist at member {self.local}: "
                             "create it with the same columns before it joins the ring")
        types = {r["attname"]: r["type"] for r in rows if not r["generated"]}
        key = await self.conn.fetchval(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
            f"{quote_ident(namespace)}.{quote_ident(name)}")
        if not key:
            raise ApplyError(f"table {qualified} has no primary key at member "
                             f"{self.local}: the ring matches rows by primary key")
        missing = [c for c in upstream if c not in types and c not in
                   {r["attname"] for r in rows}]
        if missing:
            raise ApplyError(f"table {qualified} at member {self.local} lacks column(s) "
                             f"{', '.join(missing)} that upstream sends")
        lost_key = [k for k in key if k not in upstream]
        if lost_key:
            raise ApplyError(f"key column(s) {', '.join(lost_key)} of {qualified} are not "
                             "sent by upstream: the tables differ between members")
        deferred = bool(await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) "
            "AND condeferrable AND contype IN ('p', 'u', 'x'))",
            f"{quote_ident(namespace)}.{quote_ident(name)}"))
        return TableMap(deferrable=deferred, relation=qualified,
                        quoted=f"{quote_ident(namespace)}.{quote_ident(name)}",
                        columns=[c if c in types else "" for c in upstream], types=types,
                        key=list(key), key_pos=[upstream.index(k) for k in key],
                        namespace=namespace, name=name,
                        relay=(namespace, name) == (RELAY.schema, RELAY.name))

    # -- transactions ----------------------------------------------------------------
    async def begin(self, origin: str, origin_lsn: int, commit_ts: datetime) -> None:
        await self.settle()
        s = self.profile.sql
        oname = names.origin_name(self.ring, origin)
        if self._session_origin != oname:
            if self._session_origin is not None:
                await self.conn.execute(f"SELECT {s.replication_origin_session_reset}()")
                self._session_origin = None
            await self.conn.execute(f"SELECT {s.replication_origin_session_setup}($1)", oname)
            self._session_origin = oname
        # The origin's LSN and time are set at COMMIT, not here: PostgreSQL moves an
        # origin's progress for an aborted transaction too, and a transaction that
        # fails half-way must be read again, not counted as applied.
        await self.conn.execute("BEGIN")
        self._txn = (origin, origin_lsn, commit_ts)
        self._txn_rows.clear()
        self._txn_dirty.clear()
        self._txn_dirty_n = 0
        self._txn_conflicts.clear()

    def table(self, relid: int) -> TableMap:
        table = self._tables.get(relid)
        if table is None:
            raise ApplyError(f"change for relation {relid} before its description")
        return table

    async def change(self, relid: int, msg: Insert | Update | Delete) -> None:
        table = self.table(relid)
        if table.relay:
            # A delete another member passed on (its row was not there): apply it as
            # that delete, under this transaction's true origin. The relay row's own
            # delete, in the same transaction, is nothing to apply.
            if not isinstance(msg, Insert):
                return
            nsp, name, key = (msg.new[table.columns.index(c)] for c in ("nsp", "name", "key"))
            if not (isinstance(nsp, str) and isinstance(name, str) and isinstance(key, str)):
                raise ApplyError(f"a relayed delete without its table or key: {msg.new!r}")
            table = await self._local_table(nsp, name)
            ch = Change(Op.DELETE, tuple(json.loads(key)), {}, True)
        else:
            ch = self._to_change(table, msg)
        if (self._pending_table is not table or (self._pending and self._pending[0].op != ch.op)
                or len(self._pending) >= BATCH_ROWS or ch.key in self._pending_keys):
            await self._flush()
        self._pending_table = table
        self._pending.append(ch)
        self._pending_keys.add(ch.key)

    async def commit(self) -> None:
        assert self._txn is not None
        await self._flush()
        await self._write_bookkeeping()
        origin, origin_lsn, commit_ts = self._txn
        s = self.profile.sql
        await self.conn.execute(
            f"SELECT {s.replication_origin_xact_setup}('{lsn_to_str(origin_lsn)}', "
            f"'{commit_ts.isoformat()}'); COMMIT{self._flush_after(origin)}")
        self.progress[origin] = max(self.progress.get(origin, 0), origin_lsn)
        self.stats.txns += 1
        self.stats.last_commit_ts = commit_ts
        self.stats.last_applied_at = datetime.now(UTC)
        self._txn = None
        if len(self._txn_rows) >= SPILL_KEYS:
            self._txn_rows.clear()  # a large transaction's keys need not wait for the next

    async def _write_bookkeeping(self) -> None:
        """Write the open transaction's conflict log rows and changed keys so far into
        that transaction: at COMMIT, and whenever SPILL_KEYS of them gather, so that a
        transaction of any size holds no more than that many in memory. Within one
        transaction the result is the same as writing them all at COMMIT."""
        if self._txn_conflicts:
            await self.conn.executemany(
                "INSERT INTO ringkeeper.conflicts (ring, relation, key, kind, resolution, "
                "local_origin, local_committed_at, remote_origin, remote_committed_at, reason) "
                "VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10)", self._txn_conflicts)
            self._txn_conflicts.clear()
        for relation, keys in self._txn_dirty.items():
            await self.conn.execute(
                "INSERT INTO ringkeeper.dirty_keys (relation, key) "
                "SELECT $1, k FROM unnest($2::jsonb[]) AS k "
                "ON CONFLICT (relation, key) DO UPDATE SET changed_at = clock_timestamp()",
                relation, sorted(keys))
        self._txn_dirty.clear()
        self._txn_dirty_n = 0

    # -- many transactions -----------------------------------------------------------
    async def apply_txns(self, txns: Sequence[Txn]) -> None:
        """Apply whole transactions, in order, as few round trips as the data allows."""
        s = self.profile.sql
        script = _Script()
        session = self._session_origin
        for txn in txns:
            if not self.wanted(txn.origin, txn.origin_lsn):
                self.stats.skipped_txns += 1
                continue
            built: tuple[list[str], list[bulk.Group]] | None = None
            if self._classic_left > 0:
                self._classic_left -= 1
            else:
                try:
                    built = await self._bulk_statements(txn)
                except bulk.NotBulk:
                    built = None
            if built is None:
                if script.batch:
                    await self._run_script(script)
                    script = _Script()
                await self.apply_one(txn)
                session = self._session_origin
                continue
            oname = names.origin_name(self.ring, txn.origin)
            if session != oname:
                if session is not None:
                    script.sql.append(f"SELECT {s.replication_origin_session_reset}()")
                script.sql.append(f"SELECT {s.replication_origin_session_setup}('{oname}')")
                session = oname
            script.add(txn, *built)
            if script.rows >= BULK_ROWS:
                await self._run_script(script)
                script = _Script()
                session = self._session_origin
        if script.batch:
            await self._run_script(script)

    async def _bulk_statements(self, txn: Txn) -> tuple[list[str], list[bulk.Group]]:
        """BEGIN .. COMMIT of one transaction, and its groups. The origin is set up
        last, just before COMMIT: an aborted transaction that had set it up would still
        move the origin's progress (PostgreSQL records aborts of origin transactions
        too), and progress is how a failed script finds which of its transactions are
        in. Constraints are checked per statement (where a table has deferrable ones)
        so that COMMIT itself does not fail."""
        origin = bulk.Origin(await self._origin_id(txn.origin), txn.commit_ts)
        tables: dict[int, TableMap] = {}
        pairs: list[tuple[bulk.Table, Insert | Update | Delete]] = []
        for m in txn.changes:
            tm = tables.get(m.relid)
            if tm is None:
                tm = tables[m.relid] = self.table(m.relid)
            pairs.append((tm, m))
        groups = bulk.groups(pairs)
        shape = bulk.plan(groups)
        name = await self._prepared_for(shape, groups)
        out = ["BEGIN"]
        if any(g.table.deferrable for g in groups):
            out.append("SET CONSTRAINTS ALL IMMEDIATE")
        out += [bulk.execute_sql(name, groups, origin),
                f"EXECUTE rk_xact('{lsn_to_str(txn.origin_lsn)}', "
                f"'{txn.commit_ts.isoformat()}')", "COMMIT"]
        return out, groups

    async def _prepared_for(self, shape: tuple[object, ...], groups: list[bulk.Group]) -> str:
        """The prepared statement of a transaction shape, prepared now if new (the
        oldest is let go past MAX_PREPARED)."""
        hit = self._statements.get(shape)
        if hit is not None:
            return hit[0]
        await self.settle()
        if len(self._statements) >= MAX_PREPARED:
            old = next(iter(self._statements))
            await self.conn.execute(f"DEALLOCATE {self._statements.pop(old)[0]}")
        self._prepared += 1
        name = f"rk_bulk_{self._prepared}"
        try:
            await self.conn.execute(bulk.prepare_sql(
                name, groups, self.profile.sql.xact_commit_timestamp_origin))
        except asyncpg.PostgresError as e:
            raise bulk.NotBulk(f"cannot prepare the bulk statement: {e}") from e
        # The tables are kept with the name: the shape names them by identity.
        self._statements[shape] = (name, [g.table for g in groups])
        return name

    async def _run_script(self, script: _Script) -> None:
        """Send a script and return while the server runs it: the next one is built
        meanwhile. Anything else on this connection settles it first."""
        batch = script.batch
        if await self.settle():
            # The script before failed and went row by row; this one was built assuming
            # it would not (session origin), so build it again.
            await self.apply_txns(batch)
            return
        text = script.text() + self._flush_after(batch[-1].origin)
        self._inflight = (asyncio.ensure_future(self.conn.execute(text)), batch)
        self._session_origin = names.origin_name(self.ring, batch[-1].origin)

    def _flush_after(self, origin: str) -> str:
        """SQL to end a commit with where this member forwards: what it applied is
        forwarded only once its WAL is flushed (a walsender sends no further), and with
        asynchronous commits that would wait for the WAL writer, up to wal_writer_delay
        per hop."""
        if not self.flush_scripts:
            return ""
        return (f";\nSELECT {self.profile.sql.replication_origin_progress}("
                f"'{names.origin_name(self.ring, origin)}', true)")

    async def settle(self) -> bool:
        """Wait for the script in flight; True if it failed (and was redone row by row)."""
        if self._inflight is None:
            return False
        task, batch = self._inflight
        self._inflight = None
        try:
            await task
        except asyncpg.PostgresError as e:
            await self._redo(batch, e)
            return True
        self.bulk_scripts += 1
        for txn in batch:
            self.progress[txn.origin] = max(self.progress.get(txn.origin, 0), txn.origin_lsn)
            self._count(txn)
        return False

    async def _redo(self, batch: list[Txn], e: asyncpg.PostgresError) -> None:
        # Committed up to the transaction that failed; find where from progress.
        s = self.profile.sql
        self.bulk_misses += 1
        self._classic_left = CLASSIC_AFTER_MISS
        if getattr(e, "sqlstate", None) != bulk.FAST_PATH_SQLSTATE:
            log.debug("bulk apply fell back to row by row: %s", e)
        await self.conn.execute("ROLLBACK")
        with contextlib.suppress(asyncpg.PostgresError):
            await self.conn.execute(f"SELECT {s.replication_origin_session_reset}()")
        self._session_origin = None
        await self.refresh_origins()
        for txn in batch:
            if self.wanted(txn.origin, txn.origin_lsn):
                await self.apply_one(txn)
            else:
                self._count(txn)

    def _count(self, txn: Txn) -> None:
        self.stats.txns += 1
        self.stats.rows += len(txn.changes)
        self.stats.last_commit_ts = txn.commit_ts
        self.stats.last_applied_at = datetime.now(UTC)

    async def apply_one(self, txn: Txn) -> None:
        """One transaction row by row, with the conflict rules."""
        await self.begin(txn.origin, txn.origin_lsn, txn.commit_ts)
        try:
            for m in txn.changes:
                await self.change(m.relid, m)
            await self.commit()
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        if self._inflight is not None:
            task, _ = self._inflight
            self._inflight = None
            with contextlib.suppress(BaseException):
                await task
            if not self.conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self.conn.execute("ROLLBACK")
        self._pending.clear()
        self._pending_keys.clear()
        self._pending_table = None
        if self._txn is not None and not self.conn.is_closed():
            await self.conn.execute("ROLLBACK")
        self._txn = None

    # -- rows ------------------------------------------------------------------------
    def _to_change(self, t: TableMap, msg: Insert | Update | Delete) -> Change:
        def key_of(tup: Sequence[Value]) -> tuple[str, ...]:
            out = []
            for p in t.key_pos:
                v = tup[p]
                if not isinstance(v, str):
                    raise ApplyError(f"{t.relation}: key column {t.columns[p]} arrived "
                                     f"without a text value ({v!r})")
                out.append(v)
            return tuple(out)

        def values_of(tup: Sequence[Value]) -> tuple[dict[str, str | None], bool]:
            vals: dict[str, str | None] = {}
            complete = True
            for col, v in zip(t.columns, tup, strict=False):
                if not col:
                    continue
                if v is UNCHANGED:
                    complete = False
                elif isinstance(v, bytes):
                    vals[col] = v.decode()
                else:
                    vals[col] = v  # type: ignore[assignment]
            return vals, complete

        if isinstance(msg, Insert):
            vals, complete = values_of(msg.new)
            return Change(Op.INSERT, key_of(msg.new), vals, complete)
        if isinstance(msg, Update):
            vals, complete = values_of(new_values(msg))
            new_key = key_of(msg.new)
            old_key = key_of(msg.old) if msg.old is not None else None
            return Change(Op.UPDATE, new_key, vals, complete,
                          old_key if old_key is not None and old_key != new_key else None)
        return Change(Op.DELETE, key_of(msg.old), {}, True)

    def _key_cond(self, t: TableMap, alias: str, first: int) -> str:
        return " AND ".join(f"t.{quote_ident(k)} = {alias}.k{i}::{t.types[k]}"
                            for i, k in enumerate(t.key)) or "true"

    async def _flush(self) -> None:
        t, batch = self._pending_table, self._pending
        self._pending = []
        self._pending_keys = set()
        if t is None or not batch:
            return
        assert self._txn is not None
        origin, _, ts = self._txn
        roident = await self._origin_id(origin)
        op = batch[0].op
        fast: list[Change] = []
        slow: list[Change] = []
        for ch in batch:
            (slow if ch.old_key is not None else fast).append(ch)
        done: set[tuple[str, ...]] = set()
        if fast:
            # A unique constraint besides the key can fail a whole batch: then every row
            # of it goes the slow way, where the clash is resolved row by row.
            await self.conn.execute("SAVEPOINT rk_fast")
            try:
                done = await self._fast(t, op, fast, roident, ts)
            except _CLASHES:
                await self.conn.execute("ROLLBACK TO SAVEPOINT rk_fast")
                slow += fast
            else:
                await self.conn.execute("RELEASE SAVEPOINT rk_fast")
                slow += [c for c in fast if c.key not in done]
        for ch in fast:
            if ch.key in done:
                self._txn_rows.set(t.relation, ch.key, op != Op.DELETE)
        for ch in slow:
            await self._slow(t, ch)
        self.stats.rows += len(batch)
        dirty = self._txn_dirty.setdefault(t.relation, set())
        n = len(dirty)
        dirty.update(c.key_json for c in batch)
        dirty.update(json.dumps(list(c.old_key), ensure_ascii=False, separators=(",", ":"))
                     for c in batch if c.old_key)
        self._txn_dirty_n += len(dirty) - n
        if self._txn_dirty_n + len(self._txn_conflicts) >= SPILL_KEYS:
            await self._write_bookkeeping()

    async def _fast(self, t: TableMap, op: Op, fast: list[Change], roident: int,
                    ts: datetime) -> set[tuple[str, ...]]:
        """The batch's set-based statements; the keys they applied."""
        if op == Op.INSERT:
            # A key written earlier in this transaction is decided with state.
            known = self._txn_rows.recent(t.relation, (c.key for c in fast))
            return await self._insert_fast(t, [c for c in fast if c.key not in known])
        if op == Op.UPDATE:
            done: set[tuple[str, ...]] = set()
            for cols, group in _by_columns(fast).items():
                done |= await self._update_fast(t, group, cols, roident, ts)
            return done
        return await self._delete_fast(t, fast, roident, ts)

    async def _origin_id(self, origin: str) -> int:
        oname = names.origin_name(self.ring, origin)
        for ident, name in self._roident.items():
            if name == oname:
                return ident
        await self.refresh_origins()
        for ident, name in self._roident.items():
            if name == oname:
                return ident
        raise ApplyError(f"replication origin {oname} is missing at member {self.local}")

    # Fast paths: one statement per batch; what they leave goes to the slow path.
    async def _insert_fast(self, t: TableMap, rows: list[Change]) -> set[tuple[str, ...]]:
        if not rows:
            return set()
        cols = [c for c in t.columns if c]
        sig = "ins:" + ",".join(cols)
        sql = t.statements.get(sig)
        if sql is None:
            params = ", ".join(f"${i + 2}::text[]" for i in range(len(cols)))
            aliases = ", ".join(f"c{i}" for i in range(len(cols)))
            casts = ", ".join(f"u.c{i}::{t.types[c]}" for i, c in enumerate(cols))
            keys = ", ".join(f"{quote_ident(k)}::text" for k in t.key)
            sql = (f"INSERT INTO {t.quoted} ({', '.join(quote_ident(c) for c in cols)}) "
                   f"SELECT {casts} FROM unnest($1::jsonb[], {params}) AS u(tk, {aliases}) "
                   "WHERE NOT EXISTS (SELECT 1 FROM ringkeeper.tombstones tb "
                   f"WHERE tb.relation = '{t.relation.replace(chr(39), chr(39) * 2)}' "
                   f"AND tb.key = u.tk) "
                   f"ON CONFLICT ({', '.join(quote_ident(k) for k in t.key)}) DO NOTHING "
                   f"RETURNING {keys}")
            t.statements[sig] = sql
        args: list[list[str | None]] = [[c.key_json for c in rows]]
        args += [[c.values.get(col) for c in rows] for col in cols]
        out = await self.conn.fetch(sql, *args)
        return {tuple(r) for r in out}

    async def _update_fast(self, t: TableMap, rows: list[Change], cols: tuple[str, ...],
                           roident: int, ts: datetime) -> set[tuple[str, ...]]:
        sig = "upd:" + ",".join(cols)
        sql = t.statements.get(sig)
        nk = len(t.key)
        if sql is None:
            kp = [f"${i + 1}::text[]" for i in range(nk)]
            vp = [f"${nk + i + 1}::text[]" for i in range(len(cols))]
            own = f"${nk + len(cols) + 1}::bool[]"
            ro, tsp = f"${nk + len(cols) + 2}::oid", f"${nk + len(cols) + 3}::timestamptz"
            aliases = [f"k{i}" for i in range(nk)] + [f"v{i}" for i in range(len(cols))]
            sets = ", ".join(f"{quote_ident(c)} = u.v{i}::{t.types[c]}"
                             for i, c in enumerate(cols))
            keys = ", ".join(f"u.k{i}" for i in range(nk))
            x = self.profile.sql.xact_commit_timestamp_origin
            sql = (f"UPDATE {t.quoted} AS t SET {sets} FROM unnest({', '.join(kp + vp)}, {own}) "
                   f"AS u({', '.join(aliases)}, own) WHERE {self._key_cond(t, 'u', 0)} "
                   f"AND (u.own OR (SELECT x.roident = {ro} AND x.timestamp <= {tsp} "
                   f"FROM {x}(t.xmin) AS x)) RETURNING {keys}")
            t.statements[sig] = sql
        args: list[object] = [[c.key[i] for c in rows] for i in range(nk)]
        args += [[c.values.get(col) for c in rows] for col in cols]
        mine = self._txn_rows.recent(t.relation, (c.key for c in rows))
        args.append([c.key in mine for c in rows])
        args += [roident, ts]
        return {tuple(r) for r in await self.conn.fetch(sql, *args)}

    async def _delete_fast(self, t: TableMap, rows: list[Change], roident: int,
                           ts: datetime) -> set[tuple[str, ...]]:
        sql = t.statements.get("del")
        nk = len(t.key)
        if sql is None:
            kp = [f"${i + 1}::text[]" for i in range(nk)]
            own = f"${nk + 1}::bool[]"
            aliases = [f"k{i}" for i in range(nk)]
            keys = ", ".join(f"u.k{i}" for i in range(nk))
            x = self.profile.sql.xact_commit_timestamp_origin
            sql = (f"DELETE FROM {t.quoted} AS t USING unnest({', '.join(kp)}, {own}) "
                   f"AS u({', '.join(aliases)}, own) WHERE {self._key_cond(t, 'u', 0)} "
                   f"AND (u.own OR (SELECT x.roident = ${nk + 2}::oid AND x.timestamp <= "
                   f"${nk + 3}::timestamptz FROM {x}(t.xmin) AS x)) RETURNING {keys}")
            t.statements["del"] = sql
        args: list[object] = [[c.key[i] for c in rows] for i in range(nk)]
        mine = self._txn_rows.recent(t.relation, (c.key for c in rows))
        args.append([c.key in mine for c in rows])
        args += [roident, ts]
        return {tuple(r) for r in await self.conn.fetch(sql, *args)}

    # Slow path: read the local version and tombstone, decide, act, log.
    async def _slow(self, t: TableMap, ch: Change, attempt: int = 0) -> None:
        assert self._txn is not None
        origin, _, ts = self._txn
        incoming = Version(origin=origin, committed_at=ts,
                           priority=self.priorities.get(origin, 0), deleted=ch.op == Op.DELETE)
        lookup = ch.old_key or ch.key
        known = self._txn_rows.get(t.relation, lookup)
        x = self.profile.sql.xact_commit_timestamp_origin
        row = None
        xmin = None
        if known is None or known:
            r = await self.conn.fetchrow(
                f"SELECT t.xmin::text AS xmin, x.roident, x.timestamp FROM {t.quoted} AS t "
                f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true WHERE "
                + " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                               for i, k in enumerate(t.key)), *lookup)
            if r is not None:
                xmin = r["xmin"]
                row = self.version_of(r["roident"], r["timestamp"])
        if known:  # written earlier in this transaction: the newest version by definition
            decision = Decision(Action.UPDATE if ch.op != Op.DELETE else Action.DELETE, None,
                                "same transaction")
            if row is None:
                decision = Decision(Action.INSERT if ch.op != Op.DELETE else Action.SKIP, None,
                                    "same transaction")
        else:
            tomb = None
            if row is None:
                tr = await self.conn.fetchrow(
                    f"SELECT x.roident, x.timestamp FROM ringkeeper.tombstones tb "
                    f"LEFT JOIN LATERAL {x}(tb.xmin) AS x ON true "
                    "WHERE tb.relation = $1 AND tb.key = $2::jsonb", t.relation,
                    json.dumps(list(lookup), ensure_ascii=False, separators=(",", ":")))
                if tr is not None:
                    tomb = self.version_of(tr["roident"], tr["timestamp"])
                    tomb = Version(tomb.origin, tomb.committed_at, tomb.priority, deleted=True)
            decision = decide(ch.op, incoming, row, tomb, self.policy, complete=ch.complete)
            if decision.conflict is not None and not (row and row.origin == names.SEED):
                local = row or tomb
                self._txn_conflicts.append((
                    self.ring, t.relation, json.dumps(list(lookup), ensure_ascii=False),
                    decision.conflict.value,
                    "apply_remote" if decision.action != Action.SKIP else "keep_local",
                    local.origin if local else None, local.committed_at if local else None,
                    origin, ts, decision.reason))
                kind = decision.conflict.value
                self.stats.conflicts[kind] = self.stats.conflicts.get(kind, 0) + 1
        try:
            await self.conn.execute("SAVEPOINT rk_row")
            ok = await self._act(t, ch, decision.action, lookup, xmin,
                                 relay=forwards(decision))
            await self.conn.execute("RELEASE SAVEPOINT rk_row")
        except _CLASHES as e:
            await self.conn.execute("ROLLBACK TO SAVEPOINT rk_row")
            if attempt >= 3:
                raise ApplyError(f"{t.relation} key {list(lookup)}: {e}, again after "
                                 "removing the rows it clashed with") from e
            if not await self._clash(t, ch, lookup, incoming, e):
                return  # the other row wins: this change is not applied here
            ok = False  # the other row is gone: apply again
        if not ok:
            if attempt >= 3:
                raise ApplyError(f"{t.relation} key {list(lookup)} keeps changing under apply")
            await self._slow(t, ch, attempt + 1)
            return
        if decision.action in (Action.INSERT, Action.UPDATE):
            self._txn_rows.set(t.relation, ch.key, True)
            if ch.old_key:
                self._txn_rows.set(t.relation, ch.old_key, False)
        elif decision.action == Action.DELETE:
            self._txn_rows.set(t.relation, lookup, False)

    async def _clash(self, t: TableMap, ch: Change, lookup: tuple[str, ...], incoming: Version,
                     e: asyncpg.IntegrityConstraintViolationError) -> bool:
        """The change clashed on a unique index other than the key with another row
        here: decide which stays (core.conflicts.decide_clash), log it, and remove the
        other row if the change wins. True if it did (apply the change again)."""
        cols = [r["attname"] for r in await self.conn.fetch(
            "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) "
            "WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = k.attnum WHERE i.indrelid = to_regclass($1) AND i.indisunique "
            "AND NOT i.indisprimary AND i.indexrelid = (SELECT c.oid FROM pg_class c WHERE "
            "c.relname = $2 AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE "
            "oid = to_regclass($1))) ORDER BY k.ord", t.quoted,
            getattr(e, "constraint_name", None) or "")]
        if not cols or any(c not in ch.values or ch.values[c] is None for c in cols):
            raise ApplyError(f"{t.relation} key {list(ch.key)}: {e} (a constraint the "
                             "ring cannot weigh: make it the same at every member, or "
                             "repair the clashing rows)") from e
        x = self.profile.sql.xact_commit_timestamp_origin
        keys = ", ".join(f"t.{quote_ident(k)}::text AS k{i}" for i, k in enumerate(t.key))
        r = await self.conn.fetchrow(
            f"SELECT {keys}, x.roident, x.timestamp FROM {t.quoted} AS t "
            f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true WHERE "
            + " AND ".join(f"t.{quote_ident(c)} = ${i + 1}::text::{t.types[c]}"
                           for i, c in enumerate(cols)), *[ch.values[c] for c in cols])
        if r is None:
            return True  # gone meanwhile: try again
        other_key = tuple(r[f"k{i}"] for i in range(len(t.key)))
        other = self.version_of(r["roident"], r["timestamp"])
        decision = decide_clash(incoming, other, self.policy)
        assert self._txn is not None
        self._txn_conflicts.append((
            self.ring, t.relation, json.dumps(list(ch.key), ensure_ascii=False),
            Kind.UNIQUE_CLASH.value,
            "apply_remote" if decision.action != Action.SKIP else "keep_local",
            other.origin, other.committed_at, incoming.origin, incoming.committed_at,
            f"{decision.reason} (row {list(other_key)}, {e.__class__.__name__} on "
            f"{', '.join(cols)})"))
        self.stats.conflicts[Kind.UNIQUE_CLASH.value] = \
            self.stats.conflicts.get(Kind.UNIQUE_CLASH.value, 0) + 1
        now = time.monotonic()
        if now - self._clash_logged >= CLASH_LOG_EVERY:
            log.warning("%s: %s clashes with %s on %s: %s (%d more since the last such "
                        "message)", t.relation, list(ch.key), list(other_key), ", ".join(cols),
                        decision.reason, self._clash_quiet)
            self._clash_logged, self._clash_quiet = now, 0
        else:
            self._clash_quiet += 1
        gone = other_key if decision.action == Action.DELETE else lookup
        if decision.action == Action.DELETE or ch.op == Op.UPDATE:
            await self.conn.execute(
                f"DELETE FROM {t.quoted} AS t WHERE "
                + " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                               for i, k in enumerate(t.key)), *gone)
            self._txn_rows.set(t.relation, gone, False)
        return decision.action == Action.DELETE

    async def _act(self, t: TableMap, ch: Change, action: Action, lookup: tuple[str, ...],
                   xmin: str | None, *, relay: bool = False) -> bool:
        """Carry out one decision; False if the row changed since it was read (retry).
        A tombstone that `relay`s is also passed on (core.conflicts.forwards): a relay
        row, inserted and deleted under this transaction's origin, is in this member's
        WAL for the next member's link, which applies it as the delete."""
        guard = "" if xmin is None else f" AND t.xmin::text = ${len(t.key) + 1}"
        where = " AND ".join(f"t.{quote_ident(k)} = ${i + 1}::text::{t.types[k]}"
                             for i, k in enumerate(t.key))
        if action == Action.SKIP:
            return True
        if action == Action.TOMBSTONE:
            key = json.dumps(list(lookup), ensure_ascii=False, separators=(",", ":"))
            await self.conn.execute(
                "INSERT INTO ringkeeper.tombstones (relation, key) VALUES ($1, $2::jsonb) "
                "ON CONFLICT (relation, key) DO UPDATE SET key = EXCLUDED.key", t.relation, key)
            if relay:
                await self.conn.execute(
                    "INSERT INTO ringkeeper.relay (nsp, name, key) VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT DO NOTHING", t.namespace, t.name, key)
                await self.conn.execute(
                    "DELETE FROM ringkeeper.relay WHERE nsp = $1 AND name = $2 "
                    "AND key = $3::jsonb", t.namespace, t.name, key)
            return True
        if action == Action.DELETE:
            dargs: list[str] = [*lookup] + ([xmin] if xmin is not None else [])
            status: str = await self.conn.execute(
                f"DELETE FROM {t.quoted} AS t WHERE {where}{guard}", *dargs)
            return status != "DELETE 0"
        cols = [c for c in t.columns if c and c in ch.values]
        if action == Action.INSERT:
            vals = ", ".join(f"${i + 1}::text::{t.types[c]}" for i, c in enumerate(cols))
            status = await self.conn.execute(
                f"INSERT INTO {t.quoted} ({', '.join(quote_ident(c) for c in cols)}) "
                f"VALUES ({vals}) ON CONFLICT ({', '.join(quote_ident(k) for k in t.key)}) "
                "DO NOTHING", *[ch.values[c] for c in cols])
            return status != "INSERT 0 0"
        n = len(t.key) + (1 if xmin is not None else 0)
        sets = ", ".join(f"{quote_ident(c)} = ${n + i + 1}::text::{t.types[c]}"
                         for i, c in enumerate(cols))
        args: list[str | None] = [*lookup]
        if xmin is not None:
            args.append(xmin)
        args += [ch.values[c] for c in cols]
        status = await self.conn.execute(
            f"UPDATE {t.quoted} AS t SET {sets} WHERE {where}{guard}", *args)
        return status != "UPDATE 0"


def _by_columns(rows: list[Change]) -> dict[tuple[str, ...], list[Change]]:
    out: dict[tuple[str, ...], list[Change]] = {}
    for c in rows:
        out.setdefault(tuple(c.values), []).append(c)
    return out


def describe_conflict(kind: Kind) -> str:
    return kind.value.replace("_", " ")
