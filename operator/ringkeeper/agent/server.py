"""The database server as the agent's child process: create, copy, start, stop, promote.

Every engine difference goes through the profile (binary, function and file
names). The agent talks to its own server over the Unix socket with the
superuser's password; nothing here decides *whether* to act, only *how*.
This module owns the server's files and processes; its SQL is `server_sql.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

import asyncpg

from ..base.procs import process_tree
from ..core.instance import DataState
from ..engines import EngineProfile
from .config import InstanceSettings, managed_settings, render
from .server_sql import Credentials, ServerError, ServerSql

log = logging.getLogger("ringkeeper.agent")


class Server(ServerSql):
    """One instance's server: its data folder and its process (SQL: `ServerSql`)."""

    def __init__(self, profile: EngineProfile, data_dir: Path, socket_dir: Path, port: int,
                 creds: Credentials, pod_cidr: str, tls: bool = False) -> None:
        self.profile = profile
        self.data = data_dir
        self.sockets = socket_dir
        self.port = port
        self.creds = creds
        self.pod_cidr = pod_cidr
        self.tls = tls
        self.proc: asyncio.subprocess.Process | None = None
        self.passfile = socket_dir / "pgpass"

    # -- state on disk -------------------------------------------------------
    def data_state(self) -> DataState:
        if not (self.data / "PG_VERSION").exists():
            return DataState.EMPTY
        if (self.data / self.profile.standby_signal).exists():
            return DataState.REPLICA
        return DataState.PRIMARY

    def write_passfile(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        lines = [f"*:*:*:{self.creds.replication_user}:{self.creds.replication_password}",
                 f"*:*:*:{self.creds.superuser}:{self.creds.superuser_password}"]
        tmp = self.passfile.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.passfile)

    def configure(self, settings: InstanceSettings, user_params: dict[str, str]) -> None:
        """Write the managed include file, the hba file and the standby signal."""
        conf = self.data / self.profile.config_file
        include = "include_if_exists = 'ringkeeper.conf'"
        text = conf.read_text() if conf.exists() else ""
        if include not in text:
            conf.write_text(text.rstrip("\n") + "\n" + include + "\n")
        managed = managed_settings(self.profile, settings)
        (self.data / "ringkeeper.conf").write_text(render(managed, user_params, self.profile))
        # ALTER SYSTEM must not override what Ringkeeper manages.
        auto = self.data / self.profile.auto_config_file
        if auto.exists():
            keep = [ln for ln in auto.read_text().splitlines()
                    if ln.split("=")[0].strip() not in managed]
            auto.write_text("\n".join(keep) + "\n")
        hba = self.profile.hba_lines(pod_cidr=self.pod_cidr,
                                     replication_user=self.creds.replication_user, tls=self.tls)
        (self.data / self.profile.hba_file).write_text("\n".join(hba) + "\n")
        signal_file = self.data / self.profile.standby_signal
        if settings.primary:
            signal_file.unlink(missing_ok=True)
        else:
            signal_file.touch()

    # -- processes -------------------------------------------------------------
    async def _run(self, *argv: str, env: dict[str, str] | None = None,
                   timeout: float = 600) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            raise ServerError(f"{argv[0]} timed out after {timeout:.0f}s") from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed ({proc.returncode}): "
                              f"{text.strip()[-800:]}")
        return text

    def _bin(self, name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise ServerError(f"{name} not found on PATH ({os.environ.get('PATH')})")
        return found

    async def initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        pwfile = self.sockets / "initdb.pw"
        pwfile.write_text(self.creds.superuser_password + "\n")
        pwfile.chmod(0o600)
        try:
            await self._run(self._bin(self.profile.binaries.initdb), "-D", str(self.data),
                            "-U", self.creds.superuser, f"--pwfile={pwfile}",
                            f"--auth-local={self.profile.auth_methods[0]}",
                            f"--auth-host={self.profile.auth_methods[0]}",
                            "-E", "UTF8", "--locale=C", "--data-checksums")
        finally:
            pwfile.unlink(missing_ok=True)

    async def basebackup(self, host: str, port: int) -> None:
        tmp = self.data.with_name(self.data.name + ".incoming")
        shutil.rmtree(tmp, ignore_errors=True)
        await self._run(self._bin(self.profile.binaries.basebackup), "-h", host, "-p", str(port),
                        "-U", self.creds.replication_user, "-D", str(tmp), "-X", "stream",
                        "-c", "fast", "--no-password",
                        env={"PGPASSFILE": str(self.passfile), "PGCONNECT_TIMEOUT": "5"})
        # Only a complete copy becomes the data folder.
        shutil.rmtree(self.data, ignore_errors=True)
        tmp.rename(self.data)
        self.data.chmod(0o700)

    async def rewind(self, host: str, port: int) -> str:
        """pg_rewind from the new primary; returns its last line of output.

        A checkpoint on the source first: before 16, pg_rewind reads the source's
        timeline from its control file, which a promotion updates only at its next
        checkpoint, so a rewind right after a failover found "the same timeline", did
        nothing, and the former primary could never follow (seen on 15).
        """
        try:
            conn = await asyncio.wait_for(asyncpg.connect(
                host=host, port=port, user=self.creds.superuser,
                password=self.creds.superuser_password,
                database=self.profile.default_database, timeout=5), 6)
            try:
                await conn.execute("CHECKPOINT", timeout=600)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ServerError(f"checkpoint on the rewind source failed: {exc}") from exc
        src = (f"host={host} port={port} user={self.creds.superuser} dbname="
               f"{self.profile.default_database} connect_timeout=5")
        out = await self._run(self._bin(self.profile.binaries.rewind), "-D", str(self.data),
                              f"--source-server={src}", "--progress",
                              env={"PGPASSFILE": str(self.passfile)})
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    async def crash_recovery(self, timeout: float = 600) -> None:
        """Finish crash recovery with no client able to connect, and shut down cleanly.

        pg_rewind needs a cleanly shut down target; the single-user server listens on
        no socket at all, replays the WAL, writes a shutdown checkpoint and exits at the
        end of its (empty) input. The standby signal must be gone: a single-user server
        refuses standby mode.
        """
        (self.data / self.profile.standby_signal).unlink(missing_ok=True)
        if not self._postmaster_alive():
            (self.data / "postmaster.pid").unlink(missing_ok=True)  # left by a killed server
        await self._run(self._bin(self.profile.binaries.server), "--single", "-D",
                        str(self.data), self.profile.default_database, timeout=timeout)
        if not await self.shut_down_cleanly():
            raise ServerError("crash recovery in single-user mode did not leave a cleanly "
                              "shut down data folder")

    async def shut_down_cleanly(self) -> bool:
        """Whether the control file says the last shutdown was clean (not a crash)."""
        out = await self._run(self._bin(self.profile.binaries.controldata), str(self.data))
        for line in out.splitlines():
            if line.startswith("Database cluster state:"):
                return line.split(":", 1)[1].strip() in ("shut down", "shut down in recovery")
        return False

    def wipe(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    async def start(self, timeout: float = 120) -> None:
        if self.running:
            return
        if not self._postmaster_alive():
            (self.data / "postmaster.pid").unlink(missing_ok=True)  # left by a killed server
        logf = (self.sockets / "server.log").open("ab")
        # A session of its own: a signal meant for the agent's process group (a terminal's
        # Ctrl-C, a supervisor's SIGTERM) never starts a server shutdown behind its back.
        self.proc = await asyncio.create_subprocess_exec(
            self._bin(self.profile.binaries.server), "-D", str(self.data),
            stdout=logf, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = asyncio.get_running_loop().time() + timeout
        last: BaseException | str | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self.proc.returncode is not None:
                raise ServerError(f"server exited with {self.proc.returncode}: "
                                  + self.log_tail())
            # The postmaster writes "ready" (or "standby") into its pid file once it accepts
            # connections; connecting earlier can stall a client in the startup handshake.
            state = self._postmaster_state()
            if state in ("ready", "standby"):
                try:
                    conn = await self.connect(timeout=2)
                    await conn.close()
                    return
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    last = exc
            else:
                last = f"postmaster state {state!r}"
            log.debug("waiting for the server: %s", last)
            await asyncio.sleep(0.2)
        raise ServerError(f"server did not accept connections in time ({last}): "
                          + self.log_tail())

    def _postmaster_state(self) -> str | None:
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return lines[7].strip() if len(lines) > 7 else None

    def _postmaster_alive(self) -> bool:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.sockets / "server.log").read_text(
                errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if not self.running or self.proc is None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
               "immediate": signal.SIGQUIT}[mode]
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:  # a stopped (frozen) server ignores everything but SIGKILL
            await self.kill()

    def kill_now(self) -> bool:
        """SIGKILL the postmaster and every process it started; True if one was running.

        Synchronous on purpose: an agent that finds it was frozen calls this before it
        awaits anything, so its server (thawed in the same instant) serves as little as
        the scheduler allows. Backends call setsid(), so a process-group kill would miss
        them: the postmaster is stopped first (it forks no more), then its whole tree is
        killed (SIGKILL reaches stopped processes too). Crash recovery on the next start
        keeps the data safe.
        """
        if not self.running or self.proc is None:
            return False
        root = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(root, signal.SIGSTOP)
        for pid in process_tree(root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return True

    async def kill(self) -> None:
        """kill_now, then reap the postmaster."""
        if self.kill_now() and self.proc is not None:
            await self.proc.wait()

    async def reload(self) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
