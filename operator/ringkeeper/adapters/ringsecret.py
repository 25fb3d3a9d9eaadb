"""The one reader of a ring's config Secret (`ring.json`), for every process that needs it.

The operator writes each member's ring config (contracts.ringconfig, with DSNs, so a
Secret) and both the sync sidecar and `ringkeeper verify` read it. One reader keeps
them agreeing on the key, the encoding and the parse; each caller keeps its own answer
to a failure (the sidecar keeps its last good config, verify stops with a message).
"""

from __future__ import annotations

import asyncio
import base64
import json

from kubernetes_asyncio import client

from ..contracts.ringconfig import RingConfig

RING_CONFIG_KEY = "ring.json"


async def read_ring_config(api: client.ApiClient, namespace: str, name: str,
                           timeout: float) -> RingConfig:
    """The RingConfig in Secret `namespace/name`. Raises the API's error, TimeoutError,
    KeyError (no ring.json) or ValueError (not a usable config)."""
    secret = await asyncio.wait_for(
        client.CoreV1Api(api).read_namespaced_secret(name, namespace), timeout)
    raw = base64.b64decode((secret.data or {})[RING_CONFIG_KEY]).decode()
    return RingConfig.from_dict(json.loads(raw))
