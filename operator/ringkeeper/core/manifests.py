"""The Kubernetes objects a Campus is made of, built from its spec alone.

A Satellite is built by the same functions from its campus-shaped view
(core.satellite.campus_view, kind "Satellite"): one instance, its own label, its own
owner reference, its agent allowed to read that Satellite, and no sync sidecar yet.

Pure: the same Campus always yields the same objects, so reconcile is a
server-side apply of this list, and drift (a hand-edited Service, a deleted
PDB) converges on the next pass. Secrets are the exception the controller
handles: they are created once and never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engines import EngineProfile
from .names import instance_count

CAMPUS_LABEL = "ringkeeper.io/campus"
SATELLITE_LABEL = "ringkeeper.io/satellite"
# Each kind selects its pods by its own label: a Campus's HA loop and every tool that lists
# a campus's pods by CAMPUS_LABEL never sees a satellite's pod.
UNIT_LABELS = {"Campus": CAMPUS_LABEL, "Satellite": SATELLITE_LABEL}
UNIT_PLURALS = {"Campus": "campuses", "Satellite": "satellites"}
ROLE_LABEL = "ringkeeper.io/role"
INSTANCE_LABEL = "ringkeeper.io/instance"
AGENT_PORT = 8000
SYNC_PORT = 8001
DATA_MOUNT = "/var/lib/ringkeeper/data"
SOCKET_DIR = "/run/ringkeeper"
SECRET_KEYS = {"superuser": "password", "replication": "password", "app": "password",
               "agent": "token"}


def secret_name(campus: str, kind: str) -> str:
    return f"{campus}-{kind}"


def unit_kind(campus: Mapping[str, Any]) -> str:
    """Campus, or Satellite for a satellite's campus-shaped view."""
    kind = str(campus.get("kind") or "Campus")
    if kind not in UNIT_LABELS:
        raise ValueError(f"no database objects are built for kind {kind!r}")
    return kind


def unit_label(campus: Mapping[str, Any]) -> str:
    return UNIT_LABELS[unit_kind(campus)]


def owner_ref(campus: Mapping[str, Any]) -> dict[str, Any]:
    meta = campus["metadata"]
    return {"apiVersion": campus.get("apiVersion", "ringkeeper.io/v1alpha1"),
            "kind": unit_kind(campus),
            "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def _meta(campus: Mapping[str, Any], name: str, extra: Mapping[str, str] | None = None
          ) -> dict[str, Any]:
    c = campus["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "ringkeeper", "app.kubernetes.io/instance": c,
              "app.kubernetes.io/managed-by": "ringkeeper", unit_label(campus): c,
              **(extra or {})}
    return {"name": name, "namespace": campus["metadata"]["namespace"], "labels": labels,
            "ownerReferences": [owner_ref(campus)]}


def secret(campus: Mapping[str, Any], kind: str, username: str, value: str) -> dict[str, Any]:
    """A generated credential; the controller creates it only when it is missing."""
    data = {"username": username, SECRET_KEYS[kind]: value}
    if kind == "agent":
        data = {"token": value}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(campus, secret_name(campus["metadata"]["name"], kind)),
            "stringData": data}


def services(campus: Mapping[str, Any], profile: EngineProfile) -> list[dict[str, Any]]:
    c = campus["metadata"]["name"]
    label = unit_label(campus)
    port = {"name": "postgresql", "port": profile.default_port,
            "targetPort": "postgresql", "protocol": "TCP"}
    out = [{
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(campus, c),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {label: c},
                 "ports": [port, {"name": "agent", "port": AGENT_PORT,
                                  "targetPort": "agent", "protocol": "TCP"}]},
    }]
    for suffix, role, what in (("rw", "primary", "the current primary only"),
                               ("ro", "replica", "ready replicas, load-balanced"),
                               ("r", None, "any ready instance")):
        selector = {label: c}
        if role:
            selector[ROLE_LABEL] = role
        svc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
               "metadata": _meta(campus, f"{c}-{suffix}"),
               "spec": {"selector": selector, "ports": [port]}}
        svc["metadata"]["annotations"] = {"ringkeeper.io/selects": what}
        out.append(svc)
    return out


def pod_disruption_budget(campus: Mapping[str, Any]) -> dict[str, Any]:
    c = campus["metadata"]["name"]
    instances = instance_count(campus["spec"])
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(campus, c),
            "spec": {"maxUnavailable": 1 if instances > 1 else 0,
                     "selector": {"matchLabels": {unit_label(campus): c}}}}


def instance_rbac(campus: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The agents read their own Campus (or Satellite) and their peers' pods, nothing more."""
    c = campus["metadata"]["name"]
    name = f"{c}-instance"
    kind = unit_kind(campus)
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["ringkeeper.io"], "resources": [UNIT_PLURALS[kind]],
         "resourceNames": [c], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    if kind == "Campus":
        # The sync sidecar reads where the ring's members are, nothing else.
        rules.append({"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": [ring_secret_name(c)], "verbs": ["get"]})
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(campus, name)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(campus, name), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(campus, name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name,
                       "namespace": campus["metadata"]["namespace"]}]},
    ]


