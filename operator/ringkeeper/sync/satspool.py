"""The parent's durable spool for one satellite: written from the parent's slot, drained
into the satellite.

Down the link (parent -> satellite) the parent never keeps WAL for a satellite that is
away: a LinkStream reads the parent's slot for the satellite with a SpoolWriter in
place of an applier. The writer keeps the satellite's tables and the rows its filter
selects (core.satsync), writes each transaction into ringkeeper.satellite_spool on the
parent and commits that before the stream may confirm the slot (the LinkStream
confirms only what its applier returned from), so the slot, and the parent's WAL,
moves on however long the satellite is gone. A SpoolDrain applies the spool to the
satellite in seq order through the ring's Applier (true origin, conflict policy) and
deletes spool rows only after the satellite's progress for them is flushed: a crash in
between reads them again, and the Applier's per-origin progress skips what is in.

After a satellite's initial copy (sync/satcopy.py) a streamed transaction may also be in
the copy's snapshot: one whose commit ends at or before the WAL position read just after
that snapshot. The writer marks those ("careful") and the drain applies them row by row,
where the conflict rules skip a write the satellite already holds from the copy (the
bulk path would write the same version a second time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..contracts.ringconfig import SatelliteInfo
from ..core.conflicts import Policy
from ..core.satsync import UNKNOWN, DownAction, RowValue, down_action, row_matches
from ..engines import EngineProfile
from .apply import Applier, Txn
from .catalog import RELAY
from .origins import origin_progress
from .pgoutput import (
    UNCHANGED,
    Column,
    Delete,
    Insert,
    Relation,
    Update,
    Value,
    new_values,
)

log = logging.getLogger(__name__)

RowMessage = Insert | Update | Delete
SPOOL_PART_ROWS = 2000  # changes per spool row of a large transaction
SPOOL_INSERT = ("INSERT INTO ringkeeper.satellite_spool (satellite, origin, origin_lsn, "
                "commit_ts, part, last, changes, nchanges) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
DRAIN_BATCH = 500  # spool rows read (and applied) per round at the satellite


# -- encoding: what one spool row holds --------------------------------------------------
def _enc_values(values: tuple[Value, ...] | None) -> list[Any] | None:
    """Text values as JSON; an unchanged out-of-line value as false (never a text)."""
    if values is None:
        return None
    out: list[Any] = []
    for v in values:
        if v is UNCHANGED:
            out.append(False)
        elif v is None or isinstance(v, str):
            out.append(v)
        else:
            raise ValueError("binary pgoutput values are not spooled (text protocol only)")
    return out


def _dec_values(values: list[Any] | None) -> tuple[Value, ...] | None:
    if values is None:
        return None
    return tuple(UNCHANGED if v is False else v for v in values)


def encode(relations: dict[int, Relation], changes: Sequence[RowMessage], *,
           careful: bool = False) -> bytes:
    """One spool row's payload: the relations its changes use, then the changes;
    `careful`: applied row by row (module docstring)."""
    used = {c.relid for c in changes}
    rels = {str(oid): [r.namespace, r.name, r.replica_identity,
                       [[c.name, c.type_oid, c.type_modifier, c.is_key] for c in r.columns]]
            for oid, r in relations.items() if oid in used}
    out: list[list[Any]] = []
    for c in changes:
        if isinstance(c, Insert):
            out.append(["I", c.relid, _enc_values(c.new)])
        elif isinstance(c, Update):
            out.append(["U", c.relid, _enc_values(c.new), _enc_values(c.old), c.old_kind])
        else:
            out.append(["D", c.relid, _enc_values(c.old), c.old_kind])
    data: dict[str, Any] = {"r": rels, "c": out}
    if careful:
        data["k"] = 1
    return json.dumps(data, separators=(",", ":")).encode()


def decode(payload: bytes) -> tuple[list[Relation], list[RowMessage]]:
    rels, changes, _ = decode_marked(payload)
    return rels, changes


def decode_marked(payload: bytes) -> tuple[list[Relation], list[RowMessage], bool]:
    """decode, and whether the row is marked careful."""
    data = json.loads(payload)
    rels = [Relation(int(oid), ns, name, ri, tuple(Column(*c) for c in cols))
            for oid, (ns, name, ri, cols) in data["r"].items()]
    changes: list[RowMessage] = []
    for c in data["c"]:
        if c[0] == "I":
            changes.append(Insert(c[1], _dec_values(c[2]) or ()))
        elif c[0] == "U":
            changes.append(Update(c[1], _dec_values(c[3]), c[4], _dec_values(c[2]) or ()))
        else:
            changes.append(Delete(c[1], _dec_values(c[2]) or (), c[3]))
    return rels, changes, bool(data.get("k"))


# -- filtering ----------------------------------------------------------------------------
def _known(v: Value) -> RowValue:
    return v if v is None or isinstance(v, str) else UNKNOWN


def _row(rel: Relation, values: tuple[Value, ...] | None) -> dict[str, RowValue]:
    if values is None:
        return {}
    return {col.name: _known(v) for col, v in zip(rel.columns, values, strict=False)}


def _key_only(rel: Relation, values: tuple[Value, ...]) -> tuple[Value, ...]:
    return tuple(v if col.is_key else None for col, v in zip(rel.columns, values, strict=False))


def for_satellite(sat: SatelliteInfo, rel: Relation, change: RowMessage) -> RowMessage | None:
    """The change as the satellite receives it (core.satsync.down_action), or None."""
    if rel.qualified == RELAY.relation:
        # A delete passed on (ringkeeper.relay): for one of the satellite's tables it
        # travels as it is (only the key is known; a delete of a row the satellite
        # lacks leaves a tombstone, no harm).
        if isinstance(change, Insert) and len(change.new) >= 2:
            nsp, name = change.new[0], change.new[1]
            if isinstance(nsp, str) and isinstance(name, str) and \
                    f"{nsp}.{name}" in sat.table_names:
                return change
        return None
    filters = sat.filters()
    if rel.qualified not in filters:
        return None
    flt = filters[rel.qualified]
    types = {c.name: c.type_oid for c in rel.columns}
    if isinstance(change, Insert):
        act = down_action("insert", None, row_matches(flt, _row(rel, change.new), types))
        if act is DownAction.AS_DELETE:
            return Delete(change.relid, _key_only(rel, change.new), "K")
        return change
    if isinstance(change, Delete):
        return change  # down_action: a delete always travels
    new = new_values(change)
    old_in = row_matches(flt, _row(rel, change.old), types) if change.old_kind == "O" \
        else None
    new_in = row_matches(flt, _row(rel, new), types)
    act = down_action("update", old_in, new_in)
    if act is DownAction.SEND:
        return change
    if act is DownAction.AS_INSERT and UNCHANGED not in new:
        return Insert(change.relid, new)
    if act is DownAction.AS_INSERT:
        return change  # incomplete: the satellite's conflict rules decide (never a guess)
    # AsDelete: the key, with this change's version (an old row out of the filter too
    # may stand for a row the satellite wrote while away).
    return Delete(change.relid, _key_only(rel, new), "K")


# -- writing the spool at the parent ------------------------------------------------------
class SpoolWriter(Applier):
    """Stands in for a LinkStream's Applier: "applying" is writing the filtered
    transaction into the parent's spool, committed (synchronous_commit as the server
    says, never off) before the stream's cursor counts it done, so the slot is only
    confirmed past what is in the spool. Every transaction is taken (`wanted`): the
    drain's Applier at the satellite skips what it already has."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str,
                 sat: SatelliteInfo) -> None:
        super().__init__(conn, profile, ring, sat.name, {}, Policy.LAST_WRITER_WINS)
        self.sat = sat
        self.rels: dict[int, Relation] = {}
        self._open: tuple[str, int, datetime] | None = None
        self._part: list[RowMessage] = []
        self._parts = 0
        self.careful_until = 0  # transactions ending here or before: row by row

    async def start(self) -> None:
        await self.conn.execute("SET synchronous_commit = on")
        if await self.conn.fetchval(
                "SELECT to_regclass('ringkeeper.satellite_copies') IS NOT NULL"):
            until = await self.conn.fetchval(
                "SELECT max(until_lsn - '0/0')::bigint FROM ringkeeper.satellite_copies "
                "WHERE satellite = $1", self.sat.name)
            self.careful_until = int(until or 0)

    async def relation(self, rel: Relation) -> None:
        self.rels[rel.oid] = rel

    def wanted(self, origin: str, origin_lsn: int) -> bool:
        return True

    async def settle(self) -> bool:
        return False

    def _keep(self, changes: Sequence[RowMessage]) -> list[RowMessage]:
        out = []
        for c in changes:
            rel = self.rels.get(c.relid)
            if rel is None:
                raise ValueError(f"change for relation {c.relid} before its description")
            kept = for_satellite(self.sat, rel, c)
            if kept is not None:
                out.append(kept)
        return out

    async def apply_txns(self, txns: Sequence[Txn]) -> None:
        rows = []
        for txn in txns:
            kept = self._keep(txn.changes)
            self.stats.txns += 1
            self.stats.last_commit_ts = txn.commit_ts
            if not kept:
                self.stats.skipped_txns += 1
                continue
            rows.append((self.sat.name, txn.origin, txn.origin_lsn, txn.commit_ts, 0, True,
                         encode(self.rels, kept,
                                careful=txn.end_lsn <= self.careful_until), len(kept)))
            self.stats.rows += len(kept)
        if rows:
            await self.conn.executemany(SPOOL_INSERT, rows)

    async def begin(self, origin: str, origin_lsn: int, commit_ts: datetime) -> None:
        """A large transaction, in parts: one parent transaction, one spool row per
        SPOOL_PART_ROWS kept changes, the last one marked."""
        await self.conn.execute("BEGIN")
        self._open, self._part, self._parts = (origin, origin_lsn, commit_ts), [], 0

    async def change(self, relid: int, m: RowMessage) -> None:
        self._part.extend(self._keep([m]))
        if len(self._part) >= SPOOL_PART_ROWS:
            await self._write_part(last=False)

    async def _write_part(self, *, last: bool) -> None:
        assert self._open is not None
        origin, origin_lsn, commit_ts = self._open
        self._parts += 1
        await self.conn.execute(
            SPOOL_INSERT, self.sat.name, origin, origin_lsn, commit_ts, self._parts, last,
            encode(self.rels, self._part), len(self._part))
        self.stats.rows += len(self._part)
        self._part = []

    async def commit(self) -> None:
        if self._parts or self._part:
            await self._write_part(last=True)
        await self.conn.execute("COMMIT")
        self.stats.txns += 1
        self._open = None

    async def abort(self) -> None:
        if self._open is not None and not self.conn.is_closed():
            await self.conn.execute("ROLLBACK")
        self._open, self._part = None, []


