"""Many upstream transactions in one round trip: the SQL of the ring's bulk apply path.

Applying one upstream transaction at a time costs several round trips, and each SQL
statement the server starts costs more than the few rows a typical transaction
changes. So in the normal case (every row new here, or last written by the same
origin at an older time) each upstream transaction becomes ``BEGIN; EXECUTE <one
prepared statement for the whole transaction>; EXECUTE <origin setup>; COMMIT`` and a
few hundred travel as one simple query. The statement is prepared once per
transaction shape (tables, operations, column sets and, for small groups, row
counts): an OLTP stream repeats a handful of shapes. Small groups pass each value as
a parameter of the column's own type; large ones pass one text array per column.
The statement proves its own premise and raises (SQLSTATE RK001) when it does not
hold, so the server stops at the first transaction that needs the conflict rules;
the ones before it are committed, that one and the rest go through the row-by-row
path. The keys a script changes are recorded once, in its first transaction. This
module only builds text (pure); the applier runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .catalog import quote_ident
from .pgoutput import UNCHANGED, Delete, Insert, Update, Value, new_values

RELAY_RELATION = "ringkeeper.relay"  # catalog.RELAY: deletes passed on, never bulk
FAST_PATH_SQLSTATE = "RK001"  # raised by ringkeeper.fast_path_check (ringschema.py)


class Table(Protocol):
    relation: str
    quoted: str
    columns: list[str]
    types: dict[str, str]
    key: list[str]
    key_pos: list[int]
    positions: tuple[int, ...]  # upstream tuple positions of the columns applied here
    deferrable: bool  # has a deferrable unique/exclusion constraint


class NotBulk(Exception):
    """This transaction needs the row-by-row path (the reason is the message)."""


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def array_literal(values: Sequence[str | None]) -> str:
    """A quoted array literal of `values` (standard_conforming_strings on)."""
    if not values:
        return "'{}'"
    if None not in values:
        # NUL cannot occur in PostgreSQL text, so it can stand for the separator while
        # the whole column is escaped at once.
        inner = "\0".join(values)  # type: ignore[arg-type]
        if "\\" in inner or '"' in inner:
            inner = inner.replace("\\", "\\\\").replace('"', '\\"')
        return "'{\"" + inner.replace("'", "''").replace("\0", '","') + "\"}'"
    inner = ",".join("NULL" if v is None else
                     '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "'{" + inner.replace("'", "''") + "}'"


@dataclass(frozen=True)
class BulkOrigin:
    roident: int  # the true origin's replication origin id at this member
    commit_ts: datetime


SCALAR_ROWS = 4  # a group of up to this many rows passes each value as a parameter...
SCALAR_PARAMS = 256  # ...while its statement has no more than this many such parameters


@dataclass
class Group:
    """Rows of one table, one operation ('I', 'U', 'D') and one column set."""

    table: Table
    op: str
    positions: tuple[int, ...]  # upstream positions sent (for 'D': the key's)
    tuples: list[Sequence[Value]]
    scalar: bool = False  # one typed parameter per value (else one text[] per column)

    @property
    def shape(self) -> tuple[int, str, tuple[int, ...], int]:
        """What its statement text depends on (the table by identity)."""
        return (id(self.table), self.op, self.positions,
                len(self.tuples) if self.scalar else -1)


def plan(gs: Sequence[Group]) -> tuple[tuple[int, str, tuple[int, ...], int], ...]:
    """Choose scalar or array parameters per group; returns the transaction's shape,
    the key of its prepared statement."""
    budget = SCALAR_PARAMS
    for g in gs:
        n = len(g.tuples) * len(g.positions)
        g.scalar = len(g.tuples) <= SCALAR_ROWS and n <= budget
        if g.scalar:
            budget -= n
    return tuple(g.shape for g in gs)


def groups(changes: Sequence[tuple[Table, Insert | Update | Delete]]) -> list[Group]:
    """One upstream transaction's changes by statement; NotBulk if it changes a key or
    carries a message the bulk path does not take.

    A key touched twice in one transaction needs no check here: the second statement
    then finds a row written by this very transaction (no commit time yet, or a
    duplicate key, or a fresh tombstone) and raises, so the transaction goes row by row.
    """
    if changes:
        t0 = changes[0][0]
        if t0.relation != RELAY_RELATION and all(t is t0 and type(m) is Insert for t, m in changes):
            # The usual bulk shape: rows inserted into one table.
            return [Group(t0, "I", t0.positions,
                          [m.new for _, m in changes])]  # type: ignore[union-attr]
    out: dict[tuple[int, str, tuple[int, ...]], Group] = {}
    for t, m in changes:
        if type(m) is Insert:
            op, tup, positions = "I", m.new, t.positions
        elif type(m) is Update:
            if m.old is not None and any(m.old[p] != m.new[p] for p in t.key_pos):
                raise NotBulk("an update changes its key")
            op, tup, positions = "U", new_values(m), t.positions
            if UNCHANGED in tup:
                positions = tuple(i for i in t.positions if tup[i] is not UNCHANGED)
        elif type(m) is Delete:
            op, tup, positions = "D", m.old, tuple(t.key_pos)
        else:
            raise NotBulk(f"a {type(m).__name__} message")
        g = out.get((id(t), op, positions))
        if g is None:
            if t.relation == RELAY_RELATION:  # checked once per group, not per row
                raise NotBulk("a relayed delete")  # the conflict rules decide it (apply.py)
            g = out[(id(t), op, positions)] = Group(t, op, positions, [])
        g.tuples.append(tup)
    return list(out.values())


def _key_columns(g: Group) -> list[int]:
    try:
        return [g.positions.index(p) for p in g.table.key_pos]
    except ValueError as e:
        raise NotBulk("a key column is not sent") from e


def prepare_sql(name: str, gs: Sequence[Group], xact_origin_fn: str) -> str:
    """PREPARE of one transaction's statement: $1 the origin id and $2 the commit time
    that rows updated or deleted must have been last written with (or before), then
    each group's values in order (see execute_sql). One data-modifying CTE per group;
    the final SELECT sums what did not hold (rows not matched, tombstoned keys) and
    raises RK001 unless that is zero. Two groups touching one row cannot both see it
    (one snapshot for the statement), so such a transaction misses and goes row by row.
    """
    types = ["oid", "timestamptz"]

    def param(type_name: str) -> str:
        types.append(type_name)
        return f"${len(types)}"

    ctes: list[str] = []
    missed: list[str] = []
    for k, g in enumerate(gs):
        t = g.table
        cols = [t.columns[p] for p in g.positions]
        key_cols = _key_columns(g)
        rel = literal(t.relation)
        w = f"g{k}"
        if g.scalar:
            rows = [[param(t.types[c]) for c in cols] for _ in g.tuples]
        else:
            arrays = [param("text[]") for _ in cols]
            cast = [f"u.c{i}::{t.types[c]}" for i, c in enumerate(cols)]
            unnest = (f"unnest({', '.join(arrays)}) AS u("
                      f"{', '.join(f'c{i}' for i in range(len(cols)))})")
        if g.op == "I":
            names = ", ".join(quote_ident(c) for c in cols)
            if g.scalar:
                values = ", ".join(f"({', '.join(r)})" for r in rows)
                ctes.append(f"{w} AS (INSERT INTO {t.quoted} ({names}) VALUES {values})")
                keys = ", ".join("jsonb_build_array(" + ", ".join(f"{r[i]}::text"
                                                                 for i in key_cols) + ")"
                                 for r in rows)
                hits = (f"SELECT count(*) FROM ringkeeper.tombstones tb WHERE tb.relation = "
                        f"{rel} AND tb.key IN ({keys})")
            else:
                ctes.append(f"{w} AS (INSERT INTO {t.quoted} ({names}) "
                            f"SELECT {', '.join(cast)} FROM {unnest})")
                hits = (f"SELECT count(*) FROM unnest({', '.join(arrays[i] for i in key_cols)})"
                        f" AS u({', '.join(f'c{i}' for i in key_cols)}) JOIN "
                        f"ringkeeper.tombstones tb ON tb.relation = {rel} AND tb.key = "
                        f"jsonb_build_array({', '.join(f'u.c{i}' for i in key_cols)})")
            # A key that exists here fails the insert (unique violation); one deleted
            # here (a tombstone) needs the conflict rules.
            missed.append(f"CASE WHEN EXISTS (SELECT 1 FROM ringkeeper.tombstones WHERE "
                          f"relation = {rel}) THEN ({hits}) ELSE 0 END")
            continue
        # Strictly older, as core.conflicts.decide: a row that already holds this very
        # version (copied at a join and streamed too) is left to the row-by-row path,
        # which skips it, instead of being written a second time.
        premise = (f"(SELECT x.roident = $1 AND x.timestamp < $2 "
                   f"FROM {xact_origin_fn}(t.xmin) AS x)")
        if g.scalar and len(rows) == 1:
            src, val, expected = "", rows[0], "1"
        elif g.scalar:
            src = (" FROM (VALUES " + ", ".join(f"({', '.join(r)})" for r in rows) +
                   f") AS u({', '.join(f'c{i}' for i in range(len(cols)))})")
            val, expected = [f"u.c{i}" for i in range(len(cols))], str(len(rows))
        else:
            src, val, expected = f" FROM {unnest}", cast, f"cardinality({arrays[0]})"
        match = " AND ".join(f"t.{quote_ident(cols[i])} = {val[i]}" for i in key_cols)
        if g.op == "U":
            sets = ", ".join(f"{quote_ident(c)} = {val[i]}"
                             for i, c in enumerate(cols) if i not in key_cols)
            if not sets:  # nothing but the key was sent: touch it so the row is versioned
                kc = quote_ident(cols[key_cols[0]])
                sets = f"{kc} = t.{kc}"
            ctes.append(f"{w} AS (UPDATE {t.quoted} AS t SET {sets}{src} "
                        f"WHERE {match} AND {premise} RETURNING 1)")
        else:
            using = src.replace(" FROM ", " USING ", 1)
            ctes.append(f"{w} AS (DELETE FROM {t.quoted} AS t{using} "
                        f"WHERE {match} AND {premise} RETURNING 1)")
        missed.append(f"{expected} - (SELECT count(*) FROM {w})")
    return (f"PREPARE {name} ({', '.join(types)}) AS WITH {', '.join(ctes)} "
            "SELECT CASE WHEN s.m = 0 THEN NULL ELSE ringkeeper.fast_path_check(s.m) END "
            f"FROM (SELECT {' + '.join(missed)} AS m OFFSET 0) AS s")


def _value(v: Value) -> str:
    if v is None:
        return "NULL"
    if type(v) is not str:
        raise NotBulk(f"a value that is not text: {v!r}"[:200])
    return literal(v)


def execute_sql(name: str, gs: Sequence[Group], origin: BulkOrigin) -> str:
    """EXECUTE of a prepared transaction with its values: literals for scalar groups,
    array literals for the others."""
    args = [str(origin.roident), "'" + origin.commit_ts.isoformat() + "'"]
    for g in gs:
        positions = g.positions
        if g.scalar:
            args += [_value(tup[p]) for tup in g.tuples for p in positions]
            continue
        try:
            args += [array_literal([tup[p] for tup in g.tuples])  # type: ignore[misc]
                     for p in positions]
        except (TypeError, AttributeError) as e:  # bytes, or an unchanged TOAST value
            raise NotBulk(f"a value that is not text: {e}") from e
    return f"EXECUTE {name}({', '.join(args)})"


def group_keys(g: Group) -> list[list[str]]:
    """The group's keys as one list per key column (texts as received)."""
    return [[tup[p] for tup in g.tuples] for p in g.table.key_pos]  # type: ignore[misc]


DIRTY_PREPARE = ("PREPARE rk_dirty (text, text[]) AS "
                 "INSERT INTO ringkeeper.dirty_key_sets (relation, keys) VALUES ($1, $2)")


def dirty_sql(keys: dict[str, list[list[str]]]) -> list[str]:
    """One row per table for a whole script (rk_dirty, DIRTY_PREPARE): keys[i][j] is
    key column i of key j."""
    return [f"EXECUTE rk_dirty({literal(rel)}, "
            f"ARRAY[{', '.join(array_literal(c) + '::text[]' for c in cols)}])"
            for rel, cols in keys.items()]
