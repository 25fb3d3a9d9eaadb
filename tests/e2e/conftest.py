"""Fixtures for tests against the real local control plane (`ringkeeper-dev`).

The session starts its own cluster in a private state folder on its own ports,
unless RINGKEEPER_TEST_STATE names a running one to reuse. Without the built
binaries or root the tests skip, unless RINGKEEPER_REQUIRE_CLUSTER=1 (CI sets it)
turns that into a failure, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ringkeeper_devcluster import control_plane as cp
from waiting import wait_until as wait_for

TEST_PORTS = {
    "RINGKEEPER_DEV_APISERVER_PORT": "26443",
    "RINGKEEPER_DEV_ETCD_PORT": "22379",
    "RINGKEEPER_DEV_ETCD_PEER_PORT": "22380",
    "RINGKEEPER_DEV_KCM_PORT": "20257",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@dataclass
class Cluster:
    state: Path
    kubeconfig: Path
    bin: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "RINGKEEPER_DEV_STATE": str(self.state)}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.bin / "kubectl"), *args], capture_output=True, text=True,
                             env=self.env(), input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
        return res

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.bin / "helm"), *args], capture_output=True, text=True,
                             env=self.env(), timeout=180)
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
        return res

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def dev(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ringkeeper-dev --state-dir <this cluster's state> ARGS` (fault hooks, logs)."""
        res = subprocess.run(["ringkeeper-dev", "--state-dir", str(self.state), *args],
                             capture_output=True, text=True, env=self.env(), timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"ringkeeper-dev {' '.join(args)} failed:\n"
                                 f"{res.stdout}{res.stderr}")
        return res

    def ringkeeper(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["ringkeeper", *args], capture_output=True, text=True,
                             env=self.env(), timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"ringkeeper {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
        return res


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the dev cluster's process runtime needs root"
    try:
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm"):
            cp.binary(name)
    except cp.DevClusterError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = _unavailable()
    if reason:
        if os.environ.get("RINGKEEPER_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"cluster tests required but unavailable: {reason}")
        pytest.skip(reason)
    reuse = os.environ.get("RINGKEEPER_TEST_STATE")
    state = Path(reuse) if reuse else Path(f"/tmp/ringkeeper-e2e-{os.getpid()}")
    saved = {k: os.environ.get(k) for k in TEST_PORTS}
    if not reuse:
        os.environ.update(TEST_PORTS)
    layout, started = cp.up(state, timeout=90)
    c = Cluster(state, layout.kubeconfig, cp.binaries_dir())
    wait_for("the node to be Ready", lambda: any(
        cond["type"] == "Ready" and cond["status"] == "True"
        for n in c.get("nodes")["items"] for cond in n["status"].get("conditions", [])))
    c.kubectl("apply", "--server-side", "-f", str(Path(__file__).parents[2] / "crds"))
    c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    try:
        yield c
    finally:
        if started and not reuse:
            cp.down(state)
            cp.wipe(state)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def kube_api(cluster: Cluster) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient configured from the test cluster's kubeconfig."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig),
                                  client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for("the default ServiceAccount", lambda: cluster.kubectl(
        "-n", name, "get", "serviceaccount", "default", check=False).returncode == 0)
    try:
        yield name
    finally:
        # Campuses first, while their operator still runs to release its finalizer.
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.kubectl("-n", name, "delete", "campuses", "--all", "--wait=true",
                            "--timeout=30s", check=False, timeout=45)
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
