"""The drill report (controller/drill_report.report): JSON and Markdown from one run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ringkeeper.api.v1alpha1.drill import Scenario, TargetKind
from ringkeeper.controller.drill_report import report
from ringkeeper.core.drill import CampusView, Snapshot

SNAP = Snapshot(scenario=Scenario.PRIMARY_KILL, target_kind=TargetKind.CAMPUS,
                target_exists=True, campuses=(CampusView("lab", True, "lab-0"),),
                other_running=None, now=datetime(2026, 12, 1, tzinfo=UTC), max_rto_seconds=30,
                max_lost=0, load_seconds=25)
TIMELINE = [{"at": "2026-12-01T03:21:20.1Z", "event": "DrillStarted", "message": "load"},
            {"at": "2026-12-01T03:21:25.3Z", "event": "FaultInjected",
             "message": "deleted a|b\nc"}]


def test_report_has_figures_and_timeline() -> None:
    run = {"result": "Passed", "rtoSeconds": 5.11, "lostTransactions": 0,
           "committedTransactions": 555, "reason": "Passed", "message": "ok"}
    out = report("kill", SNAP, run, TIMELINE, {"commits": 555},
                 {"passed": True, "examples": [{"key": 1}]})
    body = json.loads(out["report.json"])
    assert body["result"]["rtoSeconds"] == 5.11 and body["timeline"] == TIMELINE
    assert body["examples"] == [{"key": 1}] and "examples" not in body["ledgerCheck"]
    md = out["report.md"]
    assert "# Drill kill: Passed" in md and "RTO: 5.11 s (allowed 30 s)" in md
    # a message cannot break the table: pipes and newlines are neutralised
    assert "| 2026-12-01T03:21:25.3Z | FaultInjected | deleted a/b c |" in md


def test_report_says_when_nothing_came_back() -> None:
    run = {"result": "Failed", "rtoSeconds": None, "lostTransactions": 3,
           "committedTransactions": 10, "reason": "RtoExceeded", "message": "no write"}
    md = report("kill", SNAP, run, [], {}, {})["report.md"]
    assert "RTO: none (no write came back)" in md and "lost: 3" in md
