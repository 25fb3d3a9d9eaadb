"""`ringkeeper drill`: the Drill a `run` creates, what `--wait` reads as the end, the summary
and the SVG timeline (pure parts; the e2e drill test runs the commands against a cluster)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from ringkeeper.cli import drill_view
from ringkeeper.cli.main import build_parser

SCHEDULED: dict[str, Any] = {
    "metadata": {"name": "weekly", "namespace": "lis"},
    "spec": {"target": {"kind": "Campus", "name": "lab"}, "scenario": "primaryKill",
             "schedule": "0 3 * * 0", "timeZone": "Asia/Shanghai", "suspend": True,
             "workload": {"writers": 2, "ratePerSecond": 5, "durationSeconds": 30}},
}


def test_new_run_is_a_valid_once_drill() -> None:
    m = drill_view.run_manifest("now", target="lab", scenario="primaryKill", max_rto=20,
                                writers=1, rate=3, duration=12)
    assert m["spec"] == {"target": {"kind": "Campus", "name": "lab"},
                         "scenario": "primaryKill", "expectations": {"maxRtoSeconds": 20},
                         "workload": {"writers": 1, "ratePerSecond": 3,
                                      "durationSeconds": 12}}


def test_strike_names_the_campus_a_ring_drill_hits() -> None:
    m = drill_view.run_manifest("loss", kind="ReplicationRing", target="lis-ring",
                                scenario="campusLoss", strike="yuecheng")
    assert m["spec"]["target"] == {"kind": "ReplicationRing", "name": "lis-ring",
                                   "campus": "yuecheng"}
    with pytest.raises(ValueError, match=r"target\.campus picks the campus"):
        drill_view.run_manifest("split", kind="ReplicationRing", target="lis-ring",
                                scenario="networkPartition", strike="yuecheng")
    with pytest.raises(ValueError, match="should match"):
        drill_view.run_manifest("loss", kind="ReplicationRing", target="lis-ring",
                                scenario="campusLoss", strike="yuecheng; rm -rf /")
    args = build_parser().parse_args(["drill", "run", "crash", "--ring", "lis-ring",
                                      "--scenario", "syncCrash", "--strike", "fuyang"])
    assert args.strike == "fuyang"


def test_run_from_a_scheduled_drill_drops_the_schedule_and_keeps_the_load() -> None:
    m = drill_view.run_manifest("weekly-manual-1", template=SCHEDULED, duration=15)
    assert "schedule" not in m["spec"] and "timeZone" not in m["spec"]
    assert "suspend" not in m["spec"]
    assert m["spec"]["target"] == {"kind": "Campus", "name": "lab"}
    assert m["spec"]["workload"] == {"writers": 2, "ratePerSecond": 5, "durationSeconds": 15}
    assert SCHEDULED["spec"]["schedule"] == "0 3 * * 0"  # the template is not changed


@pytest.mark.parametrize(("name", "target", "scenario", "duration", "says"), [
    ("Bad_Name", "lab", "primaryKill", None, "metadata.name"),
    ("ok", "lab; touch /tmp/x", "primaryKill", None, "target.name"),
    ("ok", "lab", "meteorStrike", None, "scenario"),
    ("ok", "lab", "primaryKill", 1, "durationSeconds"),
    ("ok", None, "primaryKill", None, "target is needed"),
])
def test_bad_runs_are_refused_before_the_cluster_sees_them(
        name: str, target: str | None, scenario: str, duration: int | None,
        says: str) -> None:
    with pytest.raises(ValueError, match=says.replace(".", r"\.")):
        drill_view.run_manifest(name, target=target, scenario=scenario, duration=duration)


def _drill(phase: str | None = None, runs: int = 0, last: dict[str, Any] | None = None,
           **conds: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "d", "namespace": "lis"}, "spec": SCHEDULED["spec"],
            "status": {"phase": phase, "runs": runs, "lastRun": last or {},
                       "conditions": [{"type": t, "status": s, "reason": r, "message": "m"}
                                      for t, (s, r) in
                                      ((t, (v[0], v[1])) for t, v in conds.items())]}}


@pytest.mark.parametrize(("obj", "verdict"), [
    (_drill(), None),
    (_drill(Accepted=("True", "SpecValid"), Ready=("False", "TargetNotReady")), None),
    (_drill(Accepted=("True", "SpecValid"), Ready=("False", "TargetBusy")), None),
    (_drill("Running", 1, {"timeline": [{"event": "DrillStarted"}]},
            Accepted=("True", "SpecValid")), None),
    (_drill(Accepted=("False", "InvalidSpec")), "Refused"),
    (_drill(Accepted=("True", "SpecValid"), Ready=("False", "TargetMissing")), "Refused"),
    (_drill("Passed", 1, {"result": "Passed", "reason": "Passed"}), "Passed"),
    (_drill("Failed", 1, {"result": "Failed", "reason": "RtoExceeded", "message": "slow"}),
     "Failed"),
])
def test_wait_ends_on_a_verdict_or_a_refusal(obj: dict[str, Any], verdict: str | None
                                             ) -> None:
    got = drill_view.outcome(obj)
    assert (got[0] if got else None) == verdict


TIMELINE = [
    {"at": "2026-12-01T03:00:00.000000Z", "event": "DrillStarted", "message": "load on lab"},
    {"at": "2026-12-01T03:00:05.000000Z", "event": "FaultInjected",
     "message": "killed lab-0 </text><script>alert(1)</script> \x1b[31m"},
    {"at": "2026-12-01T03:00:12.500000Z", "event": "Recovered", "message": "write via lab-1"},
    {"at": "2026-12-01T03:00:40.000000Z", "event": "DrillPassed", "message": "0 lost"},
]
PASSED = _drill("Passed", 1, {"result": "Passed", "reason": "Passed", "rtoSeconds": 7.5,
                              "lostTransactions": 0, "committedTransactions": 300,
                              "timeline": TIMELINE})


def test_timeline_picture_is_well_formed_and_shades_the_outage() -> None:
    svg = drill_view.timeline_svg(PASSED)
    root = ET.fromstring(svg)  # raises on anything a message could inject
    ns = "{http://www.w3.org/2000/svg}"
    assert not root.findall(f".//{ns}script")
    texts = ["".join(t.itertext()) for t in root.iter(f"{ns}text")]
    assert any("Passed" in t and "RTO 7.5 s" in t and "lost 0 of 300" in t for t in texts)
    assert any("+5.0 s FaultInjected" in t for t in texts)
    shade = next(r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None)
    assert "outage 7.5 s" in "".join(shade.itertext())
    # 7.5 s of a 40 s run on an 880-pixel axis
    assert float(shade.get("width", "0")) == pytest.approx(880 * 7.5 / 40, abs=0.2)


def test_timeline_picture_of_a_drill_that_never_ran() -> None:
    root = ET.fromstring(drill_view.timeline_svg(_drill()))
    assert "no run yet" in "".join(root.itertext())


def test_summary_shows_the_run_and_neutralises_control_characters() -> None:
    text = drill_view.summary(PASSED)
    assert "RTO 7.5 s, lost 0 of 300 acknowledged" in text
    assert "FaultInjected" in text and "\x1b" not in text


def test_the_commands_parse() -> None:
    p = build_parser()
    a = p.parse_args(["drill", "run", "now", "--campus", "lab", "--wait", "--timeout", "60"])
    assert (a.name, a.campus, a.wait, a.timeout) == ("now", "lab", True, 60.0)
    a = p.parse_args(["drill", "run", "--from", "weekly", "-n", "lis"])
    assert (a.from_drill, a.namespace, a.name) == ("weekly", "lis", None)
    a = p.parse_args(["drill", "report", "d", "--format", "svg", "-o", "/tmp/d.svg"])
    assert (a.format, a.output) == ("svg", "/tmp/d.svg")
    with pytest.raises(SystemExit):
        p.parse_args(["drill", "run", "x", "--campus", "a", "--ring", "b"])


def test_satellite_run_builds_a_satellite_partition() -> None:
    """`drill run NAME --satellite SAT --scenario networkPartition`: the manifest names the
    Satellite; another scenario, or a hostile name, is refused before the cluster sees it."""
    args = build_parser().parse_args(["drill", "run", "cut", "--satellite", "xd",
                                      "--scenario", "networkPartition", "--duration", "60"])
    assert (args.satellite, args.scenario, args.duration) == ("xd", "networkPartition", 60)
    m = drill_view.run_manifest("cut", kind="Satellite", target="xd",
                                scenario="networkPartition", duration=60, max_rto=30)
    assert m["spec"]["target"] == {"kind": "Satellite", "name": "xd"}
    assert m["spec"]["scenario"] == "networkPartition"
    assert m["spec"]["workload"]["durationSeconds"] == 60
    assert m["spec"]["expectations"]["maxRtoSeconds"] == 30
    assert "schedule" not in m["spec"]
    with pytest.raises(ValueError, match="a Satellite target takes scenario networkPartition"):
        drill_view.run_manifest("kill", kind="Satellite", target="xd", scenario="primaryKill")
    with pytest.raises(ValueError):
        drill_view.run_manifest("cut", kind="Satellite", target="xd; rm -rf /",
                                scenario="networkPartition")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "run", "x", "--satellite", "a", "--ring", "b"])
