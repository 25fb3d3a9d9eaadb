"""What an instance agent knows and how it learns it: its configuration, the state it
keeps between loops, its view of the Campus, and contact with the API server and its
peers (reads of the Campus, pod addresses, peers' health).

Kept apart from what the agent does with that knowledge (`agent.py`: the loop and the
operator's calls) and what it tells the operator (`report.py`), which both build on this
class. Network reads happen here, outside the agent's lock: a slow or cut API server
never holds up an operator call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..core.agentplan import AgentFacts
from ..core.instance import CampusView, peers_vouch
from ..core.names import instance_count, instance_names
from .config import InstanceSettings
from .server import Server

log = logging.getLogger("ringkeeper.agent")
RESOLVE_EVERY = 5.0  # seconds between lookups of a known peer's pod address
# A serving primary asks its peers this often, apart from the loop (whose Campus read may
# hang for its whole timeout), so its contact clock is never older than a probe.
PEER_PROBE_EVERY = 0.25
PEER_PROBE_TIMEOUT = 0.8
API_PROBE_AFTER = 0.5  # a serving primary reads the Campus at least this often


class CampusSource(Protocol):
    async def fetch(self) -> dict[str, Any]: ...

    async def pod_ip(self, name: str) -> str | None: ...


@dataclass
class AgentConfig:
    campus: str
    namespace: str
    name: str
    pod_ip: str
    port: int
    agent_port: int
    token: str
    loop_seconds: float = 1.0


@dataclass
class AgentState:
    plan: str = "starting"
    reason: str = ""
    fenced: bool = False  # by the operator's call, or self-fenced
    self_fenced: bool = False
    paused: bool = False  # WAL receiver stopped for a failover comparison
    paused_at: float = 0.0
    paused_under: str | None = None  # the currentPrimary when the pause came
    killed_by_agent: bool = False  # the server was killed on thaw: not a crash to report
    rejoins_by_rewind: int = 0
    rejoins_by_basebackup: int = 0
    crashed: bool = False  # primary server died: wait for the operator (failover or recover)
    upstream: str | None = None
    upstream_ip: str | None = None
    last_error: str | None = None
    last_api_contact: float = field(default_factory=time.monotonic)
    last_peer_contact: float = field(default_factory=time.monotonic)
    peer_ips: dict[str, str] = field(default_factory=dict)
    resolved_at: dict[str, float] = field(default_factory=dict)  # pod address lookups
    fetch_started: float | None = None  # a read of the Campus in flight since
    # Bumped by the watchdog whenever it kills the server on its own (thaw, self-fence):
    # a loop that planned before the bump decides nothing (agent.Agent.tick).
    interrupts: int = 0
    last_fetch_ok: bool = True
    receiver_heard_at: float = field(default_factory=time.monotonic)
    sync_confirmed: int | None = None  # furthest flush a synchronous standby confirmed
    sync_stalled_since: float | None = None  # WAL unconfirmed, no confirmation since
    promoted_on_word: bool = False  # promoted on the operator's word, API unreachable
    campus: dict[str, Any] = field(default_factory=dict)
    view_read_at: float = 0.0  # when the read behind `campus` started (monotonic)
    # When the operator's last call fenced, stopped or re-pointed the server, or the stall
    # watchdog killed it (monotonic): a view read before this decides nothing.
    acted_at: float = 0.0


class AgentContact:
    """The agent's knowledge and its contact with the world (see the module docstring)."""

    def __init__(self, cfg: AgentConfig, source: CampusSource, server: Server) -> None:
        self.cfg = cfg
        self.source = source
        self.server = server
        self.state = AgentState()
        self.lock = asyncio.Lock()
        self.http: aiohttp.ClientSession | None = None

    # -- views of the Campus -------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.state.campus.get("spec") or {}
        return spec

    @property
    def view(self) -> CampusView:
        status = self.state.campus.get("status") or {}
        return CampusView(status.get("currentPrimary"), status.get("targetPrimary"),
                          frozenset(status.get("fencedInstances") or []))

    def peers(self) -> list[str]:
        n = instance_count(self.spec)
        return [p for p in instance_names(self.cfg.campus, n) if p != self.cfg.name]

    def settings(self, primary: bool, upstream_ip: str | None,
                 connected: int | None = None, bootstrap: bool = False) -> InstanceSettings:
        sync = self.spec.get("synchronous") or {}
        # While the first instance creates its roles no standby can connect yet, so its
        # commits must not wait for one; the next loop turns synchronous commit on.
        number = 0 if bootstrap else int(sync.get("number", 1))
        return InstanceSettings(
            campus=self.cfg.campus, instance=self.cfg.name, pod_ip=self.cfg.pod_ip,
            port=self.cfg.port, socket_dir=str(self.server.sockets), primary=primary,
            upstream_host=upstream_ip, upstream_port=self.cfg.port,
            replication_user=self.server.creds.replication_user,
            passfile=str(self.server.passfile), sync_method=sync.get("method", "any"),
            sync_number=number, peers=tuple(self.peers()),
            durability=sync.get("dataDurability", "required"), connected_standbys=connected)

    def user_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.spec.get("parameters") or {}).items()}

    def facts(self, api_ok: bool, peer_ok: bool) -> AgentFacts:
        """Everything one loop decides on, read once (core.agentplan.plan_tick); how the
        server last shut down is read only when the plan asks (it is I/O)."""
        st, now, proc = self.state, time.monotonic(), self.server.proc
        view = self.view
        return AgentFacts(
            me=self.cfg.name, campus_read=bool(st.campus), view=view, api_ok=api_ok,
            peer_ok=peer_ok, running=self.server.running, data=self.server.data_state(),
            fenced=st.fenced, self_fenced=st.self_fenced,
            silent_seconds=now - max(st.last_api_contact, st.last_peer_contact),
            peers=len(self.peers()),
            self_fence_after=self.self_fence_after(),
            paused=st.paused, paused_under=st.paused_under, paused_seconds=now - st.paused_at,
            upstream=st.upstream, upstream_ip=st.upstream_ip,
            primary_ip=st.peer_ips.get(view.current_primary) if view.current_primary else None,
            killed_by_agent=st.killed_by_agent, crashed=st.crashed,
            exit_code=proc.returncode if proc is not None else None,
            view_predates_call=st.view_read_at < st.acted_at)

    def acted(self) -> None:
        """An operator call (or the stall watchdog) just changed the server or its fence:
        the Campus as read so far may predate the failover behind it (AgentFacts)."""
        self.state.acted_at = time.monotonic()

    # -- contact ---------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Read the Campus. Reads overlap (the loop's, an operator call's): one that started
        before the read already kept is dropped, so the view never goes back in time."""
        started = self.state.fetch_started = time.monotonic()
        try:
            campus = await self.source.fetch()
        except Exception as exc:  # API down or partitioned: counts toward self-fencing
            log.debug("campus fetch failed: %s", exc)
            self.state.last_fetch_ok = False
            return False
        finally:
            self.state.fetch_started = None
        self.state.last_fetch_ok = True
        # Contact counts from when the read was sent, not when its answer came: the
        # self-fence clock must never be younger than the last moment the API server was
        # surely reachable.
        self.state.last_api_contact = max(self.state.last_api_contact, started)
        if started < self.state.view_read_at:
            return True
        self.state.campus, self.state.view_read_at = campus, started
        for inst in (self.state.campus.get("status") or {}).get("instances") or []:
            if inst.get("podIP"):
                self.state.peer_ips[inst["name"]] = inst["podIP"]
        return True

    async def resolve(self, name: str, force: bool = False) -> str | None:
        """Look a peer's pod address up (network I/O: never called under the lock)."""
        last = self.state.resolved_at.get(name)
        if force or last is None or time.monotonic() - last >= RESOLVE_EVERY:
            with contextlib.suppress(Exception):
                ip = await self.source.pod_ip(name)
                self.state.resolved_at[name] = time.monotonic()
                if ip:
                    self.state.peer_ips[name] = ip
        return self.state.peer_ips.get(name)

    async def resolve_addresses(self) -> None:
        """The addresses the next tick may connect to (the primary, a failover's target),
        looked up before the tick takes the lock."""
        view = self.view
        for name in {view.current_primary, view.target_primary} - {None, self.cfg.name}:
            assert name is not None
            await self.resolve(name)

    async def ip_of(self, name: str) -> str | None:
        """A peer's address as last resolved; looked up only when never seen before."""
        known = self.state.peer_ips.get(name)
        return known if known else await self.resolve(name, force=True)

    async def reach_a_peer(self) -> bool:
        """Ask every peer's agent at once whom it follows; contact counts, from when the
        probe was sent, only when all of them answer that they follow this instance
        (core.instance.peers_vouch)."""
        assert self.http is not None
        peers = self.peers()
        ips = [ip for ip in (self.state.peer_ips.get(p) for p in peers) if ip]
        if not ips or len(ips) != len(peers):
            return False
        sent = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=min(PEER_PROBE_TIMEOUT, self.self_fence_after()
                                                  / 2))
        answers = await asyncio.gather(*(self._vouches(ip, timeout) for ip in ips))
        if peers_vouch(self.cfg.name, len(peers), list(answers)):
            self.state.last_peer_contact = max(self.state.last_peer_contact, sent)
            return True
        return False

    async def _vouches(self, ip: str, timeout: aiohttp.ClientTimeout) -> str | None:
        """The primary the peer at `ip` follows (its /api/vouch), None if it does not say."""
        assert self.http is not None
        with contextlib.suppress(Exception):
            async with self.http.get(f"http://{ip}:{self.cfg.agent_port}/api/vouch",
                                     headers={"Authorization": f"Bearer {self.cfg.token}"},
                                     timeout=timeout) as r:
                if r.status == 200:
                    body = await r.json()
                    follows = body.get("follows") if isinstance(body, dict) else None
                    return follows if isinstance(follows, str) else None
        return None

    def self_fence_after(self) -> float:
        return float((self.spec.get("failover") or {}).get("selfFenceAfterSeconds", 3))

    def silent_seconds(self) -> float:
        """Seconds since the last moment the API server or a peer surely answered."""
        st = self.state
        return time.monotonic() - max(st.last_api_contact, st.last_peer_contact)
