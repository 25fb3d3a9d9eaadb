"""What a parent's sidecar reports of one satellite: connected, last contact, the backlog
on each side, the initial copies and both links.

Its own module because three readers share the shape (the member's report, the
sidecar's metrics export, the operator's Satellite status via core.satsync), and the
sync loops that fill it (sync/satellite.py) are a different job.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..core.catchup import CatchUp, catch_up
from .linkreport import LinkReport
from .satcopy import CopyProgress
from .seed import SeedProgress

CONTACT_WINDOW = 5.0  # a satellite counts as connected within this of its last answer


@dataclass
class SatelliteReport:
    """What the parent's sidecar knows of one satellite (part of the member's report)."""

    name: str
    parent: str
    up: LinkReport
    down: LinkReport
    last_contact: datetime | None = None  # the satellite last answered (wall clock)
    contact_at: float | None = None  # the same, monotonic
    spool_rows: int | None = None  # backlog on the parent: spooled, not yet at the satellite
    spool_bytes: int | None = None
    spool_oldest_hours: float | None = None  # age of the oldest spooled change
    drained_rows: int = 0
    drain_error: str | None = None
    tables: tuple[str, ...] = ()
    # Its tables that do not exist at the parent (None: not looked yet); the operator
    # turns a non-empty list into Streaming=False TableMissingAtParent (core.satsync).
    missing_at_parent: tuple[str, ...] | None = None
    copy: CopyProgress = field(default_factory=CopyProgress)  # parent's rows down
    copy_up: SeedProgress | None = None  # the satellite's own rows up

    # Catch-up (core.catchup): drained_rows when the spool was last seen empty, and a
    # sample (monotonic time, drained_rows) per backlog measurement.
    drain_base: int = 0
    drain_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def measured(self) -> None:
        """After each backlog measurement: one drain-rate sample; a spool seen empty
        starts the next catch-up's share from here."""
        self.drain_samples.append((time.monotonic(), self.drained_rows))
        if not self.spool_rows:
            self.drain_base = self.drained_rows

    def catch_up(self) -> CatchUp:
        return catch_up(self.drain_base, self.drained_rows, self.spool_rows or 0,
                        list(self.drain_samples))

    def touch(self) -> None:
        self.last_contact = datetime.now(UTC)
        self.contact_at = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.up.running and self.contact_at is not None and \
            time.monotonic() - self.contact_at <= CONTACT_WINDOW

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "parent": self.parent, "connected": self.connected,
            "lastContact": self.last_contact.isoformat() if self.last_contact else None,
            # Backlog on each side: spool rows at the parent, slot lag at the satellite.
            "parentBacklogRows": self.spool_rows, "parentBacklogBytes": self.spool_bytes,
            "parentBacklogOldestHours": self.spool_oldest_hours,
            "copy": self.copy.as_dict(),
            "copyUp": self.copy_up.as_dict() if self.copy_up else {"state": "Pending"},
            "satelliteBacklogBytes": self.up.lag_bytes,
            "drainedRows": self.drained_rows, "drainError": self.drain_error,
            "catchUp": self._catch_up_dict(),
            "tables": list(self.tables),
            "missingAtParent": (None if self.missing_at_parent is None
                                else list(self.missing_at_parent)),
            "up": self.up.as_dict(), "down": self.down.as_dict(),
        }

    def _catch_up_dict(self) -> dict[str, float | None]:
        c = self.catch_up()
        return {"percent": c.percent, "rowsPerSecond": c.rows_per_second,
                "etaSeconds": c.eta_seconds}
