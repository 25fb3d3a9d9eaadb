"""Install manifests (deploy/) and the Helm chart (charts/ringkeeper/).

The plain-YAML tests always run. The Helm tests need the helm binary that
hack/build-k8s.sh builds, and are skipped when it has not been built.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO

DEPLOY = REPO / "deploy"
CHART = REPO / "charts" / "ringkeeper"

Triple = tuple[str, str, str]

# The exact least-privilege rule set of the operator's ClusterRole:
# (apiGroups, resources, verbs), expanded into (group, resource, verb) triples.
EXPECTED_RULES: list[tuple[list[str], list[str], list[str]]] = [
    (
        ["ringkeeper.io"],
        ["campuses", "replicationrings", "satellites", "drills"],
        ["get", "list", "watch", "patch", "update"],
    ),
    (
        ["ringkeeper.io"],
        ["campuses/status", "replicationrings/status", "satellites/status", "drills/status"],
        ["get", "patch", "update"],
    ),
    ([""], ["pods"], ["get", "list", "watch", "patch", "delete"]),
    (
        [""],
        ["services", "configmaps", "secrets", "persistentvolumeclaims"],
        ["get", "list", "watch", "create", "patch", "update", "delete"],
    ),
    ([""], ["events"], ["create", "patch"]),
    ([""], ["namespaces"], ["get", "list", "watch"]),
    (
        [""],
        ["serviceaccounts"],
        ["get", "list", "watch", "create", "patch", "update", "delete"],
    ),
    (
        ["rbac.authorization.k8s.io"],
        ["roles", "rolebindings"],
        ["get", "list", "watch", "create", "patch", "update", "delete"],
    ),
    (
        ["apps"],
        ["statefulsets"],
        ["get", "list", "watch", "create", "patch", "update", "delete"],
    ),
    (
        ["policy"],
        ["poddisruptionbudgets"],
        ["get", "list", "watch", "create", "patch", "update", "delete"],
    ),
    (["batch"], ["jobs"], ["get", "list", "watch", "create", "delete"]),
    (["discovery.k8s.io"], ["endpointslices"], ["get", "list", "watch"]),
    (
        ["coordination.k8s.io"],
        ["leases"],
        ["get", "list", "watch", "create", "update", "patch"],
    ),
    (["events.k8s.io"], ["events"], ["create", "patch"]),
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"]),
]


def expand(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


EXPECTED_TRIPLES = expand(
    [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v in EXPECTED_RULES]
)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def deploy_files() -> list[Path]:
    return sorted(DEPLOY.glob("*.yaml"))


# --------------------------------------------------------------------------- deploy/


def test_deploy_dir_has_the_manifests() -> None:
    names = {p.name for p in deploy_files()}
    assert {
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "operator.yaml",
        "kustomization.yaml",
    } <= names


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: p.name)
def test_deploy_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: missing apiVersion/kind"


def test_kustomization_lists_existing_files() -> None:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kust["namespace"] == "ringkeeper-system"
    for res in kust["resources"]:
        assert (DEPLOY / res).is_file(), f"kustomization resource {res} does not exist"
    listed = {Path(r).name for r in kust["resources"]}
    for path in deploy_files():
        if path.name != "kustomization.yaml":
            assert path.name in listed, f"{path.name} is not in kustomization.yaml"


def test_namespace_enforces_restricted_pod_security() -> None:
    ns = only(load_all(DEPLOY / "namespace.yaml"), "Namespace")
    assert ns["metadata"]["name"] == "ringkeeper-system"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def deploy_deployment() -> dict[str, Any]:
    return only(load_all(DEPLOY / "operator.yaml"), "Deployment")


def operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "operator")


def assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    container = operator_container(deployment)
    csc = container["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in csc["capabilities"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
        assert container[probe]["httpGet"]["port"] == "health", probe
    limits = container["resources"]["limits"]
    assert limits["memory"] and limits["cpu"]
    assert container["resources"]["requests"]["memory"]
    # read-only root filesystem: /tmp must be a writable emptyDir
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_is_hardened() -> None:
    dep = deploy_deployment()
    assert dep["metadata"]["name"] == "ringkeeper-operator"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert_hardened(dep)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ringkeeper-operator"
    psc = pod["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (65532, 65532, 65532)


def test_deployment_binds_its_pod_ip() -> None:
    container = operator_container(deploy_deployment())
    assert container["command"] == ["ringkeeper", "operator"]
    args = container["args"]
    assert args[args.index("--health-host") + 1] == "$(POD_IP)"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_IP": "status.podIP",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_NAME": "metadata.name",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert args[args.index("--health-port") + 1] == "8080"
    assert args[args.index("--metrics-port") + 1] == "9090"


def deploy_cluster_role() -> dict[str, Any]:
    return only(load_all(DEPLOY / "rbac.yaml"), "ClusterRole")


def test_cluster_role_has_no_wildcards() -> None:
    for rule in deploy_cluster_role()["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert not any("*" in item for item in rule.get(key, [])), (key, rule)
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule


def test_cluster_role_grants_exactly_the_expected_rules() -> None:
    granted = expand(deploy_cluster_role()["rules"])
    assert granted - EXPECTED_TRIPLES == set(), "unexpected permissions"
    assert EXPECTED_TRIPLES - granted == set(), "missing permissions"


def test_cluster_role_is_bound_to_the_service_account() -> None:
    docs = load_all(DEPLOY / "rbac.yaml")
    binding = only(docs, "ClusterRoleBinding")
    sa = only(load_all(DEPLOY / "serviceaccount.yaml"), "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": deploy_cluster_role()["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ringkeeper-system"}
    ]


# --------------------------------------------------------------------------- Helm chart


@pytest.fixture(scope="module")
def helm() -> Path:
    out = subprocess.run(
        ["hack/build-k8s.sh", "--print-dir"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    binary = Path(out.stdout.strip()) / "helm"
    if not binary.is_file():
        pytest.skip("helm not built: run hack/build-k8s.sh")
    return binary


@pytest.fixture(scope="module")
def kube_version(helm: Path) -> str:
    # helm built from source without its ldflags assumes Kubernetes v1.20, which the chart's
    # kubeVersion (>=1.28) rejects: render against the version hack/build-k8s.sh builds.
    versions = helm.parent / "VERSIONS"
    if versions.is_file():
        for line in versions.read_text(encoding="utf-8").splitlines():
            if line.startswith("kubernetes="):
                return line.removeprefix("kubernetes=").strip()
    return helm.parent.name.lstrip("v")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], cwd=REPO, capture_output=True, text=True)


def render(helm: Path, kube_version: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "t", str(CHART), "--kube-version", kube_version]
    for s in sets:
        args += ["--set", s]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_helm_lint(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_rbac_matches_deploy_rbac(helm: Path, kube_version: str) -> None:
    role = only(render(helm, kube_version), "ClusterRole")
    chart_triples = expand(role["rules"])
    assert chart_triples == expand(deploy_cluster_role()["rules"])
    assert chart_triples == EXPECTED_TRIPLES


def test_chart_deployment_matches_deploy_manifest(helm: Path, kube_version: str) -> None:
    dep = only(render(helm, kube_version), "Deployment")
    assert_hardened(dep)
    ours, theirs = operator_container(dep), operator_container(deploy_deployment())
    for key in (
        "command",
        "args",
        "env",
        "ports",
        "resources",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "imagePullPolicy",
        "image",
    ):
        assert ours[key] == theirs[key], key
    pod = dep["spec"]["template"]["spec"]
    their_pod = deploy_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"] == their_pod["securityContext"]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_chart_renders_watch_namespaces(helm: Path, kube_version: str) -> None:
    docs = render(helm, kube_version, "podMonitor.enabled=true", "watchNamespaces={a,b}")
    args = operator_container(only(docs, "Deployment"))["args"]
    assert " --namespace a --namespace b" in " " + " ".join(args)
    monitor = only(docs, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    service = only(docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"


def test_chart_defaults_watch_all_namespaces(helm: Path, kube_version: str) -> None:
    docs = render(helm, kube_version)
    assert "--namespace" not in operator_container(only(docs, "Deployment"))["args"]
    assert not [d for d in docs if d["kind"] == "PodMonitor"]


@pytest.mark.parametrize(
    "bad",
    [
        "image.pullPolicy=Sometimes",
        "nope=1",
        "health.port=70000",
        "metrics.port=0",
        "replicaCount=4",
        "verbose=maybe",
        "podMonitor.nope=1",
    ],
)
def test_chart_schema_rejects_bad_values(helm: Path, kube_version: str, bad: str) -> None:
    result = run_helm(
        helm, "template", "t", str(CHART), "--kube-version", kube_version, "--set", bad
    )
    assert result.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in result.stderr, result.stderr
