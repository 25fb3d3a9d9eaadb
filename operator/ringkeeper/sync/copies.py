"""Copies of other members' rows into this one: what is pending, and retrying it.

A member that joins, or a table that joins the ring, needs every other member's own
rows of it copied here once (sync/seed.py does one copy). Which (source, table) pairs
are still pending is decided in core.ringmember.pending_copies from what this member
has copied; a source that cannot be reached, or a table not yet in its publication,
is tried again later with a growing backoff, kept here between passes.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from ..contracts.ringconfig import RingConfig
from ..core import ringmember
from ..engines import EngineProfile
from . import catalog
from .errors import MEMBER_ERRORS
from .inbound import ensure_path
from .memberstate import MemberState
from .seed import SeedProgress, copied_tables, copy_member_rows

log = logging.getLogger(__name__)


class InitialCopies:
    """The member's pending copies and when to try them again."""

    def __init__(self, member: str, local_dsn: str, state: MemberState) -> None:
        self.member = member
        self.local_dsn = local_dsn
        self.state = state
        self.retry_at = 0.0  # when to try pending initial copies again
        self.backoff = 1.0

    def due(self) -> bool:
        """Whether pending copies may be tried now (their backoff has passed)."""
        return time.monotonic() >= self.retry_at

    async def pending(self, local: asyncpg.Connection, cfg: RingConfig) -> dict[str, list[str]]:
        """Source -> tables still to copy from it: per (source, table), so a table that
        joined this member's replicated set after a source's copy ran is copied too."""
        tables, _ = await catalog.replicated_tables(local, cfg.include, cfg.exclude)
        done = await copied_tables(local, cfg.ring)
        return ringmember.pending_copies(self.member, cfg.names,
                                         [t.relation for t in tables], frozenset(done))

    async def copy(self, local: asyncpg.Connection, cfg: RingConfig, profile: EngineProfile,
                   pending: dict[str, list[str]]) -> dict[str, list[str]]:
        """Copy each pending member's own rows of its pending tables here
        (sync/seed.py); returns what is still pending (a member that cannot be reached,
        or a table not yet in its publication, is tried again later)."""
        progress = self.state.seeding
        if progress is None or progress.state == "Done":
            progress = self.state.seeding = SeedProgress(self.member, "")
        progress.state = "Copying"
        tables = {t.relation: t for t in
                  (await catalog.replicated_tables(local, cfg.include, cfg.exclude))[0]}
        left: dict[str, list[str]] = {}
        for source, wanted in pending.items():
            todo = [tables[r] for r in wanted if r in tables]
            if not todo:
                continue  # left the replicated set meanwhile
            progress.source = source
            try:
                # The tables join the publication of every server on the path before
                # the snapshot: only then is each one's copy gap-free (seed.py).
                await ensure_path(cfg, self.member, source, publish=True)
                info = cfg.member(source)
                assert info.dsn is not None  # ensure_path connected to it
                result = await copy_member_rows(
                    self.local_dsn, profile, cfg.ring, self.member, cfg.names,
                    cfg.priorities(), cfg.policy, source, info.dsn, todo, progress)
            except MEMBER_ERRORS as exc:
                left[source] = [t.relation for t in todo]
                progress.message = f"copy of {source}'s rows waits: {exc}"
                log.warning("member %s: %s", self.member, progress.message)
                continue
            if result.waiting:
                left[source] = result.waiting
                progress.message = (f"copy of {source}'s rows of {', '.join(result.waiting)} "
                                    f"waits until {source}'s publication carries them")
                log.warning("member %s: %s", self.member, progress.message)
        if left:
            progress.state = "Waiting"
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 30.0)
        else:
            progress.state, progress.message, progress.source = "Done", None, ""
            self.backoff = 1.0
        return left
