"""Pure pieces of the Satellite partition drill (networkPartition, target kind Satellite).

The drill cuts the Satellite's pod from its parent Campus's pods (core.drill_faults
partition_policy selecting the satellite's pod), writes through both sides all along and
judges three things here, without I/O, so a table test covers each:

* whether the run may start at all (satellite_refusal, satellite_not_ready): a Satellite
  whose parent does not exist or is in no ring, or that does not keep the drill's table,
  is refused with a reason the user can act on;
* RTO = the longest gap in acknowledged satellite writes around the fault (longest_gap):
  a satellite keeps working offline, so it should be about the write interval;
* convergence (satellite_converged): the Satellite's status says connected, backlogRows 0
  and Streaming True (BothWays); and what was lost (satellite_lost): every acknowledged
  commit at either side found where it belongs (satellite rows at the parent; parent rows
  at the satellite only where its row filter selects them).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from ..api.v1alpha1.satellite import RowFilter
from .satsync import STREAMING_CONDITION, Streaming

# The drill's own table, written at both sides (constant SQL: nothing from a spec). The
# satellite must keep it (spec.tables) and the parent's ring must replicate it, as the
# drill's load must not write the hospital's own tables.
DRILL_SCHEMA = "ringkeeper_drill"
DRILL_TABLE = "satellite_rows"
DRILL_QUALIFIED = f"{DRILL_SCHEMA}.{DRILL_TABLE}"
DRILL_DDL = (f"CREATE SCHEMA IF NOT EXISTS {DRILL_SCHEMA}; "
             f"CREATE TABLE IF NOT EXISTS {DRILL_QUALIFIED} (id bigint PRIMARY KEY, "
             "site text NOT NULL, v integer NOT NULL, at timestamptz NOT NULL DEFAULT now())")


class SatReason(StrEnum):
    """Why a Satellite partition drill is refused or waits."""

    PARENT_MISSING = "ParentMissing"
    PARENT_NOT_IN_RING = "ParentNotInRing"
    DRILL_TABLE_NOT_KEPT = "DrillTableNotKept"
    SATELLITE_INVALID = "SatelliteInvalid"


@dataclass(frozen=True)
class SatelliteTarget:
    """What the executor read of the target Satellite (it exists: Snapshot.target_exists
    says when it does not)."""

    name: str
    parent: str
    parent_exists: bool
    parent_rings: tuple[str, ...]
    tables: tuple[str, ...]  # spec.tables names
    row_filter: RowFilter | None = None  # the filter of the drill's table, typed
    ready: bool = False  # Ready condition True (its database serves)
    converged: bool = False  # satellite_converged(status) as read
    invalid: str | None = None  # why its spec cannot be read (admission was bypassed)


def satellite_refusal(t: SatelliteTarget) -> tuple[SatReason, str] | None:
    """Refuse a partition that cannot mean anything: no parent, a parent outside every
    ring (a satellite syncs through its parent's ring), or a satellite that does not keep
    the drill's table (its writes would fail, nothing would cross the cut); nor a
    Satellite whose spec does not validate (the Satellite's own conditions say why)."""
    if t.invalid is not None:
        return (SatReason.SATELLITE_INVALID,
                f"the spec of Satellite {t.name} is not valid, so its parent and tables are "
                f"unknown: {t.invalid}")
    if not t.parent_exists:
        return (SatReason.PARENT_MISSING,
                f"the parent Campus {t.parent!r} of Satellite {t.name} does not exist in "
                "this namespace: there is no link to cut")
    if not t.parent_rings:
        return (SatReason.PARENT_NOT_IN_RING,
                f"the parent Campus {t.parent!r} of Satellite {t.name} is in no "
                "ReplicationRing: the satellite does not sync, there is no link to cut")
    if DRILL_QUALIFIED not in t.tables:
        return (SatReason.DRILL_TABLE_NOT_KEPT,
                f"Satellite {t.name} does not keep {DRILL_QUALIFIED}: add it to its "
                "spec.tables (and the table to its parent's ring, docs/drills.md) so the "
                "drill's writes cross the link it cuts")
    return None


def satellite_not_ready(t: SatelliteTarget | None) -> list[str]:
    """What keeps the run from starting: the satellite must serve and stream both ways
    with its parent, or the convergence after the heal would measure the join instead."""
    if t is None:
        return []
    if not t.ready:
        return [f"Satellite {t.name} (not Ready)"]
    if not t.converged:
        return [f"Satellite {t.name} (not streaming both ways with {t.parent})"]
    return []


def satellite_converged(status: Mapping[str, Any] | None) -> bool:
    """The Satellite's status says it is whole with its parent: connected, no backlog,
    and the Streaming condition True with reason BothWays."""
    st = status or {}
    streaming: Mapping[str, Any] = next((c for c in st.get("conditions") or []
                      if c.get("type") == STREAMING_CONDITION), {})
    return (st.get("connected") is True and st.get("backlogRows") == 0
            and streaming.get("status") == "True"
            and streaming.get("reason") == Streaming.STREAMING.value)


def longest_gap(acks: Sequence[float], start: float, end: float) -> float | None:
    """The satellite's RTO: the longest time in [start, end] (the fault, the heal) without
    an acknowledged write, counting from `start` to the first ack and from the last ack
    to `end`. None when there was no ack in the window at all (it stopped writing)."""
    inside = sorted(a for a in acks if start <= a <= end)
    if not inside:
        return None
    points = [start, *inside, end]
    return max(b - a for a, b in pairwise(points))


@dataclass(frozen=True)
class SideCheck:
    """One direction's check: rows checked there and the keys not as acknowledged."""

    checked: int = 0
    lost: tuple[int, ...] = ()
    leaked: tuple[int, ...] = ()  # parent rows the filter leaves out, found anyway

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "lost": len(self.lost),
                "lostKeys": list(self.lost[:10]), "leaked": len(self.leaked),
                "leakedKeys": list(self.leaked[:10])}


def _check(acked: Mapping[int, frozenset[int]], found: Mapping[int, int],
           keys: Collection[int]) -> SideCheck:
    lost = tuple(sorted(k for k in keys if found.get(k) not in acked[k]))
    return SideCheck(len(keys), lost)


@dataclass(frozen=True)
class SatelliteLoss:
    """Every side's acknowledged rows at every place they belong."""

    satellite_at_satellite: SideCheck = field(default_factory=SideCheck)
    satellite_at_parent: SideCheck = field(default_factory=SideCheck)
    parent_at_parent: SideCheck = field(default_factory=SideCheck)
    parent_at_satellite: SideCheck = field(default_factory=SideCheck)

    @property
    def lost(self) -> int:
        """Acknowledged commits lost somewhere: one key's last write is one commit,
        counted once however many places miss it."""
        sat = set(self.satellite_at_satellite.lost) | set(self.satellite_at_parent.lost)
        par = set(self.parent_at_parent.lost) | set(self.parent_at_satellite.lost)
        return len(sat) + len(par)

    def as_dict(self) -> dict[str, Any]:
        return {"lostTransactions": self.lost, "lostRows": self.lost,
                "satelliteRowsAtSatellite": self.satellite_at_satellite.as_dict(),
                "satelliteRowsAtParent": self.satellite_at_parent.as_dict(),
                "parentRowsAtParent": self.parent_at_parent.as_dict(),
                "parentRowsAtSatellite": self.parent_at_satellite.as_dict()}


def satellite_lost(sat_acked: Mapping[int, frozenset[int]],
                   parent_acked: Mapping[int, frozenset[int]],
                   at_satellite: Mapping[int, int], at_parent: Mapping[int, int],
                   selected: Collection[int]) -> SatelliteLoss:
    """Compare the two ledgers (key -> the versions its last acknowledged write may have
    left: one, or two when the last write's acknowledgement was lost) with what each side
    holds (key -> version). The satellite's rows belong at both sides; the parent's rows
    at the parent, and at the satellite only those the satellite's filter selects
    (`selected`, evaluated at the parent with core.satellite.filter_sql). A parent row
    the filter leaves out but found at the satellite is reported as leaked (not lost)."""
    chosen = set(selected) & set(parent_acked)
    leaked = tuple(sorted(k for k in set(parent_acked) - chosen if k in at_satellite))
    down = _check(parent_acked, at_satellite, sorted(chosen))
    return SatelliteLoss(
        _check(sat_acked, at_satellite, list(sat_acked)),
        _check(sat_acked, at_parent, list(sat_acked)),
        _check(parent_acked, at_parent, list(parent_acked)),
        SideCheck(down.checked, down.lost, leaked))
