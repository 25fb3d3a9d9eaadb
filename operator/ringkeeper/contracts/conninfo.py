"""Connection strings, built from typed parts and read back, in one place.

A ReplicationRing author chooses an external member's host, user and database; a
string glued together from them could carry more than a host (`h sslmode=disable`,
`user:pw@evil`, `h/db?sslmode=disable`). So every DSN the ring uses is built here: the
host must be a DNS name or IP literal (the admission rule's own check) or an absolute
Unix-socket directory, every other part is percent-quoted on its own, and the only
query keys are the ones this module writes. `parse_dsn` reads the same form back
(walstream uses it) and applies the same host rule, so a DSN that did not come from
`build_dsn` cannot smuggle a host in either.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..api.v1alpha1.ring import is_host


class SslMode(StrEnum):
    """libpq's sslmode values the ring uses (allow is not one: it never helps)."""

    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


# The query keys a ring DSN may carry; asyncpg would pass any other key to the server
# as a setting, and a setting is not something a spec may choose.
_QUERY_KEYS = ("host", "port", "sslmode", "sslrootcert")


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect. `host` is a DNS name, an IP literal, or (for the
    pod's own database) an absolute Unix-socket directory."""

    host: str
    port: int
    database: str
    user: str
    password: str | None = None
    sslmode: SslMode = SslMode.PREFER
    sslrootcert: str | None = None

    @property
    def is_socket(self) -> bool:
        return self.host.startswith("/")


def _check_text(what: str, value: str) -> None:
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} must be non-empty and free of control characters")


def check(t: Target) -> Target:
    """`t` if every part is one a DSN may carry; ValueError naming the part otherwise."""
    if t.is_socket:
        _check_text("socket directory", t.host)
    elif not is_host(t.host):
        raise ValueError(f"host {t.host!r} is not a DNS name or IP address")
    if not isinstance(t.port, int) or isinstance(t.port, bool) or not 1 <= t.port <= 65535:
        raise ValueError(f"port {t.port!r} is not a TCP port")
    _check_text("database", t.database)
    _check_text("user", t.user)
    if t.password is not None and "\0" in t.password:
        raise ValueError("password must not contain NUL")
    SslMode(t.sslmode)
    if t.sslrootcert is not None:
        _check_text("sslrootcert", t.sslrootcert)
    return t


def build_dsn(t: Target) -> str:
    """The postgresql:// URL of `t`, each part quoted on its own (asyncpg and
    walstream read this form; neither reads libpq's key=value form)."""
    check(t)
    auth = quote(t.user, safe="")
    if t.password is not None:
        auth += ":" + quote(t.password, safe="")
    query = [("sslmode", str(SslMode(t.sslmode)))]
    if t.sslrootcert is not None:
        query.append(("sslrootcert", t.sslrootcert))
    if t.is_socket:
        netloc = f"{auth}@"
        query = [("host", t.host), ("port", str(t.port)), *query]
    else:
        host = f"[{t.host}]" if ":" in t.host else t.host
        netloc = f"{auth}@{host}:{t.port}"
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
    return f"postgresql://{netloc}/{quote(t.database, safe='')}?{qs}"


def parse_dsn(dsn: str) -> Target:
    """A postgresql:// URL back into its parts, under the rules `build_dsn` keeps."""
    u = urlsplit(dsn)
    if u.scheme not in ("postgresql", "postgres"):
        raise ValueError("replication connections need a postgresql:// URL "
                         f"(got scheme {u.scheme!r})")
    raw = parse_qs(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
    unknown = sorted(set(raw) - set(_QUERY_KEYS))
    if unknown:
        raise ValueError(f"connection string has parameters no ring DSN carries: {unknown}")
    if any(len(v) != 1 for v in raw.values()):
        raise ValueError("connection string repeats a parameter")
    q = {k: v[0] for k, v in raw.items()}
    if "@" in u.netloc.rpartition("@")[2] or u.netloc.count("@") > 1:
        raise ValueError("connection string has more than one user@ part")
    user = unquote(u.username) if u.username else "postgres"
    password = unquote(u.password) if u.password is not None else None
    database = unquote(u.path.lstrip("/")) or user
    if "host" in q:
        if u.hostname:
            raise ValueError("connection string names a host twice")
        host = q["host"]
    else:
        host = u.hostname or "localhost"
    try:
        port = int(q["port"]) if "port" in q else (u.port or 5432)
    except ValueError:
        raise ValueError("connection string has an invalid port") from None
    try:
        mode = SslMode(q.get("sslmode", "prefer"))
    except ValueError:
        raise ValueError(f"unsupported sslmode {q.get('sslmode')!r}") from None
    return check(Target(host=host, port=port, database=database, user=user,
                        password=password, sslmode=mode, sslrootcert=q.get("sslrootcert")))


def with_root_cert(dsn: str, path: str) -> str:
    """`dsn` verifying its server against the CA file at `path` (sslmode=verify-full)."""
    return build_dsn(replace(parse_dsn(dsn), sslmode=SslMode.VERIFY_FULL, sslrootcert=path))


def root_cert_file(pem: str, directory: Path | None = None) -> str:
    """Write a CA bundle where only this user can read it; the path (named by content,
    so re-reading the ring config every few seconds rewrites nothing).

    The bundle must load as CA certificates: a Secret holding something else is an
    error now, not a TLS failure later."""
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise ValueError(f"CA bundle does not hold PEM certificates: {exc}") from None
    base = directory or Path(tempfile.gettempdir()) / f"ringkeeper-ca-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = base / (hashlib.sha256(pem.encode()).hexdigest()[:32] + ".pem")
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(pem)
        tmp.replace(path)
    return str(path)


def tls_context(t: Target) -> ssl.SSLContext | None:
    """The TLS context `t.sslmode` asks for (None: no TLS). verify-full checks the chain
    against `sslrootcert` (or the system store) and the host name; verify-ca only the
    chain; require and prefer encrypt without checking who answers."""
    if t.sslmode == SslMode.DISABLE:
        return None
    ctx = ssl.create_default_context(cafile=t.sslrootcert)
    if t.sslmode in (SslMode.REQUIRE, SslMode.PREFER):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif t.sslmode == SslMode.VERIFY_CA:
        ctx.check_hostname = False
    return ctx
