"""Parked tables: DDL drift stops one table, not the ring.

When a table differs between members (a column added at one member only, the table or
its key missing), its changes cannot be applied here. Stopping the link for that would
stop every table on it (issue 14, item 7). Instead the changes of that table wait in
`ringkeeper.parked` at this member, written in the same transaction as the rest of
their upstream transaction, so the link confirms them like any applied change and
nothing is lost. Every other table goes on.

Once the table matches (someone ran the DDL here), `retry_parked` applies the waiting
changes in arrival order, each group under its true origin and original commit time
through the ordinary row path and conflict rules, and deletes them in the same
transaction; so a crash half-way applies nothing twice. Then the table applies
directly again. While any change of a table waits, later ones wait behind it, so order
is kept. Replayed changes enter this member's WAL under their origin and travel on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from ..core.conflicts import Policy
from ..engines import EngineProfile
from .pgoutput import UNCHANGED, Delete, Insert, Update, Value
from .records import ApplyError
from .rowpath import RowPath
from .tablemap import TableMap

PARK_BATCH = 1000  # parked changes written per statement, and replayed per read


def _to_json(tup: Sequence[Value] | None) -> str | None:
    if tup is None:
        return None
    out: list[object] = []
    for v in tup:
        if v is UNCHANGED:
            out.append({"u": True})
        elif isinstance(v, bytes):
            out.append(v.decode())
        else:
            out.append(v)
    return json.dumps(out)


def _from_json(text: str | None) -> tuple[Value, ...] | None:
    if text is None:
        return None
    return tuple(UNCHANGED if isinstance(v, dict) else v for v in json.loads(text))


def parked_message(op: str, old_kind: str | None, new: str | None, old: str | None
                   ) -> Insert | Update | Delete:
    """The change a parked row holds, as the message it came in (relid is unused: the
    replay names the table)."""
    new_t, old_t = _from_json(new), _from_json(old)
    if op == "I" and new_t is not None:
        return Insert(0, new_t)
    if op == "U" and new_t is not None:
        return Update(0, old_t, old_kind, new_t)
    if op == "D" and old_t is not None:
        return Delete(0, old_t, old_kind or "K")
    raise ApplyError(f"a parked change with op {op!r} and no values")


class Parking(RowPath):
    """The parking part of the Applier (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str, local: str,
                 priorities: dict[str, int], policy: Policy | str) -> None:
        super().__init__(conn, profile, ring, local, priorities, policy)
        self._to_park: list[tuple[object, ...]] = []
        self.parked_waiting = False  # set when anything may wait in ringkeeper.parked

    async def start(self) -> None:
        await super().start()
        self.parked_waiting = bool(await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ringkeeper.parked)"))

    async def begin(self, origin: str, origin_lsn: int, commit_ts: datetime) -> None:
        self._to_park.clear()  # what an aborted transaction had gathered
        await super().begin(origin, origin_lsn, commit_ts)

    async def change_in(self, table: TableMap, msg: Insert | Update | Delete) -> None:
        if table.parked is None:
            await super().change_in(table, msg)
            return
        assert self._txn is not None
        origin, origin_lsn, ts = self._txn
        if isinstance(msg, Insert):
            op, kind, new, old = "I", None, msg.new, None
        elif isinstance(msg, Update):
            op, kind, new, old = "U", msg.old_kind, msg.new, msg.old
        else:
            op, kind, new, old = "D", msg.old_kind, None, msg.old
        self._to_park.append((table.relation, table.namespace, table.name, list(table.upstream),
                              origin, origin_lsn, ts, op, kind, _to_json(new), _to_json(old),
                              table.parked))
        self.parked_waiting = True
        if len(self._to_park) >= PARK_BATCH:
            await self._write_parked()

    async def _write_parked(self) -> None:
        if not self._to_park:
            return
        await self.conn.executemany(
            "INSERT INTO ringkeeper.parked (relation, nsp, name, upstream_columns, origin, "
            "origin_lsn, commit_ts, op, old_kind, new_values, old_values, reason) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12)",
            self._to_park)
        self._to_park.clear()

    async def _write_bookkeeping(self) -> None:
        await self._write_parked()
        await super()._write_bookkeeping()

    def parked_tables(self) -> dict[str, str]:
        """Tables whose changes wait here now, with why (for the link's report)."""
        return self.tables.parked()

    async def retry_parked(self) -> dict[str, str]:
        """Apply the parked changes of every table that matches again; the tables that
        still do not, with why. Called between transactions."""
        if not self.parked_waiting:
            return {}
        await self.settle()
        still: dict[str, str] = {}
        rels = await self.conn.fetch(
            "SELECT DISTINCT relation, nsp, name FROM ringkeeper.parked")
        for r in rels:
            relation, nsp, name = r["relation"], r["nsp"], r["name"]
            shapes = await self.conn.fetch(
                "SELECT DISTINCT upstream_columns FROM ringkeeper.parked WHERE relation = $1",
                relation)
            maps: dict[tuple[str, ...], TableMap] = {}
            try:
                for s in shapes:
                    cols = tuple(s["upstream_columns"])
                    maps[cols] = await self.tables.describe(nsp, name, list(cols))
            except ApplyError as e:
                still[relation] = str(e)
                continue
            await self._replay(relation, maps)
            try:
                await self.tables.rematch(relation)
            except ApplyError as e:  # changed again meanwhile
                still[relation] = str(e)
        self.parked_waiting = bool(still) or bool(await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ringkeeper.parked)"))
        return still

    async def _replay(self, relation: str, maps: dict[tuple[str, ...], TableMap]) -> None:
        """Every parked change of `relation`, in order, one upstream transaction each."""
        while True:
            rows = await self.conn.fetch(
                "SELECT id, upstream_columns, origin, origin_lsn, commit_ts, op, old_kind, "
                "new_values::text AS new, old_values::text AS old FROM ringkeeper.parked "
                "WHERE relation = $1 ORDER BY id LIMIT $2", relation, PARK_BATCH)
            if not rows:
                return
            group: list[Any] = []
            for row in rows:
                if group and _txn_of(group[0]) != _txn_of(row):
                    await self._replay_txn(group, maps)
                    group = []
                group.append(row)
            await self._replay_txn(group, maps)

    async def _replay_txn(self, rows: list[Any], maps: dict[tuple[str, ...], TableMap]
                          ) -> None:
        first = rows[0]
        # Origin LSN 0/0, not the one it came with: the rest of its upstream transaction
        # was applied and passed on when it came, so the members after this one have
        # already counted that LSN as done and would skip a replay carrying it. 0/0 is
        # always taken, under the conflict rules (ApplySession.wanted).
        await self.begin(first["origin"], 0, first["commit_ts"])
        try:
            for row in rows:
                table = maps[tuple(row["upstream_columns"])]
                await super().change_in(table, parked_message(
                    str(row["op"]), row["old_kind"], row["new"], row["old"]))
            await self._flush()
            await self.conn.execute("DELETE FROM ringkeeper.parked WHERE id = ANY($1::bigint[])",
                                    [row["id"] for row in rows])
            await self.commit()
        except BaseException:
            await self.abort()
            raise


def _txn_of(row: Any) -> tuple[object, ...]:
    return (row["origin"], row["origin_lsn"], row["commit_ts"])
