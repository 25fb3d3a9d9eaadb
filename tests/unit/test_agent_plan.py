"""core.agentplan: every branch of one instance agent's loop, with its reason (table tests).

Each row is an AgentFacts as Agent.facts builds it (agent c-1 of campus c); the expected
action, reason, fence flags and a fragment of the message are written out by hand. The
last tests drive a real Agent's tick over a fake server to show the executor does what
the step says (the integration tests run it against real PostgreSQL servers).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, cast

import pytest

from ringkeeper.agent.contact import AgentConfig
from ringkeeper.agent.server_sql import Status
from ringkeeper.core.agentplan import (
    CRASHED,
    AgentAction,
    AgentFacts,
    Reason,
    Role,
    Step,
    is_ready,
    plan_tick,
    reported_role,
)
from ringkeeper.core.instance import CampusView, DataState, Plan

ME = "c-1"


def facts(**kw: Any) -> AgentFacts:
    base = AgentFacts(
        me=ME, campus_read=True, view=CampusView("c-0", "c-0"), api_ok=True, peer_ok=False,
        running=True, data=DataState.REPLICA, fenced=False, self_fenced=False,
        silent_seconds=0.5, self_fence_after=3.0, paused=False, paused_under=None,
        paused_seconds=0.0, upstream="c-0", upstream_ip="10.0.0.0", primary_ip="10.0.0.0",
        killed_by_agent=False, crashed=False, exit_code=None)
    return replace(base, **kw)


def primary(**kw: Any) -> AgentFacts:
    """c-1 running as the Campus's primary."""
    base: dict[str, Any] = {"view": CampusView(ME, ME), "data": DataState.PRIMARY,
                            "upstream": None, "upstream_ip": None}
    return facts(**{**base, **kw})


def down(**kw: Any) -> AgentFacts:
    """c-1's server stopped."""
    return facts(running=False, **kw)


def down_primary(**kw: Any) -> AgentFacts:
    """c-1 stopped, primary on disk, and the Campus still names it."""
    base: dict[str, Any] = {"view": CampusView(ME, ME), "data": DataState.PRIMARY,
                            "clean_shutdown": True}
    return down(**{**base, **kw})


PAUSED = {"paused": True, "paused_under": "c-0", "upstream": None}

