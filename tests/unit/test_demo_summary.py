"""The demo's closing summary (tools/devcluster demosummary.summarize): every figure it
prints comes from the objects read back, and each kind of failure (a drill that failed,
a ring or satellite drill that failed or whose convergence is missing, a lost commit or
row, a lost count never measured, a link not streaming, a failed or missing verification, a
satellite that lost or misplaced a row, did not stream, has a backlog, is gone or
differs from its parent) makes it say FAILED and the demo exit 1. A Satellite drill's
struck names hold the satellite, which is no Campus: it is shown as a satellite, never as
a removed campus."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core.verify import KeyDifference
from ringkeeper.core.verify_report import (
    Report,
    SatelliteState,
    SatelliteTable,
    SatelliteVerification,
    TableReport,
)
from ringkeeper_devcluster.demosummary import Facts, summarize


def _drill(ns: str, name: str, kind: str, target: str, scenario: str,
           **run: Any) -> dict[str, Any]:
    last = {"result": "Passed", "reason": "Passed", "rtoSeconds": 4.25,
            "lostTransactions": 0, "lostRows": 0, "committedTransactions": 312, **run}
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"target": {"kind": kind, "name": target}, "scenario": scenario},
            "status": {"phase": last["result"], "lastRun": last}}


RING = {"metadata": {"namespace": "lis", "name": "lis-ring"},
        "spec": {"members": [{"name": m, "campusRef": {"name": m}} for m in ("fy", "xs")]},
        "status": {"links": [
            {"from": "fy", "to": "xs", "state": "Streaming", "lagSeconds": 0.12,
             "lagBytes": 0},
            {"from": "xs", "to": "fy", "state": "Streaming", "lagSeconds": 0.3,
             "lagBytes": 128}]}}


def _table(diffs: int, other: str) -> TableReport:
    return TableReport(table="lis.samples", key_columns=["id"], mode="full",
                       differences=[KeyDifference.model_validate(
                           {"table": "lis.samples", "key": [str(i)], "reference": "fy",
                            "missing_on": [other]}) for i in range(diffs)])


def _verify(diffs: int = 0, sat_diffs: int = 0,
            sat_state: SatelliteState = SatelliteState.COMPARED) -> Report:
    sat = SatelliteVerification(
        satellite="xd", parent="fy", state=sat_state,
        tables=[SatelliteTable(table="lis.samples", filter="(\"campus\" IN ('fy', 'xd'))",
                               compare=_table(sat_diffs, "xd"), outside_filter=0)]
        if sat_state is SatelliteState.COMPARED else [])
    return Report(mode="full", members=["fy", "xs"], reference="fy",
                  started_at=datetime(2026, 12, 1, tzinfo=UTC), tables=[_table(diffs, "xs")],
                  satellites=[sat])


SATELLITE = {"metadata": {"namespace": "lis", "name": "xd"},
             "spec": {"parentRef": {"name": "fy"}},
             "status": {"phase": "Online", "connected": True, "backlogRows": 0,
                        "currentPrimary": "xd-0",
                        "conditions": [{"type": "Streaming", "status": "True",
                                        "reason": "BothWays"}]}}
SAT_LEDGER = {"satellite": "xd", "namespace": "lis", "parent": "fy", "streamed": True,
              "join_seconds": 31.5, "lost": 0, "misplaced": 0, "acked_satellite": 240,
              "keys_satellite": 170, "keys_ring_inside": 90, "keys_ring_outside": 60,
              "first_problems": []}


def _facts() -> Facts:
    return Facts(
        drills=[_drill("demo", "kill-now", "Campus", "zhaohui", "primaryKill",
                       faultCampuses=["zhaohui"]),
                _drill("lis", "crash", "ReplicationRing", "lis-ring", "syncCrash",
                       rtoSeconds=1.05, committedTransactions=514, convergedSeconds=4.2,
                       faultCampuses=["fy"]),
                _drill("lis", "loss", "ReplicationRing", "lis-ring", "campusLoss",
                       rtoSeconds=0.11, committedTransactions=646, convergedSeconds=9.5,
                       faultCampuses=["fy"]),
                _drill("lis", "split", "ReplicationRing", "lis-ring", "networkPartition",
                       rtoSeconds=1.5, committedTransactions=120,
                       faultCampuses=["fy", "xs"]),
                _drill("lis", "satsplit", "Satellite", "xd", "networkPartition",
                       rtoSeconds=0.16, committedTransactions=230, convergedSeconds=36.2,
                       faultCampuses=["xd", "fy"])],
        campuses={("demo", "zhaohui"): None,
                  ("lis", "fy"): {"status": {"currentPrimary": "fy-1"}},
                  ("lis", "xs"): {"status": {"currentPrimary": "xs-1"}}},
        rings=[RING], satellites={("lis", "xd"): copy.deepcopy(SATELLITE)},
        satellite_ledgers={"xd": copy.deepcopy(SAT_LEDGER)}, verify=_verify(),
        verify_path="/tmp/v.json", pictures=["/tmp/kill.svg"])


def test_summary_of_a_good_demo() -> None:
    lines, problems = summarize(_facts())
    text = "\n".join(lines)
    print(text)
    assert problems == []
    assert "result: OK" in text
    kill = next(x for x in lines if x.strip().startswith("kill-now (primaryKill)"))
    assert kill.split()[2:] == ["demo", "zhaohui", "Passed", "4.25", "s", "0", "of", "312",
                                "0", "-"], kill
    crash = next(x for x in lines if x.strip().startswith("crash (syncCrash)"))
    assert crash.split()[2:] == ["lis", "fy", "Passed", "1.05", "s", "0", "of", "514", "0",
                                 "4.20", "s"], crash
    loss = next(x for x in lines if x.strip().startswith("loss (campusLoss)"))
    assert "0.11 s" in loss and "0 of 646" in loss and loss.endswith("9.50 s"), loss
    split = next(x for x in lines if x.strip().startswith("split (networkPartition)"))
    assert " fy,xs " in split and "1.50 s" in split and "0 of 120" in split, split
    # the satellite drill: struck the satellite and its parent, its convergence shown
    satsplit = next(x for x in lines if x.strip().startswith("satsplit (networkPartition)"))
    assert satsplit.split()[2:] == ["lis", "xd,fy", "Passed", "0.16", "s", "0", "of", "230",
                                    "0", "36.20", "s"], satsplit
    # per campus: its primary and the drills that struck it (zhaohui was removed)
    assert "(removed)" in next(x for x in lines if x.strip().startswith("zhaohui "))
    fy = next(x for x in lines if x.strip().startswith("fy "))
    assert fy.split()[1:] == ["lis", "fy-1", "crash,", "loss,", "split,", "satsplit"], fy
    # the satellite is no Campus (none read for it): shown as a satellite, not "(removed)"
    xd = next(x for x in lines if x.strip().startswith("xd "))
    assert xd.split()[1:] == ["lis", "xd-0", "(satellite)", "satsplit"], xd
    assert sum("(removed)" in x for x in lines) == 1
    xs = next(x for x in lines if x.strip().startswith("xs "))
    assert xs.split()[1:] == ["lis", "xs-1", "split"], xs
    assert any("xs -> fy" in x and "Streaming" in x and "0.30 s, 128 B" in x for x in lines)
    assert "verification: Passed: 1 table(s) compared at 2 members" in text
    # the satellite: its status, its ledger, its verification against its parent
    sat = lines.index("  satellite lis/xd (parent fy): connected true, phase Online, "
                      "streaming True/BothWays, backlog 0 rows")
    assert lines[sat + 1] == ("    ledger: 0 lost or stale, 0 misplaced; 240 satellite commits "
                              "(170 rows) checked at every ring member, 90 ring rows inside "
                              "the filter at xd, 60 outside not there; joined in 31.50 s")
    assert lines[sat + 2] == ("    verification: Passed: 1 table(s) compared with fy, 0 "
                              "differing key(s), 0 row(s) outside the filter")
    assert "the satellite streamed and verified" in lines[-1]
    assert "kubectl ringkeeper drill report split -n lis" in text and "/tmp/kill.svg" in text
    assert "kubectl ringkeeper drill report satsplit -n lis" in text


def test_a_struck_satellite_not_read_is_said_so_not_called_a_removed_campus() -> None:
    f = _facts()
    f.satellites = {}
    lines, _ = summarize(f)
    xd = next(x for x in lines if x.strip().startswith("xd "))
    assert xd.split()[1:] == ["lis", "not", "read", "(satellite)", "satsplit"], xd


def _lost(f: Facts) -> None:
    f.drills[3]["status"]["lastRun"]["lostTransactions"] = 1


def _lost_rows(f: Facts) -> None:
    f.drills[2]["status"]["lastRun"].update(lostTransactions=1, lostRows=6)


def _ring_failed(f: Facts) -> None:
    """A campusLoss whose ring did not converge in time: the operator fails it."""
    f.drills[2]["status"]["lastRun"].update(result="Failed", reason="NotConverged",
                                             convergedSeconds=None)
    f.drills[2]["status"]["phase"] = "Failed"


def _crash_unconverged(f: Facts) -> None:
    f.drills[1]["status"]["lastRun"]["convergedSeconds"] = None


def _satsplit_lost(f: Facts) -> None:
    """The satellite drill passed its RTO but lost commits (the operator fails it too; the
    summary must not need the result to say so)."""
    f.drills[4]["status"]["lastRun"]["lostTransactions"] = 3


def _satsplit_failed(f: Facts) -> None:
    f.drills[4]["status"]["lastRun"].update(result="Failed", reason="NotConverged",
                                             convergedSeconds=None)
    f.drills[4]["status"]["phase"] = "Failed"


def _satsplit_unconverged(f: Facts) -> None:
    f.drills[4]["status"]["lastRun"]["convergedSeconds"] = None


def _unmeasured(f: Facts) -> None:
    f.drills[0]["status"]["lastRun"]["lostTransactions"] = None


def _failed(f: Facts) -> None:
    f.drills[0]["status"]["lastRun"].update(result="Failed", reason="RtoExceeded")


def _link(f: Facts) -> None:
    f.rings[0]["status"]["links"][1]["state"] = "Down"


def _verify_failed(f: Facts) -> None:
    f.verify = _verify(diffs=2)


def _no_verify(f: Facts) -> None:
    f.verify = None


def _sat_lost(f: Facts) -> None:
    """One acknowledged satellite commit not found at a ring member."""
    f.satellite_ledgers["xd"].update(lost=1, first_problems=[
        "xs: satellite id 70000012 is None, acked ('xd', 'collected')"])


def _sat_unmeasured(f: Facts) -> None:
    f.satellite_ledgers["xd"]["lost"] = None


def _sat_misplaced(f: Facts) -> None:
    f.satellite_ledgers["xd"]["misplaced"] = 2


def _sat_not_streamed(f: Facts) -> None:
    f.satellite_ledgers["xd"].update(streamed=False, lost=None, misplaced=None)


def _sat_no_ledger(f: Facts) -> None:
    f.satellite_ledgers.clear()


def _sat_backlog(f: Facts) -> None:
    sat = f.satellites[("lis", "xd")]
    assert sat is not None
    sat["status"].update(backlogRows=12, phase="Syncing")


def _sat_stopped(f: Facts) -> None:
    sat = f.satellites[("lis", "xd")]
    assert sat is not None
    sat["status"]["conditions"][0].update(status="False", reason="SpoolLinkStopped")


def _sat_gone(f: Facts) -> None:
    f.satellites[("lis", "xd")] = None


def _sat_differs(f: Facts) -> None:
    f.verify = _verify(sat_diffs=3)


def _sat_unverified(f: Facts) -> None:
    f.verify = _verify(sat_state=SatelliteState.NO_ADDRESS)


def _sat_not_in_report(f: Facts) -> None:
    f.verify = _verify()
    f.verify.satellites = []


@pytest.mark.parametrize(("spoil", "said"), [
    (_lost, "lost commits 1"), (_unmeasured, "lost commits not measured"),
    (_lost_rows, "loss: lost rows 6"), (_ring_failed, "loss Failed: NotConverged"),
    (_crash_unconverged, "crash: ring convergence not measured"),
    (_satsplit_lost, "satsplit: lost commits 3"),
    (_satsplit_failed, "satsplit Failed: NotConverged"),
    (_satsplit_unconverged, "satsplit: satellite convergence not measured"),
    (_failed, "Failed: RtoExceeded"), (_link, "xs -> fy is Down"),
    (_verify_failed, "verification failed: 2"), (_no_verify, "no verification report"),
    (_sat_lost, "satellite lis/xd: lost 1 (first: xs: satellite id 70000012"),
    (_sat_unmeasured, "satellite lis/xd: lost not measured"),
    (_sat_misplaced, "satellite lis/xd: misplaced 2"),
    (_sat_not_streamed, "satellite lis/xd: did not stream both ways"),
    (_sat_no_ledger, "satellite lis/xd: no ledger result"),
    (_sat_backlog, "satellite lis/xd: not streaming with no backlog"),
    (_sat_stopped, "streaming False/SpoolLinkStopped"),
    (_sat_gone, "satellite lis/xd: not found"),
    (_sat_differs, "satellite lis/xd verification failed: Compared, 3 differing"),
    (_sat_unverified, "satellite lis/xd verification failed: NoAddress"),
    (_sat_not_in_report, "satellite lis/xd: not in the verification report"),
])
def test_each_failure_makes_the_summary_fail(spoil: Any, said: str) -> None:
    f = _facts()
    f.rings = copy.deepcopy(f.rings)
    spoil(f)
    lines, problems = summarize(f)
    assert problems and any(said in p for p in problems), problems
    assert "result: FAILED" in lines[-1] and said in lines[-1]
