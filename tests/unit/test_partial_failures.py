"""Issue 15, campus HA under partial failures: the pure decisions and the runner's timing.

Decision tables for core.election.refusal_before_pause, core.ha.just_promoted and
after_promotion, core.instance.after_stall and rejoin_steps, the sync sidecar's
describe_error; a property that start_plan never starts an instance the Campus does not
name as a writable primary; and the failover runner against agents of which one hangs.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.controller.failover import StaleStatus, run_failover
from ringkeeper.core.election import (
    Durability,
    ElectionReason,
    InstanceReport,
    SyncSnapshot,
    choose_candidate,
    refusal_before_pause,
)
from ringkeeper.core.ha import (
    AfterPromotion,
    PrimaryState,
    after_promotion,
    fence_barrier,
    just_promoted,
    old_primary_stopped,
    primary_verdict,
)
from ringkeeper.core.instance import (
    CampusView,
    DataState,
    Plan,
    RejoinStep,
    StallAction,
    after_stall,
    rejoin_steps,
    start_plan,
)
from ringkeeper.sync.run import describe_error

ANY1 = SyncSnapshot("any", 1, ("c-1", "c-2"), ("c-1", "c-2"), 1000)
FIRST1 = SyncSnapshot("first", 1, ("c-1", "c-2"), ("c-1",), 1000)


def rep(name: str, lsn: int = 900, *, reachable: bool = True, streaming: bool = True,
        running: bool = True) -> InstanceReport:
    """A replica as it answers before the pause: its receiver usually still streams."""
    return InstanceReport(name=name, reachable=reachable, server_running=running,
                          received_lsn=lsn, replayed_lsn=lsn, receiver_active=streaming)


def down(name: str) -> InstanceReport:
    return InstanceReport(name=name, reachable=False, server_running=False)


# -- refusal_before_pause ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("replicas", "snap", "durability", "max_lag", "refused"),
    [
        pytest.param([rep("c-1"), rep("c-2")], ANY1, "required", 0, None, id="all-answer"),
        # No answer in time is no fact: the pause, with a longer deadline, asks again.
        pytest.param([rep("c-1"), down("c-2")], ANY1, "required", 0, None,
                     id="any1-one-silent"),
        pytest.param([down("c-1"), down("c-2")], ANY1, "required", 0, None, id="none-answer"),
        pytest.param([rep("c-1"), rep("c-2", running=False)], ANY1, "required", 0,
                     ElectionReason.QUORUM_INCOMPLETE, id="any1-one-server-down"),
        pytest.param([rep("c-1", running=False), rep("c-2", running=False)], ANY1,
                     "required", 0, ElectionReason.NO_REPLICA_REACHABLE,
                     id="all-servers-down"),
        pytest.param([rep("c-1"), rep("c-2")], None, "required", 0,
                     ElectionReason.NO_SYNC_SNAPSHOT, id="just-promoted-no-snapshot"),
        pytest.param([down("c-1"), rep("c-2")], FIRST1, "required", 0, None,
                     id="first1-sync-silent"),
        pytest.param([rep("c-1", running=False), rep("c-2")], FIRST1, "required", 0,
                     ElectionReason.NO_SYNCHRONOUS_STANDBY, id="first1-sync-server-down"),
        # Lag shrinks while receivers stream: no reason to refuse before the pause.
        pytest.param([rep("c-1", 10), rep("c-2", 10)], ANY1, "preferred", 0, None,
                     id="preferred-lag-may-shrink"),
        pytest.param([rep("c-1"), rep("c-2")], None, "preferred", 0, None,
                     id="preferred-without-snapshot"),
        pytest.param([down("c-1"), down("c-2")], None, "preferred", 0, None,
                     id="preferred-none-answer"),
    ],
)
def test_refusal_before_pause(replicas: list[InstanceReport], snap: SyncSnapshot | None,
                              durability: str, max_lag: int,
                              refused: ElectionReason | None) -> None:
    got = refusal_before_pause(replicas, snap, durability, max_lag)
    assert (got.reason if got else None) == refused
    if got is not None:
        assert got.candidate is None and got.message


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans(),
                          st.integers(0, 2000)), min_size=0, max_size=3),
       st.sampled_from([ANY1, FIRST1, None]), st.sampled_from(list(Durability)))
def test_refusal_before_pause_never_refuses_what_the_paused_election_would_allow(
        facts: list[tuple[bool, bool, bool, int]], snap: SyncSnapshot | None,
        durability: Durability) -> None:
    """Whatever the replicas report once paused (same answers, positions at or past the
    unpaused ones), an early refusal is one choose_candidate gives too: it only refuses
    earlier, never more."""
    before = [InstanceReport(f"c-{i + 1}", reachable=r, server_running=run,
                             received_lsn=lsn, receiver_active=s)
              for i, (r, run, s, lsn) in enumerate(facts)]
    early = refusal_before_pause(before, snap, durability, 50)
    after = [InstanceReport(x.name, reachable=x.reachable, server_running=x.server_running,
                            received_lsn=(x.received_lsn or 0) + 7) for x in before]
    if early is not None:
        assert choose_candidate(after, snap, durability, 50).candidate is None


# -- just_promoted ------------------------------------------------------------------------

NOW = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
SERVING = InstanceReport("c-1", in_recovery=False)


def _done(seconds_ago: float, to: str = "c-1") -> dict[str, Any]:
    when = (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")
    return {"to": to, "completedAt": when}


@pytest.mark.parametrize(
    ("report", "record", "hold"),
    [
        pytest.param(SERVING, _done(3), True, id="promoted-3s-ago-serving"),
        pytest.param(SERVING, _done(29), True, id="promoted-29s-ago"),
        pytest.param(SERVING, _done(31), False, id="promoted-31s-ago"),
        pytest.param(SERVING, _done(-5), False, id="completed-in-the-future"),
        pytest.param(SERVING, _done(3, to="c-2"), False, id="someone-else-promoted"),
        pytest.param(SERVING, None, False, id="no-failover-yet"),
        pytest.param(SERVING, {"to": "c-1"}, False, id="not-completed"),
        pytest.param(SERVING, {"to": "c-1", "completedAt": "yesterday"}, False,
                     id="bad-timestamp"),
        pytest.param(InstanceReport("c-1", in_recovery=True), _done(3), False,
                     id="still-in-recovery"),
        pytest.param(InstanceReport("c-1", reachable=False, server_running=False), _done(3),
                     False, id="unreachable"),
        pytest.param(InstanceReport("c-1", in_recovery=False, fenced=True), _done(3), False,
                     id="fenced"),
        pytest.param(None, _done(3), False, id="no-report"),
    ],
)
def test_just_promoted(report: InstanceReport | None, record: dict[str, Any] | None,
                       hold: bool) -> None:
    assert (just_promoted("c-1", report, record, NOW) is not None) == hold


@pytest.mark.parametrize(
    ("report", "record", "state"),
    [
        pytest.param(SERVING, _done(3), PrimaryState.SUSPECT, id="promoted-pod-not-ready-yet"),
        pytest.param(SERVING, _done(40), PrimaryState.FAILED, id="promoted-long-ago"),
        pytest.param(SERVING, None, PrimaryState.FAILED, id="never-promoted"),
        pytest.param(InstanceReport("c-1", reachable=False, server_running=False), _done(3),
                     PrimaryState.FAILED, id="promoted-then-died"),
    ],
)
def test_verdict_waits_for_a_just_promoted_pod(report: InstanceReport,
                                               record: dict[str, Any] | None,
                                               state: PrimaryState) -> None:
    """Pod not ready and failing for 10s with a 2s detection delay: failed, unless the
    last failover promoted it moments ago and its agent says it serves."""
    since = NOW - timedelta(seconds=10)
    verdict = primary_verdict("c-1", report, False, since, NOW, 2.0, record)
    assert verdict.state == state


# -- after_promotion ----------------------------------------------------------------------

F, X = AfterPromotion.FOLLOW, AfterPromotion.FENCE


@pytest.mark.parametrize(
    ("names", "target", "old", "expected"),
    [
        pytest.param(["c-0", "c-1", "c-2"], "c-1", "c-0", [("c-2", F), ("c-0", X)],
                     id="old-sorts-first-still-last"),
        pytest.param(["c-0", "c-1", "c-2"], "c-0", "c-2", [("c-1", F), ("c-2", X)],
                     id="old-sorts-last"),
        pytest.param(["c-0", "c-1"], "c-1", "c-0", [("c-0", X)], id="two-instances"),
        pytest.param(["c-0", "c-1", "c-2"], "c-1", None, [("c-0", F), ("c-2", F)],
                     id="no-old-primary"),
        pytest.param(["c-0", "c-1", "c-2"], "c-1", "c-1", [("c-0", F), ("c-2", F)],
                     id="resumed-target-is-old"),
        pytest.param(["c-1", "c-2"], "c-1", "c-0", [("c-2", F), ("c-0", X)],
                     id="old-without-address-still-fenced-last"),
    ],
)
def test_after_promotion(names: list[str], target: str, old: str | None,
                         expected: list[tuple[str, AfterPromotion]]) -> None:
    assert after_promotion(names, target, old) == expected


# -- after_stall and rejoin_steps --------------------------------------------------------

@pytest.mark.parametrize(
    ("stalled", "serving", "detection", "self_fence", "action"),
    [
        pytest.param(2.0, True, 2, 3, StallAction.KILL, id="frozen-detection-delay"),
        pytest.param(1.9, True, 2, 3, StallAction.NONE, id="shorter-than-detection"),
        pytest.param(3.0, True, 5, 3, StallAction.KILL, id="frozen-self-fence-time"),
        pytest.param(60.0, False, 2, 3, StallAction.NONE, id="replica-frozen-long"),
        pytest.param(0.9, True, 0, 0, StallAction.NONE, id="zero-limits-floor-1s"),
        pytest.param(1.0, True, 0, 0, StallAction.KILL, id="zero-limits-at-floor"),
    ],
)
def test_after_stall(stalled: float, serving: bool, detection: float, self_fence: float,
                     action: StallAction) -> None:
    assert after_stall(stalled, serving, detection, self_fence) == action


@pytest.mark.parametrize(
    ("clean", "steps"),
    [
        pytest.param(True, (RejoinStep.REWIND, RejoinStep.FOLLOW), id="clean-shutdown"),
        pytest.param(False, (RejoinStep.CRASH_RECOVERY, RejoinStep.REWIND, RejoinStep.FOLLOW),
                     id="crashed"),
    ],
)
def test_rejoin_steps(clean: bool, steps: tuple[RejoinStep, ...]) -> None:
    assert rejoin_steps(clean) == steps


# -- start_plan: an instance the Campus does not name never starts writable ---------------

NAMES = st.sampled_from([None, "c-0", "c-1", "c-2"])


@given(st.sampled_from(["c-0", "c-1", "c-2"]), st.sampled_from(list(DataState)), NAMES, NAMES,
       st.frozensets(st.sampled_from(["c-0", "c-1", "c-2"])))
def test_start_plan_never_starts_an_unnamed_primary(me: str, data: DataState,
                                                    current: str | None, target: str | None,
                                                    fenced: frozenset[str]) -> None:
    plan = start_plan(me, data, CampusView(current, target, fenced)).plan
    if plan in (Plan.START_PRIMARY, Plan.INITDB):
        assert me not in fenced
        assert target in (None, me)
        assert current == me or (current is None and target == me)


# -- describe_error (sync sidecar) ---------------------------------------------------------

class _ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        pytest.param(TimeoutError(), "TimeoutError (no message)", id="timeout-empty"),
        pytest.param(RuntimeError("  \n"), "RuntimeError (no message)", id="blank"),
        pytest.param(_ApiError(404, "Not Found"), "not found: the Campus is not in a ring yet",
                     id="404"),
        pytest.param(_ApiError(500, "Internal\nmore"), "_ApiError 500: Internal",
                     id="first-line"),
        pytest.param(_ApiError(503, ""), "_ApiError 503 (no message)", id="empty-reason"),
        pytest.param(KeyError("ring.json"), "KeyError: 'ring.json'", id="missing-key"),
    ],
)
def test_describe_error(exc: BaseException, text: str) -> None:
    assert describe_error(exc) == text


# -- the runner with a hung instance ------------------------------------------------------

SELF_FENCE = 1  # the fence barrier's part of every failover below (core.ha.fence_barrier)


class _Store:
    """The Campus in memory, with the resourceVersion check the API server makes."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.obj: dict[str, Any] = {
            "metadata": {"name": "c", "resourceVersion": "1"},
            "spec": {"instances": 3, "synchronous": {"method": "any", "number": 1},
                     "failover": {"selfFenceAfterSeconds": SELF_FENCE}},
            "status": status}

    async def read(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.obj))  # type: ignore[no-any-return]

    async def patch_status(self, patch: dict[str, Any], resource_version: str | None
                           ) -> dict[str, Any]:
        rv = self.obj["metadata"]["resourceVersion"]
        if resource_version is not None and resource_version != rv:
            raise StaleStatus(rv)
        for k, v in patch.items():
            if v is None:
                self.obj["status"].pop(k, None)
            else:
                self.obj["status"][k] = v
        self.obj["metadata"]["resourceVersion"] = str(int(rv) + 1)
        return self.obj


