"""Pod IPs from 127.1.0.0/16: distinct per pod, never outside the loopback range."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")


class Ipam:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.leases: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.leases = {}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.leases, sort_keys=True))
        tmp.replace(self.path)

    def allocate(self, uid: str) -> str:
        if uid in self.leases:
            return self.leases[uid]
        used = set(self.leases.values())
        for host in POD_NETWORK.hosts():
            ip = str(host)
            if ip.endswith(".0") or ip.endswith(".1") or ip in used:
                continue
            self.leases[uid] = ip
            self._save()
            return ip
        raise RuntimeError("pod network 127.1.0.0/16 is exhausted")

    def release(self, uid: str) -> None:
        if self.leases.pop(uid, None) is not None:
            self._save()
