"""Pure pieces of the ring drills campusLoss and syncCrash (docs/drills.md).

campusLoss stops every instance of one campus through the operator's own fence: the
Campus annotation `ringkeeper.io/fenced-instances`, which each instance's agent obeys
(a fenced primary steps down, a fenced replica stops) and which a real cluster honours
with the grants the operator already has (patch campuses). What the drill added is
written beside it (`ringkeeper.io/drill-fenced`), so the fence is undone exactly, also
by the Drill's finalizer after an operator restart, and a fence the user set before the
drill stays. The ring's recovery is read from the ReplicationRing's status, judged here
against the links core.ring says the ring should have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .annotations import FENCED, parse_fenced
from .ring import links

DRILL_FENCED = "ringkeeper.io/drill-fenced"
DRILL_LABEL = "ringkeeper.io/drill"  # on what a drill creates (its partition policy)
STREAMING = "Streaming"
# A bypass link carries changes as CatchingUp (core.liveness: it says it is bypassing).
FLOWING = frozenset({STREAMING, "CatchingUp"})


def _marker(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    text = annotations.get(DRILL_FENCED)
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def fenced_by(annotations: Mapping[str, str], drill: str) -> bool:
    """Whether the campus holds a fence this drill added (its marker names the drill)."""
    held = _marker(annotations)
    return held is not None and held.get("drill") == drill


def fence_annotations(annotations: Mapping[str, str], instances: Sequence[str],
                      drill: str) -> dict[str, str]:
    """The annotations that fence every instance of the campus, and the marker naming
    the instances this drill added (those not fenced already). Raises ValueError when the
    fence annotation is malformed (the drill will not overwrite what a person wrote) or
    another drill's fence is on the campus."""
    parsed = parse_fenced(annotations.get(FENCED), list(instances))
    if not parsed.ok:
        raise ValueError(f"cannot fence the campus: {parsed.error}")
    held = _marker(annotations)
    if held is not None and held.get("drill") != drill:
        raise ValueError(f"Drill {held.get('drill')} holds a fence on this campus "
                         f"({DRILL_FENCED})")
    before = set(parsed.value)
    added = sorted(set(instances) - before)
    if held is not None:  # a fence of ours that was never lifted: keep what it added
        added = sorted(set(added) | {str(i) for i in held.get("instances") or []})
    return {FENCED: json.dumps(sorted(before | set(instances))),
            DRILL_FENCED: json.dumps({"drill": drill, "instances": added})}


def unfence_annotations(annotations: Mapping[str, str], instances: Sequence[str],
                        drill: str) -> dict[str, str | None] | None:
    """The merge patch of annotations that lifts this drill's fence: the instances it
    added leave the list (an empty list leaves as the annotation), the marker goes.
    None when the campus holds no fence of this drill (nothing to undo)."""
    held = _marker(annotations)
    if held is None or held.get("drill") != drill:
        return None
    added = {str(i) for i in held.get("instances") or []}
    parsed = parse_fenced(annotations.get(FENCED), list(instances))
    # A malformed list (someone edited it meanwhile) still loses our instances: the HA
    # loop keeps its last good list for a malformed one, which holds them.
    rest = sorted(set(parsed.value) - added) if parsed.ok else []
    return {FENCED: json.dumps(rest) if rest else None, DRILL_FENCED: None}


def _states(status_links: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    return {(str(lk.get("from")), str(lk.get("to"))): str(lk.get("state"))
            for lk in status_links}


def ring_converged(status_links: Sequence[Mapping[str, Any]], members: Sequence[str],
                   topology: str) -> bool:
    """Every link the whole ring should have is in the status and Streaming (none
    bypassed, down or catching up)."""
    want = links(list(members), topology)
    states = _states(status_links)
    return bool(want) and all(states.get((lk.source, lk.target)) == STREAMING
                              for lk in want)


def feeding(members: Sequence[str], topology: str, member: str) -> list[str]:
    """The members `member`'s sync sidecar streams from (the sources of its inbound
    links): its predecessor in a ring, every other member in a mesh. Nobody else ever
    streams to it, so a syncCrash waits for these streams only before its fault."""
    return [lk.source for lk in links(list(members), topology) if lk.target == member]


def bypass_links(members: Sequence[str], topology: str, lost: str) -> list[tuple[str, str]]:
    """The links that exist only while `lost` is bypassed (its predecessor feeding its
    successor); none in a ring of two or a mesh, where nobody needs a bypass."""
    whole = {(lk.source, lk.target) for lk in links(list(members), topology)}
    return [(lk.source, lk.target)
            for lk in links(list(members), topology, frozenset({lost}))
            if (lk.source, lk.target) not in whole]


def bypass_streaming(status_links: Sequence[Mapping[str, Any]], members: Sequence[str],
                     topology: str, lost: str) -> bool:
    """The ring carries the other campuses' changes around `lost`: every bypass link
    flows (Streaming, or CatchingUp as a bypass link reports itself; vacuously true when
    no bypass is needed)."""
    states = _states(status_links)
    return all(states.get(lk) in FLOWING for lk in bypass_links(members, topology, lost))


def partition_policy(drill: str, drill_uid: str, namespace: str, campus: str, other: str,
                     other_ips: tuple[str, ...], campus_label: str,
                     select_label: str | None = None) -> dict[str, object]:
    """A NetworkPolicy that cuts `campus`'s pods from `other`'s, both ways, and lets every
    other peer through. `campus`'s pods carry `select_label` (a Satellite's pod its own
    label), `other`'s `campus_label`. Selecting one side for Ingress and Egress is enough: the other
    side's packets are refused on arrival and this side's never leave. Pods are matched by
    label (NotIn matches pods without the label) and, for implementations that apply
    ipBlock to pod addresses, `other`'s addresses are carved out of the catch-all block.
    Labelled and owned by the Drill so it is found and removed at the end of the run."""
    peers: list[dict[str, object]] = [
        {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": campus_label, "operator": "NotIn", "values": [other]}]}},
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": [f"{ip}/32" for ip in other_ips]}},
    ]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{drill}-partition"[:63].rstrip("-"), "namespace": namespace,
            "labels": {DRILL_LABEL: drill, "app.kubernetes.io/managed-by": "ringkeeper"},
            "ownerReferences": [{"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Drill",
                                 "name": drill, "uid": drill_uid, "controller": True}]},
        "spec": {"podSelector": {"matchLabels": {select_label or campus_label: campus}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": peers}], "egress": [{"to": peers}]},
    }
