"""The members a verification talks to: one connection each, their tables and shapes,
and the per-table state a run keeps over them.

Kept apart from the comparison (`runner.py`) and the rechecks (`recheck.py`) because
connecting (SCRAM only, canonical session settings) and agreeing on what a table looks
like at every member are preconditions both of them, and repair, share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..core.verify import MemberConn
from ..core.verify_report import Progress
from ..sync.walstream import ReplicationError, ensure_scram
from . import checksum as cs
from .checksum import Canonical, TableShape

ProgressFn = Callable[[Progress], None]


class VerifyError(Exception):
    """A verification that cannot run as asked (missing table, no primary key, ...)."""


@dataclass
class Member:
    """An open connection to one member."""

    conn: MemberConn
    pg: Any  # asyncpg.Connection (untyped library)
    commit_ts: bool = True

    @property
    def name(self) -> str:
        return self.conn.name


async def connect(m: MemberConn, *, timeout: float = 30.0) -> Member:
    """One connection with the canonical session settings (and no JIT: chunk queries are
    many and short, compiling them would cost more than it saves)."""
    settings = {**cs.SESSION_SETTINGS, "jit": "off", "application_name": "ringkeeper-verify",
                "statement_timeout": "0"}
    try:
        await ensure_scram(m.dsn, timeout=timeout)  # external members: SCRAM or nothing
        pg = await asyncpg.connect(m.dsn, server_settings=settings, timeout=timeout)
    except (TimeoutError, OSError, ValueError, asyncpg.PostgresError,
            ReplicationError) as exc:
        raise VerifyError(f"cannot connect to member {m.name}: {exc}") from exc
    on = await pg.fetchval("SELECT current_setting('track_commit_timestamp') = 'on'")
    return Member(m, pg, bool(on))


async def close_all(members: Iterable[Member]) -> None:
    await asyncio.gather(*(m.pg.close() for m in members), return_exceptions=True)


async def ensure_dirty_keys(member: Member) -> None:
    """The table the sidecar fills; created here too so verification never depends on
    which of the two ran first."""
    await member.pg.execute(cs.DIRTY_KEYS_DDL)


async def list_tables(member: Member) -> tuple[list[str], list[str]]:
    """(tables with a primary key, tables without one) outside the system schemas."""
    with_pk = [r[0] for r in await member.pg.fetch(cs.TABLES_SQL)]
    without = [r[0] for r in await member.pg.fetch(cs.NO_PK_TABLES_SQL)]
    return with_pk, without


async def table_shape(member: Member, table: str) -> TableShape:
    rel = cs.qualified(table)
    exists = await member.pg.fetchval("SELECT to_regclass($1) IS NOT NULL", rel)
    if not exists:
        raise VerifyError(f"table {table} does not exist on member {member.name}")
    rows = await member.pg.fetch(cs.INTROSPECT_SQL, rel)
    key = tuple(r[0] for r in await member.pg.fetch(cs.PRIMARY_KEY_SQL, rel))
    if not key:
        raise VerifyError(f"table {table} has no primary key on member {member.name}: "
                          "verification needs one to name rows and to split ranges")
    cols = tuple(cs.ChecksumColumn(name=r["name"], sql_type=r["sql_type"], base=r["base"],
                           base_sql_type=r["base_sql_type"], base_kind=r["base_kind"],
                           element=r["element"], generated=r["generated"],
                           identity=r["identity"], not_null=r["not_null"]) for r in rows)
    return TableShape(table=cs.relation_name(table), columns=cols, key=key)


def aligned_shapes(shapes: Sequence[TableShape], members: Sequence[Member]) -> list[TableShape]:
    """Every member compares the reference member's non-generated columns by name; a
    missing column or a different primary key is a schema difference, reported as such."""
    ref = shapes[0]
    order = tuple(c.name for c in ref.columns if not c.generated)
    out = []
    for shape, m in zip(shapes, members, strict=True):
        names = {c.name for c in shape.columns if not c.generated}
        missing = [n for n in order if n not in names]
        extra = sorted(names - set(order))
        if missing or extra:
            raise VerifyError(
                f"table {ref.table} has different columns on {m.name} than on "
                f"{members[0].name}: missing {missing or '-'}, extra {extra or '-'}")
        if shape.key != ref.key:
            raise VerifyError(f"table {ref.table} has primary key {list(shape.key)} on "
                              f"{m.name} but {list(ref.key)} on {members[0].name}")
        out.append(TableShape(shape.table, shape.columns, shape.key, order))
    return out


@dataclass
class Context:
    members: list[Member]
    shapes: list[TableShape]
    canonical: Canonical
    table: str
    progress: ProgressFn | None
    started: float = field(default_factory=time.monotonic)
    keys_touched: int = 0
    max_keys: int = 100_000
    truncated: bool = False
    chunks_total: int = 0
    chunks_differing: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def report(self, phase: str, done: int, total: int, rows_done: int, rows_total: int) -> None:
        if self.progress is not None:
            self.progress(Progress(self.table, phase, done, total, rows_done, rows_total,
                                   time.monotonic() - self.started))
