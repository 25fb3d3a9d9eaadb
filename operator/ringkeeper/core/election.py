"""Which replica may become primary, and why: the safety core of failover.

A replica is promoted only when it provably holds every commit the old primary
acknowledged. With synchronous replication that proof comes from the primary's
last observed view of its standbys (which of them confirmed commits), taken
while it was healthy, plus the LSNs the replicas report once their WAL
receivers are stopped, so the numbers compared cannot move any more.

- FIRST n: every standby the primary listed as `sync` confirmed each commit,
  so one of them must answer; then the replica furthest ahead is complete.
- ANY n over k standbys: each commit reached n of the k. Any k-n+1 of them
  must include one that has it, so at least k-n+1 must answer; the replica
  furthest ahead is then complete.
- preferred durability: the furthest-ahead replica is promoted when its gap to
  the primary's last known LSN is within the configured bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from ..base.lsn import format_lsn as format_lsn
from ..base.lsn import parse_lsn as parse_lsn

# An agent reads the Campus every second: one that has not for this long has lost the
# API server.
API_STALE_SECONDS = 3.0

@dataclass(frozen=True)
class InstanceReport:
    """One instance as its agent reported it in this cycle (or failed to)."""

    name: str
    reachable: bool = True
    server_running: bool = True
    in_recovery: bool = True
    fenced: bool = False
    timeline: int | None = None
    current_lsn: int | None = None
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    receiver_active: bool = False
    api_contact_age: float | None = None  # seconds since its agent last read the Campus
    api_failing: bool = False  # its agent's last read failed, or one hangs

    @property
    def api_reachable(self) -> bool:
        """Whether its agent reads the Campus: one that cannot would promote only on the
        operator's word. Unknown (an agent that does not say) counts as reachable."""
        if self.api_failing:
            return False
        return self.api_contact_age is None or self.api_contact_age < API_STALE_SECONDS

    @property
    def position(self) -> int:
        """How far this instance's WAL goes: what a promotion would keep."""
        candidates = [v for v in (self.current_lsn, self.received_lsn, self.replayed_lsn)
                      if v is not None]
        return max(candidates) if candidates else -1

    @property
    def healthy_primary(self) -> bool:
        return (self.reachable and self.server_running and not self.in_recovery
                and not self.fenced)


@dataclass(frozen=True)
class SyncSnapshot:
    """The primary's view of synchronous replication, recorded while it was healthy."""

    method: str  # "any" | "first"
    number: int
    standbys: tuple[str, ...]  # every name in synchronous_standby_names
    confirming: tuple[str, ...]  # standbys whose sync_state was sync/quorum
    primary_lsn: int | None = None


