"""A logical replication connection: the walsender's streaming protocol, read directly.

asyncpg cannot speak the replication sub-protocol (START_REPLICATION answers with
CopyBoth), and reading a slot through SQL peeks makes the source decode every change
twice (peek, then advance) and hand it over only after the whole peek is decoded. On a
replication connection the walsender decodes once, continuously, while this member
applies what came before; the slot moves when the standby status update reports a
flush position, which the link only sends after this member's origin progress for
those transactions is on disk. This module is the minimum of the PostgreSQL v3 wire
protocol that needs: startup, SCRAM-SHA-256 authentication, optional TLS,
START_REPLICATION and CopyBoth framing. It knows nothing about pgoutput.

It never sends a password the server could read: a server asking for a cleartext
password (AuthenticationCleartextPassword) or an MD5 hash (which is as good as the
password for logging in elsewhere) is refused before anything is sent. Every member
Ringkeeper runs uses scram-sha-256 (engines' auth_methods[0] in pg_hba), so the rule
holds for Campus members and external ones alike.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..base.lsn import lsn_to_str
from ..contracts.conninfo import SslMode, Target, parse_dsn, tls_context

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
PG_EPOCH_UNIX = 946684800  # 2000-01-01 in Unix seconds
READ_CHUNK = 1 << 18

_HEAD = struct.Struct(">cI")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")
_I32 = struct.Struct(">i")


class ReplicationError(RuntimeError):
    """The server refused or broke the replication session (message from the server)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class AuthRefused(ReplicationError):
    """The server asked for an authentication method that would hand it the password."""


# AuthenticationCleartextPassword and AuthenticationMD5Password: both give the server
# (or whoever answers in its place) the password or a hash that logs in as well.
REFUSED_AUTH = {3: "a cleartext password", 5: "an MD5 password hash"}


@dataclass(frozen=True)
class ConnParams:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None

    @classmethod
    def from_dsn(cls, dsn: str) -> ConnParams:
        """A postgresql:// URL as the ring configuration carries it (conninfo's rules:
        a host is a host, no parameters but the ones conninfo writes)."""
        t = parse_dsn(dsn)
        return cls(host=t.host, port=t.port, user=t.user, password=t.password,
                   database=t.database, sslmode=str(t.sslmode), sslrootcert=t.sslrootcert)

    def target(self) -> Target:
        return Target(host=self.host, port=self.port, database=self.database, user=self.user,
                      password=self.password, sslmode=SslMode(self.sslmode),
                      sslrootcert=self.sslrootcert)


