"""What the sidecar reports of its member: role, tables, links, seeding, gaps, hold lag.

Written by the member loop, each link's loop, the hold keeper and the copies, and
read by the sidecar's HTTP endpoint (sync/run.py), which hands `as_dict` to the
operator: the one record they share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .linkreport import LinkReport
from .satreport import SatelliteReport
from .seed import SeedProgress


@dataclass
class MemberState:
    member: str
    role: str = "Unknown"  # Primary, Standby, Unreachable
    error: str | None = None
    refused_tables: list[str] = field(default_factory=list)
    tables: int = 0
    links: dict[str, LinkReport] = field(default_factory=dict)
    seeding: SeedProgress | None = None
    gaps: list[str] = field(default_factory=list)
    needs_reseed: set[str] = field(default_factory=set)
    hold_lag_bytes: int | None = None
    satellites: dict[str, SatelliteReport] = field(default_factory=dict)  # this member's

    def as_dict(self) -> dict[str, Any]:
        return {
            "member": self.member, "role": self.role, "error": self.error,
            "tables": self.tables, "refusedTables": self.refused_tables,
            "links": [lk.as_dict() for lk in self.links.values()],
            "seeding": self.seeding.as_dict() if self.seeding else None,
            "gaps": self.gaps, "needsReseed": sorted(self.needs_reseed),
            "holdLagBytes": self.hold_lag_bytes,
            "satellites": [s.as_dict() for s in self.satellites.values()],
        }
