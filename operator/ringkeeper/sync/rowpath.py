"""The applier's row path: one transaction's changes in set-based batches.

Changes of one table and operation gather (up to BATCH_ROWS) and go in with one
statement per batch: values travel as text, cast to the target's own column types. The
statements apply a row only in the normal case, a row last written by the same origin
(or earlier in this transaction); every row they leave goes to the conflict path
(sync/conflictpath.py). Kept apart from it because this is the hot path, and from the
bulk pipeline (sync/pipeline.py) because this one works inside one open transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from ..core.conflicts import Op, Policy
from ..engines import EngineProfile
from .catalog import quote_ident
from .conflictpath import CLASHES, ConflictPath
from .pgoutput import UNCHANGED, Delete, Insert, Update, Value, new_values
from .records import ApplyError, Change
from .tablemap import TableMap
from .txnkeys import SPILL_KEYS

BATCH_ROWS = 1000


class RowPath(ConflictPath):
    """The row path part of the Applier (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, profile: EngineProfile, ring: str, local: str,
                 priorities: dict[str, int], policy: Policy | str) -> None:
        super().__init__(conn, profile, ring, local, priorities, policy)
        self._pending: list[Change] = []
        self._pending_keys: set[tuple[str, ...]] = set()
        self._pending_table: TableMap | None = None

    # -- rows ------------------------------------------------------------------------
    async def change(self, relid: int, msg: Insert | Update | Delete) -> None:
        await self.change_in(self.table(relid), msg)

    async def change_in(self, table: TableMap, msg: Insert | Update | Delete) -> None:
        """One change of `table` in the open transaction (batched; see _flush)."""
        if table.relay:
            # A delete another member passed on (its row was not there): apply it as
            # that delete, under this transaction's true origin. The relay row's own
            # delete, in the same transaction, is nothing to apply.
            if not isinstance(msg, Insert):
                return
            nsp, name, key = (msg.new[table.columns.index(c)] for c in ("nsp", "name", "key"))
            if not (isinstance(nsp, str) and isinstance(name, str) and isinstance(key, str)):
                raise ApplyError(f"a relayed delete without its table or key: {msg.new!r}")
            table = await self.tables.local_table(nsp, name)
            ch = Change(Op.DELETE, tuple(json.loads(key)), {}, True)
        else:
            ch = self._to_change(table, msg)
        if (self._pending_table is not table or (self._pending and self._pending[0].op != ch.op)
                or len(self._pending) >= BATCH_ROWS or ch.key in self._pending_keys):
            await self._flush()
        self._pending_table = table
        self._pending.append(ch)
        self._pending_keys.add(ch.key)

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
            except CLASHES:
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
        """The batch's set-based statements; the keys they applied. An update or delete
        applies here only over a row of the same origin strictly older than it (as
        core.conflicts.decide): a row that already holds this very version (copied at a
        join and streamed too) goes to the slow path, which skips it, not written twice."""
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
                   f"AND (u.own OR (SELECT x.roident = {ro} AND x.timestamp < {tsp} "
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
                   f"AND (u.own OR (SELECT x.roident = ${nk + 2}::oid AND x.timestamp < "
                   f"${nk + 3}::timestamptz FROM {x}(t.xmin) AS x)) RETURNING {keys}")
            t.statements["del"] = sql
        args: list[object] = [[c.key[i] for c in rows] for i in range(nk)]
        mine = self._txn_rows.recent(t.relation, (c.key for c in rows))
        args.append([c.key in mine for c in rows])
        args += [roident, ts]
        return {tuple(r) for r in await self.conn.fetch(sql, *args)}


def _by_columns(rows: list[Change]) -> dict[tuple[str, ...], list[Change]]:
    out: dict[tuple[str, ...], list[Change]] = {}
    for c in rows:
        out.setdefault(tuple(c.values), []).append(c)
    return out