# -- draining the spool into the satellite ------------------------------------------------
@dataclass
class DrainStats:
    # changed rows committed at the satellite and deleted from the spool (the unit of
    # the backlog, so the catch-up's share and ETA compare like with like)
    applied_rows: int = 0
    last_seq: int = 0


class SpoolDrain:
    """Applies one satellite's spool, in seq order, at the satellite."""

    def __init__(self, parent: asyncpg.Connection, applier: Applier, profile: EngineProfile,
                 ring: str, satellite: str) -> None:
        self.parent = parent
        self.applier = applier
        self.profile = profile
        self.ring = ring
        self.satellite = satellite
        self.stats = DrainStats()
        self._described: dict[int, Relation] = {}
        self._part_open = False
        self._part_taken = False

    async def _describe(self, rels: list[Relation]) -> None:
        for rel in rels:
            if self._described.get(rel.oid) != rel:
                await self.applier.relation(rel)
                self._described[rel.oid] = rel

    async def once(self, limit: int = DRAIN_BATCH) -> int:
        """Apply the next spool rows; delete those whose transaction the satellite
        committed and flushed. Returns the rows read (0: the spool is empty)."""
        rows = await self.parent.fetch(
            "SELECT seq, origin, origin_lsn, commit_ts, part, last, changes, nchanges "
            "FROM ringkeeper.satellite_spool WHERE satellite = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3", self.satellite, self.stats.last_seq if self._part_open
            else 0, limit)
        if not rows:
            return 0
        applier = self.applier
        run: list[Txn] = []
        done_to = 0  # last seq whose transaction is committed at the satellite
        for r in rows:
            rels, changes, careful = decode_marked(r["changes"])
            if r["part"] == 0:
                await self._describe(rels)
                txn = Txn(r["origin"], int(r["origin_lsn"]), r["commit_ts"], int(r["seq"]),
                          changes)
                if careful:
                    if run:
                        await applier.apply_txns(run)
                        run = []
                    await applier.settle()
                    if applier.wanted(txn.origin, txn.origin_lsn):
                        await applier.apply_one(txn)
                else:
                    run.append(txn)
                done_to = int(r["seq"])
                continue
            if run:
                await applier.apply_txns(run)
                run = []
            await applier.settle()
            await self._describe(rels)
            if r["part"] == 1:
                self._part_taken = applier.wanted(r["origin"], int(r["origin_lsn"]))
                if self._part_taken:
                    await applier.begin(r["origin"], int(r["origin_lsn"]), r["commit_ts"])
                self._part_open = True
            if self._part_taken:
                for m in changes:
                    await applier.change(m.relid, m)
            self.stats.last_seq = int(r["seq"])
            if r["last"]:
                if self._part_taken:
                    await applier.commit()
                self._part_open = self._part_taken = False
                done_to = int(r["seq"])
        if run:
            await applier.apply_txns(run)
        await applier.settle()
        if done_to:
            # The satellite's progress for these transactions on disk first: only then
            # may the parent forget them.
            await origin_progress(applier.conn, self.profile, self.ring)
            await self.parent.execute(
                "DELETE FROM ringkeeper.satellite_spool WHERE satellite = $1 AND seq <= $2",
                self.satellite, done_to)
            self.stats.applied_rows += sum(int(r["nchanges"]) for r in rows
                                           if int(r["seq"]) <= done_to)
        return len(rows)


    async def retry_parked(self) -> dict[str, str]:
        """Apply what waits at the satellite for a table that matches again (its table
        created or altered after the drain reached it: sync/parking.py), between
        transactions as a ring link does; the tables still parked, with why. Without
        this a row drained before its table existed at the satellite waited forever."""
        if self._part_open:
            return self.applier.parked_tables()
        still = await self.applier.retry_parked()
        return {**self.applier.parked_tables(), **still}


async def spool_backlog(conn: asyncpg.Connection, satellite: str
                        ) -> tuple[int, int, float | None]:
    """(changed rows, spool bytes, age in hours of the oldest spooled commit or None when
    empty) waiting for `satellite` at the parent (core.satsync.backlog_verdict). The
    initial copy's rows (origin LSN 0/0) carry their rows' original commit times, so
    they count in rows and bytes but not in the age: a fresh copy is not an old
    backlog."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(nchanges), 0)::bigint AS n, "
        "coalesce(sum(length(changes)), 0)::bigint AS b, "
        "extract(epoch FROM clock_timestamp() - min(commit_ts) FILTER (WHERE origin_lsn "
        "<> 0)) / 3600.0 AS h FROM ringkeeper.satellite_spool WHERE satellite = $1",
        satellite)
    if row is None:
        return 0, 0, None
    return int(row["n"]), int(row["b"]), None if row["h"] is None else float(row["h"])
