"""Issue 15 items 2 and 3: one-sided and asymmetric cuts, decided in core and kept out of
the agent's lock.

- core.ha.standby_cut: a primary that answers but is cut off from its synchronous
  standbys counts as failed (table), and primary_verdict applies the detection delay;
- core.election.rank / choose_candidate: between equally safe replicas the one whose
  agent still reads the Campus wins, never at the cost of a commit;
- the agent answers pause and status while its read of the Campus hangs (no lock held
  across network I/O), and promotes on the operator's word only when it cannot read the
  Campus and the operator names it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ringkeeper.agent.agent import Agent
from ringkeeper.agent.contact import AgentConfig
from ringkeeper.agent.server_sql import Status
from ringkeeper.core.election import (
    Durability,
    ElectionReason,
    InstanceReport,
    SyncSnapshot,
    choose_candidate,
    rank,
)
from ringkeeper.core.ha import (
    PrimaryState,
    primary_verdict,
    standby_cut,
    to_report,
)
from ringkeeper.core.instance import DataState

ANY1 = 'ANY 1 ("c-1", "c-2")'
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def primary(sync_names: str = ANY1, streaming: tuple[str, ...] = ("c-1", "c-2"),
            wait: float | None = None, **kw: Any) -> dict[str, Any]:
    server = {"running": True, "in_recovery": False, "current_lsn": "0/5000",
              "sync_names": sync_names,
              "standbys": [{"application_name": n, "state": "streaming",
                            "sync_state": "quorum"} for n in streaming]}
    server.update(kw)
    ha: dict[str, Any] = {"syncWaiters": 0 if wait is None else 3, "apiContactSeconds": 0.4}
    if wait is not None:
        ha["syncWaitSeconds"] = wait
    return {"name": "c-0", "role": "primary", "fenced": False, "server": server, "ha": ha}


def replica(name: str, silent: float | None = 2.5, **kw: Any) -> dict[str, Any]:
    server = {"running": True, "in_recovery": True, "receive_lsn": "0/4F00",
              "replay_lsn": "0/4F00", "receiver": "streaming"}
    server.update(kw)
    ha: dict[str, Any] = {"apiContactSeconds": 0.3}
    if silent is not None:
        ha["receiverSilentSeconds"] = silent
    return {"name": name, "role": "replica", "fenced": False, "server": server, "ha": ha}


BOTH_SILENT = {"c-1": replica("c-1"), "c-2": replica("c-2")}


@pytest.mark.parametrize(("primary_raw", "replicas", "cut"), [
    pytest.param(primary(), BOTH_SILENT, False, id="standbys-streaming-no-wait"),
    pytest.param(primary(streaming=()), BOTH_SILENT, True, id="no-standby-streaming"),
    pytest.param(primary(wait=1.4), BOTH_SILENT, True,
                 id="black-holed-standbys-still-listed-commits-wait"),
    pytest.param(primary(wait=0.3), BOTH_SILENT, False, id="short-wait-is-normal"),
    pytest.param(primary(sync_names="", streaming=()), BOTH_SILENT, False,
                 id="asynchronous-primary-keeps-committing"),
    pytest.param(primary(streaming=()), {"c-1": replica("c-1"), "c-2": None}, False,
                 id="no-majority-of-replicas-healthy"),
    pytest.param(primary(streaming=()), {"c-1": replica("c-1"),
                                         "c-2": replica("c-2", in_recovery=False)}, False,
                 id="a-replica-out-of-recovery-is-not-healthy"),
    pytest.param(primary(streaming=()), {"c-1": replica("c-1"),
                                         "c-2": {**replica("c-2"), "fenced": True}}, False,
                 id="fenced-replica-is-not-healthy"),
    pytest.param(primary(streaming=()), {"c-1": replica("c-1"),
                                         "c-2": replica("c-2", silent=0.2)}, False,
                 id="a-replica-still-receives"),
    pytest.param(primary(streaming=()), {"c-1": replica("c-1"),
                                         "c-2": replica("c-2", silent=None)}, False,
                 id="a-replica-that-does-not-say-is-not-silent"),
    pytest.param(primary(streaming=(), in_recovery=True), BOTH_SILENT, False,
                 id="primary-in-recovery-is-judged-elsewhere"),
    pytest.param({**primary(streaming=()), "fenced": True}, BOTH_SILENT, False,
                 id="fenced-primary-is-judged-elsewhere"),
    pytest.param(None, BOTH_SILENT, False, id="unreachable-primary-is-judged-elsewhere"),
    pytest.param(primary(sync_names='FIRST 1 ("c-1", "c-2")', streaming=("c-2",)),
                 BOTH_SILENT, False, id="first-1-second-standby-took-over"),
    pytest.param(primary(sync_names='FIRST 1 ("c-1", "c-2")', streaming=()),
                 BOTH_SILENT, True, id="first-1-none-streaming"),
    pytest.param(primary(sync_names='ANY 2 ("c-1", "c-2")', streaming=("c-1",)),
                 {"c-1": replica("c-1", silent=0.1), "c-2": replica("c-2")}, False,
                 id="any-2-one-fed-standby-left-a-new-primary-would-wait-too"),
    pytest.param(primary(streaming=("c-3",)), BOTH_SILENT, True,
                 id="a-standby-outside-the-sync-set-does-not-count"),
])
def test_standby_cut(primary_raw: dict[str, Any] | None,
                     replicas: dict[str, dict[str, Any] | None], cut: bool) -> None:
    reason = standby_cut("c-0", primary_raw, replicas)
    assert (reason is not None) == cut, reason
    if reason is not None:
        assert reason.startswith("c-0 is cut off from its synchronous standbys")
        assert "c-1 2.5s" in reason and "c-2 2.5s" in reason


def test_standby_cut_says_what_waits() -> None:
    reason = standby_cut("c-0", primary(wait=1.8), BOTH_SILENT)
    assert reason is not None
    assert "3 commit(s) waiting for them, the oldest 1.8s" in reason
    assert "confirm no commit (ANY 1)" in reason


@pytest.mark.parametrize("bad", ["1.5", True, None, [1]])
def test_standby_cut_ignores_durations_that_are_not_numbers(bad: Any) -> None:
    raw = primary()
    raw["ha"]["syncWaitSeconds"] = bad
    assert standby_cut("c-0", raw, BOTH_SILENT) is None


def test_cut_primary_fails_after_the_detection_delay_only() -> None:
    rep = to_report("c-0", primary(streaming=()))
    assert rep.healthy_primary
    cut = standby_cut("c-0", primary(streaming=()), BOTH_SILENT)
    v = primary_verdict("c-0", rep, True, None, T0, 2.0, cut=cut)
    assert v.state == PrimaryState.SUSPECT and v.reason == cut and v.failing_since == T0
    v = primary_verdict("c-0", rep, True, T0, T0 + timedelta(seconds=1.9), 2.0, cut=cut)
    assert v.state == PrimaryState.SUSPECT
    v = primary_verdict("c-0", rep, True, T0, T0 + timedelta(seconds=2.0), 2.0, cut=cut)
    assert v.state == PrimaryState.FAILED and v.reason == cut
    # Healed: healthy again, and failingSince is dropped.
    v = primary_verdict("c-0", rep, True, T0, T0 + timedelta(seconds=2.5), 2.0, cut=None)
    assert (v.state, v.failing_since) == (PrimaryState.HEALTHY, None)


def test_just_promoted_primary_without_followers_yet_is_not_failed_over() -> None:
    """Right after a failover the new primary has no standby yet: the hold covers it."""
    rep = to_report("c-1", primary(streaming=()))
    record = {"to": "c-1", "completedAt": "2026-01-01T00:00:00Z"}
    v = primary_verdict("c-1", rep, True, T0, T0 + timedelta(seconds=10), 2.0, record,
                        cut="cut")
    assert v.state == PrimaryState.SUSPECT
    assert "was promoted" in v.reason


# -- election: reads the Campus, as a tie-break only ------------------------------------

def paused(name: str, lsn: int, api_age: float | None) -> InstanceReport:
    return InstanceReport(name=name, received_lsn=lsn, replayed_lsn=lsn,
                          api_contact_age=api_age)


@pytest.mark.parametrize(("reports", "first"), [
    pytest.param([paused("c-1", 100, 9.0), paused("c-2", 100, 0.5)], "c-2",
                 id="equal-positions-api-reader-wins-over-lower-name"),
    pytest.param([paused("c-1", 100, 9.0), paused("c-2", 100, None)], "c-2",
                 id="unknown-counts-as-reading"),
    pytest.param([paused("c-1", 101, 9.0), paused("c-2", 100, 0.5)], "c-1",
                 id="further-ahead-wins-even-without-the-api"),
    pytest.param([paused("c-1", 100, 2.9), paused("c-2", 100, 0.1)], "c-1",
                 id="under-three-seconds-is-reading"),
    pytest.param([InstanceReport("c-1", received_lsn=100, api_contact_age=0.5,
                                 api_failing=True), paused("c-2", 100, 0.9)], "c-2",
                 id="a-failing-or-hanging-read-is-not-reading"),
])
def test_rank_prefers_the_api_reader_only_between_equals(reports: list[InstanceReport],
                                                         first: str) -> None:
    assert rank(reports)[0].name == first


def test_any1_election_elects_the_api_reader_when_equally_safe() -> None:
    snap = SyncSnapshot("any", 1, ("c-1", "c-2"), ("c-1", "c-2"), 100)
    e = choose_candidate([paused("c-1", 100, 6.0), paused("c-2", 100, 0.2)], snap,
                         Durability.REQUIRED)
    assert (e.candidate, e.reason) == ("c-2", ElectionReason.QUORUM_COMPLETE)
    # Ahead by one byte, the API-less replica is the only complete one: it is elected.
    e = choose_candidate([paused("c-1", 101, 6.0), paused("c-2", 100, 0.2)], snap,
                         Durability.REQUIRED)
    assert e.candidate == "c-1"


@pytest.mark.parametrize(("raw", "age", "failing"), [
    ({"ha": {"apiContactSeconds": 4.5}}, 4.5, False),
    ({"ha": {"apiContactSeconds": 0.2, "apiFailing": True}}, 0.2, True),
    ({"ha": {"apiContactSeconds": "4.5", "apiFailing": "yes"}}, None, False),
    ({"ha": None}, None, False),
    ({}, None, False),
])
def test_to_report_reads_api_contact(raw: dict[str, Any], age: float | None,
                                     failing: bool) -> None:
    r = to_report("c-1", {"server": {"running": True}, **raw})
    assert (r.api_contact_age, r.api_failing) == (age, failing)


# -- the agent: no lock across network I/O ---------------------------------------------

class _SlowSource:
    """The Campus read hangs for `delay` seconds, or fails at once when `down`."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.down = False
        self.status: dict[str, Any] = {"currentPrimary": "c-0", "targetPrimary": "c-0"}

    async def fetch(self) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("API server cut")
        await asyncio.sleep(self.delay)
        return {"spec": {"instances": 3}, "status": dict(self.status)}

    async def pod_ip(self, name: str) -> str | None:
        await asyncio.sleep(self.delay)
        return f"10.0.0.{name[-1]}"


