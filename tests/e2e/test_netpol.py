"""NetworkPolicies are enforced on the local cluster's loopback pod addresses.

One namespace holds a server, a client and a third pod; a second namespace holds another
server. Client and third pod try every 0.2 s to connect to their targets and log OK or
FAIL per target. Every step first shows the traffic flowing (so a cluster without policy
enforcement fails it), then that the policy stops exactly what it should and nothing else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import Cluster
from waiting import wait_until as wait_for

SERVER = """
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {role: server}}
spec:
  containers:
  - name: http
    image: python:3.11
    command: [python3, -m, http.server, --bind, $(POD_IP), "8000"]
    ports: [{name: http, containerPort: 8000}]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    readinessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}
  - name: echo
    image: python:3.11
    command: [python3, -c]
    args:
    - |
      import os, socketserver
      class Echo(socketserver.StreamRequestHandler):
          def handle(self):
              for line in self.rfile:
                  self.wfile.write(line)
      socketserver.ThreadingTCPServer((os.environ["POD_IP"], 8001), Echo).serve_forever()
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
"""

PROBER = """
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {role: ROLE}}
spec:
  containers:
  - name: probe
    image: python:3.11
    command: [python3, -u, -c]
    args:
    - |
      import os, socket, time
      targets = [t.split("=") for t in os.environ["TARGETS"].split(",")]
      stream_to, stream = os.environ.get("STREAM"), None
      while True:
          if stream_to:  # one long-lived connection to the echo port, kept while it lives
              try:
                  if stream is None:
                      stream = socket.create_connection((stream_to, 8001), timeout=0.5)
                  stream.sendall(b"ping\\n")
                  print(time.time(), "stream", "OK" if stream.recv(64) else "FAIL", flush=True)
              except TimeoutError:
                  print(time.time(), "stream", "FAIL", "timeout", flush=True)
              except OSError as exc:
                  print(time.time(), "stream", "FAIL", type(exc).__name__, flush=True)
                  stream = None
          for name, ip in targets:
              try:
                  socket.create_connection((ip, 8000), timeout=0.5).close()
                  print(time.time(), name, "OK", flush=True)
              except OSError as exc:
                  print(time.time(), name, "FAIL", type(exc).__name__, flush=True)
          time.sleep(0.2)
    env: [{name: TARGETS, value: "TARGET_LIST"}, {name: STREAM, value: "STREAM_TO"}]
"""

# the longest a policy change may take to show in traffic (measured: well under a second)
APPLY_SECONDS = 5.0


def _log(cluster: Cluster, ns: str, pod: str) -> list[str]:
    files = list(Path(cluster.state, "pods").glob(f"{ns}_{pod}_*/probe.log"))
    return files[0].read_text().splitlines() if files else []


def _attempts(cluster: Cluster, ns: str, pod: str, target: str,
              mark: int = 0) -> list[tuple[float, str]]:
    """(time, OK|FAIL) of the pod's attempts at `target` after log line `mark`."""
    out = []
    for line in _log(cluster, ns, pod)[mark:]:
        parts = line.split()
        if len(parts) >= 3 and parts[1] == target:
            out.append((float(parts[0]), parts[2]))
    return out


def _steady(cluster: Cluster, ns: str, pod: str, target: str, want: str,
            timeout: float = APPLY_SECONDS) -> float:
    """Wait until the pod's last three attempts at `target` all gave `want`; when the
    first attempt of that run ended (epoch seconds)."""
    mark = len(_log(cluster, ns, pod))

    def check() -> float | None:
        seen = _attempts(cluster, ns, pod, target, mark)
        if len(seen) < 3 or any(r != want for _, r in seen[-3:]):
            return None
        first = len(seen) - 1
        while first > 0 and seen[first - 1][1] == want:
            first -= 1
        return seen[first][0]
    return float(wait_for(f"{ns}/{pod} -> {target}: {want}", check, timeout=timeout,
                          interval=0.1))


def _only(cluster: Cluster, ns: str, pod: str, target: str, want: str,
          seconds: float = 2.0) -> None:
    """Every attempt at `target` during the next `seconds` gave `want`."""
    mark = len(_log(cluster, ns, pod))
    time.sleep(seconds)
    seen = _attempts(cluster, ns, pod, target, mark)
    assert len(seen) >= 2 and all(r == want for _, r in seen), (pod, target, seen)


def _ready_ip(cluster: Cluster, ns: str, pod: str) -> str:
    def check() -> str | None:
        p = cluster.get("-n", ns, "pod", pod)
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))
        return p["status"].get("podIP") if ready else None
    return str(wait_for(f"{ns}/{pod} Ready", check, timeout=60))


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(cluster: Cluster, ns: str, manifest: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest)


def test_network_policies_cut_and_restore(cluster: Cluster, namespace: str,
                                          other_namespace: str) -> None:
    a, b = namespace, other_namespace
    _apply(cluster, a, SERVER.replace("NAME", "server"))
    _apply(cluster, b, SERVER.replace("NAME", "bserver"))
    ip, bip = _ready_ip(cluster, a, "server"), _ready_ip(cluster, b, "bserver")
    _apply(cluster, a, PROBER.replace("NAME", "client").replace("ROLE", "client")
           .replace("TARGET_LIST", f"server={ip},bserver={bip}").replace("STREAM_TO", ip))
    _apply(cluster, a, PROBER.replace("NAME", "third").replace("ROLE", "third")
           .replace("TARGET_LIST", f"server={ip}").replace("STREAM_TO", ""))
    # Without any policy everything flows: the checks below can only pass by enforcement.
    for pod, target in (("client", "server"), ("client", "bserver"), ("third", "server"),
                        ("client", "stream")):
        _steady(cluster, a, pod, target, "OK", timeout=60)

    # 1. default deny ingress in namespace a
    t0 = time.time()
    _apply(cluster, a, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress}
spec: {podSelector: {}, policyTypes: [Ingress]}
""")
    cut = _steady(cluster, a, "client", "server", "FAIL") - t0
    _steady(cluster, a, "third", "server", "FAIL")
    # a connection opened before the policy is cut too (a drill's partition relies on it)
    _steady(cluster, a, "client", "stream", "FAIL")
    _only(cluster, a, "client", "bserver", "OK")  # b is not isolated: nothing else is cut
    # the node's probes still reach the isolated server
    assert _ready_ip(cluster, a, "server") == ip

    # 2. allow the client's labels on the server's named port; the third pod stays out
    _apply(cluster, a, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}]
""")
    _steady(cluster, a, "client", "server", "OK")
    _only(cluster, a, "third", "server", "FAIL")
    _only(cluster, a, "client", "stream", "FAIL")  # the echo port is not allowed

    # 3. the client's egress to namespace b only is stopped
    _apply(cluster, a, f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: no-egress-to-b}}
spec:
  podSelector: {{matchLabels: {{role: client}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions:
        - {{key: kubernetes.io/metadata.name, operator: NotIn, values: [{b}]}}
""")
    _steady(cluster, a, "client", "bserver", "FAIL")
    _only(cluster, a, "client", "server", "OK")

    # 4. deleting the policies restores all traffic, within APPLY_SECONDS
    t0 = time.time()
    cluster.kubectl("-n", a, "delete", "networkpolicy", "--all")
    restored = max(_steady(cluster, a, pod, target, "OK") for pod, target in (
        ("client", "server"), ("client", "bserver"), ("third", "server"))) - t0
    print(f"deny applied within {cut:.2f}s, traffic restored within {restored:.2f}s "
          "of kubectl starting")
    assert cut < APPLY_SECONDS and restored < APPLY_SECONDS
