"""A replication ring of real local PostgreSQL servers with real sync sidecars.

Sidecars run in this process (asyncio tasks) or as `ringkeeper sync` processes
(for kill tests). The ring config is the same JSON file the CLI reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from pgserver import PgServer
from ringkeeper.sync.configsource import file_config
from ringkeeper.sync.sidecar import Sidecar
from waiting import await_until as wait_until

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS lis;
CREATE TABLE IF NOT EXISTS lis.samples (
    id bigint PRIMARY KEY,
    campus text NOT NULL,
    patient text,
    status text NOT NULL,
    result numeric(12, 3),
    collected_at timestamptz NOT NULL DEFAULT now(),
    flags text[],
    payload bytea
);
CREATE TABLE IF NOT EXISTS lis.results (
    sample_id bigint NOT NULL,
    test_code text NOT NULL,
    value double precision,
    note text,
    PRIMARY KEY (sample_id, test_code)
);
"""

CHECKSUM = {
    "lis.samples": "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
                   "ORDER BY id)), '') FROM lis.samples t",
    "lis.results": "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
                   "ORDER BY sample_id, test_code)), '') FROM lis.results t",
}


@dataclass
class LocalRing:
    majors: tuple[str, ...]
    ring: str = "lis"
    topology: str = "ring"
    bypass_after: int = 5
    priorities: dict[str, int] = field(default_factory=dict)
    policy: str = "lastWriterWins"  # conflicts.policy
    seed: tuple[str, ...] = ()
    names: list[str] = field(default_factory=list)
    servers: dict[str, PgServer] = field(default_factory=dict)
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    members_in_config: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [chr(ord("a") + i) for i in range(len(self.majors))]
        self.root = Path(f"/tmp/rk-ring-{os.getpid()}-{id(self)}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "ring.json"
        if not self.members_in_config:
            self.members_in_config = list(self.names)

    # -- servers -------------------------------------------------------------------------
    def start_servers(self, settings: dict[str, str] | None = None) -> None:
        for name, major in zip(self.names, self.majors, strict=True):
            s = PgServer(major, name=name, settings=dict(settings or {}))
            s.start()
            self.servers[name] = s
            s.psql(SCHEMA)
        self.write_config()

    def write_config(self) -> None:
        spec = {
            "members": [{"name": n, "priority": self.priorities.get(n, 100),
                         "external": {"host": "127.0.0.1", "database": "postgres",
                                      "engine": "postgresql",
                                      "version": self.servers[n].major,
                                      "passwordSecret": {"name": "x", "key": "y"},
                                      "tls": {"caSecret": {"name": "x"}}}}
                        for n in self.members_in_config],
            "topology": self.topology,
            "conflicts": {"policy": self.policy},
            "tables": {"include": ["lis.*"]},
            "healing": {"bypassAfterSeconds": self.bypass_after,
                        "maxSlotWalKeepSize": "1Gi"},
        }
        data = {"ring": self.ring, "spec": spec, "seed": list(self.seed),
                "members": {n: {"dsn": self.servers[n].dsn(), "engine": "postgresql",
                                "version": self.servers[n].major}
                            for n in self.members_in_config}}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.config_path)

    def destroy(self) -> None:
        for name in list(self.procs):
            self.kill_process(name)
        for s in self.servers.values():
            s.destroy()

    async def conn(self, name: str) -> asyncpg.Connection:
        c: asyncpg.Connection = await asyncpg.connect(self.servers[name].dsn())
        return c

    # -- sidecars ------------------------------------------------------------------------
    def start_sidecar(self, name: str) -> None:
        sc = Sidecar(name, self.servers[name].dsn(), file_config(str(self.config_path)),
                     hold_every=0.5)
        ev = asyncio.Event()
        self.sidecars[name] = sc
        self.tasks[name] = (asyncio.create_task(sc.run(ev)), ev)

    async def all_streaming(self) -> bool:
        """Every in-process sidecar is Primary with links, all of them Streaming."""
        return all(sc.state.role == "Primary" and bool(sc.state.links) and all(
            lk.state == "Streaming" for lk in sc.state.links.values())
            for sc in self.sidecars.values())

    async def start_streaming(self, timeout: float = 45) -> None:
        """Start every member's sidecar in-process and wait until every link streams."""
        for n in self.names:
            self.start_sidecar(n)
        await wait_until("every link streaming", self.all_streaming, timeout)

    async def stop_sidecar(self, name: str) -> None:
        task, ev = self.tasks.pop(name)
        ev.set()
        await asyncio.wait_for(task, 30)

    async def stop_all(self) -> None:
        for name in list(self.tasks):
            await self.stop_sidecar(name)

    def start_process(self, name: str, log: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "ringkeeper", "sync", "--member", name,
                "--local-dsn", self.servers[name].dsn(), "--ring-file", str(self.config_path),
                "--status-port", "0"]
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True)

    def term_process(self, name: str) -> None:
        """Stop a sidecar process the way Kubernetes does (SIGTERM, then wait)."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill_process(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    # -- data ----------------------------------------------------------------------------
    async def checksums(self, table: str = "lis.samples",
                        members: list[str] | None = None) -> dict[str, str]:
        out = {}
        for n in members or self.names:
            c = await self.conn(n)
            try:
                await c.execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
                out[n] = await c.fetchval(CHECKSUM[table])
            finally:
                await c.close()
        return out

    async def wait_converged(self, tables: tuple[str, ...] = ("lis.samples",),
                             timeout: float = 90, members: list[str] | None = None) -> None:
        who = members or self.names

        async def same() -> bool:
            for t in tables:
                sums = await self.checksums(t, who)
                if len({sums[n] for n in who}) != 1:
                    return False
            return True

        await wait_until(f"{tables} identical on {who}", same, timeout)
