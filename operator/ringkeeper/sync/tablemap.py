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
    # Why this table's changes are parked here (sync/parking.py), or None: it applies.
    parked: str | None = None
    upstream: tuple[str, ...] = ()  # upstream's column names, in tuple order

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
        """Match an upstream relation. A table that does not match (DDL drift) is not an
        error of the link: its changes are parked until it matches (sync/parking.py),
        and so are they while earlier ones still wait, to keep their order."""
        upstream = [c.name for c in rel.columns]
        try:
            tm = await self.describe(rel.namespace, rel.name, upstream)
        except ApplyError as e:
            tm = parked_map(rel.namespace, rel.name, upstream, str(e))
        else:
            waiting = await self.conn.fetchval(
                "SELECT count(*) FROM ringkeeper.parked WHERE relation = $1", tm.relation)
            if waiting:
                tm.parked = (f"{waiting} earlier change(s) of {tm.relation} are parked here "
                             "and go first")
        self._by_relid[rel.oid] = tm
        self._by_name[(rel.namespace, rel.name)] = tm

    async def rematch(self, relation: str) -> None:
        """Match a parked table again (its parked changes are all applied): its
        relations apply from now on. Raises ApplyError if it still does not match."""
        fresh: dict[tuple[str, ...], TableMap] = {}
        for by in (self._by_relid, self._by_name):
            for k, tm in list(by.items()):
                if tm.relation != relation or tm.parked is None:
                    continue
                if tm.upstream not in fresh:
                    fresh[tm.upstream] = await self.describe(tm.namespace, tm.name,
                                                             list(tm.upstream))
                by[k] = fresh[tm.upstream]  # type: ignore[index]

    def parked(self) -> dict[str, str]:
        """Tables whose changes are parked now, with why."""
        return {tm.relation: tm.parked for tm in self._by_relid.values() if tm.parked}

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
        return TableMap(deferrable=deferred, relation=qualified, upstream=tuple(upstream),
                        quoted=f"{quote_ident(namespace)}.{quote_ident(name)}",
                        columns=[c if c in types else "" for c in upstream], types=types,
                        key=list(key), key_pos=[upstream.index(k) for k in key],
                        namespace=namespace, name=name,
                        relay=(namespace, name) == (RELAY.schema, RELAY.name))


def parked_map(namespace: str, name: str, upstream: list[str], reason: str) -> TableMap:
    """The map of a table whose changes are parked: nothing of it is applied, so only
    its names and upstream's columns are known."""
    return TableMap(relation=f"{namespace}.{name}",
                    quoted=f"{quote_ident(namespace)}.{quote_ident(name)}",
                    columns=[], types={}, key=[], key_pos=[], namespace=namespace, name=name,
                    parked=reason, upstream=tuple(upstream))
