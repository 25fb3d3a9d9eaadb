"""SQL that hashes rows the same way on every PostgreSQL major the ring mixes (15/17/18).

Equal values must hash equal at every member even when their stored or printed form
differs: numeric 1.50 vs 1.5, a timestamptz entered in another session time zone, -0.0 vs
0.0, jsonb key order, json whitespace. Two canonical forms are offered:

* "typed" (default): each column goes through its type's own extended hash function
  (`hash_record_extended` over a ROW of the columns). These functions implement SQL
  equality (hash_numeric ignores trailing zeros, float hashing folds -0 into 0, timestamptz
  hashes the instant) and are the ones hash partitioning relies on, so they are stable
  across majors. Types whose hash is not value-based or not portable (enum hashes label
  OIDs, citext folds case, interval folds 1 day into 24 h, types without a hash) are
  hashed as their canonical text. About three times faster than the text form.
* "text": the row is printed as text under fixed session settings (UTC, ISO dates,
  postgres intervals, shortest-exact floats, hex bytea), with numerics trimmed
  (trim_scale), floats normalised (x + 0 turns -0 into 0), json as jsonb, and the text is
  hashed with `hashtextextended`.

Text is always hashed under COLLATE "C" (bytes), so NULL, '' and differently composed
Unicode strings stay distinct. Key columns travel as canonical text and are cast back to
each member's own column type, so range bounds and dirty keys work on every member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..base.sqlquote import quote_ident as quote_ident
from ..base.sqlquote import quote_literal as quote_literal
from ..core.verify import Chunk, Key

Canonical = Literal["typed", "text"]

SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",
    "standard_conforming_strings": "on",
}
"""Set on every verification connection so text forms are identical across members."""

# Per type, the type's own extended hash (the support function hash partitioning uses,
# value-based and identical across majors), called on a value of the base type. Types
# missing here are hashed as their canonical text.
TYPED_HASH: dict[str, str] = {
    "int2": "hashint2extended({v}, {s})",
    "int4": "hashint4extended({v}, {s})",
    "int8": "hashint8extended({v}, {s})",
    "numeric": "hash_numeric_extended({v}, {s})",  # scale-blind: 1.50 = 1.5
    "float4": "hashfloat4extended({v}, {s})",  # -0 hashes as 0; NaN as NaN
    "float8": "hashfloat8extended({v}, {s})",
    "bool": "hashint4extended({v}::int4, {s})",
    "date": "timestamp_hash_extended({v}::timestamp, {s})",  # infinity-safe
    "time": "time_hash_extended({v}, {s})",
    # the instant, as UTC wall time (verification sessions run with TimeZone=UTC)
    "timestamptz": "timestamp_hash_extended({v}::timestamp, {s})",
    "timestamp": "timestamp_hash_extended({v}, {s})",
    "uuid": "uuid_hash_extended({v}, {s})",
    "jsonb": "jsonb_hash_extended({v}, {s})",
    "json": "jsonb_hash_extended({v}::jsonb, {s})",
    "text": 'hashtextextended({v} COLLATE "C", {s})',
    "varchar": 'hashtextextended({v}::text COLLATE "C", {s})',
    "name": 'hashtextextended({v}::text COLLATE "C", {s})',
    "bpchar": 'hashtextextended({v}::text COLLATE "C", {s})',
    "char": "hashcharextended({v}, {s})",
    "oid": "hashoidextended({v}, {s})",
    "inet": "hashinetextended({v}, {s})",
    "cidr": "hashinetextended({v}, {s})",
    "macaddr": "hashmacaddrextended({v}, {s})",
}
ARRAY_ELEMENTS = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8", "bool",
                            "date", "timestamp", "timestamptz", "uuid", "jsonb"})
TEXT_ELEMENTS = frozenset({"text", "varchar", "name", "bpchar"})
INTEGER_KEYS = frozenset({"int2", "int4", "int8"})

INTROSPECT_SQL = """
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS sql_type,
       bt.typname::text AS base,
       format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END)
         AS base_sql_type,
       bt.typtype::text AS base_kind,
       coalesce(et.typname::text, '') AS element,
       a.attgenerated::text AS generated,
       a.attidentity::text AS identity,
       a.attnotnull AS not_null
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