class _FakeServer:
    """A replica's server as far as pause and promote touch it."""

    def __init__(self) -> None:
        self.running = True
        self.proc = None
        self.sockets = Path("/nonexistent")
        self.passfile = Path("/nonexistent/pgpass")
        self.creds = SimpleNamespace(replication_user="repl")
        self.promoted = 0
        self.state = DataState.REPLICA

    def data_state(self) -> DataState:
        return self.state

    def configure(self, *_: Any) -> None:
        pass

    async def reload(self) -> None:
        pass

    async def stop(self, mode: str = "fast") -> None:
        self.running = False

    async def status(self) -> Status:
        return Status(running=True, in_recovery=self.state == DataState.REPLICA)

    async def wait_receiver_stopped(self) -> Status:
        return await self.status()

    async def promote(self) -> None:
        self.promoted += 1
        self.state = DataState.PRIMARY

    async def ensure_slots(self, peers: list[str]) -> None:
        pass


def _agent(source: _SlowSource, server: _FakeServer) -> Agent:
    cfg = AgentConfig(campus="c", namespace="ns", name="c-1", pod_ip="10.0.0.1", port=5432,
                      agent_port=8000, token="t", loop_seconds=0.05)
    agent = Agent(cfg, cast(Any, source), cast(Any, server))
    agent.state.campus = {"spec": {"instances": 3},
                          "status": {"currentPrimary": "c-0", "targetPrimary": "c-0"}}
    agent.state.peer_ips = {"c-0": "10.0.0.0", "c-2": "10.0.0.2"}
    # ha_facts would connect to a real server; the lock is what is measured here.
    agent.ha_facts = _no_facts  # type: ignore[method-assign]
    return agent


