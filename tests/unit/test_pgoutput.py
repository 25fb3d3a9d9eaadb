"""pgoutput protocol 1 parser: hand-built messages of every type, values, and bad input."""

from __future__ import annotations

import pickle
import struct
from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.sync.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    ProtocolError,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    lsn_to_str,
    parse,
    str_to_lsn,
)

TS = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
TS_MICROS = (TS - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def i8(n: int) -> bytes:
    return struct.pack(">b", n)


def i16(n: int) -> bytes:
    return struct.pack(">h", n)


def i32(n: int) -> bytes:
    return struct.pack(">I", n)


def i64(n: int) -> bytes:
    return struct.pack(">q", n)


def text(v: str) -> bytes:
    raw = v.encode()
    return b"t" + i32(len(raw)) + raw


def tup(*cols: bytes) -> bytes:
    return i16(len(cols)) + b"".join(cols)


ROW = tup(text("42"), b"n", b"u", text("żółw 🐢"), b"b" + i32(3) + b"\x00\xff\x00", text(""))
ROW_VALUES = ("42", None, UNCHANGED, "żółw 🐢", b"\x00\xff\x00", "")
KEY = tup(text("42"), b"n", b"n", b"n", b"n", b"n")
KEY_VALUES = ("42", None, None, None, None, None)

GOOD = [
    pytest.param(b"B" + i64(0x16B3748) + i64(TS_MICROS) + i32(0xFFFFFFFE),
                 Begin(0x16B3748, TS, 0xFFFFFFFE), id="begin"),
    pytest.param(b"B" + i64(1) + i64(-1) + i32(7),
                 Begin(1, datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 7),
                 id="begin-before-epoch"),
    pytest.param(b"C" + i8(0) + i64(0x100000010) + i64(0x100000040) + i64(TS_MICROS),
                 Commit(0, 0x100000010, 0x100000040, TS), id="commit"),
    pytest.param(b"O" + i64(0xABCDEF) + s("rk_a"), Origin(0xABCDEF, "rk_a"), id="origin"),
    pytest.param(b"O" + i64(1) + s("ørigin"), Origin(1, "ørigin"), id="origin-unicode"),
    pytest.param(b"R" + i32(16389) + s("public") + s("t") + b"d" + i16(2)
                 + i8(1) + s("id") + i32(23) + struct.pack(">i", -1)
                 + i8(0) + s("name") + i32(1043) + struct.pack(">i", 68),
                 Relation(16389, "public", "t", "d", (Column("id", 23, -1, True),
                                                      Column("name", 1043, 68, False))),
                 id="relation"),
    pytest.param(b"R" + i32(1) + s("") + s("pg_class") + b"n" + i16(0),
                 Relation(1, "pg_catalog", "pg_class", "n", ()), id="relation-catalog-no-cols"),
    pytest.param(b"R" + i32(2) + s("schéma") + s("täble") + b"f" + i16(1)
                 + i8(1) + s("ключ") + i32(25) + struct.pack(">i", -1),
                 Relation(2, "schéma", "täble", "f", (Column("ключ", 25, -1, True),)),
                 id="relation-unicode-full"),
    pytest.param(b"Y" + i32(16385) + s("public") + s("mood"),
                 TypeInfo(16385, "public", "mood"), id="type"),
    pytest.param(b"Y" + i32(16) + s("") + s("bool"), TypeInfo(16, "pg_catalog", "bool"),
                 id="type-catalog"),
    pytest.param(b"I" + i32(16389) + b"N" + ROW, Insert(16389, ROW_VALUES), id="insert"),
    pytest.param(b"I" + i32(5) + b"N" + tup(), Insert(5, ()), id="insert-no-columns"),
    pytest.param(b"U" + i32(7) + b"N" + ROW, Update(7, None, None, ROW_VALUES),
                 id="update-new-only"),
    pytest.param(b"U" + i32(7) + b"K" + KEY + b"N" + ROW,
                 Update(7, KEY_VALUES, "K", ROW_VALUES), id="update-key"),
    pytest.param(b"U" + i32(7) + b"O" + ROW + b"N" + tup(text("1")),
                 Update(7, ROW_VALUES, "O", ("1",)), id="update-old-row"),
    pytest.param(b"D" + i32(7) + b"K" + KEY, Delete(7, KEY_VALUES, "K"), id="delete-key"),
    pytest.param(b"D" + i32(7) + b"O" + ROW, Delete(7, ROW_VALUES, "O"), id="delete-old-row"),
    pytest.param(b"T" + i32(2) + i8(3) + i32(10) + i32(0xFFFFFFFF),
                 Truncate((10, 0xFFFFFFFF), cascade=True, restart_identity=True),
                 id="truncate-cascade-restart"),
    pytest.param(b"T" + i32(1) + i8(0) + i32(10), Truncate((10,), False, False), id="truncate"),
    pytest.param(b"T" + i32(1) + i8(2) + i32(10), Truncate((10,), False, True),
                 id="truncate-restart"),
    pytest.param(b"M" + i8(1) + i64(99) + s("ringkeeper") + i32(5) + b"hello",
                 LogicalMessage(True, 99, "ringkeeper", b"hello"), id="message-transactional"),
    pytest.param(b"M" + i8(0) + i64(99) + s("") + i32(3) + b"\0\x01\0",
                 LogicalMessage(False, 99, "", b"\0\x01\0"), id="message-binary-content"),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_parse(data: bytes, expected: Message) -> None:
    assert parse(data) == expected
    assert parse(memoryview(data)) == expected  # type: ignore[arg-type]


BAD = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"Z\0\0", "'Z': unknown message type at offset 0", id="unknown-type"),
    pytest.param(b"S" + i32(1) + i8(1), "streaming", id="stream-start"),
    pytest.param(b"E", "streaming", id="stream-stop"),
    pytest.param(b"c" + i32(1), "streaming", id="stream-commit"),
    pytest.param(b"A" + i32(1) + i32(2), "streaming", id="stream-abort"),
    pytest.param(b"B" + i64(1) + i64(2), "'B': truncated Begin at offset 1", id="begin-truncated"),
    pytest.param(b"B" + i64(1) + i64(2) + i32(3) + b"x", "'B': 1 trailing bytes at offset 21",
                 id="begin-trailing"),
    pytest.param(b"C" + i8(0) + i64(1), "'C': truncated Commit", id="commit-truncated"),
    pytest.param(b"O" + i64(1) + b"rk_a", "'O': unterminated string at offset 9",
                 id="origin-unterminated"),
    pytest.param(b"O" + i64(1) + b"\xff\0", "invalid UTF-8", id="origin-bad-utf8"),
    pytest.param(b"R" + i32(1) + s("public") + s("t") + b"d" + i16(1) + i8(1) + s("id") + i32(23),
                 "'R': truncated column type at offset", id="relation-truncated-column"),
    pytest.param(b"R" + i32(1) + s("public") + s("t"), "replica identity",
                 id="relation-truncated-header"),
    pytest.param(b"I" + i32(1) + b"N" + i16(2) + text("a"), "'I': truncated tuple data at offset",
                 id="insert-missing-column"),
    pytest.param(b"I" + i32(1) + b"N" + i16(1) + b"t" + i32(10) + b"abc",
                 "'I': bad value length 10 at offset 9", id="insert-value-truncated"),
    pytest.param(b"I" + i32(1) + b"N" + i16(1) + b"t" + i32(0xFFFFFFFF),
                 "bad value length -1", id="insert-negative-length"),
    pytest.param(b"I" + i32(1) + b"N" + i16(1) + b"t" + b"\0\0", "truncated value length",
                 id="insert-length-truncated"),
    pytest.param(b"I" + i32(1) + b"N" + i16(1) + b"x", "unknown tuple value kind 'x' at offset 8",
                 id="insert-bad-kind"),
    pytest.param(b"I" + i32(1) + b"N" + tup(b"t" + i32(1) + b"\xff"), "invalid UTF-8 in text",
                 id="insert-bad-utf8"),
    pytest.param(b"I" + i32(1) + b"K" + tup(), "expected 'N', got 'K'", id="insert-old-tuple"),
    pytest.param(b"I" + i32(1) + b"N" + tup(b"n") + b"\0", "1 trailing bytes",
                 id="insert-trailing"),
    pytest.param(b"I" + i32(1), "truncated relation id", id="insert-truncated"),
    pytest.param(b"U" + i32(1) + b"K" + tup(b"n"), "truncated new tuple marker",
                 id="update-missing-new"),
    pytest.param(b"U" + i32(1) + b"K" + tup(b"n") + b"O" + tup(), "expected 'N', got 'O'",
                 id="update-two-old"),
    pytest.param(b"D" + i32(1) + b"N" + tup(), "expected 'K' or 'O'", id="delete-new-tuple"),
    pytest.param(b"T" + i32(2) + i8(0) + i32(1), "truncated relation ids",
                 id="truncate-missing-oid"),
    pytest.param(b"T" + struct.pack(">i", -1) + i8(0), "bad relation count -1",
                 id="truncate-negative"),
    pytest.param(b"M" + i8(1) + i64(1) + s("p") + i32(9) + b"short", "bad content length 9",
                 id="message-truncated"),
    pytest.param(b"M" + i8(1) + i64(1) + s("p") + i32(1) + b"ab", "1 trailing bytes",
                 id="message-trailing"),
]


