"""The drill planner: from a frozen snapshot of a Drill and its target, the next step.

A drill run walks Start -> InjectFault -> AwaitRecovery -> Verify -> Finish. The executor
(controller/drill.py) takes a snapshot, asks `plan` what to do, does it and records where
the run stands; every decision (refuse, wait, pass or fail) is made here, without I/O, so
a table test covers each one. A refusal is a condition the user can act on (target
missing, a scenario the deployment cannot run); a wait says what it waits for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache

from ..api.v1alpha1.drill import Scenario, TargetKind
from ..base.cron import next_fire
from .drill_satellite import SatelliteTarget, SatReason, satellite_not_ready, satellite_refusal

# Scenarios this operator version executes; the others are refused, honestly.
SUPPORTED = frozenset(Scenario)
# Faults held for a while and then undone (a partition, a campus loss).
HELD = frozenset({Scenario.NETWORK_PARTITION, Scenario.CAMPUS_LOSS})
# Ring drills that end only once the ring converged again (all its links stream).
CONVERGING = frozenset({Scenario.CAMPUS_LOSS, Scenario.SYNC_CRASH})
# Load runs this long before the fault, so the ledger holds commits the fault can lose.
WARMUP = timedelta(seconds=5)
WARMUP_LIMIT = timedelta(seconds=60)  # then the fault comes even if a probe never wrote
# After maxRtoSeconds without a write, the run stops waiting and is judged (it fails).
RECOVERY_GRACE = timedelta(seconds=5)
# Every drill kills or cuts something that serves a hospital: a schedule may not fire
# more often than this (a typo such as "* * * * *" would take the primary down every few
# minutes). Rehearsals are weekly or monthly in practice; hourly is already generous.
MIN_SCHEDULE_GAP = timedelta(hours=1)
_GAP_SAMPLES = 48  # consecutive fires examined for the shortest gap


class Stage(StrEnum):
    """Where the live run stands (the executor's memory, mirrored in status.lastRun)."""

    STARTED = "Started"  # load running, no fault yet
    FAULTED = "Faulted"  # fault injected, waiting for a write through -rw
    RECOVERED = "Recovered"  # written again (or gave up waiting); load finishing
    VERIFIED = "Verified"  # ledger checked against the surviving members


class DrillAction(StrEnum):
    REFUSE = "Refuse"
    WAIT = "Wait"
    START = "Start"
    INJECT_FAULT = "InjectFault"
    HEAL = "Heal"  # undo a held fault: remove the policy, lift the campus's fence
    UNDO_FAULTS = "UndoFaults"  # a run lost with its process: remove what it left behind
    AWAIT_RECOVERY = "AwaitRecovery"
    VERIFY = "Verify"
    FINISH = "Finish"


class DrillReason(StrEnum):
    TARGET_MISSING = "TargetMissing"
    SCENARIO_IMPOSSIBLE = "ScenarioImpossible"
    CAMPUS_NOT_IN_RING = "CampusNotInRing"
    NOT_YET_SUPPORTED = "NotYetSupported"
    INVALID_SCHEDULE = "InvalidSchedule"
    SCHEDULE_TOO_FREQUENT = "ScheduleTooFrequent"
    SUSPENDED = "Suspended"
    NOT_DUE = "NotDue"
    COMPLETED = "Completed"
    TARGET_BUSY = "TargetBusy"
    TARGET_NOT_READY = "TargetNotReady"
    DUE = "Due"
    WARMING_UP = "WarmingUp"
    FAULT_DUE = "FaultDue"
    RECOVERING = "Recovering"
    RECOVERY_TIMED_OUT = "RecoveryTimedOut"
    LOAD_RUNNING = "LoadRunning"
    LOAD_DONE = "LoadDone"
    PARTITION_OVER = "PartitionOver"
    CONVERGING = "Converging"
    NOT_CONVERGED = "NotConverged"
    FAULT_NOT_INJECTED = "FaultNotInjected"
    PASSED = "Passed"
    RTO_EXCEEDED = "RtoExceeded"
    TRANSACTIONS_LOST = "TransactionsLost"
    NO_LOAD = "NoLoad"
    OPERATOR_RESTARTED = "OperatorRestarted"


@dataclass(frozen=True)
class DrillCampus:
    name: str
    ready: bool  # phase Ready with a current primary
    primary: str | None


@dataclass(frozen=True)
class Measured:
    """What the run measured: RTO None = no write came back in time. `lost` and
    `committed` count acknowledged transactions (maxLostTransactions judges them);
    `lost_rows` the rows of those (None: nothing could be checked)."""

    rto_seconds: float | None
    lost: int
    committed: int
    load_error: str | None = None  # why the load stopped, when it did not run its course
    # Ring drills: seconds from the fault's end (campusLoss: the fence lifted; syncCrash:
    # the crash) until every ring link streamed again; None = not within the limit.
    converge_seconds: float | None = None
    fault_error: str | None = None  # the fault did not happen (e.g. no session to kill)
    lost_rows: int | None = None


@dataclass(frozen=True)
class Snapshot:
    scenario: Scenario
    target_kind: TargetKind
    target_exists: bool
    campuses: tuple[DrillCampus, ...]  # the target's campuses (a ring's campusRef members)
    other_running: str | None  # the name of another Drill running on the same target
    now: datetime
    max_rto_seconds: int
    max_lost: int
    load_seconds: int
    schedule: str | None = None
    time_zone: str | None = None
    suspend: bool = False
    runs: int = 0
    last_started: datetime | None = None  # last run's start (schedules fire after it)
    created: datetime | None = None
    phase_running: bool = False  # status says a run is in progress
    # Faults of this Drill still in the cluster (its partition NetworkPolicy, a Campus
    # fence marked as its own), read only when status says Running and this process has
    # no live run; each named, e.g. "NetworkPolicy x", "fence on Campus north".
    leftover_faults: tuple[str, ...] = ()
    stage: Stage | None = None  # the live run in this process; None: no live run
    started_at: datetime | None = None
    probes_writing: bool = True  # every campus's probe has written once (the fault's "before")
    fault_at: datetime | None = None
    recovered: bool = False
    healed: bool = False  # a held fault (partition, campus loss) is undone
    healed_at: datetime | None = None
    returned: bool = False  # campusLoss: the lost campus wrote again after the fence lifted
    converged: bool = False  # ring drills: every ring link streams (after the fault ended)
    load_done: bool = False
    measured: Measured | None = None
    # spec.target.campus: the campus a campusLoss or syncCrash strikes (None: the first)
    fault_campus: str | None = None
    satellite: SatelliteTarget | None = None  # target kind Satellite (campuses: its parent)


@dataclass(frozen=True)
class DrillStep:
    action: DrillAction
    reason: DrillReason | SatReason
    message: str
    passed: bool | None = None  # Finish only


def _refusal(s: Snapshot) -> DrillStep | None:
    kind = s.target_kind.value
    if not s.target_exists:
        return DrillStep(DrillAction.REFUSE, DrillReason.TARGET_MISSING,
                    f"{kind} target does not exist in this namespace")
    if s.satellite is not None:
        said = satellite_refusal(s.satellite)
        return DrillStep(DrillAction.REFUSE, *said) if said else _too_frequent(s)
    if s.scenario not in SUPPORTED:
        return DrillStep(DrillAction.REFUSE, DrillReason.NOT_YET_SUPPORTED,
                    f"scenario {s.scenario.value} is not run by this Ringkeeper version "
                    "(docs/drills.md)")
    if not s.campuses:
        return DrillStep(DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE,
                    f"{kind} target has no Campus in this namespace to run a drill against")
    names = [c.name for c in s.campuses]
    if s.fault_campus is not None and s.fault_campus not in names:
        return DrillStep(DrillAction.REFUSE, DrillReason.CAMPUS_NOT_IN_RING,
                    f"spec.target.campus {s.fault_campus} is not a Campus member of the "
                    f"{kind} target (its Campus members: {', '.join(names)}): name one of "
                    "them, or leave it unset to strike the first")
    if s.scenario == Scenario.NETWORK_PARTITION and len(s.campuses) < 2:
        return DrillStep(DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE,
                    "networkPartition cuts two campuses apart: the target has "
                    f"{len(s.campuses)} Campus; use a ReplicationRing of two or more")
    if s.scenario == Scenario.CAMPUS_LOSS and len(s.campuses) < 2:
        return DrillStep(DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE,
                    "campusLoss of the only campus leaves nothing to recover on")
    if s.scenario == Scenario.SYNC_CRASH and len(s.campuses) < 2:
        return DrillStep(DrillAction.REFUSE, DrillReason.SCENARIO_IMPOSSIBLE,
                    "syncCrash needs a ring link between two Campuses of this namespace: "
                    f"the target has {len(s.campuses)}")
    return _too_frequent(s)


@lru_cache(maxsize=256)
def shortest_gap(schedule: str, time_zone: str | None) -> timedelta:
    """The shortest time between two consecutive fires of `schedule` over its next
    `_GAP_SAMPLES` fires from a fixed start (cached: the planner asks every tick). Raises
    ValueError for a schedule that does not parse or never fires."""
    at = next_fire(schedule, datetime(2026, 1, 1, tzinfo=UTC), time_zone)
    gap = timedelta.max
    for _ in range(_GAP_SAMPLES):
        nxt = next_fire(schedule, at, time_zone)
        gap = min(gap, nxt - at)
        at = nxt
    return gap


def _too_frequent(s: Snapshot) -> DrillStep | None:
    if s.schedule is None:
        return None
    try:
        gap = shortest_gap(s.schedule, s.time_zone)
    except ValueError:
        return None  # _due says why the schedule is unusable
    if gap >= MIN_SCHEDULE_GAP:
        return None
    minutes = int(gap.total_seconds() // 60)
    return DrillStep(DrillAction.REFUSE, DrillReason.SCHEDULE_TOO_FREQUENT,
                f"spec.schedule {s.schedule!r} fires {minutes} minute(s) apart; a drill "
                f"kills or cuts a serving campus, so runs must be at least "
                f"{int(MIN_SCHEDULE_GAP.total_seconds() // 60)} minutes apart")


def _due(s: Snapshot) -> DrillStep | None:
    """None when a run is due now, else the wait that says why not."""
    if s.suspend:
        return DrillStep(DrillAction.WAIT, DrillReason.SUSPENDED,
                         "spec.suspend is true: no run starts")
    if s.schedule is None:
        if s.runs > 0:
            return DrillStep(DrillAction.WAIT, DrillReason.COMPLETED,
                        "the drill ran once (no schedule); recreate it to run again")
        return None
    since = s.last_started or s.created or s.now
    try:
        at = next_fire(s.schedule, since, s.time_zone)
    except ValueError as exc:
        return DrillStep(DrillAction.REFUSE, DrillReason.INVALID_SCHEDULE, str(exc))
    if at > s.now:
        return DrillStep(DrillAction.WAIT, DrillReason.NOT_DUE, f"next run at {at.isoformat()}")
    return None


def judge(s: Snapshot, m: Measured) -> DrillStep:
    """Passed only when the fault happened, the load committed, the service came back
    within maxRtoSeconds, no acknowledged commit beyond maxLostTransactions is missing
    and (ring, satellite drills) it converged again."""
    if m.fault_error:
        return DrillStep(DrillAction.FINISH, DrillReason.FAULT_NOT_INJECTED,
                    f"the fault did not happen: {m.fault_error}", False)
    if m.committed == 0:
        why = f" (the load failed: {m.load_error})" if m.load_error else ""
        return DrillStep(DrillAction.FINISH, DrillReason.NO_LOAD,
                    f"no transaction was acknowledged: the drill measured nothing{why}", False)
    if m.lost > s.max_lost:
        return DrillStep(DrillAction.FINISH, DrillReason.TRANSACTIONS_LOST,
                    f"{m.lost} acknowledged transaction(s) of {m.committed} lost "
                    f"(allowed {s.max_lost})", False)
    if m.rto_seconds is None:
        return DrillStep(DrillAction.FINISH, DrillReason.RTO_EXCEEDED,
                    f"no write succeeded within {s.max_rto_seconds} s of the fault", False)
    if m.rto_seconds > s.max_rto_seconds:
        return DrillStep(DrillAction.FINISH, DrillReason.RTO_EXCEEDED,
                    f"recovery took {m.rto_seconds:.1f} s (allowed {s.max_rto_seconds} s)",
                    False)
    if _converging(s) and m.converge_seconds is None:
        what = ("the Satellite's status did not say connected, backlog 0 and BothWays"
                if s.satellite else "the ring's links did not all stream again")
        return DrillStep(DrillAction.FINISH, DrillReason.NOT_CONVERGED,
                    f"{what} within {s.max_rto_seconds} s of the fault's end", False)
    return DrillStep(DrillAction.FINISH, DrillReason.PASSED,
                f"{'satellite write gap' if s.satellite else 'writes back after'} "
                f"{m.rto_seconds:.1f} s (allowed {s.max_rto_seconds} s), "
                f"{m.committed} transactions committed, {m.lost} lost", True)


def partition_hold(s: Snapshot) -> timedelta:
    """How long a held fault (networkPartition, campusLoss) lasts: half the load, so the
    other half shows the campuses converge under load after it."""
    return timedelta(seconds=max(s.load_seconds // 2, 1))


def _heal_due(s: Snapshot) -> bool:
    return (s.scenario in HELD and not s.healed
            and s.fault_at is not None
            and (s.now - s.fault_at >= partition_hold(s) or s.load_done))


def _settled(s: Snapshot) -> bool:
    """Whole again: every link streams (and a lost campus writes again)."""
    return s.converged and (s.scenario != Scenario.CAMPUS_LOSS or s.returned)


def convergence_timed_out(s: Snapshot) -> bool:
    """No convergence within maxRtoSeconds (+ grace) of the fault's end: the run is
    judged (NotConverged) rather than waiting for ever."""
    since = s.healed_at if s.scenario in HELD else s.fault_at
    return since is not None and s.now - since > timedelta(
        seconds=s.max_rto_seconds) + RECOVERY_GRACE


def _converging(s: Snapshot) -> bool:
    """Ring drills, and a Satellite's partition (its link must stream again)."""
    return s.scenario in CONVERGING or s.satellite is not None


def _awaiting_ring(s: Snapshot) -> bool:
    return _converging(s) and not _settled(s) and not convergence_timed_out(s)


def _load_over(s: Snapshot) -> bool:
    """Check once the load stopped, a held fault is undone and it converged (or timed out)."""
    return (s.load_done and (s.scenario not in HELD or s.healed)
            and not _awaiting_ring(s))


def _not_over(s: Snapshot, prefix: str = "") -> DrillStep:
    if s.load_done and (s.scenario not in HELD or s.healed):
        return DrillStep(DrillAction.WAIT, DrillReason.CONVERGING,
                    prefix + "waiting for the ring's links to stream again")
    return DrillStep(DrillAction.WAIT, DrillReason.LOAD_RUNNING, prefix + "load still running")


def _orphaned(s: Snapshot) -> DrillStep:
    """Status says Running but this process has no live run (the operator or the Drill's
    daemon restarted mid-run): the load, probes and ledger died with the old process, so
    nothing is measured; every fault it made (partition policy, campus fence: found from
    the cluster alone) is undone first and only then is the run ended Failed, so an error
    while undoing leaves it Running and retried, never Failed with a fault in place."""
    if s.leftover_faults:
        return DrillStep(DrillAction.UNDO_FAULTS, DrillReason.OPERATOR_RESTARTED,
                         "the operator restarted during the run; undoing what its fault "
                         "left: " + ", ".join(s.leftover_faults))
    return DrillStep(DrillAction.FINISH, DrillReason.OPERATOR_RESTARTED,
                     "the operator restarted during the run: its load, probes and ledger "
                     "were in the old process, so nothing was measured; no fault of the "
                     "run is left", False)


def ring_fault_campus(s: Snapshot) -> str:
    """The campus a campusLoss or syncCrash strikes: spec.target.campus (checked against
    the ring's Campus members before the run starts), else the ring's first Campus."""
    return s.fault_campus or s.campuses[0].name


def plan(s: Snapshot) -> DrillStep:
    """The next step of the drill in `s`."""
    if s.stage is None:
        if s.phase_running:
            return _orphaned(s)
        refusal = _refusal(s)
        if refusal is not None:
            return refusal
        wait = _due(s)
        if wait is not None:
            return wait
        if s.other_running:
            return DrillStep(DrillAction.WAIT, DrillReason.TARGET_BUSY,
                        f"Drill {s.other_running} is running on the same target")
        not_ready = [c.name for c in s.campuses if not c.ready] + satellite_not_ready(s.satellite)
        if not_ready:
            return DrillStep(DrillAction.WAIT, DrillReason.TARGET_NOT_READY,
                        f"Campus {', '.join(not_ready)} is not Ready with a primary")
        return DrillStep(DrillAction.START, DrillReason.DUE, "starting the load")
    if s.stage == Stage.STARTED:
        if s.started_at is not None and (s.now - s.started_at < WARMUP or (
                not s.probes_writing and s.now - s.started_at < WARMUP_LIMIT)):
            # The probe must have seen the writable server before the fault, or a write
            # that slips in before the kill takes effect would pass for a recovery.
            return DrillStep(DrillAction.WAIT, DrillReason.WARMING_UP,
                             "load warming up before the fault")
        return DrillStep(DrillAction.INJECT_FAULT, DrillReason.FAULT_DUE,
                         f"injecting {s.scenario.value}")
    if s.stage in (Stage.FAULTED, Stage.RECOVERED) and _heal_due(s):
        return DrillStep(DrillAction.HEAL, DrillReason.PARTITION_OVER,
                    f"{s.scenario.value} held {partition_hold(s).total_seconds():.0f} s; "
                    "undoing it")
    if s.stage == Stage.FAULTED:
        limit = timedelta(seconds=s.max_rto_seconds) + RECOVERY_GRACE
        if s.recovered:
            if not _load_over(s):
                return _not_over(s, "recovered; ")
            return DrillStep(DrillAction.VERIFY, DrillReason.LOAD_DONE,
                             "recovered; checking the ledger")
        if s.fault_at is not None and s.now - s.fault_at > limit:
            if s.scenario in HELD and not s.healed:  # the check needs the fault undone
                return DrillStep(DrillAction.HEAL, DrillReason.RECOVERY_TIMED_OUT,
                            f"no write within {s.max_rto_seconds} s of the fault; undoing it")
            return DrillStep(DrillAction.VERIFY, DrillReason.RECOVERY_TIMED_OUT,
                        f"no write within {s.max_rto_seconds} s of the fault")
        return DrillStep(DrillAction.AWAIT_RECOVERY, DrillReason.RECOVERING,
                         "waiting for a write through -rw")
    if s.stage == Stage.RECOVERED:
        if not _load_over(s):
            return _not_over(s)
        return DrillStep(DrillAction.VERIFY, DrillReason.LOAD_DONE, "checking the ledger")
    if s.measured is None:
        return DrillStep(DrillAction.VERIFY, DrillReason.LOAD_DONE, "checking the ledger")
    return judge(s, s.measured)
