"""Whether the operator may write an object that already exists: Own, Adopt or Foreign.

Server-side apply with force takes any object of the right name, whoever made
it: a ring named `payroll` once took over an unrelated Secret `payroll-sync`
and its owner reference made Kubernetes delete that Secret with the ring. So
before every write of an object it makes, the operator reads the object and
asks this module. The rules follow what Kubernetes' own controllers do with
pods (a ReplicaSet adopts an orphan only when its labels match and no other
controller holds it):

- absent: Own (the operator creates it, with its owner reference);
- a controller owner reference with the owner's uid: Own;
- a controller owner reference to anything else: Foreign (another Campus,
  another ring, a Campus of the same name deleted and re-created whose objects
  garbage collection has not removed yet, or someone else's controller);
- no controller reference, and every one of the owner's labels present with
  the owner's values: Adopt (an object orphaned by `kubectl delete
  --cascade=orphan` of a previous owner of the same name, or written before
  owner references were set);
- anything else: Foreign (an object somebody made by hand or another tool
  made). The operator never writes a Foreign object; it says which one is in
  the way instead.

Also: which ring holds a Campus. A Campus belongs to at most one ring,
because its sync sidecar reads a single `<campus>-ring` Secret; the ring that
created that Secret first (the API server serialises the create, so exactly
one wins) holds the Campus until that Secret goes away (the ring is deleted
and garbage collection removes it, or the ring drops the Campus and deletes
it). A second ring naming the Campus is told `CampusInAnotherRing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    OWN = "Own"
    ADOPT = "Adopt"
    FOREIGN = "Foreign"


class OwnershipRefusal(StrEnum):
    """Condition reasons for an object the operator will not write."""

    FOREIGN_OBJECT = "ForeignObject"
    CAMPUS_IN_ANOTHER_RING = "CampusInAnotherRing"


@dataclass(frozen=True)
class Owner:
    """The Campus or ReplicationRing that wants to write an object."""

    kind: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnershipDecision:
    verdict: Verdict
    reason: str
    holder_kind: str | None = None  # the controller that holds a Foreign object, if any
    holder_name: str | None = None

    @property
    def writable(self) -> bool:
        return self.verdict is not Verdict.FOREIGN


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = meta.get("ownerReferences") or meta.get("owner_references") or []
    return next((r for r in refs if isinstance(r, Mapping) and r.get("controller")), None)


def decide(existing: Mapping[str, Any] | None, owner: Owner) -> OwnershipDecision:
    """Own, Adopt or Foreign for `existing` (the object's metadata, or None when absent)."""
    if existing is None:
        return OwnershipDecision(Verdict.OWN, "absent: created with our owner reference")
    ctl = _controller(existing)
    if ctl is not None:
        if ctl.get("uid") == owner.uid:
            return OwnershipDecision(Verdict.OWN, f"controlled by this {owner.kind}")
        kind, name = str(ctl.get("kind", "?")), str(ctl.get("name", "?"))
        same = kind == owner.kind and name == owner.name
        why = (f"controlled by an earlier {kind} {name} (uid {ctl.get('uid')}) that is "
               "being deleted" if same else f"controlled by {kind} {name}")
        return OwnershipDecision(Verdict.FOREIGN, why, kind, name)
    labels = existing.get("labels") or {}
    missing = sorted(k for k, v in owner.labels.items() if labels.get(k) != v)
    if owner.labels and not missing:
        return OwnershipDecision(Verdict.ADOPT, f"labelled for this {owner.kind} and controlled by "
                        "nobody: adopted")
    return OwnershipDecision(Verdict.FOREIGN, "not made by Ringkeeper for this "
                    f"{owner.kind} (labels {', '.join(missing) or 'absent'} do not match, "
                    "no owner reference)")


def refusal_message(kind: str, name: str, decision: OwnershipDecision) -> str:
    """What a condition and an Event say about an object the operator will not write."""
    return (f"{kind} {name} exists and is {decision.reason}; Ringkeeper will not overwrite "
            "it. Rename this resource or remove that object.")


def ring_claim(existing: Mapping[str, Any] | None, ring: Owner, campus: str
               ) -> tuple[OwnershipDecision, OwnershipRefusal | None, str]:
    """May `ring` write the `<campus>-ring` Secret? (decision, refusal reason, message).

    The Secret records which ring holds the Campus (its controller owner
    reference): a ring that finds another ring there is refused with
    CAMPUS_IN_ANOTHER_RING naming it; anything else that is not ours is a
    FOREIGN_OBJECT.
    """
    decision = decide(existing, ring)
    if decision.writable:
        return decision, None, decision.reason
    if decision.holder_kind == ring.kind and decision.holder_name != ring.name:
        return (decision, OwnershipRefusal.CAMPUS_IN_ANOTHER_RING,
                f"campus {campus} is in ring {decision.holder_name}, which claimed it first "
                f"(it holds Secret {campus}-ring); this ring writes nothing for {campus}")
    return (decision, OwnershipRefusal.FOREIGN_OBJECT,
            refusal_message("Secret", f"{campus}-ring", decision))
