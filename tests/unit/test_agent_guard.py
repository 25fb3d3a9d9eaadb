"""The agent's self-fence keeps its own clock (agent.guard): a primary cut from the API
server and every peer stops serving within selfFenceAfterSeconds of its last contact,
however long its loop's network reads hang; one that all its peers still follow keeps
serving, one a peer no longer follows (paused for a failover) does not.

CI once saw two instances accept writes: the loop fenced only between its reads (a 2 s
Campus read, then 0.8 s per peer probe, then a 1 s wait), so a primary cut off with a
2 s limit stopped ~4-5 s after the cut, while the operator promoted a replica after its
3 s detection delay. A real Agent runs here with its real loop, watchdog and peer prober
over real sockets; only the database server is a fake that records its kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web

from ringkeeper.agent.agent import Agent
from ringkeeper.agent.contact import AgentConfig
from ringkeeper.agent.server_sql import Status
from ringkeeper.core.instance import CampusView, DataState, peers_vouch, vouches_for

LIMIT = 2  # selfFenceAfterSeconds, as in the e2e Campus


def _view(current: str | None, target: str | None) -> CampusView:
    return CampusView(current, target, frozenset())


@pytest.mark.parametrize(("view", "paused", "serving", "follows"), [
    (_view("c-1", "c-1"), False, False, "c-1"),
    (_view("c-1", None), False, False, "c-1"),
    (_view("c-1", "c-2"), False, False, None),  # a failover to c-2 is in flight
    (_view(None, None), False, False, None),  # no primary known
    (_view("c-1", "c-1"), True, False, None),  # paused by the operator for a failover
    (_view("c-1", "c-1"), False, True, None),  # a primary follows nobody
])
def test_vouches_for(view: CampusView, paused: bool, serving: bool,
                     follows: str | None) -> None:
    assert vouches_for(view, paused, serving) == follows


@pytest.mark.parametrize(("peers", "answers", "ok"), [
    (2, ["c-1", "c-1"], True),
    (2, ["c-1", None], False),  # one paused, or unsure: the operator may promote it
    (2, ["c-1"], False),  # one not asked (no address)
    (2, ["c-1", "c-2"], False),
    (0, [], False),  # no peers: contact with the API server only
])
def test_peers_vouch(peers: int, answers: list[str | None], ok: bool) -> None:
    assert peers_vouch("c-1", peers, answers) is ok


class _HangingSource:
    """The API server as a cut pod sees it: every read hangs until the client's 2 s
    timeout (ApiCampusSource's), or answers at once while `up`."""

    def __init__(self) -> None:
        self.up = True

    async def fetch(self) -> dict[str, Any]:
        if not self.up:
            await asyncio.sleep(2.0)
            raise TimeoutError("cut from the API server")
        return {"spec": {"instances": 3, "failover": {"selfFenceAfterSeconds": LIMIT,
                                                      "detectionDelaySeconds": LIMIT + 1}},
                "status": {"currentPrimary": "c-1", "targetPrimary": "c-1"}}

    async def pod_ip(self, name: str) -> str | None:
        if not self.up:
            await asyncio.sleep(2.0)
            raise TimeoutError("cut from the API server")
        return None


class _PrimaryServer:
    """A serving primary that records when it was killed."""

    def __init__(self) -> None:
        self.running = True
        self.proc = None
        self.sockets = Path("/nonexistent")
        self.passfile = Path("/nonexistent/pgpass")
        self.creds = SimpleNamespace(replication_user="repl")
        self.killed_at: float | None = None
        self.killed = asyncio.Event()
        self.data = Path("/nonexistent")

    def data_state(self) -> DataState:
        return DataState.PRIMARY

    def kill_now(self) -> bool:
        if not self.running:
            return False
        self.running, self.killed_at = False, time.monotonic()
        self.killed.set()
        return True

    async def kill(self) -> None:
        self.kill_now()

    async def stop(self, mode: str = "fast") -> None:
        self.running = False

    async def status(self) -> Status:
        return Status(running=self.running, in_recovery=False)


class _Peers:
    """Two peer agents on loopback answering /api/vouch (with the agent token) that they
    follow c-1; `withheld` ones follow nobody (paused for a failover); or cut
    (connections accepted and never answered, as a dropped route looks to the prober)."""

    def __init__(self) -> None:
        self.cut = False
        self.withheld: set[str] = set()
        self.healed = asyncio.Event()
        self.runners: list[web.AppRunner] = []
        self.port = 0

    async def vouch(self, request: web.Request) -> web.Response:
        if self.cut:  # held open, unanswered, until the cut heals
            await self.healed.wait()
        if request.headers.get("Authorization") != "Bearer t":
            return web.json_response({"error": "token"}, status=401)
        host = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        follows = None if host in self.withheld else "c-1"
        return web.json_response({"follows": follows})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/vouch", self.vouch)
        for host in ("127.0.0.2", "127.0.0.3"):
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, host, self.port)
            await site.start()
            if not self.port:
                self.port = runner.addresses[0][1]
            self.runners.append(runner)

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()


