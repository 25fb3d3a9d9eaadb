"""Upstream relations matched to this member's tables (the applier's table matching).

Kept apart from applying rows because matching is where a ring's members are found to
differ (a missing table, column or primary key): each refusal raises an ApplyError that
names what to fix, before any row of the table is applied. The matches are cached per
upstream relation id, and by name for relayed deletes (see sync/rowpath.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from .catalog import RELAY, quote_ident
from .pgoutput import Relation
from .records import ApplyError


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
    relay: bool = False  # ringkeeper.relay: its rows are deletes passed on (RowPath.change)

    def __post_init__(self) -> None:
        self.positions = tuple(i for i, c in enumerate(self.columns) if c)


class Tables:
    """The local tables matched so far, over the applier's connection."""

    def __init__(self, conn: asyncpg.Connection, local: str) -> None:
        self.conn = conn
        self.local = local
        self._by_relid: dict[int, TableMap] = {}
        self._by_name: dict[tuple[str, str], TableMap] = {}

    async def relation(self, rel: Relation) -> None:
        tm = await self.describe(rel.namespace, rel.name, [c.name for c in rel.columns])
        self._by_relid[rel.oid] = tm
        self._by_name[(rel.namespace, rel.name)] = tm

    def table(self, relid: int) -> TableMap:
        table = self._by_relid.get(relid)
        if table is None:
            raise ApplyError(f"change for relation {relid} before its description")
        return table

    async def local_table(self, namespace: str, name: str) -> TableMap:
        """A table named by a relayed delete, matched by name (its upstream description
        may not have come on this stream): the local columns stand for upstream's."""
        tm = self._by_name.get((namespace, name))
        if tm is None:
            cols = await self.conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                f"{quote_ident(namespace)}.{quote_ident(name)}")
            tm = await self.describe(namespace, name, [r["attname"] for r in cols])
            self._by_name[(namespace, name)] = tm
        return tm

    async def describe(self, namespace: str, name: str, upstream: list[str]) -> TableMap:
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
