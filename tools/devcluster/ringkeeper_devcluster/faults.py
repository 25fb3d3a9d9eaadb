"""Fault hooks for tests and drills: signals to containers and cuts between pods.

Pod processes are found through the pid files the runtime writes; network cuts
are iptables rules on the pods' loopback addresses (every pod binds its own
127.x address as the source of its connections, see runtime/podnet.c), so a
cut never involves an address off this machine. The egress guard rejects any
connection a pod process tries to open outside 127.0.0.0/8 and counts it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

# re-exported: tests call faults.process_tree
from ringkeeper.base.procs import process_tree as process_tree

FAULT_CHAIN = "RINGKEEPER-FAULTS"
EGRESS_CHAIN = "RINGKEEPER-EGRESS"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class FaultError(RuntimeError):
    pass


@dataclass(frozen=True)
class ContainerProcess:
    namespace: str
    pod: str
    container: str
    pid: int
    pod_ip: str
    labels: tuple[tuple[str, str], ...] = ()


def parse_selector(selector: str) -> dict[str, str]:
    """Equality label selectors (`a=b,c=d`), the form fault hooks need."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key or value.startswith("="):
            raise FaultError(f"selector {part!r}: write key=value (several joined with commas)")
        out[key.strip()] = value.strip()
    return out


def matching_pods(state: Path, namespace: str, selector: str) -> list[str]:
    wanted = parse_selector(selector).items()
    pods = {c.pod for c in containers(state)
            if c.namespace == namespace and wanted <= set(c.labels)}
    return sorted(pods)


def _pods_root(state: Path) -> Path:
    return state / "pods"


def containers(state: Path) -> list[ContainerProcess]:
    """Every container process the runtime currently runs, from its pid files."""
    out = []
    for meta in sorted(_pods_root(state).glob("*/pod.json")):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        for pidfile in sorted(meta.parent.glob("*.pid")):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            labels = tuple(sorted((info.get("labels") or {}).items()))
            out.append(ContainerProcess(info["namespace"], info["name"], pidfile.stem, pid,
                                        info.get("podIP", ""), labels))
    return out


def signal_tree(root: int, sig: signal.Signals) -> None:
    for pid in process_tree(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)


def signal_container(state: Path, namespace: str, pod: str, container: str | None,
                     sig: signal.Signals) -> list[ContainerProcess]:
    """Send a signal to a pod's container(s). SIGKILL/SIGSTOP/SIGCONT hit every process of
    the container, as a container runtime freezes or kills its whole cgroup."""
    hit = [c for c in containers(state) if c.namespace == namespace and c.pod == pod
           and (container is None or c.container == container)]
    if not hit:
        raise FaultError(f"no running container found for pod {namespace}/{pod}"
                         + (f" container {container}" if container else ""))
    for c in hit:
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            signal_tree(c.pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, sig)
    return hit


def kill_leftover_pods(state: Path) -> int:
    n = 0
    for c in containers(state):
        signal_tree(c.pid, signal.SIGKILL)
        n += 1
    return n


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("iptables")
    if exe is None:
        raise FaultError("iptables is not installed: apt-get install iptables (make setup does)")
    return subprocess.run([exe, "-w", *args], capture_output=True, text=True, check=check)


def _ensure_chain(chain: str, jump_args: list[str]) -> None:
    if _iptables("-nL", chain, check=False).returncode != 0:
        _iptables("-N", chain)
    if _iptables("-C", "OUTPUT", *jump_args, "-j", chain, check=False).returncode != 0:
        _iptables("-I", "OUTPUT", "1", *jump_args, "-j", chain)


def _loopback(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if addr not in LOOPBACK:
        raise FaultError(f"{ip} is not a loopback address: faults only touch 127.0.0.0/8")
    return str(addr)


def partition(group_a: list[str], group_b: list[str]) -> int:
    """Drop all traffic between two groups of loopback addresses, both ways."""
    a = [_loopback(ip) for ip in group_a]
    b = [_loopback(ip) for ip in group_b]
    if not a or not b:
        raise FaultError("a partition needs at least one address on each side")
    _ensure_chain(FAULT_CHAIN, [])
    n = 0
    for x in a:
        for y in b:
            for src, dst in ((x, y), (y, x)):
                _iptables("-A", FAULT_CHAIN, "-s", src, "-d", dst, "-j", "DROP")
                n += 1
    return n


def heal() -> None:
    if _iptables("-nL", FAULT_CHAIN, check=False).returncode == 0:
        _iptables("-F", FAULT_CHAIN)


def install_egress_guard(uid: int) -> None:
    """Reject, and count, any connection a pod process opens outside 127.0.0.0/8."""
    _ensure_chain(EGRESS_CHAIN, ["-m", "owner", "--uid-owner", str(uid)])
    _iptables("-F", EGRESS_CHAIN)
    _iptables("-A", EGRESS_CHAIN, "-d", str(LOOPBACK), "-j", "RETURN")
    _iptables("-A", EGRESS_CHAIN, "-j", "REJECT")


def egress_rejections() -> int | None:
    """Packets the egress guard rejected so far; None when it is not installed."""
    res = _iptables("-nvxL", EGRESS_CHAIN, check=False)
    if res.returncode != 0:
        return None
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "REJECT":
            return int(parts[0])
    return None


def other_runtimes_alive() -> bool:
    """Another dev cluster's runtime still running (tests start a second cluster)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"ringkeeper_devcluster.runtime" in cmdline.read_bytes():
                return True
    return False


def remove_all_rules() -> None:
    """Remove the fault and egress chains, unless another dev cluster still needs them."""
    if shutil.which("iptables") is None or other_runtimes_alive():
        return
    for chain in (FAULT_CHAIN, EGRESS_CHAIN):
        rules = _iptables("-S", "OUTPUT", check=False).stdout.splitlines()
        for rule in rules:
            if f"-j {chain}" in rule:
                _iptables(*rule.replace("-A OUTPUT", "-D OUTPUT", 1).split(), check=False)
        _iptables("-F", chain, check=False)
        _iptables("-X", chain, check=False)
