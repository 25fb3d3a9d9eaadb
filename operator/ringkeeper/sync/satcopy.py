"""A new satellite's initial copy: every row of its tables that its filter selects, from
the parent, into the parent's spool for it, under live writes everywhere.

The parent's slot for the satellite is made (and has reached its consistent point)
before the copy's REPEATABLE READ snapshot of the parent is taken, and the spool link
starts reading that slot only after the copy is in the spool. So every change at the
parent is either in the snapshot or committed after the slot's consistent point and
decoded by it, and the spool holds the copy before any streamed change the snapshot
did not see: nothing is lost. A change committed between the slot and the snapshot is
in both; it arrives twice at the satellite with the same origin and commit time, which
the conflict rules take as the same write (core.conflicts.decide): nothing is doubled.
This is the ring's seed (sync/seed.py) with the spool in place of the Applier.

Each row is spooled as an insert in a transaction under its true origin and commit
time with origin LSN 0/0 (core.satsync.copy_origin): the drain's Applier at the
satellite always takes it (Applier.wanted), decides it with the conflict rules against
what the satellite holds (a row the satellite wrote later stays, and travels up as
usual) and logs real conflicts. The satellite's own rows are not copied back.

The copy and its record (ringkeeper.satellite_copies) are committed in one parent
transaction: a copy cut short leaves nothing and is made again from a fresh snapshot
(the slot has not moved: its link has not read it yet).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..contracts.ringconfig import RingConfig, SatelliteInfo
from ..core import names, ringmember
from ..core.liveness import SLOW_STATEMENT_SECONDS
from ..core.satellite import filter_sql
from ..core.satsync import copy_origin
from ..engines import EngineProfile
from . import catalog
from .apply import EPOCH
from .catalog import quote_ident
from .connections import close_quietly, connect
from .pgoutput import Column, Insert, Relation
from .satspool import SPOOL_INSERT, SPOOL_PART_ROWS, encode

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ringkeeper.satellite_copies (
    satellite text NOT NULL,
    relation text NOT NULL,
    rows_copied bigint NOT NULL,
    absent boolean NOT NULL DEFAULT false,
    until_lsn pg_lsn,  -- WAL position read just after the copy's snapshot (satspool)
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (satellite, relation)
)"""

SpoolRow = tuple[str, str, int, datetime, int, bool, bytes, int]


@dataclass
class CopyProgress:
    """The satellite's initial copy as its report shows it."""

    state: str = "Pending"  # Pending, Copying, Waiting, Done
    tables_total: int = 0
    tables_done: int = 0
    rows_copied: int = 0
    rows_total: int = 0
    message: str | None = None

    @property
    def percent(self) -> float:
        if self.rows_total <= 0:
            return 100.0 if self.state == "Done" else 0.0
        return round(min(100.0, 100.0 * self.rows_copied / self.rows_total), 1)

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "tablesDone": self.tables_done,
                "tablesTotal": self.tables_total, "rowsCopied": self.rows_copied,
                "rowsTotal": self.rows_total, "percent": self.percent,
                "message": self.message}


class CopyWaits(RuntimeError):
    """A table of the satellite's is at the parent but not in the ring's publication
    yet: its rows committed after the snapshot would be in neither copy nor stream."""


async def copy_done(conn: asyncpg.Connection, sat: SatelliteInfo) -> bool:
    """Whether every table of the satellite has been copied (or found absent)."""
    await conn.execute(SCHEMA)
    done = {r["relation"] for r in await conn.fetch(
        "SELECT relation FROM ringkeeper.satellite_copies WHERE satellite = $1", sat.name)}
    return set(sat.table_names) <= done


async def _tables(src: asyncpg.Connection, ring: str, relations: Sequence[str]
                  ) -> list[tuple[str, Relation | None, ringmember.TableCopy]]:
    """Per table, read in the snapshot: its description (real oid, columns, key) and
    the copy step (core.ringmember.table_copy_step)."""
    out: list[tuple[str, Relation | None, ringmember.TableCopy]] = []
    for rel in relations:
        nsp, name = rel.split(".", 1)
        row = await src.fetchrow(
            "SELECT c.oid, c.relreplident, EXISTS (SELECT 1 FROM pg_publication_rel pr "
            "JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $3 "
            "AND pr.prrelid = c.oid) AS published FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 "
            "AND c.relkind IN ('r', 'p')", nsp, name, names.publication_name(ring))
        step = ringmember.table_copy_step(at_source=row is not None,
                                          published=bool(row and row["published"]))
        if row is None:
            out.append((rel, None, step))
            continue
        cols = await src.fetch(
            "SELECT a.attname, a.atttypid::int AS typ, a.atttypmod, EXISTS (SELECT 1 "
            "FROM pg_index i WHERE i.indrelid = a.attrelid AND (i.indisprimary OR "
            "i.indisreplident) AND a.attnum = ANY (i.indkey)) AS is_key "
            "FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 "
            "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum", row["oid"])
        out.append((rel, Relation(int(row["oid"]), nsp, name, str(row["relreplident"]),
                                  tuple(Column(str(c["attname"]), int(c["typ"]),
                                               int(c["atttypmod"]), bool(c["is_key"]))
                                        for c in cols)), step))
    return out


