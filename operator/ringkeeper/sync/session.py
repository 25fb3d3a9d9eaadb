"""The applier's origin session and bookkeeping.

One local transaction per upstream one, under the replication origin of the campus
that first committed it (sync/apply.py says why). This module owns what makes that
exactly once: the session origin, BEGIN and COMMIT with the origin's LSN and time, the
per-origin progress, whether a transaction is new here (`wanted`), a local row's version
(`version_of`), and the conflict log and changed keys written inside the transaction.
It is the base of the applier's parts: rows (sync/rowpath.py, sync/conflictpath.py) and
the bulk pipeline (sync/pipeline.py) build on it; the methods it declares
abstract are theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime

import asyncpg

from ..core import names
from ..core.conflicts import Policy, Version
from ..engines import EngineProfile
from . import bulk
from .catalog import apply_canonical_settings
from .pgoutput import Relation, lsn_to_str, str_to_lsn
from .records import EPOCH, ApplyError, Stats
from .tablemap import TableMap, Tables
from .txnkeys import SPILL_KEYS, TxnKeys


def _lsn_int(text: str | None) -> int:
    return str_to_lsn(text) if text else 0


class ApplySession(ABC):
    """The session and bookkeeping part of the Applier (see the module docstring)."""

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
        self.tables = Tables(conn, local)
        self._session_origin: str | None = None
        self._txn: tuple[str, int, datetime] | None = None
        # What the open transaction wrote, by key: bounded (spills to disk, txnkeys).
        self._txn_rows = TxnKeys()
        # Keys it changed, for verification: written to the target (inside the same
        # transaction) whenever SPILL_KEYS gather, and at COMMIT.
        self._txn_dirty: dict[str, set[str]] = {}
        self._txn_dirty_n = 0
        self._txn_conflicts: list[tuple[object, ...]] = []

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
        await self.tables.relation(rel)

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
        return self.tables.table(relid)

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

    # -- the other parts' ----------------------------------------------------------
    @abstractmethod
    async def settle(self) -> bool:
        """Wait for the bulk script in flight (sync/pipeline.py): every statement on
        the connection comes after it."""

    @abstractmethod
    async def _flush(self) -> None:
        """Apply the rows batched so far in the open transaction (sync/rowpath.py)."""

    @abstractmethod
    async def abort(self) -> None:
        """Roll back the open transaction and the script in flight (sync/pipeline.py)."""

    @abstractmethod
    def _flush_after(self, origin: str) -> str:
        """SQL that ends a commit where this member forwards (sync/pipeline.py)."""
