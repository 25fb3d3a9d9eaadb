"""Which tables a ring carries, and what a member's server and sessions must be.

Read by every other sync module (and the verifier), so it holds only the shared
vocabulary: a table's identity and key (TableInfo, the relay table), the include and
exclude patterns, the catalog read that selects the ring's tables, the server
settings the ring needs, and the session settings that make text forms equal on
every member and major. What a ring creates in a member's database lives beside it:
ringschema.py (the ringkeeper schema), capture.py (publication and triggers),
slots.py (logical slots), origins.py (replication origins).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ..base.sqlquote import quote_ident as quote_ident

# Session settings that make text forms identical on every member and major.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


RELAY_NSP, RELAY_NAME = "ringkeeper", "relay"


class SetupError(RuntimeError):
    """A member cannot take part in the ring as it is; the message says how to fix it."""


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    key: tuple[str, ...]  # primary key (or replica identity index) columns, in order

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def quoted(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


RELAY = TableInfo(RELAY_NSP, RELAY_NAME, ("nsp", "name", "key"))


def matches(relation: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """schema.table patterns where * matches any run of characters (no other wildcard)."""
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(relation, pattern.replace("[", "[[]").replace("?", "[?]"))
    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


async def apply_canonical_settings(conn: asyncpg.Connection) -> None:
    await conn.execute("; ".join(f"SET {k} = '{v}'" for k, v in CANONICAL_SETTINGS.items()))


async def check_server(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT current_setting('wal_level') AS wal_level, "
        "current_setting('track_commit_timestamp') AS commit_ts, pg_is_in_recovery() AS standby")
    assert row is not None
    problems = []
    if row["wal_level"] != "logical":
        problems.append(f"wal_level is {row['wal_level']}, the ring needs logical")
    if row["commit_ts"] != "on":
        problems.append("track_commit_timestamp is off, conflict resolution needs it on")
    if row["standby"]:
        problems.append("the server is a standby; only a primary takes part in the ring")
    if problems:
        raise SetupError("; ".join(problems))


async def replicated_tables(conn: asyncpg.Connection, include: Sequence[str],
                            exclude: Sequence[str]) -> tuple[list[TableInfo], list[str]]:
    """The tables the ring carries, and those selected but refused (no key to match on)."""
    rows = await conn.fetch(
        """
        SELECT n.nspname AS schema, c.relname AS name,
               (SELECT array_agg(a.attname ORDER BY k.ord)
                  FROM pg_index i
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid
                   AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident))
                   AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2
                                        WHERE i2.indrelid = c.oid
                                          AND (i2.indisprimary OR
                                               (c.relreplident = 'i' AND i2.indisreplident))
                                        ORDER BY i2.indisprimary DESC LIMIT 1)) AS key
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ringkeeper')
           AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY 1, 2
        """)
    tables: list[TableInfo] = []
    refused: list[str] = []
    for r in rows:
        rel = f"{r['schema']}.{r['name']}"
        if not matches(rel, include, exclude):
            continue
        if not r["key"]:
            refused.append(rel)
        else:
            tables.append(TableInfo(r["schema"], r["name"], tuple(r["key"])))
    return tables, refused