async def copy_to_spool(local_dsn: str, profile: EngineProfile, cfg: RingConfig,
                        sat: SatelliteInfo, parent: str, progress: CopyProgress) -> int:
    """Copy the parent's filtered rows of the satellite's tables into its spool (module
    docstring); returns the rows spooled. The caller has made the parent's slot for
    the satellite and not read it yet. Raises CopyWaits (try again later) for a table
    not yet published."""
    src = await connect(local_dsn, command_timeout=SLOW_STATEMENT_SECONDS)
    dst = await connect(local_dsn, command_timeout=SLOW_STATEMENT_SECONDS)
    written = 0
    progress.state, progress.message = "Copying", None
    progress.tables_done = progress.rows_copied = progress.rows_total = 0
    try:
        await catalog.apply_canonical_settings(src)
        await dst.execute(SCHEMA)
        await dst.execute("SET synchronous_commit = on")
        roname = {int(r["roident"]): str(r["roname"]) for r in await src.fetch(
            "SELECT roident, roname FROM pg_replication_origin")}
        writers = frozenset(cfg.origins)
        x = profile.sql.xact_commit_timestamp_origin
        filters = sat.filters()
        async with src.transaction(isolation="repeatable_read", readonly=True), \
                dst.transaction():
            # The first statement takes the snapshot every read below shares.
            tables = await _tables(src, cfg.ring, sat.table_names)
            # After the snapshot: every transaction it sees ends at or before this.
            until = await dst.fetchval("SELECT pg_current_wal_lsn()::text")
            waiting = [rel for rel, _, st in tables if st is ringmember.TableCopy.WAIT]
            if waiting:
                raise CopyWaits(f"{', '.join(waiting)} not yet in the ring's publication "
                                f"at {parent}")
            progress.tables_total = len(tables)
            # filter_sql quotes every name and value (base/sqlquote.py).
            wheres = {rel: filter_sql(filters.get(rel)) for rel, _, _ in tables}
            for rel, desc, _ in tables:
                if desc is not None:
                    progress.rows_total += int(await src.fetchval(
                        f"SELECT count(*) FROM {_quoted(desc)} AS t WHERE {wheres[rel]}"))
            for rel, desc, _ in tables:
                n = 0
                if desc is not None:
                    n = await _copy_table(src, dst, cfg.ring, parent, sat.name, writers,
                                          roname, x, desc, wheres[rel], progress)
                await dst.execute(
                    "INSERT INTO ringkeeper.satellite_copies (satellite, relation, "
                    "rows_copied, absent, until_lsn) VALUES ($1, $2, $3, $4, $5::text::pg_lsn) "
                    "ON CONFLICT (satellite, relation) DO UPDATE SET rows_copied = "
                    "EXCLUDED.rows_copied, absent = EXCLUDED.absent, until_lsn = "
                    "EXCLUDED.until_lsn, finished_at = clock_timestamp()",
                    sat.name, rel, n, desc is None, until)
                written += n
                progress.tables_done += 1
        progress.state = "Done"
        log.info("satellite %s: %d row(s) of %d table(s) copied into %s's spool", sat.name,
                 written, len(tables), parent)
        return written
    except BaseException as exc:
        progress.state, progress.message = "Waiting", str(exc) or type(exc).__name__
        raise
    finally:
        await close_quietly(src)
        await close_quietly(dst)


def _quoted(desc: Relation) -> str:
    return f"{quote_ident(desc.namespace)}.{quote_ident(desc.name)}"


async def _copy_table(src: asyncpg.Connection, dst: asyncpg.Connection, ring: str,
                      parent: str, satellite: str, writers: frozenset[str],
                      roname: dict[int, str], x: str, desc: Relation, where: str,
                      progress: CopyProgress) -> int:
    """One table's filtered rows, in spool transactions of one (origin, commit time)
    each, at most SPOOL_PART_ROWS rows a spool row, in commit-time order."""
    sel = ", ".join(f"t.{quote_ident(c.name)}::text" for c in desc.columns)
    query = (f"SELECT {sel}, x.roident, x.timestamp FROM {_quoted(desc)} AS t "
             f"LEFT JOIN LATERAL {x}(t.xmin) AS x ON true WHERE {where} "
             "ORDER BY x.timestamp NULLS FIRST")
    n = len(desc.columns)
    rels = {desc.oid: desc}
    batch: list[SpoolRow] = []
    txn: tuple[str, datetime] | None = None
    rows: list[Insert] = []
    written = 0

    async def flush(*, final: bool) -> None:
        nonlocal rows
        if rows and txn is not None:
            batch.append((satellite, txn[0], 0, txn[1], 0, True, encode(rels, rows),
                          len(rows)))
            rows = []
        if batch and (final or len(batch) >= 100):
            await dst.executemany(SPOOL_INSERT, batch)
            batch.clear()

    async for r in src.cursor(query, prefetch=SPOOL_PART_ROWS):
        ident = r["roident"]
        origin = copy_origin(ring, parent, satellite, writers,
                             roname.get(int(ident)) if ident else None)
        progress.rows_copied += 1
        if origin is None:
            continue
        ts = EPOCH if origin == names.SEED else (r["timestamp"] or EPOCH)
        if txn != (origin, ts) or len(rows) >= SPOOL_PART_ROWS:
            await flush(final=False)
            txn = (origin, ts)
        rows.append(Insert(desc.oid, tuple(r[i] for i in range(n))))
        written += 1
    await flush(final=True)
    return written
