"""The Satellite partition drill's pure decisions (core.drill_satellite and its rows in
core.drill.plan): refusals, waits, the satellite's RTO as its longest write gap, the
convergence read from its status, and the lost count, which must fail on a dropped row."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.api.v1alpha1.drill import Scenario, TargetKind
from ringkeeper.api.v1alpha1.satellite import RowFilter
from ringkeeper.core.drill import (
    DrillAction,
    DrillCampus,
    DrillReason,
    Measured,
    Snapshot,
    Stage,
    plan,
)
from ringkeeper.core.drill_faults import partition_policy
from ringkeeper.core.drill_satellite import (
    DRILL_QUALIFIED,
    SatelliteTarget,
    SatReason,
    longest_gap,
    satellite_converged,
    satellite_lost,
)
from ringkeeper.core.manifests import CAMPUS_LABEL, SATELLITE_LABEL
from ringkeeper.core.satellite import filter_sql

NOW = datetime(2026, 12, 6, 3, 0, 30, tzinfo=UTC)
PARENT = DrillCampus("fy", True, "fy-0")
SAT = SatelliteTarget(name="xd", parent="fy", parent_exists=True, parent_rings=("lis",),
                      tables=("lis.samples", DRILL_QUALIFIED), ready=True, converged=True)
BASE = Snapshot(scenario=Scenario.NETWORK_PARTITION, target_kind=TargetKind.SATELLITE,
                target_exists=True, campuses=(PARENT,), other_running=None, now=NOW,
                max_rto_seconds=30, max_lost=0, load_seconds=40, satellite=SAT)
LIVE = replace(BASE, phase_running=True, runs=1, stage=Stage.FAULTED, recovered=True,
               started_at=NOW - timedelta(seconds=30), fault_at=NOW - timedelta(seconds=25))
HEALED = replace(LIVE, healed=True, healed_at=NOW - timedelta(seconds=4), load_done=True)
GOOD = Measured(rto_seconds=0.4, lost=0, committed=900, converge_seconds=3.0)

PLAN_CASES = [
    ("ready and streaming", BASE, DrillAction.START, DrillReason.DUE),
    ("satellite missing", replace(BASE, target_exists=False, campuses=(), satellite=None),
     DrillAction.REFUSE, DrillReason.TARGET_MISSING),
    ("parent missing", replace(BASE, campuses=(), satellite=replace(
        SAT, parent_exists=False, parent_rings=())), DrillAction.REFUSE,
     SatReason.PARENT_MISSING),
    ("parent in no ring", replace(BASE, satellite=replace(SAT, parent_rings=())),
     DrillAction.REFUSE, SatReason.PARENT_NOT_IN_RING),
    ("drill table not kept", replace(BASE, satellite=replace(SAT, tables=("lis.samples",))),
     DrillAction.REFUSE, SatReason.DRILL_TABLE_NOT_KEPT),
    ("satellite spec invalid (admission bypassed)", replace(BASE, campuses=(), satellite=(
        SatelliteTarget(name="xd", parent="", parent_exists=False, parent_rings=(), tables=(),
                        invalid="parentRef.name: Required value"))),
     DrillAction.REFUSE, SatReason.SATELLITE_INVALID),
    ("too frequent", replace(BASE, schedule="*/5 * * * *"), DrillAction.REFUSE,
     DrillReason.SCHEDULE_TOO_FREQUENT),
    ("satellite not ready", replace(BASE, satellite=replace(SAT, ready=False)),
     DrillAction.WAIT, DrillReason.TARGET_NOT_READY),
    ("satellite not streaming", replace(BASE, satellite=replace(SAT, converged=False)),
     DrillAction.WAIT, DrillReason.TARGET_NOT_READY),
    ("parent not ready", replace(BASE, campuses=(replace(PARENT, ready=False),)),
     DrillAction.WAIT, DrillReason.TARGET_NOT_READY),
    ("busy", replace(BASE, other_running="other"), DrillAction.WAIT, DrillReason.TARGET_BUSY),
    ("hold over: heal", LIVE, DrillAction.HEAL, DrillReason.PARTITION_OVER),
    ("healed, not converged", HEALED, DrillAction.WAIT, DrillReason.CONVERGING),
    ("healed and converged", replace(HEALED, converged=True), DrillAction.VERIFY,
     DrillReason.LOAD_DONE),
    ("never converged: judged", replace(HEALED, healed_at=NOW - timedelta(seconds=40)),
     DrillAction.VERIFY, DrillReason.LOAD_DONE),
    ("measured, passed", replace(HEALED, stage=Stage.VERIFIED, converged=True, measured=GOOD),
     DrillAction.FINISH, DrillReason.PASSED),
    ("measured, not converged", replace(HEALED, stage=Stage.VERIFIED, measured=replace(
        GOOD, converge_seconds=None)), DrillAction.FINISH, DrillReason.NOT_CONVERGED),
    ("measured, a commit lost", replace(HEALED, stage=Stage.VERIFIED, converged=True,
                                        measured=replace(GOOD, lost=1)),
     DrillAction.FINISH, DrillReason.TRANSACTIONS_LOST),
    ("measured, satellite stopped writing", replace(
        HEALED, stage=Stage.VERIFIED, converged=True, measured=replace(
            GOOD, rto_seconds=None)), DrillAction.FINISH, DrillReason.RTO_EXCEEDED),
]


@pytest.mark.parametrize(("name", "snap", "action", "reason"), PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])
def test_plan(name: str, snap: Snapshot, action: DrillAction, reason: str) -> None:
    step = plan(snap)
    assert (step.action, step.reason) == (action, reason), step


def test_refusals_say_what_to_do() -> None:
    step = plan(replace(BASE, satellite=replace(SAT, tables=("lis.samples",))))
    assert DRILL_QUALIFIED in step.message and "spec.tables" in step.message
    step = plan(replace(BASE, satellite=replace(SAT, parent_rings=())))
    assert "fy" in step.message and "ReplicationRing" in step.message
    not_converged = plan(replace(HEALED, stage=Stage.VERIFIED, measured=replace(
        GOOD, converge_seconds=None)))
    assert "Satellite" in not_converged.message and not not_converged.passed


GAPS = [
    ("steady writes", [1.0, 1.5, 2.0, 2.5], 1.0, 3.0, 0.5),
    ("a stall in the middle", [1.1, 1.2, 4.2, 4.3], 1.0, 5.0, 3.0),
    ("first write late", [2.5, 2.6], 1.0, 3.0, 1.5),
    ("stopped before the heal", [1.1, 1.2], 1.0, 6.0, 4.8),
    ("acks outside the window ignored", [0.1, 1.5, 9.0], 1.0, 2.0, 0.5),
    ("none in the window", [0.1, 9.0], 1.0, 2.0, None),
]


@pytest.mark.parametrize(("name", "acks", "start", "end", "want"), GAPS,
                         ids=[g[0] for g in GAPS])
def test_longest_gap(name: str, acks: list[float], start: float, end: float,
                     want: float | None) -> None:
    got = longest_gap(acks, start, end)
    assert got == pytest.approx(want) if want is not None else got is None


def _status(connected: bool = True, backlog: int | None = 0, status: str = "True",
            reason: str = "BothWays") -> dict[str, object]:
    return {"connected": connected, "backlogRows": backlog, "conditions": [
        {"type": "Ready", "status": "True", "reason": "InstanceReady"},
        {"type": "Streaming", "status": status, "reason": reason}]}


@pytest.mark.parametrize(("status", "want"), [
    (_status(), True),
    (_status(connected=False), False),
    (_status(backlog=3), False),
    (_status(backlog=None), False),
    (_status(status="False", reason="UpLinkStopped"), False),
    (_status(reason="CatchingUp"), False),
    ({"connected": True, "backlogRows": 0}, False),
    ({}, False),
    (None, False),
])
def test_converged(status: dict[str, object] | None, want: bool) -> None:
    assert satellite_converged(status) is want


SAT_ACKED = {1: frozenset({0}), 2: frozenset({3}), 3: frozenset({1, 2})}  # 3: in doubt
PAR_ACKED = {10: frozenset({0}), 11: frozenset({2}), 12: frozenset({0})}
SELECTED = {10, 11}  # the filter keeps 10 and 11 for the satellite, not 12
WHOLE_SAT = {1: 0, 2: 3, 3: 2, 10: 0, 11: 2}
WHOLE_PAR = {1: 0, 2: 3, 3: 1, 10: 0, 11: 2, 12: 0}


def test_nothing_lost_when_every_row_is_where_it_belongs() -> None:
    loss = satellite_lost(SAT_ACKED, PAR_ACKED, WHOLE_SAT, WHOLE_PAR, SELECTED)
    assert loss.lost == 0 and loss.as_dict()["parentRowsAtSatellite"]["checked"] == 2
    assert loss.as_dict()["satelliteRowsAtParent"]["checked"] == 3


@pytest.mark.parametrize(("name", "at_sat", "at_par", "lost", "where"), [
    ("satellite row dropped at the parent", WHOLE_SAT, {**WHOLE_PAR, 1: None},
     1, "satelliteRowsAtParent"),
    ("satellite row stale at the parent", WHOLE_SAT, {**WHOLE_PAR, 2: 2},
     1, "satelliteRowsAtParent"),
    ("satellite row gone at the satellite", {**WHOLE_SAT, 2: None}, WHOLE_PAR,
     1, "satelliteRowsAtSatellite"),
    ("selected parent row missing at the satellite", {**WHOLE_SAT, 11: None}, WHOLE_PAR,
     1, "parentRowsAtSatellite"),
    ("parent row dropped at the parent", WHOLE_SAT, {**WHOLE_PAR, 12: None},
     1, "parentRowsAtParent"),
    ("one commit missing at both sides counts once", {**WHOLE_SAT, 1: None},
     {**WHOLE_PAR, 1: None}, 1, "satelliteRowsAtParent"),
])
def test_a_dropped_row_is_lost(name: str, at_sat: dict[int, int | None],
                               at_par: dict[int, int | None], lost: int, where: str) -> None:
    """The check can fail: each dropped or stale row is a lost commit."""
    loss = satellite_lost(SAT_ACKED, PAR_ACKED,
                          {k: v for k, v in at_sat.items() if v is not None},
                          {k: v for k, v in at_par.items() if v is not None}, SELECTED)
    assert loss.lost == lost and loss.as_dict()[where]["lost"] >= 1, loss.as_dict()


def test_unselected_parent_row_is_not_owed_but_reported_when_leaked() -> None:
    absent = satellite_lost(SAT_ACKED, PAR_ACKED, WHOLE_SAT, WHOLE_PAR, SELECTED)
    assert absent.lost == 0 and absent.parent_at_satellite.leaked == ()
    leaked = satellite_lost(SAT_ACKED, PAR_ACKED, {**WHOLE_SAT, 12: 0}, WHOLE_PAR, SELECTED)
    assert leaked.lost == 0 and leaked.parent_at_satellite.leaked == (12,)


def test_the_filter_is_rendered_from_the_typed_row_filter() -> None:
    f = RowFilter.model_validate({"all": [{"column": "site", "op": "In",
                                            "values": ["xd", "x'); DROP TABLE t; --"]}]})
    assert filter_sql(f) == "(\"site\" IN ('xd', 'x''); DROP TABLE t; --'))"


def test_partition_selects_the_satellite_pod_and_refuses_the_parent() -> None:
    body = partition_policy("d", "uid", "ns", "xd", "fy", ("10.0.0.7",), CAMPUS_LABEL,
                            select_label=SATELLITE_LABEL)
    spec: dict[str, object] = body["spec"]  # type: ignore[assignment]
    assert spec["podSelector"] == {"matchLabels": {SATELLITE_LABEL: "xd"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    peers = spec["ingress"][0]["from"]  # type: ignore[index]
    assert peers == spec["egress"][0]["to"]  # type: ignore[index]
    assert peers[0]["podSelector"]["matchExpressions"] == [
        {"key": CAMPUS_LABEL, "operator": "NotIn", "values": ["fy"]}]
    assert peers[1]["ipBlock"]["except"] == ["10.0.0.7/32"]


def test_report_names_the_satellite_and_its_four_checks() -> None:
    from ringkeeper.controller.drill_report import report

    loss = satellite_lost(SAT_ACKED, PAR_ACKED, WHOLE_SAT, {**WHOLE_PAR, 1: 5}, SELECTED)
    run = {"result": "Failed", "rtoSeconds": 0.2, "lostTransactions": loss.lost,
           "lostRows": loss.lost, "committedTransactions": 6, "reason": "TransactionsLost"}
    md = report("cut", BASE, run, [], {"satelliteRtoSeconds": 0.2}, loss.as_dict())["report.md"]
    assert "against Satellite xd (parent fy)" in md
    assert "## Satellite ledger check" in md and '"lostKeys": [1]' in md
    for side in ("satelliteRowsAtSatellite", "satelliteRowsAtParent", "parentRowsAtParent",
                 "parentRowsAtSatellite"):
        assert f"- {side}: " in md


async def test_a_satellite_spec_past_admission_is_a_refusal_not_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Satellite whose spec does not validate (admission off, an older CRD) is read as
    a target refused with SatelliteInvalid, naming the field; it does not raise on every
    cycle of the Drill's loop."""
    from ringkeeper.controller import drill_sat
    from ringkeeper.core.drill_satellite import satellite_refusal

    async def read_custom(api: object, ns: str, plural: str, name: str) -> dict[str, object]:
        assert (plural, name) == ("satellites", "xd")
        return {"spec": {"parentRef": {"name": "fy\n; DROP"}, "tables": "lis.samples"}}

    monkeypatch.setattr(drill_sat.resources, "read_custom", read_custom)
    exists, campuses, target = await drill_sat.read_satellite(object(), "ns", "xd")  # type: ignore[arg-type]
    assert exists and campuses == () and target is not None
    refused = satellite_refusal(target)
    assert refused is not None and refused[0] == SatReason.SATELLITE_INVALID
    assert "parentRef.name" in refused[1] and "tables" in refused[1]
    assert "\n" not in refused[1]
