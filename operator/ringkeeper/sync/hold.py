"""This member's hold slot: moved on only as far as every other member has.

The hold slot keeps the WAL a member that is bypassed, or joins, may still need from
this one; a new link slot starts as its copy (inbound.ensure_inbound_slot). Moving it
needs facts gathered over time (origin status samples, every member's progress, the
last known progress of a member that is down), so the keeper holds them between
passes; the decision is core.retention.hold_target.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from ..base.lsn import lsn_to_str, str_to_lsn
from ..contracts.ringconfig import RingConfig
from ..core import names, retention, ringmember
from ..core.liveness import statement_seconds
from ..engines import EngineProfile, profile_for
from .connections import close_quietly, connect
from .errors import TRANSIENT
from .memberstate import MemberState
from .origins import origin_progress
from .slots import drop_slot, ensure_slot, slot_exists

log = logging.getLogger(__name__)


class HoldKeeper:
    """Moves the member's hold slot; shares the member's state and its record of
    members found down (`down_since`, kept by the sidecar's link loops)."""

    def __init__(self, member: str, state: MemberState, down_since: dict[str, float]) -> None:
        self.member = member
        self.state = state
        self._down_since = down_since
        self._progress_cache: dict[str, dict[str, int]] = {}
        self._samples: list[retention.OriginSample] = []  # origin status, for the hold slot

    async def member_progress(self, cfg: RingConfig) -> dict[str, dict[str, int]]:
        """Flushed per-origin progress of every member; the last known for unreachable ones."""
        for m in cfg.members:
            if m.name == self.member or m.dsn is None or m.name in self._down_since:
                continue  # a member found down keeps its last known progress
            try:
                conn = await connect(m.dsn, timeout=2,
                                     command_timeout=statement_seconds(cfg.bypass_after_seconds))
                try:
                    self._progress_cache[m.name] = await origin_progress(
                        conn, profile_for(m.engine, m.version), cfg.ring)
                finally:
                    await close_quietly(conn)
            except TRANSIENT:
                pass
        return self._progress_cache

    async def keep_hold(self, local: asyncpg.Connection, cfg: RingConfig,
                        profile: EngineProfile) -> None:
        """Move this member's hold slot to what every other member has.

        Nothing is decoded for it: the facts are this member's WAL position, its origin
        status (where each origin's latest applied transaction ended here), every
        member's flushed progress and its own link slots' confirmed positions; the
        decision is core.retention.hold_target. Only the move itself reads the WAL, in
        fast-forward (no output plugin)."""
        s = profile.sql
        hold = names.hold_slot_name(cfg.ring, self.member)
        if not needs_hold(cfg):
            # Two members: no one to bypass to, and the link slot keeps what the other
            # lacks. A hold slot left from a larger ring would only pin WAL.
            if await slot_exists(local, profile, hold):
                await drop_slot(local, profile, hold)
            return
        if await ensure_slot(local, profile, hold, cfg.ring):
            return  # the ring grew past two members: the hold slot starts here
        prefix = names.origin_prefix(cfg.ring)
        now_lsn = str_to_lsn(await local.fetchval(f"SELECT {s.current_wal_lsn}()::text"))
        status = await local.fetch(
            f"SELECT external_id, remote_lsn::text AS remote, local_lsn::text AS local "
            f"FROM {s.replication_origin_status} WHERE starts_with(external_id, $1)", prefix)
        for r in status:
            origin = names.member_of_origin(cfg.ring, r["external_id"])
            if origin is None or r["remote"] is None or r["local"] is None:
                continue
            sample = retention.OriginSample(origin, str_to_lsn(r["local"]),
                                            str_to_lsn(r["remote"]))
            if not self._samples or sample not in self._samples[-len(status):]:
                self._samples.append(sample)
        slots = {r["slot_name"]: r for r in await local.fetch(
            f"SELECT slot_name, confirmed_flush_lsn::text AS flushed, "
            f"{s.wal_lsn_diff}({s.current_wal_lsn}(), restart_lsn)::bigint AS lag "
            f"FROM {s.replication_slots} WHERE starts_with(slot_name, $1)", prefix)}
        row = slots.get(hold)
        if row is None or row["flushed"] is None:
            return
        at = str_to_lsn(row["flushed"])
        self.state.hold_lag_bytes = int(row["lag"]) if row["lag"] is not None else None
        outbound = {m: str_to_lsn(r["flushed"]) for m in cfg.names if m != self.member
                    and (r := slots.get(names.link_slot_name(cfg.ring, self.member, m)))
                    is not None and r["flushed"] is not None}
        progress = await self.member_progress(cfg)
        holders = [m for m in cfg.names if m != self.member and m not in self.state.needs_reseed]

        def target(who: list[str]) -> int | None:
            return retention.hold_target(
                member=self.member, holders=who, progress=progress, samples=self._samples,
                now_lsn=now_lsn, outbound=outbound, owed=frozenset(cfg.names))

        if ringmember.over_budget(self.state.hold_lag_bytes, cfg.max_slot_wal_keep_bytes):
            # Keep the disk: a member this far behind gets a re-seed, not more WAL.
            behind = frozenset(retention.behind(holders, at, target))
            now = time.monotonic()
            steps = {m: ringmember.plan_member(ringmember.MemberFacts(
                m, self.member, now, cfg.bypass_after_seconds, self._down_since.get(m),
                behind_budget=m in behind)) for m in holders}
            for m, step in steps.items():
                if not step.holds:
                    log.warning("member %s: %s", self.member, step.reason)
                    self.state.needs_reseed.add(m)
            holders = [m for m in holders if steps[m].holds]
        moved = target(holders)
        if moved is not None and moved > at:
            await local.execute(f"SELECT {s.replication_slot_advance}($1, $2::text::pg_lsn)",
                                hold, lsn_to_str(moved))
            at = moved
        # Samples wholly behind the slot can no longer bound anything it may pass.
        self._samples = [x for x in self._samples if x.local_end >= at]


def needs_hold(cfg: RingConfig) -> bool:
    """Whether this ring keeps a hold slot (core.ringmember.needs_hold)."""
    return ringmember.needs_hold(cfg.topology, cfg.names)
