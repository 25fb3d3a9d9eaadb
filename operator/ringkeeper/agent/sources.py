"""Where the agent reads its Campus: the Kubernetes API, or a file (local tests)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ..api.v1alpha1 import GROUP, VERSION


class FileCampusSource:
    """A Campus kept in a JSON file, with pod addresses beside it: tests drive it."""

    def __init__(self, path: Path, me: str | None = None) -> None:
        self.path = path
        self.me = me

    async def fetch(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        if data.get("unreachable"):
            raise ConnectionError("simulated API partition")
        if self.me is not None and self.me in (data.get("apiCut") or []):
            # This agent alone is cut from the API server: its read hangs until the
            # client's 2 s timeout, as ApiCampusSource's does.
            await asyncio.sleep(2.0)
            raise TimeoutError("simulated API partition of this pod")
        # A slow API server (tests): what an agent does before its answer comes must
        # already be safe.
        latency = data.get("latencySeconds")
        if isinstance(latency, int | float) and latency > 0:
            await asyncio.sleep(min(float(latency), 10.0))
        return data

    async def pod_ip(self, name: str) -> str | None:
        data = json.loads(self.path.read_text())
        ip = (data.get("podIPs") or {}).get(name)
        return str(ip) if ip else None


class ApiCampusSource:
    def __init__(self, namespace: str, campus: str) -> None:
        self.namespace = namespace
        self.campus = campus
        self._api: Any = None

    async def _client(self) -> Any:
        if self._api is None:
            from ..adapters.kube import api_client

            self._api = await api_client()
        return self._api

    async def fetch(self) -> dict[str, Any]:
        import asyncio

        from kubernetes_asyncio import client

        api = client.CustomObjectsApi(await self._client())
        obj = await asyncio.wait_for(api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "campuses", self.campus), 2)
        return dict(obj)

    async def pod_ip(self, name: str) -> str | None:
        import asyncio

        from kubernetes_asyncio import client

        core = client.CoreV1Api(await self._client())
        pod = await asyncio.wait_for(core.read_namespaced_pod(name, self.namespace), 2)
        ip = pod.status.pod_ip if pod.status else None
        return str(ip) if ip else None
