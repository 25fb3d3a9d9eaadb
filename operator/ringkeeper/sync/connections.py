"""The sync sidecar's SQL connections: opened with a statement time-out, closed without
waiting on a frozen server.

Every sync module that talks to a member (the stream, the sidecar, the seeding copy,
the slot bookkeeping) connects through here, so no connection of the sidecar can wait
on a hung server for longer than its caller allows.
"""

from __future__ import annotations

import contextlib

import asyncpg

from .walstream import ensure_scram


async def connect(dsn: str, *, command_timeout: float,
                  timeout: float = 5.0) -> asyncpg.Connection:
    """A connection whose statements time out after `command_timeout` seconds: each
    caller says how long its statements may take (core.liveness), so a frozen server
    costs a bounded wait, never the 300 s that once hid a hung member."""
    await ensure_scram(dsn, timeout=timeout)  # external members: SCRAM or nothing
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=timeout, command_timeout=command_timeout,
        server_settings={"application_name": "ringkeeper-sync"})
    return conn


async def close_quietly(conn: asyncpg.Connection | None, timeout: float = 2.0) -> None:
    """Close a connection without waiting on a server that may be frozen."""
    if conn is None or conn.is_closed():
        return
    with contextlib.suppress(Exception):
        await conn.close(timeout=timeout)
    if not conn.is_closed():
        conn.terminate()
