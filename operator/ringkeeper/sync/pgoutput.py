"""Parser of PostgreSQL's pgoutput logical-decoding binary protocol, version 1.

The ring's sync engine reads changes with ``pg_logical_slot_peek_binary_changes`` and
must understand every row exactly (origins, unchanged TOASTed values, key-only old
rows) to route and resolve conflicts, so this module turns one message's bytes into a
frozen dataclass. It is pure (no I/O) and sits on the hot path of every replicated
change, hence ``struct``/``bytes.index`` instead of per-byte Python loops.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, NoReturn, TypeAlias, final

from ..base.lsn import lsn_to_str as lsn_to_str
from ..base.lsn import str_to_lsn as str_to_lsn


@final
class _Unchanged:
    """Type of :data:`UNCHANGED`: a TOASTed value the server did not send ('u')."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value: TypeAlias = str | bytes | _Unchanged | None

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True)
class Origin:
    origin_lsn: int
    name: str


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(slots=True)  # not frozen: built once per row, and frozen costs twice
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(slots=True)  # not frozen: built once per row, and frozen costs twice
class Update:
    relid: int
    old: tuple[Value, ...] | None
    old_kind: str | None  # 'K' key columns only, 'O' full old row, None: not sent
    new: tuple[Value, ...]


@dataclass(slots=True)  # not frozen: built once per row, and frozen costs twice
class Delete:
    relid: int
    old: tuple[Value, ...]
    old_kind: str


