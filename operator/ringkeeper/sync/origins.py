"""Replication origins: one per member (and one for seeding) in every member's database.

The origin of a change applied here names the member that wrote it, and its progress
(flushed with the WAL) is how far this member durably has that member's changes: the
basis for moving any slot on.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..base.lsn import str_to_lsn
from ..core import names
from ..engines import EngineProfile


async def ensure_origins(conn: asyncpg.Connection, profile: EngineProfile, ring: str,
                         members: Sequence[str]) -> None:
    s = profile.sql
    wanted = [names.origin_name(ring, m) for m in members] + [names.seed_origin(ring)]
    have = {r["roname"] for r in await conn.fetch(
        f"SELECT roname FROM {s.replication_origin}")}
    for origin in wanted:
        if origin not in have:
            await conn.execute(f"SELECT {s.replication_origin_create}($1)", origin)


async def origin_progress(conn: asyncpg.Connection, profile: EngineProfile,
                          ring: str) -> dict[str, int]:
    """Durable per-origin progress: member -> origin LSN applied and flushed here.

    `flush => true` flushes WAL up to the commit of that progress first, so what it
    returns survives a crash: the basis for moving any slot on."""
    s = profile.sql
    rows = await conn.fetch(
        f"SELECT roname, {s.replication_origin_progress}(roname, true)::text AS lsn "
        f"FROM {s.replication_origin} WHERE starts_with(roname, $1)",
        names.origin_prefix(ring))
    out: dict[str, int] = {}
    for r in rows:
        member = names.member_of_origin(ring, r["roname"])
        if member is not None and r["lsn"]:
            out[member] = str_to_lsn(r["lsn"])
    return out
