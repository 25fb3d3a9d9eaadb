"""`ringkeeper drill run|status|report` (also `kubectl ringkeeper drill ...`).

`run` creates a Drill that runs once, now: a new one, or a copy of a scheduled Drill
(`--from`, the way `kubectl create job --from=cronjob/...` runs a CronJob by hand), so a
scheduled Drill's history and schedule stay untouched. The operator does the run; with
`--wait` the command follows it and exits 0 only when it passed. `status` shows a Drill
and its last run's timeline; `report` prints the run's Markdown report, its JSON, or the
timeline as an SVG picture.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api.v1alpha1 import GROUP, VERSION
from . import drill_view
from .status_view import safe

POLL_SECONDS = 2.0
KINDS = {"campus": "Campus", "ring": "ReplicationRing", "satellite": "Satellite"}


async def _api(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from kubernetes_asyncio import client

    from ..adapters.kube import api_client, default_namespace

    api = await api_client(args.kubeconfig)
    return api, client.CustomObjectsApi(api), args.namespace or default_namespace(
        args.kubeconfig)


async def _get(co: Any, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = await co.get_namespaced_custom_object(GROUP, VERSION, ns, "drills",
                                                                name)
    return obj


async def _follow(co: Any, ns: str, name: str, timeout: float) -> int:
    """Print each change of where the Drill stands until it ends; 0 only if it passed."""
    deadline, said = time.monotonic() + timeout, ""
    while True:
        obj = await _get(co, ns, name)
        line = drill_view.progress(obj)
        if line != said:
            print(f"{time.strftime('%H:%M:%S')} {name}: {line}", flush=True)
            said = line
        ended = drill_view.outcome(obj)
        if ended is not None:
            verdict, why = ended
            print(f"drill {name}: {verdict}: {safe(why)}")
            return 0 if verdict == "Passed" else 1
        if time.monotonic() > deadline:
            print(f"drill {name}: still not finished after {timeout:.0f} s "
                  f"(`ringkeeper drill status {name}` shows where it stands)", file=sys.stderr)
            return 3
        await asyncio.sleep(POLL_SECONDS)


async def _run(args: argparse.Namespace) -> int:
    api, co, ns = await _api(args)
    async with api:
        template = await _get(co, ns, args.from_drill) if args.from_drill else None
        kind, target = next(((k, getattr(args, o)) for o, k in KINDS.items()
                             if getattr(args, o)), ("Campus", None))
        name = args.name or (f"{args.from_drill}-manual-{int(time.time())}"[:63]
                             if args.from_drill else None)
        if name is None:
            print("ringkeeper drill run: give a NAME (or --from DRILL)", file=sys.stderr)
            return 2
        try:
            manifest = drill_view.run_manifest(
                name, kind=kind, target=target,
                scenario=args.scenario or (None if template else "primaryKill"),
                max_rto=args.max_rto, writers=args.writers, rate=args.rate,
                duration=args.duration, template=template, strike=args.strike)
        except ValueError as exc:
            print(f"ringkeeper drill run: {safe(exc)}", file=sys.stderr)
            return 2
        await co.create_namespaced_custom_object(GROUP, VERSION, ns, "drills", manifest)
        spec = manifest["spec"]
        print(f"drill {name} created: {spec['scenario']} on {spec['target']['kind']}/"
              f"{spec['target']['name']} in namespace {ns}")
        if not args.wait:
            return 0
        return await _follow(co, ns, name, args.timeout)


async def _status(args: argparse.Namespace) -> int:
    api, co, ns = await _api(args)
    async with api:
        if args.name:
            print(drill_view.summary(await _get(co, ns, args.name)))
            return 0
        items = (await co.list_namespaced_custom_object(GROUP, VERSION, ns, "drills"))["items"]
    from .status_view import drills

    print(drills(items) if items else f"no Drills in namespace {ns}")
    return 0


async def _report(args: argparse.Namespace) -> int:
    api, co, ns = await _api(args)
    async with api:
        obj = await _get(co, ns, args.name)
    last = (obj.get("status") or {}).get("lastRun") or {}
    if not last:
        print(f"drill {args.name} has not run yet", file=sys.stderr)
        return 1
    if args.format == "json":
        text = json.dumps(last, indent=2, sort_keys=True) + "\n"
    elif args.format == "svg":
        text = drill_view.timeline_svg(obj)
    else:
        text = str(last.get("report") or drill_view.summary(obj)) + "\n"
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _sync(fn: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        code: int = asyncio.run(fn(args))
        return code

    return run


def add_parser(sub: Any, add_kube_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "drill", help="run a failure drill now, and show drills and their reports",
        description="Run, follow and read failure drills (docs/drills.md). The operator runs "
        "them; these commands create Drills and read their status.")
    dsub = p.add_subparsers(dest="drill_command", metavar="ACTION", required=True)

    r = dsub.add_parser(
        "run", help="create a Drill that runs once, now (--wait follows it)",
        description="Create a Drill that runs once now: a new one against --campus or "
        "--ring, or a copy of DRILL's spec without its schedule (--from). Exit codes with "
        "--wait: 0 passed, 1 failed or refused, 3 not finished in --timeout.")
    add_kube_args(r)
    r.add_argument("name", nargs="?", help="the new Drill's name (default with --from: "
                   "<DRILL>-manual-<unix time>)")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--campus", help="target Campus")
    target.add_argument("--ring", help="target ReplicationRing")
    target.add_argument("--satellite", help="target Satellite (networkPartition: cut from "
                        "its parent Campus)")
    r.add_argument("--from", dest="from_drill", metavar="DRILL",
                   help="copy this Drill's spec (its schedule is dropped)")
    r.add_argument("--scenario", choices=("primaryKill", "networkPartition", "campusLoss",
                                          "syncCrash"),
                   help="default primaryKill (or the --from Drill's)")
    r.add_argument("--strike", metavar="CAMPUS",
                   help="campusLoss, syncCrash: the ring's Campus member the fault strikes "
                   "(target.campus; default the ring's first)")
    r.add_argument("--max-rto", type=int, help="expectations.maxRtoSeconds")
    r.add_argument("--writers", type=int, help="workload.writers")
    r.add_argument("--rate", type=int, help="workload.ratePerSecond")
    r.add_argument("--duration", type=int, help="workload.durationSeconds")
    r.add_argument("--wait", action="store_true", help="follow the run until it ends")
    r.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds --wait follows the run (default 1800)")
    r.set_defaults(func=_sync(_run))

    s = dsub.add_parser("status", help="one Drill with its last run's timeline, or all")
    add_kube_args(s)
    s.add_argument("name", nargs="?")
    s.set_defaults(func=_sync(_status))

    o = dsub.add_parser("report", help="the last run's report: Markdown, JSON or SVG timeline")
    add_kube_args(o)
    o.add_argument("name")
    o.add_argument("--format", choices=("markdown", "json", "svg"), default="markdown")
    o.add_argument("-o", "--output", help="write to this file instead of standard output")
    o.set_defaults(func=_sync(_report))
