"""Initial copies: every member's own rows reach every other member, under their
true origin and commit time, while writes continue everywhere.

A ring is created over campuses that already hold data and keep writing, and a
member may join later. For each other member S, this member copies the rows S
itself last wrote (their commit origin is S, or none of the ring's members), from
one REPEATABLE READ snapshot of S taken *after* every slot on the path from S to
this member exists and has reached its consistent point (inbound.ensure_path).
So every write of S is either in the snapshot or committed after those slots
existed, and travels the ring: nothing is lost. A row both copied and streamed
arrives twice with the same origin and commit time, which the conflict rules treat
as the same write (core.conflicts.decide): nothing is doubled, nothing is logged as
a conflict. Rows S holds from other members are left to those members' own copies
(each copies what it wrote last); rows already here as they are at S are skipped.

Copies are made and recorded per (source, table) (ringkeeper.initial_copy_tables;
core.ringmember.pending_copies): a table that joins this member's replicated set later
(created here after the copy of S ran) is copied from every other member when it
appears, since S's rows of it written before the slots existed reach this member no
other way. In the snapshot, a table is copied only if it is already in S's
publication (core.ringmember.table_copy_step): every later row of it is then decoded
by the slot, so copy and stream leave no gap. One absent at S is done with nothing to
copy (S's event trigger publishes it from the transaction that creates it); one at S
but not yet published waits and is copied again later (the caller first adds it to
S's publication, inbound.ensure_path).

Copied rows are applied by the Applier with the conflict rules (a row that differs
here is decided by commit time and priority, and logged) in transactions that
carry the row's true origin and commit time with origin LSN 0/0: they do not move
that origin's progress, every link takes them (Applier.wanted), and members
forward them like anything they apply. Forwarding matters: a member between S and
another one may skip a streamed insert because its own copy holds a later version
of the row, and then only the copy carries the row on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..core import names, ringmember
from ..core.liveness import SLOW_STATEMENT_SECONDS
from ..engines import EngineProfile
from . import catalog
from .apply import EPOCH, Applier, Txn
from .catalog import TableInfo, quote_ident
from .connections import connect
from .pgoutput import Column, Insert, Relation

log = logging.getLogger(__name__)

CHUNK_ROWS = 2000


@dataclass
class SeedProgress:
    member: str
    source: str
    tables_total: int = 0
    tables_done: int = 0
    rows_total: int = 0
    rows_copied: int = 0
    state: str = "Pending"
    message: str | None = None

    @property
    def percent(self) -> float:
        if self.rows_total <= 0:
            return 100.0 if self.state == "Done" else 0.0
        return round(min(100.0, 100.0 * self.rows_copied / self.rows_total), 1)

    def as_dict(self) -> dict[str, object]:
        return {"member": self.member, "source": self.source, "state": self.state,
                "tablesDone": self.tables_done, "tablesTotal": self.tables_total,
                "rowsCopied": self.rows_copied, "rowsTotal": self.rows_total,
                "percent": self.percent, "message": self.message}


class SeedError(RuntimeError):
    pass


async def copied_tables(conn: asyncpg.Connection, ring: str) -> set[tuple[str, str]]:
    """(source member, schema.table) pairs this member has copied, or found absent at
    the source when it looked (nothing of the source's to copy)."""
    return {(r["source"], r["relation"]) for r in await conn.fetch(
        "SELECT source, relation FROM ringkeeper.initial_copy_tables WHERE ring = $1", ring)}


@dataclass(frozen=True)
class CopyResult:
    written: int  # rows written here
    waiting: list[str]  # tables at the source not yet in its publication: copy later


async def _source_tables(src: asyncpg.Connection, ring: str,
                         tables: Sequence[TableInfo]) -> list[ringmember.TableCopy]:
    """Per table, what the copy does with it, from plain catalog reads in the open
    snapshot (so they agree with the rows that snapshot sees)."""
    rows = await src.fetch(
        "SELECT k.ord, c.oid IS NOT NULL AS present, EXISTS (SELECT 1 FROM "
        "pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE p.pubname = $1 AND pr.prrelid = c.oid) AS published "
        "FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(nsp, rel, ord) "
        "LEFT JOIN pg_namespace n ON n.nspname = k.nsp "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = k.rel "
        "AND c.relkind IN ('r', 'p') ORDER BY k.ord",
        names.publication_name(ring), [t.schema for t in tables], [t.name for t in tables])
    return [ringmember.table_copy_step(at_source=bool(r["present"]),
                                       published=bool(r["published"])) for r in rows]


def copy_origin(ring: str, source: str, members: Sequence[str], roname: str | None) -> str | None:
    """Under which origin a row found at `source` is copied, or None when it is not
    `source`'s to copy (another member of the ring wrote it last: that member's own
    copy brings it). Local rows, frozen or pre-ring rows and foreign origins are the
    source's; a stock-sync copy keeps the seed origin (oldest, never forwarded)."""
    if roname is None:
        return source
    member = names.member_of_origin(ring, roname)
    if member is None or member == source:
        return source
    if member == names.SEED:
        return names.SEED
    return None if member in members else source


async def copy_member_rows(local_dsn: str, profile: EngineProfile, ring: str, local: str,
                           members: Sequence[str], priorities: dict[str, int], policy: str,
                           source: str, source_dsn: str, tables: Sequence[TableInfo],
                           progress: SeedProgress) -> CopyResult:
    """Copy `source`'s own rows of `tables` here (see the module docstring) and record
    each table copied (or absent at the source) as done. The caller has made sure the
    slots on the path from `source` to this member exist and are consistent."""
    # A copy reads and writes whole tables: the long time-out (core.liveness).
    src = await connect(source_dsn, command_timeout=SLOW_STATEMENT_SECONDS)
    conn = await connect(local_dsn, command_timeout=SLOW_STATEMENT_SECONDS)
    written = 0
    try:
        await catalog.apply_canonical_settings(src)
        applier = Applier(conn, profile, ring, local, priorities, policy)
        await applier.start()
        roname = {int(r["roident"]): str(r["roname"]) for r in await src.fetch(
            "SELECT roident, roname FROM pg_replication_origin")}
        x = profile.sql.xact_commit_timestamp_origin
        async with src.transaction(isolation="repeatable_read", readonly=True):
            # The first statement takes the snapshot every read below shares.
            steps = await _source_tables(src, ring, tables)
            todo = [t for t, st in zip(tables, steps, strict=True)
                    if st == ringmember.TableCopy.COPY]
            absent = [t for t, st in zip(tables, steps, strict=True)
                      if st == ringmember.TableCopy.ABSENT]
            waiting = [t.relation for t, st in zip(tables, steps, strict=True)
                       if st == ringmember.TableCopy.WAIT]
            counts = {t.relation: int(await src.fetchval(f"SELECT count(*) FROM {t.quoted}"))
                      for t in todo}
            progress.rows_total += sum(counts.values())
            progress.tables_total += len(tables)
            for relid, t in enumerate(todo, start=1):
                cols = [str(r["attname"]) for r in await conn.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
                    "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
                    "ORDER BY attnum", t.quoted)]
                await applier.relation(Relation(relid, t.schema, t.name, "d", tuple(
                    Column(c, 0, -1, c in t.key) for c in cols)))
                sel = ", ".join(f"t.{quote_ident(c)}::text" for c in cols)
                query = (f"SELECT {sel}, x.roident, x.timestamp FROM {t.quoted} AS t "
                         f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true")
                chunk: list[asyncpg.Record] = []
                table_written = 0
                async for row in src.cursor(query, prefetch=CHUNK_ROWS):
                    chunk.append(row)
                    if len(chunk) >= CHUNK_ROWS:
                        table_written += await _apply_chunk(conn, applier, ring, source,
                                                            members, roname, relid, t, cols,
                                                            chunk)
                        progress.rows_copied += len(chunk)
                        chunk = []
                if chunk:
                    table_written += await _apply_chunk(conn, applier, ring, source, members,
                                                        roname, relid, t, cols, chunk)
                    progress.rows_copied += len(chunk)
                await applier.settle()
                # Recorded after its rows are committed here: a copy cut short makes
                # only the tables not yet recorded again.
                await _record(conn, ring, source, t.relation, table_written, absent=False)
                written += table_written
                progress.tables_done += 1
            for t in absent:
                await _record(conn, ring, source, t.relation, 0, absent=True)
                progress.tables_done += 1
        await applier.settle()
        log.info("copied %d row(s) of %s's own here (%s) from %d table(s)%s%s", written,
                 source, local, len(todo),
                 f"; {len(absent)} not at {source} yet" if absent else "",
                 f"; waiting for {source}'s publication to carry {', '.join(waiting)}"
                 if waiting else "")
        return CopyResult(written, waiting)
    finally:
        await src.close()
        await conn.close()


async def _record(conn: asyncpg.Connection, ring: str, source: str, relation: str,
                  rows: int, *, absent: bool) -> None:
    await conn.execute(
        "INSERT INTO ringkeeper.initial_copy_tables (ring, source, relation, rows_copied, "
        "absent) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (ring, source, relation) DO UPDATE "
        "SET rows_copied = EXCLUDED.rows_copied, absent = EXCLUDED.absent, "
        "finished_at = clock_timestamp()", ring, source, relation, rows, absent)


async def _apply_chunk(conn: asyncpg.Connection, applier: Applier, ring: str, source: str,
                       members: Sequence[str], roname: dict[int, str], relid: int,
                       t: TableInfo, cols: list[str], chunk: list[asyncpg.Record]) -> int:
    """Write the rows of `chunk` that are `source`'s and not already here as they are."""
    n = len(cols)
    mine: list[tuple[str, datetime, tuple[str | None, ...]]] = []
    for r in chunk:
        ident = r["roident"]
        origin = copy_origin(ring, source, members, roname.get(int(ident)) if ident else None)
        if origin is None:
            continue
        ts = EPOCH if origin == names.SEED else (r["timestamp"] or EPOCH)
        mine.append((origin, ts, tuple(r[i] for i in range(n))))
    if not mine:
        return 0
    kpos = [cols.index(k) for k in t.key]
    types = [str(r["t"]) for r in await conn.fetch(
        "SELECT format_type(a.atttypid, a.atttypmod) AS t FROM unnest($2::text[]) "
        "WITH ORDINALITY AS k(name, ord) JOIN pg_attribute a ON a.attrelid = "
        "to_regclass($1) AND a.attname = k.name ORDER BY k.ord", t.quoted, list(t.key))]
    keyargs = [[v[2][p] for v in mine] for p in kpos]
    on = " AND ".join(f"t.{quote_ident(k)} = u.k{i}::{types[i]}" for i, k in enumerate(t.key))
    sel = ", ".join(f"t.{quote_ident(c)}::text" for c in cols)
    unn = ", ".join(f"${i + 1}::text[]" for i in range(len(kpos)))
    have = {tuple(r[i] for i in range(n)) for r in await conn.fetch(
        f"SELECT {sel} FROM {t.quoted} AS t JOIN unnest({unn}) AS u("
        f"{', '.join(f'k{i}' for i in range(len(kpos)))}) ON {on}", *keyargs)}
    # Canonical text forms on both sides (apply_canonical_settings), so equal rows
    # compare equal across majors.
    todo = [v for v in mine if v[2] not in have]
    todo.sort(key=lambda v: (v[1], v[0]))
    # One transaction per source transaction (origin and commit time), many of them per
    # round trip on the Applier's bulk path; a key that exists here goes row by row
    # with the conflict rules.
    txns: list[Txn] = []
    for origin, ts, values in todo:
        if txns and txns[-1].origin == origin and txns[-1].commit_ts == ts:
            txns[-1].changes.append(Insert(relid, values))
        else:
            txns.append(Txn(origin, 0, ts, 0, [Insert(relid, values)]))
    await applier.apply_txns(txns)
    await applier.settle()  # the script may still run: this connection is read next
    return len(todo)
