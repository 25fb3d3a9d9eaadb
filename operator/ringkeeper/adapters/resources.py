"""Server-side apply and a few targeted writes, over kubernetes_asyncio's raw client.

Server-side apply with one field manager makes reconcile idempotent and lets
Kubernetes tell us about conflicting owners; Secrets are only ever created.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..api.v1alpha1 import GROUP, VERSION

FIELD_MANAGER = "ringkeeper"

# (apiVersion, kind) -> (path prefix, plural)
_PATHS = {
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}


def _path(obj: dict[str, Any], with_name: bool = True) -> str:
    prefix, plural = _PATHS[(obj["apiVersion"], obj["kind"])]
    ns = obj["metadata"]["namespace"]
    base = f"{prefix}/namespaces/{ns}/{plural}"
    return f"{base}/{obj['metadata']['name']}" if with_name else base


async def _call(api: client.ApiClient, method: str, path: str, body: Any,
                content_type: str, query: list[tuple[str, str]] | None = None) -> Any:
    resp = await api.call_api(
        path, method, query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body, auth_settings=["BearerToken"], _preload_content=False,
        _return_http_data_only=True)
    text = await resp.read()
    return json.loads(text) if text else None


async def apply(api: client.ApiClient, obj: dict[str, Any]) -> Any:
    return await _call(api, "PATCH", _path(obj), obj, "application/apply-patch+yaml",
                       [("fieldManager", FIELD_MANAGER), ("force", "true")])


async def create_if_missing(api: client.ApiClient, obj: dict[str, Any]) -> bool:
    """Create; an existing object is left exactly as it is. Returns whether it was created."""
    try:
        await _call(api, "POST", _path(obj, with_name=False), obj, "application/json")
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


async def exists(api: client.ApiClient, obj: dict[str, Any]) -> bool:
    try:
        await _call(api, "GET", _path(obj), None, "application/json")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


async def label_pod(api: client.ApiClient, namespace: str, name: str, key: str,
                    value: str | None) -> None:
    patch = {"metadata": {"labels": {key: value}}}
    await client.CoreV1Api(api).patch_namespaced_pod(name, namespace, patch)


async def read_campus(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "campuses", name)
    return dict(obj)


async def patch_campus_status(api: client.ApiClient, namespace: str, name: str,
                              status: dict[str, Any], resource_version: str | None
                              ) -> dict[str, Any]:
    """A merge patch of status; with a resourceVersion it fails (409) if the Campus moved."""
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/campuses/{name}/status"
    result: dict[str, Any] = await _call(api, "PATCH", path, body, "application/merge-patch+json")
    return result


async def patch_campus(api: client.ApiClient, namespace: str, name: str,
                       patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of the Campus itself (annotations), never of its spec's lists."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/campuses/{name}"
    result: dict[str, Any] = await _call(api, "PATCH", path, patch,
                                         "application/merge-patch+json")
    return result


async def secret_value(api: client.ApiClient, namespace: str, name: str, key: str) -> str:
    import base64

    s = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return base64.b64decode((s.data or {})[key]).decode()


async def read_custom(api: client.ApiClient, namespace: str, plural: str,
                      name: str) -> dict[str, Any]:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"
    result: dict[str, Any] = await _call(api, "GET", path, None, "application/json")
    return result


async def patch_custom_status(api: client.ApiClient, namespace: str, plural: str, name: str,
                              status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of a Ringkeeper object's status subresource."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}/status"
    result: dict[str, Any] = await _call(api, "PATCH", path, {"status": status},
                                         "application/merge-patch+json")
    return result
