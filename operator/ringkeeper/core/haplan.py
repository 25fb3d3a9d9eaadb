"""One HA cycle of a Campus as a pure decision: snapshot -> plan -> step.

controller.campus.ha_cycle gathers the facts of one cycle (the Campus, its
pods, every agent's report) into a frozen CampusSnapshot, asks plan_cycle for
the one step to take, and executes it. Every branch names its reason, so a
table test can pin each decision and an operator can read why it was taken.

The safety rule lives below this module, in core.election (which replica may
be promoted) and core.ha (when a primary counts as failed): this planner only
decides which of those to consult, and what to do once a failover was refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..api.v1alpha1.campus import CampusPhase
from .annotations import parse_switchover
from .election import SyncSnapshot
from .ha import (
    PrimaryState,
    primary_verdict,
    standby_cut,
    sync_snapshot,
    to_report,
)

# The status is written at least this often while healthy, even when nothing coarse
# changed, so LSNs and lags in status.instances stay fresh.
FORCED_WRITE_SECONDS = 5.0


class HaStepKind(StrEnum):
    BOOTSTRAP = "Bootstrap"  # the first primary answers as primary: record it
    AWAIT_BOOTSTRAP = "AwaitBootstrap"  # no primary yet: publish what is there
    RESUME_FAILOVER = "ResumeFailover"  # targetPrimary != currentPrimary
    SWITCHOVER = "Switchover"  # a valid switchover annotation
    REFUSE_SWITCHOVER = "RefuseSwitchover"  # a malformed one: say so, clear it
    FAILOVER = "Failover"  # the primary failed
    MARK_SUSPECT = "MarkSuspect"  # first cycle the primary looks failed
    AWAIT_SUSPECT = "AwaitSuspect"  # still suspect, inside the detection delay
    PUBLISH = "Publish"  # healthy: role labels and status


@dataclass(frozen=True)
class CampusSnapshot:
    """What one HA cycle knows, read once: nothing in it changes while the cycle plans.

    `raws` are the agents' /api/status answers (None: no answer or no address);
    `since_write` is how many seconds ago this loop last wrote the status.
    """

    name: str
    spec: Mapping[str, Any]
    names: tuple[str, ...]
    current: str | None
    target: str | None
    failing_since: datetime | None
    last_failover: Mapping[str, Any] | None
    raws: Mapping[str, Mapping[str, Any] | None]
    ready: Mapping[str, bool]
    addressed: frozenset[str]  # instances whose pod has an IP
    switchover: str | None  # the ringkeeper.io/switchover-to annotation, verbatim
    now: datetime
    since_write: float

    @property
    def detection_delay(self) -> float:
        return float((self.spec.get("failover") or {}).get("detectionDelaySeconds", 5))


@dataclass(frozen=True)
class HaStep:
    """The one thing this cycle does, and why.

    `clear_switchover`: a switchover annotation naming the current primary is
    already satisfied and is removed before the step runs. `primary_up` feeds the
    PRIMARY_UP gauge (None: no verdict was taken this cycle).
    """

    kind: HaStepKind
    reason: str
    target: str | None = None
    clear_switchover: bool = False
    primary_up: bool | None = None
    failing_since: datetime | None = None  # MARK_SUSPECT
    roles: Mapping[str, str] = field(default_factory=dict)  # PUBLISH
    sync: SyncSnapshot | None = None  # PUBLISH
    force: bool = False  # PUBLISH / AWAIT_BOOTSTRAP / BOOTSTRAP: write even if unchanged


def plan_cycle(s: CampusSnapshot) -> HaStep:
    """The step of one HA cycle, in priority order: bootstrap, an interrupted failover,
    a switchover request, then the primary's verdict (failed, suspect, healthy)."""
    if s.current is None:
        if s.target and (s.raws.get(s.target) or {}).get("role") == "primary":
            return HaStep(HaStepKind.BOOTSTRAP, f"{s.target} answers as primary: it is the "
                          "first primary", target=s.target, force=True)
        return HaStep(HaStepKind.AWAIT_BOOTSTRAP,
                      f"no primary yet; waiting for {s.target or 'a targetPrimary'} to "
                      "answer as primary", target=s.target, force=True)
    if s.target and s.target != s.current:
        # A failover recorded its decision (targetPrimary) and was interrupted before
        # currentPrimary: finish it, never elect again (the election already ran on
        # frozen positions; a second one on moving ones could pick differently).
        return HaStep(HaStepKind.RESUME_FAILOVER, "resuming after an interruption",
                      target=s.target)
    wanted = s.switchover
    if wanted and wanted != s.current:
        asked = parse_switchover(wanted, list(s.names))
        if not asked.ok:
            return HaStep(HaStepKind.REFUSE_SWITCHOVER, str(asked.error))
        return HaStep(HaStepKind.SWITCHOVER, f"switchover requested to {wanted}", target=wanted)
    clear = bool(wanted) and wanted == s.current
    current = s.current
    # A primary that answers but is cut off from its synchronous standbys commits
    # nothing: it counts as failed after the same detection delay (core.ha.standby_cut).
    cut = standby_cut(current, s.raws.get(current),
                      {k: s.raws.get(k) for k in s.names if k != current})
    verdict = primary_verdict(current, to_report(current, s.raws.get(current)),
                              s.ready.get(current, False), s.failing_since, s.now,
                              s.detection_delay, s.last_failover, cut=cut)
    up = verdict.state == PrimaryState.HEALTHY
    if verdict.state == PrimaryState.FAILED:
        return HaStep(HaStepKind.FAILOVER, f"primary failed: {verdict.reason}", target=current,
                      clear_switchover=clear, primary_up=up)
    if verdict.state == PrimaryState.SUSPECT:
        if s.failing_since is None:
            return HaStep(HaStepKind.MARK_SUSPECT, verdict.reason, target=current,
                          clear_switchover=clear, primary_up=up,
                          failing_since=verdict.failing_since or s.now)
        return HaStep(HaStepKind.AWAIT_SUSPECT, f"suspect since {s.failing_since.isoformat()}: "
                      f"{verdict.reason}", target=current, clear_switchover=clear,
                      primary_up=up)
    roles = {inst: "primary" if inst == current else (
        "replica" if (s.raws.get(inst) or {}).get("role") == "replica" else "unavailable")
        for inst in s.names}
    force = s.since_write > FORCED_WRITE_SECONDS
    return HaStep(HaStepKind.PUBLISH,
                  "primary healthy" + ("; status older than "
                                       f"{FORCED_WRITE_SECONDS:.0f} s is rewritten"
                                       if force else ""),
                  target=current, clear_switchover=clear, primary_up=up, roles=roles,
                  sync=sync_snapshot(s.spec, s.name, current, s.raws.get(current)), force=force)


