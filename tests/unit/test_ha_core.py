"""core.ha: agent reports, the primary's verdict, the synchronous snapshot and status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ringkeeper.core.election import InstanceReport, SyncSnapshot
from ringkeeper.core.ha import (
    PrimaryState,
    instances_status,
    primary_verdict,
    snapshot_from_status,
    snapshot_to_status,
    sync_snapshot,
    to_report,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DELAY = 30.0

# -- builders ---------------------------------------------------------------------------


def agent_status(name: str, role: str = "replica", *, fenced: bool = False,
                 running: bool = True, in_recovery: bool | None = True,
                 receive_lsn: str | None = "0/3000060", replay_lsn: str | None = "0/3000060",
                 current_lsn: str | None = None, timeline: int | None = 1,
                 receiver: str | None = "streaming", standbys: list[dict[str, Any]] | None = None,
                 error: str | None = None) -> dict[str, Any]:
    """An agent's /api/status answer, shaped as the agent serves it."""
    server: dict[str, Any] = {"running": running, "in_recovery": in_recovery,
                              "receive_lsn": receive_lsn, "replay_lsn": replay_lsn,
                              "current_lsn": current_lsn, "timeline": timeline,
                              "receiver": receiver}
    if standbys is not None:
        server["standbys"] = standbys
    if error is not None:
        server["error"] = error
    return {"name": name, "role": role, "fenced": fenced, "server": server}


