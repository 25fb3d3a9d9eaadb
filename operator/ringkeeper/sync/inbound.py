"""The slots that feed this member, on its sources: made, dropped, and checked along a path.

A link's slot lives on the source, not here: a new one (a bypass, a join, a re-ordered
ring) starts as a copy of the source's hold slot, one no longer used is dropped so it
holds no WAL, and before a copy of a member's rows every slot on the way from it is
made consistent. The sidecar's link loop and its copies both need this, so it stands
on its own; none of it keeps state.
"""

from __future__ import annotations

import contextlib
import logging

from ..contracts.ringconfig import RingConfig
from ..core import names
from ..core.liveness import SLOW_STATEMENT_SECONDS, statement_seconds
from ..core.ring import hops_to
from ..engines import EngineProfile, profile_for
from .capture import prepare_capture, publication_exists
from .connections import close_quietly, connect
from .errors import TRANSIENT
from .slots import copy_slot, drop_slot, ensure_slot, slot_exists, wait_consistent

log = logging.getLogger(__name__)


async def ensure_inbound_slot(cfg: RingConfig, source: str, slot: str,
                              src_profile: EngineProfile, dsn: str, *,
                              publish: bool = False) -> None:
    """A ring slot this member lacks on `source` (it bypasses a dead member, joined,
    or the ring was re-ordered) starts as a copy of the source's hold slot: the hold
    slot kept everything some member still lacks, this one included, so nothing
    between the old and the new reader is lost. Replays are skipped by progress."""
    # Slot creation waits for transactions running at the source: the long time-out.
    src = await connect(dsn, command_timeout=SLOW_STATEMENT_SECONDS,
                        timeout=statement_seconds(cfg.bypass_after_seconds))
    try:
        if await slot_exists(src, src_profile, slot):
            await wait_consistent(src, src_profile, slot)
            if not await publication_exists(src, cfg.ring):
                await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude)
            elif publish:
                await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude,
                                      schema=False)
            return
        # The source's own sidecar may not have run yet: its publication (and event
        # trigger) first, or the slot could not decode with it.
        await prepare_capture(src, cfg.ring, cfg.include, cfg.exclude)
        hold = names.hold_slot_name(cfg.ring, source)
        if cfg.topology != "mesh" and await slot_exists(src, src_profile, hold):
            await wait_consistent(src, src_profile, hold)
            if await copy_slot(src, src_profile, hold, slot):
                log.info("slot %s on %s starts from the hold slot", slot, source)
        await ensure_slot(src, src_profile, slot, cfg.ring)
    finally:
        await close_quietly(src)


async def drop_inbound_slot(cfg: RingConfig, member: str, key: str) -> None:
    """A link no longer used leaves its slot behind, holding WAL: drop it. Safe even
    if it is needed again later: a new one starts from the hold slot."""
    source = key.split("->", 1)[0]
    slot = names.link_slot_name(cfg.ring, source, member)
    if cfg.topology == "mesh" and source in cfg.names:
        return
    with contextlib.suppress(*TRANSIENT, KeyError):
        info = cfg.member(source)
        if info.dsn:
            stmt = statement_seconds(cfg.bypass_after_seconds)
            src = await connect(info.dsn, command_timeout=stmt, timeout=stmt)
            try:
                await drop_slot(src, profile_for(info.engine, info.version), slot)
            finally:
                await close_quietly(src)


async def ensure_path(cfg: RingConfig, member: str, source: str, *,
                      publish: bool = False) -> None:
    """Every slot a write at `source` crosses on its way here exists (each with its
    publication first) and is consistent, so a snapshot of `source` taken after
    this returns misses nothing that the slots will not bring. With `publish`,
    every server on the path also has each of its ring tables in its publication
    now (its own sidecar adds a table missed by its event trigger only every
    10 s): a table's copy waits for that (core.ringmember.table_copy_step)."""
    for u, v in hops_to(source, member, cfg.names, cfg.topology):
        info = cfg.member(u)
        if info.dsn is None:
            raise OSError(f"member {u} has no primary to connect to")
        await ensure_inbound_slot(cfg, u, names.link_slot_name(cfg.ring, u, v),
                                  profile_for(info.engine, info.version), info.dsn,
                                  publish=publish)
