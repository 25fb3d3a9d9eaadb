"""Stock sync: give a joining member the ring's data while writes continue.

Order matters. The slot the member will read from already exists when the copy
starts, so everything committed after the copy's snapshot is still in the slot.
The copy is one REPEATABLE READ snapshot of every table, written here under the
ring's seed origin with the oldest possible commit time: when the slot then
replays changes the snapshot already holds, each replayed change wins against
the copied row and writes the same value again, so catch-up converges on the
source's exact state without knowing the snapshot's position in the source's
WAL. Seed transactions are never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from ..engines import EngineProfile
from . import catalog, names
from .catalog import TableInfo, quote_ident
from .link import connect

log = logging.getLogger(__name__)


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


async def needs_seed(conn: asyncpg.Connection, ring: str) -> bool:
    done = await conn.fetchval(
        "SELECT finished_at FROM ringkeeper.seed_state WHERE ring = $1", ring)
    return done is None


async def seed(local: asyncpg.Connection, profile: EngineProfile, ring: str,
               source_dsn: str, tables: Sequence[TableInfo], progress: SeedProgress,
               on_progress: Callable[[SeedProgress], None] | None = None) -> None:
    """Copy `tables` from the source into this (empty) member under the seed origin."""
    for t in tables:
        if await local.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t.quoted})"):
            raise SeedError(f"{t.relation} already holds rows at {progress.member}: a stock "
                            "sync only fills empty tables (verify and repair a member that "
                            "has data)")
    src = await connect(source_dsn)
    try:
        await catalog.apply_canonical_settings(src)
        await catalog.apply_canonical_settings(local)
        progress.state = "Copying"
        progress.tables_total = len(tables)
        async with src.transaction(isolation="repeatable_read", readonly=True):
            counts = {}
            for t in tables:
                counts[t.relation] = int(await src.fetchval(f"SELECT count(*) FROM {t.quoted}"))
            progress.rows_total = sum(counts.values())
            _notify(progress, on_progress)
            s = profile.sql
            await local.execute("SET session_replication_role = replica")
            await local.execute(f"SELECT {s.replication_origin_session_setup}($1)",
                                names.seed_origin(ring))
            try:
                for t in tables:
                    await _copy_table(src, local, profile, t, progress, on_progress)
                    progress.tables_done += 1
                    _notify(progress, on_progress)
            finally:
                await local.execute(f"SELECT {s.replication_origin_session_reset}()")
                await local.execute("RESET session_replication_role")
        await local.execute(
            "INSERT INTO ringkeeper.seed_state (ring, source, finished_at) "
            "VALUES ($1, $2, clock_timestamp()) ON CONFLICT (ring) DO UPDATE "
            "SET source = EXCLUDED.source, finished_at = EXCLUDED.finished_at",
            ring, progress.source)
        progress.state = "Done"
        _notify(progress, on_progress)
    finally:
        await src.close()


async def _copy_table(src: asyncpg.Connection, local: asyncpg.Connection,
                      profile: EngineProfile, t: TableInfo, progress: SeedProgress,
                      on_progress: Callable[[SeedProgress], None] | None) -> None:
    cols = [r["attname"] for r in await local.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", t.quoted)]
    col_list = ", ".join(quote_ident(c) for c in cols)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

    async def produce(chunk: bytes) -> None:
        await queue.put(chunk)
        progress.rows_copied += chunk.count(b"\n")
        _notify(progress, on_progress)

    async def chunks() -> object:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    async def reader() -> None:
        try:
            await src.copy_from_query(f"SELECT {col_list} FROM {t.quoted}", output=produce)
        finally:
            await queue.put(None)

    async with local.transaction():
        # Older than any real commit: any change replayed from the slot wins. (Not
        # 2000-01-01: that is PostgreSQL's zero timestamp, which means "unset" here.)
        await local.execute(
            f"SELECT {profile.sql.replication_origin_xact_setup}('0/0', '1970-01-01 00:00:00+00')")
        task = asyncio.create_task(reader())
        try:
            await local.copy_to_table(t.name, schema_name=t.schema, columns=cols,
                                      source=chunks())
        finally:
            await task
    log.info("seeded %s", t.relation)


def _notify(progress: SeedProgress, cb: Callable[[SeedProgress], None] | None) -> None:
    if cb is not None:
        cb(progress)
