"""One loop of an instance agent as a pure decision: facts -> plan -> step.

agent.Agent.tick reads what its agent knows into a frozen AgentFacts (the Campus
as last read, whether this loop reached the API server and a peer, its server,
its fence and pause, its crash record), asks plan_tick for the one step to take,
and executes it. Every branch names a Reason and a message, so a table test
(tests/unit/test_agent_plan.py) pins each decision and a reader of the logs sees
why it was taken.

The safety rules stay where they were, in core.instance: a primary runs only
while the Campus names it (start_plan, running_primary_must_step_down), a
primary cut from everything fences itself (self_fence_due). This planner only
orders them: which applies first, when a fence is lifted, when a pause ends, and
that a crashed primary is never restarted behind the operator's back, and that a
Campus read older than the operator's last call to this agent decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .instance import (
    CampusView,
    DataState,
    Plan,
    StartDecision,
    running_primary_must_step_down,
    self_fence_due,
    start_plan,
)

PAUSE_LIMIT = 20.0  # seconds a paused replica waits for the operator's follow call
CRASHED = ("primary server stopped uncleanly: waiting for the operator to fail over or "
           "recover it")


class AgentAction(StrEnum):
    WAIT = "wait"  # nothing safe to do yet: say why
    STEP_DOWN = "step-down"  # SIGKILL the running primary's group and stay fenced
    SERVE_PRIMARY = "serve-primary"  # keep serving writes (settings, slots)
    STOP_FENCED = "stop-fenced"  # the operator fenced this instance: fast stop
    KEEP_REPLICA = "keep-replica"  # a running replica stays as it is
    FOLLOW = "follow"  # re-point the running replica at the current primary
    STAY_FENCED = "stay-fenced"  # server down, fence not lifted: do nothing
    PROBE_SHUTDOWN = "probe-shutdown"  # read how the primary last stopped, then plan again
    HOLD_CRASHED = "hold-crashed"  # a crashed primary waits for the operator
    START = "start"  # carry out core.instance.start_plan's decision (Step.start)


class Reason(StrEnum):
    CAMPUS_UNREAD = "CampusUnread"
    API_UNREACHABLE = "ApiUnreachable"
    CAMPUS_SAYS_STEP_DOWN = "CampusSaysStepDown"  # fenced, or another instance named
    SELF_FENCE = "SelfFence"  # neither the API server nor a peer for too long
    PRIMARY_SERVING = "PrimaryServing"
    FENCED_BY_ANNOTATION = "FencedByAnnotation"
    STILL_FENCED = "StillFenced"
    PAUSED = "Paused"  # WAL receiver stopped for a failover's comparison
    FAILOVER_IN_FLIGHT = "FailoverInFlight"
    NO_PRIMARY = "NoPrimary"
    NAMED_PRIMARY = "NamedPrimary"  # the Campus names this replica: promote call pending
    FOLLOWING = "Following"  # already following the current primary at its address
    PRIMARY_CHANGED = "PrimaryChanged"
    PRIMARY_MOVED = "PrimaryMoved"  # same name, new pod address
    CRASH_REPORTED = "CrashReported"  # a crash seen earlier, not settled since
    EXITED_WITH_ERROR = "ExitedWithError"
    SHUTDOWN_UNKNOWN = "ShutdownUnknown"
    UNCLEAN_SHUTDOWN = "UncleanShutdown"
    KILLED_ON_THAW = "KilledOnThaw"  # this agent's own kill: recover in place
    ALONE_RECOVERS = "AloneRecovers"  # a crashed primary nobody could replace: in place
    START_PLAN = "StartPlan"
    VIEW_PREDATES_CALL = "ViewPredatesCall"  # Campus read before the operator's last call
    # what a step changed before its action (Step.lifted, Step.resumed)
    CONTACT_BACK = "ContactBack"
    SETTLED_ON_ME = "SettledOnMe"
    MOVED_ON = "MovedOn"
    PAUSE_OUTLIVED = "PauseOutlived"  # another primary was named since the pause
    PAUSE_TIMED_OUT = "PauseTimedOut"


@dataclass(frozen=True)
class AgentFacts:
    """What one loop of the agent knows, read once before it decides.

    `silent_seconds` is the time since the last contact with the API server or a
    peer; `primary_ip` the current primary's address as last resolved;
    `exit_code` the server process's exit status (None while it runs or when none
    was started here); `clean_shutdown` the control file's word, None until read
    (reading it is I/O: plan_tick asks for it with PROBE_SHUTDOWN only when needed).
    `view_predates_call`: the Campus read behind `view` started before the operator's
    last call to this agent that fenced, stopped or re-pointed its server (or before its
    own stall watchdog killed it), so it may predate the failover behind that call.
    """

    me: str
    campus_read: bool
    view: CampusView
    api_ok: bool
    peer_ok: bool
    running: bool
    data: DataState
    fenced: bool
    self_fenced: bool
    silent_seconds: float
    self_fence_after: float
    paused: bool
    paused_under: str | None
    paused_seconds: float
    upstream: str | None
    upstream_ip: str | None
    primary_ip: str | None
    killed_by_agent: bool
    crashed: bool
    exit_code: int | None
    clean_shutdown: bool | None = None
    pause_limit: float = PAUSE_LIMIT
    view_predates_call: bool = False
    # The other instances of the Campus as last read (0: one instance, or a satellite).
    peers: int = 1


@dataclass(frozen=True)
class Step:
    """The one thing this loop does, and why; `fenced`/`self_fenced` are the agent's
    fence flags from now on. `lifted`/`resumed` say a fence was lifted or a pause
    ended before the action (`notes` has their sentences); `resumed` also forgets the
    upstream. `clear_killed`: the kill on thaw is settled. `upstream`: the primary to
    FOLLOW; `start`: the start plan's decision to carry out."""

    action: AgentAction
    reason: Reason
    message: str
    fenced: bool
    self_fenced: bool
    lifted: Reason | None = None
    resumed: Reason | None = None
    notes: tuple[str, ...] = ()
    clear_killed: bool = False
    upstream: str | None = None
    start: StartDecision | None = None


