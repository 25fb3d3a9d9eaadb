"""Pure decisions of continuous verification: when to run, and what a run's result means.

A multi-active ring that diverges loses data quietly: two campuses answer the same
question differently and nobody is told. So the operator verifies every ring
incrementally by default (`spec.verification.intervalMinutes`, 5 unless set) and turns
each run's outcome into

- the `Diverged` condition: True (reason KeysDiffer, naming tables and key counts) when
  the last verification found persistent differences, False (reason Converged) when it
  found none, Unknown before the first run (NotVerifiedYet) or when runs are turned off
  and nothing is known (VerificationDisabled), or when a run could not decide;
- one Warning Event when Diverged turns True, one Normal Event when it turns back to
  False (transitions only: a ring that stays diverged for a week does not post 2,000
  Events);
- `Ready=False, reason Diverged` while Diverged is True: links that stream do not make a
  ring whose members disagree "ready" (divergence is a risk of losing clinical data, and
  `kubectl wait --for=condition=Ready` or an alert on Ready must not pass over it).

Nothing here does I/O; the ring daemon (controller.ring) acts on these decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ..api.v1alpha1.common import ConditionStatus
from ..api.v1alpha1.ring import VerificationResult
from .conditions import set_condition
from .verify_report import Report

DIVERGED = "Diverged"
DEFAULT_INTERVAL_MINUTES = 5
MESSAGE_TABLES = 10  # tables named in a message; the report names every key


class DivergedReason(StrEnum):
    KEYS_DIFFER = "KeysDiffer"
    CONVERGED = "Converged"
    NOT_VERIFIED_YET = "NotVerifiedYet"
    VERIFICATION_DISABLED = "VerificationDisabled"
    VERIFICATION_ERROR = "VerificationError"
    KEYS_UNSETTLED = "KeysUnsettled"


class DivergenceEvent(StrEnum):
    """The Event a decision asks for (reason = value), or none."""

    DIVERGED = "Diverged"  # Warning
    CONVERGED = "Converged"  # Normal


READY_REASON = "Diverged"


@dataclass(frozen=True)
class VerifyOutcome:
    """What one verification run concluded, reduced to what the status needs.

    `differing` maps each table to its count of persistently differing keys;
    `unsettled` to keys still changing when the rechecks timed out (not verified, not
    proven different). `result` is ERROR when the run could not finish (`error` says why).
    """

    result: VerificationResult
    mode: str = "incremental"
    differing: Mapping[str, int] = field(default_factory=dict)
    unsettled: Mapping[str, int] = field(default_factory=dict)
    error: str = ""
    report: str | None = None

    @property
    def differing_keys(self) -> int:
        return sum(self.differing.values())

    @property
    def unsettled_keys(self) -> int:
        return sum(self.unsettled.values())


def outcome_of(report: Report, *, report_path: str | None = None) -> VerifyOutcome:
    """The outcome of a finished run (tables with no difference are left out)."""
    differing = {t.table: len(t.differences) for t in report.tables if t.differences}
    unsettled = {t.table: len(t.unsettled) for t in report.tables if t.unsettled}
    return VerifyOutcome(result=VerificationResult.PASSED if report.passed
                   else VerificationResult.FAILED,
                   mode=report.mode, differing=differing, unsettled=unsettled,
                   report=report_path)


def error_outcome(error: str, mode: str = "incremental") -> VerifyOutcome:
    """A run that could not finish (a member unreachable, a table that cannot be read)."""
    return VerifyOutcome(result=VerificationResult.ERROR, mode=mode, error=error[:500])


@dataclass(frozen=True)
class DivergedVerdict:
    """The Diverged condition to write, and the Event to post (None: no Event)."""

    status: ConditionStatus
    reason: DivergedReason
    message: str
    event: DivergenceEvent | None = None


def _tables(counts: Mapping[str, int]) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    named = ", ".join(f"{t} ({n})" for t, n in items[:MESSAGE_TABLES])
    more = len(items) - MESSAGE_TABLES
    return named + (f" and {more} more table(s)" if more > 0 else "")


def _event(before: str | None, now: ConditionStatus) -> DivergenceEvent | None:
    """Transitions only: into True warns, out of True (to False) tells it is over."""
    if now == ConditionStatus.TRUE and before != ConditionStatus.TRUE:
        return DivergenceEvent.DIVERGED
    if now == ConditionStatus.FALSE and before == ConditionStatus.TRUE:
        return DivergenceEvent.CONVERGED
    return None


def decide(outcome: VerifyOutcome | None, previous: Mapping[str, Any] | None, *,
           enabled: bool = True) -> DivergedVerdict:
    """The Diverged condition after `outcome` (None: no run finished in this process).

    - No new outcome: the previous condition stands (it survives operator restarts in
      the ring's status); with none, Unknown (NotVerifiedYet, or VerificationDisabled
      when no run is scheduled at all).
    - Differences: True, naming the tables and how many keys differ in each.
    - Passed: False, Converged.
    - A run that could not decide (it failed, or keys were still changing) never clears
      a known divergence: True stays True. Otherwise Unknown with the reason.
    """
    before = str(previous.get("status")) if previous else None
    was_true = before == ConditionStatus.TRUE

    def keep_or(reason: DivergedReason, message: str) -> DivergedVerdict:
        if was_true and previous is not None:
            return DivergedVerdict(ConditionStatus.TRUE, DivergedReason(
                str(previous.get("reason") or DivergedReason.KEYS_DIFFER)),
                str(previous.get("message") or ""))
        return DivergedVerdict(ConditionStatus.UNKNOWN, reason, message)

    if outcome is None:
        if previous is not None and before in set(ConditionStatus):
            status = ConditionStatus(before)
            try:
                reason = DivergedReason(str(previous.get("reason")))
            except ValueError:  # written by another version: the reason its status implies
                reason = {ConditionStatus.TRUE: DivergedReason.KEYS_DIFFER,
                          ConditionStatus.FALSE: DivergedReason.CONVERGED}.get(
                              status, DivergedReason.NOT_VERIFIED_YET)
            return DivergedVerdict(status, reason, str(previous.get("message") or ""))
        if not enabled:
            return DivergedVerdict(ConditionStatus.UNKNOWN, DivergedReason.VERIFICATION_DISABLED,
                            "continuous verification is off (spec.verification.continuous: "
                            "false) and no schedule is set: divergence would not be seen")
        return DivergedVerdict(ConditionStatus.UNKNOWN, DivergedReason.NOT_VERIFIED_YET,
                        "no verification has finished yet")
    if outcome.result == VerificationResult.ERROR:
        return keep_or(DivergedReason.VERIFICATION_ERROR,
                       f"the last verification could not run: {outcome.error}")
    if outcome.differing_keys > 0:
        message = (f"{outcome.differing_keys} key(s) differ between members in "
                   f"{_tables(outcome.differing)}")
        if outcome.unsettled_keys:
            message += f"; {outcome.unsettled_keys} more still changing"
        if outcome.report:
            message += f"; report {outcome.report}"
        status = ConditionStatus.TRUE
        return DivergedVerdict(status, DivergedReason.KEYS_DIFFER, message, _event(before, status))
    if outcome.unsettled_keys > 0:
        return keep_or(DivergedReason.KEYS_UNSETTLED,
                       f"{outcome.unsettled_keys} key(s) kept changing during the recheck "
                       f"window and were not verified: {_tables(outcome.unsettled)}")
    status = ConditionStatus.FALSE
    return DivergedVerdict(status, DivergedReason.CONVERGED,
                    f"the last {outcome.mode} verification found every member equal",
                    _event(before, status))


def apply(conditions: Sequence[Mapping[str, Any]], decision: DivergedVerdict, now: datetime,
          generation: int | None,
          previous: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Conditions with Diverged set, and Ready=False (reason Diverged) while it is True.

    Ready is only taken down, never raised: a Ready that is already False for another
    reason (a link down, a refused Secret) keeps that reason, which is the more urgent
    one to act on; Diverged stays visible in its own condition. The Ready it writes is
    stamped against the object's stored conditions (`previous`), not against the Ready
    the link report just computed, so its lastTransitionTime does not move every cycle."""
    out = set_condition([dict(c) for c in conditions], type=DIVERGED,
                        status=str(decision.status), reason=str(decision.reason),
                        message=decision.message[:1000], now=now, generation=generation)
    if decision.status != ConditionStatus.TRUE:
        return out
    ready = next((c for c in out if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        return out
    base = [dict(c) for c in (previous if previous is not None else out)]
    stamped = set_condition(base, type="Ready", status="False", reason=READY_REASON,
                            message=("members hold different data: "
                                     + decision.message)[:1000],
                            now=now, generation=generation)
    ready = next(c for c in stamped if c["type"] == "Ready")
    return sorted([c for c in out if c.get("type") != "Ready"] + [ready],
                  key=lambda c: str(c.get("type")))


def run_due(now: datetime, next_at: datetime | None, *, running: bool,
            links_ready: bool) -> bool:
    """Whether a continuous (interval) run starts now.

    Never while another verification of the ring runs (no overlap); never while the
    ring's links are not all streaming or a member is being seeded: changes held up by
    a down link would settle into differences and raise a false alarm (the run is
    retried on the next cycle once the ring is whole, and Diverged keeps its value)."""
    if running or not links_ready or next_at is None:
        return False
    return now >= next_at


def next_run(now: datetime, interval_minutes: int) -> datetime:
    """When the next interval run is due after one starts (or the daemon starts) now."""
    return now + timedelta(minutes=max(1, interval_minutes))
