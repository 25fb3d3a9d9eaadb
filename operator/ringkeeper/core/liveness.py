"""Is a ring link alive? The sidecar's decision, from what it observed, with no I/O.

A frozen member (SIGSTOP, a hung host, a network black hole) does not close its
sockets: a stream read waits forever and a statement waits for its time-out. So a
link is judged by how long its source has been silent while the link was waiting
for it, and every statement in the sync path has a time-out short enough for a
hung member to be bypassed within bypassAfterSeconds plus a few seconds. The
numbers are derived from bypassAfterSeconds so a ring that heals faster also
detects faster (docs/ring.md, "Liveness").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..api.v1alpha1.ring import LinkState

# Link states in which changes flow (the ring status counts these as healthy).
FLOWING = frozenset({LinkState.STREAMING, LinkState.CATCHING_UP})

MIN_LIVENESS_SECONDS = 1.0
MAX_LIVENESS_SECONDS = 15.0
PINGS_PER_WINDOW = 4  # status updates asking for a reply within one liveness window
MIN_STATEMENT_SECONDS = 5.0
# A target applying a backlog may take a while per script (2000 rows, triggers,
# indexes): its statements get more time than a lag query. A target that hangs is
# found sooner by the sidecar's own-database check, which uses the short time-out.
APPLY_STATEMENT_SECONDS = 60.0
# Slot creation waits for transactions running at the source, slot moves decode WAL
# and a member's initial copy reads whole tables: time-outs for those are long.
SLOW_STATEMENT_SECONDS = 300.0


def liveness_seconds(bypass_after_seconds: float) -> float:
    """How long a source may stay silent (no change, no keepalive) while the link
    waits for it before the link stops and counts the source as down: a quarter of
    bypassAfterSeconds, between 1 and 15 seconds (15 s at the default 60 s)."""
    return min(MAX_LIVENESS_SECONDS, max(MIN_LIVENESS_SECONDS, bypass_after_seconds / 4))


def ping_seconds(bypass_after_seconds: float) -> float:
    """How often the link asks the source's walsender for a keepalive (a standby status
    update with replyRequested): several times per liveness window, so one lost or late
    answer does not look like silence."""
    return liveness_seconds(bypass_after_seconds) / PINGS_PER_WINDOW


def statement_seconds(bypass_after_seconds: float) -> float:
    """Time-out of the short statements of the sync path (lag queries, slot checks,
    the own-database check, probes of a down member): the liveness window, at least
    5 seconds."""
    return max(MIN_STATEMENT_SECONDS, liveness_seconds(bypass_after_seconds))


class LinkFault(StrEnum):
    """Why a link's last attempt ended (None while it runs)."""

    SOURCE_UNREACHABLE = "SourceUnreachable"  # connect, I/O or a time-out at the source
    SOURCE_SILENT = "SourceSilent"  # the stream said nothing for the liveness window
    TARGET_UNREACHABLE = "TargetUnreachable"  # this member's own database
    SLOT_LOST = "SlotLost"
    FAILED = "Failed"  # anything else: a refusal, a bug; not the member being down


@dataclass(frozen=True)
class LinkObservation:
    """What the sidecar knows about one link at one moment."""

    running: bool  # the stream is open and the link's loop runs
    silence: float  # seconds the link has waited for the source without hearing from it
    idle: bool  # nothing read is waiting to be applied
    commit_lag: float | None  # age of the last applied commit while a backlog is applied
    catching_up: bool  # bypassing a member, or this member still copies others' rows
    fault: LinkFault | None  # why the last attempt ended, if the link does not run
    since_alive: float | None  # seconds since the link last heard from its source
    busy: bool = False  # silent, but its server says the walsender works (walsender_busy)


@dataclass(frozen=True)
class LinkVerdict:
    state: LinkState
    lag_seconds: float | None
    source_down: bool  # counts toward bypassing the source (bypassAfterSeconds)
    restart: bool  # the running link must stop: its source is silent too long