@dataclass(frozen=True)
class _Before:
    """What a loop changed before its action: fence flags, a lifted fence, an ended
    pause, and their sentences."""

    fenced: bool
    self_fenced: bool
    lifted: Reason | None = None
    resumed: Reason | None = None
    notes: tuple[str, ...] = ()

    def step(self, action: AgentAction, reason: Reason, message: str, *,
             upstream: str | None = None, start: StartDecision | None = None,
             clear_killed: bool = False) -> Step:
        return Step(action, reason, message, self.fenced, self.self_fenced, self.lifted,
                    self.resumed, self.notes, clear_killed, upstream, start)


def plan_tick(f: AgentFacts) -> Step:
    """The step of one agent loop, in priority order: no Campus read yet; a running
    primary (step down, fence itself, or serve); a view older than the operator's last
    call; lifting a fence; a running server (stop if fenced, else keep or re-point the
    replica); a stopped one (stay fenced, wait for the API server, hold a crashed
    primary, or start by core.instance)."""
    if not f.campus_read:
        return _Before(f.fenced, f.self_fenced).step(
            AgentAction.WAIT, Reason.CAMPUS_UNREAD, "Campus not readable yet")
    if f.running and f.data == DataState.PRIMARY:
        return _running_primary(f)
    if f.view_predates_call:
        # The loop read the Campus, then waited for the lock while an operator call (a
        # failover fencing this primary) ran: that read can still name this instance
        # primary after another was promoted, and lifting the fence on it restarted the
        # old primary beside the new one (CI: lab-0 back as primary after lab-1's
        # promotion). Only a read started after the call may lift a fence, start or
        # re-point the server; a running primary's step-down above needs none.
        return _Before(f.fenced, f.self_fenced).step(
            AgentAction.WAIT, Reason.VIEW_PREDATES_CALL, "the Campus was read before the "
            "operator's last call: deciding on the next read")
    b = _lift_fence(f)
    if f.running and f.me in f.view.fenced:
        return replace(b, fenced=True).step(AgentAction.STOP_FENCED, Reason.FENCED_BY_ANNOTATION,
                                            "fenced by annotation")
    if f.running:
        return _running_replica(f, b)
    if b.fenced:
        return b.step(AgentAction.STAY_FENCED, Reason.STILL_FENCED,
                      "fenced: waiting for the Campus to settle")
    if not f.api_ok:
        return b.step(AgentAction.WAIT, Reason.API_UNREACHABLE,
                      "API server unreachable; not starting blind")
    decision = start_plan(f.me, f.data, f.view)
    if decision.plan != Plan.START_PRIMARY:
        return b.step(AgentAction.START, Reason.START_PLAN, decision.reason, start=decision)
    # A primary that crashed is not restarted behind the operator's back: a synchronous
    # replica may be promoted instead; the operator says which.
    if f.killed_by_agent:
        # Killed on thaw by this agent, and the Campus still names it primary with no
        # failover in flight: recovering in place is what the operator would ask.
        return b.step(AgentAction.START, Reason.KILLED_ON_THAW, "killed on thaw by this agent "
                      "and still named primary: restarting in place", start=decision,
                      clear_killed=True)
    if not f.peers:
        # Alone (a satellite, a one-instance Campus): no replica could be promoted in its
        # place, so holding the crashed primary for the operator only lengthens the
        # outage. The operator's answer would be to restart it in place (it holds every
        # commit it acknowledged: core.haplan.after_refused_failover), and a satellite has
        # no HA loop to ask at all: its pod deleted while offline never served again.
        # Starting it runs crash recovery; a server that keeps failing is retried each
        # loop with its error in the report.
        return b.step(AgentAction.START, Reason.ALONE_RECOVERS, "no other instance could "
                      "take over: restarting the primary in place (crash recovery)",
                      start=decision, clear_killed=True)
    if f.crashed:
        return b.step(AgentAction.HOLD_CRASHED, Reason.CRASH_REPORTED, CRASHED)
    if f.exit_code not in (None, 0):
        return b.step(AgentAction.HOLD_CRASHED, Reason.EXITED_WITH_ERROR, CRASHED)
    if f.clean_shutdown is None:
        return b.step(AgentAction.PROBE_SHUTDOWN, Reason.SHUTDOWN_UNKNOWN, "how the primary "
                      "last stopped is not known yet: read the control file")
    if not f.clean_shutdown:
        return b.step(AgentAction.HOLD_CRASHED, Reason.UNCLEAN_SHUTDOWN, CRASHED)
    return b.step(AgentAction.START, Reason.START_PLAN, decision.reason, start=decision)


