"""Install manifests (deploy/) and the Helm chart (charts/ringkeeper/).

The plain-YAML tests always run. The Helm tests need the helm binary that
hack/build-k8s.sh builds, and are skipped when it has not been built.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO

DEPLOY = REPO / "deploy"
CHART = REPO / "charts" / "ringkeeper"

Triple = tuple[str, str, str]

# The exact least-privilege rules, by part, as (apiGroups, resources, verbs). Each grant
# is one the operator's code uses: test_every_grant_is_used_by_the_code checks that.
WORKLOAD_RULES: list[tuple[list[str], list[str], list[str]]] = [
    (["ringkeeper.io"], ["campuses", "replicationrings"], ["get", "list", "watch", "patch"]),
    (["ringkeeper.io"], ["satellites"], ["get", "list", "watch", "patch"]),
    (["ringkeeper.io"], ["drills"], ["get", "list", "watch", "patch"]),
    (["ringkeeper.io"],
     ["campuses/status", "replicationrings/status", "satellites/status", "drills/status"],
     ["patch"]),
    ([""], ["pods"], ["get", "list", "patch", "delete"]),
    (["networking.k8s.io"], ["networkpolicies"], ["create", "list", "delete"]),
    ([""], ["secrets"], ["get", "list", "create", "patch", "delete"]),
    ([""], ["services", "serviceaccounts"], ["get", "create", "patch"]),
    (["apps"], ["statefulsets"], ["get", "create", "patch"]),
    (["policy"], ["poddisruptionbudgets"], ["get", "create", "patch"]),
    (["rbac.authorization.k8s.io"], ["roles", "rolebindings"], ["get", "create", "patch"]),
    ([""], ["events"], ["create"]),
]
DISCOVERY_RULES = [(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"])]
NAMESPACED_MODE_RULES = [([""], ["namespaces"], ["list", "watch"])]  # only with --namespace
LEADER_RULES = [(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])]
# Never granted, whatever else changes (the live-cluster finding of issue 13).
FORBIDDEN: set[Triple] = {("", "secrets", v) for v in ("watch", "update", "deletecollection")} | {
    (g, r, v) for g, r in (("batch", "jobs"), ("", "configmaps"),
                           ("", "persistentvolumeclaims"), ("discovery.k8s.io", "endpointslices"))
    for v in ("get", "list", "watch", "create", "patch", "update", "delete")}


def expand(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def triples(rules: list[tuple[list[str], list[str], list[str]]]) -> set[Triple]:
    return expand([{"apiGroups": g, "resources": r, "verbs": v} for g, r, v in rules])


WORKLOAD = triples(WORKLOAD_RULES)
DISCOVERY = triples(DISCOVERY_RULES)
NAMESPACED_MODE = triples(NAMESPACED_MODE_RULES)
LEADER = triples(LEADER_RULES)
EXPECTED_TRIPLES = WORKLOAD | DISCOVERY | LEADER  # watching all namespaces


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


def rbac_docs() -> list[dict[str, Any]]:
    return load_all(DEPLOY / "rbac.yaml")


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind
             and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, found {len(found)}"
    return found[0]


def test_rbac_has_no_wildcards_or_non_resource_urls() -> None:
    for doc in rbac_docs():
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule.get(key, [])), (key, rule)
            assert "nonResourceURLs" not in rule


def test_deploy_rbac_grants_exactly_the_expected_rules() -> None:
    docs = rbac_docs()
    assert expand(named(docs, "ClusterRole", "-operator")["rules"]) == WORKLOAD
    assert expand(named(docs, "ClusterRole", "-discovery")["rules"]) == DISCOVERY
    leader = named(docs, "Role", "-leader")
    assert leader["metadata"]["namespace"] == "ringkeeper-system"
    assert expand(leader["rules"]) == LEADER
    granted = set().union(*(expand(d.get("rules", [])) for d in docs))
    assert granted == EXPECTED_TRIPLES
    assert granted & FORBIDDEN == set()


def test_rbac_is_bound_to_the_service_account() -> None:
    docs = rbac_docs()
    sa = only(load_all(DEPLOY / "serviceaccount.yaml"), "ServiceAccount")
    subject = [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                "namespace": "ringkeeper-system"}]
    for kind, role_kind, suffix in (("ClusterRoleBinding", "ClusterRole", "-operator"),
                                    ("ClusterRoleBinding", "ClusterRole", "-discovery"),
                                    ("RoleBinding", "Role", "-leader")):
        binding = named(docs, kind, suffix)
        role = named(docs, role_kind, suffix)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": role_kind, "name": role["metadata"]["name"]}
        assert binding["subjects"] == subject
        if kind == "RoleBinding":
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def _chart_template_rules() -> dict[str, set[Triple]]:
    """The chart's rules read without helm: template lines dropped (so conditional rules
    count as granted), documents keyed by their name suffix."""
    text = (CHART / "templates" / "rbac.yaml").read_text(encoding="utf-8")
    out: dict[str, set[Triple]] = {}
    for part in text.split("\n---\n"):
        if "\nrules:" not in part:
            continue  # a binding
        plain = "\n".join(line for line in part.splitlines() if "{{" not in line
                          or line.strip().startswith("name: {{ $name }}"))
        doc = yaml.safe_load(plain.replace("{{ $name }}", "t"))
        if isinstance(doc, dict) and doc.get("rules"):
            out[doc["metadata"]["name"].removeprefix("t")] = expand(doc["rules"])
    return out


def test_chart_rbac_template_matches_the_table() -> None:
    """Always runs (no helm needed); the rendered chart is checked below when helm is built."""
    rules = _chart_template_rules()
    assert rules == {"-operator": WORKLOAD, "-operator-discovery": DISCOVERY | NAMESPACED_MODE,
                     "-operator-leader": LEADER}


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


def _grants(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[Triple]]:
    """(binding kind, namespace or '*') -> the triples granted there, through bindings."""
    roles = {(d["kind"], d["metadata"]["name"]): expand(d.get("rules", []))
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    out: dict[tuple[str, str], set[Triple]] = {}
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        where = b["metadata"].get("namespace", "*") if b["kind"] == "RoleBinding" else "*"
        ref = b["roleRef"]
        out.setdefault((b["kind"], where), set()).update(roles[(ref["kind"], ref["name"])])
    return out


def test_chart_rbac_matches_deploy_rbac(helm: Path, kube_version: str) -> None:
    docs = render(helm, kube_version)
    assert _grants(docs) == {("ClusterRoleBinding", "*"): WORKLOAD | DISCOVERY,
                             ("RoleBinding", "default"): LEADER}
    assert _grants(docs) == _grants([d for d in rbac_docs()
                                     if d["kind"] != "RoleBinding"]) | {
        ("RoleBinding", "default"): LEADER}


def test_chart_rbac_with_watch_namespaces_binds_per_namespace(helm: Path,
                                                              kube_version: str) -> None:
    """Watching named namespaces, nothing about Secrets or workloads is granted elsewhere
    (kube-system included): the rules are bound in those namespaces only."""
    docs = render(helm, kube_version, "watchNamespaces={a,b}")
    assert _grants(docs) == {("ClusterRoleBinding", "*"): DISCOVERY | NAMESPACED_MODE,
                             ("RoleBinding", "a"): WORKLOAD, ("RoleBinding", "b"): WORKLOAD,
                             ("RoleBinding", "default"): LEADER}


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


# --------------------------------------------------------------------------- grants vs code

OPERATOR_CODE = REPO / "operator" / "ringkeeper"
# Where the operator process calls the API (the agent, the sync sidecar and the CLI run
# under other identities, with their own Roles).
OPERATOR_FILES = sorted((OPERATOR_CODE / "controller").glob("*.py"))


def _applied_kinds() -> set[tuple[str, str]]:
    """(group, resource) of every object reconcile server-side applies."""
    from ringkeeper.core import manifests
    from ringkeeper.engines import profile_for

    campus = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
              "metadata": {"name": "c", "namespace": "n", "uid": "u"},
              "spec": {"engine": "postgresql", "version": "17", "instances": 3}}
    plural = {"Service": "services", "ServiceAccount": "serviceaccounts",
              "StatefulSet": "statefulsets", "PodDisruptionBudget": "poddisruptionbudgets",
              "Role": "roles", "RoleBinding": "rolebindings", "Secret": "secrets"}
    objs = manifests.desired(campus, profile_for("postgresql", "17"))
    return {(o["apiVersion"].rpartition("/")[0], plural[o["kind"]]) for o in objs}


def _onward_grants() -> set[Triple]:
    """What the per-campus Roles grant the agents: the operator must hold it to create
    them (RBAC refuses to grant what the granter lacks)."""
    from ringkeeper.core import manifests
    from ringkeeper.engines import profile_for

    campus = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
              "metadata": {"name": "c", "namespace": "n", "uid": "u"},
              "spec": {"engine": "postgresql", "version": "17", "instances": 3}}
    from ringkeeper.core.satellite import campus_view

    satellite = campus_view({"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Satellite",
                             "metadata": {"name": "s", "namespace": "n", "uid": "v"},
                             "spec": {"parentRef": {"name": "c"}, "version": "17"}})
    roles = [o for unit in (campus, satellite)
             for o in manifests.desired(unit, profile_for("postgresql", "17"))
             if o["kind"] == "Role"]
    return set().union(*(expand(r["rules"]) for r in roles))


def _needed_by_code() -> dict[Triple, list[str]]:
    """Each (group, resource, verb) the operator's code calls for, with the call sites.

    The table maps API calls to the grants they need; a call it does not know fails the
    test below, so a new kind of call cannot slip past the RBAC review."""
    from ringkeeper.api.v1alpha1 import RESOURCES

    applied = _applied_kinds()
    text = {p.name: p.read_text(encoding="utf-8") for p in OPERATOR_FILES}
    needs: dict[Triple, list[str]] = {}

    def need(triple: Triple, where: str) -> None:
        needs.setdefault(triple, []).append(where)

    calls: list[tuple[str, list[Triple]]] = [
        (r"resources\.read_campus\(", [("ringkeeper.io", "campuses", "get")]),
        (r"resources\.patch_campus\(", [("ringkeeper.io", "campuses", "patch")]),
        (r"resources\.patch_campus_status\(", [("ringkeeper.io", "campuses/status", "patch")]),
        (r"resources\.label_pod\(|patch_namespaced_pod\(", [("", "pods", "patch")]),
        (r"list_namespaced_pod\(", [("", "pods", "list")]),
        (r"delete_namespaced_pod\(", [("", "pods", "delete")]),
        (r"read_namespaced_service\(", [("", "services", "get")]),
        (r"create_namespaced_network_policy\(", [("networking.k8s.io", "networkpolicies",
                                                  "create")]),
        (r"list_namespaced_network_policy\(", [("networking.k8s.io", "networkpolicies",
                                                "list")]),
        (r"delete_namespaced_network_policy\(", [("networking.k8s.io", "networkpolicies",
                                                  "delete")]),
        (r"resources\.secret_value\(|secretrefs\.secret_(metadata|key)\(|"
         r"read_namespaced_secret\(", [("", "secrets", "get")]),
        (r"resources\.create_if_missing\(", [("", "secrets", "create")]),
        (r"list_namespaced_secret\(", [("", "secrets", "list")]),
        (r"resources\.delete\(", [("", "secrets", "delete")]),
        (r"resources\.(apply|apply_owned)\(",
         [(g, r, v) for g, r in applied | {("", "secrets")} for v in ("create", "patch")]),
        (r"resources\.(get|exists|ownership|apply_owned)\(",
         [(g, r, "get") for g, r in applied | {("", "secrets")}]),
        (r"read_namespaced_lease\(", [("coordination.k8s.io", "leases", "get")]),
        (r"create_namespaced_lease\(", [("coordination.k8s.io", "leases", "create")]),
        (r"replace_namespaced_lease\(", [("coordination.k8s.io", "leases", "update")]),
        (r"kopf\.(info|warn|event|exception)\(", [("", "events", "create")]),
        (r"kopf\.operator\(", [("apiextensions.k8s.io", "customresourcedefinitions", v)
                               for v in ("list", "watch")]),
        (r"kopf\.operator\([^)]*namespaces=", [("", "namespaces", v) for v in ("list", "watch")]),
    ]
    for name, src in text.items():
        for pattern, grants in calls:
            for m in re.finditer(pattern, src, re.S):
                for g in grants:
                    need(g, f"{name}:{src.count(chr(10), 0, m.start()) + 1}")
        for m in re.finditer(r'resources\.(read_custom|patch_custom_status)\(\s*[\w.]+,\s*'
                             r'[\w.]+,\s*"(\w+)"', src):
            res = m[2] if m[1] == "read_custom" else f"{m[2]}/status"
            need(("ringkeeper.io", res, "get" if m[1] == "read_custom" else "patch"), name)
        # kopf handlers: kopf lists and watches the resource, patches its annotations,
        # and writes status through the status subresource.
        plurals = set(re.findall(r'kopf\.(?:on\.\w+|daemon|timer)\(\s*"ringkeeper\.io",\s*'
                                 r'"v1alpha1",\s*"(\w+)"', src))
        if "for resource in RESOURCES" in src and "decorator(GROUP, VERSION, plural" in src:
            plurals |= {r.info.plural for r in RESOURCES}
        for plural in plurals:
            for v in ("list", "watch", "patch"):
                need(("ringkeeper.io", plural, v), f"{name} (kopf handler)")
            need(("ringkeeper.io", f"{plural}/status", "patch"), f"{name} (kopf handler)")
    for triple in _onward_grants():
        need(triple, "core/manifests.py instance Role (granted onward)")
    return needs


def test_every_grant_is_used_by_the_code() -> None:
    needs = _needed_by_code()
    granted = EXPECTED_TRIPLES | NAMESPACED_MODE
    unused = sorted(granted - set(needs))
    assert unused == [], f"granted but no code calls for it: {unused}"


def test_every_call_of_the_code_is_granted() -> None:
    needs = _needed_by_code()
    granted = EXPECTED_TRIPLES | NAMESPACED_MODE
    missing = {t: where for t, where in needs.items() if t not in granted}
    assert missing == {}, ("the code calls for permissions deploy/rbac.yaml and the chart "
                           f"do not grant (add a rule with a comment naming the caller): {missing}")


def test_the_grep_sees_what_it_claims() -> None:
    """The scan finds the calls this table is about (a scan that found nothing would
    let every grant look unused and every call look granted)."""
    needs = _needed_by_code()
    assert ("", "secrets", "get") in needs and ("", "pods", "list") in needs
    assert ("ringkeeper.io", "drills", "watch") in needs  # through handlers.py's loop
    assert ("coordination.k8s.io", "leases", "update") in needs
    assert ("apps", "statefulsets", "patch") in needs
