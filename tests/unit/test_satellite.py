"""A Satellite as a one-instance database: the objects core.manifests builds from its
campus-shaped view (the hospital example's satellite), the view its agent reads, and the
planner of its deployment and Ready condition (a table of every branch)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from conftest import EXAMPLES, load_docs
from ringkeeper.controller.campus_reconcile import unit_objects
from ringkeeper.controller.satellite import satellite_owner
from ringkeeper.core import manifests
from ringkeeper.core.instance import CampusView, DataState, Plan, start_plan
from ringkeeper.core.ownership import Verdict, decide
from ringkeeper.core.satellite import (
    DEFAULT_RESOURCES,
    ReadyReason,
    SatelliteFacts,
    campus_view,
    plan_satellite,
    ready_event,
    rings_naming,
    status_patch,
)
from ringkeeper.engines import profile_for

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def example() -> dict[str, Any]:
    sats = [d for d in load_docs(EXAMPLES / "hospital-group" / "satellite.yaml")
            if d["kind"] == "Satellite"]
    assert len(sats) == 1
    sat: dict[str, Any] = sats[0]
    sat["metadata"]["uid"] = "sat-uid"
    sat["metadata"]["generation"] = 3
    return sat


def by_kind_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_example_satellite_objects() -> None:
    generated, objs = unit_objects(campus_view(example()))
    objects = by_kind_name(generated + objs)
    assert sorted(objects) == sorted([
        ("Secret", "xindeng-superuser"), ("Secret", "xindeng-replication"),
        ("Secret", "xindeng-app"), ("Secret", "xindeng-agent"),
        ("ServiceAccount", "xindeng-instance"), ("Role", "xindeng-instance"),
        ("RoleBinding", "xindeng-instance"), ("Service", "xindeng"),
        ("Service", "xindeng-rw"), ("Service", "xindeng-ro"), ("Service", "xindeng-r"),
        ("PodDisruptionBudget", "xindeng"), ("StatefulSet", "xindeng")])
    for obj in objects.values():
        meta = obj["metadata"]
        assert meta["namespace"] == "lis"
        assert meta["ownerReferences"] == [{
            "apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite", "name": "xindeng",
            "uid": "sat-uid", "controller": True, "blockOwnerDeletion": True}]
        # Its own label, never the campus label: a Campus's HA loop lists pods by that.
        assert meta["labels"][manifests.SATELLITE_LABEL] == "xindeng"
        assert manifests.CAMPUS_LABEL not in meta["labels"]
        # What reconcile writes is ours by the ownership rules (labels and controller).
        assert decide(meta, satellite_owner(example())).verdict is Verdict.OWN
    sts = objects[("StatefulSet", "xindeng")]["spec"]
    assert sts["replicas"] == 1
    assert sts["selector"] == {"matchLabels": {manifests.SATELLITE_LABEL: "xindeng"}}
    (container,) = sts["template"]["spec"]["containers"]  # no sync sidecar yet
    assert container["name"] == "database"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RINGKEEPER_KIND"] == "Satellite"
    assert env["RINGKEEPER_CAMPUS"] == "xindeng"
    assert env["RINGKEEPER_VERSION"] == "17"
    assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    rw = objects[("Service", "xindeng-rw")]["spec"]["selector"]
    assert rw == {manifests.SATELLITE_LABEL: "xindeng", manifests.ROLE_LABEL: "primary"}
    (read_self, pods) = objects[("Role", "xindeng-instance")]["rules"]
    assert read_self == {"apiGroups": ["ringkeeper.io"], "resources": ["satellites"],
                         "resourceNames": ["xindeng"], "verbs": ["get"]}
    assert pods["resources"] == ["pods"]  # and no ring Secret: a satellite is in no ring


def test_small_defaults_and_kingbase_profile() -> None:
    sat = example()
    del sat["spec"]["resources"]
    sat["spec"].update(engine="kingbase", version="V9", image="registry.local/kes:V9")
    view = campus_view(sat)
    _, objs = unit_objects(view)
    sts = by_kind_name(objs)[("StatefulSet", "xindeng")]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == DEFAULT_RESOURCES
    assert container["image"] == "registry.local/kes:V9"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RINGKEEPER_ENGINE"] == "kingbase"
    assert env["RINGKEEPER_PORT"] == str(profile_for("kingbase", "V9").default_port)


def test_campus_objects_carry_no_satellite_marks() -> None:
    campus = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
              "metadata": {"name": "c", "namespace": "n", "uid": "u"},
              "spec": {"engine": "postgresql", "version": "17", "instances": 3}}
    _, objs = unit_objects(campus)
    sts = by_kind_name(objs)[("StatefulSet", "c")]
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]] == [
        "database", "sync"]
    assert "RINGKEEPER_KIND" not in str(sts)
    assert manifests.SATELLITE_LABEL not in str(objs)


def test_unknown_kind_builds_nothing() -> None:
    with pytest.raises(ValueError, match="no database objects"):
        manifests.desired({**campus_view(example()), "kind": "Drill"},
                          profile_for("postgresql", "17"))


def test_view_names_the_primary_only_once_recorded() -> None:
    """Until the controller recorded the first primary, the agent may initialise an empty
    data folder; afterwards an empty folder waits for a human (core.instance)."""
    fresh = campus_view(example())
    assert fresh["spec"]["instances"] == 1
    assert fresh["status"] == {"currentPrimary": None, "targetPrimary": "xindeng-0"}
    view = CampusView(None, "xindeng-0", frozenset())
    assert start_plan("xindeng-0", DataState.EMPTY, view).plan is Plan.INITDB
    recorded = campus_view({**example(), "status": {"currentPrimary": "xindeng-0"}})
    assert recorded["status"]["currentPrimary"] == "xindeng-0"
    view = CampusView("xindeng-0", "xindeng-0", frozenset())
    assert start_plan("xindeng-0", DataState.EMPTY, view).plan is Plan.WAIT
    assert start_plan("xindeng-0", DataState.PRIMARY, view).plan is Plan.START_PRIMARY
    # A status naming anything else is not believed.
    odd = campus_view({**example(), "status": {"currentPrimary": "other-0"}})
    assert odd["status"]["currentPrimary"] is None


def facts(**kw: Any) -> SatelliteFacts:
    base: dict[str, Any] = dict(name="xindeng", parent="fuyang", parent_exists=True,
                                parent_rings=("lis-ring",), pod_ready=True,
                                current_primary="xindeng-0", answers_as_primary=True)
    return SatelliteFacts(**{**base, **kw})


PLANS = [
    # (facts, deploy, ready, reason, record_primary)
    (facts(parent_exists=False, parent_rings=()), False, False, ReadyReason.PARENT_MISSING,
     None),
    (facts(parent_rings=()), False, False, ReadyReason.PARENT_NOT_IN_RING, None),
    (facts(pod_ready=False, current_primary=None, answers_as_primary=False), True, False,
     ReadyReason.INSTANCE_NOT_READY, None),
    (facts(pod_ready=False, current_primary=None), True, False,
     ReadyReason.INSTANCE_NOT_READY, "xindeng-0"),
    (facts(current_primary=None), True, True, ReadyReason.INSTANCE_READY, "xindeng-0"),
    (facts(), True, True, ReadyReason.INSTANCE_READY, None),
    (facts(pod_ready=False), True, False, ReadyReason.INSTANCE_NOT_READY, None),
]


@pytest.mark.parametrize(("f", "deploy", "ready", "reason", "record"), PLANS)
def test_plan(f: SatelliteFacts, deploy: bool, ready: bool, reason: ReadyReason,
              record: str | None) -> None:
    plan = plan_satellite(f)
    assert (plan.deploy, plan.ready, plan.reason, plan.record_primary) == (
        deploy, ready, reason, record)
    assert plan.phase.value == "Initializing"  # Online/Offline are the sync step's
    assert plan.message


def test_messages_say_what_to_do() -> None:
    assert "fix spec.parentRef.name" in plan_satellite(facts(parent_exists=False)).message
    assert "add the campus to a ring" in plan_satellite(facts(parent_rings=())).message
    assert "syncs through the sync sidecar of 'fuyang'" in plan_satellite(facts()).message


def test_rings_naming() -> None:
    rings: list[dict[str, Any]] = [
        {"metadata": {"name": "b"}, "spec": {"members": [{"name": "x", "campusRef": {
            "name": "fuyang"}}]}},
        {"metadata": {"name": "a"}, "spec": {"members": [
            {"name": "y", "external": {"host": "fuyang"}},
            {"name": "fuyang", "campusRef": {"name": "fuyang"}}]}},
        {"metadata": {"name": "c"}, "spec": {"members": [{"name": "fuyang", "campusRef": {
            "name": "zhaohui"}}]}},
        {"metadata": {"name": "d"}, "spec": {}},
    ]
    assert rings_naming(rings, "fuyang") == ("a", "b")
    assert rings_naming(rings, "yuecheng") == ()


def test_status_and_events() -> None:
    plan = plan_satellite(facts(parent_rings=()))
    patch = status_patch(plan, [{"type": "Accepted", "status": "True", "reason": "SpecValid",
                                 "message": "", "lastTransitionTime": "x"}], NOW, 3)
    assert patch["phase"] == "Initializing" and patch["observedGeneration"] == 3
    assert "currentPrimary" not in patch
    ready = {c["type"]: c for c in patch["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False", "ParentNotInRing", 3)
    assert "Accepted" in {c["type"] for c in patch["conditions"]}
    assert ready_event(None, plan) == ("ParentNotInRing", True)
    assert ready_event(ready, plan) is None  # said once, not every pass
    up = plan_satellite(facts(current_primary=None))
    assert status_patch(up, [], NOW, 3)["currentPrimary"] == "xindeng-0"
    assert ready_event(ready, up) == ("InstanceReady", False)
    assert ready_event(ready, plan_satellite(facts(pod_ready=False))) is None


def test_status_row_shows_readys_reason() -> None:
    """The phase stays Initializing until sync exists; the row says why it is (not) Ready."""
    from ringkeeper.cli.status_view import satellites

    row = satellites([{"metadata": {"namespace": "lis", "name": "xindeng"},
                       "spec": {"parentRef": {"name": "fuyang"}},
                       "status": {"phase": "Initializing", "conditions": [
                           {"type": "Accepted", "reason": "SpecValid"},
                           {"type": "Ready", "reason": "ParentNotInRing"}]}}])
    header, line = row.splitlines()
    assert header.split()[-1] == "READY" and line.split()[-1] == "ParentNotInRing"
    assert satellites([{"metadata": {"name": "s"}, "status": {"conditions": "x"}}])


@pytest.mark.parametrize("spec", [example()["spec"], {"parentRef": {"name": "p"},
                                                      "version": "V9", "engine": "kingbase",
                                                      "tables": [{"name": "a.b"}]}])
def test_view_is_a_valid_campus(spec: dict[str, Any]) -> None:
    """The campus-shaped view passes the Campus model's own rules (one instance, no
    synchronous standby, preferred durability), so the builders see nothing a Campus
    could not be."""
    from ringkeeper.api.v1alpha1 import BY_KIND

    view = campus_view({"metadata": {"name": "s", "namespace": "x", "uid": "u"},
                        "spec": spec})
    BY_KIND["Campus"].model_validate({"apiVersion": "ringkeeper.io/v1alpha1",
                                      "kind": "Campus",
                                      "metadata": {"name": "s", "namespace": "x"},
                                      "spec": view["spec"]})
