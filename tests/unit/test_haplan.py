"""core.haplan: every branch of one HA cycle's decision, with its reason (table tests).

Each row is a CampusSnapshot built from agents' /api/status answers as they send them;
the expected step kind, target and a fragment of the reason are written out by hand.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ringkeeper.core.election import ElectionReason, InstanceReport, choose_switchover
from ringkeeper.core.haplan import (
    AfterRefusal,
    CampusPhase,
    CampusSnapshot,
    HaStepKind,
    PhaseReason,
    after_refused_failover,
    campus_phase,
    plan_cycle,
    role_after_refusal,
)

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
NAMES = ("c-0", "c-1", "c-2")


def primary(**extra: Any) -> dict[str, Any]:
    return {"role": "primary", "server": {"running": True, "in_recovery": False,
                                          "current_lsn": "0/3000000"}, **extra}


def replica() -> dict[str, Any]:
    return {"role": "replica", "server": {"running": True, "in_recovery": True,
                                          "receive_lsn": "0/3000000", "receiver": True}}


def snap(**kw: Any) -> CampusSnapshot:
    base = CampusSnapshot(
        name="c", spec={"failover": {"detectionDelaySeconds": 5}}, names=NAMES,
        current="c-0", target="c-0", failing_since=None, last_failover=None,
        raws={"c-0": primary(), "c-1": replica(), "c-2": replica()},
        ready={"c-0": True, "c-1": True, "c-2": True}, addressed=frozenset(NAMES),
        switchover=None, now=NOW, since_write=1.0)
    return replace(base, **kw)


DOWN = {"c-0": None, "c-1": replica(), "c-2": replica()}
LONG_AGO = NOW - timedelta(seconds=30)
RECENT = NOW - timedelta(seconds=2)

ROWS = [
    # (id, snapshot, kind, target, reason fragment, clear_switchover)
    ("bootstrap-confirmed", snap(current=None, raws={"c-0": primary(), "c-1": None,
                                                     "c-2": None}),
     HaStepKind.BOOTSTRAP, "c-0", "c-0 answers as primary", False),
    ("bootstrap-waiting", snap(current=None, raws={"c-0": replica(), "c-1": None,
                                                   "c-2": None}),
     HaStepKind.AWAIT_BOOTSTRAP, "c-0", "waiting for c-0", False),
    ("bootstrap-no-target", snap(current=None, target=None),
     HaStepKind.AWAIT_BOOTSTRAP, None, "waiting for a targetPrimary", False),
    ("resume-interrupted", snap(target="c-1", raws=DOWN),
     HaStepKind.RESUME_FAILOVER, "c-1", "resuming after an interruption", False),
    ("resume-before-switchover", snap(target="c-1", switchover="c-2"),
     HaStepKind.RESUME_FAILOVER, "c-1", "resuming", False),
    ("switchover", snap(switchover="c-2"),
     HaStepKind.SWITCHOVER, "c-2", "switchover requested to c-2", False),
    ("switchover-bad-name", snap(switchover="c-7"),
     HaStepKind.REFUSE_SWITCHOVER, None, "is not an instance of this campus", False),
    ("switchover-to-current-cleared", snap(switchover="c-0"),
     HaStepKind.PUBLISH, "c-0", "primary healthy", True),
    ("failed-after-delay", snap(raws=DOWN, failing_since=LONG_AGO),
     HaStepKind.FAILOVER, "c-0", "primary failed: agent of c-0 unreachable", False),
    ("failed-server-down", snap(raws={**DOWN, "c-0": {"server": {"running": False}}},
                                failing_since=LONG_AGO),
     HaStepKind.FAILOVER, "c-0", "primary failed: server of c-0 down", False),
    ("failed-and-switchover-to-current", snap(raws=DOWN, failing_since=LONG_AGO,
                                              switchover="c-0"),
     HaStepKind.FAILOVER, "c-0", "primary failed", True),
    ("suspect-first-time", snap(raws=DOWN),
     HaStepKind.MARK_SUSPECT, "c-0", "agent of c-0 unreachable", False),
    ("suspect-pod-not-ready", snap(ready={"c-0": False, "c-1": True, "c-2": True}),
     HaStepKind.MARK_SUSPECT, "c-0", "pod c-0 not ready", False),
    ("suspect-within-delay", snap(raws=DOWN, failing_since=RECENT),
     HaStepKind.AWAIT_SUSPECT, "c-0", "suspect since", False),
    ("healthy", snap(), HaStepKind.PUBLISH, "c-0", "primary healthy", False),
    ("healthy-forced-write", snap(since_write=6.0), HaStepKind.PUBLISH, "c-0",
     "older than 5 s is rewritten", False),
]


@pytest.mark.parametrize(("s", "kind", "target", "why", "clear"),
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_plan_cycle(s: CampusSnapshot, kind: HaStepKind, target: str | None, why: str,
                    clear: bool) -> None:
    step = plan_cycle(s)
    assert (step.kind, step.target, step.clear_switchover) == (kind, target, clear)
    assert why in step.reason


def test_verdict_feeds_primary_up_and_suspect_time() -> None:
    assert plan_cycle(snap()).primary_up is True
    assert plan_cycle(snap(raws=DOWN, failing_since=LONG_AGO)).primary_up is False
    assert plan_cycle(snap(target="c-1")).primary_up is None, "no verdict when resuming"
    assert plan_cycle(snap(raws=DOWN)).failing_since == NOW


def test_publish_roles_and_force() -> None:
    s = snap(raws={"c-0": primary(), "c-1": replica(), "c-2": None})
    step = plan_cycle(s)
    assert dict(step.roles) == {"c-0": "primary", "c-1": "replica", "c-2": "unavailable"}
    assert step.force is False
    assert plan_cycle(replace(s, since_write=5.01)).force is True
    assert plan_cycle(replace(s, since_write=5.0)).force is False


def test_publish_carries_the_sync_snapshot_of_a_synchronous_primary() -> None:
    spec = {"synchronous": {"method": "any", "number": 1},
            "failover": {"detectionDelaySeconds": 5}}
    raw = primary(sync={"standby_names": "ANY 1 (c-1, c-2)",
                        "standbys": [{"name": "c-1", "sync_state": "quorum"}]})
    step = plan_cycle(snap(spec=spec, raws={"c-0": raw, "c-1": replica(),
                                           "c-2": replica()}))
    assert step.kind is HaStepKind.PUBLISH
    # sync_snapshot decides the content (tested in test_ha_core); the planner passes it on.
    from ringkeeper.core.ha import sync_snapshot
    assert step.sync == sync_snapshot(spec, "c", "c-0", raw)


CRASHED = {"c-0": {"crashed": True, "server": {"running": False}}, "c-1": replica(),
           "c-2": replica()}


@pytest.mark.parametrize(("s", "after", "why"), [
    (snap(raws=CRASHED), AfterRefusal.RESTART_IN_PLACE, "holds every commit"),
    (snap(raws=CRASHED, addressed=frozenset({"c-1", "c-2"})), AfterRefusal.MARK_FAILED,
     "no address"),
    (snap(raws=DOWN), AfterRefusal.MARK_FAILED, "did not report a crash"),
    (snap(raws={**DOWN, "c-0": {"server": {"running": False}}}), AfterRefusal.MARK_FAILED,
     "did not report a crash"),
], ids=["crashed", "crashed-no-ip", "unreachable", "down-not-crashed"])
def test_after_refused_failover(s: CampusSnapshot, after: AfterRefusal, why: str) -> None:
    got, reason = after_refused_failover(s)
    assert got is after and why in reason


def test_role_after_refusal_keeps_the_old_primary_writable() -> None:
    for planned, what in ((False, "failover"), (True, "switchover")):
        role, why = role_after_refusal("c-0", planned)
        assert role == "primary" and why.startswith(f"{what} refused: c-0")


def rep(name: str, lsn: int | None, **kw: Any) -> InstanceReport:
    return InstanceReport(name=name, received_lsn=lsn, **kw)


@pytest.mark.parametrize(("reports", "candidate", "reason"), [
    ([rep("c-1", 100), rep("c-2", 100)], "c-1", ElectionReason.SWITCHOVER_CAUGHT_UP),
    ([rep("c-1", 100), rep("c-2", 50)], "c-1", ElectionReason.SWITCHOVER_CAUGHT_UP),
    ([rep("c-1", 50), rep("c-2", 100)], None, ElectionReason.SWITCHOVER_TARGET_BEHIND),
    ([rep("c-1", 50), rep("c-2", 100, reachable=False)], "c-1",
     ElectionReason.SWITCHOVER_CAUGHT_UP),
    ([rep("c-1", 100, reachable=False), rep("c-2", 50)], None,
     ElectionReason.SWITCHOVER_TARGET_UNREACHABLE),
    ([rep("c-1", 100, server_running=False), rep("c-2", 50)], None,
     ElectionReason.SWITCHOVER_TARGET_UNREACHABLE),
    ([rep("c-2", 50)], None, ElectionReason.SWITCHOVER_TARGET_UNREACHABLE),
], ids=["equal", "ahead", "behind", "other-unreachable", "target-unreachable",
        "target-stopped", "target-missing"])
def test_choose_switchover(reports: list[InstanceReport], candidate: str | None,
                           reason: ElectionReason) -> None:
    e = choose_switchover("c-1", reports, "c-0")
    assert (e.candidate, e.reason) == (candidate, reason)
    assert "c-1" in e.message


ALL_READY = {"c-0": True, "c-1": True, "c-2": True}
ROLES = {"c-0": "primary", "c-1": "replica", "c-2": "replica"}

PHASES = [
    # (id, current, roles, ready, phase, reason, degraded reason, message fragment)
    ("settled", "c-0", ROLES, ALL_READY, CampusPhase.READY, PhaseReason.ALL_READY,
     "AllServing", "3/3 instances ready"),
    ("a-pod-not-ready", "c-0", ROLES, {**ALL_READY, "c-2": False}, CampusPhase.DEGRADED,
     PhaseReason.NOT_ALL_READY, "InstancesNotReady", "2/3 instances ready"),
    ("a-pod-missing", "c-0", ROLES, {"c-0": True, "c-1": True}, CampusPhase.DEGRADED,
     PhaseReason.NOT_ALL_READY, "InstancesNotReady", "2/3 instances ready"),
    # An agent that does not answer keeps the old rule: its pod's readiness decides.
    ("a-replica-unknown-pod-ready", "c-0", {**ROLES, "c-2": "unknown"}, ALL_READY,
     CampusPhase.READY, PhaseReason.ALL_READY, "AllServing", "3/3"),
    ("no-primary-yet", None, {"c-0": "unknown"}, {"c-0": True}, CampusPhase.INITIALIZING,
     PhaseReason.NOT_ALL_READY, "AllServing", "1/3 instances ready"),
    # The CI failure: every pod ready (lab-0's probe still passed) while the former
    # primary reported primary beside the new one.
    ("former-primary-still-primary", "c-1", {"c-0": "primary", "c-1": "primary",
                                            "c-2": "replica"}, ALL_READY,
     CampusPhase.DEGRADED, PhaseReason.STRAY_PRIMARY, "StrayPrimary",
     "c-0 still runs as a primary beside currentPrimary c-1; its agent steps it down"),
    ("two-strays", "c-1", {"c-0": "primary", "c-1": "primary", "c-2": "primary"},
     ALL_READY, CampusPhase.DEGRADED, PhaseReason.STRAY_PRIMARY, "StrayPrimary",
     "c-0, c-2 still run as primaries"),
    ("stray-and-a-pod-down", "c-1", {"c-0": "primary", "c-1": "primary"},
     {**ALL_READY, "c-2": False}, CampusPhase.DEGRADED, PhaseReason.STRAY_PRIMARY,
     "StrayPrimary", "(2/3 instances ready)"),
    ("stray-and-current-not-primary", "c-1", {**ROLES, "c-1": "fenced"}, ALL_READY,
     CampusPhase.DEGRADED, PhaseReason.STRAY_PRIMARY, "StrayPrimary", "c-0 still runs"),
    ("current-reports-replica", "c-0", {**ROLES, "c-0": "replica"}, ALL_READY,
     CampusPhase.DEGRADED, PhaseReason.PRIMARY_NOT_SERVING, "PrimaryNotServing",
     "currentPrimary c-0 reports role replica"),
    ("current-reports-nothing", "c-0", {"c-1": "replica", "c-2": "replica"}, ALL_READY,
     CampusPhase.DEGRADED, PhaseReason.PRIMARY_NOT_SERVING, "PrimaryNotServing",
     "reports role nothing"),
    ("fenced-former-primary-is-not-a-stray", "c-1", {"c-0": "fenced", "c-1": "primary",
                                                    "c-2": "replica"}, ALL_READY,
     CampusPhase.READY, PhaseReason.ALL_READY, "AllServing", "3/3"),
]


@pytest.mark.parametrize(("current", "roles", "ready", "phase", "reason", "degraded", "why"),
                         [pytest.param(*row[1:], id=row[0]) for row in PHASES])
def test_campus_phase(current: str | None, roles: dict[str, str], ready: dict[str, bool],
                      phase: CampusPhase, reason: PhaseReason, degraded: str, why: str) -> None:
    verdict = campus_phase(NAMES, current, roles, ready)
    assert (verdict.phase, verdict.reason, verdict.degraded_reason) == (
        phase, reason, degraded), verdict
    assert why in verdict.message, verdict.message


def test_ready_only_when_the_roles_agree_with_current_primary() -> None:
    """Over every role assignment with all pods ready: Ready exactly when currentPrimary
    reports primary and no other instance does."""
    import itertools

    kinds = ("primary", "replica", "fenced", "unknown", None)
    for combo in itertools.product(kinds, repeat=len(NAMES)):
        roles = dict(zip(NAMES, combo, strict=True))
        verdict = campus_phase(NAMES, "c-1", roles, ALL_READY)
        agree = roles["c-1"] == "primary" and combo.count("primary") == 1
        assert (verdict.phase is CampusPhase.READY) == agree, roles
