"""`ringkeeper status`: one screen with every campus, ring, satellite and drill."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from . import status_view


async def _collect(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    from kubernetes_asyncio.client.exceptions import ApiException

    from ..adapters.kube import CustomObjects, api_client, default_namespace

    namespace = None if args.all_namespaces else (
        args.namespace or default_namespace(args.kubeconfig)
    )
    api = await api_client(args.kubeconfig)
    found: dict[str, list[dict[str, Any]]] = {}
    async with api:
        objects = CustomObjects(api)
        for plural in status_view.RENDERERS:
            try:
                items: list[Any] = await objects.list(plural, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    raise RuntimeError(
                        "the Ringkeeper CRDs are not installed in this cluster: run "
                        "`kubectl apply -f crds/` or install the Helm chart"
                    ) from exc
                raise
            if args.name:
                items = [i for i in items if i.get("metadata", {}).get("name") == args.name]
            found[plural] = items
    return found


def run(args: argparse.Namespace) -> int:
    try:
        found = asyncio.run(_collect(args))
    except (RuntimeError, OSError) as exc:
        print(f"ringkeeper status: {status_view.safe(exc)}", file=sys.stderr)
        return 1
    shown = False
    for plural, render in status_view.RENDERERS.items():
        if found.get(plural):
            if shown:
                print()
            print(render(found[plural]))
            shown = True
    if not shown:
        print("no Ringkeeper resources found"
              + (f" named {status_view.safe(args.name)}" if args.name else ""))
    return 0
