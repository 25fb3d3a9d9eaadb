"""A host is a host: the admission rule for external.host, and the one DSN builder.

Hostile values come from the cluster findings: `h sslmode=disable`, `h' x`, `user:pw@h`
(URL and key=value syntax that added connection parameters), plus their relatives."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from asyncpg import connect_utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ringkeeper.api.v1alpha1.ring import HOST_PATTERN, NO_CONTROL_PATTERN, is_host
from ringkeeper.api.validation import validate
from ringkeeper.contracts.conninfo import (
    SslMode,
    Target,
    build_dsn,
    parse_dsn,
    root_cert_file,
    with_root_cert,
)
from ringkeeper.sync.walstream import ConnParams

GOOD_HOSTS = ["db.zhaohui.example.org", "localhost", "DB-1.Example.ORG", "xn--fiq228c.example",
              "10.0.0.1", "255.255.255.255", "0.0.0.0", "::1", "2001:db8::8a2e:370:7334",
              "::ffff:192.0.2.1", "fe80::", "1:2:3:4:5:6:7:8", "a" * 63 + ".org"]
BAD_HOSTS = [
    "h sslmode=disable", "h' x", "user:pw@h", "h:5432", "[::1]", "[::1]:5432",
    "postgresql://h", "h/db", "h?sslmode=disable", "h#x", "h\n", "h\r\nx", "h\t", " h", "h ",
    "h\x00", "a\n", "10.0.0.1\n", "host=h", "h;x", "h,i", "%68", "fe80::1%eth0",
    "256.1.1.1", "01.2.3.4", "10.1.2", "0x7f.1", "1::2::3", "1:2:3:4:5:6:7:8:9",
    "-h.org", "h-.org", "a..b", ".h", "h.", "a" * 64 + ".org", "x" * 250 + ".org", "",
    "h\u00e9.org", "ｈ.org",
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_hosts_that_are_hosts(host: str) -> None:
    assert is_host(host)
    # The CEL side runs the same pattern; RE2 and Python agree on this plain grammar.
    assert re.search(HOST_PATTERN, host) is not None


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_hosts_that_are_more_than_hosts(host: str) -> None:
    assert not is_host(host)
    if "\n" not in host:  # Python's `$` matches before a final newline; RE2's does not
        assert re.search(HOST_PATTERN, host) is None


def test_cel_patterns_are_anchored() -> None:
    for pattern in (HOST_PATTERN, NO_CONTROL_PATTERN):
        assert pattern.startswith("^") and pattern.endswith("$")
        assert "'" not in pattern  # the CEL rule quotes it with '


def _ring(external: dict[str, Any]) -> dict[str, Any]:
    ext = {"host": "db.example.org", "database": "lis", "engine": "postgresql",
           "version": "17", "passwordSecret": {"name": "lis-sync"},
           "tls": {"caSecret": {"name": "lis-ca"}}, **external}
    return {"apiVersion": "ringkeeper.io/v1alpha1", "kind": "ReplicationRing",
            "metadata": {"name": "r"},
            "spec": {"members": [{"name": "a", "campusRef": {"name": "a"}},
                                 {"name": "b", "external": ext}]}}


def test_a_good_external_member_is_accepted() -> None:
    assert validate(_ring({})) == []
    assert validate(_ring({"host": "2001:db8::1", "port": 6432})) == []


@pytest.mark.parametrize(("external", "message"), [
    ({"host": "h sslmode=disable"}, "external.host must be a DNS name"),
    ({"host": "user:pw@h"}, "external.host must be a DNS name"),
    ({"host": "db.example.org:5432"}, "external.host must be a DNS name"),
    ({"host": "db.example.org\n"}, "external.host must be a DNS name"),
    ({"user": "rk\x00x"}, "must not contain control characters"),
    ({"database": "lis\nx"}, "must not contain control characters"),
    ({"port": 0}, "greater than or equal to 1"),
    ({"tls": None}, "tls"),
    ({"tls": {}}, "caSecret"),
    ({"tls": {"caSecret": {"name": "ca"}, "sslMode": "disable"}}, "unknown field"),
], ids=lambda v: repr(v)[:40])
def test_external_member_admission(external: dict[str, Any], message: str) -> None:
    doc = _ring(external)
    if external.get("tls", 0) is None:
        del doc["spec"]["members"][1]["external"]["tls"]
    problems = "\n".join(str(p) for p in validate(doc))
    assert message in problems, problems


# -- the builder ------------------------------------------------------------------------
@pytest.mark.parametrize("host", BAD_HOSTS)
def test_builder_refuses_hostile_hosts(host: str) -> None:
    with pytest.raises(ValueError, match=r"host|socket directory"):
        build_dsn(Target(host=host, port=5432, database="lis", user="rk", password="pw"))


HOSTILE_TEXT = ["h sslmode=disable", "h' x", "user:pw@h", "pw@evil.example:1/x?sslmode=disable",
                "a&sslmode=disable", "a#frag", "a/b", "100%", "é", "'; DROP TABLE x; --"]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
@pytest.mark.parametrize("part", ["user", "password", "database"])
def test_other_parts_are_quoted_and_round_trip(part: str, text: str, tmp_path: Path) -> None:
    fields: dict[str, Any] = {"host": "db.example.org", "port": 5433, "database": "lis",
                              "user": "rk", "password": "pw", "sslmode": SslMode.VERIFY_FULL,
                              "sslrootcert": root_cert_file(ca_pem(), tmp_path),
                              **{part: text}}
    t = Target(**fields)
    dsn = build_dsn(t)
    assert parse_dsn(dsn) == t
    # What asyncpg reads from it: the same host, port, user, database and TLS mode,
    # and no parameter it would send to the server as a setting.
    addrs, params = connect_utils._parse_connect_dsn_and_args(
        dsn=dsn, host=None, port=None, user=None, password=None, passfile=None,
        database=None, ssl=None, service=None, servicefile=None, direct_tls=None,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None)
    assert addrs == [("db.example.org", 5433)]
    assert (params.user, params.password, params.database) == (t.user, t.password, t.database)
    assert str(params.sslmode.name).replace("_", "-") == "verify-full"
    assert not params.server_settings


def test_ipv6_hosts_are_bracketed_and_sockets_go_in_the_query() -> None:
    assert build_dsn(Target("::1", 5432, "app", "postgres", "p@ss/w:rd")) == \
        "postgresql://postgres:p%40ss%2Fw%3Ard@[::1]:5432/app?sslmode=prefer"
    sock = build_dsn(Target("/run/ringkeeper", 5432, "app", "postgres", "pw"))
    assert sock == ("postgresql://postgres:pw@/app?host=%2Frun%2Fringkeeper&port=5432"
                    "&sslmode=prefer")
    assert parse_dsn(sock).host == "/run/ringkeeper"


@pytest.mark.parametrize("dsn", [
    "host=x dbname=y",
    "postgresql://u:p@h:5432/db?sslmode=verify-full&options=-c%20x",
    "postgresql://u:p@h:5432/db?application_name=x",
    "postgresql://u:p@h:5432/db?sslmode=disable&sslmode=verify-full",
    "postgresql://u:p@h sslmode=disable:5432/db",
    "postgresql://u:p@evil@h:5432/db",
    "postgresql://u:p@h:5432/db?host=evil.example",
    "postgresql://u:p@h:99999/db",
    "postgresql://u:p@h:5432/db?sslmode=allow",
])
def test_parse_refuses_what_the_builder_never_writes(dsn: str) -> None:
    with pytest.raises(ValueError):
        parse_dsn(dsn)
    with pytest.raises(ValueError):
        ConnParams.from_dsn(dsn)


def test_root_cert_is_written_privately_and_named_by_content(tmp_path: Path) -> None:
    pem = ca_pem()
    path = root_cert_file(pem, tmp_path / "ca")
    assert Path(path).read_text() == pem
    assert Path(path).stat().st_mode & 0o077 == 0
    assert root_cert_file(pem, tmp_path / "ca") == path
    dsn = with_root_cert(build_dsn(Target("db.example.org", 5432, "lis", "rk", "pw")), path)
    assert parse_dsn(dsn).sslmode == SslMode.VERIFY_FULL and parse_dsn(dsn).sslrootcert == path
    with pytest.raises(ValueError, match="PEM"):
        root_cert_file("not a certificate", tmp_path / "ca")


def ca_pem() -> str:
    """A real, self-signed CA certificate (root_cert_file loads what it writes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()