def judge_link(obs: LinkObservation, liveness: float) -> LinkVerdict:
    """The state and lag a link reports, and whether its source counts as down.

    - A running link whose source has been silent for half the window is Stalled (it
      may still recover: a busy walsender answers late); for the whole window it must
      stop (`restart`) unless the source's server says its walsender is busy, and it
      stays Stalled while the watchdog asks (up to half a window): only a link that
      ended is Down, which feeds bypassAfterSeconds. (It once showed Down during that
      question, then Stalled again when the answer was "busy".)
    - A link is never Streaming with lag 0 while nothing arrives: a stalled or stopped
      link's lag is at least the time since it last heard from its source.
    - A silent source whose server says its walsender is busy (walsender_busy) is
      Stalled, never Down: its lag is the time since the link last heard from it.
    - The member's own database failing is TargetDown and never blames the source.
    - Any other failure is Error: the source is up, so it is not bypassed.
    """
    if not obs.running:
        lag = obs.since_alive
        state = {
            None: LinkState.PENDING,
            LinkFault.SOURCE_UNREACHABLE: LinkState.DOWN,
            LinkFault.SOURCE_SILENT: LinkState.DOWN,
            LinkFault.TARGET_UNREACHABLE: LinkState.TARGET_DOWN,
            LinkFault.SLOT_LOST: LinkState.NEEDS_RESEED,
            LinkFault.FAILED: LinkState.ERROR,
        }[obs.fault]
        down = obs.fault in (LinkFault.SOURCE_UNREACHABLE, LinkFault.SOURCE_SILENT)
        return LinkVerdict(state, lag, source_down=down, restart=False)
    if obs.silence >= liveness:
        return LinkVerdict(LinkState.STALLED, max(obs.commit_lag or 0.0, obs.silence),
                           source_down=False, restart=True)
    if obs.silence >= liveness / 2:
        return LinkVerdict(LinkState.STALLED, max(obs.commit_lag or 0.0, obs.silence),
                           source_down=False, restart=False)
    if obs.busy:
        # Nothing arrives while the source's walsender works through a long record: not
        # down, and not Streaming with lag 0 either.
        return LinkVerdict(LinkState.STALLED, max(obs.commit_lag or 0.0,
                                                  obs.since_alive or 0.0),
                           source_down=False, restart=False)
    state = LinkState.CATCHING_UP if obs.catching_up else LinkState.STREAMING
    lag = 0.0 if obs.idle else obs.commit_lag
    return LinkVerdict(state, lag, source_down=False, restart=False)


# How long a walsender that does not answer pings, while its server does answer, may
# go on without reading any further WAL before its link is ended anyway: in liveness
# windows (a busy walsender reads on; a stuck one does not).
BUSY_GRACE_WINDOWS = 4


@dataclass(frozen=True)
class WalsenderProbe:
    """What the link's own SQL session at the source said about the link's walsender,
    asked when the stream has been silent for the liveness window."""

    answered: bool  # the source answered within the probe's time-out
    active: bool  # the link's slot is held by a live walsender process
    advanced: bool  # its read position (sent_lsn) moved since the last probe
    since_progress: float  # seconds since it was last seen moving


def walsender_busy(probe: WalsenderProbe, liveness: float) -> bool:
    """Whether a stream silent for the whole liveness window is a busy walsender, not a
    hung or cut-off source: the link then stays Stalled instead of being ended.

    A walsender answers pings between WAL records; one record can take it longer than
    the window on a loaded host (spilling a big transaction to disk, decoding its
    commit), and ending the link then makes the next session decode the whole
    transaction again, so at a short bypassAfterSeconds a big transaction never crossed
    (35 cuts in 8 minutes at 1M rows). A hung or frozen server, or a cut network, does
    not answer the probe; a walsender that answers nothing and reads nothing for
    BUSY_GRACE_WINDOWS windows is ended as before."""
    if not (probe.answered and probe.active):
        return False
    return probe.advanced or probe.since_progress < BUSY_GRACE_WINDOWS * liveness
