"""The applier's bulk pipeline: many whole transactions per round trip.

Whole upstream transactions (Txn) become BEGIN .. COMMIT blocks of one prepared
statement each (sync/bulk.py builds them; shapes stay prepared, up to MAX_PREPARED),
gathered into scripts of up to BULK_ROWS rows sent as one simple query. A script is
sent and left running while the next is built; anything else on the connection settles
it first. A script that fails is redone row by row from where progress says it stopped,
and the next CLASSIC_AFTER_MISS transactions go row by row. Kept apart from the row
path because it spans transactions and owns the connection's one query in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from ..core import names
from ..core.conflicts import Policy
from ..engines import EngineProfile
from . import bulk
from .parking import Parking
from .pgoutput import Delete, Insert, Update, lsn_to_str
from .records import Txn
from .tablemap import TableMap

# One logger for the whole applier, as before it was split into parts.
log = logging.getLogger("ringkeeper.sync.apply")

BULK_ROWS = 2000  # rows per bulk script (many upstream transactions, one round trip)
CLASSIC_AFTER_MISS = 32  # transactions applied row by row after a bulk script missed
MAX_PREPARED = 256  # transaction shapes kept prepared per session


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


class Pipeline(Parking):
    """The bulk pipeline part of the Applier (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str, local: str,
                 priorities: dict[str, int], policy: Policy | str) -> None:
        super().__init__(conn, profile, ring, local, priorities, policy)
        self._classic_left = 0
        self._prepared = 0
        self.flush_scripts = False  # flush WAL after each script: this member forwards
        self._statements: dict[tuple[object, ...], tuple[str, list[bulk.Table]]] = {}
        self._inflight: tuple[asyncio.Future[str], list[Txn]] | None = None
        self.bulk_scripts = 0
        self.bulk_misses = 0

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
        origin = bulk.BulkOrigin(await self._origin_id(txn.origin), txn.commit_ts)
        tables: dict[int, TableMap] = {}
        pairs: list[tuple[bulk.Table, Insert | Update | Delete]] = []
        for m in txn.changes:
            tm = tables.get(m.relid)
            if tm is None:
                tm = tables[m.relid] = self.table(m.relid)
                if tm.parked is not None:
                    raise bulk.NotBulk(f"{tm.relation} is parked here")  # row path parks
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
