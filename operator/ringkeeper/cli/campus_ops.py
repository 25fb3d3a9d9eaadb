"""`ringkeeper promote|fence|unfence`: planned operations on a campus, through the API.

The CLI only records the request on the Campus (annotations the operator reads);
the operator carries it out with the same safety checks as an automatic failover.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..core.annotations import FENCED, SWITCHOVER, parse_fenced
from ..core.names import campus_instances
from .status_view import safe


async def _campus_api(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from kubernetes_asyncio import client

    from ..adapters.kube import api_client, default_namespace

    api = await api_client(args.kubeconfig)
    ns = args.namespace or default_namespace(args.kubeconfig)
    return api, client.CustomObjectsApi(api), ns


def _instances(campus: dict[str, Any]) -> list[str]:
    name = campus["metadata"]["name"]
    return campus_instances(name, campus["spec"])


async def _promote(args: argparse.Namespace) -> int:
    from ..adapters import resources

    api, co, ns = await _campus_api(args)
    async with api:
        campus = await co.get_namespaced_custom_object("ringkeeper.io", "v1alpha1", ns,
                                                       "campuses", args.campus)
        status = campus.get("status") or {}
        if args.instance not in _instances(campus):
            print(f"ringkeeper promote: {args.instance} is not an instance of {args.campus} "
                  f"(instances: {', '.join(_instances(campus))})", file=sys.stderr)
            return 1
        if status.get("currentPrimary") == args.instance:
            print(f"{args.instance} is already the primary of {args.campus}")
            return 0
        await resources.patch_campus(api, ns, args.campus,
                                     {"metadata": {"annotations": {SWITCHOVER: args.instance}}})
        print(f"switchover of {args.campus} to {args.instance} requested "
              f"(primary now {status.get('currentPrimary')})")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            campus = await co.get_namespaced_custom_object("ringkeeper.io", "v1alpha1", ns,
                                                           "campuses", args.campus)
            st = campus.get("status") or {}
            if st.get("currentPrimary") == args.instance and st.get("phase") in (
                    "Ready", "Degraded"):
                rec = st.get("lastFailover") or {}
                print(f"{args.instance} is the primary of {args.campus} "
                      f"(switchover took {rec.get('rtoSeconds', '?')} s)")
                return 0
            annotations = campus["metadata"].get("annotations") or {}
            if SWITCHOVER not in annotations and st.get("currentPrimary") != args.instance:
                print(f"ringkeeper promote: the operator refused the switchover; see "
                      f"`kubectl describe campus {args.campus}` for the reason",
                      file=sys.stderr)
                return 1
        print(f"ringkeeper promote: {args.instance} is not primary after {args.timeout:.0f}s",
              file=sys.stderr)
        return 1


async def _fence(args: argparse.Namespace, on: bool) -> int:
    from ..adapters import resources

    api, co, ns = await _campus_api(args)
    async with api:
        campus = await co.get_namespaced_custom_object("ringkeeper.io", "v1alpha1", ns,
                                                       "campuses", args.campus)
        if args.instance not in _instances(campus):
            print(f"ringkeeper: {args.instance} is not an instance of {args.campus}",
                  file=sys.stderr)
            return 1
        if on and (campus.get("status") or {}).get("currentPrimary") == args.instance:
            print(f"ringkeeper fence: {args.instance} is the primary; promote another instance "
                  f"first (ringkeeper promote {args.campus} <instance>)", file=sys.stderr)
            return 1
        annotations = campus["metadata"].get("annotations") or {}
        parsed = parse_fenced(annotations.get(FENCED), _instances(campus))
        fenced = set(parsed.value)
        if not parsed.ok:
            # Rewritten from the list the operator last accepted, not from the bad text.
            fenced = set((campus.get("status") or {}).get("fencedInstances") or [])
            print(f"ringkeeper: replacing a malformed annotation ({safe(parsed.error)}); "
                  f"fenced before: {', '.join(sorted(fenced)) or 'none'}", file=sys.stderr)
        fenced = fenced | {args.instance} if on else fenced - {args.instance}
        await resources.patch_campus(
            api, ns, args.campus,
            {"metadata": {"annotations": {FENCED: json.dumps(sorted(fenced))}}})
        print(f"{args.instance} {'fenced: its server stops' if on else 'unfenced'}")
        return 0


def add_parsers(sub: Any, add_kube_args: Any) -> None:
    p = sub.add_parser("promote", help="planned switchover: make an instance the primary",
                       description="Hand the primary role of a campus to another instance with "
                       "zero loss: the old primary stops cleanly, the target catches up, is "
                       "promoted, and the others follow it.")
    p.add_argument("campus")
    p.add_argument("instance", help="e.g. zhaohui-2")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the request is recorded")
    p.add_argument("--timeout", type=float, default=120.0)
    add_kube_args(p)
    p.set_defaults(func=lambda a: asyncio.run(_promote(a)))
    for name, on, what in (("fence", True, "stop a replica's server and keep it stopped"),
                           ("unfence", False, "let a fenced instance run again")):
        f = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        f.add_argument("campus")
        f.add_argument("instance")
        add_kube_args(f)
        f.set_defaults(func=lambda a, on=on: asyncio.run(_fence(a, on)))
