"""Pod IPs: distinct per pod, never outside the loopback range.

Each running dev cluster gets its own /16 inside 127.0.0.0/8 (claimed under
/run/ringkeeper-dev/networks), so a developer's cluster and the test suite's
cluster can run side by side without handing out the same address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from pathlib import Path

from ..control_plane import pid_alive

POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")
CLAIMS = Path("/run/ringkeeper-dev/networks")
FIRST_OCTET, LAST_OCTET = 16, 115


def claim_network(pid: int, claims: Path = CLAIMS) -> ipaddress.IPv4Network:
    """The first 127.N.0.0/16 no live runtime holds; the claim names the holder's pid."""
    claims.mkdir(parents=True, exist_ok=True)
    for octet in range(FIRST_OCTET, LAST_OCTET + 1):
        path = claims / str(octet)
        with contextlib.suppress(OSError, ValueError):
            holder = int(path.read_text())
            if holder != pid and pid_alive(holder):
                continue
        path.write_text(str(pid))
        return ipaddress.IPv4Network(f"127.{octet}.0.0/16")
    raise RuntimeError("every pod network 127.16-115.0.0/16 is claimed by a running dev cluster")


class Ipam:
    def __init__(self, path: Path,
                 network: ipaddress.IPv4Network | ipaddress.IPv6Network = POD_NETWORK) -> None:
        self.path = path
        self.network = network
        try:
            self.leases: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.leases = {}
        # Leases from another network (the runtime restarted elsewhere) are void.
        self.leases = {k: v for k, v in self.leases.items()
                       if ipaddress.ip_address(v) in self.network}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.leases, sort_keys=True))
        tmp.replace(self.path)

    def allocate(self, uid: str) -> str:
        if uid in self.leases:
            return self.leases[uid]
        used = set(self.leases.values())
        for host in self.network.hosts():
            ip = str(host)
            if ip.endswith(".0") or ip.endswith(".1") or ip in used:
                continue
            self.leases[uid] = ip
            self._save()
            return ip
        raise RuntimeError(f"pod network {self.network} is exhausted")

    def release(self, uid: str) -> None:
        if self.leases.pop(uid, None) is not None:
            self._save()
