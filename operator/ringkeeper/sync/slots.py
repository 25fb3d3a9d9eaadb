"""A member's logical slots: made once, after the publication, and only reported
consistent.

Several sidecars (this member's and downstream ones) may create the same slot on a
server; an advisory lock per slot serialises them, and every creation is written to
ringkeeper.slot_history so a slot recreated after a failover is told from one that
was always there.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ..core import names
from ..engines import EngineProfile
from .capture import publication_exists
from .catalog import SetupError

log = logging.getLogger(__name__)


async def slot_exists(conn: asyncpg.Connection, profile: EngineProfile, slot: str) -> bool:
    return bool(await conn.fetchval(
        f"SELECT count(*) FROM {profile.sql.replication_slots} WHERE slot_name = $1", slot))


async def ensure_slot(conn: asyncpg.Connection, profile: EngineProfile, slot: str,
                      ring: str | None = None) -> bool:
    """Create the logical slot if missing; True if it was created now (and so starts at
    the current WAL position: anything committed before it is not in it).

    With `ring`, the ring's publication must exist on this server first (see
    prepare_capture): a slot is never made before the publication it decodes with.
    Creation is serialised per slot by an advisory lock, and an existing slot is only
    reported once it is consistent, so a caller that takes a snapshot after this
    returns knows every later commit is in the slot."""
    if ring is not None and not await publication_exists(conn, ring):
        raise SetupError(f"publication {names.publication_name(ring)} does not exist yet: "
                         f"slot {slot} waits for it")
    key = f"ringkeeper.slot:{slot}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        return await _ensure_slot_locked(conn, profile, slot)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def wait_consistent(conn: asyncpg.Connection, profile: EngineProfile, slot: str,
                          timeout: float = 60.0) -> None:
    """Wait until `slot` (made by someone else, perhaps still being made) has reached
    its consistent point: until then commits may be missing from it."""
    deadline = time.monotonic() + timeout
    while True:
        row = await conn.fetchrow(
            f"SELECT confirmed_flush_lsn IS NOT NULL AS ready "
            f"FROM {profile.sql.replication_slots} WHERE slot_name = $1", slot)
        if row is None:
            raise SetupError(f"slot {slot} disappeared while waiting for it")
        if row["ready"]:
            return
        if time.monotonic() > deadline:
            raise SetupError(f"slot {slot} did not reach a consistent point in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _ensure_slot_locked(conn: asyncpg.Connection, profile: EngineProfile,
                              slot: str) -> bool:
    if await slot_exists(conn, profile, slot):
        await wait_consistent(conn, profile, slot)
        return False
    s = profile.sql
    if profile.failover_slots:
        # A failover slot is copied to standbys, so a promoted standby keeps capturing.
        lsn = await conn.fetchval(
            f"SELECT lsn::text FROM {s.create_logical_replication_slot}"
            "($1, $2, false, false, true)", slot, profile.logical_plugin)
    else:
        lsn = await conn.fetchval(
            f"SELECT lsn::text FROM {s.create_logical_replication_slot}($1, $2)",
            slot, profile.logical_plugin)
    await conn.execute(
        "INSERT INTO ringkeeper.slot_history (slot, created_lsn) VALUES ($1, $2::text::pg_lsn) "
        "ON CONFLICT DO NOTHING", slot, lsn)
    log.info("created logical slot %s at %s", slot, lsn)
    return True


async def slot_was_lost(conn: asyncpg.Connection, slot: str) -> bool:
    """Whether this member had the slot before (history says so) but it is new now:
    a failover to a standby without failover slots, so changes may be missing."""
    n = await conn.fetchval("SELECT count(*) FROM ringkeeper.slot_history WHERE slot = $1", slot)
    return bool(n and n > 1)


async def copy_slot(conn: asyncpg.Connection, profile: EngineProfile, source: str,
                    target: str) -> bool:
    key = f"ringkeeper.slot:{target}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        if await slot_exists(conn, profile, target):
            return False
        await conn.execute(f"SELECT {profile.sql.copy_logical_replication_slot}($1, $2)",
                           source, target)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def drop_slot(conn: asyncpg.Connection, profile: EngineProfile, slot: str) -> None:
    if await slot_exists(conn, profile, slot):
        await conn.execute(f"SELECT {profile.sql.drop_replication_slot}($1)", slot)