class AfterRefusal(StrEnum):
    RESTART_IN_PLACE = "RestartInPlace"
    MARK_FAILED = "MarkFailed"


def after_refused_failover(s: CampusSnapshot) -> tuple[AfterRefusal, str]:
    """What to do when a failover promoted nobody, and why.

    The old primary is restarted in place only when its agent reported its server
    crashed (the agent does not restart a crashed primary by itself) and it has an
    address: it holds every commit it acknowledged, so it is the one instance that
    is provably complete. Otherwise the Campus is marked Failed and waits: no
    replica is promoted that could lose a committed transaction.
    """
    old = s.current
    crashed = bool((s.raws.get(old) or {}).get("crashed")) if old else False
    if crashed and old in s.addressed:
        return AfterRefusal.RESTART_IN_PLACE, (
            f"{old} crashed and holds every commit it acknowledged; no replica is "
            "provably complete")
    if crashed:
        return AfterRefusal.MARK_FAILED, f"{old} crashed but has no address to restart it"
    return AfterRefusal.MARK_FAILED, (
        f"{old} did not report a crash (hung or unreachable): nothing to restart")


def role_after_refusal(old: str, planned: bool) -> tuple[str, str]:
    """The role label the old primary gets back when its failover or switchover is refused.

    `primary`, before anyone knows it is healthy, on purpose: the refusal changed
    nothing durable (targetPrimary was not written), so currentPrimary still names
    it and it is the only instance allowed to take writes. The label only routes
    the read-write Service; if the server is down, clients fail to connect exactly
    as they would with no endpoint, and the next cycle's verdict (failed again, or
    healthy) relabels it. Taking the label away instead would leave a recovered
    primary without clients until a later healthy cycle. A switchover fenced it and
    waited for the stop; its agent lifts that fence by itself once it reads a Campus
    settled on it (currentPrimary names it, no failover in flight), which a refusal
    leaves as it was.
    """
    what = "switchover" if planned else "failover"
    return "primary", (f"{what} refused: {old} is still currentPrimary and the only "
                       "instance that may take writes")