@dataclass(frozen=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message: TypeAlias = (Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete
                      | Truncate | LogicalMessage)


class ProtocolError(ValueError):
    """The bytes are not a pgoutput protocol version 1 message."""


_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")
_MESSAGE_HEAD = struct.Struct(">bQ")
_COLUMN_TAIL = struct.Struct(">Ii")
_TRUNCATE_HEAD = struct.Struct(">ib")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_KIND_LEN = struct.Struct(">Bi")
_K, _O, _N = 0x4B, 0x4F, 0x4E  # 'K', 'O', 'N'


def _fail(buf: bytes, pos: int, what: str) -> NoReturn:
    raise ProtocolError(f"pgoutput message {chr(buf[0])!r}: {what} at offset {pos} "
                        f"(message is {len(buf)} bytes)")


def _ts(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        _fail(buf, pos, "unterminated string")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError:
        _fail(buf, pos, "invalid UTF-8 in string")


def _need(buf: bytes, pos: int, size: int, what: str) -> None:
    if pos + size > len(buf):
        _fail(buf, pos, f"truncated {what}")


class _Irregular(Exception):
    pass


def _tuple(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """The hot path: text and NULL values only, bounds checked once at the end; any
    other shape (or damage) goes to the checked reader for its exact message. An ASCII
    message is decoded once and sliced (byte and character offsets agree)."""
    try:
        (ncols,) = _U16.unpack_from(buf, pos)
        p = pos + 2
        values: list[Value] = []
        append = values.append
        head = _KIND_LEN.unpack_from
        text = buf.decode("ascii") if buf.isascii() else None
        for _ in range(ncols):
            if buf[p] == 0x6E:  # 'n' NULL
                append(None)
                p += 1
                continue
            kind, n = head(buf, p)
            if kind != 0x74 or n < 0:
                raise _Irregular
            p += 5 + n
            append(text[p - n:p] if text is not None else buf[p - n:p].decode())
        if p > len(buf):
            raise _Irregular
        return tuple(values), p
    except (_Irregular, IndexError, struct.error, UnicodeDecodeError):
        return _tuple_checked(buf, pos)


def _tuple_checked(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    _need(buf, pos, 2, "column count")
    (ncols,) = _U16.unpack_from(buf, pos)
    pos += 2
    size = len(buf)
    unpack = _I32.unpack_from
    values: list[Value] = []
    append = values.append
    for _ in range(ncols):
        if pos >= size:
            _fail(buf, pos, "truncated tuple data")
        kind = buf[pos]
        if kind in (0x74, 0x62):  # 't' text, 'b' binary
            if pos + 5 > size:
                _fail(buf, pos, "truncated value length")
            (n,) = unpack(buf, pos + 1)
            start = pos + 5
            pos = start + n
            if n < 0 or pos > size:
                _fail(buf, start - 4, f"bad value length {n}")
            if kind == 0x74:
                try:
                    append(buf[start:pos].decode())
                except UnicodeDecodeError:
                    _fail(buf, start, "invalid UTF-8 in text value")
            else:
                append(buf[start:pos])
        elif kind == 0x6E:  # 'n' NULL
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u' unchanged TOASTed value
            append(UNCHANGED)
            pos += 1
        else:
            _fail(buf, pos, f"unknown tuple value kind {chr(kind)!r}")
    return tuple(values), pos


def _begin(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, _BEGIN.size, "Begin")
    lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(lsn, _ts(ts), xid), 1 + _BEGIN.size


def _commit(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, _COMMIT.size, "Commit")
    flags, lsn, end, ts = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, lsn, end, _ts(ts)), 1 + _COMMIT.size


def _origin(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, 8, "Origin")
    (lsn,) = _U64.unpack_from(buf, 1)
    name, pos = _string(buf, 9)
    return Origin(lsn, name), pos


def _relation(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, 4, "relation oid")
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    _need(buf, pos, 3, "replica identity and column count")
    identity = chr(buf[pos])
    (ncols,) = _U16.unpack_from(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(ncols):
        _need(buf, pos, 1, "column flags")
        flags = buf[pos]
        colname, pos = _string(buf, pos + 1)
        _need(buf, pos, 8, "column type")
        type_oid, typmod = _COLUMN_TAIL.unpack_from(buf, pos)
        pos += 8
        columns.append(Column(colname, type_oid, typmod, bool(flags & 1)))
    return Relation(oid, namespace or "pg_catalog", name, identity, tuple(columns)), pos


def _type(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, 4, "type oid")
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    return TypeInfo(oid, namespace or "pg_catalog", name), pos


def _relid_and_marker(buf: bytes) -> tuple[int, int]:
    _need(buf, 1, 5, "relation id and tuple marker")
    (relid,) = _U32.unpack_from(buf, 1)
    return relid, buf[5]


def _insert(buf: bytes) -> tuple[Message, int]:
    relid, marker = _relid_and_marker(buf)
    if marker != _N:
        _fail(buf, 5, f"expected 'N', got {chr(marker)!r}")
    new, pos = _tuple(buf, 6)
    return Insert(relid, new), pos


def _update(buf: bytes) -> tuple[Message, int]:
    relid, marker = _relid_and_marker(buf)
    old: tuple[Value, ...] | None = None
    old_kind: str | None = None
    pos = 5
    if marker in (_K, _O):
        old_kind = chr(marker)
        old, pos = _tuple(buf, 6)
        _need(buf, pos, 1, "new tuple marker")
        marker = buf[pos]
    if marker != _N:
        _fail(buf, pos, f"expected 'N', got {chr(marker)!r}")
    new, pos = _tuple(buf, pos + 1)
    return Update(relid, old, old_kind, new), pos


def new_values(m: Update) -> tuple[Value, ...]:
    """The update's new row, each unchanged TOASTed value taken from the old row.

    pgoutput leaves a TOASTed value the update did not change out of the new row
    (UNCHANGED), even under REPLICA IDENTITY FULL. Such an update cannot stand for a
    row that is missing or older at the target, and would overwrite the target's own
    copy of the value, which may be another version's. Under REPLICA IDENTITY FULL
    (old_kind 'O') the old row is logged whole, out-of-line values included, and a
    value the update left alone is the old row's: so the update is complete again.
    The ring sets REPLICA IDENTITY FULL on every table with a column that can be
    stored out of line (capture.ensure_tombstone_triggers).
    """
    new = m.new
    if m.old_kind != "O" or m.old is None or UNCHANGED not in new:
        return new
    return tuple(o if n is UNCHANGED else n for o, n in zip(m.old, new, strict=True))


def _delete(buf: bytes) -> tuple[Message, int]:
    relid, marker = _relid_and_marker(buf)
    if marker not in (_K, _O):
        _fail(buf, 5, f"expected 'K' or 'O', got {chr(marker)!r}")
    old, pos = _tuple(buf, 6)
    return Delete(relid, old, chr(marker)), pos


def _truncate(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, _TRUNCATE_HEAD.size, "Truncate")
    nrels, options = _TRUNCATE_HEAD.unpack_from(buf, 1)
    if nrels < 0:
        _fail(buf, 1, f"bad relation count {nrels}")
    _need(buf, 6, 4 * nrels, "relation ids")
    relids = struct.unpack_from(f">{nrels}I", buf, 6)
    return Truncate(relids, bool(options & 1), bool(options & 2)), 6 + 4 * nrels


def _message(buf: bytes) -> tuple[Message, int]:
    _need(buf, 1, _MESSAGE_HEAD.size, "Message")
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
    prefix, pos = _string(buf, 1 + _MESSAGE_HEAD.size)
    _need(buf, pos, 4, "content length")
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 0 or pos + n > len(buf):
        _fail(buf, pos - 4, f"bad content length {n}")
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:pos + n]), pos + n


_PARSERS: Final[dict[int, Callable[[bytes], tuple[Message, int]]]] = {
    ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("R"): _relation,
    ord("Y"): _type, ord("I"): _insert, ord("U"): _update, ord("D"): _delete,
    ord("T"): _truncate, ord("M"): _message,
}
_STREAMING: Final = {ord(c): n for c, n in (("S", "Stream Start"), ("E", "Stream Stop"),
                                            ("c", "Stream Commit"), ("A", "Stream Abort"))}


def parse(data: bytes) -> Message:
    """One pgoutput (protocol version 1) message, e.g. one ``data`` of a slot's changes."""
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise ProtocolError("empty pgoutput message")
    if buf[0] == 0x49 and len(buf) > 6 and buf[5] == _N:  # Insert: the hot path
        new, end = _tuple(buf, 6)
        if end == len(buf):
            return Insert(_U32.unpack_from(buf, 1)[0], new)
    parser = _PARSERS.get(buf[0])
    if parser is None:
        if buf[0] in _STREAMING:
            _fail(buf, 0, f"{_STREAMING[buf[0]]} needs streaming (protocol version 2+)")
        _fail(buf, 0, "unknown message type")
    msg, end = parser(buf)
    if end != len(buf):
        _fail(buf, end, f"{len(buf) - end} trailing bytes")
    return msg
