"""Shared steps for Campus tests on the local cluster: install, write, kill, check."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import yaml

from e2e.conftest import Cluster, wait_for

PG_IMAGE = "ghcr.io/ringkeeper/postgres:{major}"


def campus_yaml(name: str, major: str, instances: int = 3, **spec: Any) -> str:
    body = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
            "metadata": {"name": name},
            "spec": {"engine": "postgresql", "version": major, "instances": instances,
                     "failover": {"detectionDelaySeconds": 3, "selfFenceAfterSeconds": 2,
                                  "healthCheckPeriodSeconds": 1},
                     **spec}}
    return yaml.safe_dump(body)


def install_operator(cluster: Cluster, namespace: str) -> str:
    release = f"op-{namespace}"
    cluster.helm("install", release, str(cluster_root() / "charts/ringkeeper"), "-n", namespace,
                 "--set", f"watchNamespaces={{{namespace}}}", "--wait", "--timeout", "120s")
    return release


def cluster_root() -> Any:
    from conftest import REPO

    return REPO


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get("-n", ns, "campus", name).get("status") or {})


def wait_ready(cluster: Cluster, ns: str, name: str, timeout: float = 120,
               settle: bool = True) -> dict[str, Any]:
    """Ready, and by default settled: every instance serving and the synchronous snapshot
    recorded, so that a kill right after has a provably complete failover candidate."""
    from ringkeeper_devcluster.workload import settled

    def ready() -> dict[str, Any] | None:
        st = status(cluster, ns, name)
        ok = st.get("phase") == "Ready" and st.get("currentPrimary")
        return st if ok and (not settle or settled(st)) else None

    result: dict[str, Any] = wait_for(f"campus {name} Ready", ready, timeout=timeout)
    return result


def endpoints(cluster: Cluster, ns: str, service: str) -> list[str]:
    slices = cluster.get("-n", ns, "endpointslices", "-l",
                         f"kubernetes.io/service-name={service}")["items"]
    return sorted(addr for s in slices for ep in (s.get("endpoints") or [])
                  if (ep.get("conditions") or {}).get("ready") for addr in ep["addresses"])


def secret(cluster: Cluster, ns: str, name: str, key: str) -> str:
    data = cluster.get("-n", ns, "secret", name)["data"]
    return base64.b64decode(data[key]).decode()


def pod_ip(cluster: Cluster, ns: str, pod: str) -> str:
    return str(cluster.get("-n", ns, "pod", pod)["status"]["podIP"])


@dataclass
class Writer:
    """Inserts one row per transaction through the -rw endpoint, recording each commit the
    server acknowledged; reconnects through the EndpointSlice after a failover."""

    cluster: Cluster
    ns: str
    campus: str
    acked: list[int] = field(default_factory=list)
    errors: int = 0
    next_id: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    first_ok_after: dict[float, float] = field(default_factory=dict)

    async def _conn(self) -> asyncpg.Connection:
        rw = await asyncio.to_thread(endpoints, self.cluster, self.ns, f"{self.campus}-rw")
        if len(rw) != 1:
            raise ConnectionError(f"-rw lists {rw}")
        password = await asyncio.to_thread(secret, self.cluster, self.ns,
                                           f"{self.campus}-app", "password")
        return await asyncpg.connect(host=rw[0], port=5432, user="app", password=password,
                                     database="app", timeout=2)

    async def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = await self._conn()
                    await conn.execute("CREATE TABLE IF NOT EXISTS acked "
                                       "(id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
                i = self.next_id
                self.next_id += 1
                await asyncio.wait_for(conn.execute("INSERT INTO acked (id) VALUES ($1)", i), 5)
                self.acked.append(i)
                for t0 in [t for t, v in self.first_ok_after.items() if v < 0]:
                    self.first_ok_after[t0] = time.monotonic() - t0
            except Exception:  # any failure is a refused write; reconnect through -rw
                self.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                conn = None
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.01)
        if conn is not None:
            await conn.close()

    def mark_kill(self) -> float:
        t0 = time.monotonic()
        self.first_ok_after[t0] = -1.0
        return t0


async def committed_ids(cluster: Cluster, ns: str, campus: str, host: str) -> set[int]:
    password = await asyncio.to_thread(secret, cluster, ns, f"{campus}-app", "password")
    conn = await asyncpg.connect(host=host, port=5432, user="app", password=password,
                                 database="app", timeout=5)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM acked")}
    finally:
        await conn.close()
