"""Start the operator: kopf with Ringkeeper's settings, health and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from . import campus, handlers


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
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.health_host)
    namespaces = args.namespaces or []
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://{args.health_host}:{args.health_port}/healthz",
            standalone=True,
        )
    )
    return 0
