"""The instance agent: one per database pod, supervising its server.

The agent reads the Campus (who is primary, who is the target of a failover,
who is fenced), decides with core.instance what its instance should be, and
acts: initdb, base backup, start, rewind, follow, promote on the operator's
call, fence. It never promotes on its own, and a primary that loses both the
API server and every peer fences itself.

This module is what the agent does: its loop and the operator's calls. What it knows
and how it learns it is `contact.py`'s (AgentContact), what it tells the operator
`report.py`'s (AgentReport), what it does between loops on its own clock (the stall
and self-fence watchdog, the peer prober) `guard.py`'s (AgentGuard); Agent builds on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp

from ..core.agentplan import AgentAction, Reason, Step, plan_tick
from ..core.instance import (
    DataState,
    Plan,
    RejoinStep,
    rejoin_steps,
    running_primary_must_step_down,
    start_plan,
)
from .guard import AgentGuard
from .server_sql import ServerError, Status

log = logging.getLogger("ringkeeper.agent")


class Agent(AgentGuard):
    """One instance's agent: its loop and the operator's calls (what it knows is
    `AgentContact`'s, what it reports `AgentReport`'s, its watchdog `AgentGuard`'s)."""

    # -- the loop ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        watchdog = loop.create_task(self.watch_stalls(stop))
        probers = [loop.create_task(self.keep_peer_contact(stop)),
                   loop.create_task(self.keep_api_contact(stop))]
        try:
            while not stop.is_set():
                try:
                    # Network I/O first, outside the lock: an operator call (pause,
                    # promote, follow) never waits behind a slow or cut API server.
                    api_ok = await self.refresh()
                    await self.resolve_addresses()
                    peer_ok = (self.serving_primary() and time.monotonic()
                               - self.state.last_peer_contact < self.self_fence_after())
                    async with self.lock:
                        await self.tick(api_ok, peer_ok)
                except Exception as exc:
                    self.state.last_error = str(exc)
                    log.exception("agent loop error")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.cfg.loop_seconds)
        finally:
            watchdog.cancel()
            for task in probers:
                task.cancel()
            await self.server.stop("fast")
            await self.http.close()

    async def tick(self, api_ok: bool, peer_ok: bool) -> None:
        """One loop under the lock, on what was read before it: the facts are frozen,
        core.agentplan.plan_tick decides, `carry_out` acts. No network I/O here but a
        first lookup of an address never seen (pause must not wait on the API)."""
        if self.state.killed_by_agent and self.server.proc is not None:
            await self.server.proc.wait()  # reap the server killed on thaw
        if api_ok:
            self.state.promoted_on_word = False  # a fresh read replaces the word
        interrupts = self.state.interrupts
        facts = self.facts(api_ok, peer_ok)
        step = plan_tick(facts)
        if step.action is AgentAction.PROBE_SHUTDOWN:  # the one fact read only on demand
            try:
                clean = await self.server.shut_down_cleanly()
            except ServerError:
                clean = False
            step = plan_tick(replace(facts, clean_shutdown=clean))
        if self.state.interrupts != interrupts:
            # The watchdog killed the server since these facts were read: the step would
            # overwrite the fence it set. The next loop decides on what is true now.
            log.info("the watchdog acted during this loop: deciding on the next one")
            return
        await self.carry_out(step)

    async def carry_out(self, step: Step) -> None:
        """Act on the planned step; each branch only does what the step says."""
        st, act = self.state, step.action
        log.debug("tick: %s (%s): %s", act.value, step.reason.value, step.message)
        st.fenced, st.self_fenced = step.fenced, step.self_fenced
        for note in step.notes:
            log.log(logging.WARNING if step.resumed is Reason.PAUSE_TIMED_OUT
                    else logging.INFO, "%s", note)
        if step.resumed:
            st.paused, st.upstream = False, None
        if step.clear_killed:
            st.killed_by_agent = False
        if act is AgentAction.WAIT:
            st.plan, st.reason = Plan.WAIT.value, step.message
            if step.reason is Reason.VIEW_PREDATES_CALL:
                log.info("%s", step.message)
        elif act in (AgentAction.STEP_DOWN, AgentAction.STOP_FENCED):
            st.plan, st.reason = Plan.FENCE.value, step.message
            if act is AgentAction.STEP_DOWN:
                log.warning("stepping down: %s", step.message)
                # SIGKILL to the whole group: a frozen server ignores an immediate stop,
                # and a crash is what pg_rewind's crash-recovery step expects anyway.
                await self.server.kill()
            else:
                log.warning("fenced by the operator: stopping the server")
                await self.server.stop("fast")
        elif act is AgentAction.SERVE_PRIMARY:
            await self.maintain_primary()
        elif act in (AgentAction.KEEP_REPLICA, AgentAction.FOLLOW):
            st.plan = "replica"
            if act is AgentAction.FOLLOW and step.upstream:
                await self.follow(step.upstream)
        elif act is AgentAction.STAY_FENCED:
            st.plan = Plan.FENCE.value
        elif act is AgentAction.HOLD_CRASHED:
            st.crashed = True
            st.plan, st.reason = "crashed", step.message
        elif act is AgentAction.START and step.start is not None:
            await self.execute(step.start)

    async def execute(self, decision: Any) -> None:
        st = self.state
        st.plan, st.reason = decision.plan.value, decision.reason
        plan = decision.plan
        if plan in (Plan.WAIT, Plan.FENCE):
            return
        log.info("plan %s: %s", plan.value, decision.reason)
        self.server.write_passfile()
        try:
            if plan == Plan.INITDB:
                await self.server.initdb()
                self.server.configure(self.settings(True, None, bootstrap=True),
                                      self.user_params())
                if not await self.still_named():
                    return
                await self.server.start()
                await self.server.create_roles()
                await self.server.ensure_slots(self.peers())
            elif plan == Plan.START_PRIMARY:
                self.server.configure(self.settings(True, None), self.user_params())
                if not await self.still_named():
                    return
                await self.server.start()
                await self.server.ensure_slots(self.peers())
            elif plan in (Plan.BASEBACKUP, Plan.START_REPLICA, Plan.REWIND):
                st.crashed = False  # following another primary settles a crash
                upstream_ip = await self.ip_of(decision.upstream) if decision.upstream else None
                if plan != Plan.START_REPLICA and not upstream_ip:
                    st.reason = f"no address for {decision.upstream} yet"
                    return
                if plan == Plan.BASEBACKUP:
                    assert upstream_ip is not None
                    await self.server.basebackup(upstream_ip, self.cfg.port)
                elif plan == Plan.REWIND:
                    assert upstream_ip is not None
                    st.killed_by_agent = False
                    await self.rejoin(upstream_ip)
                st.upstream = decision.upstream
                self.server.configure(self.settings(False, None if st.paused else upstream_ip),
                                      self.user_params())
                await self.server.start()
            st.last_error = None
        except ServerError as exc:
            st.last_error = str(exc)
            log.error("%s failed: %s", plan.value, exc)

    async def still_named(self) -> bool:
        """Read the Campus once more right before a server starts as primary: the plan's
        read can be seconds old (initdb, crash recovery), a failover may have named
        another meanwhile, and the self-fence clock (agent/guard.py) counts from the last
        answered read, so a start on an old read was killed at once. Alone (no peer could
        take over) the plan's read stands. Network I/O under the lock, on purpose and only
        here: nothing may start a primary between this read and the start."""
        if not self.peers():
            return True
        if not await self.refresh():
            self.state.plan, self.state.reason = Plan.WAIT.value, (
                "API server unreachable right before starting as primary: not starting")
            return False
        why = running_primary_must_step_down(self.cfg.name, self.view)
        if why:
            self.state.plan, self.state.reason = Plan.WAIT.value, f"not starting: {why}"
            return False
        return True

    async def rejoin(self, upstream_ip: str) -> None:
        """A former primary follows the new one: pg_rewind, or a fresh copy if that fails.

        The steps come from core.instance.rejoin_steps: crash recovery first when the
        last shutdown was not clean (single-user, no client can connect), then the
        rewind; the standby signal is written by the caller's configure, after it.
        """
        try:
            clean = await self.server.shut_down_cleanly()
        except ServerError:
            clean = False
        said = ""
        try:
            for step in rejoin_steps(clean):
                if step == RejoinStep.CRASH_RECOVERY:
                    await self.server.crash_recovery()
                elif step == RejoinStep.REWIND:
                    said = await self.server.rewind(upstream_ip, self.cfg.port)
            self.state.rejoins_by_rewind += 1
            log.info("rejoined by pg_rewind from %s (crash recovery first: %s): %s",
                     upstream_ip, not clean, said)
        except ServerError as exc:
            log.warning("pg_rewind failed (%s); taking a fresh base backup", exc)
            await self.server.basebackup(upstream_ip, self.cfg.port)
            self.state.rejoins_by_basebackup += 1
            log.info("rejoined by base backup from %s", upstream_ip)

    async def maintain_primary(self) -> None:
        st = await self.server.status()
        self.state.plan, self.state.reason = "primary", "serving writes"
        if st.error or st.in_recovery:
            return
        connected = sum(1 for s in st.standbys or [] if s.get("state") == "streaming")
        settings = self.settings(True, None, connected)
        before = (self.server.data / "ringkeeper.conf").read_text()
        self.server.configure(settings, self.user_params())
        if (self.server.data / "ringkeeper.conf").read_text() != before:
            await self.server.reload()
        await self.server.ensure_slots(self.peers())

    async def follow(self, primary: str) -> None:
        ip = await self.ip_of(primary)
        if not ip:
            self.state.reason = f"no address for {primary}"
            return
        log.info("following %s at %s", primary, ip)
        self.state.upstream = primary
        self.state.upstream_ip = ip
        self.state.paused = False
        self.server.configure(self.settings(False, ip), self.user_params())
        await self.server.reload()

    # -- operator calls -----------------------------------------------------------------
    async def pause(self) -> Status:
        async with self.lock:
            self.state.paused = True
            self.state.paused_at = time.monotonic()
            self.state.paused_under = self.view.current_primary
            if self.server.data_state() == DataState.REPLICA and self.server.running:
                self.server.configure(self.settings(False, None), self.user_params())
                await self.server.reload()
            return await self.server.wait_receiver_stopped()

    async def promote(self, named: str | None = None) -> Status:
        """Promote on the operator's call; `named` is the target the operator wrote.

        The Campus decides when it can be read: it must name this instance. When the API
        server cannot be reached, the operator's word stands in for it: the operator
        writes targetPrimary (with the resourceVersion it read) before it calls, so the
        Campus does name this instance; until this agent reads the Campus again it takes
        that as its view, so it serves and turns ready. Without either, it refuses.
        """
        api_ok = await self.refresh()  # network I/O before the lock
        async with self.lock:
            if api_ok:
                view = self.view
                if view.target_primary != self.cfg.name:
                    raise PermissionError(f"the Campus names {view.target_primary} as "
                                          f"target primary, not {self.cfg.name}")
            elif named != self.cfg.name:
                raise PermissionError("cannot read the Campus and the operator named no "
                                      "target: refusing to promote blind")
            else:
                log.warning("the API server is unreachable: promoting on the operator's "
                            "word (it wrote targetPrimary=%s before calling)", named)
            if not self.server.running:
                raise ServerError("server is not running")
            await self.server.promote()
            self.state.paused = False
            self.state.upstream = None
            self.state.fenced = False
            if not api_ok:
                self.state.promoted_on_word = True
                self.adopt_primary(self.cfg.name)
            self.server.configure(self.settings(True, None, 0), self.user_params())
            await self.server.reload()
            await self.server.ensure_slots(self.peers())
            return await self.server.status()

    def adopt_primary(self, primary: str) -> None:
        """Take the operator's word for who is primary while the Campus cannot be read: it
        wrote that to the Campus before calling. The next successful read replaces it."""
        log.warning("the API server is unreachable: taking the operator's word that %s is "
                    "primary", primary)
        status = dict(self.state.campus.get("status") or {})
        status.update({"currentPrimary": primary, "targetPrimary": primary})
        self.state.campus = {**self.state.campus, "status": status}
        self.state.view_read_at = time.monotonic()  # the word is newer than any read

    async def follow_call(self, primary: str) -> Status:
        """The operator re-points this replica after a failover. It wrote currentPrimary
        before calling; an agent that cannot read the Campus takes the call's word as its
        view until it can, or its next loop would follow its stale view back to the old
        primary (which could then confirm commits again)."""
        api_ok = await self.refresh()  # network I/O before the lock
        await self.resolve(primary, force=True)
        async with self.lock:
            self.acted()
            if not api_ok:
                self.adopt_primary(primary)
            if self.server.data_state() == DataState.PRIMARY:
                # A former primary must rejoin through the start plan (rewind).
                await self.server.stop("fast")
                self.state.fenced = False
                return await self.server.status()
            await self.follow(primary)
            return await self.server.status()

    async def recover(self) -> Status:
        """The operator found no safe failover target: restart the primary in place."""
        async with self.lock:
            self.acted()
            self.state.crashed = False
            self.server.proc = None
            view = self.view
            decision = start_plan(self.cfg.name, self.server.data_state(), view)
            if decision.plan == Plan.START_PRIMARY:
                await self.execute(decision)
            return await self.server.status()

    async def fence(self, on: bool) -> Status:
        """The operator's fence (a failover's old primary, a switchover's) or its lift.
        Marked as an act: the loop may hold a Campus read from before the failover that
        sent it, which must not lift this fence (core.agentplan, VIEW_PREDATES_CALL)."""
        async with self.lock:
            self.acted()
            self.state.fenced = on
            if on:
                await self.server.stop("fast")
            return await self.server.status()


StatusCall = Callable[[], Awaitable[Status]]
