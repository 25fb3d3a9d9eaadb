"""The satellite's sync figures, read from its parent's sync sidecar for its status.

The parent campus's sidecar runs the satellite's sync (sync/satellite.py) and reports it
in its `/status` (`satellites`, one entry each); the Satellite controller turns the entry
into status fields with core.satsync.sync_status. Kept apart from controller/satellite.py,
which deploys the satellite: this only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..core import manifests
from ..core.ringplan import primary_address

log = logging.getLogger("ringkeeper.satellite")


async def parent_report(api: client.ApiClient, satellite: Mapping[str, Any]
                        ) -> dict[str, Any] | None:
    """The parent sidecar's report entry for this satellite; None when the parent has no
    primary, its sidecar does not answer within 2 s, or it does not sync this satellite
    (yet). Never raises: a missing figure leaves the status fields as they were."""
    meta, spec = satellite["metadata"], satellite.get("spec") or {}
    parent = (spec.get("parentRef") or {}).get("name")
    if not parent:
        return None
    try:
        campus = await resources.read_campus(api, meta["namespace"], str(parent))
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        log.debug("satellite %s: parent %s unread: %s", meta["name"], parent, exc)
        return None
    host = primary_address(campus)
    if host is None:
        return None
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{host}:{manifests.SYNC_PORT}/status",
                timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status != 200:
                return None
            report = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.debug("satellite %s: parent sidecar unread: %s", meta["name"], exc)
        return None
    for entry in (report or {}).get("satellites") or []:
        if isinstance(entry, dict) and entry.get("name") == meta["name"]:
            return entry
    return None