async def _no_facts(_: Status) -> dict[str, Any]:
    return {}


async def test_pause_does_not_wait_for_a_hanging_campus_read() -> None:
    """The agent of a replica cut from the API server holds no lock while it reads the
    Campus: the operator's pause reaches it as soon as it reaches the others."""
    source = _SlowSource(delay=2.0)
    agent = _agent(source, _FakeServer())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        await asyncio.sleep(0.3)  # the loop is now inside its 2 s read
        t = time.monotonic()
        await asyncio.wait_for(agent.pause(), 5)
        took = time.monotonic() - t
        assert took < 0.5, f"pause waited {took:.2f}s behind the Campus read"
        t = time.monotonic()
        await asyncio.wait_for(agent.report(), 5)
        assert time.monotonic() - t < 0.5
        # Its report says the Campus read hangs (the tie-break between equal replicas).
        agent.ha_facts = type(agent).ha_facts.__get__(agent)  # type: ignore[method-assign]
        assert (await agent.ha_facts(Status(running=False)))["apiFailing"] is False
        await asyncio.sleep(1.0)  # the read now hangs for more than API_HANG_SECONDS
        facts = await agent.ha_facts(Status(running=False))
        assert facts["apiFailing"] is True, facts
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)


async def test_promote_on_the_operators_word_only_when_the_campus_cannot_be_read() -> None:
    source = _SlowSource(delay=0)
    server = _FakeServer()
    agent = _agent(source, server)
    # The Campus is readable and names another target: refused, whatever the word.
    with pytest.raises(PermissionError, match="names c-0 as target"):
        await agent.promote("c-1")
    # Cut from the API server, no word: refused.
    source.down = True
    with pytest.raises(PermissionError, match="refusing to promote blind"):
        await agent.promote(None)
    with pytest.raises(PermissionError, match="refusing to promote blind"):
        await agent.promote("c-2")
    assert server.promoted == 0
    # Cut, and the operator names it: promoted, and its view says it is the primary, so
    # it turns ready without reading the Campus.
    await agent.promote("c-1")
    assert server.promoted == 1
    assert (agent.view.current_primary, agent.view.target_primary) == ("c-1", "c-1")
    assert agent.ready(Status(running=True, in_recovery=False))
    assert (await agent.report())["promotedOnWord"] is True
    # Readable again and naming it: the Campus decides, as before.
    source.down = False
    source.status = {"currentPrimary": "c-0", "targetPrimary": "c-1"}
    server.state = DataState.REPLICA
    await agent.promote(None)
    assert server.promoted == 2


