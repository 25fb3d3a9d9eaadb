"""Satellite decisions, pure: its row filters as SQL, its campus-shaped view, and its status.

A Satellite is deployed as a Campus of one instance: `campus_view` turns its spec into the
campus-shaped body core.manifests builds objects from and the instance agent reads, so the
StatefulSet, Services, Secrets and agent are the campus's own code, not a copy. Row filters
are structured (api.v1alpha1.satellite.RowFilter) and become SQL here only, with every name
and value quoted by base.sqlquote: nothing a user writes reaches a statement as SQL text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..api.v1alpha1.satellite import FilterOp, FilterTerm, RowFilter, SatellitePhase
from ..base.sqlquote import quote_ident, quote_literal
from .conditions import set_condition

# Small by default: a branch clinic's box, and the 300 MB resident budget.
DEFAULT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"},
                                     "limits": {"memory": "512Mi"}}


def term_sql(term: FilterTerm, alias: str | None = None) -> str:
    """One term as a boolean SQL expression over a quoted column and quoted literals;
    with `alias`, the column is qualified by it (quoted too), so a query that joins the
    table with other relations (verification's key lookups) cannot read another
    relation's column of the same name."""
    col = quote_ident(term.column)
    if alias is not None:
        col = f"{quote_ident(alias)}.{col}"
    op = FilterOp(term.op)
    lits = [quote_literal(v) for v in term.values]
    if op is FilterOp.EQUALS:
        return f"{col} = {lits[0]}"
    if op is FilterOp.NOT_EQUALS:
        return f"{col} <> {lits[0]}"
    if op is FilterOp.IN:
        return f"{col} IN ({', '.join(lits)})"
    if op is FilterOp.NOT_IN:
        return f"{col} NOT IN ({', '.join(lits)})"
    if op is FilterOp.IS_NULL:
        return f"{col} IS NULL"
    return f"{col} IS NOT NULL"


def filter_sql(row_filter: RowFilter | None, alias: str | None = None) -> str:
    """The WHERE condition of a table's filter; TRUE without one. Each term in its own
    parentheses, joined by AND, so no term's text can change how another is read.
    `alias` qualifies every column (see term_sql)."""
    if row_filter is None:
        return "TRUE"
    return " AND ".join(f"({term_sql(t, alias)})" for t in row_filter.all_of)


def campus_view(satellite: Mapping[str, Any]) -> dict[str, Any]:
    """The Satellite as a one-instance Campus body: what core.manifests builds from and what
    the agent in the satellite's pod reads. Its one instance is always the target primary;
    currentPrimary is what the controller recorded once the instance first answered as
    primary, as a Campus's HA loop does at bootstrap, so an agent that later finds its data
    folder empty waits for a human instead of initialising it again."""
    meta = satellite["metadata"]
    spec = satellite.get("spec") or {}
    name = meta["name"]
    first = f"{name}-0"
    recorded = (satellite.get("status") or {}).get("currentPrimary")
    campus_spec: dict[str, Any] = {
        "engine": spec.get("engine", "postgresql"),
        "version": str(spec.get("version", "")),
        "instances": 1,
        "storage": spec.get("storage") or {},
        "resources": spec.get("resources") or DEFAULT_RESOURCES,
        # One instance: no standby can confirm a commit.
        "synchronous": {"number": 0, "dataDurability": "preferred"},
    }
    if spec.get("image"):
        campus_spec["image"] = spec["image"]
    view_meta = {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta}
    return {"apiVersion": satellite.get("apiVersion", "ringkeeper.io/v1alpha1"),
            "kind": "Satellite", "metadata": view_meta, "spec": campus_spec,
            "status": {"currentPrimary": first if recorded == first else None,
                       "targetPrimary": first}}


class ReadyReason(StrEnum):
    """Why a Satellite's Ready condition says what it says."""

    PARENT_MISSING = "ParentMissing"
    PARENT_NOT_IN_RING = "ParentNotInRing"
    INSTANCE_NOT_READY = "InstanceNotReady"
    INSTANCE_READY = "InstanceReady"


@dataclass(frozen=True)
class SatelliteFacts:
    """What the controller read: the parent Campus, the rings naming it, the pod."""

    name: str
    parent: str
    parent_exists: bool
    parent_rings: tuple[str, ...]
    pod_ready: bool
    current_primary: str | None = None  # status.currentPrimary as read
    answers_as_primary: bool = False  # the instance's agent reports role primary


@dataclass(frozen=True)
class SatellitePlan:
    """What to do and say: deploy or not, the Ready condition, the phase."""

    deploy: bool
    ready: bool
    reason: ReadyReason
    message: str
    phase: SatellitePhase
    record_primary: str | None = None  # write status.currentPrimary (first bootstrap)


def plan_satellite(f: SatelliteFacts) -> SatellitePlan:
    """Deploy only for a parent Campus that exists and is in a ReplicationRing: a satellite
    syncs through its parent's ring, and a mistyped parent must not claim a volume. Ready
    once its one instance serves."""
    if not f.parent_exists:
        return SatellitePlan(False, False, ReadyReason.PARENT_MISSING,
                             f"parent Campus {f.parent!r} does not exist in this namespace: "
                             "create it or fix spec.parentRef.name; until then the "
                             "satellite's objects are neither created nor updated",
                             SatellitePhase.INITIALIZING)
    if not f.parent_rings:
        return SatellitePlan(False, False, ReadyReason.PARENT_NOT_IN_RING,
                             f"parent Campus {f.parent!r} is in no ReplicationRing: a "
                             "satellite syncs through its parent's ring; add the campus to a "
                             "ring's members; until then the satellite's objects are "
                             "neither created nor updated",
                             SatellitePhase.INITIALIZING)
    first = f"{f.name}-0"
    record = first if f.current_primary != first and f.answers_as_primary else None
    if not f.pod_ready:
        return SatellitePlan(True, False, ReadyReason.INSTANCE_NOT_READY,
                             f"{first} is not ready yet", SatellitePhase.INITIALIZING,
                             record_primary=record)
    # Online, Offline and Syncing say how the link to the parent stands: the parent's
    # sync sidecar reports it (core.satsync.sync_status), so the phase here stays
    # Initializing until that report replaces it, and Ready says the database serves.
    return SatellitePlan(True, True, ReadyReason.INSTANCE_READY,
                         f"{f.name}-0 serves writes through {f.name}-rw; it syncs through "
                         f"the sync sidecar of {f.parent!r} (phase and backlog in status)",
                         SatellitePhase.INITIALIZING, record_primary=record)


def rings_naming(rings: Sequence[Mapping[str, Any]], campus: str) -> tuple[str, ...]:
    """Names of the rings whose members include the Campus by campusRef."""
    out = []
    for ring in rings:
        members = (ring.get("spec") or {}).get("members") or []
        if any(((m or {}).get("campusRef") or {}).get("name") == campus for m in members):
            out.append(str(ring["metadata"]["name"]))
    return tuple(sorted(out))


def status_patch(plan: SatellitePlan, conditions: list[dict[str, Any]], now: datetime,
                 generation: int | None) -> dict[str, Any]:
    """The Satellite's status for a plan: phase, observedGeneration and Ready (other
    conditions, such as Accepted, are kept)."""
    conds = set_condition(conditions, type="Ready", status="True" if plan.ready else "False",
                          reason=plan.reason.value, message=plan.message, now=now,
                          generation=generation)
    out: dict[str, Any] = {"phase": plan.phase.value, "observedGeneration": generation,
                           "conditions": conds}
    if plan.record_primary:
        out["currentPrimary"] = plan.record_primary
    return out


def failed_patch(reason: str, message: str, conditions: list[dict[str, Any]], now: datetime,
                 generation: int | None) -> dict[str, Any]:
    """Ready=False with the reason of an API or spec failure; the phase is left alone."""
    return {"conditions": set_condition(conditions, type="Ready", status="False",
                                        reason=reason, message=message, now=now,
                                        generation=generation)}


def ready_event(before: Mapping[str, Any] | None, plan: SatellitePlan) -> tuple[str, bool] | None:
    """The Event to post when Ready changes (reason, warning?); None when it said so
    already: a satellite waiting on its parent posts one Event, not one per pass."""
    if before is not None and before.get("reason") == plan.reason.value and \
            before.get("status") == ("True" if plan.ready else "False"):
        return None
    if plan.reason is ReadyReason.INSTANCE_NOT_READY:
        return None  # the normal wait after a deployment: no Event for it
    return plan.reason.value, not plan.ready
