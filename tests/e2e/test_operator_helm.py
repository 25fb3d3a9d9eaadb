"""The Helm chart installs the operator as a real pod that reconciles with its own RBAC."""

from __future__ import annotations

import ipaddress
import json
import urllib.request

from conftest import REPO
from e2e.conftest import Cluster, wait_for

CHART = str(REPO / "charts/ringkeeper")


def test_helm_lint_and_template(cluster: Cluster) -> None:
    cluster.helm("lint", CHART)
    out = cluster.helm("template", "rk", CHART).stdout
    assert "kind: Deployment" in out and "kind: ClusterRole" in out


def test_helm_install_runs_operator_that_reconciles(cluster: Cluster, namespace: str) -> None:
    release = f"rk-{namespace}"
    # Watch only this namespace: a cluster-wide operator would also take campuses that
    # other tests' operators manage.
    cluster.helm("install", release, CHART, "-n", namespace, "--set",
                 f"watchNamespaces={{{namespace}}}", "--wait", "--timeout", "120s")
    try:
        pods = cluster.get("-n", namespace, "pods", "-l", "app.kubernetes.io/component=operator")
        (pod,) = pods["items"]
        assert pod["status"]["phase"] == "Running"
        assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
        # The operator runs as the unprivileged pod user, with the chart's ServiceAccount.
        sa = pod["spec"]["serviceAccountName"]
        assert sa.endswith("ringkeeper-operator") or "ringkeeper" in sa

        # It reconciles through the API server with the chart's least-privilege RBAC.
        cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/single-campus"))

        def accepted() -> bool:
            status = cluster.get("-n", namespace, "campus", "zhaohui").get("status") or {}
            return any(c["type"] == "Accepted" and c["status"] == "True"
                       for c in status.get("conditions", []))

        wait_for("the operator to accept the Campus", accepted, timeout=60)

        # Its metrics endpoint answers on the pod's own loopback address.
        url = f"http://{pod['status']['podIP']}:9090/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
        assert 'ringkeeper_reconciles_total{kind="Campus",result="accepted"}' in body
    finally:
        # Delete the campus while the operator still runs, so it releases its finalizer.
        cluster.kubectl("-n", namespace, "delete", "campus", "--all", "--wait=true",
                        "--timeout=60s", check=False, timeout=90)
        cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s")
    wait_for("operator pods to go", lambda: not cluster.get(
        "-n", namespace, "pods", "-l", "app.kubernetes.io/component=operator")["items"], timeout=90)
    deployments = json.loads(cluster.kubectl("-n", namespace, "get", "deploy", "-o",
                                             "json").stdout)
    assert deployments["items"] == []
