"""Continuous verification decisions (core.divergence): the Diverged condition from the
last run's outcome, the Event of a transition, Ready taken down while members disagree,
and when an interval run may start. Pure functions: tables, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ringkeeper.api.v1alpha1.common import ConditionStatus
from ringkeeper.api.v1alpha1.ring import VerificationResult
from ringkeeper.core.divergence import (
    DivergedReason,
    DivergedVerdict,
    DivergenceEvent,
    VerifyOutcome,
    apply,
    decide,
    error_outcome,
    next_run,
    outcome_of,
    run_due,
)
from ringkeeper.core.verify import KeyDifference
from ringkeeper.core.verify_report import Report, TableReport
from ringkeeper.verify.schedule import prune_reports, report_name

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN

PASSED = VerifyOutcome(VerificationResult.PASSED)
TWO_TABLES = VerifyOutcome(VerificationResult.FAILED,
                     differing={"lis.samples": 2, "lis.results": 1}, report="/r.json")
UNSETTLED = VerifyOutcome(VerificationResult.FAILED, unsettled={"lis.samples": 4})
ERROR = error_outcome("member b has no primary to connect to right now")


def cond(status: ConditionStatus, reason: str = "X", message: str = "m") -> dict[str, Any]:
    return {"type": "Diverged", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-30T00:00:00Z"}


@pytest.mark.parametrize("outcome,previous,enabled,status,reason,event", [
    # Before any run finished in this process.
    (None, None, True, U, DivergedReason.NOT_VERIFIED_YET, None),
    (None, None, False, U, DivergedReason.VERIFICATION_DISABLED, None),
    # An operator restart: the stored condition stands, no second Event.
    (None, cond(T, "KeysDiffer"), True, T, DivergedReason.KEYS_DIFFER, None),
    (None, cond(F, "Converged"), True, F, DivergedReason.CONVERGED, None),
    (None, cond(T, "SomethingOld"), True, T, DivergedReason.KEYS_DIFFER, None),
    (None, cond(U, "SomethingOld"), True, U, DivergedReason.NOT_VERIFIED_YET, None),
    # Differences: True, warned once on the transition, not per cycle.
    (TWO_TABLES, None, True, T, DivergedReason.KEYS_DIFFER, DivergenceEvent.DIVERGED),
    (TWO_TABLES, cond(U), True, T, DivergedReason.KEYS_DIFFER, DivergenceEvent.DIVERGED),
    (TWO_TABLES, cond(F), True, T, DivergedReason.KEYS_DIFFER, DivergenceEvent.DIVERGED),
    (TWO_TABLES, cond(T, "KeysDiffer"), True, T, DivergedReason.KEYS_DIFFER, None),
    # Passed: False (Converged); told only when it was True.
    (PASSED, None, True, F, DivergedReason.CONVERGED, None),
    (PASSED, cond(U), True, F, DivergedReason.CONVERGED, None),
    (PASSED, cond(F), True, F, DivergedReason.CONVERGED, None),
    (PASSED, cond(T, "KeysDiffer"), True, F, DivergedReason.CONVERGED,
     DivergenceEvent.CONVERGED),
    # A run that could not decide never clears a known divergence.
    (ERROR, cond(T, "KeysDiffer"), True, T, DivergedReason.KEYS_DIFFER, None),
    (ERROR, cond(F, "Converged"), True, U, DivergedReason.VERIFICATION_ERROR, None),
    (ERROR, None, True, U, DivergedReason.VERIFICATION_ERROR, None),
    (UNSETTLED, cond(T, "KeysDiffer"), True, T, DivergedReason.KEYS_DIFFER, None),
    (UNSETTLED, cond(F, "Converged"), True, U, DivergedReason.KEYS_UNSETTLED, None),
])
def test_decide(outcome: VerifyOutcome | None, previous: dict[str, Any] | None, enabled: bool,
                status: ConditionStatus, reason: DivergedReason,
                event: DivergenceEvent | None) -> None:
    d = decide(outcome, previous, enabled=enabled)
    assert (str(d.status), d.reason, d.event) == (status, reason, event)


def test_message_names_tables_and_counts() -> None:
    d = decide(TWO_TABLES, None)
    assert d.message == ("3 key(s) differ between members in lis.samples (2), "
                         "lis.results (1); report /r.json")
    many = VerifyOutcome(VerificationResult.FAILED, differing={f"s.t{i:02}": 1 for i in range(13)})
    assert decide(many, None).message.endswith("s.t09 (1) and 3 more table(s)")
    assert decide(ERROR, None).message == ("the last verification could not run: member b "
                                           "has no primary to connect to right now")
    kept = decide(ERROR, cond(T, "KeysDiffer", "2 key(s) differ ..."))
    assert kept.message == "2 key(s) differ ..."  # not rewritten (and not re-told)


def test_decide_is_idempotent() -> None:
    """Applying the same outcome cycle after cycle posts one Event, on the first."""
    previous: dict[str, Any] | None = None
    events = []
    for _ in range(5):
        d = decide(TWO_TABLES, previous)
        events.append(d.event)
        previous = cond(d.status, str(d.reason), d.message)
    assert events == [DivergenceEvent.DIVERGED, None, None, None, None]


def _report(*tables: tuple[str, int, int]) -> Report:
    return Report(mode="incremental", members=["a", "b"], reference="a", started_at=NOW,
                  tables=[TableReport(table=name, key_columns=["id"], mode="incremental",
                                      differences=[KeyDifference(table=name, key=[str(i)],
                                                                 reference="a",
                                                                 missing_on=["b"])
                                                   for i in range(diff)],
                                      unsettled=[KeyDifference(table=name, key=[str(-i)],
                                                               reference="a",
                                                               differs_on=["b"])
                                                 for i in range(unsettled)])
                          for name, diff, unsettled in tables])


@pytest.mark.parametrize("tables,result,differing,unsettled", [
    ((("lis.a", 0, 0), ("lis.b", 0, 0)), VerificationResult.PASSED, {}, {}),
    ((("lis.a", 3, 0), ("lis.b", 0, 0)), VerificationResult.FAILED, {"lis.a": 3}, {}),
    ((("lis.a", 0, 2),), VerificationResult.FAILED, {}, {"lis.a": 2}),
    ((("lis.a", 1, 1), ("lis.b", 5, 0)), VerificationResult.FAILED,
     {"lis.a": 1, "lis.b": 5}, {"lis.a": 1}),
])
def test_outcome_of(tables: tuple[tuple[str, int, int], ...], result: VerificationResult,
                    differing: dict[str, int], unsettled: dict[str, int]) -> None:
    o = outcome_of(_report(*tables), report_path="/x.json")
    assert (o.result, dict(o.differing), dict(o.unsettled)) == (result, differing, unsettled)
    assert o.differing_keys == sum(differing.values()) and o.report == "/x.json"


def _ready(status: ConditionStatus, reason: str) -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": "",
            "lastTransitionTime": "2026-11-30T00:00:00Z"}


@pytest.mark.parametrize("ready_now,ready_stored,decision,want", [
    # Links all stream, members disagree: Ready must not say all is well.
    (_ready(T, "AllLinksStreaming"), _ready(T, "AllLinksStreaming"),
     DivergedVerdict(T, DivergedReason.KEYS_DIFFER, "2 key(s) differ"),
     (F, "Diverged")),
    # A link down is the more urgent reason: kept.
    (_ready(F, "NotAllLinksStreaming"), _ready(F, "NotAllLinksStreaming"),
     DivergedVerdict(T, DivergedReason.KEYS_DIFFER, "2 key(s) differ"),
     (F, "NotAllLinksStreaming")),
    # Converged or unknown: Ready is the links' word.
    (_ready(T, "AllLinksStreaming"), _ready(F, "Diverged"),
     DivergedVerdict(F, DivergedReason.CONVERGED, "equal"),
     (T, "AllLinksStreaming")),
    (_ready(T, "AllLinksStreaming"), _ready(T, "AllLinksStreaming"),
     DivergedVerdict(U, DivergedReason.NOT_VERIFIED_YET, "none yet"),
     (T, "AllLinksStreaming")),
])
def test_apply_ready(ready_now: dict[str, Any], ready_stored: dict[str, Any],
                     decision: DivergedVerdict, want: tuple[ConditionStatus, str]) -> None:
    out = apply([ready_now], decision, NOW, 4, previous=[ready_stored])
    ready = next(c for c in out if c["type"] == "Ready")
    diverged = next(c for c in out if c["type"] == "Diverged")
    assert (ready["status"], ready["reason"]) == want
    assert diverged["status"] == str(decision.status) and diverged["observedGeneration"] == 4
    if want[1] == "Diverged":
        assert ready["message"] == "members hold different data: 2 key(s) differ"


def test_ready_transition_time_does_not_move_every_cycle() -> None:
    """ring_status sets Ready=True from the links each cycle; the Ready=False it is turned
    into is stamped against the stored Ready, so it keeps its transition time."""
    d = DivergedVerdict(T, DivergedReason.KEYS_DIFFER, "1 key(s) differ")
    first = apply([_ready(T, "AllLinksStreaming")], d, NOW, 1,
                  previous=[_ready(T, "AllLinksStreaming")])
    stored = next(c for c in first if c["type"] == "Ready")
    fresh_ready = {**_ready(T, "AllLinksStreaming"), "lastTransitionTime": "2026-12-01T03:05:00Z"}
    later = apply([fresh_ready], d, NOW + timedelta(minutes=5), 1, previous=first)
    again = next(c for c in later if c["type"] == "Ready")
    assert again["lastTransitionTime"] == stored["lastTransitionTime"] == "2026-12-01T03:00:00Z"


@pytest.mark.parametrize("next_at,running,links_ready,due", [
    (NOW, False, True, True),
    (NOW - timedelta(minutes=1), False, True, True),
    (NOW + timedelta(seconds=1), False, True, False),
    (NOW, True, True, False),  # never overlaps a running verification
    (NOW, False, False, False),  # a link down or a member seeding: a false alarm waits
    (None, False, True, False),
])
def test_run_due(next_at: datetime | None, running: bool, links_ready: bool,
                 due: bool) -> None:
    assert run_due(NOW, next_at, running=running, links_ready=links_ready) is due


@pytest.mark.parametrize("minutes,after", [(5, 300), (1, 60), (0, 60), (1440, 86400)])
def test_next_run(minutes: int, after: int) -> None:
    assert next_run(NOW, minutes) - NOW == timedelta(seconds=after)


def test_prune_reports_keeps_the_newest_of_this_ring_only(tmp_path: Path) -> None:
    names = [report_name("lis", NOW + timedelta(minutes=5 * i)) for i in range(6)]
    for n in names:
        (tmp_path / n).write_text("{}")
        (tmp_path / n).with_suffix(".txt").write_text("")
    other = tmp_path / report_name("lis-b", NOW)  # another ring whose name extends ours
    other.write_text("{}")
    gone = prune_reports(tmp_path, "lis", keep=2)
    assert len(gone) == 8
    left = sorted(p.name for p in tmp_path.glob("*.json"))
    assert left == sorted([*names[-2:], other.name])
    assert (tmp_path / names[-1]).with_suffix(".txt").exists()
    assert prune_reports(tmp_path / "absent", "lis", keep=2) == []


def test_status_table_shows_divergence() -> None:
    """`ringkeeper status` has a DIVERGED column and names what differs when it is True."""
    from ringkeeper.cli import status_view

    def ring(name: str, conds: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metadata": {"namespace": "lis", "name": name},
                "spec": {"topology": "ring", "members": [{}, {}]},
                "status": {"conditions": conds}}

    text = status_view.rings([
        ring("east", [cond(T, "KeysDiffer", "1 key(s) differ in lis.samples (1)\x1b[2J")]),
        ring("west", [cond(F, "Converged")]), ring("new", [])])
    lines = text.splitlines()
    assert lines[0].split()[-1] == "DIVERGED"
    assert [ln.split()[-1] for ln in lines[1:4]] == ["True", "False", "-"]
    assert "east DIVERGED: 1 key(s) differ in lis.samples (1)\\x1b[2J" in text
    assert "west DIVERGED" not in text and "\x1b" not in text
