"""One active operator: a coordination.k8s.io Lease, taken before any handler runs.

kopf's peering only pauses handlers; a failover decided by two operators at
once must be impossible, so the operator acts only while it holds the Lease and
exits (the Deployment restarts it as a follower) the moment it cannot renew.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ringkeeper.base.timefmt import rfc3339

log = logging.getLogger("ringkeeper.leader")


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(dt: datetime) -> str:
    return rfc3339(dt, micro=True)


def expired(renew_time: datetime | None, duration: int, now: datetime) -> bool:
    return renew_time is None or renew_time + timedelta(seconds=duration) < now


class Leadership:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 duration: int = 15, renew_every: float = 4.0) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew_every = duration, renew_every

    def _body(self, rv: str | None, transitions: int, acquired: str | None) -> Any:
        now = _stamp(_now())
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                     "acquireTime": acquired or now, "renewTime": now,
                     "leaseTransitions": transitions}}
        if rv:
            body["metadata"]["resourceVersion"] = rv
        return body

    async def try_acquire(self) -> bool:
        try:
            lease = await self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                await self.api.create_namespaced_lease(self.namespace, self._body(None, 0, None))
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        if not mine and not expired(spec.renew_time, spec.lease_duration_seconds or
                                    self.duration, _now()):
            return False
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        acquired = _stamp(spec.acquire_time) if mine and spec.acquire_time else None
        try:
            await self.api.replace_namespaced_lease(
                self.name, self.namespace,
                self._body(lease.metadata.resource_version, transitions, acquired))
            return True
        except ApiException as exc:
            if exc.status == 409:  # someone else renewed or took it first
                return False
            raise

    async def acquire(self) -> None:
        waiting_logged = False
        while not await self.try_acquire():
            if not waiting_logged:
                log.info("another operator holds lease %s/%s: standing by", self.namespace,
                         self.name)
                waiting_logged = True
            await asyncio.sleep(self.renew_every)
        log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)

    async def release(self) -> None:
        """On a clean shutdown hand the Lease back, so a successor need not wait it out."""
        try:
            lease = await self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            body = self._body(lease.metadata.resource_version,
                              lease.spec.lease_transitions or 0, None)
            body["spec"]["renewTime"] = _stamp(datetime(1970, 1, 1, tzinfo=UTC))
            body["spec"]["holderIdentity"] = ""
            await self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            log.warning("could not release the lease: %s", exc.reason)

    async def keep(self, on_lost: Callable[[], None]) -> None:
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last_ok = asyncio.get_running_loop().time()
                    continue
                log.error("lease %s/%s taken by another operator", self.namespace, self.name)
                on_lost()
                return
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
            if asyncio.get_running_loop().time() - last_ok > self.duration - self.renew_every:
                log.error("could not renew the lease in time: stepping down")
                on_lost()
                return


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}"
