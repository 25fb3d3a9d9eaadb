"""Pods of the local cluster behave as on a real node: IPs, probes, restarts, GC, volumes."""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from e2e.conftest import Cluster, wait_for

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8000, name: http}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      securityContext: {runAsNonRoot: true, runAsUser: 1000}
      containers:
      - name: server
        image: python:3.11
        command: [python3, -m, http.server, --bind, $(POD_IP), "8000", --directory, /data]
        env:
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports: [{containerPort: 8000, name: http}]
        readinessProbe:
          httpGet: {path: /ready, port: http}
          periodSeconds: 1
          failureThreshold: 1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"""


def _pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("-n", ns, "pods", "-l", selector)["items"]
    return items


def _ready_endpoints(cluster: Cluster, ns: str, service: str) -> set[str]:
    slices = cluster.get("-n", ns, "endpointslices", "-l",
                         f"kubernetes.io/service-name={service}")["items"]
    return {addr for s in slices for ep in (s.get("endpoints") or [])
            if (ep.get("conditions") or {}).get("ready") for addr in ep["addresses"]}


def _pvc_dir(cluster: Cluster, ns: str, claim: str) -> Any:
    return cluster.state / "pvc" / ns / claim


def _restarts(cluster: Cluster, ns: str, pod: str) -> int:
    return int(cluster.get("-n", ns, "pod", pod)["status"]["containerStatuses"][0]
               ["restartCount"])


def test_statefulset_pods_ips_readiness_restarts_and_gc(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=WEB)

    def running() -> list[dict[str, Any]] | None:
        pods = _pods(cluster, ns, "app=web")
        ok = len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = wait_for("two running web pods", running, timeout=90)
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    assert len(set(ips.values())) == 2
    assert all(ipaddress.ip_address(ip).is_loopback for ip in ips.values())
    assert _ready_endpoints(cluster, ns, "web") == set()

    # Readiness drives the EndpointSlice: web-0 becomes ready, then web-1.
    (_pvc_dir(cluster, ns, "data-web-0") / "ready").write_text("ok")
    wait_for("web-0 in the EndpointSlice",
             lambda: _ready_endpoints(cluster, ns, "web") == {ips["web-0"]})
    (_pvc_dir(cluster, ns, "data-web-1") / "ready").write_text("ok")
    wait_for("both pods in the EndpointSlice",
             lambda: _ready_endpoints(cluster, ns, "web") == set(ips.values()))
    (_pvc_dir(cluster, ns, "data-web-1") / "ready").unlink()
    wait_for("web-1 out of the EndpointSlice",
             lambda: _ready_endpoints(cluster, ns, "web") == {ips["web-0"]})

    # SIGKILL the container: it restarts, keeps its IP and its volume, and is ready again.
    before = _restarts(cluster, ns, "web-0")
    cluster.dev("fault", "kill",
                       "-n", ns, "web-0")
    wait_for("a restart of web-0", lambda: _restarts(cluster, ns, "web-0") == before + 1)
    wait_for("web-0 ready again",
             lambda: ips["web-0"] in _ready_endpoints(cluster, ns, "web"))
    assert cluster.get("-n", ns, "pod", "web-0")["status"]["podIP"] == ips["web-0"]

    # Kill every pod of a group by label, as a campus-loss drill does.
    counts = {p: _restarts(cluster, ns, p) for p in ips}
    res = cluster.dev("fault", "kill",
                             "-n", ns, "-l", "app=web")
    assert res.stdout.count("SIGKILL") == 2
    wait_for("both pods restarted", lambda: all(
        _restarts(cluster, ns, p) == counts[p] + 1 for p in ips))

    # Deleting the StatefulSet garbage-collects its pods; claims stay until deleted.
    cluster.kubectl("-n", ns, "delete", "statefulset", "web", "--wait=false")
    wait_for("pods garbage-collected", lambda: not _pods(cluster, ns, "app=web"), timeout=60)
    assert (_pvc_dir(cluster, ns, "data-web-0") / "ready").exists()
    cluster.kubectl("-n", ns, "delete", "pvc", "data-web-0", "--wait=true", "--timeout=60s")
    wait_for("the claim's folder removed",
             lambda: not _pvc_dir(cluster, ns, "data-web-0").exists(), timeout=30)


PROBE_POD = """
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret-value}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: ring, app.conf: "listen = 1"}
---
apiVersion: v1
kind: Pod
metadata: {name: envcheck, labels: {role: check}}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: python:3.11
    command: [python3, -c]
    args:
    - |
      import os, signal, sys, time, pathlib
      cfg = pathlib.Path("/etc/app/app.conf").read_text()
      pw = pathlib.Path("/etc/creds/password").read_text()
      print("ENV", os.environ["MODE"], os.environ["PW_LEN"], os.environ["ME"],
            os.environ["MY_IP"] == os.environ["RINGKEEPER_POD_IP"], flush=True)
      print("FILES", cfg, len(pw), os.getuid() != 0, flush=True)
      pathlib.Path("/tmp/healthy").write_text("yes")
      def bye(*_):
          pathlib.Path("/work/terminated").write_text("SIGTERM")
          sys.exit(0)
      signal.signal(signal.SIGTERM, bye)
      while True:
          time.sleep(0.2)
    env:
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    - {name: PW_LEN, value: "$(PW)"}
    - {name: PW, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: ME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    livenessProbe:
      exec: {command: [cat, /tmp/healthy]}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts:
    - {name: app, mountPath: /etc/app, readOnly: true}
    - {name: creds, mountPath: /etc/creds, readOnly: true}
    - {name: scratch, mountPath: /tmp}
    - {name: work, mountPath: /work}
  volumes:
  - {name: app, configMap: {name: settings}}
  - {name: creds, secret: {secretName: creds, defaultMode: 0400}}
  - {name: scratch, emptyDir: {}}
  - {name: work, persistentVolumeClaim: {claimName: work}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: work}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""


def test_env_volumes_liveness_and_graceful_termination(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=PROBE_POD)

    def log() -> str:
        return cluster.dev("logs",
                                  "-n", ns, "envcheck", check=False).stdout

    wait_for("the pod to print its environment", lambda: "FILES" in log(), timeout=90)
    text = log()
    # $(PW) was defined after PW_LEN, so it stays unexpanded, as on a real kubelet.
    assert "ENV ring $(PW) envcheck True" in text
    assert "FILES listen = 1 12 True" in text
    assert "s3cret-value" not in text

    # A failing exec liveness probe restarts the container.
    scratch = next((cluster.state / "pods").glob(f"{ns}_envcheck_*")) / "volumes" / "scratch"
    (scratch / "healthy").unlink()
    wait_for("a liveness restart", lambda: _restarts(cluster, ns, "envcheck") >= 1, timeout=30)

    # Deleting the pod sends SIGTERM first; the handler's marker lands on the claim.
    cluster.kubectl("-n", ns, "delete", "pod", "envcheck", "--wait=true", "--timeout=60s")
    assert (_pvc_dir(cluster, ns, "work") / "terminated").read_text() == "SIGTERM"


def test_service_cluster_ips_stay_on_loopback(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "plain"},
         "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}))
    svc = cluster.get("-n", namespace, "service", "plain")
    assert svc["spec"]["clusterIP"].startswith("127.64.")
    kube = cluster.get("-n", "default", "service", "kubernetes")
    assert kube["spec"]["clusterIP"] == "127.64.0.1"


