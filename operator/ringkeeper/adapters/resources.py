"""Server-side apply and a few targeted writes, over kubernetes_asyncio's raw client.

Server-side apply with one field manager makes reconcile idempotent; Secrets
with credentials are only ever created. Every answer's HTTP status is checked
(`_call` raises KubeApiError on 4xx/5xx): the raw client, asked not to preload
the body, would otherwise hand a refusal back as if it were the object.
Before writing an object it makes, the operator reads it and asks
core.ownership whether it may (`apply_owned`): it never takes over an object
somebody else made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..api.v1alpha1 import GROUP, VERSION
from ..core.ownership import Owner, OwnershipDecision, decide, refusal_message

FIELD_MANAGER = "ringkeeper"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

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


class KubeApiError(ApiException):
    """A 4xx/5xx answer: the HTTP status, the API server's reason and its message.

    A subclass of ApiException, so code that already tells 404 or 409 apart by
    `exc.status` keeps working.
    """

    def __init__(self, status: int, http_reason: str, method: str, path: str,
                 body: bytes) -> None:
        super().__init__(status=status, reason=http_reason)
        self.body = body
        self.method, self.path = method, path
        self.api_reason = http_reason  # Status.reason, e.g. Invalid, AlreadyExists, Conflict
        self.message = body.decode("utf-8", "replace")[:1000]
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("kind") == "Status":
            self.api_reason = str(parsed.get("reason") or http_reason)
            self.message = str(parsed.get("message") or self.message)[:1000]

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.status} {self.api_reason}: {self.message}"


class ForeignObjectError(RuntimeError):
    """An object the operator would write exists and belongs to someone else."""

    def __init__(self, kind: str, name: str, decision: OwnershipDecision) -> None:
        super().__init__(refusal_message(kind, name, decision))
        self.kind, self.name, self.decision = kind, name, decision


def _path(obj: dict[str, Any], with_name: bool = True) -> str:
    prefix, plural = _PATHS[(obj["apiVersion"], obj["kind"])]
    ns = obj["metadata"]["namespace"]
    base = f"{prefix}/namespaces/{ns}/{plural}"
    return f"{base}/{obj['metadata']['name']}" if with_name else base


async def _call(api: client.ApiClient, method: str, path: str, body: Any,
                content_type: str, query: list[tuple[str, str]] | None = None,
                accept: str = "application/json") -> Any:
    """One request; the parsed JSON answer, or KubeApiError for any status >= 400."""
    resp = await api.call_api(
        path, method, query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body, auth_settings=["BearerToken"], _preload_content=False,
        _return_http_data_only=True)
    try:
        text = await resp.read()
    finally:
        resp.release()
    if resp.status >= 400:
        raise KubeApiError(int(resp.status), str(resp.reason or ""), method, path, text)
    return json.loads(text) if text else None


async def get(api: client.ApiClient, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object as the API server has it, or None when it does not exist."""
    try:
        found: dict[str, Any] = await _call(api, "GET", _path(dict(obj)), None,
                                            "application/json")
        return found
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise


async def get_metadata(api: client.ApiClient, obj: Mapping[str, Any]
                       ) -> dict[str, Any] | None:
    """Only the object's metadata (PartialObjectMetadata: a Secret's values never come)."""
    try:
        found: dict[str, Any] = await _call(api, "GET", _path(dict(obj)), None,
                                            "application/json", accept=METADATA_ONLY)
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise
    meta: dict[str, Any] = found.get("metadata") or {}
    return meta


async def ownership(api: client.ApiClient, obj: Mapping[str, Any], owner: Owner
                    ) -> tuple[OwnershipDecision, dict[str, Any] | None]:
    """Read `obj`'s metadata and decide whether `owner` may write it (core.ownership)."""
    meta = await get_metadata(api, obj)
    return decide(meta, owner), meta


async def apply_owned(api: client.ApiClient, obj: dict[str, Any], owner: Owner
                      ) -> OwnershipDecision:
    """Server-side apply, unless the object exists and is not ours (ForeignObjectError)."""
    decision, _ = await ownership(api, obj, owner)
    if not decision.writable:
        raise ForeignObjectError(obj["kind"], obj["metadata"]["name"], decision)
    await apply(api, obj)
    return decision


async def apply(api: client.ApiClient, obj: dict[str, Any]) -> Any:
    return await _call(api, "PATCH", _path(obj), obj, "application/apply-patch+yaml",
                       [("fieldManager", FIELD_MANAGER), ("force", "true")])


async def create_if_missing(api: client.ApiClient, obj: dict[str, Any]) -> bool:
    """Create; an existing object is left exactly as it is. Returns whether it was created."""
    try:
        await _call(api, "POST", _path(obj, with_name=False), obj, "application/json")
        return True
    except KubeApiError as exc:
        if exc.status == 409:
            return False
        raise


async def exists(api: client.ApiClient, obj: dict[str, Any]) -> bool:
    return await get(api, obj) is not None


async def delete(api: client.ApiClient, obj: Mapping[str, Any], uid: str | None = None
                 ) -> bool:
    """Delete; with `uid`, only that very object (a precondition). False if already gone."""
    body = {"preconditions": {"uid": uid}} if uid else None
    try:
        await _call(api, "DELETE", _path(dict(obj)), body, "application/json")
        return True
    except KubeApiError as exc:
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
    """A merge patch of status; with a resourceVersion it raises KubeApiError (409) if the
    Campus moved since that version was read."""
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
                              status: dict[str, Any], resource_version: str | None = None
                              ) -> dict[str, Any]:
    """A merge patch of a Ringkeeper object's status subresource. A merge patch replaces
    whole lists, and status.conditions has two writers (the accept handler and the
    object's loop): a writer of conditions passes the resourceVersion it read, and gets
    KubeApiError 409 instead of dropping the other writer's condition."""
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}/status"
    result: dict[str, Any] = await _call(api, "PATCH", path, body,
                                         "application/merge-patch+json")
    return result
