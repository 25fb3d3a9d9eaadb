"""Carry out a failover or switchover, step by step, resumable from the Campus status.

The steps (two-phase, as the status records them):
1. read every instance's status in parallel under one deadline, and refuse at once what no
   pause could change (core.election.refusal_before_pause): nothing is fenced or paused for
   a failover that can only be refused, so the primary just promoted is never stopped;
2. take the old primary out of the read-write Service and fence it fire-and-forget: it may
   be hung, and no step waits on it;
3. stop the WAL receivers of the replicas, in parallel under one deadline, so their
   positions freeze;
4. elect with core.election; refuse, and say why, when no replica is provably complete;
5. write status.targetPrimary (optimistic concurrency: a stale view loses);
6. unless the old primary's agent said its server stopped, wait selfFenceAfterSeconds
   (and a margin) from step 5 (core.ha.fence_barrier): by then it has fenced itself or
   read the new target; then ask the target's agent to promote (it checks the Campus
   names it first);
7. put it in the read-write Service, write status.currentPrimary and lastFailover;
8. point the other replicas at it, in parallel with short timeouts; the old primary last,
   fenced fire-and-forget (core.ha.after_promotion).
An operator that restarts between 5 and 7 finds targetPrimary != currentPrimary
and resumes at 6.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from ..core.election import (
    Durability,
    Election,
    choose_candidate,
    choose_switchover,
    refusal_before_pause,
)
from ..core.ha import (
    AfterPromotion,
    after_promotion,
    fence_barrier,
    just_promoted,
    old_primary_stopped,
    snapshot_from_status,
    to_report,
)
from ..core.haplan import role_after_refusal
from ..core.names import instance_count, instance_names

log = logging.getLogger("ringkeeper.failover")

# Every step that talks to more than one agent asks them together, under one deadline: a
# hung instance costs the step its deadline, never the sum of everyone's timeouts.
STATUS_DEADLINE = 2.0
PAUSE_DEADLINE = 5.0  # a replica's agent waits for its WAL receiver to stop
FOLLOW_TIMEOUT = 3.0
FENCE_TIMEOUT = 3.0
PLANNED_FENCE_TIMEOUT = 15.0  # a switchover waits for the healthy old primary's clean stop


class StaleStatus(RuntimeError):
    """The Campus changed under us; start over from a fresh read."""


class CampusStore(Protocol):
    async def read(self) -> dict[str, Any]: ...

    async def patch_status(self, patch: dict[str, Any], resource_version: str | None
                           ) -> dict[str, Any]: ...


class Roles(Protocol):
    """Who the Services select: the read-write Service follows role=primary."""

    async def set_role(self, instance: str, role: str) -> None: ...


class Events(Protocol):
    async def emit(self, reason: str, message: str, warning: bool = False) -> None: ...


class AgentClient:
    """Authenticated calls to instance agents."""

    def __init__(self, session: aiohttp.ClientSession, token: str, port: int = 8000,
                 timeout: float = 3.0) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"}
        self.port = port
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, ip: str, path: str, body: Any = None,
                    timeout: float | None = None) -> dict[str, Any]:
        # A partitioned agent drops packets: fail the connect fast, whatever the call's budget.
        to = aiohttp.ClientTimeout(total=timeout or self.timeout.total, sock_connect=1.0)
        async with self.session.request(method, f"http://{ip}:{self.port}{path}", json=body,
                                        headers=self.headers, timeout=to) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise AgentCallError(resp.status, str(data.get("error", data)))
            return data

    async def status(self, ip: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", ip, "/api/status", timeout=1.5)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def pause(self, ip: str, timeout: float = 15) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/pause", timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def promote(self, ip: str, target: str | None = None) -> dict[str, Any]:
        """`target` is the targetPrimary just written: an agent cut from the API server
        promotes on that word instead of refusing (agent.Agent.promote)."""
        body = {"targetPrimary": target} if target else None
        return await self._call("POST", ip, "/api/promote", body, timeout=90)

    async def follow(self, ip: str, primary: str, timeout: float = 30) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/follow", {"primary": primary},
                                    timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def recover(self, ip: str) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/recover", timeout=120)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def fence(self, ip: str, on: bool = True, timeout: float = 5
                    ) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/fence" if on else "/api/unfence",
                                    timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None


class AgentCallError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"agent answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class FailoverOutcome:
    promoted: str | None
    election: Election | None
    message: str


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def _gather(calls: Mapping[str, Any], deadline: float) -> dict[str, Any]:
    """Run one awaitable per instance together; what misses the deadline counts as None."""
    async def one(call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, deadline)
        except (TimeoutError, aiohttp.ClientError, AgentCallError, ValueError):
            return None

    results = await asyncio.gather(*(one(c) for c in calls.values()))
    return dict(zip(calls, results, strict=True))


_background: set[asyncio.Task[Any]] = set()


def fire_and_forget(what: str, call: Any, timeout: float) -> asyncio.Task[Any]:
    """Start a call nobody waits for (fencing a possibly hung instance); log how it ended."""
    async def run() -> Any:
        try:
            result = await asyncio.wait_for(call, timeout)
        except Exception as exc:  # logged, never raised: nothing waits on this call
            log.warning("%s failed: %s", what, exc or type(exc).__name__)
            return None
        if result is None:
            log.warning("%s: no answer within %.0fs", what, timeout)
        else:
            log.info("%s: done", what)
        return result

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def run_failover(
    *,
    store: CampusStore,
    agents: AgentClient,
    roles: Roles,
    events: Events,
    ips: Mapping[str, str],
    reason: str,
    planned_target: str | None = None,
) -> FailoverOutcome:
    campus = await store.read()
    spec, status = campus["spec"], campus.get("status") or {}
    old = status.get("currentPrimary")
    target = status.get("targetPrimary")
    started = (status.get("lastFailover") or {}).get("startedAt") if target != old else None
    if target and target != old:
        log.info("resuming failover to %s", target)
        return await _finish(store, agents, roles, events, ips, campus, target, started)

    # The outage began when the primary first looked failed, not when we acted.
    started = status.get("failingSince") or _now()
    name = campus["metadata"]["name"]
    n = instance_count(spec)
    names = instance_names(name, n)
    replicas = [x for x in names if x != old]
    failover = spec.get("failover") or {}
    durability = Durability((spec.get("synchronous") or {}).get("dataDurability", "required"))
    max_lag = int(failover.get("maxPromotionLagBytes", 0))
    snapshot = snapshot_from_status(status.get("syncSnapshot"))
    # 1. Facts first, all at once: nothing is stopped for a failover that must be refused.
    # The old primary is asked only when the last failover promoted it (is it serving?):
    # a hung one would cost this step its whole deadline.
    ask = [x for x in replicas if x in ips]
    if old and old in ips and _promoted_last(status, old):
        ask.append(old)
    raws = await _gather({x: agents.status(ips[x]) for x in ask}, STATUS_DEADLINE)
    if not planned_target:
        hold = just_promoted(old, to_report(old, raws.get(old)) if old else None,
                             status.get("lastFailover"), datetime.now(UTC))
        early = None if hold else refusal_before_pause(
            [to_report(r, raws.get(r)) for r in replicas], snapshot, durability, max_lag)
        if hold or early is not None:
            message = hold or (early.message if early else "")
            await events.emit("FailoverRefused", message, warning=True)
            return FailoverOutcome(None, early, message)
    # 2. Out of the read-write Service, and fenced without waiting: it may be hung.
    # A switchover's old primary is healthy and must stop before positions are compared.
    fenced: asyncio.Task[Any] | None = None
    if old:
        await roles.set_role(old, "former-primary")
        if old in ips and planned_target:
            fenced = asyncio.get_running_loop().create_task(
                agents.fence(ips[old], timeout=PLANNED_FENCE_TIMEOUT))
            await asyncio.wait({fenced})
        elif old in ips:
            fenced = fire_and_forget(f"fencing the old primary {old}",
                                     agents.fence(ips[old], timeout=FENCE_TIMEOUT),
                                     FENCE_TIMEOUT + 1)
    # 3. Freeze positions, all replicas together.
    paused = await _gather({r: agents.pause(ips[r], timeout=PAUSE_DEADLINE)
                            for r in replicas if r in ips}, PAUSE_DEADLINE + 0.5)
    reports = [to_report(r, paused.get(r)) for r in replicas]
    # 4. Elect.
    if planned_target:
        election = choose_switchover(planned_target, reports, old)
    else:
        election = choose_candidate(reports, snapshot, durability, max_lag)
    if election.candidate is None:
        await events.emit("FailoverRefused", election.message, warning=True)
        # Let the replicas resume streaming from the old primary if it comes back.
        if old:
            await _gather({r: agents.follow(ips[r], old, timeout=FOLLOW_TIMEOUT)
                           for r in replicas if r in ips}, FOLLOW_TIMEOUT + 0.5)
            role, why = role_after_refusal(old, planned=bool(planned_target))
            log.info("%s relabelled %s: %s", old, role, why)
            await roles.set_role(old, role)
        return FailoverOutcome(None, election, election.message)
    # 5. Record the decision before acting on it.
    record = {"from": old, "to": election.candidate, "reason": f"{reason}; {election.message}",
              "startedAt": started}
    await store.patch_status({"targetPrimary": election.candidate, "phase":
                              "SwitchingOver" if planned_target else "FailingOver",
                              "lastFailover": record},
                             campus["metadata"].get("resourceVersion"))
    written = asyncio.get_running_loop().time()
    await events.emit("FailoverStarted" if not planned_target else "SwitchoverStarted",
                      f"{old} -> {election.candidate}: {election.message}")
    campus = await store.read()
    return await _finish(store, agents, roles, events, ips, campus, election.candidate, started,
                         fenced=fenced, written=written)


async def _old_primary_gone(old: str | None, fenced: asyncio.Task[Any] | None,
                            written: float | None, self_fence_after: float) -> None:
    """Wait out core.ha.fence_barrier before promoting: until the fence call says the old
    primary's server stopped, or until it has surely fenced itself or stepped down."""
    if old is None:
        return
    loop = asyncio.get_running_loop()
    deadline = (written if written is not None else loop.time()) + fence_barrier(
        False, self_fence_after)
    while (left := deadline - loop.time()) > 0:
        if fenced is not None and fenced.done():
            if not fenced.cancelled() and fenced.exception() is None and fence_barrier(
                    old_primary_stopped(fenced.result()), self_fence_after) == 0.0:
                return
            fenced = None  # answered without a stop, or failed: wait the rest
        if fenced is None:
            log.info("waiting %.1fs before promoting: %s may still serve until it fences "
                     "itself or reads the new target", left, old)
            await asyncio.sleep(left)
            return
        await asyncio.wait({fenced}, timeout=left)