PRIMARY_KEY_SQL = """
SELECT a.attname::text
FROM pg_index i
JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::regclass AND i.indisprimary
ORDER BY k.ord
"""

TABLES_SQL = """
SELECT n.nspname::text || '.' || c.relname::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ringkeeper', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
  AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
ORDER BY 1
"""

NO_PK_TABLES_SQL = TABLES_SQL.replace("AND EXISTS", "AND NOT EXISTS")

DIRTY_KEYS_DDL = """
CREATE SCHEMA IF NOT EXISTS ringkeeper;
CREATE TABLE IF NOT EXISTS ringkeeper.dirty_keys (
  relation text NOT NULL,
  key jsonb NOT NULL,
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (relation, key));
CREATE TABLE IF NOT EXISTS ringkeeper.dirty_key_sets (
  relation text NOT NULL,
  keys text[] NOT NULL,
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def split_table(table: str) -> tuple[str, str]:
    """'schema.table' (or 'table', meaning public) as its two unquoted parts."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def relation_name(table: str) -> str:
    """The unquoted 'schema.table' form dirty_keys uses."""
    return ".".join(split_table(table))


def qualified(table: str) -> str:
    schema, name = split_table(table)
    return f"{quote_ident(schema)}.{quote_ident(name)}"


@dataclass(frozen=True)
class ChecksumColumn:
    name: str
    sql_type: str  # the declared type, for casts back from text
    base: str  # typname of the (domain's) base type
    base_sql_type: str
    base_kind: str  # typtype of the base: b, c, e, r, m, p
    element: str = ""  # element typname when the base is an array
    generated: str = ""
    identity: str = ""
    not_null: bool = False

    @property
    def ident(self) -> str:
        return quote_ident(self.name)


@dataclass(frozen=True)
class TableShape:
    """One member's view of a table: columns by name and the primary key.

    Expressions are built per member from its own catalog, by column NAME in the
    reference member's order, so a column order or domain that differs between members
    does not produce false differences."""

    table: str
    columns: tuple[ChecksumColumn, ...]
    key: tuple[str, ...]
    order: tuple[str, ...] = field(default=())
    # A row filter over alias t (a satellite's, rendered only by core.satellite.filter_sql,
    # which quotes every name and value): chunk digests, leaf rows, split points and key
    # lookups see only the rows it selects. Empty: every row.
    where: str = ""

    @property
    def by_name(self) -> dict[str, ChecksumColumn]:
        return {c.name: c for c in self.columns}

    @property
    def rel(self) -> str:
        return qualified(self.table)

    @property
    def key_columns(self) -> list[ChecksumColumn]:
        b = self.by_name
        return [b[k] for k in self.key]

    @property
    def compared(self) -> list[ChecksumColumn]:
        b = self.by_name
        return [b[n] for n in (self.order or tuple(c.name for c in self.columns))]

    @property
    def integer_key(self) -> bool:
        return len(self.key) == 1 and self.key_columns[0].base in INTEGER_KEYS


def _as_base(c: ChecksumColumn, alias: str) -> str:
    ref = f"{alias}.{c.ident}"
    return f"{ref}::{c.base_sql_type}" if c.sql_type != c.base_sql_type else ref


def text_expr(c: ChecksumColumn, alias: str = "t") -> str:
    """The canonical text of one value (also the canonical form of key columns)."""
    v = _as_base(c, alias)
    if c.base == "numeric":
        return f"trim_scale({v})::text"
    if c.base in ("float4", "float8"):
        return f"({v} + '0'::{c.base})::text"
    if c.base == "json":
        return f"{v}::jsonb::text"
    if c.base_kind == "b" and c.element == "numeric":
        return (f"CASE WHEN cardinality({v}) > 0 THEN (SELECT array_agg(trim_scale(x) "
                f"ORDER BY o) FROM unnest({v}) WITH ORDINALITY u(x, o))::text "
                f"ELSE {v}::text END")
    if c.base_kind == "b" and c.element in ("float4", "float8"):
        return (f"CASE WHEN cardinality({v}) > 0 THEN (SELECT array_agg(x + '0'::{c.element} "
                f"ORDER BY o) FROM unnest({v}) WITH ORDINALITY u(x, o))::text "
                f"ELSE {v}::text END")
    return f"{v}::text"


