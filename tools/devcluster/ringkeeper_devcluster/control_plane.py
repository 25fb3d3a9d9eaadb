"""Start, stop and inspect the local control plane.

Real etcd, kube-apiserver and kube-controller-manager, built from source by
hack/build-k8s.sh, run as background processes with pid files and logs under a
state folder; the process runtime (our kubelet stand-in) runs beside them.
Everything listens on 127.0.0.1, and Service ClusterIPs come from a range
inside 127.0.0.0/8, so nothing the cluster hands out points off the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import pki as pki_mod

K8S_VERSION = "1.35.4"
SERVICE_CIDR = "127.64.0.0/16"
NODE_NAME = "ringkeeper-dev"


class DevClusterError(RuntimeError):
    """A problem the user can act on; the message says what to do."""


def repo_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "hack" / "build-k8s.sh").exists():
            return parent
    return None


def default_state_dir() -> Path:
    env = os.environ.get("RINGKEEPER_DEV_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ringkeeper" / "dev-cluster"


def binaries_dir() -> Path:
    env = os.environ.get("RINGKEEPER_K8S_BIN")
    if env:
        return Path(env)
    cache = os.environ.get("RINGKEEPER_K8S_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "ringkeeper", "k8s"
    )
    return Path(cache) / f"v{K8S_VERSION}"


def binary(name: str) -> Path:
    path = binaries_dir() / name
    if not path.exists():
        raise DevClusterError(
            f"{name} is not built ({path} missing). Run `hack/build-k8s.sh` (or `make k8s-bin`) "
            "once; it builds the control plane from the Go module proxy and caches it."
        )
    return path


def _env_port(name: str, default: int) -> Any:
    return field(default_factory=lambda: int(os.environ.get(name, str(default))))


@dataclass(frozen=True)
class Ports:
    """Ports on 127.0.0.1, read from the environment when the cluster starts."""

    apiserver: int = _env_port("RINGKEEPER_DEV_APISERVER_PORT", 16443)
    etcd_client: int = _env_port("RINGKEEPER_DEV_ETCD_PORT", 12379)
    etcd_peer: int = _env_port("RINGKEEPER_DEV_ETCD_PEER_PORT", 12380)
    controller_manager: int = _env_port("RINGKEEPER_DEV_KCM_PORT", 10257)


@dataclass(frozen=True)
class Layout:
    state: Path

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def pidfile(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "runtime")


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie still answers kill 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_pid(layout: Layout, component: str) -> int | None:
    try:
        return int(layout.pidfile(component).read_text().strip())
    except (OSError, ValueError):
        return None


def component_alive(layout: Layout, component: str) -> bool:
    pid = read_pid(layout, component)
    return pid is not None and pid_alive(pid)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kubeconfig_text(layout: Layout, ports: Ports, user: str = "admin") -> str:
    p = pki_mod.Pki(layout.pki)
    return f"""apiVersion: v1
kind: Config
clusters:
- name: ringkeeper-dev
  cluster:
    server: https://127.0.0.1:{ports.apiserver}
    certificate-authority: {p.ca_cert}
users:
- name: {user}
  user:
    client-certificate: {p.cert(user)}
    client-key: {p.key(user)}
contexts:
- name: ringkeeper-dev
  context:
    cluster: ringkeeper-dev
    user: {user}
    namespace: default