class _Agents:
    """Agents answering at once, except those in `hung`, which never answer."""

    def __init__(self, hung: set[str], promoted: set[str] | None = None) -> None:
        self.hung = hung
        self.calls: list[tuple[str, str]] = []
        self.primary: str | None = None

    async def _answer(self, ip: str, what: str, in_recovery: bool = True) -> dict[str, Any]:
        self.calls.append((ip, what))
        if ip in self.hung:
            await asyncio.sleep(3600)
        return {"server": {"running": True, "in_recovery": in_recovery,
                           "receive_lsn": "0/100", "replay_lsn": "0/100"}}

    async def status(self, ip: str) -> dict[str, Any] | None:
        return await self._answer(ip, "status", ip != self.primary)

    async def pause(self, ip: str, timeout: float = 15) -> dict[str, Any] | None:
        return await self._answer(ip, "pause")

    async def promote(self, ip: str, target: str | None = None) -> dict[str, Any]:
        self.primary = ip
        self.named = target
        return await self._answer(ip, "promote", False)

    async def follow(self, ip: str, primary: str, timeout: float = 30
                     ) -> dict[str, Any] | None:
        return await self._answer(ip, "follow")

    async def fence(self, ip: str, on: bool = True, timeout: float = 5
                    ) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self._answer(ip, "fence"), timeout)
        except TimeoutError:
            return None