def ring_secret_name(campus: str) -> str:
    """The Secret the operator writes for a Campus's sync sidecar (its ring's members)."""
    return f"{campus}-ring"


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def statefulset(campus: Mapping[str, Any], profile: EngineProfile,
                pod_cidr: str = "0.0.0.0/0") -> dict[str, Any]:
    c = campus["metadata"]["name"]
    kind = unit_kind(campus)
    label = unit_label(campus)
    spec = campus["spec"]
    storage = spec.get("storage") or {}
    claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": storage.get("size", "10Gi")}}}
    if storage.get("storageClass"):
        claim["storageClassName"] = storage["storageClass"]
    env = [
        {"name": "RINGKEEPER_CAMPUS", "value": c},
        {"name": "RINGKEEPER_ENGINE", "value": profile.engine},
        {"name": "RINGKEEPER_VERSION", "value": profile.version},
        {"name": "RINGKEEPER_PORT", "value": str(profile.default_port)},
        {"name": "RINGKEEPER_POD_CIDR", "value": pod_cidr},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PGDATA", "value": f"{DATA_MOUNT}/pgdata"},
        {"name": "RINGKEEPER_SOCKET_DIR", "value": SOCKET_DIR},
        _secret_env("RINGKEEPER_SUPERUSER", secret_name(c, "superuser"), "username"),
        _secret_env("RINGKEEPER_SUPERUSER_PASSWORD", secret_name(c, "superuser"), "password"),
        _secret_env("RINGKEEPER_REPLICATION_USER", secret_name(c, "replication"), "username"),
        _secret_env("RINGKEEPER_REPLICATION_PASSWORD", secret_name(c, "replication"),
                    "password"),
        _secret_env("RINGKEEPER_APP_USER", secret_name(c, "app"), "username"),
        _secret_env("RINGKEEPER_APP_PASSWORD", secret_name(c, "app"), "password"),
        {"name": "RINGKEEPER_APP_DATABASE", "value": "app"},
        _secret_env("RINGKEEPER_AGENT_TOKEN", secret_name(c, "agent"), "token"),
    ]
    if kind != "Campus":
        # Which object the agent reads (agent.run); absent means Campus, so existing
        # campuses' pod templates, and so their pods, stay as they were.
        env.append({"name": "RINGKEEPER_KIND", "value": kind})
    container: dict[str, Any] = {
        "name": "database",
        "image": spec.get("image") or profile.image,
        "command": ["ringkeeper", "agent"],
        "env": env,
        "ports": [{"name": "postgresql", "containerPort": profile.default_port},
                  {"name": "agent", "containerPort": AGENT_PORT}],
        # Ready only while serving its role (primary named by the Campus, or replica).
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "agent"},
                           "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "agent"},
                          "periodSeconds": 5, "failureThreshold": 6, "timeoutSeconds": 2},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "agent"},
                         "periodSeconds": 1, "failureThreshold": 120},
        "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT},
                         {"name": "sockets", "mountPath": SOCKET_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    # The sync sidecar: idle until the Campus is in a ring (its Secret appears) and
    # active only next to the primary; it reaches the database over the Unix socket.
    sync_env = [e for e in env if e["name"] in {
        "RINGKEEPER_CAMPUS", "RINGKEEPER_PORT", "POD_NAMESPACE", "POD_IP",
        "RINGKEEPER_SOCKET_DIR", "RINGKEEPER_SUPERUSER", "RINGKEEPER_SUPERUSER_PASSWORD",
        "RINGKEEPER_APP_DATABASE"}]
    sync_env.append({"name": "RINGKEEPER_RING_SECRET", "value": ring_secret_name(c)})
    sync_env.append({"name": "RINGKEEPER_SYNC_PORT", "value": str(SYNC_PORT)})
    sync: dict[str, Any] = {
        "name": "sync",
        "image": spec.get("image") or profile.image,
        "command": ["ringkeeper", "sync"],
        "env": sync_env,
        "ports": [{"name": "sync", "containerPort": SYNC_PORT}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "sync"},
                          "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 2},
        "volumeMounts": [{"name": "sockets", "mountPath": SOCKET_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    # A satellite's sync is not built yet: no sidecar idles in its pod meanwhile.
    containers = [container, sync] if kind == "Campus" else [container]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(campus, c),
        "spec": {
            "replicas": instance_count(spec),
            "serviceName": c,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {label: c}},
            "template": {
                "metadata": {"labels": {label: c, "app.kubernetes.io/name": "ringkeeper",
                                        "app.kubernetes.io/component": "database"}},
                "spec": {
                    "serviceAccountName": f"{c}-instance",
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 26, "runAsGroup": 26,
                                        "fsGroup": 26,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": containers,
                    "volumes": [{"name": "sockets", "emptyDir": {}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim}],
        },
    }


def desired(campus: Mapping[str, Any], profile: EngineProfile,
            pod_cidr: str = "0.0.0.0/0") -> list[dict[str, Any]]:
    """Everything reconcile applies, Secrets excluded, in creation order."""
    return [*instance_rbac(campus), *services(campus, profile),
            pod_disruption_budget(campus), statefulset(campus, profile, pod_cidr)]