def primary_status(name: str, current_lsn: str = "0/5000000",
                   standbys: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return agent_status(name, "primary", in_recovery=False, current_lsn=current_lsn,
                        receive_lsn=None, replay_lsn=None, receiver=None,
                        standbys=standbys if standbys is not None else [], **kw)


def standby_row(name: str, sync_state: str = "quorum", state: str = "streaming"
                ) -> dict[str, Any]:
    return {"application_name": name, "state": state, "sync_state": sync_state,
            "client_addr": "10.0.0.9", "flush_lsn": "0/5000000"}


def spec(instances: int = 3, method: str = "any", number: int = 1) -> dict[str, Any]:
    return {"instances": instances, "synchronous": {"method": method, "number": number}}


def primary_report(**kw: Any) -> InstanceReport:
    """A healthy primary unless told otherwise."""
    base: dict[str, Any] = {"name": "c-0", "in_recovery": False, "current_lsn": 0x5000000}
    base.update(kw)
    return InstanceReport(**base)


# -- to_report --------------------------------------------------------------------------

def test_to_report_replica() -> None:
    rep = to_report("c-1", agent_status("c-1"))
    assert rep == InstanceReport(
        name="c-1", reachable=True, server_running=True, in_recovery=True, fenced=False,
        timeline=1, current_lsn=None, received_lsn=0x3000060, replayed_lsn=0x3000060,
        receiver_active=True)
    assert rep.position == 0x3000060


def test_to_report_primary() -> None:
    rep = to_report("c-0", primary_status("c-0", current_lsn="16/B374D848"))
    assert rep.healthy_primary
    assert rep.in_recovery is False
    assert rep.current_lsn == (0x16 << 32) | 0xB374D848
    assert rep.received_lsn is None
    assert rep.receiver_active is False


def test_to_report_unreachable() -> None:
    rep = to_report("c-2", None)
    assert rep == InstanceReport(name="c-2", reachable=False, server_running=False)
    assert rep.position == -1
    assert not rep.healthy_primary


@pytest.mark.parametrize(("raw", "field", "value"), [
    pytest.param(agent_status("c-1", running=False), "server_running", False,
                 id="server-not-running"),
    pytest.param(agent_status("c-1", error="connection refused"), "server_running", False,
                 id="server-error-counts-as-down"),
    pytest.param({"name": "c-1", "role": "unknown", "fenced": False}, "server_running", False,
                 id="no-server-block"),
    pytest.param(agent_status("c-1", fenced=True), "fenced", True, id="fenced"),
    pytest.param(agent_status("c-1", receiver=None), "receiver_active", False,
                 id="receiver-stopped"),
    pytest.param(agent_status("c-1", receiver="waiting"), "receiver_active", True,
                 id="receiver-waiting-still-active"),
    pytest.param(agent_status("c-1", in_recovery=None), "in_recovery", True,
                 id="unknown-recovery-counts-as-recovery"),
    pytest.param(agent_status("c-1", receive_lsn=None, replay_lsn="0/10"), "received_lsn",
                 None, id="no-receive-lsn"),
    pytest.param(agent_status("c-1", timeline=7), "timeline", 7, id="timeline"),
])
def test_to_report_fields(raw: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(to_report("c-1", raw), field) == value


def test_to_report_bad_lsn_raises() -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        to_report("c-1", agent_status("c-1", receive_lsn="nonsense"))


# -- primary_verdict --------------------------------------------------------------------

def test_no_primary_is_none() -> None:
    v = primary_verdict(None, None, pod_ready=False, failing_since=T0, now=T0,
                        detection_delay=DELAY)
    assert (v.state, v.failing_since, v.reason) == (PrimaryState.NONE, None, "no primary yet")


def test_healthy_primary_clears_failing_since() -> None:
    v = primary_verdict("c-0", primary_report(), pod_ready=True,
                        failing_since=T0 - timedelta(hours=1), now=T0, detection_delay=DELAY)
    assert (v.state, v.failing_since, v.reason) == (PrimaryState.HEALTHY, None, "primary serving")


FAILURES = [
    pytest.param(None, True, "agent of c-0 unreachable", id="no-report"),
    pytest.param(InstanceReport(name="c-0", reachable=False, server_running=False), True,
                 "agent of c-0 unreachable", id="unreachable"),
    pytest.param(primary_report(server_running=False), True, "server of c-0 down",
                 id="server-down"),
    pytest.param(primary_report(fenced=True), True, "c-0 fenced", id="fenced"),
    pytest.param(primary_report(in_recovery=True), True, "c-0 is in recovery",
                 id="in-recovery"),
    pytest.param(primary_report(), False, "pod c-0 not ready", id="pod-not-ready"),
    pytest.param(primary_report(server_running=False, fenced=True), True, "server of c-0 down",
                 id="down-reported-before-fenced"),
]


@pytest.mark.parametrize(("report", "pod_ready", "reason"), FAILURES)
def test_first_failure_is_suspect_since_now(report: InstanceReport | None, pod_ready: bool,
                                            reason: str) -> None:
    v = primary_verdict("c-0", report, pod_ready, failing_since=None, now=T0,
                        detection_delay=DELAY)
    assert (v.state, v.failing_since, v.reason) == (PrimaryState.SUSPECT, T0, reason)


@pytest.mark.parametrize(("report", "pod_ready", "reason"), FAILURES)
@pytest.mark.parametrize(("elapsed", "state"), [
    pytest.param(0.0, PrimaryState.SUSPECT, id="just-started"),
    pytest.param(DELAY - 0.001, PrimaryState.SUSPECT, id="just-before-delay"),
    pytest.param(DELAY, PrimaryState.FAILED, id="exactly-delay"),
    pytest.param(DELAY * 10, PrimaryState.FAILED, id="long-after"),
])
def test_failure_becomes_failed_after_detection_delay(
        report: InstanceReport | None, pod_ready: bool, reason: str, elapsed: float,
        state: PrimaryState) -> None:
    since = T0 - timedelta(seconds=elapsed)
    v = primary_verdict("c-0", report, pod_ready, failing_since=since, now=T0,
                        detection_delay=DELAY)
    assert (v.state, v.failing_since, v.reason) == (state, since, reason)


def test_zero_detection_delay_fails_at_once() -> None:
    v = primary_verdict("c-0", None, True, failing_since=None, now=T0, detection_delay=0)
    assert (v.state, v.failing_since) == (PrimaryState.FAILED, T0)


# -- sync_snapshot ----------------------------------------------------------------------

def test_sync_snapshot_any_quorum() -> None:
    raw = primary_status("c-0", current_lsn="0/5000000", standbys=[
        standby_row("c-2", "quorum"),
        standby_row("c-1", "quorum"),
        standby_row("c-3", "quorum", state="catchup"),
        standby_row("c-4", "async"),
        standby_row("c-5", "potential"),
    ])
    snap = sync_snapshot(spec(instances=6, number=2), "c", "c-0", raw)
    assert snap == SyncSnapshot(method="any", number=2,
                                standbys=("c-1", "c-2", "c-3", "c-4", "c-5"),
                                confirming=("c-1", "c-2"), primary_lsn=0x5000000)


def test_sync_snapshot_first_primary_not_first_instance() -> None:
    raw = primary_status("c-1", current_lsn="1/10", standbys=[
        standby_row("c-0", "sync"), standby_row("c-2", "potential")])
    snap = sync_snapshot(spec(instances=3, method="first", number=1), "c", "c-1", raw)
    assert snap == SyncSnapshot(method="first", number=1, standbys=("c-0", "c-2"),
                                confirming=("c-0",), primary_lsn=(1 << 32) | 0x10)


@pytest.mark.parametrize(("instances", "number", "expected"), [
    pytest.param(3, 5, 2, id="capped-at-standbys"),
    pytest.param(3, 2, 2, id="at-standbys"),
    pytest.param(3, 0, 0, id="asynchronous"),
    pytest.param(1, 1, 0, id="single-instance-has-no-standbys"),
])
def test_sync_snapshot_number(instances: int, number: int, expected: int) -> None:
    snap = sync_snapshot(spec(instances=instances, number=number), "c", "c-0",
                         primary_status("c-0"))
    assert snap is not None
    assert snap.number == expected
    assert len(snap.standbys) == instances - 1


def test_sync_snapshot_defaults() -> None:
    # An empty spec is the model's defaults: three instances, ANY 1.
    snap = sync_snapshot({}, "c", "c-0", primary_status("c-0", standbys=[]))
    assert snap == SyncSnapshot(method="any", number=1, standbys=("c-1", "c-2"),
                                confirming=(), primary_lsn=0x5000000)


def test_sync_snapshot_without_standbys_rows_or_lsn() -> None:
    raw = {"name": "c-0", "role": "primary", "fenced": False,
           "server": {"running": True, "in_recovery": False}}
    snap = sync_snapshot(spec(instances=2), "c", "c-0", raw)
    assert snap == SyncSnapshot(method="any", number=1, standbys=("c-1",), confirming=(),
                                primary_lsn=None)


def test_sync_snapshot_of_unreachable_primary_is_none() -> None:
    assert sync_snapshot(spec(), "c", "c-0", None) is None


# -- snapshot status round trip ---------------------------------------------------------

@pytest.mark.parametrize("snap", [
    pytest.param(SyncSnapshot("any", 2, ("c-1", "c-2", "c-3"), ("c-1", "c-3"),
                              primary_lsn=(0xFFFFFFFF << 32) | 0xFFFFFFFF), id="any-max-lsn"),
    pytest.param(SyncSnapshot("first", 1, ("c-0", "c-2"), ("c-0",), primary_lsn=0),
                 id="first-zero-lsn"),
    pytest.param(SyncSnapshot("any", 1, ("c-1",), (), primary_lsn=None), id="no-lsn"),
])
def test_snapshot_status_round_trip(snap: SyncSnapshot) -> None:
    status = snapshot_to_status(snap)
    assert snapshot_from_status(status) == snap


def test_snapshot_to_status_shape() -> None:
    status = snapshot_to_status(SyncSnapshot("any", 2, ("c-1", "c-2"), ("c-2",),
                                             primary_lsn=(0x16 << 32) | 0xB374D848))
    assert status == {"method": "any", "number": 2, "standbys": ["c-1", "c-2"],
                      "confirming": ["c-2"], "primaryLsn": "97500059720"}
    assert status["primaryLsn"] == str((0x16 << 32) | 0xB374D848)


@pytest.mark.parametrize(("status", "expected"), [
    pytest.param(None, None, id="none"),
    pytest.param({}, None, id="empty"),
    pytest.param({"standbys": ["c-1"]}, SyncSnapshot("any", 0, ("c-1",), (), None),
                 id="defaults-number-0"),
    pytest.param({"method": "first", "number": "1", "standbys": ["c-1"], "primaryLsn": ""},
                 SyncSnapshot("first", 1, ("c-1",), (), None), id="empty-lsn-and-string-number"),
])
def test_snapshot_from_status(status: dict[str, Any] | None,
                              expected: SyncSnapshot | None) -> None:
    assert snapshot_from_status(status) == expected


# -- instances_status -------------------------------------------------------------------

def test_instances_status() -> None:
    primary = primary_status("c-0", current_lsn="0/5000000", standbys=[
        standby_row("c-1", "quorum"), standby_row("c-2", "async", state="catchup")])
    raws = {
        "c-0": primary,
        "c-1": agent_status("c-1", receive_lsn="0/4FFFF00", replay_lsn="0/4FFF000"),
        "c-2": agent_status("c-2", receive_lsn="0/5000000", replay_lsn=None, timeline=None),
        "c-3": None,
    }
    out = instances_status(
        ["c-0", "c-1", "c-2", "c-3"], raws,
        pod_ips={"c-0": "10.0.0.10", "c-1": "10.0.0.11", "c-3": "10.0.0.13"},
        ready={"c-0": True, "c-1": True, "c-2": False}, primary_raw=primary)
    assert out == [
        {"name": "c-0", "role": "primary", "ready": True, "podIP": "10.0.0.10",
         "timeline": 1, "currentLsn": "0/5000000"},
        {"name": "c-1", "role": "replica", "ready": True, "podIP": "10.0.0.11",
         "timeline": 1, "receivedLsn": "0/4FFFF00", "replayedLsn": "0/4FFF000",
         "lagBytes": 0x5000000 - 0x4FFF000,  # measured from what was replayed
         "syncState": "quorum"},
        {"name": "c-2", "role": "replica", "ready": False, "receivedLsn": "0/5000000",
         "lagBytes": 0,  # no replay position: falls back to the received one
         "syncState": "async"},
        {"name": "c-3", "role": "unknown", "ready": False, "podIP": "10.0.0.13"},
    ]


def test_instances_status_lag_never_negative() -> None:
    primary = primary_status("c-0", current_lsn="0/100")
    raws = {"c-1": agent_status("c-1", receive_lsn="0/200", replay_lsn="0/200")}
    out = instances_status(["c-1"], raws, {}, {}, primary_raw=primary)
    assert out[0]["lagBytes"] == 0


def test_instances_status_without_primary_has_no_lag_or_sync_state() -> None:
    raws = {"c-1": agent_status("c-1"), "c-2": agent_status("c-2")}
    out = instances_status(["c-1", "c-2"], raws, {}, {"c-1": True}, primary_raw=None)
    assert out == [
        {"name": "c-1", "role": "replica", "ready": True, "timeline": 1,
         "receivedLsn": "0/3000060", "replayedLsn": "0/3000060"},
        {"name": "c-2", "role": "replica", "ready": False, "timeline": 1,
         "receivedLsn": "0/3000060", "replayedLsn": "0/3000060"},
    ]


def test_instances_status_keeps_names_order_and_missing_raws() -> None:
    out = instances_status(["c-2", "c-0"], {}, {}, {}, primary_raw=None)
    assert out == [{"name": "c-2", "role": "unknown", "ready": False},
                   {"name": "c-0", "role": "unknown", "ready": False}]