def null_marker(position: int) -> int:
    """A fixed signed 64-bit stand-in for a NULL in column `position` (hash functions are
    strict), distinct per position so NULLs in different columns do not cancel."""
    v = (0x9E3779B97F4A7C15 * (position + 1)) % (1 << 64)
    return v - (1 << 64) if v >= 1 << 63 else v


def typed_hash(c: ChecksumColumn, position: int, alias: str = "t", not_null: bool = False) -> str:
    """One column's 64-bit hash, seeded by its position in the compared column list."""
    v = _as_base(c, alias)
    seed = position + 1
    if c.base in TYPED_HASH:
        h = TYPED_HASH[c.base].format(v=v, s=seed)
    elif c.base_kind == "b" and c.element in ARRAY_ELEMENTS:
        h = f"hash_array_extended({v}, {seed})"
    elif c.base_kind == "b" and c.element in TEXT_ELEMENTS:
        h = f'hash_array_extended({v}::text[] COLLATE "C", {seed})'
    else:
        h = f'hashtextextended(({text_expr(c, alias)}) COLLATE "C", {seed})'
    return h if not_null else f"coalesce({h}, {null_marker(position)})"


def row_hash_expr(shape: TableShape, canonical: Canonical = "typed", alias: str = "t") -> str:
    """A signed 64-bit hash of the row's canonical form.

    typed: the XOR of the columns' position-seeded hashes (XOR inside a row is safe: the
    seeds differ per column, so equal values in two columns do not cancel; across rows
    the digest SUMS, see core.verify.Digest)."""
    cols = shape.compared
    if canonical == "typed":
        return "(" + " # ".join(typed_hash(c, i, alias, c.not_null)
                                for i, c in enumerate(cols)) + ")"
    # ROW(...)::text quotes '' as "" and prints NULL as nothing: the two stay distinct.
    inner = ", ".join(f"{text_expr(c, alias)}" for c in cols)
    return f'hashtextextended(ROW({inner})::text COLLATE "C", 0)'


def key_exprs(shape: TableShape, alias: str = "t") -> list[str]:
    return [text_expr(c, alias) for c in shape.key_columns]


def key_tuple(shape: TableShape, alias: str = "t") -> str:
    cols = ", ".join(f"{alias}.{c.ident}" for c in shape.key_columns)
    return f"({cols})" if len(shape.key) > 1 else cols


def _bound(shape: TableShape, key: Key, params: list[str]) -> str:
    parts = []
    for c, v in zip(shape.key_columns, key, strict=True):
        params.append(v)
        parts.append(f"${len(params)}::text::{c.sql_type}")
    return f"ROW({', '.join(parts)})" if len(parts) > 1 else parts[0]


def range_predicate(shape: TableShape, chunk: Chunk, params: list[str],
                    alias: str = "t") -> str:
    """`key >= lo AND key < hi` as a row comparison (so composite keys use the index),
    and the shape's row filter when it has one (written over alias t)."""
    conds = []
    if chunk.lo is not None:
        conds.append(f"{key_tuple(shape, alias)} >= {_bound(shape, chunk.lo, params)}")
    if chunk.hi is not None:
        conds.append(f"{key_tuple(shape, alias)} < {_bound(shape, chunk.hi, params)}")
    if shape.where:
        conds.append(f"({shape.where})")
    return " AND ".join(conds) or "true"


def order_by(shape: TableShape, alias: str = "t") -> str:
    return ", ".join(f"{alias}.{c.ident}" for c in shape.key_columns)


