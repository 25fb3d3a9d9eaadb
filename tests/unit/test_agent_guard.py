"""The agent's self-fence keeps its own clock (agent.guard): a primary cut from the API
server and every peer stops serving within selfFenceAfterSeconds of its last contact,
however long its loop's network reads hang; one that still reaches a peer keeps serving.

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

from aiohttp import web

from ringkeeper.agent.agent import Agent
from ringkeeper.agent.contact import AgentConfig
from ringkeeper.agent.server_sql import Status
from ringkeeper.core.instance import DataState

LIMIT = 2  # selfFenceAfterSeconds, as in the e2e Campus


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
    """Two peer agents on loopback: answering /healthz, or cut (connections accepted and
    never answered, as a dropped route looks to the prober)."""

    def __init__(self) -> None:
        self.cut = False
        self.healed = asyncio.Event()
        self.runners: list[web.AppRunner] = []
        self.port = 0

    async def health(self, _: web.Request) -> web.Response:
        if self.cut:  # held open, unanswered, until the cut heals
            await self.healed.wait()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.health)
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


async def _run(cut_peers: bool) -> tuple[float | None, float, dict[str, Any]]:
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


async def test_a_primary_that_still_reaches_a_peer_keeps_serving() -> None:
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