def _promoted_last(status: Mapping[str, Any], name: str | None) -> bool:
    return bool(name) and (status.get("lastFailover") or {}).get("to") == name


async def _finish(store: CampusStore, agents: AgentClient, roles: Roles, events: Events,
                  ips: Mapping[str, str], campus: dict[str, Any], target: str,
                  started: str | None, *, fenced: asyncio.Task[Any] | None = None,
                  written: float | None = None) -> FailoverOutcome:
    """From targetPrimary written (at loop time `written`; None: found written by an
    earlier operator, so from now) to the promotion and the replicas following it."""
    status = campus.get("status") or {}
    old = status.get("currentPrimary")
    if target not in ips:
        return FailoverOutcome(None, None, f"no address for {target} yet")
    # 5. Promote (idempotent: an instance that is primary already reports so).
    current = await agents.status(ips[target])
    if not current or (current.get("server") or {}).get("in_recovery") is not False:
        limit = float((campus["spec"].get("failover") or {}).get("selfFenceAfterSeconds", 3))
        await _old_primary_gone(old, fenced, written, limit)
        await agents.promote(ips[target], target)
    # 6. Read-write Service, then the status.
    await roles.set_role(target, "primary")
    done = _now()
    record = dict(status.get("lastFailover") or {})
    record.update({"to": target, "completedAt": done})
    if started and "startedAt" not in record:
        record["startedAt"] = started
    if record.get("startedAt"):
        t0 = datetime.fromisoformat(str(record["startedAt"]).replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(done.replace("Z", "+00:00"))
        record["rtoSeconds"] = (t1 - t0).total_seconds()
    await store.patch_status({"currentPrimary": target, "targetPrimary": target,
                              "phase": "Degraded", "lastFailover": record, "failingSince": None,
                              "syncSnapshot": None},
                             None)
    await events.emit("Promoted", f"{target} is the primary (was {old})")
    # 8. The replicas follow it, together and briefly; the old primary is fenced last,
    # fire-and-forget (core.ha.after_promotion). A replica the call misses follows on its
    # own once it reads the new currentPrimary.
    steps = after_promotion(list(ips), target, old)
    followers = [x for x, step in steps if step == AfterPromotion.FOLLOW]
    answers = await _gather({x: agents.follow(ips[x], target, timeout=FOLLOW_TIMEOUT)
                             for x in followers}, FOLLOW_TIMEOUT + 0.5)
    for x in followers:
        if answers.get(x) is None:
            log.warning("%s did not answer the follow call; it follows %s on its own", x,
                        target)
        await roles.set_role(x, "replica")
    for x, step in steps:
        if step == AfterPromotion.FENCE:
            fire_and_forget(f"fencing the former primary {x}",
                            agents.fence(ips[x], timeout=FENCE_TIMEOUT), FENCE_TIMEOUT + 1)
    log.info("failover finished: %s -> %s", old, target)
    return FailoverOutcome(target, None, f"{target} promoted")
