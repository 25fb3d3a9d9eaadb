"""The campus HA loop's decisions: is the primary failed, and what the status should say.

Pure functions over the agents' reports (plain dicts as the agent serves them)
and the Campus status; the controller's failover runner carries them out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..base.lsn import parse_lsn
from .election import InstanceReport, SyncSnapshot
from .names import instance_count, instance_names


class PrimaryState(StrEnum):
    HEALTHY = "Healthy"
    SUSPECT = "Suspect"  # looks failed, not yet for the detection delay
    FAILED = "Failed"
    NONE = "None"  # the campus has no primary yet


@dataclass(frozen=True)
class PrimaryVerdict:
    state: PrimaryState
    failing_since: datetime | None
    reason: str


def to_report(name: str, raw: Mapping[str, Any] | None) -> InstanceReport:
    """An agent's /api/status answer (None when it did not answer) as an InstanceReport."""
    if raw is None:
        return InstanceReport(name=name, reachable=False, server_running=False)
    server = raw.get("server") or {}
    return InstanceReport(
        name=name,
        reachable=True,
        server_running=bool(server.get("running")) and not server.get("error"),
        in_recovery=server.get("in_recovery") is not False,
        fenced=bool(raw.get("fenced")),
        timeline=server.get("timeline"),
        current_lsn=parse_lsn(server.get("current_lsn")),
        received_lsn=parse_lsn(server.get("receive_lsn")),
        replayed_lsn=parse_lsn(server.get("replay_lsn")),
        receiver_active=bool(server.get("receiver")),
        api_contact_age=_seconds((raw.get("ha") or {}).get("apiContactSeconds")),
        api_failing=(raw.get("ha") or {}).get("apiFailing") is True,
    )


