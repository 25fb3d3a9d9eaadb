"""Read a Secret a ring names: its metadata first, its value only once core allows it.

The metadata comes as PartialObjectMetadata (the API server leaves `data` out), so a
Secret the ring may not use is never even fetched whole.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


async def secret_metadata(api: client.ApiClient, namespace: str, name: str
                          ) -> dict[str, Any] | None:
    """The Secret's metadata (labels, ownerReferences), None if it does not exist."""
    resp = await api.call_api(
        f"/api/v1/namespaces/{namespace}/secrets/{name}", "GET",
        header_params={"Accept": _METADATA_ONLY}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True)
    try:
        text = await resp.read()
    finally:
        resp.release()
    if resp.status == 404:
        return None
    if resp.status >= 400:
        raise ApiException(status=resp.status, reason=str(resp.reason or ""))
    meta: dict[str, Any] = json.loads(text).get("metadata") or {}
    return meta


async def secret_key(api: client.ApiClient, namespace: str, name: str, key: str) -> str:
    """One key of the Secret, decoded (KeyError names the missing key, not the value)."""
    s = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    data = s.data or {}
    if key not in data:
        raise KeyError(f"Secret {name} has no key {key!r}")
    return base64.b64decode(data[key]).decode()
