"""Network cuts between pods, and proof that nothing leaves 127.0.0.0/8."""

from __future__ import annotations

import time

from e2e.conftest import Cluster, wait_for

PAIR = """
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {role: server}}
spec:
  containers:
  - name: http
    image: python:3.11
    command: [python3, -m, http.server, --bind, $(POD_IP), "8000"]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {role: client}}
spec:
  containers:
  - name: probe
    image: python:3.11
    command: [python3, -u, -c]
    args:
    - |
      import os, socket, time
      target = os.environ["TARGET"]
      while True:
          try:
              s = socket.create_connection((target, 8000), timeout=0.5)
              print("OK", s.getsockname()[0], flush=True)
              s.close()
          except OSError as exc:
              print("FAIL", type(exc).__name__, flush=True)
          time.sleep(0.2)
    env: [{name: TARGET, value: "SERVER_IP"}]
"""


def _log(cluster: Cluster, ns: str, pod: str) -> list[str]:
    out = cluster.dev("logs", "-n", ns,
                             pod, check=False).stdout
    return out.splitlines()


def test_partition_and_heal_between_pods(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    server, client = PAIR.split("---\n")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=server)
    ip = wait_for("the server's ready IP", lambda: (lambda p: p["status"].get("podIP") if any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
    ) else None)(cluster.get("-n", ns, "pod", "server")), timeout=60)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=client.replace("SERVER_IP", ip))
    wait_for("the client connecting", lambda: any(
        line.startswith("OK") for line in _log(cluster, ns, "client")), timeout=60)
    client_ip = cluster.get("-n", ns, "pod", "client")["status"]["podIP"]
    # Connections leave from the pod's own address, so cuts can aim at one pod.
    ok_lines = [line for line in _log(cluster, ns, "client") if line.startswith("OK")]
    assert ok_lines[-1].split()[1] == client_ip

    cli: list[str] = []
    cluster.dev(*cli, "fault", "partition", "-n", ns, "--from", "client", "--to", "server")
    try:
        mark = len(_log(cluster, ns, "client"))
        time.sleep(3)
        after = _log(cluster, ns, "client")[mark + 1:]
        assert after and all(line.startswith("FAIL") for line in after), after
    finally:
        cluster.dev(*cli, "fault", "heal")
    mark = len(_log(cluster, ns, "client"))
    wait_for("the client reconnecting", lambda: any(
        line.startswith("OK") for line in _log(cluster, ns, "client")[mark:]), timeout=20)