@pytest.mark.parametrize(("data", "error"), BAD)
def test_parse_rejects(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse(data)
    assert error in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_unchanged_sentinel() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert UNCHANGED is not None and UNCHANGED != ""


def test_relation_qualified() -> None:
    rel = parse(b"R" + i32(1) + s("") + s("pg_class") + b"n" + i16(0))
    assert isinstance(rel, Relation) and rel.qualified == "pg_catalog.pg_class"


@pytest.mark.parametrize(("lsn", "text"), [
    pytest.param(0, "0/0", id="zero"),
    pytest.param(0x16B3748, "0/16B3748", id="low"),
    pytest.param(0xABCDEF, "0/ABCDEF", id="origin"),
    pytest.param(0x1_00000000, "1/0", id="high-only"),
    pytest.param(0xFFFFFFFF_FFFFFFFF, "FFFFFFFF/FFFFFFFF", id="max"),
])
def test_lsn_round_trip(lsn: int, text: str) -> None:
    assert lsn_to_str(lsn) == text
    assert str_to_lsn(text) == lsn
    assert str_to_lsn(text.lower()) == lsn


@pytest.mark.parametrize("bad", [
    pytest.param("", id="empty"), pytest.param("16B3748", id="no-slash"),
    pytest.param("0/", id="no-low"), pytest.param("/1", id="no-high"),
    pytest.param("0/1/2", id="two-slashes"), pytest.param("G/1", id="not-hex"),
    pytest.param(" 0/1", id="space"), pytest.param("0/-1", id="sign"),
    pytest.param("0/0x1", id="0x-prefix"), pytest.param("100000000/0", id="high-too-long"),
])
def test_str_to_lsn_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        str_to_lsn(bad)


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_lsn_to_str_rejects(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        lsn_to_str(bad)
