"""Where the agent reads its Campus: the Kubernetes API (local tests bring their own
source through agent.run.run; tests/integration/file_agent.py)."""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import GROUP, VERSION


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


class ApiSatelliteSource(ApiCampusSource):
    """A Satellite read from the API and handed to the agent as a one-instance Campus
    (core.satellite.campus_view: its one instance is always the primary), so the agent's
    whole loop runs unchanged in a satellite's pod."""

    async def fetch(self) -> dict[str, Any]:
        import asyncio

        from kubernetes_asyncio import client

        from ..core.satellite import campus_view

        api = client.CustomObjectsApi(await self._client())
        obj = await asyncio.wait_for(api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "satellites", self.campus), 2)
        return campus_view(dict(obj))


def api_source(kind: str, namespace: str, name: str) -> ApiCampusSource:
    """The source for the object the pod belongs to (RINGKEEPER_KIND, Campus if unset)."""
    if kind == "Satellite":
        return ApiSatelliteSource(namespace, name)
    if kind == "Campus":
        return ApiCampusSource(namespace, name)
    raise SystemExit(f"ringkeeper agent: RINGKEEPER_KIND must be Campus or Satellite, "
                     f"not {kind!r}")
