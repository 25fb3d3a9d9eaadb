"""Opening a link at its source: the slot made, checked and freed, the start options.

Before a link streams, its slot on the source must exist (after the publication),
must still have the WAL this member needs, and must not be held by a session of ours
left from before a restart; and the stream's options say what the source sends (with
`origin none` when the link brings only the source's own changes). These steps are
apart from the run loop: they decide whether the link may start at all.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from ..core import names, ringmember
from ..engines import EngineProfile
from .pgoutput import Begin, Origin
from .slots import ensure_slot

log = logging.getLogger(__name__)


class SlotLost(RuntimeError):
    """The source's slot is gone or invalidated: this member needs a re-seed."""


def route(ring: str, source: str, begin: Begin, origin: Origin | None,
          carries: frozenset[str] | None, local: str | None = None) -> tuple[str, int] | None:
    """core.ringmember.route for a transaction's Begin and Origin messages."""
    return ringmember.route(ring, source, begin.final_lsn,
                            None if origin is None else (origin.name, origin.origin_lsn),
                            carries, local)


def only_source_changes(source: str, carries: frozenset[str] | None) -> bool:
    """Whether a link brings nothing but what was written at its source (a mesh link,
    or a two-member ring), so the source may filter out every forwarded change."""
    return carries is not None and carries <= {source}


async def claim_slot(src: asyncpg.Connection, profile: EngineProfile, slot: str, ring: str,
                     source: str) -> None:
    """The link's slot on `source`, ready for this link to read: made if missing,
    refused if it lost WAL (SlotLost), and freed from a session of ours still holding it."""
    # A ring's first link, or a member that joined: the slot starts here. (A slot
    # that existed and vanished is a failover gap; the source's sidecar reports it.)
    # Never without the publication: a link without it would say Streaming while
    # PostgreSQL 18 sends nothing (15 and 17 fail).
    await ensure_slot(src, profile, slot, ring)
    s = profile.sql
    row = await src.fetchrow(
        f"SELECT wal_status, active_pid FROM {s.replication_slots} WHERE slot_name = $1",
        slot)
    if row is not None and row["wal_status"] == "lost":
        raise SlotLost(f"slot {slot} on {source} lost WAL this member still "
                       "needed (max_slot_wal_keep_size): the member needs a re-seed")
    if row is not None and row["active_pid"] is not None:
        # This link is the slot's only reader: a session still holding it is ours
        # from before a restart or a cut connection, waiting for its timeout.
        log.info("slot %s on %s still held by pid %s: ending that session", slot,
                 source, row["active_pid"])
        await src.execute(f"SELECT {s.terminate_backend}($1)", row["active_pid"])
        for _ in range(50):
            if not await src.fetchval(
                    f"SELECT active_pid IS NOT NULL FROM {s.replication_slots} "
                    "WHERE slot_name = $1", slot):
                break
            await asyncio.sleep(0.1)


def start_options(ring: str, source: str, carries: frozenset[str] | None,
                  profile: EngineProfile) -> list[tuple[str, str]]:
    """The pgoutput options the link starts its stream with."""
    pub = names.publication_name(ring)
    options = [("proto_version", "1"),
               ("publication_names", '"' + pub.replace('"', '""') + '"')]
    if profile.origin_filter and only_source_changes(source, carries):
        # Forwarded changes would only be skipped here: the source never queues them.
        options.append(("origin", "none"))
    return options
