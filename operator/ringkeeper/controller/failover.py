"""Carry out a failover or switchover, step by step, resumable from the Campus status.

The steps (two-phase, as the status records them):
1. take the old primary out of the read-write Service and ask its agent to stop;
2. stop the WAL receivers of the reachable replicas so their positions freeze;
3. elect with core.election; refuse, and say why, when no replica is provably complete;
4. write status.targetPrimary (optimistic concurrency: a stale view loses);
5. ask the target's agent to promote (it checks the Campus names it first);
6. put it in the read-write Service, write status.currentPrimary and lastFailover;
7. point the other replicas at it.
An operator that restarts between 4 and 6 finds targetPrimary != currentPrimary
and resumes at 5.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from ..core.election import Durability, Election, choose_candidate
from ..core.ha import snapshot_from_status, to_report

log = logging.getLogger("ringkeeper.failover")


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

    async def pause(self, ip: str) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/pause", timeout=15)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def promote(self, ip: str) -> dict[str, Any]:
        return await self._call("POST", ip, "/api/promote", timeout=90)

    async def follow(self, ip: str, primary: str) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/follow", {"primary": primary}, timeout=30)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def recover(self, ip: str) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/recover", timeout=120)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None

    async def fence(self, ip: str, on: bool = True) -> dict[str, Any] | None:
        try:
            return await self._call("POST", ip, "/api/fence" if on else "/api/unfence",
                                    timeout=5)
        except (aiohttp.ClientError, TimeoutError, AgentCallError, ValueError):
            return None


class AgentCallError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"agent answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Outcome:
    promoted: str | None
    election: Election | None
    message: str


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def run_failover(
    *,
    store: CampusStore,
    agents: AgentClient,
    roles: Roles,
    events: Events,
    ips: Mapping[str, str],
    reason: str,
    planned_target: str | None = None,
) -> Outcome:
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
    n = int(spec.get("instances", 1))
    names = [f"{name}-{i}" for i in range(n)]
    replicas = [x for x in names if x != old]
    # 1. Out of the read-write Service first, then ask the old primary to stop.
    if old:
        await roles.set_role(old, "former-primary")
        if old in ips:
            await agents.fence(ips[old])
    # 2. Freeze positions.
    paused = await asyncio.gather(*(agents.pause(ips[r]) if r in ips else _none()
                                    for r in replicas))
    reports = [to_report(r, raw) for r, raw in zip(replicas, paused, strict=True)]
    # 3. Elect.
    failover = spec.get("failover") or {}
    durability = (spec.get("synchronous") or {}).get("dataDurability", "required")
    snapshot = snapshot_from_status(status.get("syncSnapshot"))
    if planned_target:
        election = _planned(planned_target, reports, old, status)
    else:
        election = choose_candidate(reports, snapshot, Durability(durability),
                                    int(failover.get("maxPromotionLagBytes", 0)))
    if election.candidate is None:
        await events.emit("FailoverRefused", election.message, warning=True)
        # Let the replicas resume streaming from the old primary if it comes back.
        for r in replicas:
            if r in ips and old:
                await agents.follow(ips[r], old)
        if old:
            await roles.set_role(old, "primary")
        return Outcome(None, election, election.message)
    # 4. Record the decision before acting on it.
    record = {"from": old, "to": election.candidate, "reason": f"{reason}; {election.message}",
              "startedAt": started}
    await store.patch_status({"targetPrimary": election.candidate, "phase":
                              "SwitchingOver" if planned_target else "FailingOver",
                              "lastFailover": record},
                             campus["metadata"].get("resourceVersion"))
    await events.emit("FailoverStarted" if not planned_target else "SwitchoverStarted",
                      f"{old} -> {election.candidate}: {election.message}")
    campus = await store.read()
    return await _finish(store, agents, roles, events, ips, campus, election.candidate, started)


def _planned(target: str, reports: list[Any], old: str | None,
             status: Mapping[str, Any]) -> Election:
    """A switchover: the old primary stopped cleanly, so the target must have caught up."""
    from ..core.election import ElectionReason

    rep = next((r for r in reports if r.name == target), None)
    if rep is None or not rep.reachable or not rep.server_running:
        return Election(None, ElectionReason.NO_REPLICA_REACHABLE, f"{target} is not reachable")
    best = max(r.position for r in reports if r.reachable)
    if rep.position < best:
        return Election(None, ElectionReason.LAG_TOO_LARGE,
                        f"{target} is behind another replica; it would lose commits")
    return Election(target, ElectionReason.SYNCHRONOUS_STANDBY,
                    f"switchover to {target}, caught up with the old primary {old}")


async def _none() -> None:
    return None


async def _finish(store: CampusStore, agents: AgentClient, roles: Roles, events: Events,
                  ips: Mapping[str, str], campus: dict[str, Any], target: str,
                  started: str | None) -> Outcome:
    status = campus.get("status") or {}
    old = status.get("currentPrimary")
    if target not in ips:
        return Outcome(None, None, f"no address for {target} yet")
    # 5. Promote (idempotent: an instance that is primary already reports so).
    current = await agents.status(ips[target])
    if not current or (current.get("server") or {}).get("in_recovery") is not False:
        await agents.promote(ips[target])
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
                              "phase": "Ready", "lastFailover": record, "failingSince": None,
                              "syncSnapshot": None},
                             None)
    await events.emit("Promoted", f"{target} is the primary (was {old})")
    # 7. Everyone else follows the new primary.
    for name, ip in ips.items():
        if name != target:
            await agents.follow(ip, target)
            if name != old:
                await roles.set_role(name, "replica")
    log.info("failover finished: %s -> %s", old, target)
    return Outcome(target, None, f"{target} promoted")