class PhaseReason(StrEnum):
    """The Ready condition's reason (and the Degraded condition's, when degraded)."""

    ALL_READY = "AllInstancesReady"
    NOT_ALL_READY = "NotAllReady"
    STRAY_PRIMARY = "StrayPrimary"  # an instance besides currentPrimary reports primary
    PRIMARY_NOT_SERVING = "PrimaryNotServing"  # currentPrimary does not report primary


@dataclass(frozen=True)
class PhaseVerdict:
    """What status.phase and the Ready/Degraded conditions say, and why. `degraded_reason`
    is the Degraded condition's reason (InstancesNotReady / AllServing when no role is
    wrong, as before the role check)."""

    phase: CampusPhase
    reason: PhaseReason
    message: str
    degraded_reason: str


def campus_phase(names: Sequence[str], current: str | None,
                 roles: Mapping[str, str | None], ready: Mapping[str, bool]) -> PhaseVerdict:
    """The published phase: Ready only when every pod is ready AND the roles the agents
    report agree with currentPrimary.

    Pod readiness is the kubelet's last probe, which can lag the agent by a probe
    period; the role is each agent's live answer. Counting pods alone, a former primary
    still running unfenced beside the new one (CI: lab-0 primary with lab-1 current,
    all three pods ready) was published Ready and settled. So an instance other than
    currentPrimary that reports `primary` makes the Campus Degraded (StrayPrimary), as
    does a currentPrimary that does not report `primary` (PrimaryNotServing); either
    clears once the agents' reports agree, whatever the pods said meanwhile.
    """
    n_ready = sum(1 for v in ready.values() if v)
    counted = f"{n_ready}/{len(names)} instances ready"
    if not current:
        return PhaseVerdict(CampusPhase.INITIALIZING, PhaseReason.NOT_ALL_READY, counted,
                            "AllServing")
    strays = [n for n in names if n != current and roles.get(n) == "primary"]
    if strays:
        who = ", ".join(strays)
        verb, agent = (("runs as a primary", "its agent steps it") if len(strays) == 1
                       else ("run as primaries", "their agents step them"))
        return PhaseVerdict(
            CampusPhase.DEGRADED, PhaseReason.STRAY_PRIMARY,
            f"{who} still {verb} beside currentPrimary {current}; {agent} down once "
            f"they read the Campus ({counted})", PhaseReason.STRAY_PRIMARY.value)
    role = roles.get(current)
    if role != "primary":
        return PhaseVerdict(
            CampusPhase.DEGRADED, PhaseReason.PRIMARY_NOT_SERVING,
            f"currentPrimary {current} reports role {role or 'nothing'}, not primary "
            f"({counted})", PhaseReason.PRIMARY_NOT_SERVING.value)
    if n_ready != len(names):
        return PhaseVerdict(CampusPhase.DEGRADED, PhaseReason.NOT_ALL_READY, counted,
                            "InstancesNotReady")
    return PhaseVerdict(CampusPhase.READY, PhaseReason.ALL_READY, counted, "AllServing")
