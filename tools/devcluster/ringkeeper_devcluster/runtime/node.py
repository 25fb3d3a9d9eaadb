"""Register the Node and keep it alive, as a kubelet's node status and lease loops do."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ringkeeper.base.timefmt import now_rfc3339

log = logging.getLogger("ringkeeper_devcluster.runtime")
LEASE_SECONDS = 40


def _now() -> str:
    return now_rfc3339()


def _micro_now() -> str:
    return now_rfc3339(micro=True)


def node_status() -> dict[str, object]:
    stamp = _now()
    cpus = str(os.cpu_count() or 2)
    conds = [
        ("Ready", "True", "KubeletReady", "ringkeeper process runtime is ready"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
        ("PIDPressure", "False", "KubeletHasSufficientPID", ""),
    ]
    return {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": stamp,
             "lastTransitionTime": stamp} for t, s, r, m in conds
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": "localhost"}],
        "capacity": {"cpu": cpus, "memory": "24Gi", "pods": "250"},
        "allocatable": {"cpu": cpus, "memory": "24Gi", "pods": "250"},
        "nodeInfo": {
            "architecture": "amd64", "operatingSystem": "linux", "osImage": "local processes",
            "kernelVersion": os.uname().release, "kubeletVersion": "ringkeeper-runtime",
            "kubeProxyVersion": "", "containerRuntimeVersion": "proc://ringkeeper",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    }


async def register(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    body: Any = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "ringkeeper.io/dev-cluster": "true"}}}
    try:
        await core.create_node(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    await core.patch_node_status(name, {"status": node_status()})


async def heartbeat(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    coord = client.CoordinationV1Api(api)
    tick = 0
    while True:
        try:
            node = await core.read_node(name)
            lease: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": "kube-node-lease",
                                  "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                       "name": name, "uid": node.metadata.uid}]},
                     "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                              "renewTime": _micro_now()}}
            try:
                await coord.patch_namespaced_lease(name, "kube-node-lease",
                                                   {"spec": lease["spec"]})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await coord.create_namespaced_lease("kube-node-lease", lease)
            if tick % 6 == 0:
                await core.patch_node_status(name, {"status": node_status()})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("node heartbeat failed: %s", exc)
        tick += 1
        await asyncio.sleep(10)
