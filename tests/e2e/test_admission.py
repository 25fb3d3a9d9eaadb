"""The generated CRDs behave on a real API server as the foundation promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO, expected_error, invalid_example_files, load_docs, valid_example_files
from e2e.conftest import Cluster


def _without_namespace(doc: dict) -> str:  # type: ignore[type-arg]
    doc = dict(doc)
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "namespace"}
    return yaml.safe_dump(doc, allow_unicode=True)


@pytest.mark.parametrize("path", valid_example_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_examples_accepted_server_side(cluster: Cluster, namespace: str, path: Path) -> None:
    for doc in load_docs(path):
        res = cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                              input=_without_namespace(doc))
        assert "created (server dry run)" in res.stdout


@pytest.mark.parametrize("path", invalid_example_files(), ids=lambda p: p.name)
def test_invalid_examples_rejected_with_message(cluster: Cluster, namespace: str,
                                                path: Path) -> None:
    res = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert res.returncode != 0, f"{path.name} was accepted by the API server"
    assert expected_error(path) in res.stderr, res.stderr


def test_engine_is_immutable(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/single-campus"))
    res = cluster.kubectl("-n", namespace, "patch", "campus", "zhaohui", "--type=merge",
                          "-p", '{"spec":{"engine":"kingbase","version":"V9R1"}}', check=False)
    assert res.returncode != 0
    assert "engine is immutable" in res.stderr
    # Other fields stay editable.
    cluster.kubectl("-n", namespace, "patch", "campus", "zhaohui", "--type=merge",
                    "-p", '{"spec":{"instances":5}}')


def test_defaults_applied_and_printer_columns(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/single-campus"))
    obj = cluster.get("-n", namespace, "campus", "zhaohui")
    assert obj["spec"]["failover"]["detectionDelaySeconds"] == 5
    assert obj["spec"]["tls"]["enabled"] is True
    header = cluster.kubectl("-n", namespace, "get", "cmp").stdout.splitlines()[0].split()
    assert header == ["NAME", "ENGINE", "VERSION", "INSTANCES", "READY", "PRIMARY", "PHASE",
                      "AGE"]
    ring = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": "r"},
            "spec": {"members": [{"name": n, "campusRef": {"name": n}} for n in ("a", "b")]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ring))
    header = cluster.kubectl("-n", namespace, "get", "rings").stdout.splitlines()[0].split()
    assert header == ["NAME", "MEMBERS", "HEALTHY", "MAXLAG", "CONFLICTS", "VERIFIED", "AGE"]


def test_status_is_a_subresource(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/single-campus"))
    # A spec write cannot smuggle status in; only the status subresource sets it.
    cluster.kubectl("-n", namespace, "patch", "campus", "zhaohui", "--type=merge",
                    "-p", '{"status":{"phase":"Ready"}}')
    status = cluster.get("-n", namespace, "campus", "zhaohui").get("status") or {}
    assert status.get("phase") != "Ready"
    cluster.kubectl("-n", namespace, "patch", "campus", "zhaohui", "--subresource=status",
                    "--type=merge", "-p", '{"status":{"phase":"Ready","readyInstances":3}}')
    row = cluster.kubectl("-n", namespace, "get", "campus", "zhaohui").stdout.splitlines()[1]
    assert "Ready" in row.split()


def test_hospital_group_applies_in_its_namespace(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "lis", check=False)
    try:
        res = cluster.kubectl("apply", "-f", str(REPO / "examples/hospital-group"))
        for name in ("campus.ringkeeper.io/zhaohui", "replicationring.ringkeeper.io/lis-ring",
                     "satellite.ringkeeper.io/xindeng"):
            assert name in res.stdout
        names = {c["spec"]["displayName"] for c in cluster.get("-n", "lis", "campuses")["items"]}
        assert {"朝晖院区", "望江山院区", "越城院区", "富阳院区"} == names
    finally:
        cluster.kubectl("delete", "-f", str(REPO / "examples/hospital-group"), "--wait=false",
                        check=False)