class _Rec:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def set_role(self, instance: str, role: str) -> None:
        pass

    async def emit(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message))


SNAP = {"method": "any", "number": 1, "standbys": ["c-1", "c-2"],
        "confirming": ["c-1", "c-2"], "primaryLsn": "256"}
IPS = {"c-0": "ip0", "c-1": "ip1", "c-2": "ip2"}


async def test_hung_old_primary_costs_no_step_its_timeout() -> None:
    """No step waits on the hung old primary's calls; the promotion waits exactly the
    fence barrier (core.ha.fence_barrier: selfFenceAfterSeconds and a margin), by which
    time a primary nobody reaches has fenced itself."""
    store = _Store({"currentPrimary": "c-0", "syncSnapshot": SNAP})
    agents = _Agents(hung={"ip0"})
    promoted_at: list[float] = []
    original = agents.promote

    async def promote(ip: str, target: str | None = None) -> dict[str, Any]:
        promoted_at.append(time.monotonic())
        return await original(ip, target)

    agents.promote = promote  # type: ignore[method-assign]
    t0 = time.monotonic()
    out = await run_failover(store=store, agents=agents, roles=_Rec(), events=_Rec(),  # type: ignore[arg-type]
                             ips=IPS, reason="test")
    took = time.monotonic() - t0
    barrier = fence_barrier(False, SELF_FENCE)
    assert out.promoted == "c-1"
    assert promoted_at[0] - t0 >= barrier, "promoted before the old primary surely fenced"
    assert took < barrier + 1.0, f"the runner waited {took:.1f}s on the hung primary"
    # The other replica was asked to follow; the old primary only fenced, never followed.
    assert ("ip2", "follow") in agents.calls
    assert ("ip0", "follow") not in agents.calls
    assert ("ip0", "fence") in agents.calls


