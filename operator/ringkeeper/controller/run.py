"""Start the operator: kopf with Ringkeeper's settings, health and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import kopf
from prometheus_client import start_http_server

from . import campus, drill, handlers, ring, satellite


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping under our own annotation prefix, not zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.peering.standalone = True


GROUP_PREFIX = "ringkeeper.io"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers.register()
    campus.register()
    ring.register()
    drill.register()
    satellite.register()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.health_host)
    namespaces = args.namespaces or []
    asyncio.run(_lead_then_operate(args, namespaces))
    return 0


async def _lead_then_operate(args: argparse.Namespace, namespaces: list[str]) -> None:
    from ..adapters.kube import api_client
    from .leader import Leadership, identity

    lease_ns = os.environ.get("POD_NAMESPACE") or (namespaces[0] if namespaces else "default")
    async with await api_client() as api:
        leader = Leadership(api, lease_ns, args.lease_name, identity())
        await leader.acquire()

        def lost() -> None:
            # Stop acting at once: a second leader may already be deciding failovers.
            logging.getLogger("ringkeeper.leader").critical("leadership lost: exiting")
            os._exit(1)

        keeper = asyncio.create_task(leader.keep(lost))
        try:
            await kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=f"http://{args.health_host}:{args.health_port}/healthz",
                standalone=True,
            )
        finally:
            keeper.cancel()
            await leader.release()
