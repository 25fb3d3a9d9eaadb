"""What an instance should be, decided from the Campus and its own data folder.

The agent asks this at start and on every loop; the answer depends only on
what the API says (currentPrimary, targetPrimary) and what is on disk, so an
agent that restarts at any moment lands in the same place. The rules keep two
primaries from ever running at once: an instance becomes primary only when the
Campus names it, and a primary that sees another instance named steps down.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DataState(StrEnum):
    EMPTY = "empty"  # no database yet
    PRIMARY = "primary"  # a data folder that last ran as primary (no standby.signal)
    REPLICA = "replica"  # a data folder set up to follow a primary


class Plan(StrEnum):
    INITDB = "initdb"  # create the campus's first database
    BASEBACKUP = "basebackup"  # copy the current primary
    START_PRIMARY = "start-primary"
    START_REPLICA = "start-replica"
    REWIND = "rewind"  # a former primary: pg_rewind from the new one, then follow it
    WAIT = "wait"  # nothing safe to do yet
    FENCE = "fence"  # stop serving: another instance is (or is becoming) primary


@dataclass(frozen=True)
class CampusView:
    """The parts of the Campus the agent acts on."""

    current_primary: str | None
    target_primary: str | None
    fenced: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StartDecision:
    plan: Plan
    upstream: str | None
    reason: str


def start_plan(me: str, data: DataState, campus: CampusView) -> StartDecision:
    """What to do when the agent starts (or its server is down)."""
    if me in campus.fenced:
        return StartDecision(Plan.FENCE, None, f"{me} is fenced by the operator")
    current, target = campus.current_primary, campus.target_primary
    if target and current and target != current:
        # A failover or switchover is in flight: only its target may act as primary, and
        # it promotes on the operator's call, not on its own.
        if me == target:
            if data == DataState.EMPTY:
                return StartDecision(Plan.WAIT, None, "named target primary but has no data")
            return StartDecision(Plan.START_REPLICA if data == DataState.REPLICA else Plan.FENCE,
                            current, "target of a failover in progress: waiting for the promote "
                            "call")
        if data == DataState.PRIMARY:
            return StartDecision(Plan.FENCE, None, f"failover to {target} in progress")
        return StartDecision(Plan.WAIT, None, f"failover to {target} in progress")
    if current is None:
        if target == me and data != DataState.REPLICA:
            if data == DataState.EMPTY:
                return StartDecision(Plan.INITDB, None, "named first primary of a new campus")
            return StartDecision(Plan.START_PRIMARY, None, "named first primary; data present")
        return StartDecision(Plan.WAIT, None, "campus has no primary yet")
    if current == me:
        if data == DataState.EMPTY:
            return StartDecision(Plan.WAIT, None, "named primary but the data folder is empty: a "
                            "human must choose to re-initialise (data would be lost)")
        if data == DataState.REPLICA:
            # The operator named us after promoting us; a promote that did not reach the
            # disk (crash right after) is finished by starting as replica then promoting.
            return StartDecision(Plan.START_REPLICA, None, "primary by status, replica on disk: "
                            "waiting for the operator to finish the promotion")
        return StartDecision(Plan.START_PRIMARY, None, "current primary")
    if data == DataState.EMPTY:
        return StartDecision(Plan.BASEBACKUP, current, f"new replica of {current}")
    if data == DataState.PRIMARY:
        return StartDecision(Plan.REWIND, current, f"former primary rejoining {current}")
    return StartDecision(Plan.START_REPLICA, current, f"replica of {current}")


def running_primary_must_step_down(me: str, campus: CampusView) -> str | None:
    """A running primary checks this every loop; a reason means: fence now."""
    if me in campus.fenced:
        return f"{me} fenced by the operator"
    if campus.target_primary and campus.target_primary != me:
        return f"{campus.target_primary} is the target primary"
    if campus.target_primary == me:
        return None  # promoted by the operator; currentPrimary catches up in a moment
    if campus.current_primary and campus.current_primary != me:
        return f"{campus.current_primary} is the current primary"
    return None


def vouches_for(view: CampusView, paused: bool, serving_primary: bool) -> str | None:
    """The primary this instance tells a peer it still follows, or None.

    A cut-off primary keeps serving on its peers' word only while they all still follow
    it: a replica the operator paused for a failover, one whose Campus names a failover
    target or no primary, and a primary itself vouch for nobody. So once the operator has
    paused the replicas, no peer keeps an old primary serving (core.ha.fence_barrier)."""
    if paused or serving_primary or not view.current_primary:
        return None
    if view.target_primary not in (None, view.current_primary):
        return None
    return view.current_primary


def peers_vouch(me: str, peers: int, answers: list[str | None]) -> bool:
    """Contact through peers counts only when every peer answered and follows `me` (a
    peer that cannot be asked may be the one the operator promotes)."""
    return peers > 0 and len(answers) == peers and all(a == me for a in answers)


def self_fence_due(seconds_without_contact: float, limit: float) -> bool:
    """A primary that reached neither the API server nor any peer for `limit` seconds
    stops accepting writes: a partitioned primary must not go on beside a new one."""
    return seconds_without_contact >= limit


class StallAction(StrEnum):
    NONE = "none"
    KILL = "kill"  # stop the server at once; the Campus decides how it comes back


def after_stall(stalled_seconds: float, serving_as_primary: bool, detection_delay: float,
                self_fence_after: float) -> StallAction:
    """What an agent does when it finds it was frozen (SIGSTOP, a paused cgroup, a stalled
    node) for `stalled_seconds`.

    Its server was frozen with it and resumes as a writable primary in the same instant.
    Frozen for as long as the operator needs to call a primary failed, or as long as the
    primary would have fenced itself, a failover may have happened meanwhile: the server
    is killed before anything else (a SIGKILL reaches a stopped process group too), and
    comes back through start_plan, which starts it as primary only if the Campus still
    names it, and otherwise rewinds it into a replica. Shorter stalls change nothing.
    """
    if not serving_as_primary:
        return StallAction.NONE
    limit = max(1.0, min(detection_delay, self_fence_after))
    return StallAction.KILL if stalled_seconds >= limit else StallAction.NONE


class RejoinStep(StrEnum):
    CRASH_RECOVERY = "crash-recovery"  # finish recovery with no client able to connect
    REWIND = "rewind"
    FOLLOW = "follow"  # write the standby signal and start as a replica


def rejoin_steps(shut_down_cleanly: bool) -> tuple[RejoinStep, ...]:
    """How a former primary becomes a replica of the new one.

    pg_rewind needs a cleanly shut down target. After a crash or an immediate stop it
    would run crash recovery in single-user mode itself, which refuses a data folder
    with a standby signal: so recovery runs first, fenced from clients, and the standby
    signal is written only after the rewind.
    """
    first = () if shut_down_cleanly else (RejoinStep.CRASH_RECOVERY,)
    return (*first, RejoinStep.REWIND, RejoinStep.FOLLOW)
