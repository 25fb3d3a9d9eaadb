"""What an instance agent tells the operator: its report (role, plan, server status)
and the HA facts the operator's cut rule and election read besides the LSNs, and whether
the instance is ready to serve.

Kept apart from the agent's loop (`agent.py`) because it only reads: the operator's
decisions depend on these facts being measured, never guessed, and they are tested on
their own.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import asyncpg

from ..base.lsn import parse_lsn
from ..core.agentplan import is_ready, reported_role
from ..core.ha import parse_standby_names
from .contact import AgentContact
from .server_sql import Status

API_HANG_SECONDS = 1.0  # a Campus read in flight this long counts as failing


class AgentReport(AgentContact):
    """The agent's reports to the operator (see the module docstring)."""

    async def report(self) -> dict[str, Any]:
        st = await self.server.status()
        role = reported_role(self.state.fenced, st.running, st.in_recovery).value
        return {"name": self.cfg.name, "role": role, "podIP": self.cfg.pod_ip,
                "plan": self.state.plan, "reason": self.state.reason,
                "fenced": self.state.fenced, "selfFenced": self.state.self_fenced,
                "crashed": self.state.crashed, "promotedOnWord": self.state.promoted_on_word,
                "paused": self.state.paused, "upstream": self.state.upstream,
                "rejoinsByRewind": self.state.rejoins_by_rewind,
                "rejoinsByBasebackup": self.state.rejoins_by_basebackup,
                "lastError": self.state.last_error, "server": st.to_json(),
                "ha": await self.ha_facts(st)}

    def sync_stall(self, st: Status, now: float) -> float | None:
        """Seconds this primary has had WAL that no synchronous standby confirmed, with no
        confirmation advancing meanwhile; 0 when all is confirmed; None when it does not
        replicate synchronously. A healthy standby confirms new WAL at once, so any
        stall measured between two reports means the standbys do not answer, whether or
        not a client is waiting right now (clients time out and retry)."""
        parsed = parse_standby_names(st.sync_names or "")
        current = parse_lsn(st.current_lsn) if st.current_lsn else None
        if parsed is None or parsed[1] < 1 or current is None:
            self.state.sync_confirmed, self.state.sync_stalled_since = None, None
            return None
        flushes = []
        for row in st.standbys or []:
            if row.get("application_name") in parsed[2] and row.get("flush_lsn"):
                with contextlib.suppress(ValueError):
                    flushes.append(parse_lsn(str(row["flush_lsn"])) or 0)
        confirmed = max(flushes) if flushes else None
        if confirmed is not None and confirmed >= current:
            self.state.sync_confirmed, self.state.sync_stalled_since = confirmed, None
            return 0.0
        if self.state.sync_stalled_since is None or confirmed != self.state.sync_confirmed:
            self.state.sync_stalled_since = now  # behind, but it moved: the clock restarts
        self.state.sync_confirmed = confirmed
        return now - self.state.sync_stalled_since

    async def ha_facts(self, st: Status) -> dict[str, Any]:
        """What the operator's cut rule (core.ha.standby_cut) and election read besides the
        LSNs: on a primary, the commits waiting for synchronous standbys; on a replica,
        how long its WAL receiver got nothing; everywhere, how long since this agent last
        read the Campus. A fact it cannot measure is left out, never guessed."""
        now = time.monotonic()
        started = self.state.fetch_started
        facts: dict[str, Any] = {
            "apiContactSeconds": round(now - self.state.last_api_contact, 2),
            # The last read of the Campus failed, or one hangs: the API server is lost
            # (the age alone says so only seconds later).
            "apiFailing": not self.state.last_fetch_ok or (
                started is not None and now - started > API_HANG_SECONDS)}
        if not st.running or st.error or st.in_recovery is None:
            return facts
        try:
            conn = await self.server.connect(timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return facts
        try:
            if st.in_recovery is False:
                stalled = self.sync_stall(st, now)
                if stalled is not None:
                    facts["syncStalledSeconds"] = round(stalled, 2)
                row = await conn.fetchrow(self.server.profile.sync_wait_query(), timeout=2)
                facts["syncWaiters"] = int(row["waiters"])
                if row["oldest"] is not None:
                    facts["syncWaitSeconds"] = round(float(row["oldest"]), 2)
            else:
                row = await conn.fetchrow(self.server.profile.receiver_silence_query(),
                                          timeout=2)
                if row is not None and row["silent"] is not None:
                    silent = max(0.0, float(row["silent"]))
                    if silent < 1.0:
                        self.state.receiver_heard_at = now
                else:  # no receiver (reconnecting, or cut before it ever connected)
                    silent = now - self.state.receiver_heard_at
                facts["receiverSilentSeconds"] = round(silent, 2)
        except (asyncpg.PostgresError, OSError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
        return facts

    def ready(self, st: Status) -> bool:
        return is_ready(self.state.fenced, st.running, bool(st.error), st.in_recovery,
                        self.view.current_primary == self.cfg.name)
