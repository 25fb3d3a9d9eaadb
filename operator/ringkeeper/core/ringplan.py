"""The operator's ring decisions: what each sidecar is told, and what the ring's
status says about the sidecars' reports.

The sidecars do the work; the operator only tells them where every member's
primary is (a Campus's primary moves on failover) and sums up what they report.
Both are pure functions so the status rules are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from . import manifests
from .conditions import set_condition

# Link states that carry changes; anything else is not healthy.
_FLOWING = {"Streaming", "CatchingUp"}


def primary_address(campus: Mapping[str, Any]) -> str | None:
    """The pod IP of the Campus's current primary, if it is known and ready."""
    status = campus.get("status") or {}
    primary = status.get("currentPrimary")
    for inst in status.get("instances") or []:
        if inst.get("name") == primary and inst.get("podIP"):
            return str(inst["podIP"])
    return None


def sync_config(ring: str, spec: Mapping[str, Any],
                endpoints: Mapping[str, Mapping[str, Any]],
                satellites: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON every sidecar of the ring reads. `endpoints`: member -> {dsn (None while
    it has no primary), engine, version}. Members after the first are stock-synced when
    they join with empty tables; a member that already holds data is left as it is (and
    reported), because overwriting a campus's data is a decision for people.
    `satellites` (satellite_entries): every sidecar learns their origins, the parent's
    syncs them (contracts.ringconfig parses them)."""
    names = [m["name"] for m in spec.get("members") or []]
    out = {
        "ring": ring,
        "spec": dict(spec),
        "members": {n: dict(endpoints.get(n) or {"dsn": None}) for n in names},
        "seed": names[1:],
    }
    if satellites:
        out["satellites"] = {k: dict(v) for k, v in satellites.items()}
    return out


def satellite_address(name: str, pod: Mapping[str, Any] | None) -> str | None:
    """Where the parent's sidecar reaches satellite `name`: the pod IP of `<name>-0` once it
    carries the labels its `-rw` Service selects (this satellite's, role primary), as a
    Campus member is reached at its primary's pod IP. Not the Service's DNS name: a
    cluster without DNS (the local one) could not resolve it, and the operator rewrites the
    ring config when the pod's IP changes. None while there is no such pod: the parent's
    sidecar waits (never a pod that only claims the name)."""
    if not pod:
        return None
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if (meta.get("name") != f"{name}-0" or meta.get("deletionTimestamp")
            or labels.get(manifests.SATELLITE_LABEL) != name
            or labels.get(manifests.ROLE_LABEL) != "primary"):
        return None
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def satellite_entries(spec: Mapping[str, Any], satellites: Sequence[Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """The ring's satellites, without addresses: satellite name -> {parent (the ring
    member whose campusRef is the satellite's parentRef), engine, version, tables}, for
    the Satellites (as read from the API) whose parent Campus is a member of this ring.
    A satellite named like a member is left out (its origin would be the member's)."""
    by_campus = {(m.get("campusRef") or {}).get("name"): m["name"]
                 for m in spec.get("members") or [] if m.get("campusRef")}
    members = {m["name"] for m in spec.get("members") or []}
    out: dict[str, dict[str, Any]] = {}
    for sat in satellites:
        name = str(sat["metadata"]["name"])
        body = sat.get("spec") or {}
        parent = by_campus.get((body.get("parentRef") or {}).get("name"))
        if parent is None or name in members or not body.get("tables"):
            continue
        out[name] = {"parent": parent, "engine": body.get("engine", "postgresql"),
                     "version": str(body.get("version", "")),
                     "tables": [dict(t) for t in body["tables"]]}
    return out


def _link_key(link: Mapping[str, Any]) -> tuple[str, str]:
    return str(link.get("from")), str(link.get("to"))


def ring_status(spec: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any] | None],
                generation: int | None, now: datetime,
                previous: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """ReplicationRing status from the sidecars' reports (None: sidecar unreachable)."""
    names = [m["name"] for m in spec.get("members") or []]
    lag_alert = float(spec.get("lagAlertSeconds", 30))
    links: dict[tuple[str, str], dict[str, Any]] = {}
    seeding: list[dict[str, Any]] = []
    problems: list[str] = []
    needs_reseed: set[str] = set()
    gaps: list[str] = []
    parked: list[str] = []
    for member in names:
        rep = reports.get(member)
        if rep is None:
            problems.append(f"sidecar of {member} unreachable")
            continue
        if rep.get("error"):
            problems.append(f"{member}: {rep['error']}")
        for rel in rep.get("refusedTables") or []:
            problems.append(f"{member}: table {rel} has no primary key and is not replicated")
        gaps += [f"{member}: {g}" for g in rep.get("gaps") or []]
        needs_reseed |= set(rep.get("needsReseed") or [])
        for lk in rep.get("links") or []:
            parked += [f"{p.get('table')} at {lk.get('to')}: {p.get('reason')}"
                       for p in lk.get("parked") or []]
            links[_link_key(lk)] = {
                "from": lk.get("from"), "to": lk.get("to"), "state": lk.get("state", "Pending"),
                "lagSeconds": lk.get("lagSeconds"), "lagBytes": lk.get("lagBytes"),
                "rowsPerSecond": lk.get("rowsPerSecond"),
                "lastAppliedAt": lk.get("lastAppliedAt"), "conflicts": lk.get("conflicts", 0),
                "message": lk.get("message") or (
                    f"bypassing {', '.join(lk['bypassing'])}" if lk.get("bypassing") else None),
            }
        sd = rep.get("seeding")
        if sd and sd.get("state") not in (None, "Done", "Skipped"):
            seeding.append({"member": member, "tablesDone": sd.get("tablesDone", 0),
                            "tablesTotal": sd.get("tablesTotal", 0),
                            "rowsCopied": sd.get("rowsCopied", 0),
                            "rowsTotal": sd.get("rowsTotal", 0),
                            "percent": sd.get("percent", 0.0)})
    for m in needs_reseed:
        problems.append(f"{m} fell behind the WAL budget and needs a re-seed")
    ordered = sorted(links.values(), key=lambda lk: (names.index(lk["to"])
                                                    if lk["to"] in names else 99))
    healthy = [lk for lk in ordered if lk["state"] in _FLOWING]
    lags = [float(lk["lagSeconds"]) for lk in ordered if lk.get("lagSeconds") is not None]
    max_lag = round(max(lags), 3) if lags else None
    bypassing = [lk for lk in ordered if lk.get("message", "") and
                 str(lk.get("message")).startswith("bypassing")]
    expected = len(names) if spec.get("topology", "ring") == "ring" else \
        len(names) * (len(names) - 1)
    ready = (len(healthy) >= expected - len(bypassing) and not problems and not seeding
             and len(healthy) > 0)
    degraded_why = problems + [f"link {lk['from']}->{lk['to']} is {lk['state']}"
                               for lk in ordered if lk["state"] not in _FLOWING]
    if parked:
        degraded_why.append(f"{len(parked)} table(s) parked by DDL drift")
    if max_lag is not None and max_lag > lag_alert:
        degraded_why.append(f"lag {max_lag:.1f}s is above lagAlertSeconds {lag_alert:g}")
    conds: list[dict[str, Any]] = [dict(c) for c in previous]
    for type_, on, reason, message in (
        ("Ready", ready, "AllLinksStreaming" if ready else "NotAllLinksStreaming",
         f"{len(healthy)} of {len(ordered) or expected} links carry changes"
         if ordered else "no sidecar has reported yet"),
        ("Degraded", bool(degraded_why) or bool(gaps),
         "Problems" if degraded_why or gaps else "NoProblems",
         "; ".join((degraded_why + gaps)[:5]) or "no problems reported"),
        ("Healing", bool(bypassing), "BypassingMember" if bypassing else "RingClosed",
         "; ".join(f"{lk['from']}->{lk['to']} {lk['message']}" for lk in bypassing)
         or "every member is in the ring"),
        ("TablesParked", bool(parked), "DdlDrift" if parked else "NoDrift",
         "; ".join(parked[:5]) + (" (run the same DDL there: its changes wait and are "
                                  "applied in order once the table matches)" if parked else "")
         or "every table matches at every member"),
        ("Seeding", bool(seeding), "StockSync" if seeding else "NoSeeding",
         "; ".join(f"{s['member']} {s['percent']}%" for s in seeding)
         or "no member is being seeded"),
    ):
        conds = set_condition(conds, type=type_, status="True" if on else "False",
                              reason=reason, message=message[:1000], now=now,
                              generation=generation)
    return {
        "observedGeneration": generation,
        "memberCount": len(names),
        "healthyLinks": f"{len(healthy)}/{len(ordered) if ordered else expected}",
        "maxLagSeconds": max_lag,
        "conflictsTotal": sum(int(lk.get("conflicts") or 0) for lk in ordered),
        "links": ordered,
        "seeding": seeding,
        "conditions": conds,
    }
