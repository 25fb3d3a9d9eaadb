"""The replication stream over a Unix socket: a sidecar's own database is reached at its
socket folder (sync/run.py builds `host=/run/ringkeeper`), and a parent's spool link for a
satellite streams from that database. Before the fix WalStream looked the folder up as a
host name ('Name or service not known') and the link never started on a cluster."""

from __future__ import annotations

import pytest

from pgserver import PASSWORD, PgServer, unavailable
from ringkeeper.contracts.conninfo import SslMode, Target, build_dsn
from ringkeeper.sync.walstream import WalStream

pytestmark = pytest.mark.postgres
MAJOR = "17"


async def test_logical_stream_over_the_socket_folder() -> None:
    if (why := unavailable(MAJOR)) is not None:
        pytest.skip(why)
    s = PgServer(MAJOR, name="sock")
    try:
        s.start()
        s.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
        s.psql("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        s.psql("INSERT INTO t VALUES (42)")
        # sslmode prefer as the sidecar's own DSN has it: no TLS on a socket.
        dsn = build_dsn(Target(host=str(s.root), port=s.port, database="postgres",
                               user="postgres", password=PASSWORD, sslmode=SslMode.PREFER))
        ws = await WalStream.open(dsn)
        try:
            await ws.start_logical("s", 0, [("proto_version", "1"),
                                            ("publication_names", "p")])
            seen = b""
            for _ in range(20):
                seen += b"".join(await ws.read())
                if b"42" in seen:
                    break
            assert b"42" in seen  # the insert, decoded (pgoutput sends text values)
        finally:
            await ws.close()
    finally:
        s.destroy()