current-context: ringkeeper-dev
"""


def _spawn(layout: Layout, component: str, argv: list[str], env: dict[str, str] | None = None,
           ) -> int:
    log = layout.log(component).open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
        cwd=layout.state,
    )
    log.close()
    layout.pidfile(component).write_text(str(proc.pid))
    return proc.pid


def _admin_tls(layout: Layout) -> ssl.SSLContext:
    p = pki_mod.Pki(layout.pki)
    ctx = ssl.create_default_context(cafile=str(p.ca_cert))
    ctx.load_cert_chain(str(p.cert("admin")), str(p.key("admin")))
    return ctx


def _wait_node_ready(layout: Layout, ports: Ports, timeout: float) -> None:
    ctx = _admin_tls(layout)
    url = f"https://127.0.0.1:{ports.apiserver}/api/v1/nodes/{NODE_NAME}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not component_alive(layout, "runtime"):
            raise DevClusterError("the process runtime exited during start-up; its log ends:\n"
                                  + _tail(layout.log("runtime")))
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                node = json.load(resp)
            conds = node.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise DevClusterError(f"node {NODE_NAME} not Ready after {timeout:.0f}s; see "
                          f"{layout.log('runtime')}")


def _wait_healthy(layout: Layout, ports: Ports, timeout: float) -> None:
    ctx = _admin_tls(layout)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        for component in ("etcd", "kube-apiserver"):
            if not component_alive(layout, component):
                tail = _tail(layout.log(component))
                raise DevClusterError(f"{component} exited during start-up; its log ends:\n{tail}")
        try:
            url = f"https://127.0.0.1:{ports.apiserver}/readyz"
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise DevClusterError(f"kube-apiserver not healthy after {timeout:.0f}s ({last}); see "
                          f"{layout.log('kube-apiserver')}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(state: Path, timeout: float = 60.0, with_runtime: bool = True) -> tuple[Layout, bool]:
    """Start the cluster unless it runs already. Returns the layout and whether it started."""
    layout = Layout(state)
    ports = Ports()
    running = [c for c in COMPONENTS if component_alive(layout, c)]
    if running:
        missing = [c for c in COMPONENTS if c not in running and (with_runtime or c != "runtime")]
        if missing:
            raise DevClusterError(
                f"the dev cluster in {state} is partly running ({', '.join(running)} up, "
                f"{', '.join(missing)} down): run `ringkeeper-dev down` and `up` again"
            )
        return layout, False
    binaries = {name: binary(name) for name in ("etcd", "kube-apiserver",
                                                "kube-controller-manager")}
    busy = [f"{name} port {port}" for name, port in (
        ("kube-apiserver", ports.apiserver), ("etcd", ports.etcd_client),
        ("etcd peer", ports.etcd_peer), ("kube-controller-manager", ports.controller_manager),
    ) if not _port_free(port)]
    if busy:
        raise DevClusterError(
            f"{', '.join(busy)} already in use on 127.0.0.1. Stop whatever listens there, or "
            "choose other ports with RINGKEEPER_DEV_APISERVER_PORT, RINGKEEPER_DEV_ETCD_PORT, "
            "RINGKEEPER_DEV_ETCD_PEER_PORT and RINGKEEPER_DEV_KCM_PORT."
        )
    for d in (layout.state, layout.logs, layout.run, layout.state / "etcd"):
        d.mkdir(parents=True, exist_ok=True)
    p = pki_mod.ensure(layout.pki)
    layout.kubeconfig.write_text(kubeconfig_text(layout, ports))
    layout.kubeconfig.chmod(0o600)
    cm_kubeconfig = layout.state / "controller-manager.kubeconfig"
    cm_kubeconfig.write_text(kubeconfig_text(layout, ports, "controller-manager"))
    cm_kubeconfig.chmod(0o600)

    _spawn(layout, "etcd", [
        str(binaries["etcd"]),
        "--name=dev", f"--data-dir={layout.state / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
        f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
        f"--initial-cluster=dev=http://127.0.0.1:{ports.etcd_peer}",
        "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ])
    _spawn(layout, "kube-apiserver", [
        str(binaries["kube-apiserver"]),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1", f"--secure-port={ports.apiserver}",
        "--advertise-address=127.0.0.1",
        f"--tls-cert-file={p.cert('apiserver')}", f"--tls-private-key-file={p.key('apiserver')}",
        f"--client-ca-file={p.ca_cert}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC", "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--profiling=false", "--v=1",
    ])
    _wait_healthy(layout, ports, timeout)
    _spawn(layout, "kube-controller-manager", [
        str(binaries["kube-controller-manager"]),
        f"--kubeconfig={cm_kubeconfig}",
        f"--authentication-kubeconfig={cm_kubeconfig}",
        f"--authorization-kubeconfig={cm_kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}",
        f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca_cert}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,"
        "-node-route-controller,-bootstrap-signer-controller,-token-cleaner-controller",
        "--allocate-node-cidrs=false", "--cluster-name=ringkeeper-dev",
        "--concurrent-statefulset-syncs=5", "--v=1",
    ])
    if with_runtime:
        _spawn(layout, "runtime", [
            sys.executable, "-m", "ringkeeper_devcluster.runtime",
            "--state-dir", str(layout.state), "--kubeconfig", str(layout.kubeconfig),
            "--node-name", NODE_NAME, "--apiserver-port", str(ports.apiserver),
        ], env={"PYTHONUNBUFFERED": "1"})
        _wait_node_ready(layout, ports, timeout)
    return layout, True


def down(state: Path, timeout: float = 20.0) -> list[str]:
    """Stop every component (runtime first, so it can stop its pods). Returns what was stopped."""
    layout = Layout(state)
    stopped = []
    for component in reversed(COMPONENTS):
        pid = read_pid(layout, component)
        if pid is None:
            continue
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            stopped.append(component)
        layout.pidfile(component).unlink(missing_ok=True)
    # Pods the runtime could not stop (it was SIGKILLed, say) are found by their pid files.
    from .faults import kill_leftover_pods, remove_all_rules

    kill_leftover_pods(layout.state)
    remove_all_rules()
    return stopped


def wipe(state: Path) -> None:
    down(state)
    shutil.rmtree(state, ignore_errors=True)


def status(state: Path) -> dict[str, str]:
    layout = Layout(state)
    out: dict[str, str] = {}
    for component in COMPONENTS:
        pid = read_pid(layout, component)
        if pid is None:
            out[component] = "not started"
        elif pid_alive(pid):
            out[component] = f"running (pid {pid})"
        else:
            out[component] = f"CRASHED (pid {pid} gone; see {layout.log(component)})"
    return out