def _seconds(value: Any) -> float | None:
    """A duration an agent reported, or None when it did not (an older agent) or sent
    something that is not a number: a missing fact is never read as a good one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def primary_verdict(
    primary: str | None,
    report: InstanceReport | None,
    pod_ready: bool,
    failing_since: datetime | None,
    now: datetime,
    detection_delay: float,
    last_failover: Mapping[str, Any] | None = None,
    cut: str | None = None,
) -> PrimaryVerdict:
    """A primary counts as failed once it looked failed for the whole detection delay.

    One the last failover promoted moments ago, whose agent says it serves, stays only
    suspect while its pod waits for the kubelet's next readiness probe (just_promoted).
    `cut` (standby_cut's reason) makes a primary that answers and serves look failed
    too: cut off from its synchronous standbys it commits nothing.
    """
    if primary is None:
        return PrimaryVerdict(PrimaryState.NONE, None, "no primary yet")
    if report is not None and report.healthy_primary and pod_ready and cut is None:
        return PrimaryVerdict(PrimaryState.HEALTHY, None, "primary serving")
    hold = just_promoted(primary, report, last_failover, now)
    if hold is not None:
        return PrimaryVerdict(PrimaryState.SUSPECT, failing_since or now, hold)
    if report is None or not report.reachable:
        why = f"agent of {primary} unreachable"
    elif not report.server_running:
        why = f"server of {primary} down"
    elif report.fenced:
        why = f"{primary} fenced"
    elif report.in_recovery:
        why = f"{primary} is in recovery"
    elif cut is not None:
        why = cut
    else:
        why = f"pod {primary} not ready"
    since = failing_since or now
    if (now - since).total_seconds() >= detection_delay:
        return PrimaryVerdict(PrimaryState.FAILED, since, why)
    return PrimaryVerdict(PrimaryState.SUSPECT, since, why)


# A commit waiting this long for its synchronous standbys means they do not confirm (a
# healthy standby confirms within milliseconds); a replica whose WAL receiver got nothing
# for this long is not being fed by the primary.
SYNC_WAIT_LIMIT = 1.0
RECEIVER_SILENCE = 1.0


def standby_cut(primary: str, primary_raw: Mapping[str, Any] | None,
                replica_raws: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """Why a primary that answers and serves counts as failed anyway, or None.

    A primary cut off from its replicas only still answers the operator, but under
    synchronous replication it commits nothing until the cut heals: RPO holds,
    availability is zero for as long as the cut lasts. It counts as cut when all of:

    - it runs synchronous replication (an asynchronous primary keeps committing, and
      failing it over would lose what the replicas lack);
    - its own view says the synchronous standbys are absent: fewer streaming members of
      synchronous_standby_names than it needs, or for SYNC_WAIT_LIMIT or longer either a
      commit waited for them or it had WAL none of them confirmed with no confirmation
      advancing (its agent measures this between reports, so it holds while clients
      time out and retry). A black-holed connection still shows as streaming until
      wal_sender_timeout, but nothing it carries is confirmed;
    - a majority of those standbys answer the operator as healthy replicas, so a failover
      has somewhere to go (the election still decides whether it may);
    - none of them says its WAL receiver got anything in the last RECEIVER_SILENCE
      seconds (each reports it; a replica that does not is not counted as silent), so
      the replicas confirm the cut from their side: slow standbys that still receive
      are not a cut.

    The caller applies the detection delay (failingSince), as for every other failure.
    """
    report = to_report(primary, primary_raw)
    if primary_raw is None or not report.healthy_primary:
        return None  # the other rules judge a primary that is down or unreachable
    server = primary_raw.get("server") or {}
    parsed = parse_standby_names(str(server.get("sync_names") or ""))
    if parsed is None or parsed[1] < 1:
        return None
    method, number, sync_set = parsed
    number = min(number, len(sync_set))
    streaming = sorted({str(s.get("application_name")) for s in server.get("standbys") or []
                        if s.get("state") == "streaming"
                        and s.get("application_name") in sync_set})
    facts = primary_raw.get("ha") or {}
    waited = _seconds(facts.get("syncWaitSeconds"))
    unconfirmed = _seconds(facts.get("syncStalledSeconds"))
    waiters = facts.get("syncWaiters")
    stalled = ((waited is not None and waited >= SYNC_WAIT_LIMIT)
               or (unconfirmed is not None and unconfirmed >= SYNC_WAIT_LIMIT))
    if len(streaming) >= number and not stalled:
        return None
    healthy: dict[str, float | None] = {}
    for name in sync_set:
        raw = replica_raws.get(name)
        r = to_report(name, raw)
        if raw is not None and r.reachable and r.server_running and r.in_recovery \
                and not r.fenced:
            healthy[name] = _seconds((raw.get("ha") or {}).get("receiverSilentSeconds"))
    if len(healthy) < len(sync_set) // 2 + 1:
        return None
    if any(silent is None or silent < RECEIVER_SILENCE for silent in healthy.values()):
        return None
    need = f"{method.upper()} {number}"
    if len(streaming) < number:
        seen = f"{len(streaming)} of its synchronous standbys streaming ({need})"
    else:
        seen = (f"its standbys ({', '.join(streaming)}) confirm no commit ({need})")
    waiting = ""
    if unconfirmed is not None and unconfirmed >= SYNC_WAIT_LIMIT:
        waiting += f"; none confirmed its WAL for {unconfirmed:.1f}s"
    if waiters and waited is not None:
        waiting += f"; {waiters} commit(s) waiting for them, the oldest {waited:.1f}s"
    silence = ", ".join(f"{n} {healthy[n]:.1f}s" for n in sorted(healthy))
    return (f"{primary} is cut off from its synchronous standbys: {seen}{waiting}; the "
            f"replicas' WAL receivers got nothing for {silence}")


_SSN = re.compile(r"^\s*(ANY|FIRST)?\s*(\d+)?\s*\((.*)\)\s*$", re.IGNORECASE)


def parse_standby_names(text: str) -> tuple[str, int, tuple[str, ...]] | None:
    """'ANY 1 ("a", "b")' -> ("any", 1, ("a", "b")); '' or unparsable -> None."""
    m = _SSN.match(text or "")
    if not m:
        return None
    names = tuple(n.strip().strip('"').replace('""', '"') for n in m.group(3).split(",")
                  if n.strip())
    method = (m.group(1) or "first").lower()
    return method, int(m.group(2) or 1), names


def sync_snapshot(spec: Mapping[str, Any], campus: str, primary: str,
                  raw: Mapping[str, Any] | None) -> SyncSnapshot | None:
    """Record, while the primary is healthy, which standbys confirm its commits.

    The primary's own synchronous_standby_names is the truth (a spec change reaches it
    a moment later); the spec is only the fallback for an agent that does not report it.
    """
    if raw is None:
        return None
    server = raw.get("server") or {}
    sync = spec.get("synchronous") or {}
    n = instance_count(spec)
    standbys = tuple(i for i in instance_names(campus, n) if i != primary)
    if "sync_names" in server:
        parsed = parse_standby_names(str(server.get("sync_names") or ""))
        if parsed is None:  # asynchronous: nothing confirms commits
            return SyncSnapshot(method="any", number=0, standbys=(), confirming=(),
                                primary_lsn=parse_lsn(server.get("current_lsn")))
        method, number, standbys = parsed
        confirming = tuple(sorted(
            s["application_name"] for s in server.get("standbys") or []
            if s.get("sync_state") in ("sync", "quorum") and s.get("state") == "streaming"))
        return SyncSnapshot(method=method, number=min(number, len(standbys)),
                            standbys=standbys, confirming=confirming,
                            primary_lsn=parse_lsn(server.get("current_lsn")))
    confirming = tuple(sorted(
        s["application_name"] for s in server.get("standbys") or []
        if s.get("sync_state") in ("sync", "quorum") and s.get("state") == "streaming"))
    return SyncSnapshot(method=str(sync.get("method", "any")),
                        number=min(int(sync.get("number", 1)), len(standbys)),
                        standbys=standbys, confirming=confirming,
                        primary_lsn=parse_lsn(server.get("current_lsn")))


def snapshot_to_status(s: SyncSnapshot) -> dict[str, Any]:
    return {"method": s.method, "number": s.number, "standbys": list(s.standbys),
            "confirming": list(s.confirming),
            "primaryLsn": None if s.primary_lsn is None else f"{s.primary_lsn:d}"}


def snapshot_from_status(d: Mapping[str, Any] | None) -> SyncSnapshot | None:
    if not d:
        return None
    lsn = d.get("primaryLsn")
    standbys = tuple(d.get("standbys") or ())
    return SyncSnapshot(method=str(d.get("method", "any")).lower(),
                        number=min(int(d.get("number", 0)), len(standbys)),
                        standbys=standbys,
                        confirming=tuple(d.get("confirming") or ()),
                        primary_lsn=int(lsn) if lsn not in (None, "") else None)


def instances_status(names: Sequence[str], raws: Mapping[str, Mapping[str, Any] | None],
                     pod_ips: Mapping[str, str], ready: Mapping[str, bool],
                     primary_raw: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """status.instances: role, LSNs, lag and sync state per instance."""
    primary_lsn = None
    sync_states: dict[str, str] = {}
    if primary_raw:
        server = primary_raw.get("server") or {}
        primary_lsn = parse_lsn(server.get("current_lsn"))
        sync_states = {s["application_name"]: s.get("sync_state", "")
                       for s in server.get("standbys") or []}
    out = []
    for name in names:
        raw = raws.get(name)
        rep = to_report(name, raw)
        role = str(raw.get("role") or "unknown") if raw else "unknown"
        entry: dict[str, Any] = {"name": name, "role": role, "ready": bool(ready.get(name))}
        if name in pod_ips:
            entry["podIP"] = pod_ips[name]
        if rep.timeline is not None:
            entry["timeline"] = rep.timeline
        server = (raw or {}).get("server") or {}
        for key, field in (("current_lsn", "currentLsn"), ("receive_lsn", "receivedLsn"),
                           ("replay_lsn", "replayedLsn")):
            if server.get(key):
                entry[field] = server[key]
        if role == "replica" and primary_lsn is not None:
            pos = rep.replayed_lsn if rep.replayed_lsn is not None else rep.received_lsn
            if pos is not None:
                entry["lagBytes"] = max(0, primary_lsn - pos)
        if name in sync_states:
            entry["syncState"] = sync_states[name]
        out.append(entry)
    return out


PROMOTION_GRACE_SECONDS = 30.0


def just_promoted(primary: str | None, report: InstanceReport | None,
                  last_failover: Mapping[str, Any] | None, now: datetime,
                  grace: float = PROMOTION_GRACE_SECONDS) -> str | None:
    """A reason not to fail over a primary the last failover promoted moments ago.

    Its pod turns ready only at the kubelet's next probe, which can come after the
    detection delay; failing it over then would stop the server just promoted. The hold
    lasts only while its own agent says it serves as primary, and at most `grace` seconds.
    """
    if primary is None or report is None or not report.healthy_primary:
        return None
    record = last_failover or {}
    if record.get("to") != primary or not record.get("completedAt"):
        return None
    try:
        done = datetime.fromisoformat(str(record["completedAt"]).replace("Z", "+00:00"))
    except ValueError:
        return None
    age = (now - done).total_seconds()
    if 0 <= age < grace:
        return (f"{primary} was promoted {age:.0f}s ago and its agent says it serves as "
                "primary: waiting for its pod to turn ready")
    return None


class AfterPromotion(StrEnum):
    FOLLOW = "follow"  # a replica: point it at the new primary
    FENCE = "fence"  # the failed primary: stop it, without waiting for an answer


def after_promotion(names: Sequence[str], target: str, old: str | None
                    ) -> list[tuple[str, AfterPromotion]]:
    """What each other instance is asked once `target` is primary, in the order asked.

    Followers first (asked together, each with a short timeout): under ANY/FIRST n the
    new primary commits nothing until enough of them follow. The failed primary last,
    fenced fire-and-forget: it may be hung, and nothing may wait on it.
    """
    out = [(n, AfterPromotion.FOLLOW) for n in names if n not in (target, old)]
    if old and old != target:
        out.append((old, AfterPromotion.FENCE))
    return out


# Beyond selfFenceAfterSeconds: the agent's watchdog looks every 0.1 s, and a loaded node
# schedules it late.
FENCE_MARGIN_SECONDS = 0.5


def old_primary_stopped(raw: Mapping[str, Any] | None) -> bool:
    """The old primary's agent answered that its server is not running (the fence call's
    answer): it accepts no write, and the promotion need not wait for it."""
    if not raw:
        return False
    return (raw.get("server") or {}).get("running") is False


def fence_barrier(old_stopped: bool, self_fence_after: float) -> float:
    """Seconds from writing targetPrimary (the replicas paused before it) to promoting.

    The old primary could not be reached, or did not say it stopped: it may still run.
    From the moment targetPrimary is written, every contact it counts toward serving
    either began before (a Campus read sent earlier, a peer that vouched before its
    pause: core.instance.vouches_for) and so fences it within selfFenceAfterSeconds,
    or carries the new Campus, which its watchdog obeys at once. Waiting that long
    leaves no moment with two writable primaries, for the price of those seconds on a
    failover whose old primary is unreachable."""
    return 0.0 if old_stopped else self_fence_after + FENCE_MARGIN_SECONDS
