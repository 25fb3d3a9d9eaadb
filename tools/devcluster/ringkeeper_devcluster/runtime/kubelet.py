"""The process runtime: the part of a kubelet (and of a scheduler's binder) we need.

It registers one Node and keeps its Lease fresh, binds pending pods to it, and
runs every container of every bound pod as a local process with its own
loopback pod IP. Status (phase, conditions, container states, restart counts,
probe results) goes back to the API server, so StatefulSets, EndpointSlices
and garbage collection behave as they do on a real node.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ringkeeper.base.timefmt import now_rfc3339

from .. import faults
from . import images, process, volumes
from .ipam import Ipam
from .podspec import (
    ContainerView,
    PodSpecError,
    ProbeTracker,
    container_env,
    expand,
    pod_conditions,
    pod_phase,
    restart_delay,
    should_restart,
)

log = logging.getLogger("ringkeeper_devcluster.runtime")
TOKEN_REFRESH_SECONDS = 1800
NO_DNS = "127.53.53.53"  # a loopback address nothing listens on


def now() -> str:
    return now_rfc3339()


@dataclass
class Settings:
    state: Path
    node: str
    apiserver_port: int
    user: process.PodUser
    podnet: Path | None
    network: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("127.1.0.0/16"))
    max_grace: float = 30.0


@dataclass
class Running:
    view: ContainerView
    spec: dict[str, Any]
    proc: asyncio.subprocess.Process | None = None
    startup: ProbeTracker | None = None
    readiness: ProbeTracker | None = None
    liveness: ProbeTracker | None = None
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class PodWorker:
    """Runs one pod until it is deleted."""

    def __init__(self, rt: Runtime, pod: dict[str, Any]) -> None:
        self.rt = rt
        self.pod = pod
        meta = pod["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = rt.settings.state / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.ip = ""
        self.init: list[Running] = []
        self.main: list[Running] = []
        self.init_done = False
        self.volumes: dict[str, Path] = {}
        self.deleting = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_status: str | None = None
        self.pod_message: tuple[str, str] | None = None

    def _write_meta(self, phase: str) -> None:
        """What the fault hooks read to find this pod's processes."""
        (self.dir / "pod.json").write_text(json.dumps(
            {"namespace": self.ns, "name": self.name, "uid": self.uid, "podIP": self.ip,
             "phase": phase, "labels": self.pod["metadata"].get("labels") or {}}))

    # -- lifecycle ---------------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._stop_all(grace=5)
            raise
        except Exception:
            log.exception("pod %s/%s: runtime error", self.ns, self.name)
            await self._stop_all(grace=1)

    async def _run(self) -> None:
        spec = self.pod["spec"]
        self.ip = self.rt.ipam.allocate(self.uid)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_meta("Pending")
        self.init = [Running(ContainerView(c["name"], c.get("image", "")), c)
                     for c in spec.get("initContainers") or []]
        self.main = [Running(ContainerView(c["name"], c.get("image", "")), c)
                     for c in spec.get("containers") or []]
        publisher = asyncio.create_task(self._publish_loop())
        try:
            while not self.deleting.is_set():
                try:
                    self.volumes = await volumes.materialise(
                        pod=self.pod, pod_dir=self.dir, state=self.rt.settings.state,
                        user=self.rt.settings.user, pod_ip=self.ip, node=self.rt.settings.node,
                        secrets=self.rt.secret, config_maps=self.rt.config_map,
                        token=self.rt.token,
                    )
                    self.pod_message = None
                    break
                except PodSpecError as exc:
                    self._waiting_all(exc.reason, str(exc))
                    await self._sleep_or_delete(2)
            policy = spec.get("restartPolicy", "Always")
            for r in self.init:
                while not self.deleting.is_set():
                    code = await self._run_once(r)
                    if code == 0:
                        break
                    if policy == "Never":
                        self._notify()
                        await self.deleting.wait()
                        break
                    await self._sleep_or_delete(restart_delay(r.view.restart_count))
            self.init_done = not self.deleting.is_set()
            self._notify()
            if self.init_done:
                for r in self.main:
                    r.tasks.append(asyncio.create_task(self._supervise(r, policy)))
            refresher = asyncio.create_task(self._refresh_tokens())
            await self.deleting.wait()
            refresher.cancel()
            grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            await self._stop_all(grace=min(float(grace), self.rt.settings.max_grace))
        finally:
            publisher.cancel()
        await self.rt.finish_deletion(self)

    async def _sleep_or_delete(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.deleting.wait(), timeout=seconds)

    def _waiting_all(self, reason: str, message: str) -> None:
        for r in self.init + self.main:
            r.view.state, r.view.reason, r.view.message = "waiting", reason, message
        self.pod_message = (reason, message)
        log.warning("pod %s/%s: %s: %s", self.ns, self.name, reason, message)
        self._notify()

    def _notify(self) -> None:
        self.changed.set()

    # -- containers --------------------------------------------------------
    def _pidfile(self, r: Running) -> Path:
        return self.dir / f"{r.view.name}.pid"

    async def _start(self, r: Running) -> asyncio.subprocess.Process | None:
        c = r.spec
        try:
            sc = {**(self.pod["spec"].get("securityContext") or {}),
                  **(c.get("securityContext") or {})}
            if sc.get("runAsUser") == 0:
                raise PodSpecError("CreateContainerConfigError",
                                   "the dev cluster runs no container as root (runAsUser: 0)")
            program = images.lookup(c.get("image", ""))
            secrets = await self.rt.prefetch(self.ns, c, secret=True)
            cmaps = await self.rt.prefetch(self.ns, c, secret=False)
            base = {
                "PATH": program.path,
                "HOME": "/tmp",
                "HOSTNAME": self.name,
                "LANG": "C.UTF-8",
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(self.rt.settings.apiserver_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.rt.settings.apiserver_port),
                "RINGKEEPER_POD_IP": self.ip,
            }
            if self.rt.settings.podnet:
                base["LD_PRELOAD"] = str(self.rt.settings.podnet)
            env = container_env(self.pod, c, pod_ip=self.ip, node=self.rt.settings.node,
                                secrets=lambda ns, n: secrets.get(n),
                                config_maps=lambda ns, n: cmaps.get(n), base=base)
            argv = [expand(a, env) for a in (c.get("command") or [])]
            args = [expand(a, env) for a in (c.get("args") or [])]
            if not argv and program.entrypoint:
                argv = list(program.entrypoint)
            argv = program.resolve(argv + args if argv else args)
            mounts = self._network_files() + volumes.mounts_for(c, self.volumes)
            # Volumes are owned by the pod user, which covers what fsGroup would grant.
            full = process.launch_argv(argv=argv, mounts=mounts, workdir=c.get("workingDir"),
                                       user=self.rt.settings.user, groups=[])
        except PodSpecError as exc:
            r.view.state, r.view.reason, r.view.message = "waiting", exc.reason, str(exc)
            log.warning("pod %s/%s container %s: %s", self.ns, self.name, r.view.name, exc)
            self._notify()
            return None
        logfile = (self.dir / f"{r.view.name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *full, stdin=asyncio.subprocess.DEVNULL, stdout=logfile,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
        )
        logfile.close()
        self._pidfile(r).write_text(str(proc.pid))
        r.proc = proc
        r.view.state, r.view.reason, r.view.message = "running", None, None
        r.view.started_at, r.view.pid = now(), proc.pid
        r.view.ready = False
        r.view.started = "startupProbe" not in c
        r.startup = ProbeTracker.for_probe(c["startupProbe"]) if "startupProbe" in c else None
        r.readiness = (ProbeTracker.for_probe(c["readinessProbe"])
                       if "readinessProbe" in c else None)
        r.liveness = ProbeTracker.for_probe(c["livenessProbe"]) if "livenessProbe" in c else None
        if r.readiness is None and r.view.started:
            r.view.ready = True
        log.info("pod %s/%s container %s started (pid %d, %s)", self.ns, self.name,
                 r.view.name, proc.pid, self.ip)
        self._notify()
        return proc

    def _network_files(self) -> list[process.Mount]:
        """Per-pod /etc/hosts and /etc/resolv.conf, as a kubelet writes them.

        There is no cluster DNS here. Without these files a pod's name lookups (Python's
        getfqdn, say) would ask the host's nameserver, off this machine; with them, names
        resolve from the hosts file and DNS goes to a loopback address nothing serves.
        """
        hosts = self.dir / "etc-hosts"
        resolv = self.dir / "resolv.conf"
        if not hosts.exists():
            host = self.pod["spec"].get("hostname") or self.name
            sub = self.pod["spec"].get("subdomain")
            fqdn = f"{host}.{sub}.{self.ns}.svc.cluster.local" if sub else host
            hosts.write_text(f"# Managed by the ringkeeper-dev runtime.\n"
                             f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
                             f"{self.ip}\t{fqdn} {host}\n")
            resolv.write_text("# Managed by the ringkeeper-dev runtime: no cluster DNS.\n"
                              f"nameserver {NO_DNS}\noptions timeout:1 attempts:1\n")
        return [process.Mount(str(hosts), "/etc/hosts", True),
                process.Mount(str(resolv), "/etc/resolv.conf", True)]

    def _exited(self, r: Running, code: int, reason: str | None = None) -> None:
        r.view.state, r.view.exit_code, r.view.finished_at = "terminated", code, now()
        r.view.reason = reason or ("Completed" if code == 0 else "Error")
        r.view.ready = False
        r.view.pid = None
        self._pidfile(r).unlink(missing_ok=True)
        self._notify()

    async def _run_once(self, r: Running) -> int:
        proc = await self._start(r)
        if proc is None:
            await self._sleep_or_delete(2)
            return -1
        code = await proc.wait()
        self._exited(r, code)
        if code != 0:
            r.view.last_state = {"terminated": r.view.status()["state"]["terminated"]}
            r.view.restart_count += 1
        return code

    async def _supervise(self, r: Running, policy: str) -> None:
        while not self.deleting.is_set() and not r.stopping:
            proc = await self._start(r)
            if proc is None:
                await self._sleep_or_delete(2)
                continue
            probes = asyncio.create_task(self._probe(r, proc))
            started = asyncio.get_running_loop().time()
            code = await proc.wait()
            probes.cancel()
            self._exited(r, code)
            if self.deleting.is_set() or r.stopping:
                return
            if not should_restart(policy, code):
                return
            r.view.last_state = {"terminated": r.view.status()["state"]["terminated"]}
            r.view.restart_count += 1
            # A container that ran a while restarts at once; a crash loop backs off.
            ran_long = asyncio.get_running_loop().time() - started > 10
            delay = 0.0 if ran_long else restart_delay(r.view.restart_count)
            log.info("pod %s/%s container %s exited %s; restart #%d in %.1fs", self.ns,
                     self.name, r.view.name, code, r.view.restart_count, delay)
            r.view.state, r.view.reason = "waiting", "CrashLoopBackOff" if delay else "Restarting"
            self._notify()
            await self._sleep_or_delete(delay)

    async def _probe(self, r: Running, proc: asyncio.subprocess.Process) -> None:
        c = r.spec
        if r.startup is not None:
            ok = await self._probe_loop(r, proc, c["startupProbe"], r.startup, until_pass=True)
            if not ok:
                return
            r.view.started = True
            if r.readiness is None:
                r.view.ready = True
            self._notify()
        loops = []
        if r.readiness is not None:
            loops.append(self._probe_loop(r, proc, c["readinessProbe"], r.readiness))
        if r.liveness is not None:
            loops.append(self._probe_loop(r, proc, c["livenessProbe"], r.liveness))
        if loops:
            await asyncio.gather(*loops)

    async def _probe_loop(self, r: Running, proc: asyncio.subprocess.Process,
                          probe: dict[str, Any], tracker: ProbeTracker,
                          until_pass: bool = False) -> bool:
        period = float(probe.get("periodSeconds", 10))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while proc.returncode is None:
            ok = await self._check(probe, proc)
            passing = tracker.record(ok)
            if tracker is r.readiness and r.view.ready != passing:
                r.view.ready = passing
                self._notify()
            if until_pass and passing:
                return True
            if tracker is not r.readiness and tracker.failed:
                what = "startup" if tracker is r.startup else "liveness"
                log.info("pod %s/%s container %s failed its %s probe: restarting", self.ns,
                         self.name, r.view.name, what)
                await self._terminate(r, proc, float(
                    self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
                return False
            await asyncio.sleep(period)
        return False

    async def _check(self, probe: dict[str, Any], proc: asyncio.subprocess.Process) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                return await asyncio.wait_for(self._http(probe["httpGet"]), timeout)
            if "tcpSocket" in probe:
                port = self._port(probe["tcpSocket"]["port"])
                host = probe["tcpSocket"].get("host") or self.ip
                _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                w.close()
                return True
            if "exec" in probe:
                argv = process.exec_argv(proc.pid, probe["exec"]["command"],
                                         self.rt.settings.user)
                p = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                try:
                    return await asyncio.wait_for(p.wait(), timeout) == 0
                except TimeoutError:
                    p.kill()
                    return False
        except (OSError, TimeoutError, ValueError):
            return False
        return False

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in self.pod["spec"].get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"no port named {port}")

    async def _http(self, get: dict[str, Any]) -> bool:
        port = self._port(get["port"])
        host = get.get("host") or self.ip
        ctx = None
        if get.get("scheme", "HTTP").upper() == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            path = get.get("path", "/")
            headers = "".join(f"{h['name']}: {h['value']}\r\n"
                              for h in get.get("httpHeaders") or [])
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kube-probe/"
                         f"ringkeeper\r\n{headers}\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            parts = line.split()
            return len(parts) >= 2 and 200 <= int(parts[1]) < 400
        finally:
            writer.close()

    async def _terminate(self, r: Running, proc: asyncio.subprocess.Process,
                         grace: float) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped container must see SIGTERM
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0.1))
        except TimeoutError:
            faults.signal_tree(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Processes left behind (a killed server's backends) go with the container.
        faults.signal_tree(proc.pid, signal.SIGKILL)

    async def _stop_all(self, grace: float) -> None:
        for r in self.main + self.init:
            r.stopping = True
        await asyncio.gather(*(self._terminate(r, r.proc, grace) for r in self.main + self.init
                               if r.proc is not None and r.proc.returncode is None))
        for r in self.main:
            for t in r.tasks:
                t.cancel()
        for r in self.main + self.init:
            self._pidfile(r).unlink(missing_ok=True)

    async def _refresh_tokens(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_REFRESH_SECONDS)
            with contextlib.suppress(PodSpecError, ApiException):
                await volumes.materialise(
                    pod=self.pod, pod_dir=self.dir, state=self.rt.settings.state,
                    user=self.rt.settings.user, pod_ip=self.ip, node=self.rt.settings.node,
                    secrets=self.rt.secret, config_maps=self.rt.config_map, token=self.rt.token)

    # -- status --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        spec = self.pod["spec"]
        init_views = [r.view for r in self.init]
        main_views = [r.view for r in self.main]
        phase = pod_phase(init_views, main_views, spec.get("restartPolicy", "Always"))
        if not self.init_done and phase == "Running":
            phase = "Pending"
        gates_ok = True
        conds = pod_conditions(init_done=self.init_done, main=main_views, now=now(),
                               previous=(self.pod.get("status") or {}).get("conditions"),
                               readiness_gates_ok=gates_ok)
        out: dict[str, Any] = {
            "phase": phase,
            "conditions": conds,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": (self.pod.get("status") or {}).get("startTime") or now(),
            "containerStatuses": [v.status() for v in main_views],
        }
        if init_views:
            out["initContainerStatuses"] = [v.status() for v in init_views]
        if self.pod_message:
            out["reason"], out["message"] = self.pod_message
        return out

    async def _replaced(self) -> bool:
        """Whether the pod of this name is gone or is another pod now (another uid)."""
        try:
            pod = await self.rt.core.read_namespaced_pod(self.name, self.ns)
        except ApiException as exc:
            return exc.status == 404
        return bool(pod.metadata.uid != self.uid)

    async def _publish_loop(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            status = self.status()
            comparable = json.dumps(_without_times(status), sort_keys=True)
            if comparable != self.last_status:
                try:
                    # The uid makes the patch a precondition: a pod deleted and recreated
                    # under the same name (a StatefulSet's) must never receive the old
                    # pod's last words ("terminated -9"), which left it not Ready for good.
                    await self.rt.core.patch_namespaced_pod_status(
                        self.name, self.ns, {"metadata": {"uid": self.uid}, "status": status})
                    self.last_status = comparable
                    self._write_meta(status["phase"])
                except ApiException as exc:
                    if exc.status in (404, 409, 422) and await self._replaced():
                        return
                    log.warning("pod %s/%s: status update failed: %s %s", self.ns, self.name,
                                exc.reason, exc.body)
                    await asyncio.sleep(0.5)
                    self.changed.set()
            await asyncio.sleep(0.05)  # coalesce bursts of changes


def _without_times(status: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = json.loads(json.dumps(status))
    for c in s.get("conditions", []):
        c.pop("lastTransitionTime", None)
    return s


class Runtime:
    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.ipam = Ipam(settings.state / "ipam.json", settings.network)
        self.workers: dict[str, PodWorker] = {}

    # -- lookups used by workers ----------------------------------------------
    async def secret(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            s = await self.core.read_namespaced_secret(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return volumes.decode_secret(s.data)

    async def config_map(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            cm = await self.core.read_namespaced_config_map(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.data or {})

    async def prefetch(self, ns: str, c: dict[str, Any], *, secret: bool
                       ) -> dict[str, dict[str, str]]:
        names = set()
        key = "secretRef" if secret else "configMapRef"
        key_ref = "secretKeyRef" if secret else "configMapKeyRef"
        for src in c.get("envFrom") or []:
            if key in src:
                names.add(src[key]["name"])
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get(key_ref)
            if ref:
                names.add(ref["name"])
        out = {}
        for n in names:
            data = await (self.secret(ns, n) if secret else self.config_map(ns, n))
            if data is not None:
                out[n] = data
        return out

    async def token(self, pod: Mapping[str, Any], sat: Mapping[str, Any]) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Any = {
            "spec": {
                "audiences": [sat["audience"]] if sat.get("audience") else None,
                "expirationSeconds": int(sat.get("expirationSeconds", 3607)),
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                   "uid": meta["uid"]},
            }
        }
        resp = await self.core.create_namespaced_service_account_token(sa, meta["namespace"],
                                                                        body)
        return str(resp.status.token)

    # -- pods -------------------------------------------------------------------
    async def bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body: Any = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.settings.node}}
        try:
            await self.core.create_namespaced_binding(meta["namespace"], body,
                                                      _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"],
                            exc.reason)

    def handle(self, event: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        spec = pod.get("spec", {})
        uid = meta["uid"]
        if event == "DELETED":
            w = self.workers.get(uid)
            if w is not None:
                w.deleting.set()
            return
        if not spec.get("nodeName"):
            if not meta.get("deletionTimestamp"):
                asyncio.get_running_loop().create_task(self.bind(pod))
            return
        if spec["nodeName"] != self.settings.node:
            return
        phase = (pod.get("status") or {}).get("phase")
        w = self.workers.get(uid)
        if w is None:
            if meta.get("deletionTimestamp"):
                asyncio.get_running_loop().create_task(self._force_delete(pod))
                return
            if phase in ("Succeeded", "Failed"):
                return
            w = PodWorker(self, pod)
            self.workers[uid] = w
            w.task = asyncio.get_running_loop().create_task(w.run())
        else:
            w.update(pod)

    async def _force_delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(
                                                uid=meta["uid"])))

    async def finish_deletion(self, w: PodWorker) -> None:
        self.ipam.release(w.uid)
        volumes.remove_pod_dir(w.dir)
        self.workers.pop(w.uid, None)
        if w.pod["metadata"].get("deletionTimestamp"):
            await self._force_delete(w.pod)
        log.info("pod %s/%s removed", w.ns, w.name)

    async def watch_pods(self) -> None:
        while True:
            try:
                listing = await self.core.list_pod_for_all_namespaces()
                seen = set()
                for item in listing.items:
                    pod = self.api.sanitize_for_serialization(item)
                    seen.add(pod["metadata"]["uid"])
                    self.handle("ADDED", pod)
                for uid, w in list(self.workers.items()):
                    if uid not in seen:
                        w.deleting.set()
                rv = listing.metadata.resource_version
                w_ = watch.Watch()
                async with w_.stream(self.core.list_pod_for_all_namespaces,
                                     resource_version=rv, timeout_seconds=300,
                                     allow_watch_bookmarks=False) as stream:
                    async for ev in stream:
                        obj = ev["object"]
                        pod = obj if isinstance(obj, dict) else \
                            self.api.sanitize_for_serialization(obj)
                        if ev["type"] == "ERROR":
                            break
                        self.handle(ev["type"], pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must survive API hiccups
                log.warning("pod watch restarting: %s", exc)
                await asyncio.sleep(1)

    async def watch_claims(self) -> None:
        """Remove a PVC's folder once the claim is gone (after pvc-protection lets it go)."""
        while True:
            try:
                w_ = watch.Watch()
                async with w_.stream(self.core.list_persistent_volume_claim_for_all_namespaces,
                                     timeout_seconds=300) as stream:
                    async for ev in stream:
                        if ev["type"] == "DELETED":
                            meta = ev["object"].metadata
                            path = volumes.pvc_dir(self.settings.state, meta.namespace, meta.name)
                            volumes.remove_pod_dir(path)
                            log.info("PVC %s/%s deleted: removed %s", meta.namespace,
                                     meta.name, path)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("PVC watch restarting: %s", exc)
                await asyncio.sleep(1)

    async def shutdown(self) -> None:
        workers = list(self.workers.values())
        for w in workers:
            if w.task is not None:
                w.task.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task is not None),
                             return_exceptions=True)
