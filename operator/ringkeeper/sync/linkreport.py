"""What the sidecar reports of each inbound link: state, lag and counters.

The link updates its report as it runs and the sidecar marks it stopped (with the
fault) when it ends; the member's report (`MemberState.as_dict`) carries one entry per
link. Its own module because three writers share it (the stream, the sidecar's link
loop, the member loop) and the report's shape is what the operator reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from ..api.v1alpha1.ring import LinkState
from ..core.liveness import LinkFault, LinkObservation, judge_link


@dataclass
class LinkReport:
    """What this sidecar knows and reports of one inbound link, updated as it runs:
    state, lag, counters. `as_dict` is one entry of the member's report; the operator
    turns the reports into the ring's status (api.v1alpha1.ring.LinkStatus, a different
    thing: the CRD's model, written by the operator)."""

    source: str
    target: str
    slot: str
    state: LinkState = LinkState.PENDING
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    rows_per_second: float = 0.0
    last_applied_at: datetime | None = None
    conflicts: int = 0
    message: str | None = None
    applied_txns: int = 0
    skipped_txns: int = 0
    bypassing: tuple[str, ...] = ()
    bulk_scripts: int = 0  # scripts of many transactions applied in one round trip
    bulk_misses: int = 0  # scripts that met a conflict and went row by row
    # Liveness (core.liveness): whether the stream runs, why the last attempt ended,
    # when (monotonic) the link last heard from its source, and whether this member
    # still copies other members' rows (links then report CatchingUp).
    running: bool = False
    fault: LinkFault | None = None
    heard_at: float | None = None
    copies_pending: bool = False
    # Tables whose changes wait at the target (DDL drift, sync/parking.py), with why.
    parked: dict[str, str] = field(default_factory=dict)
    _rate: list[tuple[float, int]] = field(default_factory=list)

    def stopped(self, fault: LinkFault | None, message: str | None) -> None:
        """The link does not run (any more): its state and lag follow from `fault`."""
        self.running, self.fault, self.message = False, fault, message
        self._judge_stopped()

    def _judge_stopped(self) -> None:
        now = time.monotonic()
        v = judge_link(LinkObservation(
            running=False, silence=0.0, idle=True, commit_lag=None, catching_up=False,
            fault=self.fault,
            since_alive=None if self.heard_at is None else now - self.heard_at), 1.0)
        self.state = v.state
        if v.lag_seconds is not None:
            self.lag_seconds = round(max(self.lag_seconds or 0.0, v.lag_seconds), 3)

    def as_dict(self) -> dict[str, object]:
        if not self.running and self.fault is not None:
            self._judge_stopped()  # the lag of a stopped link grows with the outage
        return {
            "from": self.source, "to": self.target, "slot": self.slot,
            "state": str(self.state),
            "lagBytes": self.lag_bytes, "lagSeconds": self.lag_seconds,
            "rowsPerSecond": round(self.rows_per_second, 1),
            "lastAppliedAt": self.last_applied_at.isoformat() if self.last_applied_at else None,
            "conflicts": self.conflicts, "message": self.message,
            "appliedTxns": self.applied_txns, "skippedTxns": self.skipped_txns,
            "bypassing": list(self.bypassing),
            "bulkScripts": self.bulk_scripts, "bulkMisses": self.bulk_misses,
            "parked": [{"table": t, "reason": r} for t, r in sorted(self.parked.items())],
        }

    def note_rows(self, total_rows: int) -> None:
        now = time.monotonic()
        self._rate.append((now, total_rows))
        self._rate = [(t, n) for t, n in self._rate if now - t <= 10]
        t0, n0 = self._rate[0]
        self.rows_per_second = (total_rows - n0) / (now - t0) if now > t0 else 0.0
