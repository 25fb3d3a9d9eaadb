"""The pgoutput parser against what real PostgreSQL 15/17/18 servers emit (protocol 1)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from pgserver import MAJORS, PgServer, unavailable
from ringkeeper.sync.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    lsn_to_str,
    parse,
    str_to_lsn,
)

pytestmark = pytest.mark.postgres

PEEK = ("SELECT lsn, lsn::text AS lsn_text, xid, data FROM pg_logical_slot_peek_binary_changes("
        "'s', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')")
ORIGIN_TS = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass
class Captured:
    major: str
    rows: list[Any]
    messages: list[Message]
    big: str
    commit_ts: dict[int, datetime]  # xid -> pg_xact_commit_timestamp(xid)

    def of(self, cls: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, cls)]


async def _capture(server: PgServer) -> Captured:
    big = secrets.token_hex(8192)  # 16 kB of random text: TOASTed out of line
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute("""
            CREATE TYPE mood AS ENUM ('sad', 'happy');
            CREATE TABLE t (id int PRIMARY KEY, label text, amount numeric, at timestamptz,
                            blob bytea, big text, m mood);
            CREATE PUBLICATION pub FOR TABLE t;
        """)
        await conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        await conn.execute(
            "INSERT INTO t VALUES (1, 'héllo ☃', 12.50, '2024-01-02 03:04:05+00', "
            "'\\x00ff'::bytea, $1, 'happy')", big)
        await conn.execute("UPDATE t SET label = 'x' WHERE id = 1")
        await conn.execute("DELETE FROM t WHERE id = 1")
        await conn.execute("TRUNCATE t")
        await conn.execute("SELECT pg_logical_emit_message(true, 'ringkeeper', 'hello')")
        await conn.execute("SELECT pg_replication_origin_create('rk_a')")
        await conn.execute("SELECT pg_replication_origin_session_setup('rk_a')")
        async with conn.transaction():
            await conn.execute("SELECT pg_replication_origin_xact_setup("
                               "'0/ABCDEF', '2020-01-01 00:00:00+00')")
            await conn.execute("INSERT INTO t (id, label) VALUES (2, 'from a')")
        await conn.execute("SELECT pg_replication_origin_session_reset()")
        rows = await conn.fetch(PEEK)
        xids = sorted({int(r["xid"]) for r in rows})
        ts = {x: await conn.fetchval("SELECT pg_xact_commit_timestamp($1::text::xid)", str(x))
              for x in xids}
    finally:
        await conn.close()
    return Captured(server.major, list(rows), [parse(r["data"]) for r in rows], big, ts)


@pytest.fixture(scope="module", params=[
    pytest.param(m, marks=pytest.mark.skipif(unavailable(m) is not None,
                                             reason=unavailable(m) or ""), id=f"pg{m}")
    for m in MAJORS])
async def captured(request: pytest.FixtureRequest) -> AsyncIterator[Captured]:
    server = PgServer(request.param)
    try:
        server.start()
        yield await _capture(server)
    finally:
        server.destroy()


def _txns(c: Captured) -> list[list[type[Any]]]:
    """Message classes per transaction, without the Relation/Type messages pgoutput
    (re)sends whenever its schema cache was invalidated."""
    out: list[list[type[Any]]] = []
    for m in c.messages:
        if isinstance(m, Begin):
            out.append([])
        if not isinstance(m, Relation | TypeInfo):
            out[-1].append(type(m))
    return out


def test_sequence_of_messages(captured: Captured) -> None:
    assert _txns(captured) == [
        [Begin, Insert, Commit],
        [Begin, Update, Commit],
        [Begin, Delete, Commit],
        [Begin, Truncate, Commit],
        [Begin, LogicalMessage, Commit],
        [Begin, Origin, Insert, Commit],
    ]
    # the schema precedes the first change of the table, its enum type before it
    first = captured.messages[1:3]
    assert isinstance(first[0], TypeInfo) and isinstance(first[1], Relation)


def test_relation_and_type(captured: Captured) -> None:
    rel = captured.of(Relation)[0]
    assert rel.qualified == "public.t" and rel.replica_identity == "d"
    typ = captured.of(TypeInfo)[0]
    assert (typ.namespace, typ.name) == ("public", "mood")
    assert [(c.name, c.type_oid, c.is_key) for c in rel.columns] == [
        ("id", 23, True), ("label", 25, False), ("amount", 1700, False), ("at", 1184, False),
        ("blob", 17, False), ("big", 25, False), ("m", typ.oid, False)]
    assert all(c.type_modifier == -1 for c in rel.columns)
    assert all(m.relid == rel.oid for m in captured.of(Insert) + captured.of(Delete))
    assert captured.of(Truncate) == [Truncate((rel.oid,), cascade=False, restart_identity=False)]


def test_values_and_unchanged_toast(captured: Captured) -> None:
    ins, _ = captured.of(Insert)
    assert ins.new == ("1", "héllo ☃", "12.50", "2024-01-02 03:04:05+00", "\\x00ff",
                       captured.big, "happy")
    (upd,) = captured.of(Update)
    assert (upd.old, upd.old_kind) == (None, None)
    assert upd.new == ("1", "x", "12.50", "2024-01-02 03:04:05+00", "\\x00ff", UNCHANGED,
                       "happy")
    (dele,) = captured.of(Delete)
    assert (dele.old_kind, dele.old) == ("K", ("1", None, None, None, None, None, None))
    (msg,) = captured.of(LogicalMessage)
    assert (msg.transactional, msg.prefix, msg.content) == (True, "ringkeeper", b"hello")


def test_origin_transaction(captured: Captured) -> None:
    (origin,) = captured.of(Origin)
    assert origin == Origin(str_to_lsn("0/ABCDEF"), "rk_a")
    begin = captured.of(Begin)[-1]
    commit = captured.of(Commit)[-1]
    # decoding reports the origin's commit timestamp, as does the commit_ts module
    assert begin.commit_ts == commit.commit_ts == ORIGIN_TS
    assert captured.commit_ts[begin.xid] == ORIGIN_TS
    assert captured.of(Insert)[-1].new == ("2", "from a", None, None, None, None, None)


def test_lsns_xids_and_timestamps(captured: Captured) -> None:
    begin: Begin | None = None
    for row, m in zip(captured.rows, captured.messages, strict=True):
        assert str_to_lsn(row["lsn_text"]) == row["lsn"]
        assert lsn_to_str(row["lsn"]) == row["lsn_text"]
        if isinstance(m, Begin):
            begin = m
            assert m.commit_ts == captured.commit_ts[m.xid]
        assert begin is not None and int(row["xid"]) == begin.xid
        if isinstance(m, Begin):
            assert m.commit_ts.tzinfo is not None
        elif isinstance(m, Commit):
            assert (m.commit_lsn, m.commit_ts) == (begin.final_lsn, begin.commit_ts)
            assert m.end_lsn == row["lsn"] and m.flags == 0
            begin = None
        elif isinstance(m, LogicalMessage):
            assert m.lsn == row["lsn"]
