"""`ringkeeper-dev ...` (or `python3 -m ringkeeper_devcluster ...`): the local cluster's
command line, apart from the operator's `ringkeeper` command.

Only argparse is imported at module level, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser(prog: str = "ringkeeper-dev") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="The built-in local Kubernetes for tests and the demo: a real "
        "Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager built by hack/build-k8s.sh) plus a process runtime that runs "
        "pods as local processes, each on its own 127.x address. Needs root, like a kubelet.",
    )
    p.add_argument("--state-dir", help="certificates, data, pods and logs (default: "
                   "$RINGKEEPER_DEV_STATE or ~/.local/state/ringkeeper/dev-cluster)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the cluster (does nothing if it runs already)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    actions.add_parser("down", help="stop every component and every pod")
    actions.add_parser("status", help="health of each component; exit 1 if any is down")
    actions.add_parser("kubeconfig", help="print the path of the admin kubeconfig")
    logs = actions.add_parser("logs", help="print a pod container's log")
    logs.add_argument("pod")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container")
    fault = actions.add_parser("fault", help="inject failures: signals and network cuts")
    kinds = fault.add_subparsers(dest="fault", metavar="FAULT", required=True)
    for name, what in (("kill", "SIGKILL every process of a pod's container"),
                       ("stop", "SIGSTOP (freeze) a pod's container"),
                       ("cont", "SIGCONT (thaw) a frozen container"),
                       ("term", "SIGTERM a pod's container main process")):
        k = kinds.add_parser(name, help=what)
        k.add_argument("pods", nargs="*", help="pod names")
        k.add_argument("-l", "--selector",
                       help="every pod whose labels match, e.g. all pods of a campus: "
                       "-l ringkeeper.io/campus=zhaohui")
        k.add_argument("-n", "--namespace", default="default")
        k.add_argument("-c", "--container", help="only this container (default: all)")
    part = kinds.add_parser(
        "partition",
        help="drop traffic between two groups (pod names, or 127.x addresses; 'apiserver' "
        "means the API server)",
    )
    part.add_argument("--namespace", "-n", default="default")
    part.add_argument("--from", dest="side_a", nargs="+", required=True)
    part.add_argument("--to", dest="side_b", nargs="+", required=True)
    kinds.add_parser("heal", help="remove every network cut")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


def _state(args: argparse.Namespace) -> Path:
    from .control_plane import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _addresses(state: Path, namespace: str, names: list[str]) -> list[str]:
    from . import faults

    ips = {(c.namespace, c.pod): c.pod_ip for c in faults.containers(state)}
    out = []
    for n in names:
        if n == "apiserver":
            out.append("127.0.0.1")
        elif n.startswith("127."):
            out.append(n)
        elif (namespace, n) in ips:
            out.append(ips[(namespace, n)])
        else:
            raise faults.FaultError(f"no running pod {namespace}/{n}")
    return out


def run(args: argparse.Namespace) -> int:
    import os
    import signal

    from . import control_plane as cp
    from . import faults

    state = _state(args)
    try:
        if args.action == "up":
            if os.geteuid() != 0:
                raise cp.DevClusterError(
                    "the process runtime needs root (it creates mount namespaces and drops "
                    "pods to an unprivileged user, as a kubelet does): run it with sudo"
                )
            t0 = time.monotonic()
            layout, started = cp.up(state, timeout=args.timeout)
            if started:
                print(f"dev cluster up in {time.monotonic() - t0:.1f}s")
            else:
                print("dev cluster already running")
            print(f"export KUBECONFIG={layout.kubeconfig}")
            return 0
        if args.action == "down":
            stopped = cp.down(state)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
            return 0
        if args.action == "status":
            report = cp.status(state)
            width = max(len(k) for k in report)
            for k, v in report.items():
                print(f"{k.ljust(width)}  {v}")
            return 0 if all(v.startswith("running") for v in report.values()) else 1
        if args.action == "kubeconfig":
            path = cp.Layout(state).kubeconfig
            if not path.exists():
                raise cp.DevClusterError("no dev cluster yet: run `ringkeeper-dev up`")
            print(path)
            return 0
        if args.action == "logs":
            pods = sorted((state / "pods").glob(f"{args.namespace}_{args.pod}_*"))
            if not pods:
                raise cp.DevClusterError(f"no pod {args.namespace}/{args.pod} on this node")
            logs = sorted(pods[-1].glob(f"{args.container or '*'}.log"))
            for path in logs:
                sys.stdout.write(path.read_text(errors="replace"))
            return 0
        if args.action == "fault":
            if args.fault in ("kill", "stop", "cont", "term"):
                sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT,
                       "term": signal.SIGTERM}[args.fault]
                targets: list[str] = list(args.pods)
                if args.selector:
                    targets += faults.matching_pods(state, args.namespace, args.selector)
                if not targets:
                    raise faults.FaultError("no pods named or matched by the selector")
                for pod in targets:
                    hit = faults.signal_container(state, args.namespace, pod, args.container, sig)
                    for c in hit:
                        print(f"{sig.name} -> {c.namespace}/{c.pod}/{c.container} (pid {c.pid})")
                return 0
            if args.fault == "partition":
                a = _addresses(state, args.namespace, args.side_a)
                b = _addresses(state, args.namespace, args.side_b)
                n = faults.partition(a, b)
                print(f"cut {' '.join(a)} <-> {' '.join(b)} ({n} rules)")
                return 0
            if args.fault == "heal":
                faults.heal()
                print("network cuts removed")
                return 0
    except (cp.DevClusterError, faults.FaultError, RuntimeError) as exc:
        print(f"ringkeeper-dev: {exc}", file=sys.stderr)
        return 1
    return 2
