"""A writer that counts every acknowledged commit, and a primary-kill round built on it.

Used by `make demo` and `make bench-failover`: the writer goes through the
campus's -rw EndpointSlice (the dev cluster has no kube-proxy, and ClusterIPs
are never dialled), inserts one row per transaction, and remembers each id the
server acknowledged. After a failover every remembered id must be on the new
primary: that is the lost-commit count.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from kubernetes_asyncio import client

from ringkeeper.api.v1alpha1 import GROUP, VERSION

from . import faults


async def rw_address(api: client.ApiClient, ns: str, campus: str) -> list[str]:
    slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={campus}-rw")
    return sorted(addr for s in slices.items for ep in (s.endpoints or [])
                  if ep.conditions and ep.conditions.ready for addr in ep.addresses)


async def campus_status(api: client.ApiClient, ns: str, campus: str) -> dict[str, Any]:
    obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, "campuses", campus)
    return dict(obj.get("status") or {})


async def secret_value(api: client.ApiClient, ns: str, name: str, key: str) -> str:
    s = await client.CoreV1Api(api).read_namespaced_secret(name, ns)
    return base64.b64decode((s.data or {})[key]).decode()


def settled(st: dict[str, Any]) -> bool:
    """Every instance serving its role and the synchronous snapshot recorded: a failover
    now would have a provably complete candidate."""
    insts = st.get("instances") or []
    snap = st.get("syncSnapshot") or {}
    return (st.get("phase") == "Ready" and bool(insts)
            and all(i.get("ready") and i.get("role") in ("primary", "replica") for i in insts)
            and len(snap.get("confirming") or []) >= int(snap.get("number") or 1))


async def wait_ready(api: client.ApiClient, ns: str, campus: str, timeout: float = 180,
                     not_primary: str | None = None, settle: bool = False) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(client.exceptions.ApiException):
            st = await campus_status(api, ns, campus)
            if (st.get("phase") == "Ready" and st.get("currentPrimary")
                    and st.get("currentPrimary") != not_primary
                    and (not settle or settled(st))):
                return st
        await asyncio.sleep(0.3)
    raise TimeoutError(f"campus {ns}/{campus} not Ready after {timeout:.0f}s (last: "
                       f"{st.get('phase')}, primary {st.get('currentPrimary')})")


@dataclass
class Writer:
    api: client.ApiClient
    ns: str
    campus: str
    acked: list[int] = field(default_factory=list)
    failures: int = 0
    last_ok: float = 0.0
    last_ok_started: float = 0.0  # when the newest acknowledged write was sent
    stopping: bool = False
    rate: float = 200.0  # transactions per second, at most
    _next: int = 0

    async def run(self) -> None:
        password = await secret_value(self.api, self.ns, f"{self.campus}-app", "password")
        conn: asyncpg.Connection | None = None
        pause = 1.0 / self.rate
        while not self.stopping:
            try:
                if conn is None:
                    rw = await rw_address(self.api, self.ns, self.campus)
                    if len(rw) != 1:
                        raise ConnectionError(f"-rw lists {rw}")
                    conn = await asyncpg.connect(host=rw[0], port=5432, user="app",
                                                 password=password, database="app", timeout=2)
                    await conn.execute("CREATE TABLE IF NOT EXISTS ringkeeper_workload "
                                       "(id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
                i = self._next
                self._next += 1
                started = time.monotonic()
                await asyncio.wait_for(
                    conn.execute("INSERT INTO ringkeeper_workload (id) VALUES ($1)", i), 5)
                self.acked.append(i)  # the commit returned: acknowledged
                self.last_ok, self.last_ok_started = time.monotonic(), started
            except Exception:  # any failure is a refused write; reconnect through -rw
                self.failures += 1
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(pause)
        if conn is not None:
            await conn.close()

    async def first_ok_after(self, t0: float, timeout: float = 120) -> float:
        """Seconds from t0 to the first acknowledged write that was *sent* after t0 (a commit
        already in flight at the kill does not count as service restored)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last_ok_started > t0:
                return self.last_ok - t0
            await asyncio.sleep(0.02)
        raise TimeoutError("no write got through -rw after the kill")


async def committed(api: client.ApiClient, ns: str, campus: str, host: str) -> set[int]:
    password = await secret_value(api, ns, f"{campus}-app", "password")
    conn = await asyncpg.connect(host=host, port=5432, user="app", password=password,
                                 database="app", timeout=5)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM ringkeeper_workload")}
    finally:
        await conn.close()


@dataclass(frozen=True)
class Round:
    old: str
    new: str
    rto_s: float
    lost: int
    acked: int


async def kill_primary_round(api: client.ApiClient, state: Path, ns: str, campus: str,
                             writer: Writer) -> Round:
    """SIGKILL every process of the primary's container; measure kill -> first write."""
    before = await campus_status(api, ns, campus)
    old = str(before["currentPrimary"])
    faults.signal_container(state, ns, old, None, signal.SIGKILL)
    t0 = time.monotonic()  # every process of the primary's container is gone now
    rto = await writer.first_ok_after(t0)
    st = await wait_ready(api, ns, campus, not_primary=old)
    new = str(st["currentPrimary"])
    acked = list(writer.acked)
    rw = await rw_address(api, ns, campus)
    deadline = time.monotonic() + 60
    while len(rw) != 1:  # the EndpointSlice catches up with the new primary's readiness
        if time.monotonic() > deadline:
            raise TimeoutError(f"{campus}-rw never listed one primary (last: {rw})")
        await asyncio.sleep(0.2)
        rw = await rw_address(api, ns, campus)
    have = await committed(api, ns, campus, rw[0])
    lost = len(set(acked) - have)
    return Round(old, new, rto, lost, len(acked))