async def test_an_old_primary_that_says_it_stopped_costs_no_barrier() -> None:
    """The fence call's answer says the old primary's server is down (a crashed server
    behind a live agent): nothing to wait for."""
    store = _Store({"currentPrimary": "c-0", "syncSnapshot": SNAP})
    agents = _Agents(hung=set())

    async def fence(ip: str, on: bool = True, timeout: float = 5) -> dict[str, Any] | None:
        agents.calls.append((ip, "fence"))
        return {"server": {"running": False}}

    agents.fence = fence  # type: ignore[method-assign]
    t0 = time.monotonic()
    out = await run_failover(store=store, agents=agents, roles=_Rec(), events=_Rec(),  # type: ignore[arg-type]
                             ips=IPS, reason="test")
    assert out.promoted == "c-1"
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(("raw", "stopped"), [
    (None, False),  # no answer: it may serve
    ({}, False),
    ({"server": {"running": True, "in_recovery": False}}, False),
    ({"server": {"running": False}}, True),
    ({"server": {"running": None}}, False),  # not a fact
])
def test_old_primary_stopped(raw: dict[str, Any] | None, stopped: bool) -> None:
    assert old_primary_stopped(raw) is stopped
    assert fence_barrier(stopped, 2.0) == (0.0 if stopped else 2.5)