def chunk_digest_sql(shape: TableShape, chunk: Chunk,
                     canonical: Canonical = "typed") -> tuple[str, list[str]]:
    """count(*) and sum of row hashes over one key range, computed by the member."""
    params: list[str] = []
    where = range_predicate(shape, chunk, params)
    sql = (f"SELECT count(*)::int8, coalesce(sum({row_hash_expr(shape, canonical)}), 0) "
           f"FROM {shape.rel} t WHERE {where}")
    return sql, params


def leaf_rows_sql(shape: TableShape, chunk: Chunk,
                  canonical: Canonical = "typed") -> tuple[str, list[str]]:
    """(key texts..., row hash) of every row in a small range, in key order."""
    params: list[str] = []
    where = range_predicate(shape, chunk, params)
    keys = ", ".join(key_exprs(shape))
    sql = (f"SELECT {keys}, {row_hash_expr(shape, canonical)} FROM {shape.rel} t "
           f"WHERE {where} ORDER BY {order_by(shape)}")
    return sql, params


def quantiles_sql(shape: TableShape, chunk: Chunk, step: int) -> tuple[str, list[str]]:
    """Every `step`-th key of a range: split points for bisection."""
    params: list[str] = []
    where = range_predicate(shape, chunk, params)
    keys = ", ".join(f"{e} AS k{i}" for i, e in enumerate(key_exprs(shape)))
    cols = ", ".join(f"s.k{i}" for i in range(len(shape.key)))
    sql = (f"SELECT {cols} FROM (SELECT {keys}, row_number() OVER (ORDER BY "
           f"{order_by(shape)}) AS rn FROM {shape.rel} t WHERE {where}) s "
           f"WHERE s.rn % {int(step)} = 0 ORDER BY s.rn")
    return sql, params


def sample_sql(shape: TableShape, percent: float) -> str:
    """A key sample in key order, for range boundaries of non-integer keys."""
    keys = ", ".join(key_exprs(shape))
    sample = f" TABLESAMPLE SYSTEM ({percent:.6f})" if percent < 100 else ""
    return f"SELECT {keys} FROM {shape.rel} t{sample} ORDER BY {order_by(shape)}"


def lookup_sql(shape: TableShape, canonical: Canonical = "typed", *, versions: bool = False,
               values: bool = False) -> str:
    """Rows for a batch of keys, one text[] parameter per key column (index lookups).

    With `versions`, adds each row's original commit time and origin name (roident 0 is
    a local write: origin ''); with `values`, the row as a JSON object of column texts."""
    n = len(shape.key)
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(n))
    names = ", ".join(f"k{i}" for i in range(n))
    join = " AND ".join(f"t.{c.ident} = k.k{i}::{c.sql_type}"
                        for i, c in enumerate(shape.key_columns))
    if shape.where:  # a row outside the filter is looked up as absent
        join += f" AND ({shape.where})"
    cols = [*key_exprs(shape), row_hash_expr(shape, canonical)]
    lateral = ""
    if versions:
        cols += ["ct.timestamp", "CASE WHEN ct.roident = 0 THEN '' ELSE o.roname END"]
        lateral = (" LEFT JOIN LATERAL pg_xact_commit_timestamp_origin(t.xmin) ct ON true"
                   " LEFT JOIN pg_replication_origin o ON o.roident = ct.roident")
    if values:
        cols.append(values_expr(shape))
    return (f"SELECT {', '.join(cols)} FROM unnest({arrays}) AS k({names}) "
            f"JOIN {shape.rel} t ON {join}{lateral}")


def values_expr(shape: TableShape, alias: str = "t") -> str:
    """The row as {column: text} in the session's fixed settings (values as stored, not
    normalised: they are what repair writes back)."""
    pieces = []
    cols = [c for c in shape.columns if not c.generated]
    for i in range(0, len(cols), 40):
        pairs = ", ".join(f"{quote_literal(c.name)}, {alias}.{c.ident}::text"
                          for c in cols[i:i + 40])
        pieces.append(f"jsonb_build_object({pairs})")
    return " || ".join(pieces) or "'{}'::jsonb"


def key_arrays(keys: Sequence[Key], width: int) -> list[list[str]]:
    """Column-wise text arrays for `lookup_sql`."""
    return [[k[i] for k in keys] for i in range(width)]