ROWS = [
    # (id, facts, action, reason, fenced, self_fenced, message fragment)
    ("no-campus-yet", facts(campus_read=False, running=False),
     AgentAction.WAIT, Reason.CAMPUS_UNREAD, False, False, "Campus not readable yet"),
    ("no-campus-even-as-running-primary", primary(campus_read=False),
     AgentAction.WAIT, Reason.CAMPUS_UNREAD, False, False, "not readable"),
    ("primary-serves", primary(),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    ("primary-promoted-current-catching-up", primary(view=CampusView("c-0", ME)),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    ("primary-another-is-target", primary(view=CampusView(ME, "c-2")),
     AgentAction.STEP_DOWN, Reason.CAMPUS_SAYS_STEP_DOWN, True, False,
     "c-2 is the target primary"),
    ("primary-another-is-current", primary(view=CampusView("c-2", None)),
     AgentAction.STEP_DOWN, Reason.CAMPUS_SAYS_STEP_DOWN, True, False,
     "c-2 is the current primary"),
    ("primary-fenced-by-annotation", primary(view=CampusView(ME, ME, frozenset({ME}))),
     AgentAction.STEP_DOWN, Reason.CAMPUS_SAYS_STEP_DOWN, True, False,
     "c-1 fenced by the operator"),
    ("primary-cut-from-all-too-long", primary(api_ok=False, silent_seconds=3.2),
     AgentAction.STEP_DOWN, Reason.SELF_FENCE, True, True,
     "no contact with the API server or any peer for 3.2s"),
    ("primary-cut-exactly-at-limit", primary(api_ok=False, silent_seconds=3.0),
     AgentAction.STEP_DOWN, Reason.SELF_FENCE, True, True, "self-fence"),
    ("primary-cut-not-yet", primary(api_ok=False, silent_seconds=2.9),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    # No other instance (one-instance Campus, satellite): nobody can be promoted in its
    # place, so a long API outage does not stop its writes (a satellite works offline).
    ("primary-alone-cut-from-api-long", primary(api_ok=False, silent_seconds=600.0, peers=0),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    ("primary-alone-campus-names-another", primary(peers=0, view=CampusView("c-2", None)),
     AgentAction.STEP_DOWN, Reason.CAMPUS_SAYS_STEP_DOWN, True, False,
     "c-2 is the current primary"),
    ("primary-cut-from-api-a-peer-answers", primary(api_ok=False, peer_ok=True,
                                                   silent_seconds=9.0),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    # Cut from the API server, its stale view naming another: no step-down on a stale view
    # (the self-fence rule covers it), exactly as before the split.
    ("primary-cut-stale-view-names-another", primary(api_ok=False,
                                                     view=CampusView("c-2", "c-2")),
     AgentAction.SERVE_PRIMARY, Reason.PRIMARY_SERVING, False, False, "serving writes"),
    ("replica-following", facts(),
     AgentAction.KEEP_REPLICA, Reason.FOLLOWING, False, False, "following c-0 at 10.0.0.0"),
    ("replica-new-primary", facts(view=CampusView("c-2", "c-2"), primary_ip="10.0.0.2"),
     AgentAction.FOLLOW, Reason.PRIMARY_CHANGED, False, False, "following c-2 (was c-0)"),
    ("replica-primary-moved", facts(primary_ip="10.0.9.9"),
     AgentAction.FOLLOW, Reason.PRIMARY_MOVED, False, False, "moved from 10.0.0.0 to 10.0.9.9"),
    ("replica-primary-address-unknown", facts(primary_ip=None),
     AgentAction.KEEP_REPLICA, Reason.FOLLOWING, False, False, "following c-0"),
    ("replica-failover-in-flight", facts(view=CampusView("c-0", "c-2")),
     AgentAction.KEEP_REPLICA, Reason.FAILOVER_IN_FLIGHT, False, False, "failover to c-2"),
    ("replica-no-primary", facts(view=CampusView(None, None), upstream=None),
     AgentAction.KEEP_REPLICA, Reason.NO_PRIMARY, False, False, "names no primary"),
    ("replica-named-primary-awaits-promote", facts(view=CampusView(ME, ME), upstream=None),
     AgentAction.KEEP_REPLICA, Reason.NAMED_PRIMARY, False, False, "waiting for the promote"),
    ("replica-paused", facts(**PAUSED, paused_seconds=5.0),
     AgentAction.KEEP_REPLICA, Reason.PAUSED, False, False, "paused under c-0"),
    ("replica-paused-failover-in-flight-past-limit",
     facts(**PAUSED, paused_seconds=60.0, view=CampusView("c-0", "c-2")),
     AgentAction.KEEP_REPLICA, Reason.PAUSED, False, False, "paused under c-0"),
    ("replica-running-fenced-by-annotation", facts(view=CampusView("c-0", "c-0",
                                                                  frozenset({ME}))),
     AgentAction.STOP_FENCED, Reason.FENCED_BY_ANNOTATION, True, False, "fenced by annotation"),
    ("down-fenced-campus-not-settled", down(fenced=True, data=DataState.PRIMARY,
                                            view=CampusView(ME, "c-2")),
     AgentAction.STAY_FENCED, Reason.STILL_FENCED, True, False, "waiting for the Campus"),
    ("down-fenced-by-annotation", down(fenced=True, view=CampusView("c-0", "c-0",
                                                                    frozenset({ME}))),
     AgentAction.STAY_FENCED, Reason.STILL_FENCED, True, False, "fenced"),
    ("down-self-fenced-still-cut", down(fenced=True, self_fenced=True, api_ok=False,
                                        data=DataState.PRIMARY, view=CampusView("c-2", "c-2")),
     AgentAction.STAY_FENCED, Reason.STILL_FENCED, True, True, "fenced"),
    ("down-api-unreachable", down(api_ok=False),
     AgentAction.WAIT, Reason.API_UNREACHABLE, False, False, "not starting blind"),
    ("down-replica-starts", down(),
     AgentAction.START, Reason.START_PLAN, False, False, "replica of c-0"),
    ("down-empty-basebackup", down(data=DataState.EMPTY, upstream=None),
     AgentAction.START, Reason.START_PLAN, False, False, "new replica of c-0"),
    ("down-former-primary-rewinds", down(data=DataState.PRIMARY),
     AgentAction.START, Reason.START_PLAN, False, False, "former primary rejoining c-0"),
    ("down-primary-clean-restarts", down_primary(),
     AgentAction.START, Reason.START_PLAN, False, False, "current primary"),
    ("down-primary-crash-reported", down_primary(crashed=True),
     AgentAction.HOLD_CRASHED, Reason.CRASH_REPORTED, False, False, "stopped uncleanly"),
    ("down-primary-exited-with-error", down_primary(exit_code=1),
     AgentAction.HOLD_CRASHED, Reason.EXITED_WITH_ERROR, False, False, "stopped uncleanly"),
    ("down-primary-exited-cleanly-probes", down_primary(exit_code=0, clean_shutdown=None),
     AgentAction.PROBE_SHUTDOWN, Reason.SHUTDOWN_UNKNOWN, False, False, "control file"),
    ("down-primary-unclean-shutdown", down_primary(clean_shutdown=False),
     AgentAction.HOLD_CRASHED, Reason.UNCLEAN_SHUTDOWN, False, False, "stopped uncleanly"),
    ("down-primary-killed-on-thaw", down_primary(killed_by_agent=True, exit_code=-9,
                                                 clean_shutdown=None, crashed=True),
     AgentAction.START, Reason.KILLED_ON_THAW, False, False, "restarting in place"),
    # Alone: nobody could be promoted instead, so a crash is recovered in place at once
    # (a satellite has no operator HA loop; its pod deleted while cut never served again).
    ("down-primary-alone-unclean-recovers", down_primary(peers=0, clean_shutdown=False),
     AgentAction.START, Reason.ALONE_RECOVERS, False, False, "restarting the primary in place"),
    ("down-primary-alone-crash-reported", down_primary(peers=0, crashed=True, exit_code=-9),
     AgentAction.START, Reason.ALONE_RECOVERS, False, False, "crash recovery"),
    ("down-primary-alone-fenced-stays", down_primary(
        peers=0, fenced=True, crashed=True, view=CampusView(ME, ME, frozenset({ME}))),
     AgentAction.STAY_FENCED, Reason.STILL_FENCED, True, False, "fenced"),
    ("down-primary-alone-api-lost-waits", down_primary(peers=0, api_ok=False,
                                                       clean_shutdown=False),
     AgentAction.WAIT, Reason.API_UNREACHABLE, False, False, "not starting blind"),
    # The CI failure: the operator's fence stopped c-1 while its loop held a read from
    # before the failover (still naming c-1): no lift, no start until a newer read.
    ("fenced-by-call-view-predates-it", down_primary(fenced=True, view_predates_call=True),
     AgentAction.WAIT, Reason.VIEW_PREDATES_CALL, True, False, "read before the operator"),
]


@pytest.mark.parametrize(("f", "action", "reason", "fenced", "self_fenced", "fragment"),
                         [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_plan_tick(f: AgentFacts, action: AgentAction, reason: Reason, fenced: bool,
                   self_fenced: bool, fragment: str) -> None:
    step = plan_tick(f)
    assert (step.action, step.reason) == (action, reason), step.message
    assert (step.fenced, step.self_fenced) == (fenced, self_fenced)
    assert step.message and fragment in step.message


def test_every_action_and_reason_has_a_row() -> None:
    """A new branch without a row fails here (lift and resume reasons have their own)."""
    steps = [plan_tick(row[1]) for row in ROWS]
    assert {s.action for s in steps} == set(AgentAction)
    side = {Reason.CONTACT_BACK, Reason.SETTLED_ON_ME, Reason.MOVED_ON,
            Reason.PAUSE_OUTLIVED, Reason.PAUSE_TIMED_OUT}
    assert {s.reason for s in steps} == set(Reason) - side


def test_crashed_primary_never_starts_as_primary() -> None:
    """Whatever else holds, a crash seen (sticky, exit code, unclean control file) is
    held for the operator unless this agent itself killed the server on thaw, or no
    other instance exists that the operator could promote (then it recovers in place)."""
    for crash in ({"crashed": True}, {"exit_code": 137}, {"clean_shutdown": False}):
        for api in (True, False):
            step = plan_tick(down_primary(api_ok=api, **crash))
            assert step.action in (AgentAction.HOLD_CRASHED, AgentAction.WAIT), (crash, api)
            assert step.start is None
            if api:
                assert step.message == CRASHED


def test_start_carries_the_start_plan() -> None:
    step = plan_tick(down(data=DataState.PRIMARY))
    assert step.start is not None and step.start.plan == Plan.REWIND
    assert step.start.upstream == "c-0"
    step = plan_tick(down_primary(killed_by_agent=True))
    assert step.start is not None and step.start.plan == Plan.START_PRIMARY
    assert step.clear_killed
    assert not plan_tick(down_primary()).clear_killed


LIFTS = [
    # (id, facts, lifted, fenced, self_fenced, action)
    ("step-down-settled-on-me", down_primary(fenced=True), Reason.SETTLED_ON_ME, False,
     False, AgentAction.START),
    ("step-down-settled-no-target", down_primary(fenced=True, view=CampusView(ME, None)),
     Reason.SETTLED_ON_ME, False, False, AgentAction.START),
    ("step-down-moved-on", down(fenced=True, data=DataState.PRIMARY),
     Reason.MOVED_ON, False, False, AgentAction.START),
    ("contact-back-not-fenced", down(fenced=True, self_fenced=True, data=DataState.PRIMARY),
     Reason.CONTACT_BACK, False, False, AgentAction.START),
    ("contact-back-fenced-by-annotation",
     down(fenced=True, self_fenced=True, view=CampusView("c-0", "c-0", frozenset({ME}))),
     Reason.CONTACT_BACK, True, False, AgentAction.STAY_FENCED),
    ("contact-back-while-running-fenced",
     facts(fenced=True, self_fenced=True, view=CampusView("c-0", "c-0", frozenset({ME}))),
     Reason.CONTACT_BACK, True, False, AgentAction.STOP_FENCED),
    ("step-down-no-primary-yet", down(fenced=True, view=CampusView(None, None)),
     None, True, False, AgentAction.STAY_FENCED),
    ("step-down-other-in-flight", down(fenced=True, view=CampusView("c-0", "c-2")),
     Reason.MOVED_ON, False, False, AgentAction.START),
]


@pytest.mark.parametrize(("f", "lifted", "fenced", "self_fenced", "action"),
                         [pytest.param(*row[1:], id=row[0]) for row in LIFTS])
def test_fence_lifts(f: AgentFacts, lifted: Reason | None, fenced: bool, self_fenced: bool,
                     action: AgentAction) -> None:
    step = plan_tick(f)
    assert (step.lifted, step.fenced, step.self_fenced, step.action) == (
        lifted, fenced, self_fenced, action), step
    assert bool(step.notes) == (lifted is not None) and all(step.notes)


def test_the_operators_fence_is_never_lifted_by_the_agent() -> None:
    for view in (CampusView(ME, ME, frozenset({ME})), CampusView("c-0", "c-0", frozenset({ME}))):
        for running in (True, False):
            for data in DataState:
                if running and data == DataState.EMPTY:
                    continue
                step = plan_tick(facts(fenced=True, running=running, data=data, view=view))
                assert step.fenced, (view, running, data)
                assert step.action not in (AgentAction.START, AgentAction.SERVE_PRIMARY,
                                           AgentAction.FOLLOW), (view, running, data)


# A Campus read older than the operator's last call (fence, follow, recover) or the stall
# watchdog's kill: whatever it says, nothing is lifted, started or re-pointed on it.
STALE = [
    ("fenced-stale-names-me", down_primary(fenced=True), True, False),
    ("fenced-stale-names-me-exit-0", down_primary(fenced=True, exit_code=0,
                                                 clean_shutdown=None), True, False),
    ("fenced-stale-names-another", down(fenced=True, data=DataState.PRIMARY), True, False),
    ("self-fenced-stale", down(fenced=True, self_fenced=True, data=DataState.PRIMARY),
     True, True),
    ("killed-on-thaw-stale", down_primary(fenced=True, killed_by_agent=True, exit_code=-9,
                                          clean_shutdown=None), True, False),
    ("unfenced-down-primary-stale", down_primary(), False, False),
    ("follow-call-stopped-former-primary", down(data=DataState.PRIMARY,
                                                view=CampusView(ME, ME)), False, False),
    ("replica-stale-names-old-primary", facts(upstream="c-2", view=CampusView("c-0", "c-0")),
     False, False),
    ("running-fenced-replica-stale", facts(fenced=True, view=CampusView(ME, ME)), True, False),
]


@pytest.mark.parametrize(("f", "fenced", "self_fenced"),
                         [pytest.param(*row[1:], id=row[0]) for row in STALE])
def test_a_view_older_than_the_last_call_decides_nothing(f: AgentFacts, fenced: bool,
                                                         self_fenced: bool) -> None:
    step = plan_tick(replace(f, view_predates_call=True))
    assert (step.action, step.reason) == (AgentAction.WAIT, Reason.VIEW_PREDATES_CALL), step
    assert (step.fenced, step.self_fenced, step.lifted, step.start) == (
        fenced, self_fenced, None, None)
    # The same facts on a fresh read act (lift, start, follow): the flag is what held them.
    assert plan_tick(f).action is not AgentAction.WAIT


@pytest.mark.parametrize("view", [CampusView(ME, ME), CampusView(ME, "c-2"),
                                  CampusView("c-2", "c-2"), CampusView("c-2", None)])
def test_a_running_primary_decides_on_a_stale_view_as_before(view: CampusView) -> None:
    """Stepping down is the one decision a stale read may still make (it only stops)."""
    f = primary(view=view)
    assert plan_tick(replace(f, view_predates_call=True)) == plan_tick(f)


RESUMES = [
    # (id, facts, resumed, action, upstream)
    ("pause-outlived-by-new-primary",
     facts(**PAUSED, view=CampusView("c-2", "c-2"), primary_ip="10.0.0.2"),
     Reason.PAUSE_OUTLIVED, AgentAction.FOLLOW, "c-2"),
    ("pause-timed-out-same-primary", facts(**PAUSED, paused_seconds=20.5),
     Reason.PAUSE_TIMED_OUT, AgentAction.FOLLOW, "c-0"),
    ("pause-timed-out-no-primary",
     facts(**PAUSED, paused_seconds=21.0, view=CampusView(None, None)),
     Reason.PAUSE_TIMED_OUT, AgentAction.KEEP_REPLICA, None),
    ("pause-timed-out-named-me",
     facts(**PAUSED, paused_seconds=21.0, view=CampusView(ME, None)),
     Reason.PAUSE_OUTLIVED, AgentAction.KEEP_REPLICA, None),
    ("pause-within-limit", facts(**PAUSED, paused_seconds=19.9), None, AgentAction.KEEP_REPLICA,
     None),
    ("pause-custom-limit", facts(**PAUSED, paused_seconds=6.0, pause_limit=5.0),
     Reason.PAUSE_TIMED_OUT, AgentAction.FOLLOW, "c-0"),
]


@pytest.mark.parametrize(("f", "resumed", "action", "upstream"),
                         [pytest.param(*row[1:], id=row[0]) for row in RESUMES])
def test_pause_ends(f: AgentFacts, resumed: Reason | None, action: AgentAction,
                    upstream: str | None) -> None:
    step = plan_tick(f)
    assert (step.resumed, step.action, step.upstream) == (resumed, action, upstream), step
    assert bool(step.notes) == (resumed is not None)


@pytest.mark.parametrize(("fenced", "running", "in_recovery", "role"), [
    pytest.param(True, True, False, Role.FENCED, id="fenced-primary-reports-fenced"),
    pytest.param(True, False, None, Role.FENCED, id="fenced-stopped"),
    pytest.param(False, True, False, Role.PRIMARY, id="primary"),
    pytest.param(False, True, True, Role.REPLICA, id="replica"),
    pytest.param(False, True, None, Role.UNKNOWN, id="recovery-state-unread"),
    pytest.param(False, False, None, Role.UNKNOWN, id="stopped"),
    pytest.param(False, False, False, Role.UNKNOWN, id="stopped-stale-primary-answer"),
])
def test_reported_role(fenced: bool, running: bool, in_recovery: bool | None,
                       role: Role) -> None:
    assert reported_role(fenced, running, in_recovery) is role


@pytest.mark.parametrize(("fenced", "running", "error", "in_recovery", "named", "ready"), [
    pytest.param(False, True, False, False, True, True, id="named-primary"),
    pytest.param(False, True, False, False, False, False, id="primary-not-named"),
    pytest.param(True, True, False, False, True, False, id="fenced-primary"),
    pytest.param(False, True, True, False, True, False, id="primary-erroring"),
    pytest.param(False, False, False, None, True, False, id="stopped"),
    pytest.param(False, True, False, True, False, True, id="replica"),
    pytest.param(False, True, False, None, True, False, id="recovery-state-unread"),
])
def test_is_ready(fenced: bool, running: bool, error: bool, in_recovery: bool | None,
                  named: bool, ready: bool) -> None:
    assert is_ready(fenced, running, error, in_recovery, named) is ready


# -- the executor: a real Agent's tick over a fake server -------------------------------
class _Proc:
    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode

    async def wait(self) -> int | None:
        return self.returncode


class _Server:
    """Records what the executor did; no PostgreSQL (its steps are the integration
    tests' job)."""

    def __init__(self, data: DataState, running: bool, clean: bool = True) -> None:
        self.data, self.proc = data, _Proc(None if running else 0)
        self.clean = clean
        self.did: list[str] = []

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def data_state(self) -> DataState:
        return self.data

    async def kill(self) -> None:
        self.did.append("kill")
        self.proc.returncode = -9

    async def stop(self, mode: str = "fast") -> None:
        self.did.append(f"stop-{mode}")
        self.proc.returncode = 0

    async def shut_down_cleanly(self) -> bool:
        self.did.append("probe")
        return self.clean

    async def status(self) -> Status:
        return Status(running=self.running)


class _Source:
    async def fetch(self) -> dict[str, Any]:
        raise OSError("unused")

    async def pod_ip(self, name: str) -> str | None:
        return None


def _agent(server: _Server, status: dict[str, Any]) -> Any:
    from ringkeeper.agent.agent import Agent

    cfg = AgentConfig(campus="c", namespace="ns", name=ME, pod_ip="10.0.0.1", port=5432,
                      agent_port=8000, token="t")
    agent = Agent(cfg, cast(Any, _Source()), cast(Any, server))
    agent.state.campus = {"spec": {"instances": 3}, "status": status}
    return agent


async def test_tick_steps_down_a_primary_the_campus_replaced() -> None:
    server = _Server(DataState.PRIMARY, running=True)
    agent = _agent(server, {"currentPrimary": "c-2", "targetPrimary": None})
    await agent.tick(api_ok=True, peer_ok=False)
    assert server.did == ["kill"]
    assert (agent.state.fenced, agent.state.plan) == (True, "fence")
    assert agent.state.reason == "c-2 is the current primary"


async def test_tick_holds_an_uncleanly_stopped_primary() -> None:
    server = _Server(DataState.PRIMARY, running=False, clean=False)
    agent = _agent(server, {"currentPrimary": ME, "targetPrimary": ME})
    await agent.tick(api_ok=True, peer_ok=False)
    assert server.did == ["probe"]
    assert (agent.state.crashed, agent.state.plan, agent.state.reason) == (
        True, "crashed", CRASHED)
    await agent.tick(api_ok=True, peer_ok=False)  # sticky: not probed again
    assert server.did == ["probe"] and agent.state.plan == "crashed"


async def test_tick_stops_a_replica_the_operator_fenced() -> None:
    server = _Server(DataState.REPLICA, running=True)
    agent = _agent(server, {"currentPrimary": "c-0", "targetPrimary": "c-0",
                            "fencedInstances": [ME]})
    await agent.tick(api_ok=True, peer_ok=False)
    assert server.did == ["stop-fast"]
    assert (agent.state.fenced, agent.state.reason) == (True, "fenced by annotation")
    await agent.tick(api_ok=True, peer_ok=False)  # stopped now: stays fenced
    assert server.did == ["stop-fast"] and agent.state.plan == "fence"


async def test_the_operators_fence_holds_until_a_read_after_it() -> None:
    """The CI sequence: the loop reads a Campus still naming c-1 primary, the failover's
    fence call stops c-1 (the loop waits for the lock meanwhile), then the loop ticks on
    its old read. Without the read-time check it lifted the fence ("settled on c-1
    again") and restarted c-1 as primary after c-2 was promoted."""
    server = _Server(DataState.PRIMARY, running=True)
    agent = _agent(server, {"currentPrimary": ME, "targetPrimary": ME})
    agent.state.view_read_at = time.monotonic()  # the loop's read, before the failover
    await agent.fence(True)
    await agent.tick(api_ok=True, peer_ok=False)
    assert server.did == ["stop-fast"]  # not probed, not started
    assert (agent.state.fenced, agent.state.plan) == (True, "wait")
    # A read started after the call names the new primary: the fence lifts to rejoin it.
    agent.state.campus["status"] = {"currentPrimary": "c-2", "targetPrimary": "c-2"}
    agent.state.view_read_at = time.monotonic()
    step = plan_tick(agent.facts(True, False))
    assert (step.lifted, step.action) == (Reason.MOVED_ON, AgentAction.START)
    assert step.start is not None and step.start.plan == Plan.REWIND


class _SlowSource:
    """Two reads in flight: the first started answers last, with an older Campus."""

    def __init__(self) -> None:
        self.answers: list[tuple[asyncio.Event, dict[str, Any]]] = []

    async def fetch(self) -> dict[str, Any]:
        gate, campus = self.answers.pop(0)
        await gate.wait()
        return campus

    async def pod_ip(self, name: str) -> str | None:
        return None


async def test_an_older_read_answering_last_does_not_replace_a_newer_one() -> None:
    server = _Server(DataState.REPLICA, running=True)
    agent = _agent(server, {})
    source = _SlowSource()
    agent.source = source
    old_gate, new_gate = asyncio.Event(), asyncio.Event()
    source.answers = [(old_gate, {"status": {"currentPrimary": "c-0"}}),
                      (new_gate, {"status": {"currentPrimary": "c-2"}})]
    older = asyncio.create_task(agent.refresh())
    await asyncio.sleep(0.01)
    newer = asyncio.create_task(agent.refresh())
    await asyncio.sleep(0.01)
    new_gate.set()
    assert await newer
    old_gate.set()
    assert await older  # the API answered: contact counts, the old Campus does not
    assert agent.view.current_primary == "c-2"


def test_step_is_frozen() -> None:
    step = plan_tick(facts())
    with pytest.raises(AttributeError):
        step.fenced = True  # type: ignore[misc]
    assert isinstance(step, Step)