async def test_hung_replica_costs_at_most_one_deadline() -> None:
    """A replica that hangs in its pause counts as unreachable after the pause deadline;
    under ANY 1 of 2 the survivor alone cannot prove completeness, so it is refused."""
    store = _Store({"currentPrimary": "c-0", "syncSnapshot": SNAP})
    agents = _Agents(hung=set())
    original = agents.pause

    async def pause(ip: str, timeout: float = 15) -> dict[str, Any] | None:
        if ip == "ip2":
            await asyncio.sleep(3600)
        return await original(ip, timeout)

    agents.pause = pause  # type: ignore[method-assign]
    t0 = time.monotonic()
    out = await run_failover(store=store, agents=agents, roles=_Rec(), events=_Rec(),  # type: ignore[arg-type]
                             ips=IPS, reason="test")
    took = time.monotonic() - t0
    assert out.promoted is None
    assert out.election is not None and out.election.reason == ElectionReason.QUORUM_INCOMPLETE
    assert took < 5.0 + 0.5 + 3.5 + 1.0


async def test_no_snapshot_refuses_without_fencing_the_primary() -> None:
    """The freshly promoted primary looks failed (pod not yet ready) and no snapshot exists:
    the runner refuses before it fences or pauses anything."""
    store = _Store({"currentPrimary": "c-1"})
    agents = _Agents(hung=set())
    rec = _Rec()
    out = await run_failover(store=store, agents=agents, roles=rec, events=rec,  # type: ignore[arg-type]
                             ips=IPS, reason="test")
    await asyncio.sleep(0.05)  # a fire-and-forget fence would have been sent by now
    assert out.promoted is None
    assert out.election is not None and out.election.reason == ElectionReason.NO_SYNC_SNAPSHOT
    assert [w for _, w in agents.calls if w in ("fence", "pause", "follow")] == []
    assert rec.events and rec.events[0][0] == "FailoverRefused"


async def test_just_promoted_primary_is_not_failed_over() -> None:
    done = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    store = _Store({"currentPrimary": "c-1", "syncSnapshot": SNAP,
                    "lastFailover": {"to": "c-1", "completedAt": done}})
    agents = _Agents(hung=set())
    agents.primary = "ip1"
    out = await run_failover(store=store, agents=agents, roles=_Rec(), events=_Rec(),  # type: ignore[arg-type]
                             ips=IPS, reason="test")
    assert out.promoted is None and "promoted" in out.message
    assert [w for _, w in agents.calls if w in ("fence", "pause", "promote")] == []


# -- optimistic concurrency: two writers of status.targetPrimary ---------------------------

NS = "wards"
CAMPUS = f"/apis/ringkeeper.io/v1alpha1/namespaces/{NS}/campuses/c"


@pytest.mark.parametrize("round_", range(5))
async def test_two_failover_runners_race_one_names_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int) -> None:
    """Two runners (an operator and its stale twin) read the same resourceVersion and both
    decide to fail over. They write status.targetPrimary through the operator's real store
    (controller.campus._Store -> adapters.resources, 409 on a stale resourceVersion) to an
    API server over HTTP (tests/fakekube.py): exactly one lands and promotes, the other
    gets StaleStatus and promotes nothing."""
    from fakekube import serve
    from ringkeeper.adapters.kube import api_client
    from ringkeeper.controller.campus import _Store

    async with serve() as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        kube.put(CAMPUS, {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
                          "metadata": {"name": "c", "namespace": NS},
                          "spec": {"instances": 3, "synchronous": {"method": "any",
                                                                   "number": 1},
                                   "failover": {"selfFenceAfterSeconds": SELF_FENCE}},
                          "status": {"currentPrimary": "c-0", "syncSnapshot": SNAP}})
        async with await api_client() as api:
            agents = [_Agents(hung={"ip0"}), _Agents(hung={"ip0"})]
            results = await asyncio.gather(
                *(run_failover(store=_Store(api, NS, "c"), agents=a,  # type: ignore[arg-type]
                               roles=_Rec(), events=_Rec(), ips=IPS, reason=f"runner {i}")
                  for i, a in enumerate(agents)), return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], StaleStatus), lost
    loser = agents[results.index(lost[0])]
    assert [w for _, w in loser.calls if w == "promote"] == []
    status = kube.objects[CAMPUS]["status"]
    assert status["currentPrimary"] == status["targetPrimary"] == won[0].promoted
    patches = [m for m, path in kube.requests if path.endswith("/status") and m == "PATCH"]
    assert len(patches) >= 3  # both decisions were sent; the server refused one
