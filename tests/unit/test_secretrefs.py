"""Secrets are referenced, never harvested: which Secrets a ring may read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ringkeeper.core import manifests
from ringkeeper.core.secretrefs import (
    RING_LABEL,
    SecretUse,
    SecretVerdict,
    generated_names,
    may_use,
    refusal_conditions,
)

RING = "lis"
GENERATED = generated_names(RING, ["zhaohui", "yuecheng"])


def meta(labels: dict[str, str] | None = None, owners: list[dict[str, Any]] | None = None
         ) -> dict[str, Any]:
    return {"labels": labels or {}, "ownerReferences": owners or []}


LABELLED = {RING_LABEL: RING}
CAMPUS_OWNER = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus", "name": "zhaohui",
                "uid": "u1", "controller": True}
RING_OWNER = {**CAMPUS_OWNER, "kind": "ReplicationRing", "name": RING}


@pytest.mark.parametrize(("name", "metadata", "verdict"), [
    ("lis-remote", meta(LABELLED), SecretVerdict.USABLE),
    ("lis-remote", meta({RING_LABEL: RING, "team": "lab"}), SecretVerdict.USABLE),
    # Not labelled, labelled for another ring, or with a near-miss label.
    ("lis-remote", meta(), SecretVerdict.NOT_LABELLED),
    ("lis-remote", meta({RING_LABEL: "other"}), SecretVerdict.NOT_LABELLED),
    ("lis-remote", meta({RING_LABEL: "lis "}), SecretVerdict.NOT_LABELLED),
    ("lis-remote", meta({"ringkeeper.io/rings": RING}), SecretVerdict.NOT_LABELLED),
    ("lis-remote", {}, SecretVerdict.NOT_LABELLED),
    ("lis-remote", None, SecretVerdict.MISSING),
    # The operator's own Secrets, even when someone labelled them for the ring.
    ("zhaohui-superuser", meta(LABELLED), SecretVerdict.GENERATED),
    ("zhaohui-replication", meta(LABELLED), SecretVerdict.GENERATED),
    ("zhaohui-app", meta(LABELLED), SecretVerdict.GENERATED),
    ("zhaohui-agent", meta(LABELLED), SecretVerdict.GENERATED),
    ("zhaohui-ring", meta(LABELLED), SecretVerdict.GENERATED),
    ("lis-sync", meta(LABELLED), SecretVerdict.GENERATED),
    ("other-campus-superuser", meta(LABELLED), SecretVerdict.GENERATED),
    ("renamed", meta(LABELLED, [CAMPUS_OWNER]), SecretVerdict.GENERATED),
    ("renamed", meta(LABELLED, [RING_OWNER]), SecretVerdict.GENERATED),
    ("renamed", meta({**LABELLED, "app.kubernetes.io/managed-by": "ringkeeper"}),
     SecretVerdict.GENERATED),
    ("renamed", meta({**LABELLED, manifests.CAMPUS_LABEL: "zhaohui"}), SecretVerdict.GENERATED),
    # Someone else's owner is fine (e.g. cert-manager's Certificate made the CA Secret).
    ("lis-ca", meta(LABELLED, [{"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                                "name": "lis-ca", "uid": "u2"}]), SecretVerdict.USABLE),
], ids=lambda v: v if isinstance(v, str) else None)
def test_may_use(name: str, metadata: dict[str, Any] | None, verdict: SecretVerdict) -> None:
    use = may_use(RING, name, metadata, GENERATED)
    assert use.verdict == verdict
    assert use.usable == (verdict == SecretVerdict.USABLE)
    assert use.secret == name and name in use.message


def test_the_operators_campus_secrets_are_all_generated_names() -> None:
    campus = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
              "metadata": {"name": "zhaohui", "namespace": "lab", "uid": "u1"}}
    for kind in manifests.SECRET_KEYS:
        made = manifests.secret(campus, kind, "u", "v")
        assert made["metadata"]["name"] in GENERATED
        use = may_use(RING, made["metadata"]["name"],
                      {**made["metadata"], "labels": {**made["metadata"]["labels"], **LABELLED}})
        assert use.verdict == SecretVerdict.GENERATED, kind


def test_refusal_message_says_which_label_to_add() -> None:
    use = may_use(RING, "lis-remote", meta(), GENERATED)
    assert f"{RING_LABEL}={RING}" in use.message
    assert "kubectl label secret lis-remote ringkeeper.io/ring=lis" in use.message


def test_refusals_set_ready_false_with_the_first_reason() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    before = [{"type": "Ready", "status": "True", "reason": "AllLinksStreaming",
               "message": "", "lastTransitionTime": "2025-12-31T00:00:00Z"}]
    refused = [may_use(RING, "a", meta(), GENERATED),
               may_use(RING, "zhaohui-superuser", meta(LABELLED), GENERATED)]
    out = refusal_conditions(before, refused, now, 3)
    (ready,) = [c for c in out if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotLabelled")
    assert "Secret a" in ready["message"] and "zhaohui-superuser" in ready["message"]
    assert refusal_conditions(before, [], now, 3) == before
    assert isinstance(refused[0], SecretUse)