async def _run(cut_peers: bool, withheld: frozenset[str] = frozenset()
               ) -> tuple[float | None, float, dict[str, Any]]:
    """Serve as primary, then cut the API server (and the peers when `cut_peers`) and
    watch the server for LIMIT + 1.5 seconds. Returns when it was killed in that window
    (None: still serving), the cut's time, and the agent's state then."""
    peers = _Peers()
    await peers.start()
    source, server = _HangingSource(), _PrimaryServer()
    cfg = AgentConfig(campus="c", namespace="ns", name="c-1", pod_ip="127.0.0.1",
                      port=5432, agent_port=peers.port, token="t")
    agent = Agent(cfg, cast(Any, source), cast(Any, server))

    async def serving() -> None:  # maintain_primary's SQL is the integration tests' job
        agent.state.plan = "primary"

    agent.maintain_primary = serving  # type: ignore[method-assign]
    agent.state.peer_ips = {"c-0": "127.0.0.2", "c-2": "127.0.0.3"}
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        await asyncio.sleep(1.5)  # a few healthy loops: contact is fresh
        assert server.running and agent.state.plan == "primary", agent.state
        source.up = False
        peers.cut = cut_peers
        peers.withheld = set(withheld)
        cut = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.killed.wait(), LIMIT + 1.5)
        # Read before the stop: stopping the agent ends its server too.
        st = agent.state
        return server.killed_at, cut, {"fenced": st.fenced, "self_fenced": st.self_fenced,
                                       "plan": st.plan, "reason": st.reason}
    finally:
        stop.set()
        peers.healed.set()
        await asyncio.wait_for(task, 10)
        await peers.close()


async def test_a_primary_cut_from_everything_fences_itself_on_time() -> None:
    killed_at, cut, state = await _run(cut_peers=True)
    assert killed_at is not None, "the cut-off primary never fenced itself"
    took = killed_at - cut
    # Its last contact came at most one probe period before the cut; the watchdog looks
    # every 0.1 s. Anything near the operator's detection delay (LIMIT + 1) is a second
    # writer.
    assert took <= LIMIT + 0.4, f"fenced {took:.2f}s after the cut (limit {LIMIT}s)"
    assert (state["fenced"], state["self_fenced"], state["plan"]) == (True, True, "fence")


async def test_a_primary_one_peer_no_longer_follows_fences_itself_on_time() -> None:
    """Cut from the API server, both peers answer, but one was paused for a failover (it
    follows nobody): their word no longer keeps it serving (core.instance.peers_vouch)."""
    killed_at, cut, state = await _run(cut_peers=False, withheld=frozenset({"127.0.0.3"}))
    assert killed_at is not None, "a primary one peer no longer follows kept serving"
    assert killed_at - cut <= LIMIT + 0.4, f"fenced {killed_at - cut:.2f}s after the pause"
    assert state["self_fenced"], state


async def test_a_primary_all_its_peers_follow_keeps_serving() -> None:
    killed_at, _, state = await _run(cut_peers=False)
    assert killed_at is None, state
    assert not state["self_fenced"] and state["plan"] == "primary", state


async def test_a_loop_busy_with_its_own_work_is_not_silence() -> None:
    """The first primary of a Campus knows no peer address yet, and its loop spent 3 s in
    initdb and start: the watchdog counted that as silence and killed it (integration
    bootstrap). The primary keeps reading the Campus on its own while it serves."""
    source, server = _HangingSource(), _PrimaryServer()
    cfg = AgentConfig(campus="c", namespace="ns", name="c-1", pod_ip="127.0.0.1",
                      port=5432, agent_port=1, token="t")
    agent = Agent(cfg, cast(Any, source), cast(Any, server))

    async def busy() -> None:  # one long step under the loop's lock
        agent.state.plan = "primary"
        await asyncio.sleep(LIMIT + 1.5)

    agent.maintain_primary = busy  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.killed.wait(), LIMIT + 1.5)
        assert server.killed_at is None, agent.state.reason
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
