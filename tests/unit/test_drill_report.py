"""The drill report (controller/drill_report.report): JSON and Markdown from one run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ringkeeper.api.v1alpha1.drill import Scenario, TargetKind
from ringkeeper.controller.drill_report import report
from ringkeeper.core.drill import DrillCampus, Snapshot

SNAP = Snapshot(scenario=Scenario.PRIMARY_KILL, target_kind=TargetKind.CAMPUS,
                target_exists=True, campuses=(DrillCampus("lab", True, "lab-0"),),
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


def _checked() -> dict[str, object]:
    from ringkeeper.workload.keys import compose

    acked, newer, older = compose(1, 1, 27), compose(1, 1, 35), compose(1, 1, 3)
    return {"passed": False, "examples": [
        {"member": "lab", "problem": "stale", "table": "orders", "key": older,
         "found": newer, "allowed": [acked]},
        {"member": "lab", "problem": "disagree", "table": "results", "key": 9,
         "found": 9, "allowed": [9]},
        {"member": "lab", "problem": "stale", "table": "results", "key": compose(1, 1, 1),
         "found": older, "allowed": [acked]},
        {"member": "lab", "problem": "missing", "table": "reports", "key": compose(1, 1, 5),
         "found": None, "allowed": [compose(1, 1, 5)]}]}


def test_lost_keys_and_what_each_server_held_are_named() -> None:
    """A lost key is named with the check's reading, the acknowledged and in-doubt
    versions, a hint (newer: an unacknowledged write is there; older: the acknowledged
    one is not) and every server's own row; a server that could not be read says why."""
    from ringkeeper.controller.drill_report import explain_lost, lost_keys, lost_text
    from ringkeeper.workload.keys import compose

    checked = _checked()
    keys = lost_keys(checked)
    assert [k[1] for k in keys] == ["orders", "results", "reports"]  # disagree is not lost
    order = compose(1, 1, 3)
    ref = f"orders/{order}"
    held = {"lab": {
        "lab-1": {"address": "10.0.0.2", "inRecovery": False, "revs": {ref: compose(1, 1, 35)}},
        "lab-0": {"address": "10.0.0.1", "inRecovery": True, "revs": {ref: compose(1, 1, 27)}},
        "lab-2": {"error": "ConnectionRefusedError: refused"}}}
    lost = explain_lost(checked, held, {ref: [None]})
    assert [x["table"] for x in lost] == ["orders", "results", "reports"]
    first = lost[0]
    assert first["hint"].startswith("newer than every acknowledged version")
    assert lost[1]["hint"].startswith("older than the acknowledged version")
    assert lost[2]["hint"].startswith("no row")
    assert first["servers"] == {
        "lab-0": {"address": "10.0.0.1", "role": "replica", "rev": compose(1, 1, 27)},
        "lab-1": {"address": "10.0.0.2", "role": "primary", "rev": compose(1, 1, 35)},
        "lab-2": {"error": "ConnectionRefusedError: refused"}}
    text = lost_text(lost)
    assert text.startswith(f"stale orders key {order} at lab: check read "
                           f"{compose(1, 1, 35)} (#35), acknowledged {compose(1, 1, 27)} "
                           "(#27), in doubt no row; newer")
    assert f"lab-1 (primary 10.0.0.2) {compose(1, 1, 35)} (#35)" in text
    assert "lab-2 ConnectionRefusedError: refused" in text
    assert len(lost_text(lost * 20)) == 1000  # an Event message stays bounded

    run = {"result": "Failed", "rtoSeconds": 4.0, "lostTransactions": 3,
           "committedTransactions": 560, "reason": "TransactionsLost", "message": "lost"}
    md = report("kill", SNAP, run, TIMELINE, {}, {**checked, "lost": lost, "readFrom": {
        "lab": {"address": "10.0.0.2", "inRecovery": False}}})["report.md"]
    # named before the timeline, which the status limit cuts first
    assert md.index("## Lost") < md.index("## Ledger check read") < md.index("## Timeline")
    assert f"- stale orders key {order} at lab" in md
    assert "- lab: {'address': '10.0.0.2', 'inRecovery': False}" in md


def test_report_counts_transactions_and_rows_apart() -> None:
    """An order with five items lost whole: one transaction, six rows (issue 18)."""
    run = {"result": "Failed", "rtoSeconds": 2.0, "lostTransactions": 1, "lostRows": 6,
           "committedTransactions": 10, "reason": "TransactionsLost", "message": "lost"}
    md = report("kill", SNAP, run, [], {}, {})["report.md"]
    assert "acknowledged transactions: 10, lost: 1 (allowed 0; rows lost: 6)" in md
    run["lostRows"] = None
    md = report("kill", SNAP, run, [], {}, {})["report.md"]
    assert "rows lost: not checked" in md