def _primary_status(current: str, flushes: dict[str, str], names: str = ANY1) -> Status:
    return Status(running=True, in_recovery=False, current_lsn=current, sync_names=names,
                  standbys=[{"application_name": n, "state": "streaming", "flush_lsn": f}
                            for n, f in flushes.items()])


@pytest.mark.parametrize(("steps", "expected"), [
    pytest.param([(0.0, "0/100", {"c-1": "0/100"})], [0.0], id="all-confirmed"),
    pytest.param([(0.0, "0/200", {"c-1": "0/100"}), (1.5, "0/300", {"c-1": "0/100"})],
                 [0.0, 1.5], id="unconfirmed-and-stuck-grows"),
    pytest.param([(0.0, "0/200", {"c-1": "0/100"}), (1.0, "0/300", {"c-1": "0/180"}),
                  (2.0, "0/400", {"c-1": "0/380"})], [0.0, 0.0, 0.0],
                 id="behind-but-moving-under-load-is-not-stalled"),
    pytest.param([(0.0, "0/200", {}), (2.0, "0/200", {})], [0.0, 2.0],
                 id="no-standby-at-all"),
    pytest.param([(0.0, "0/200", {"c-3": "0/200"}), (2.0, "0/200", {"c-3": "0/200"})],
                 [0.0, 2.0], id="a-standby-outside-the-sync-set-confirms-nothing"),
    pytest.param([(0.0, "0/200", {"c-1": "0/100"}), (1.0, "0/200", {"c-1": "0/200"}),
                  (2.0, "0/300", {"c-1": "0/200"})], [0.0, 0.0, 0.0],
                 id="caught-up-restarts-the-clock"),
])
def test_agent_measures_unconfirmed_wal(steps: list[tuple[float, str, dict[str, str]]],
                                        expected: list[float]) -> None:
    agent = _agent(_SlowSource(0), _FakeServer())
    got = [agent.sync_stall(_primary_status(cur, fl), 100.0 + t) for t, cur, fl in steps]
    assert got == expected


def test_agent_reports_no_stall_when_asynchronous() -> None:
    agent = _agent(_SlowSource(0), _FakeServer())
    assert agent.sync_stall(_primary_status("0/200", {}, names=""), 1.0) is None


async def test_follow_call_is_kept_when_the_campus_cannot_be_read() -> None:
    """A replica cut from the API server that the operator re-points must not follow its
    stale view back to the old primary on its next loop."""
    source = _SlowSource(delay=0)
    agent = _agent(source, _FakeServer())
    source.down = True
    await agent.follow_call("c-2")
    assert agent.state.upstream == "c-2"
    assert agent.view.current_primary == "c-2"
    await agent.tick(api_ok=False, peer_ok=False)  # its next loop, still cut
    assert agent.state.upstream == "c-2"
    # Readable again: the Campus decides (here it still names c-0, so it follows c-0).
    source.down = False
    await agent.follow_call("c-2")
    assert agent.view.current_primary == "c-0"
