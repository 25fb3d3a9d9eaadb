"""The drill planner (core.drill.plan), one row per decision, and the pass/fail judgement."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.api.v1alpha1.drill import Scenario, TargetKind
from ringkeeper.core.drill import (
    DrillAction,
    DrillCampus,
    DrillReason,
    Measured,
    Snapshot,
    Stage,
    plan,
    ring_fault_campus,
)

NOW = datetime(2026, 12, 6, 3, 0, 30, tzinfo=UTC)
A = DrillCampus("zhaohui", True, "zhaohui-0")
B = DrillCampus("binjiang", True, "binjiang-1")
BASE = Snapshot(scenario=Scenario.PRIMARY_KILL, target_kind=TargetKind.CAMPUS,
                target_exists=True, campuses=(A,), other_running=None, now=NOW,
                max_rto_seconds=60, max_lost=0, load_seconds=30)
RING = replace(BASE, target_kind=TargetKind.REPLICATION_RING, campuses=(A, B),
               scenario=Scenario.NETWORK_PARTITION)
LIVE = replace(BASE, phase_running=True, runs=1, started_at=NOW - timedelta(seconds=20))
GOOD = Measured(rto_seconds=8.5, lost=0, committed=1200)
RING_GOOD = replace(GOOD, converge_seconds=4.0)
LOSS = replace(RING, scenario=Scenario.CAMPUS_LOSS)
LOSS_LIVE = replace(LOSS, phase_running=True, runs=1, stage=Stage.FAULTED,
                    started_at=NOW - timedelta(seconds=10), fault_at=NOW - timedelta(seconds=5))
LOSS_HEALED = replace(LOSS_LIVE, recovered=True, load_done=True, healed=True,
                      healed_at=NOW - timedelta(seconds=3))
CRASH = replace(RING, scenario=Scenario.SYNC_CRASH)
CRASH_LIVE = replace(CRASH, phase_running=True, runs=1, stage=Stage.FAULTED, recovered=True,
                     started_at=NOW - timedelta(seconds=10), fault_at=NOW - timedelta(seconds=5))

CASES = [
    ("idle, once, never ran", BASE, DrillAction.START, DrillReason.DUE),
    ("target missing", replace(BASE, target_exists=False, campuses=()), DrillAction.REFUSE,
     DrillReason.TARGET_MISSING),
    ("ring with no campus of ours", replace(RING, campuses=()), DrillAction.REFUSE,
     DrillReason.SCENARIO_IMPOSSIBLE),
    ("partition of a single-campus ring", replace(RING, campuses=(A,)), DrillAction.REFUSE,
     DrillReason.SCENARIO_IMPOSSIBLE),
    ("partition of a campus target", replace(BASE, scenario=Scenario.NETWORK_PARTITION),
     DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE),
    ("partition of a two-campus ring", RING, DrillAction.START, DrillReason.DUE),
    ("campusLoss of a two-campus ring", LOSS, DrillAction.START, DrillReason.DUE),
    ("campusLoss of the only campus", replace(LOSS, campuses=(A,)), DrillAction.REFUSE,
     DrillReason.SCENARIO_IMPOSSIBLE),
    ("syncCrash of a two-campus ring", CRASH, DrillAction.START, DrillReason.DUE),
    ("syncCrash striking the ring's second campus", replace(CRASH, fault_campus="binjiang"),
     DrillAction.START, DrillReason.DUE),
    ("campusLoss striking a campus not in the ring", replace(LOSS, fault_campus="xiaoshan"),
     DrillAction.REFUSE, DrillReason.CAMPUS_NOT_IN_RING),
    ("campusLoss striking a missing campus, ring also busy",
     replace(LOSS, fault_campus="xiaoshan", other_running="other"), DrillAction.REFUSE,
     DrillReason.CAMPUS_NOT_IN_RING),
    ("syncCrash in a ring with one campus of ours", replace(CRASH, campuses=(B,)),
     DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE),
    ("campusLoss, a campus not ready", replace(LOSS, campuses=(A, DrillCampus(
        "binjiang", False, None))), DrillAction.WAIT, DrillReason.TARGET_NOT_READY),
    ("campusLoss warm: fault", replace(LOSS_LIVE, stage=Stage.STARTED, fault_at=None),
     DrillAction.INJECT_FAULT, DrillReason.FAULT_DUE),
    ("campusLoss held, others writing", replace(LOSS_LIVE, recovered=True), DrillAction.WAIT,
     DrillReason.LOAD_RUNNING),
    ("campusLoss held half the load: lift the fence",
     replace(LOSS_LIVE, recovered=True, fault_at=NOW - timedelta(seconds=15)), DrillAction.HEAL,
     DrillReason.PARTITION_OVER),
    ("campusLoss: load done first: lift the fence first",
     replace(LOSS_LIVE, recovered=True, load_done=True), DrillAction.HEAL,
     DrillReason.PARTITION_OVER),
    ("campusLoss: others never wrote: lift the fence before judging",
     replace(LOSS_LIVE, fault_at=NOW - timedelta(seconds=66), load_seconds=300),
     DrillAction.HEAL,
     DrillReason.RECOVERY_TIMED_OUT),
    ("campusLoss lifted, load done, campus not back", LOSS_HEALED, DrillAction.WAIT,
     DrillReason.CONVERGING),
    ("campusLoss lifted, campus back, ring not whole", replace(LOSS_HEALED, returned=True),
     DrillAction.WAIT, DrillReason.CONVERGING),
    ("campusLoss lifted, ring whole, campus not back", replace(LOSS_HEALED, converged=True),
     DrillAction.WAIT, DrillReason.CONVERGING),
    ("campusLoss lifted, back and whole", replace(LOSS_HEALED, returned=True,
                                                  converged=True), DrillAction.VERIFY,
     DrillReason.LOAD_DONE),
    ("campusLoss lifted, load running, ring whole", replace(
        LOSS_HEALED, load_done=False, returned=True, converged=True), DrillAction.WAIT,
     DrillReason.LOAD_RUNNING),
    ("campusLoss lifted past maxRto without convergence: judge",
     replace(LOSS_HEALED, healed_at=NOW - timedelta(seconds=66)), DrillAction.VERIFY,
     DrillReason.LOAD_DONE),
    ("syncCrash: streams not back", replace(CRASH_LIVE, recovered=False),
     DrillAction.AWAIT_RECOVERY, DrillReason.RECOVERING),
    ("syncCrash: streams back, ring not whole", replace(CRASH_LIVE, load_done=True),
     DrillAction.WAIT, DrillReason.CONVERGING),
    ("syncCrash: nothing to heal, back and whole", replace(CRASH_LIVE, load_done=True,
                                                           converged=True), DrillAction.VERIFY,
     DrillReason.LOAD_DONE),
    ("syncCrash: not whole past the limit: judge", replace(
        CRASH_LIVE, load_done=True, fault_at=NOW - timedelta(seconds=66)), DrillAction.VERIFY,
     DrillReason.LOAD_DONE),
    ("syncCrash: streams never back", replace(CRASH_LIVE, recovered=False,
                                               fault_at=NOW - timedelta(seconds=66)),
     DrillAction.VERIFY, DrillReason.RECOVERY_TIMED_OUT),
    ("ring drill verified, converged", replace(CRASH_LIVE, stage=Stage.VERIFIED,
     measured=RING_GOOD), DrillAction.FINISH, DrillReason.PASSED),
    ("ring drill verified, never converged", replace(LOSS_LIVE, stage=Stage.VERIFIED,
     measured=replace(RING_GOOD, converge_seconds=None)), DrillAction.FINISH,
     DrillReason.NOT_CONVERGED),
    ("syncCrash found no stream to end", replace(CRASH_LIVE, stage=Stage.VERIFIED,
     measured=replace(RING_GOOD, fault_error="no replication stream")), DrillAction.FINISH,
     DrillReason.FAULT_NOT_INJECTED),
    ("ring drill: a loss outweighs convergence", replace(CRASH_LIVE, stage=Stage.VERIFIED,
     measured=replace(RING_GOOD, lost=2, converge_seconds=None)), DrillAction.FINISH,
     DrillReason.TRANSACTIONS_LOST),
    ("suspended", replace(BASE, suspend=True), DrillAction.WAIT, DrillReason.SUSPENDED),
    ("once, already ran", replace(BASE, runs=1), DrillAction.WAIT, DrillReason.COMPLETED),
    ("another drill on the target", replace(BASE, other_running="other"), DrillAction.WAIT,
     DrillReason.TARGET_BUSY),
    ("campus not ready", replace(BASE, campuses=(DrillCampus("zhaohui", False, None),)),
     DrillAction.WAIT, DrillReason.TARGET_NOT_READY),
    ("scheduled, not due", replace(BASE, schedule="0 3 * * 0", created=NOW), DrillAction.WAIT,
     DrillReason.NOT_DUE),
    ("scheduled, due (UTC Sunday 03:00)",
     replace(BASE, schedule="0 3 * * 0", created=NOW - timedelta(days=1)), DrillAction.START,
     DrillReason.DUE),
    ("scheduled in Shanghai: 03:00 there was 19:00 UTC Saturday",
     replace(BASE, schedule="0 3 * * 0", time_zone="Asia/Shanghai",
             last_started=NOW - timedelta(hours=9)), DrillAction.START, DrillReason.DUE),
    ("scheduled in Shanghai, already ran at 19:00 UTC",
     replace(BASE, schedule="0 3 * * 0", time_zone="Asia/Shanghai",
             last_started=NOW - timedelta(hours=7, minutes=59)), DrillAction.WAIT,
              DrillReason.NOT_DUE),
    ("every minute: refused, it would kill a serving primary all day",
     replace(BASE, schedule="* * * * *", created=NOW), DrillAction.REFUSE,
     DrillReason.SCHEDULE_TOO_FREQUENT),
    ("every 59 minutes via a step: refused", replace(BASE, schedule="*/59 * * * *",
                                                      created=NOW), DrillAction.REFUSE,
     DrillReason.SCHEDULE_TOO_FREQUENT),
    ("twice a day a minute apart: the shortest gap counts",
     replace(BASE, schedule="0,1 3 * * *", created=NOW), DrillAction.REFUSE,
     DrillReason.SCHEDULE_TOO_FREQUENT),
    ("hourly: allowed", replace(BASE, schedule="0 * * * *", created=NOW), DrillAction.WAIT,
     DrillReason.NOT_DUE),
    ("every minute but suspended: still refused (it says what is wrong)",
     replace(BASE, schedule="* * * * *", suspend=True), DrillAction.REFUSE,
     DrillReason.SCHEDULE_TOO_FREQUENT),
    ("unknown time zone", replace(BASE, schedule="0 3 * * 0", time_zone="Asia/Shangai",
                                  created=NOW), DrillAction.REFUSE, DrillReason.INVALID_SCHEDULE),
    ("running in status, no live run (operator restarted), nothing left: failed",
     replace(LIVE, stage=None), DrillAction.FINISH, DrillReason.OPERATOR_RESTARTED),
    ("restarted with a partition policy left: undone before the run ends",
     replace(LIVE, stage=None, scenario=Scenario.NETWORK_PARTITION,
             leftover_faults=("NetworkPolicy kill-partition",)),
     DrillAction.UNDO_FAULTS, DrillReason.OPERATOR_RESTARTED),
    ("restarted with a campus fence left: undone before the run ends",
     replace(LIVE, stage=None, scenario=Scenario.CAMPUS_LOSS,
             leftover_faults=("fence on Campus north",)),
     DrillAction.UNDO_FAULTS, DrillReason.OPERATOR_RESTARTED),
    ("restarted, target gone: the leftovers are still undone, not refused",
     replace(LIVE, stage=None, target_exists=False, campuses=(),
             leftover_faults=("fence on Campus north",)),
     DrillAction.UNDO_FAULTS, DrillReason.OPERATOR_RESTARTED),
    ("restarted, target gone, nothing left: failed, not left Running",
     replace(LIVE, stage=None, target_exists=False, campuses=()),
     DrillAction.FINISH, DrillReason.OPERATOR_RESTARTED),
    ("restarted while suspended: still ended", replace(LIVE, stage=None, suspend=True),
     DrillAction.FINISH, DrillReason.OPERATOR_RESTARTED),
    ("leftovers but not Running and no live run: nothing to end (a new run is due)",
     replace(BASE, leftover_faults=("NetworkPolicy x",)), DrillAction.START,
     DrillReason.DUE),
    ("warming up", replace(LIVE, stage=Stage.STARTED, started_at=NOW - timedelta(seconds=1)),
     DrillAction.WAIT, DrillReason.WARMING_UP),
    ("warm", replace(LIVE, stage=Stage.STARTED), DrillAction.INJECT_FAULT, DrillReason.FAULT_DUE),
    ("warm but the probe has not written yet", replace(LIVE, stage=Stage.STARTED,
     probes_writing=False), DrillAction.WAIT, DrillReason.WARMING_UP),
    ("probe never wrote: fault after the limit", replace(LIVE, stage=Stage.STARTED,
     probes_writing=False, started_at=NOW - timedelta(seconds=61)), DrillAction.INJECT_FAULT,
     DrillReason.FAULT_DUE),
    ("faulted", replace(LIVE, stage=Stage.FAULTED, fault_at=NOW - timedelta(seconds=10)),
     DrillAction.AWAIT_RECOVERY, DrillReason.RECOVERING),
    ("faulted past maxRto and grace",
     replace(LIVE, stage=Stage.FAULTED, fault_at=NOW - timedelta(seconds=66)), DrillAction.VERIFY,
     DrillReason.RECOVERY_TIMED_OUT),
    ("recovered, load running", replace(LIVE, stage=Stage.FAULTED, recovered=True),
     DrillAction.WAIT, DrillReason.LOAD_RUNNING),
    ("recovered, load done", replace(LIVE, stage=Stage.RECOVERED, load_done=True),
     DrillAction.VERIFY, DrillReason.LOAD_DONE),
    ("partition held half the load: heal",
     replace(RING, phase_running=True, runs=1, stage=Stage.FAULTED,
             fault_at=NOW - timedelta(seconds=15), started_at=NOW - timedelta(seconds=20)),
     DrillAction.HEAL, DrillReason.PARTITION_OVER),
    ("partition not yet over",
     replace(RING, phase_running=True, runs=1, stage=Stage.FAULTED,
             fault_at=NOW - timedelta(seconds=5), started_at=NOW - timedelta(seconds=10)),
     DrillAction.AWAIT_RECOVERY, DrillReason.RECOVERING),
    ("partition: load done but not healed heals first",
     replace(RING, phase_running=True, runs=1, stage=Stage.RECOVERED, load_done=True,
             fault_at=NOW - timedelta(seconds=2)), DrillAction.HEAL, DrillReason.PARTITION_OVER),
    ("partition healed, load done", replace(RING, phase_running=True, runs=1,
     stage=Stage.RECOVERED, load_done=True, healed=True, fault_at=NOW - timedelta(seconds=20)),
     DrillAction.VERIFY, DrillReason.LOAD_DONE),
    ("verified, good", replace(LIVE, stage=Stage.VERIFIED, measured=GOOD), DrillAction.FINISH,
     DrillReason.PASSED),
    ("verified, slow", replace(LIVE, stage=Stage.VERIFIED, measured=replace(GOOD,
     rto_seconds=61.0)), DrillAction.FINISH, DrillReason.RTO_EXCEEDED),
    ("verified, never recovered", replace(LIVE, stage=Stage.VERIFIED, measured=replace(GOOD,
     rto_seconds=None)), DrillAction.FINISH, DrillReason.RTO_EXCEEDED),
    ("verified, one lost", replace(LIVE, stage=Stage.VERIFIED, measured=replace(GOOD,
     lost=1)), DrillAction.FINISH, DrillReason.TRANSACTIONS_LOST),
    ("verified, nothing committed", replace(LIVE, stage=Stage.VERIFIED, measured=replace(
     GOOD, committed=0)), DrillAction.FINISH, DrillReason.NO_LOAD),
]


@pytest.mark.parametrize(("name", "snap", "action", "reason"), CASES,
                         ids=[c[0] for c in CASES])
def test_plan(name: str, snap: Snapshot, action: DrillAction, reason: DrillReason) -> None:
    step = plan(snap)
    assert (step.action, step.reason) == (action, reason), step.message
    assert step.message
    if action == DrillAction.FINISH:
        assert step.passed is (reason == DrillReason.PASSED)


def test_ring_drill_strikes_the_named_campus_or_the_first() -> None:
    assert ring_fault_campus(CRASH) == "zhaohui"
    assert ring_fault_campus(replace(LOSS, fault_campus="binjiang")) == "binjiang"
    step = plan(replace(CRASH, fault_campus="xiaoshan"))
    assert step.message == ("spec.target.campus xiaoshan is not a Campus member of the "
                            "ReplicationRing target (its Campus members: zhaohui, binjiang): "
                            "name one of them, or leave it unset to strike the first")


def test_refusal_comes_before_schedule_and_busy() -> None:
    """A drill that can never run says so even while another drill holds the target."""
    step = plan(replace(BASE, target_exists=False, campuses=(), other_running="x",
                        suspend=True))
    assert step.reason == DrillReason.TARGET_MISSING


def test_rto_at_the_limit_passes_and_just_over_fails() -> None:
    at = replace(LIVE, stage=Stage.VERIFIED, measured=replace(GOOD, rto_seconds=60.0))
    assert plan(at).passed is True
    assert plan(replace(at, measured=replace(GOOD, rto_seconds=60.01))).passed is False


def test_partition_policy_cuts_both_ways_and_names_its_drill() -> None:
    from ringkeeper.core.drill_faults import DRILL_LABEL, partition_policy

    p = partition_policy("d", "uid-1", "ns", "a", "b", ("127.1.0.5",), "ringkeeper.io/campus")
    spec = p["spec"]
    assert isinstance(spec, dict)
    assert spec["podSelector"] == {"matchLabels": {"ringkeeper.io/campus": "a"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    peers = spec["ingress"][0]["from"]
    assert peers == spec["egress"][0]["to"]
    assert peers[0]["podSelector"]["matchExpressions"] == [
        {"key": "ringkeeper.io/campus", "operator": "NotIn", "values": ["b"]}]
    assert peers[1]["ipBlock"]["except"] == ["127.1.0.5/32"]
    meta = p["metadata"]
    assert isinstance(meta, dict)
    assert meta["labels"][DRILL_LABEL] == "d"
    assert meta["ownerReferences"][0]["uid"] == "uid-1"


def test_no_load_says_why_the_load_failed() -> None:
    """A load that could not write (a grant, a schema) is named in the verdict, not left
    for the report: the demo's first partition drill said only "measured nothing"."""
    step = plan(replace(LIVE, stage=Stage.VERIFIED, measured=replace(
        GOOD, committed=0, load_error="InsufficientPrivilegeError('permission denied')")))
    assert step.reason == DrillReason.NO_LOAD and "permission denied" in step.message
    assert "failed" not in plan(replace(LIVE, stage=Stage.VERIFIED, measured=replace(
        GOOD, committed=0))).message