class Durability(StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"


class ElectionReason(StrEnum):
    SYNCHRONOUS_STANDBY = "SynchronousStandby"
    QUORUM_COMPLETE = "QuorumComplete"
    WITHIN_LAG_BOUND = "WithinLagBound"
    NO_REPLICA_REACHABLE = "NoReplicaReachable"
    NO_SYNCHRONOUS_STANDBY = "NoSynchronousStandby"
    QUORUM_INCOMPLETE = "QuorumIncomplete"
    LAG_TOO_LARGE = "LagTooLarge"
    RECEIVERS_RUNNING = "ReceiversStillRunning"
    NO_SYNC_SNAPSHOT = "NoSyncSnapshot"
    # A switchover (choose_switchover): the operator asked for one replica by name.
    SWITCHOVER_CAUGHT_UP = "SwitchoverTargetCaughtUp"
    SWITCHOVER_TARGET_UNREACHABLE = "SwitchoverTargetUnreachable"
    SWITCHOVER_TARGET_BEHIND = "SwitchoverTargetBehind"


@dataclass(frozen=True)
class Election:
    candidate: str | None
    reason: ElectionReason
    message: str
    considered: tuple[str, ...] = field(default=())

    @property
    def safe(self) -> bool:
        return self.candidate is not None


def rank(reports: Sequence[InstanceReport]) -> list[InstanceReport]:
    """One total order, best first: reachable, not fenced, running, furthest WAL, reads
    the Campus, name.

    "Furthest" is the position a promotion keeps (the largest of the LSNs): a restarted
    standby whose WAL receiver never came back reports no received LSN, yet replays all
    it had flushed. Between replicas equally far ahead (equally safe), one whose agent
    still reads the Campus wins over one cut from the API server: the latter can only
    promote on the operator's word and cannot see the Campus settle afterwards.
    """
    return sorted(
        reports,
        key=lambda r: (
            not r.reachable,
            r.fenced,
            not r.server_running,
            -r.position,
            -(r.received_lsn if r.received_lsn is not None else -1),
            -(r.replayed_lsn if r.replayed_lsn is not None else -1),
            not r.api_reachable,
            r.name,
        ),
    )


def _usable(r: InstanceReport) -> bool:
    return r.reachable and r.server_running and not r.fenced and r.in_recovery


def choose_candidate(
    replicas: Sequence[InstanceReport],
    snapshot: SyncSnapshot | None,
    durability: Durability | str,
    max_lag_bytes: int = 0,
) -> Election:
    """Pick the replica to promote after the primary failed, or refuse and say why.

    `replicas` excludes the failed primary. Their WAL receivers must be stopped
    first: a receiver still streaming makes the LSNs compared here meaningless.
    """
    usable = [r for r in replicas if _usable(r)]
    if not usable:
        return Election(None, ElectionReason.NO_REPLICA_REACHABLE,
                        "no replica is reachable with a running server")
    streaming = [r.name for r in usable if r.receiver_active]
    if streaming:
        return Election(None, ElectionReason.RECEIVERS_RUNNING,
                        f"WAL receivers still running on {', '.join(streaming)}: positions "
                        "could still move, so no replica can be compared yet")
    ranked = rank(usable)
    if Durability(durability) == Durability.PREFERRED:
        best = ranked[0]
        if snapshot is None or snapshot.primary_lsn is None:
            return Election(best.name, ElectionReason.WITHIN_LAG_BOUND,
                            f"promoting {best.name}: furthest ahead; the old primary's last "
                            "position is unknown (durability preferred)",
                            tuple(r.name for r in ranked))
        gap = max(0, snapshot.primary_lsn - best.position)
        if gap > max_lag_bytes:
            return Election(None, ElectionReason.LAG_TOO_LARGE,
                            f"furthest replica {best.name} is {gap} bytes behind the old "
                            f"primary's last known position, above maxPromotionLagBytes "
                            f"({max_lag_bytes})")
        return Election(best.name, ElectionReason.WITHIN_LAG_BOUND,
                        f"promoting {best.name}: {gap} bytes behind, within "
                        f"maxPromotionLagBytes ({max_lag_bytes})",
                        tuple(r.name for r in ranked))

    # Durability required: prove completeness from the synchronous snapshot.
    if snapshot is None or snapshot.number < 1 or not snapshot.standbys:
        return Election(None, ElectionReason.NO_SYNC_SNAPSHOT,
                        "no record of which standbys were synchronous when the primary "
                        "failed, so no replica is known to hold every acknowledged commit")
    if snapshot.method == "first":
        sync = [r for r in ranked if r.name in snapshot.confirming]
        if not sync:
            return Election(None, ElectionReason.NO_SYNCHRONOUS_STANDBY,
                            "none of the standbys that were synchronous at failure time ("
                            + (", ".join(snapshot.confirming) or "none") + ") is reachable")
        # The furthest-ahead replica overall holds at least what the synchronous standby
        # holds, so it is complete too (and covers a sync set that changed since).
        best = ranked[0]
        return Election(best.name, ElectionReason.SYNCHRONOUS_STANDBY,
                        f"promoting {best.name}: furthest ahead, at or past synchronous "
                        f"standby {sync[0].name} of failure time", tuple(r.name for r in ranked))
    # ANY n over k standbys.
    k = len(snapshot.standbys)
    needed = k - snapshot.number + 1
    members = [r for r in ranked if r.name in snapshot.standbys]
    if len(members) < needed:
        return Election(None, ElectionReason.QUORUM_INCOMPLETE,
                        f"only {len(members)} of the {k} quorum standbys answered; ANY "
                        f"{snapshot.number} needs {needed} to be sure one of them holds every "
                        "acknowledged commit")
    best = ranked[0]
    return Election(best.name, ElectionReason.QUORUM_COMPLETE,
                    f"promoting {best.name}: furthest ahead among {len(members)} of {k} quorum "
                    f"standbys (ANY {snapshot.number} needs {needed})",
                    tuple(r.name for r in members))


# Refusals that stopping the WAL receivers cannot change: who answered, and what the
# primary recorded about its standbys. Positions only grow while receivers run, so a lag
# or a still-running receiver is no reason to refuse before the pause.
_FINAL_REFUSALS = frozenset({ElectionReason.NO_REPLICA_REACHABLE,
                             ElectionReason.NO_SYNC_SNAPSHOT,
                             ElectionReason.NO_SYNCHRONOUS_STANDBY,
                             ElectionReason.QUORUM_INCOMPLETE})


def refusal_before_pause(
    replicas: Sequence[InstanceReport],
    snapshot: SyncSnapshot | None,
    durability: Durability | str,
    max_lag_bytes: int = 0,
) -> Election | None:
    """The refusal the election would give whatever the paused positions turn out to be.

    The failover runner asks this on the replicas' unpaused status before it stops
    anything: a failover that can only be refused must not fence the old primary (after
    a failover that primary is the one just promoted) nor pause the replicas. Only what
    was reported counts: a replica that did not answer in time (a loaded node) may still
    answer the pause, which has a longer deadline, so it counts as answering here. It
    never chooses a candidate: the real election runs on the paused positions, so the
    safety rule is exactly choose_candidate's.
    """
    frozen = [replace(r, receiver_active=False) if r.reachable else
              replace(r, reachable=True, server_running=True, fenced=False, in_recovery=True)
              for r in replicas]
    election = choose_candidate(frozen, snapshot, durability, max_lag_bytes)
    if election.candidate is None and election.reason in _FINAL_REFUSALS:
        return election
    return None


def choose_switchover(target: str, replicas: Sequence[InstanceReport],
                      old: str | None) -> Election:
    """Whether the replica asked for by a switchover may be promoted, and why.

    A switchover fences the healthy old primary first, so it stopped cleanly and
    every commit it acknowledged was sent to its standbys; once their receivers
    are paused the target must be at least as far ahead as every reachable
    replica, or promoting it would lose what another replica holds. `replicas`
    excludes the old primary; their positions must be frozen (paused) first.
    """
    rep = next((r for r in replicas if r.name == target), None)
    if rep is None or not rep.reachable or not rep.server_running:
        return Election(None, ElectionReason.SWITCHOVER_TARGET_UNREACHABLE,
                        f"{target} is not reachable")
    best = max(r.position for r in replicas if r.reachable)
    if rep.position < best:
        return Election(None, ElectionReason.SWITCHOVER_TARGET_BEHIND,
                        f"{target} is behind another replica; it would lose commits")
    return Election(target, ElectionReason.SWITCHOVER_CAUGHT_UP,
                    f"switchover to {target}, caught up with the old primary {old}")