async def ensure_scram(dsn: str, *, timeout: float = 10.0) -> None:
    """Before asyncpg logs in to an external member (sslmode=verify-full, the only mode
    conninfo builds for them), show that the server authenticates with SCRAM: asyncpg
    would answer a cleartext or MD5 request with the password. Campus members (scram-
    sha-256 in the pg_hba the operator writes) are not probed."""
    if parse_dsn(dsn).sslmode == SslMode.VERIFY_FULL:
        await WalStream.check_auth(dsn, timeout=timeout)


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _error_fields(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def scram_client_proof(password: str, client_first_bare: str, server_first: str,
                       client_final_bare: str) -> tuple[bytes, bytes]:
    """(ClientProof, expected ServerSignature) of RFC 5802 with SHA-256."""
    attrs = dict(p.split("=", 1) for p in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    auth = f"{client_first_bare},{server_first},{client_final_bare}".encode()
    signature = hmac.digest(stored, auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return proof, hmac.digest(server_key, auth, "sha256")


class WalStream:
    """One walsender session. Not safe for concurrent readers; one link owns it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer
        self._buf = bytearray()
        self._pos = 0
        self.flushed = 0  # last flush position reported to the server
        self.server_wal_end = 0
        # Liveness (see silence): when bytes last came from the server, and since when
        # read() has been waiting on the socket with nothing to return (None: it is not).
        self.heard_at = time.monotonic()
        self.waiting_since: float | None = None
        self._ping_at: float | None = None  # the first ping not answered yet
        # Set when a silence was excused (the source's server says its walsender is
        # busy, core.liveness.walsender_busy); cleared by the next bytes from it.
        self.busy_since: float | None = None

    # -- connection --------------------------------------------------------------------
    @classmethod
    async def open(cls, dsn: str, *, application_name: str = "ringkeeper-sync",
                   timeout: float = 10.0) -> WalStream:
        p = ConnParams.from_dsn(dsn)
        return await asyncio.wait_for(cls._open(p, application_name), timeout)

    @classmethod
    async def check_auth(cls, dsn: str, *, timeout: float = 10.0) -> None:
        """Log in once over an ordinary (not replication) session and leave: raises
        AuthRefused if the server asks for a cleartext or MD5 password.

        asyncpg answers those requests without asking us, so before asyncpg connects to
        an external member, this shows that the server takes SCRAM. (A server that asks
        differently on the next connection is not stopped by this; verify-full against
        the ring's own CA is what decides who may answer at that address.)"""
        p = ConnParams.from_dsn(dsn)
        ws = await asyncio.wait_for(cls._open(p, "ringkeeper-auth-check", replication=False),
                                    timeout)
        await ws.close()

    @classmethod
    async def _open(cls, p: ConnParams, application_name: str, *,
                    replication: bool = True) -> WalStream:
        if p.host.startswith("/"):
            # A Unix socket folder, as libpq reads a host: how a sidecar reaches its own
            # database (sync/run.py), e.g. a parent streaming its slot for a satellite.
            # Never TLS on a local socket (libpq does not use it there either).
            reader, writer = await asyncio.open_unix_connection(f"{p.host}/.s.PGSQL.{p.port}")
            ctx = None
        else:
            reader, writer = await asyncio.open_connection(p.host, p.port)
            ctx = tls_context(p.target())
        if ctx is not None:
            writer.write(struct.pack(">ii", 8, SSL_REQUEST))
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer == b"S":
                await writer.start_tls(ctx, server_hostname=p.host)
            elif p.sslmode in ("require", "verify-ca", "verify-full"):
                writer.close()
                raise ReplicationError(f"{p.host}:{p.port} does not offer TLS "
                                       f"(sslmode={p.sslmode})")
        self = cls(reader, writer)
        params = {"user": p.user, "database": p.database,
                  "application_name": application_name, "client_encoding": "UTF8"}
        if replication:
            params["replication"] = "database"
        body = _I32.pack(PROTOCOL_V3) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        writer.write(_I32.pack(len(body) + 4) + body)
        await self._authenticate(p)
        while True:
            kind, body = await self._next()
            if kind == b"Z":
                return self
            if kind == b"E":
                self._raise(body)
            # ParameterStatus, BackendKeyData, NoticeResponse: nothing to do

    async def _authenticate(self, p: ConnParams) -> None:
        nonce = ""
        first_bare = ""
        expect_server: bytes | None = None
        while True:
            kind, body = await self._next()
            if kind == b"E":
                self._raise(body)
            if kind != b"R":
                raise ReplicationError(f"unexpected message {kind!r} during authentication")
            (code,) = _I32.unpack_from(body, 0)
            if code == 0:
                return
            if code in REFUSED_AUTH:
                self._w.close()
                raise AuthRefused(f"server at {p.host}:{p.port} asks for "
                                  f"{REFUSED_AUTH[code]}; Ringkeeper only authenticates "
                                  "with SCRAM-SHA-256 (set password_encryption and "
                                  "pg_hba to scram-sha-256)")
            if p.password is None and code == 10:
                raise ReplicationError(f"server at {p.host}:{p.port} asks for a password "
                                       "and the connection string has none")
            pw = p.password or ""
            if code == 10:  # SASL
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                if "SCRAM-SHA-256" not in mechanisms:
                    raise ReplicationError(f"no supported SASL mechanism in {mechanisms}")
                nonce = base64.b64encode(os.urandom(18)).decode()
                first_bare = f"n=,r={nonce}"
                first = ("n,," + first_bare).encode()
                self._w.write(_msg(b"p", b"SCRAM-SHA-256\0" + _I32.pack(len(first)) + first))
            elif code == 11:  # SASL continue
                server_first = body[4:].decode()
                attrs = dict(x.split("=", 1) for x in server_first.split(","))
                if not attrs.get("r", "").startswith(nonce):
                    raise ReplicationError("SCRAM: server nonce does not extend ours")
                final_bare = f"c=biws,r={attrs['r']}"
                proof, expect_server = scram_client_proof(pw, first_bare, server_first,
                                                          final_bare)
                final = f"{final_bare},p={base64.b64encode(proof).decode()}"
                self._w.write(_msg(b"p", final.encode()))
            elif code == 12:  # SASL final
                attrs = dict(x.split("=", 1) for x in body[4:].decode().split(","))
                got = base64.b64decode(attrs.get("v", ""))
                if expect_server is None or not hmac.compare_digest(got, expect_server):
                    raise ReplicationError("SCRAM: the server's signature does not match")
            else:
                raise ReplicationError(f"unsupported authentication request {code}")
            await self._w.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._w.write(_msg(b"X", b""))
            self._w.close()
            await asyncio.wait_for(self._w.wait_closed(), 2)

    def abort(self) -> None:
        """Drop the connection without a goodbye (the server may be hung)."""
        self._w.transport.abort()

    # -- framing -----------------------------------------------------------------------
    def _raise(self, body: bytes) -> None:
        f = _error_fields(body)
        raise ReplicationError(f.get("M", "server error"), f.get("C"))

    async def _fill(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        chunk = await self._r.read(READ_CHUNK)
        if not chunk:
            raise ConnectionResetError("replication connection closed by the server")
        self.heard_at = time.monotonic()
        self._ping_at = None
        self.busy_since = None
        self._buf += chunk

    def _take(self) -> tuple[bytes, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        kind, n = _HEAD.unpack_from(buf, pos)
        end = pos + 1 + n
        if len(buf) < end:
            return None
        self._pos = end
        return kind, bytes(buf[pos + 5:end])

    async def _next(self) -> tuple[bytes, bytes]:
        while True:
            got = self._take()
            if got is not None:
                return got
            await self._fill()

    # -- streaming ---------------------------------------------------------------------
    async def start_logical(self, slot: str, start_lsn: int,
                            options: Sequence[tuple[str, str]]) -> None:
        opts = ", ".join(f'"{k}" \'{v.replace(chr(39), chr(39) * 2)}\'' for k, v in options)
        ident = '"' + slot.replace('"', '""') + '"'
        self._w.write(_msg(b"Q", (f"START_REPLICATION SLOT {ident} LOGICAL "
                                  f"{lsn_to_str(start_lsn)} ({opts})").encode() + b"\0"))
        while True:
            kind, body = await self._next()
            if kind == b"W":
                self.flushed = start_lsn
                return
            if kind == b"E":
                self._raise(body)

    def silence(self, now: float) -> float:
        """Seconds a ping (feedback(reply=True)) has gone unanswered while the reader
        waited on the socket.

        A live walsender answers a ping within milliseconds. Only an unanswered ping
        counts (a walsender that is not asked stays quiet for wal_sender_timeout/2),
        and only while the reader waits (a reader blocked handing rows to a slow
        applier leaves answers unread): a long silence means a hung server or network,
        never a busy member."""
        if self.waiting_since is None or self._ping_at is None:
            return 0.0
        return max(0.0, now - max(self._ping_at, self.waiting_since))

    def excuse(self, now: float) -> None:
        """The unanswered ping is forgiven: the source's server answered for its busy
        walsender. Silence counts again from the next ping."""
        self._ping_at = None
        if self.busy_since is None:
            self.busy_since = now

    def feedback(self, flush_lsn: int | None = None, *, reply: bool = False) -> None:
        """Standby status update: everything before `flush_lsn` is safe downstream.

        With `reply`, the walsender answers at once with a keepalive (it does so for
        any status update that asks): the ping that liveness relies on, since a
        walsender that hears from us never sends keepalives of its own."""
        if flush_lsn is not None and flush_lsn > self.flushed:
            self.flushed = flush_lsn
        if reply and self._ping_at is None:
            self._ping_at = time.monotonic()
        now = int((time.time() - PG_EPOCH_UNIX) * 1_000_000)
        lsn = self.flushed
        self._w.write(_msg(b"d", _STATUS.pack(b"r", lsn, lsn, lsn, now, 1 if reply else 0)))

    async def drain(self) -> None:
        await self._w.drain()

    async def read(self, max_messages: int = 5000) -> list[bytes]:
        """Waits for at least one change or keepalive, then returns the payloads
        (pgoutput messages) already buffered; `server_wal_end` has the keepalives'.

        Keepalives are answered here (with the last flush position)."""
        out: list[bytes] = []
        append = out.append
        head = _HEAD.unpack_from
        ping = False
        while True:
            buf, pos, size = self._buf, self._pos, len(self._buf)
            while len(out) < max_messages and size - pos >= 5:
                kind, n = head(buf, pos)
                end = pos + 1 + n
                if size < end:
                    break
                if kind == b"d" and buf[pos + 5] == 0x77:  # CopyData, XLogData ('w')
                    append(bytes(buf[pos + 30:end]))  # after wal start, wal end, send time
                    pos = end
                    continue
                body = bytes(buf[pos + 5:end])
                pos = end
                if kind == b"d" and body[:1] == b"k":
                    wal_end, _, want = _KEEPALIVE.unpack_from(body, 1)
                    self.server_wal_end = max(self.server_wal_end, wal_end)
                    ping = True
                    if want:
                        self.feedback()
                elif kind == b"E":
                    self._pos = pos
                    self._raise(body)
                elif kind in (b"c", b"C", b"Z"):
                    self._pos = pos
                    raise ConnectionResetError("the server ended the replication stream")
            self._pos = pos
            if out or ping:
                self.waiting_since = None
                return out
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            await self._fill()
