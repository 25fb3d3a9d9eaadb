"""What an instance agent does between its loops, on its own clock: kill a primary
server that thawed with a frozen agent, and one cut from the API server and every peer
for selfFenceAfterSeconds; and, while it serves as primary, keep asking the peers and
the API server, so that clock measures silence and not a loop busy with its own work.

Apart from the loop because the loop waits on the network: its Campus read, address
lookups and peer probes can take seconds when the pod is cut off, and a fence decided
only between them came after the operator could promote a replica. Each check is
synchronous from the moment it finds a kill due to the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..core.instance import (
    DataState,
    Plan,
    StallAction,
    after_stall,
    running_primary_must_step_down,
    self_fence_due,
    vouches_for,
)
from .contact import API_PROBE_AFTER, PEER_PROBE_EVERY
from .report import AgentReport

log = logging.getLogger("ringkeeper.agent")
WATCH_EVERY = 0.1  # the watchdog's tick: a thawed or cut-off agent notices within this


class AgentGuard(AgentReport):
    """The watchdog and the peer prober (see the module docstring)."""

    async def keep_peer_contact(self, stop: asyncio.Event) -> None:
        """A serving primary asks its peers every PEER_PROBE_EVERY seconds, apart from the
        loop: the loop's Campus read can hang for its whole timeout, and a contact clock
        kept only there went stale on a primary that reached its peers all along."""
        while not stop.is_set():
            if self.serving_primary():
                with contextlib.suppress(Exception):
                    await self.reach_a_peer()
            await asyncio.sleep(min(PEER_PROBE_EVERY, self.self_fence_after() / 8))

    async def keep_api_contact(self, stop: asyncio.Event) -> None:
        """A serving primary reads the Campus whenever its last read that got an answer was
        sent over API_PROBE_AFTER seconds ago and none is in flight: the self-fence clock
        measures silence while it keeps asking, never a loop busy with its own work (a
        first primary's initdb took 3 s, and its watchdog fenced it)."""
        while not stop.is_set():
            # A quarter of the limit at most: at the 1 s minimum a read every 0.5 s left
            # a loaded node a quarter second of margin.
            limit = self.self_fence_after()
            if (self.serving_primary() and self.state.fetch_started is None
                    and time.monotonic() - self.state.last_api_contact
                    >= min(API_PROBE_AFTER, limit / 4)):
                with contextlib.suppress(Exception):
                    await self.refresh()
            await asyncio.sleep(min(PEER_PROBE_EVERY, limit / 8))

    async def watch_stalls(self, stop: asyncio.Event) -> None:
        """Every WATCH_EVERY seconds, apart from the loop: kill a primary server that
        thawed with a frozen agent before it serves (core.instance.after_stall), and one
        that reached neither the API server nor a peer for selfFenceAfterSeconds
        (core.instance.self_fence_due). The loop also fences, but only between its reads:
        with the API server and the peers cut, one loop took up to 2 s for the Campus read,
        2 s per address lookup and the peer probes, so its fence came seconds after the
        operator could promote a replica (CI: two instances accepted writes)."""
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            stalled, last = now - last - WATCH_EVERY, now
            if stalled >= 0.5:
                self.on_stall(stalled)
            self.on_silence()

    def vouches_for(self) -> str | None:
        """Whom this instance tells a cut-off primary it follows (core.instance)."""
        return vouches_for(self.view, self.state.paused, self.serving_primary())

    def on_silence(self) -> None:
        """Synchronous, like on_stall: the kill happens in the tick that finds it due.
        Also steps down at once when the Campus as last read names another primary or a
        failover target (a read by keep_api_contact lands between the loop's ticks), unless
        an operator call or a loop holds the lock (promote adopts its own view there)."""
        if not self.peers() or not self.serving_primary():
            return
        if not self.lock.locked():
            why = running_primary_must_step_down(self.cfg.name, self.view)
            if why:
                self.server.kill_now()
                st = self.state
                st.interrupts += 1
                st.fenced, st.plan, st.reason = True, Plan.FENCE.value, why
                log.warning("stepping down: %s", why)
                return
        silent, limit = self.silent_seconds(), self.self_fence_after()
        if not self_fence_due(silent, limit):
            return
        # Not an `acted` kill: no Campus read can succeed while it is cut off, and the
        # first that does lifts the self-fence and decides by what it says.
        self.server.kill_now()
        st = self.state
        st.interrupts += 1
        st.fenced, st.self_fenced = True, True
        st.plan = Plan.FENCE.value
        st.reason = (f"self-fence: no contact with the API server or any peer for "
                     f"{silent:.1f}s (limit {limit:g}s)")
        log.warning("stepping down: %s", st.reason)

    def on_stall(self, stalled: float) -> None:
        """Synchronous: nothing may run between the thaw and the kill."""
        serving = self.server.running and self.server.data_state() == DataState.PRIMARY
        failover = self.spec.get("failover") or {}
        action = after_stall(stalled, serving,
                             float(failover.get("detectionDelaySeconds", 5)),
                             float(failover.get("selfFenceAfterSeconds", 3)))
        if action != StallAction.KILL:
            return
        self.server.kill_now()
        self.acted()  # a read in flight across the freeze may predate a failover
        st = self.state
        st.interrupts += 1
        st.fenced, st.killed_by_agent = True, True
        st.plan = Plan.FENCE.value
        st.reason = (f"frozen for {stalled:.1f}s: server killed until the Campus says who "
                     "is primary")
        log.warning("%s", st.reason)

    def serving_primary(self) -> bool:
        return self.server.running and self.server.data_state() == DataState.PRIMARY

