"""Runs last (file order): nothing the cluster ran during the suite left 127.0.0.0/8."""

from __future__ import annotations

import ipaddress
import subprocess

from e2e.conftest import Cluster
from ringkeeper_devcluster import faults


def test_nothing_connects_outside_loopback(cluster: Cluster) -> None:
    # Every pod process runs as the pod user, whose non-loopback packets are rejected and
    # counted; the count must still be zero after everything the suite has run.
    assert faults.egress_rejections() == 0
    # And every TCP connection of the control plane and the pods is on 127.0.0.0/8.
    pids = set()
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "runtime"):
        pid = (cluster.state / "run" / f"{component}.pid").read_text().strip()
        pids.add(pid)
    pids |= {str(c.pid) for c in faults.containers(cluster.state)}
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    checked = 0
    loopback = ipaddress.ip_network("127.0.0.0/8")
    for line in out.splitlines():
        if not any(f"pid={pid}," in line for pid in pids):
            continue
        cols = line.split()
        local, peer = cols[3], cols[4]  # State Recv-Q Send-Q Local Peer Process
        for addr in (local, peer):
            host = addr.rsplit(":", 1)[0].strip("[]")
            if host in ("*", "0.0.0.0", "::"):
                continue
            assert ipaddress.ip_address(host.removeprefix("::ffff:")) in loopback, line
        checked += 1
    assert checked > 0
