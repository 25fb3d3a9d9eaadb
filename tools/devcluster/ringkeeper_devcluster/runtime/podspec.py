"""Pure kubelet rules: env expansion, restart policy, probe bookkeeping, pod status.

These are the parts of a kubelet whose behaviour tests depend on; keeping them
free of I/O lets unit tests pin them down without starting anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Lookup = Callable[[str, str], Mapping[str, str] | None]


class PodSpecError(ValueError):
    """The pod cannot start as written (missing Secret key, unknown image ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: unknown references stay as written, $$ escapes."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(repl, text)


def field_ref(pod: Mapping[str, Any], path: str, pod_ip: str, node: str) -> str:
    meta = pod.get("metadata", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node,
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.podIPs": pod_ip,
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodSpecError("CreateContainerConfigError", f"unsupported fieldRef {path}")


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_ip: str,
    node: str,
    secrets: Lookup,
    config_maps: Lookup,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment a container starts with, in the kubelet's order of precedence."""
    ns = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("secretRef") or source.get("configMapRef")
        lookup = secrets if "secretRef" in source else config_maps
        data = lookup(ns, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise PodSpecError("CreateContainerConfigError", f"{ref['name']} not found")
        for key, value in data.items():
            env[prefix + key] = value
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"], pod_ip, node)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            is_secret = "secretKeyRef" in source
            ref = source["secretKeyRef" if is_secret else "configMapKeyRef"]
            data = (secrets if is_secret else config_maps)(ns, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                kind = "secret" if is_secret else "configmap"
                raise PodSpecError(
                    "CreateContainerConfigError",
                    f"{kind} {ref['name']!r} has no key {ref['key']!r}" if data is not None
                    else f"{kind} {ref['name']!r} not found",
                )
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in source:
            env[name] = "0"
        else:
            env[name] = ""
    return env


def should_restart(policy: str, exit_code: int) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(restarts: int, *, base: float = 0.5, cap: float = 10.0) -> float:
    """Crash-loop back-off: like the kubelet's, but capped low so tests stay quick."""
    if restarts <= 0:
        return 0.0
    # Bound the exponent: 2 ** 1024 no longer converts to a float (OverflowError after
    # about three hours of crash loop at the cap).
    return float(min(cap, base * (2 ** min(restarts - 1, 64))))


@dataclass
class ProbeTracker:
    """Consecutive successes and failures of one probe, with Kubernetes' thresholds."""

    success_threshold: int = 1
    failure_threshold: int = 3
    successes: int = 0
    failures: int = 0
    passing: bool = False

    @classmethod
    def for_probe(cls, probe: Mapping[str, Any]) -> ProbeTracker:
        return cls(
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )

    def record(self, ok: bool) -> bool:
        """Record one result; returns whether the probe now counts as passing."""
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold:
                self.passing = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold:
                self.passing = False
        return self.passing

    @property
    def failed(self) -> bool:
        return self.failures >= self.failure_threshold


@dataclass
class ContainerView:
    """What the runtime knows of one container, enough to write its status."""

    name: str
    image: str
    state: str = "waiting"  # waiting | running | terminated
    reason: str | None = "ContainerCreating"
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    pid: int | None = None
    last_state: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {
                "terminated": {
                    "exitCode": self.exit_code if self.exit_code is not None else 0,
                    "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                }
            }
            if self.message:
                state["terminated"]["message"] = self.message
        else:
            state = {"waiting": {"reason": self.reason or "ContainerCreating"}}
            if self.message:
                state["waiting"]["message"] = self.message
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"local://{self.image}",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_state,
        }
        if self.pid:
            out["containerID"] = f"proc://{self.pid}"
        return out


def pod_phase(
    init: list[ContainerView], main: list[ContainerView], restart_policy: str
) -> str:
    """Pod phase from container states, as the kubelet derives it."""
    init_failed = any(c.state == "terminated" and c.exit_code not in (0, None) for c in init)
    if init_failed and restart_policy == "Never":
        return "Failed"
    if not main or all(c.state == "waiting" and c.restart_count == 0 for c in main):
        return "Pending"
    if all(c.state == "terminated" for c in main):
        if restart_policy == "Always":
            return "Running"  # every container is about to restart
        if all(c.exit_code == 0 for c in main):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    return "Running"


def pod_conditions(
    *,
    init_done: bool,
    main: list[ContainerView],
    now: str,
    previous: list[Mapping[str, Any]] | None,
    readiness_gates_ok: bool = True,
) -> list[dict[str, Any]]:
    ready = bool(main) and all(c.ready for c in main)
    wanted = {
        "PodReadyToStartContainers": True,
        "PodScheduled": True,
        "Initialized": init_done,
        "ContainersReady": ready,
        "Ready": ready and readiness_gates_ok,
    }
    prev = {c.get("type"): c for c in previous or []}
    out = []
    for ctype, ok in wanted.items():
        status = "True" if ok else "False"
        old = prev.get(ctype)
        stamp = old.get("lastTransitionTime") if old and old.get("status") == status else now
        entry: dict[str, Any] = {"type": ctype, "status": status, "lastTransitionTime": stamp,
                                 "lastProbeTime": None}
        if not ok and ctype in ("ContainersReady", "Ready"):
            entry["reason"] = "ContainersNotReady"
            waiting = [c.name for c in main if not c.ready]
            entry["message"] = f"containers with unready status: [{' '.join(waiting)}]"
        out.append(entry)
    return out
