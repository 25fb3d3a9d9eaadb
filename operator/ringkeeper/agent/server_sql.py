"""The agent's SQL to its own database server: status, promotion, physical slots and
the generated roles, plus the types the server's other half shares (errors, credentials,
the status report).

Kept apart from `server.py`, which owns the server's files and processes (initdb, copies,
start, stop, kill), because this half only ever talks to a running server over its Unix
socket; `Server` inherits it, so callers see one object. Nothing here decides *whether*
to act, only *how*.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ..engines import EngineProfile
from .config import slot_name


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    superuser: str
    superuser_password: str
    replication_user: str
    replication_password: str
    app_user: str
    app_password: str
    app_database: str


@dataclass
class Status:
    running: bool
    in_recovery: bool | None = None
    current_lsn: str | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    timeline: int | None = None
    receiver: str | None = None
    standbys: list[dict[str, Any]] | None = None
    sync_names: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.sync_names is not None:
            out["sync_names"] = self.sync_names  # '' (asynchronous) is information too
        return out


class ServerSql:
    """SQL to the server of one instance (mixed into `Server`, which sets the attributes
    below and says whether the server is running)."""

    profile: EngineProfile
    data: Path
    sockets: Path
    port: int
    creds: Credentials

    @property
    def running(self) -> bool:
        raise NotImplementedError

    async def create_roles(self) -> None:
        c = self.creds
        conn = await self.connect()
        try:
            for user, password, extra in ((c.replication_user, c.replication_password,
                                           "REPLICATION"),
                                          (c.app_user, c.app_password, "")):
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
                verb = "ALTER" if exists else "CREATE"
                await conn.execute(f'{verb} ROLE "{user}" LOGIN {extra} PASSWORD '
                                   f"{_literal(password)}")
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                       c.app_database):
                await conn.execute(f'CREATE DATABASE "{c.app_database}" OWNER "{c.app_user}"')
            # pg_rewind from this server needs these functions for the replication user.
            for fn in ("pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)",
                       "pg_read_binary_file(text)", "pg_read_binary_file(text, bigint, bigint, "
                       "boolean)"):
                await conn.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO \"{c.replication_user}\"")
        finally:
            await conn.close()

    async def connect(self, timeout: float = 5, database: str | None = None
                      ) -> asyncpg.Connection:
        # wait_for as well as asyncpg's own timeout: a stalled handshake must not hang the
        # agent's loop.
        return await asyncio.wait_for(asyncpg.connect(
            host=str(self.sockets), port=self.port, user=self.creds.superuser,
            password=self.creds.superuser_password,
            database=database or self.profile.default_database, timeout=timeout), timeout + 1)

    async def status(self) -> Status:
        if not self.running:
            return Status(running=False)
        try:
            conn = await self.connect(timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            return Status(running=True, error=str(exc))
        try:
            row = await conn.fetchrow(self.profile.status_query())
            st = Status(running=True, in_recovery=row["in_recovery"],
                        current_lsn=row["current_lsn"], receive_lsn=row["receive_lsn"],
                        replay_lsn=row["replay_lsn"], timeline=row["timeline"],
                        receiver=row["receiver_status"])
            if not row["in_recovery"]:
                st.standbys = [dict(r) for r in await conn.fetch(
                    self.profile.replication_query())]
                st.sync_names = str(await conn.fetchval("SHOW synchronous_standby_names"))
            return st
        except asyncpg.PostgresError as exc:
            return Status(running=True, error=str(exc))
        finally:
            await conn.close()

    async def promote(self) -> None:
        conn = await self.connect()
        try:
            ok = await conn.fetchval(f"SELECT {self.profile.sql.promote}(true, 60)")
        finally:
            await conn.close()
        if not ok:
            raise ServerError("promotion did not finish within 60 s")
        (self.data / self.profile.standby_signal).unlink(missing_ok=True)

    async def ensure_slots(self, peers: list[str]) -> None:
        """One physical slot per standby, so WAL a standby still needs is kept for it."""
        wanted = {slot_name(p) for p in peers}
        sql = self.profile.sql
        conn = await self.connect()
        try:
            rows = await conn.fetch(f"SELECT slot_name FROM {sql.replication_slots} "
                                    "WHERE slot_type = 'physical' AND slot_name LIKE "
                                    "'ringkeeper\\_%'")
            have = {r["slot_name"] for r in rows}
            for name in sorted(wanted - have):
                await conn.execute(f"SELECT {sql.create_physical_replication_slot}($1, true)",
                                   name)
            for name in sorted(have - wanted):
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute(f"SELECT {sql.drop_replication_slot}($1)", name)
        finally:
            await conn.close()

    async def wait_receiver_stopped(self, timeout: float = 10) -> Status:
        deadline = asyncio.get_running_loop().time() + timeout
        st = await self.status()
        while st.receiver and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            st = await self.status()
        return st


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
