"""core.ownership and core.failures: table tests of the decisions behind every write."""

from __future__ import annotations

from typing import Any

import pytest

from ringkeeper.core.failures import (
    FailureReason,
    backoff_delay,
    reason_for_status,
    should_emit,
    signature,
)
from ringkeeper.core.ownership import Owner, OwnershipRefusal, Verdict, decide, ring_claim

CAMPUS = Owner("Campus", "victim", "uid-1",
               {"app.kubernetes.io/managed-by": "ringkeeper", "ringkeeper.io/campus": "victim"})
OURS = {"app.kubernetes.io/managed-by": "ringkeeper", "ringkeeper.io/campus": "victim"}


def _ref(kind: str, name: str, uid: str, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": kind, "name": name, "uid": uid,
            "controller": controller}


@pytest.mark.parametrize(("meta", "verdict", "holder"), [
    (None, Verdict.OWN, None),
    ({"labels": OURS, "ownerReferences": [_ref("Campus", "victim", "uid-1")]},
     Verdict.OWN, None),
    # Our owner reference decides even if someone edited the labels.
    ({"labels": {}, "ownerReferences": [_ref("Campus", "victim", "uid-1")]}, Verdict.OWN, None),
    # Another Campus's object of the same name (Campus victim-rw's headless Service).
    ({"labels": {**OURS, "ringkeeper.io/campus": "victim-rw"},
      "ownerReferences": [_ref("Campus", "victim-rw", "uid-2")]}, Verdict.FOREIGN, "victim-rw"),
    # A previous Campus of the same name, not yet garbage-collected.
    ({"labels": OURS, "ownerReferences": [_ref("Campus", "victim", "uid-old")]},
     Verdict.FOREIGN, "victim"),
    # Our labels copied onto an object some other controller holds: still not ours.
    ({"labels": OURS, "ownerReferences": [_ref("Deployment", "payroll", "uid-9")]},
     Verdict.FOREIGN, "payroll"),
    # An orphan with our labels (kubectl delete --cascade=orphan of the last owner): adopt.
    ({"labels": OURS}, Verdict.ADOPT, None),
    ({"labels": OURS, "ownerReferences": [_ref("Campus", "victim", "uid-old", False)]},
     Verdict.ADOPT, None),
    # Made by hand: no labels, no owner.
    ({"name": "victim-sync"}, Verdict.FOREIGN, None),
    ({"labels": {"ringkeeper.io/campus": "victim"}}, Verdict.FOREIGN, None),
    ({"labels": {**OURS, "ringkeeper.io/campus": "other"}}, Verdict.FOREIGN, None),
])
def test_decide(meta: dict[str, Any] | None, verdict: Verdict, holder: str | None) -> None:
    d = decide(meta, CAMPUS)
    assert d.verdict is verdict, d.reason
    assert d.holder_name == holder
    assert d.writable is (verdict is not Verdict.FOREIGN)


def test_an_owner_without_labels_adopts_nothing() -> None:
    bare = Owner("Campus", "victim", "uid-1")
    assert decide({"labels": OURS}, bare).verdict is Verdict.FOREIGN


RING_A = Owner("ReplicationRing", "ring-a", "uid-a", {"ringkeeper.io/ring": "ring-a"})
RING_B = Owner("ReplicationRing", "ring-b", "uid-b", {"ringkeeper.io/ring": "ring-b"})


@pytest.mark.parametrize(("meta", "ring", "refusal", "words"), [
    (None, RING_A, None, []),
    ({"labels": {"ringkeeper.io/ring": "ring-a"},
      "ownerReferences": [_ref("ReplicationRing", "ring-a", "uid-a")]}, RING_A, None, []),
    ({"labels": {"ringkeeper.io/ring": "ring-a"},
      "ownerReferences": [_ref("ReplicationRing", "ring-a", "uid-a")]}, RING_B,
     OwnershipRefusal.CAMPUS_IN_ANOTHER_RING, ["ring ring-a", "campus east"]),
    # A hand-made Secret east-ring: not another ring, a foreign object.
    ({"labels": {}}, RING_B, OwnershipRefusal.FOREIGN_OBJECT, ["Secret east-ring"]),
    # The ring's own earlier incarnation (deleted, re-created, GC pending).
    ({"labels": {"ringkeeper.io/ring": "ring-b"},
      "ownerReferences": [_ref("ReplicationRing", "ring-b", "uid-old")]}, RING_B,
     OwnershipRefusal.FOREIGN_OBJECT, ["earlier"]),
    # Left by ring-a with its labels after an orphaning delete: ring-b does not take it.
    ({"labels": {"ringkeeper.io/ring": "ring-a"}}, RING_B, OwnershipRefusal.FOREIGN_OBJECT,
     ["Secret east-ring"]),
])
def test_ring_claim(meta: dict[str, Any] | None, ring: Owner, refusal: OwnershipRefusal | None,
                    words: list[str]) -> None:
    decision, why, message = ring_claim(meta, ring, "east")
    assert why is refusal
    assert decision.writable is (refusal is None)
    for w in words:
        assert w in message


@pytest.mark.parametrize(("status", "reason"), [
    (400, FailureReason.INVALID), (422, FailureReason.INVALID), (409, FailureReason.CONFLICT),
    (403, FailureReason.FORBIDDEN), (401, FailureReason.FORBIDDEN),
    (404, FailureReason.NOT_FOUND), (429, FailureReason.UNAVAILABLE),
    (500, FailureReason.UNAVAILABLE), (503, FailureReason.UNAVAILABLE),
    (None, FailureReason.UNAVAILABLE), (0, FailureReason.UNAVAILABLE),
    (410, FailureReason.API_ERROR), (418, FailureReason.API_ERROR),
])
def test_reason_for_status(status: int | None, reason: FailureReason) -> None:
    assert reason_for_status(status) is reason


@pytest.mark.parametrize(("failures", "delay"), [
    (0, 0.0), (1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 300.0), (400, 300.0),
])
def test_backoff_grows_to_a_ceiling(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def test_one_event_per_distinct_failure() -> None:
    a = signature("Invalid", "storage: Invalid value: -1Gi")
    assert should_emit(None, a)
    assert not should_emit(a, signature("Invalid", "storage: Invalid value: -1Gi"))
    assert should_emit(a, signature("Conflict", "storage: Invalid value: -1Gi"))
    assert should_emit(a, signature("Invalid", "cpu: Invalid value: -1"))
