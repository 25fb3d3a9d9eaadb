"""Cron schedules: parsing, messages for mistakes, and the next firing time (UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.base import cron
from ringkeeper.core.cron import schedule_condition
from ringkeeper.core.verify_report import Report, TableReport, verification_status


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NEXT = [
    # expr, after, expected next firing
    ("* * * * *", "2026-03-14 10:20:30", "2026-03-14 10:21"),
    ("* * * * *", "2026-03-14 10:20:00", "2026-03-14 10:21"),  # strictly after
    ("0 3 * * *", "2026-03-14 02:59", "2026-03-14 03:00"),
    ("0 3 * * *", "2026-03-14 03:00", "2026-03-15 03:00"),
    ("*/15 * * * *", "2026-03-14 10:20", "2026-03-14 10:30"),
    ("*/15 * * * *", "2026-03-14 10:50", "2026-03-14 11:00"),
    ("10/20 * * * *", "2026-03-14 10:31", "2026-03-14 10:50"),
    ("0 1-5/2 * * *", "2026-03-14 01:00", "2026-03-14 03:00"),
    ("0 1-5/2 * * *", "2026-03-14 05:00", "2026-03-15 01:00"),
    ("5,35 8,20 * * *", "2026-03-14 08:36", "2026-03-14 20:05"),
    ("30 2 * * MON-FRI", "2026-03-14 00:00", "2026-03-16 02:30"),  # Sat -> Mon
    ("30 2 * * mon-fri", "2026-03-16 02:30", "2026-03-17 02:30"),
    ("0 0 * * 7", "2026-03-14 00:00", "2026-03-15 00:00"),  # 7 is Sunday
    ("0 0 * * 0", "2026-03-14 00:00", "2026-03-15 00:00"),
    ("0 0 * * 5-7", "2026-03-15 00:00", "2026-03-20 00:00"),  # Fri, Sat, Sun
    ("0 0 1 JAN,jul *", "2026-03-14 00:00", "2026-07-01 00:00"),
    ("0 0 31 * *", "2026-04-01 00:00", "2026-05-31 00:00"),  # April has no 31st
    ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),  # next leap day
    ("59 23 31 12 *", "2026-12-31 23:59", "2027-12-31 23:59"),
    # Both day fields restricted: either matches (13th OR a Friday).
    ("0 0 13 * 5", "2026-03-01 00:00", "2026-03-06 00:00"),
    ("0 0 13 * 5", "2026-03-12 00:00", "2026-03-13 00:00"),
    ("0 0 1 * 1", "2026-03-14 00:00", "2026-03-16 00:00"),
    # A day field starting with * does not count as restricted: both must match.
    ("0 0 */2 * 1", "2026-03-14 00:00", "2026-03-23 00:00"),  # odd day AND Monday
    ("0 0 1 * *", "2026-03-14 00:00", "2026-04-01 00:00"),
    ("@hourly", "2026-03-14 10:20", "2026-03-14 11:00"),
    ("@daily", "2026-03-14 10:20", "2026-03-15 00:00"),
    ("@midnight", "2026-03-14 10:20", "2026-03-15 00:00"),
    ("@weekly", "2026-03-14 10:20", "2026-03-15 00:00"),
    ("@monthly", "2026-03-14 10:20", "2026-04-01 00:00"),
    ("@yearly", "2026-03-14 10:20", "2027-01-01 00:00"),
    ("@ANNUALLY", "2026-03-14 10:20", "2027-01-01 00:00"),
    ("  0   3  * *   * ", "2026-03-14 02:00", "2026-03-14 03:00"),  # extra spaces
]


@pytest.mark.parametrize(("expr", "after", "expected"), NEXT)
def test_next_fire(expr: str, after: str, expected: str) -> None:
    got = cron.next_fire(expr, t(after))
    assert got == t(expected)
    assert got.tzinfo is UTC
    assert cron.parse(expr).matches(got)


ERRORS = [
    ("", "empty"),
    ("0 3 * *", "needs 5 fields"),
    ("0 3 * * * *", "day-of-week), got 6"),
    ("60 * * * *", "minute field: 60 is outside 0-59"),
    ("* 24 * * *", "hour field: 24 is outside 0-23"),
    ("* * 0 * *", "day of month field: 0 is outside 1-31"),
    ("* * * 13 *", "month field: 13 is outside 1-12"),
    ("* * * * 8", "day of week field: 8 is outside 0-7"),
    ("* * * FOO *", "month field: 'FOO' is not a number or a name (JAN-DEC)"),
    ("* * * * MONDAY", "day of week field: 'MONDAY' is not a number or a name (SUN-SAT)"),
    ("*/0 * * * *", "step '0' must be a positive number"),
    ("*/x * * * *", "step 'x' must be a positive number"),
    ("5-1 * * * *", "range '5-1' runs backwards"),
    ("1,,2 * * * *", "empty list item"),
    ("a * * * *", "minute field: 'a' is not a number"),
    ("@fortnightly", "unknown macro"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
]


@pytest.mark.parametrize(("expr", "message"), ERRORS)
def test_parse_errors_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cron.parse(expr)


def test_impossible_day_is_fine_when_day_of_week_can_match() -> None:
    # Feb 30 never exists, but "or a Monday" still fires.
    assert cron.next_fire("0 0 30 2 1", t("2026-01-31 00:00")) == t("2026-02-02 00:00")


def test_aware_and_naive_times() -> None:
    plus8 = timezone(timedelta(hours=8))
    # 03:00 UTC is 11:00 in UTC+8; the result is in UTC.
    got = cron.next_fire("0 3 * * *", datetime(2026, 3, 14, 10, 0, tzinfo=plus8))
    assert got == t("2026-03-14 03:00")
    assert cron.next_fire("0 3 * * *", datetime(2026, 3, 14, 2, 0)) == t("2026-03-14 03:00")


def test_parsed_sets() -> None:
    c = cron.parse("1-10/3 */6 1,15 JAN-MAR/2 SAT,7")
    assert c.minutes == {1, 4, 7, 10}
    assert c.hours == {0, 6, 12, 18}
    assert c.days == {1, 15}
    assert c.months == {1, 3}
    assert c.weekdays == {6, 0}
    assert c.dom_restricted and c.dow_restricted


def test_schedule_in_crd_pattern_parses() -> None:
    for expr in ("0 3 * * *", "@daily", "*/15 * * * 1-5", "0 0 * JAN-MAR sun,sat"):
        assert re.fullmatch(cron.ADMISSION_PATTERN, expr)
        assert cron.problem(expr) is None


@pytest.mark.parametrize("expr", ["99 99 99 99 99", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                  "* * 32 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *",
                                  "0 3 * * *\n", "0 3 * *", "0 3 * * * *", "@every 5m",
                                  "0 3 * * FOO", "0 3 * * *; rm -rf /", "-1 * * * *"])
def test_admission_refuses_out_of_range_fields(expr: str) -> None:
    assert not cron.admitted(expr)


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "5-1 * * * *", "0 0 30 2 *"])
def test_admitted_but_never_firing_is_a_problem(expr: str) -> None:
    assert cron.admitted(expr)
    assert cron.problem(expr) is not None


def test_problem_of_non_string() -> None:
    assert cron.problem(5) == "cron: the schedule must be a string, not int"
    assert cron.problem("99 99 99 99 99") == (
        "cron '99 99 99 99 99': minute field: 99 is outside 0-59")


def test_schedule_condition_sets_ready_false_once() -> None:
    t0, t1 = t("2026-03-14 10:00"), t("2026-03-14 10:01")
    ready = [{"type": "Ready", "status": "True", "reason": "AllLinksStreaming", "message": "",
              "lastTransitionTime": "2026-03-14T09:00:00Z"}]
    assert schedule_condition(ready, "spec.verification.schedule", None, t0) is None
    assert schedule_condition(ready, "spec.verification.schedule", "0 3 * * *", t0) is None
    first = schedule_condition(ready, "spec.verification.schedule", "0 0 31 2 *", t0, 4,
                                    previous=ready)
    assert first is not None
    (cond,) = first
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSchedule")
    assert cond["message"].startswith("spec.verification.schedule: cron '0 0 31 2 *': never")
    assert cond["lastTransitionTime"] == "2026-03-14T10:00:00Z"
    # Next cycle: another decider set Ready=True again, the object still says False.
    again = schedule_condition(ready, "spec.verification.schedule", "0 0 31 2 *", t1, 4,
                                    previous=first)
    assert again is not None and again[0]["lastTransitionTime"] == "2026-03-14T10:00:00Z"


def test_consecutive_firings_every_fifteen_minutes() -> None:
    at = t("2026-03-14 23:50")
    seen = []
    for _ in range(4):
        at = cron.next_fire("*/15 * * * *", at)
        seen.append(at.strftime("%d %H:%M"))
    assert seen == ["15 00:00", "15 00:15", "15 00:30", "15 00:45"]


# ---------------------------------------------------------------------------------------
# Report -> ReplicationRing status.lastVerification


def _report(diffs: int = 0) -> Report:
    from ringkeeper.core.verify import KeyDifference

    tr = TableReport(table="lis.samples", key_columns=["id"], mode="full",
                     rows={"a": 100, "b": 99})
    tr.differences = [KeyDifference(table="lis.samples", key=[str(i)], reference="a",
                                    missing_on=["b"]) for i in range(diffs)]
    return Report(mode="full", members=["a", "b"], reference="a",
                  started_at=t("2026-03-14 03:00"),
                  tables=[tr, TableReport(table="lis.results", key_columns=["x"],
                                          mode="full", rows={"a": 5, "b": 5})])


@pytest.mark.parametrize(("report", "completed", "error", "expected"), [
    (_report(), True, False, {"result": "Passed", "differences": 0, "tables": 2,
                              "rowsCompared": 105, "progressPercent": 100.0}),
    (_report(3), True, False, {"result": "Failed", "differences": 3}),
    (None, False, False, {"result": "Running", "progressPercent": 42.5}),
    (None, True, False, {"result": "Error"}),
    (None, False, True, {"result": "Error"}),
])
def test_verification_status(report: Report | None, completed: bool, error: bool,
                             expected: dict[str, object]) -> None:
    st = verification_status(report, mode="full", started_at=t("2026-03-14 03:00"),
                             completed_at=t("2026-03-14 03:05") if completed else None,
                             report_path="/reports/r.json" if report else None,
                             progress_percent=42.54, error=error)
    assert st["startedAt"] == "2026-03-14T03:00:00Z"
    assert st["mode"] == "full"
    for k, v in expected.items():
        assert st[k] == v, k
    if completed:
        assert st["completedAt"] == "2026-03-14T03:05:00Z"
    else:
        assert "completedAt" not in st
    if report is not None:
        assert st["report"] == "/reports/r.json"
    # Every key is one the CRD knows.
    from ringkeeper.api.v1alpha1.ring import VerificationStatus

    VerificationStatus.model_validate(st)


@given(st.lists(st.text(alphabet="0123456789*/,-JANSUNmon", min_size=1, max_size=8),
                min_size=1, max_size=6).map(" ".join))
def test_problem_never_raises_and_admitted_fields_stay_in_range(expr: str) -> None:
    # problem() is what the operator runs on untrusted input: it must answer, not crash.
    reason = cron.problem(expr)
    if cron.admitted(expr) and reason is None:
        c = cron.parse(expr)
        assert c.minutes <= set(range(60)) and c.hours <= set(range(24))
        assert c.days <= set(range(1, 32)) and c.months <= set(range(1, 13))
        assert c.weekdays <= set(range(7))
    if not cron.admitted(expr):
        # Admission's pattern is never looser than the parser's ranges.
        assert not re.fullmatch(r"([0-9]+ ){4}[0-9]+", expr) or reason is not None or any(
            len(p) > 1 and p.startswith("0") for p in expr.split())
