"""Many upstream transactions in one round trip: the SQL of the ring's bulk apply path.

Applying one upstream transaction at a time costs several round trips, and building
parameter arrays row by row in Python costs more than the rows themselves. In the
normal case (every row new here, or last written by the same origin at an older
time) none of that is needed: each upstream transaction becomes
``BEGIN; EXECUTE <one prepared statement per table, operation and column
set>; xact_setup; COMMIT`` with its values as array literals, and a few dozen travel as
one simple query. The statements are prepared once per session (planning them for
every transaction cost more than the inserts). Every statement proves its own
premise and raises (SQLSTATE RK001) when it does not hold, so the server stops at the
first transaction that needs the conflict rules; the ones before it are committed,
that one and the rest go through the row-by-row path. This module only builds text
(pure); the applier runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .catalog import quote_ident
from .pgoutput import UNCHANGED, Delete, Insert, Update, Value

FAST_PATH_SQLSTATE = "RK001"  # raised by ringkeeper.fast_path_check (catalog.py)


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
class Origin:
    roident: int  # the true origin's replication origin id at this member
    commit_ts: datetime


@dataclass
class Group:
    """Rows of one table, one operation ('I', 'U', 'D') and one column set."""

    table: Table
    op: str
    positions: tuple[int, ...]  # upstream positions sent (for 'D': the key's)
    tuples: list[Sequence[Value]]

    @property
    def shape(self) -> str:
        return f"bulk:{self.op}:{','.join(map(str, self.positions))}"


def groups(changes: Sequence[tuple[Table, Insert | Update | Delete]]) -> list[Group]:
    """One upstream transaction's changes by statement; NotBulk if it changes a key or
    carries a message the bulk path does not take.

    A key touched twice in one transaction needs no check here: the second statement
    then finds a row written by this very transaction (no commit time yet, or a
    duplicate key, or a fresh tombstone) and raises, so the transaction goes row by row.
    """
    if changes:
        t0 = changes[0][0]
        if all(t is t0 and type(m) is Insert for t, m in changes):
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
            op, tup, positions = "U", m.new, t.positions
            if UNCHANGED in tup:
                positions = tuple(i for i in t.positions if tup[i] is not UNCHANGED)
        elif type(m) is Delete:
            op, tup, positions = "D", m.old, tuple(t.key_pos)
        else:
            raise NotBulk(f"a {type(m).__name__} message")
        g = out.get((id(t), op, positions))
        if g is None:
            g = out[(id(t), op, positions)] = Group(t, op, positions, [])
        g.tuples.append(tup)
    return list(out.values())


def prepare_sql(name: str, g: Group, xact_origin_fn: str) -> str:
    """PREPARE for a group's shape: $1..$n text[] per column, then (for updates and
    deletes) the origin id, commit time and row count the premise is checked against."""
    t = g.table
    cols = [t.columns[p] for p in g.positions]
    try:
        key_cols = [g.positions.index(p) for p in t.key_pos]
    except ValueError as e:
        raise NotBulk("a key column is not sent") from e
    n = len(cols)
    rel = literal(t.relation)
    params = ", ".join(f"${i + 1}" for i in range(n))
    aliases = ", ".join(f"c{i}" for i in range(n))
    rows = f"unnest({params}) AS u({aliases})"
    head = (f"WITH d AS (INSERT INTO ringkeeper.dirty_key_sets (relation, keys) VALUES ({rel}, "
            f"ARRAY[{', '.join(f'${i + 1}' for i in key_cols)}])), ")
    types = ["text[]"] * n
    if g.op == "I":
        casts = ", ".join(f"u.c{i}::{t.types[c]}" for i, c in enumerate(cols))
        tomb = ("CASE WHEN EXISTS (SELECT 1 FROM ringkeeper.tombstones WHERE relation = "
                f"{rel}) THEN (SELECT count(*) FROM unnest("
                f"{', '.join(f'${i + 1}' for i in key_cols)}) AS u("
                f"{', '.join(f'c{i}' for i in key_cols)}) JOIN ringkeeper.tombstones tb ON "
                f"tb.relation = {rel} AND tb.key = jsonb_build_array("
                f"{', '.join(f'u.c{i}' for i in key_cols)})) ELSE 0 END")
        # A key that exists here fails the insert (unique violation): conflict rules.
        body = (head + f"w AS (INSERT INTO {t.quoted} "
                f"({', '.join(quote_ident(c) for c in cols)}) SELECT {casts} FROM {rows}) "
                f"SELECT ringkeeper.fast_path_check({tomb})")
    else:
        types += ["oid", "timestamptz", "bigint"]
        match = " AND ".join(f"t.{quote_ident(cols[i])} = u.c{i}::{t.types[cols[i]]}"
                             for i in key_cols)
        same_origin = (f"(SELECT x.roident = ${n + 1} AND x.timestamp <= ${n + 2} "
                       f"FROM {xact_origin_fn}(t.xmin) AS x)")
        if g.op == "U":
            sets = ", ".join(f"{quote_ident(c)} = u.c{i}::{t.types[c]}"
                             for i, c in enumerate(cols) if i not in key_cols)
            if not sets:  # nothing but the key was sent: touch it so the row is versioned
                k = cols[key_cols[0]]
                sets = f"{quote_ident(k)} = t.{quote_ident(k)}"
            dml = (f"UPDATE {t.quoted} AS t SET {sets} FROM {rows} WHERE {match} "
                   f"AND {same_origin}")
        else:
            dml = f"DELETE FROM {t.quoted} AS t USING {rows} WHERE {match} AND {same_origin}"
        body = (head + f"w AS ({dml} RETURNING 1) "
                f"SELECT ringkeeper.fast_path_check(${n + 3} - (SELECT count(*) FROM w))")
    return f"PREPARE {name} ({', '.join(types)}) AS {body}"


def execute_sql(name: str, g: Group, origin: Origin) -> str:
    """EXECUTE of a prepared group with its rows as array literals."""
    tuples = g.tuples
    try:
        args = [array_literal([tup[p] for tup in tuples]) for p in g.positions]  # type: ignore[misc]
    except (TypeError, AttributeError) as e:  # bytes, or an unchanged TOAST value
        raise NotBulk(f"a value that is not text: {e}") from e
    if g.op != "I":
        args += [str(origin.roident), literal(origin.commit_ts.isoformat()), str(len(tuples))]
    return f"EXECUTE {name}({', '.join(args)})"
