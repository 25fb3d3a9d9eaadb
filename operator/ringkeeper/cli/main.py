"""The `ringkeeper` command and the `kubectl ringkeeper` plugin.

One parser serves both: a plugin user types the same subcommands after
`kubectl ringkeeper`. Each subcommand imports its module only when it runs, so
`--help` and `crds` stay fast and need no cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Ringkeeper runs multi-site, multi-active hospital databases on Kubernetes:
campuses (PostgreSQL or KingbaseES clusters with automatic failover) joined by a
replication ring in which every campus accepts writes, plus offline-capable
satellites and failure drills.
"""

EPILOG = """\
common tasks:
  ringkeeper crds                      regenerate crds/ and the chart's CRDs from the models
  ringkeeper validate examples/*.yaml  check manifests offline, with the API server's messages
  ringkeeper status                    show campuses, rings, satellites and drills
  ringkeeper drill run NAME --campus C --wait   rehearse a primary failure now, measured
"""


def _add_kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's, or default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


def _cmd_crds(args: argparse.Namespace) -> int:
    from ..api import crdgen

    if args.check:
        problems = []
        for directory in args.dirs:
            problems += crdgen.drift(Path(directory))
        for p in problems:
            print(f"ringkeeper crds: {p}", file=sys.stderr)
        if problems:
            print("ringkeeper crds: run `ringkeeper crds` (or `make crds`) and commit the result.",
                  file=sys.stderr)
            return 1
        print(f"ringkeeper crds: {', '.join(args.dirs)} match the models")
        return 0
    for directory in [args.output] if args.output else args.dirs:
        for path in crdgen.write(Path(directory)):
            print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import run

    return run(args.files)


def _cmd_operator(args: argparse.Namespace) -> int:
    from ..controller.run import run

    return run(args)


def _cmd_agent(args: argparse.Namespace) -> int:
    from ..agent.run import run

    return run(args)


def _cmd_sync(args: argparse.Namespace) -> int:
    from ..sync.run import run

    return run(args)


def _cmd_not_yet(name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(
            f"ringkeeper {name}: not available in this version of Ringkeeper yet; "
            "see docs/roadmap.md for when it arrives.",
            file=sys.stderr,
        )
        return 2

    return handler


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import run

    return run(args)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..verify.cli import run

    return run(args)


def build_parser(prog: str = "ringkeeper") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ringkeeper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "operator",
        help="run the operator (reconciles Campus, ReplicationRing, Satellite, Drill)",
        description="Run the Ringkeeper operator: watches Ringkeeper resources and reconciles "
        "them. Runs in the cluster as the ringkeeper Deployment, or locally against a kubeconfig.",
    )
    p.add_argument("--namespace", "-n", action="append", dest="namespaces",
                   help="watch only this namespace (repeatable); default: all namespaces")
    p.add_argument("--health-port", type=int, default=8080,
                   help="port of the /healthz liveness endpoint (default 8080)")
    p.add_argument("--metrics-port", type=int, default=9090,
                   help="port of the Prometheus /metrics endpoint (default 9090, 0 disables)")
    p.add_argument("--health-host", default="0.0.0.0",
                   help="address the health and metrics endpoints listen on (default 0.0.0.0)")
    p.add_argument("--lease-name", default="ringkeeper-operator",
                   help="Lease that elects the one active operator (in $POD_NAMESPACE)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_cmd_operator)

    p = sub.add_parser(
        "agent",
        help="run the instance agent inside a database pod",
        description="Run the instance agent: bootstraps, configures and supervises one "
        "database instance, and serves its authenticated status and control API. Configured "
        "by the environment the Campus StatefulSet sets (RINGKEEPER_CAMPUS, POD_NAME, POD_IP, "
        "RINGKEEPER_ENGINE, RINGKEEPER_VERSION, credentials and the agent token).",
    )
    from ..agent.run import add_arguments as add_agent_arguments

    add_agent_arguments(p)
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser(
        "sync",
        help="run the ring sync sidecar next to a database",
        description="Run the sync sidecar: captures this campus's changes and applies them at "
        "the next ring member with origin tracking and exactly-once progress.",
    )
    from ..sync.run import add_arguments as add_sync_arguments

    add_sync_arguments(p)
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser(
        "crds",
        help="generate the CustomResourceDefinitions from the models",
        description="Write the CRDs generated from the pydantic models to crds/ and "
        "charts/ringkeeper/crds/ (or to --output), or check them with --check.",
    )
    p.add_argument("--output", "-o", help="write only to this folder instead")
    p.add_argument("--check", action="store_true",
                   help="do not write: exit 1 if the folders differ from the models")
    p.add_argument("dirs", nargs="*", default=["crds", "charts/ringkeeper/crds"],
                   help="folders to write or check (default: crds charts/ringkeeper/crds)")
    p.set_defaults(func=_cmd_crds)

    p = sub.add_parser(
        "validate",
        help="validate manifests offline",
        description="Validate Ringkeeper manifests (YAML, several documents per file allowed) "
        "against the models, with the messages the API server would give. Exit 1 on problems.",
    )
    p.add_argument("files", nargs="+", help="YAML files, or - for standard input")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "status",
        help="show campuses, rings, satellites and drills",
        description="Show the state of Ringkeeper resources in a namespace: primaries, "
        "phases, ring links and lag, satellites and drills.",
    )
    _add_kube_args(p)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("name", nargs="?", help="show only resources with this name")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "verify",
        help="compare a ring's members row by row, and repair differences",
        description="Verify that every member of a replication ring holds the same rows: "
        "chunked checksums inside each database, bisection down to the differing keys, a "
        "readable table and a JSON report. --repair shows the plan and applies it when "
        "confirmed. Exit 0: members agree (or were repaired), 1: differences, 2: error.",
    )
    from ..verify.cli import add_arguments as add_verify_arguments

    add_verify_arguments(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "workload",
        help="write a hospital workload with a ledger, and check the ledger",
        description="`workload lis` writes a laboratory day at every given site (patients, "
        "orders, specimens, results, reviews, reports, cross-campus corrections) and keeps a "
        "ledger of every acknowledged commit; `workload check` proves every one of them is on "
        "the members. See docs/workload.md.",
    )
    from ..workload.cli import add_arguments as add_workload_arguments

    add_workload_arguments(p)

    from .drill import add_parser as add_drill

    add_drill(sub, _add_kube_args)

    from .campus_ops import add_parsers as add_campus_ops

    add_campus_ops(sub, _add_kube_args)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "ringkeeper") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # An API server's refusal is an answer for the person, not a traceback.
        from kubernetes_asyncio.client.exceptions import ApiException

        if not isinstance(exc, ApiException):
            raise
        from ..adapters.resources import KubeApiError

        what = str(exc) if isinstance(exc, KubeApiError) else f"{exc.status} {exc.reason}"
        print(f"{prog}: the API server refused: {what}", file=sys.stderr)
        return 1


def kubectl_plugin_main() -> None:
    """Entry point of `kubectl-ringkeeper`, so `kubectl ringkeeper ...` works."""
    sys.exit(main(prog="kubectl ringkeeper"))