def _running_primary(f: AgentFacts) -> Step:
    """A serving primary steps down when the Campus (readable) names another or fences
    it, fences itself when it reached nobody for selfFenceAfterSeconds, else serves.

    Self-fencing only makes room for a replica the operator may promote meanwhile. With
    no other instance (a one-instance Campus, a satellite) nobody can be promoted in its
    place, so an unreachable API server does not stop its writes: a satellite keeps
    working offline, which is what it is for."""
    if f.api_ok:
        why = running_primary_must_step_down(f.me, f.view)
        if why:
            return _Before(True, f.self_fenced).step(
                AgentAction.STEP_DOWN, Reason.CAMPUS_SAYS_STEP_DOWN, why)
    elif f.peers and not f.peer_ok and self_fence_due(f.silent_seconds, f.self_fence_after):
        return _Before(True, True).step(
            AgentAction.STEP_DOWN, Reason.SELF_FENCE, "self-fence: no contact with the API "
            f"server or any peer for {f.silent_seconds:.1f}s")
    return _Before(f.fenced, f.self_fenced).step(AgentAction.SERVE_PRIMARY,
                                                 Reason.PRIMARY_SERVING, "serving writes")


def _lift_fence(f: AgentFacts) -> _Before:
    """The fence flags of a server that is not a running primary. A self-fence ends
    when the API server answers again (the Campus's fence list decides); a step-down
    lasts until the Campus settles: it names us primary again with no failover in
    flight, or names another primary we can rejoin. The operator's fence is lifted
    only by the operator."""
    b, view = _Before(f.fenced, f.self_fenced), f.view
    if b.self_fenced and f.api_ok:
        b = _Before(f.me in view.fenced, False, Reason.CONTACT_BACK,
                    notes=("contact with the API server is back: the self-fence ends",))
    if b.fenced and f.me not in view.fenced and not b.self_fenced:
        if view.current_primary == f.me and view.target_primary in (None, f.me):
            b = replace(b, fenced=False, lifted=Reason.SETTLED_ON_ME, notes=(
                *b.notes, f"the Campus settled on {f.me} again: fence lifted"))
        elif view.current_primary and view.current_primary != f.me:
            b = replace(b, fenced=False, lifted=Reason.MOVED_ON, notes=(
                *b.notes, f"the Campus names {view.current_primary} primary: fence "
                "lifted to rejoin it"))
    return b


