"""Passwords leave only as SCRAM proofs: a server asking for a cleartext password or an
MD5 hash is refused before a byte of the password is sent.

A real PostgreSQL 17 with TLS and `password` / `md5` lines in pg_hba.conf plays the
external member (verify-full against the test's CA, as the operator builds it); a tiny
fake server shows the password bytes never arrive."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pgserver import PASSWORD, POD_USER, PgServer, unavailable
from ringkeeper.contracts.conninfo import SslMode, Target, build_dsn, root_cert_file
from ringkeeper.sync.connections import connect
from ringkeeper.sync.walstream import AuthRefused, WalStream

pytestmark = pytest.mark.postgres
MAJOR = "17"
SECRET = "Not-For-The-Server-1"


def _pki(root: Path) -> tuple[str, Path, Path]:
    """(CA PEM, server cert, server key) for 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ring test ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "db")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, pem_key = root / "server.crt", root / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(pem_key, 0o600)
    if os.geteuid() == 0:
        for p in (crt, pem_key):
            shutil.chown(p, POD_USER, POD_USER)
    return ca.public_bytes(serialization.Encoding.PEM).decode(), crt, pem_key


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[PgServer, str]]:
    if (why := unavailable(MAJOR)) is not None:
        pytest.skip(why)
    s = PgServer(MAJOR, name="auth")
    ca, crt, key = _pki(s.root)
    s.settings.update({"ssl": "on", "ssl_cert_file": f"'{crt}'", "ssl_key_file": f"'{key}'"})
    s.init()
    (s.data / "pg_hba.conf").write_text(
        "local all all scram-sha-256\n"
        "hostssl all,replication clear 127.0.0.1/32 password\n"
        "hostssl all,replication hashed 127.0.0.1/32 md5\n"
        "host all,replication all 127.0.0.1/32 scram-sha-256\n")
    try:
        s.start()
        s.psql(f"CREATE ROLE clear LOGIN REPLICATION PASSWORD '{SECRET}';"
               f"CREATE ROLE scram LOGIN REPLICATION PASSWORD '{SECRET}';")
        # An MD5-stored password, so the md5 line really asks for an MD5 hash (with a
        # SCRAM verifier PostgreSQL would switch to SCRAM on its own).
        s.psql(f"SET password_encryption = 'md5'; CREATE ROLE hashed LOGIN REPLICATION "
               f"PASSWORD '{SECRET}';")
        yield s, ca
    finally:
        s.destroy()


def _external_dsn(s: PgServer, ca: str, user: str, tmp: Path) -> str:
    """What the operator builds for an external member, with the CA the sidecar writes."""
    return build_dsn(Target(host="127.0.0.1", port=s.port, database="postgres", user=user,
                            password=SECRET, sslmode=SslMode.VERIFY_FULL,
                            sslrootcert=root_cert_file(ca, tmp)))


@pytest.mark.parametrize(("user", "what"), [("clear", "cleartext"), ("hashed", "MD5")])
async def test_cleartext_and_md5_are_refused(server: tuple[PgServer, str], user: str, what: str,
                                             tmp_path: Path) -> None:
    s, ca = server
    dsn = _external_dsn(s, ca, user, tmp_path)
    with pytest.raises(AuthRefused, match=what):
        await WalStream.open(dsn)  # the replication stream
    with pytest.raises(AuthRefused, match=what):
        await connect(dsn, command_timeout=5)  # asyncpg's sessions: probed first, never reached


async def test_scram_over_verify_full_connects(server: tuple[PgServer, str],
                                               tmp_path: Path) -> None:
    """The same path with SCRAM works: the refusals above are about the method."""
    s, ca = server
    dsn = _external_dsn(s, ca, "scram", tmp_path)
    ws = await WalStream.open(dsn)
    await ws.close()
    conn = await connect(dsn, command_timeout=5)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()


async def test_a_wrong_ca_is_refused(server: tuple[PgServer, str], tmp_path: Path) -> None:
    s, _ = server
    other_ca, _, _ = _pki(tmp_path)
    with pytest.raises(OSError):  # ssl.SSLCertVerificationError
        await WalStream.open(_external_dsn(s, other_ca, "scram", tmp_path))


async def test_campus_members_without_tls_still_use_scram(server: tuple[PgServer, str]) -> None:
    """Internal members' DSNs (sslmode=prefer, no probe): walstream alone still refuses."""
    s, _ = server
    plain = build_dsn(Target(host="127.0.0.1", port=s.port, database="postgres",
                             user="postgres", password=PASSWORD, sslmode=SslMode.DISABLE))
    ws = await WalStream.open(plain)
    await ws.close()


@pytest.mark.parametrize("code", [3, 5])
async def test_fake_server_never_receives_the_password(code: int) -> None:
    """A server that asks for a cleartext password (3) or an MD5 hash (5) gets nothing."""
    received, after = bytearray(), bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack(">i", await reader.readexactly(4))
        received.extend(await reader.readexactly(n - 4))  # the startup packet
        body = struct.pack(">i", code) + (b"salt" if code == 5 else b"")
        writer.write(b"R" + struct.pack(">i", len(body) + 4) + body)
        await writer.drain()
        try:
            while chunk := await asyncio.wait_for(reader.read(4096), 2):
                after.extend(chunk)
        except TimeoutError:
            pass
        writer.close()
        done.set()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        dsn = build_dsn(Target(host="127.0.0.1", port=port, database="lis", user="rk",
                               password=SECRET, sslmode=SslMode.DISABLE))
        with pytest.raises(AuthRefused):
            await WalStream.open(dsn)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        srv.close()
        await srv.wait_closed()
    assert b"user\0rk\0" in received  # the fake did read the startup packet
    assert bytes(after) == b""  # no PasswordMessage ('p'), no hash, nothing at all