def _running_replica(f: AgentFacts, b: _Before) -> Step:
    """A running replica follows the current primary, except while paused for a
    failover, while a failover is in flight, or while the Campus names no one else.
    A pause ends without the follow call once another primary is named, or after
    pause_limit with no failover in flight."""
    view, target = f.view, f.view.current_primary
    in_flight = view.target_primary not in (None, target)
    paused, upstream = f.paused, f.upstream
    if paused and not in_flight and target and target != f.paused_under:
        # The failover that paused us finished (another primary is named) and its follow
        # call missed us: follow now rather than wait out the pause limit.
        b = replace(b, resumed=Reason.PAUSE_OUTLIVED, notes=(
            *b.notes, f"paused under {f.paused_under}, now {target} is primary: "
            "following it"))
    elif paused and not in_flight and f.paused_seconds > f.pause_limit:
        # The election that paused us ended without a follow call reaching us.
        b = replace(b, resumed=Reason.PAUSE_TIMED_OUT, notes=(
            *b.notes, f"paused for {f.pause_limit:.0f}s with no failover in flight: "
            "resuming"))
    if b.resumed:
        paused, upstream = False, None
    keep = AgentAction.KEEP_REPLICA
    if paused:
        return b.step(keep, Reason.PAUSED, f"paused under {f.paused_under}: waiting for "
                      "the operator's follow call")
    if in_flight:
        return b.step(keep, Reason.FAILOVER_IN_FLIGHT, f"failover to "
                      f"{view.target_primary} in flight: waiting for the operator")
    if not target:
        return b.step(keep, Reason.NO_PRIMARY, "the Campus names no primary")
    if target == f.me:
        return b.step(keep, Reason.NAMED_PRIMARY, "the Campus names this replica "
                      "primary: waiting for the promote call")
    if upstream != target:
        return b.step(AgentAction.FOLLOW, Reason.PRIMARY_CHANGED, f"following {target} "
                      f"(was {upstream})", upstream=target)
    # Follow again when the primary's pod came back with a new address under the same
    # name (a deleted pod recreated before any failover): the old address is dead.
    if f.primary_ip not in (None, f.upstream_ip):
        return b.step(AgentAction.FOLLOW, Reason.PRIMARY_MOVED, f"{target} moved from "
                      f"{f.upstream_ip} to {f.primary_ip}: following it there",
                      upstream=target)
    return b.step(keep, Reason.FOLLOWING, f"following {target} at {f.upstream_ip}")


class Role(StrEnum):
    """The role an agent reports; the operator's HA cycle reads it (core.haplan)."""

    FENCED = "fenced"
    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"


def reported_role(fenced: bool, running: bool, in_recovery: bool | None) -> Role:
    """Fenced first: a fenced instance never reports itself primary, whatever its
    server answers (it is being stopped, or must not be chosen). A server whose
    recovery state could not be read is `unknown`, never guessed."""
    if fenced:
        return Role.FENCED
    if running and in_recovery is False:
        return Role.PRIMARY
    if running and in_recovery:
        return Role.REPLICA
    return Role.UNKNOWN


def is_ready(fenced: bool, running: bool, error: bool, in_recovery: bool | None,
             named_primary: bool) -> bool:
    """Readiness routes clients: a primary is ready only while the Campus (as this
    agent last read it) names it, so a primary that lost its place takes no writes
    through the Service; a replica is ready while it is in recovery; a fenced, stopped
    or erroring server never is."""
    if fenced or not running or error:
        return False
    if in_recovery is False:
        return named_primary
    return bool(in_recovery)
