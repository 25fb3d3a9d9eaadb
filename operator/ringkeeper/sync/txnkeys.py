"""The keys one applied transaction has written so far, in bounded memory.

The row-by-row apply path must know, for each row it meets, whether this very
transaction already wrote (True) or deleted (False) that key: such a row is the
newest version by definition, not a conflict, and a row written here has no commit
time yet for the conflict rules to weigh. A dict of every key cost about 0.4 kB per
row, so a transaction of a million rows grew the sidecar by hundreds of megabytes
(issue 14). Here the newest keys stay in a dict; past SPILL_KEYS they move to a
private temporary SQLite file (deleted when closed), so memory stays bounded however
large the transaction, and small transactions never touch the disk. Lookups are
exact: the dict (newer) first, then the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

SPILL_KEYS = 20_000  # keys held in memory before they move to the file


def _blob(relation: str, key: Sequence[str]) -> bytes:
    # PostgreSQL text never holds NUL, so NUL separates the parts unambiguously.
    return "\0".join((relation, *key)).encode()


class TxnKeys:
    """key -> written (True) or deleted (False) by the current transaction."""

    def __init__(self, spill_keys: int = SPILL_KEYS) -> None:
        self.spill_keys = spill_keys
        self._mem: dict[tuple[str, tuple[str, ...]], bool] = {}
        self._db: sqlite3.Connection | None = None
        self._on_disk = 0  # keys written to the file in this transaction (0: none)
        self.spills = 0  # times keys moved to the file (for tests and status)

    def __len__(self) -> int:
        return len(self._mem) + self._on_disk

    def clear(self) -> None:
        self._mem.clear()
        if self._on_disk and self._db is not None:
            self._db.execute("DELETE FROM k")
        self._on_disk = 0

    def close(self) -> None:
        self._mem.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._on_disk = 0

    def set(self, relation: str, key: tuple[str, ...], live: bool) -> None:
        self._mem[(relation, key)] = live
        if len(self._mem) >= self.spill_keys:
            self._spill()

    def get(self, relation: str, key: tuple[str, ...]) -> bool | None:
        hit = self._mem.get((relation, key))
        if hit is not None or not self._on_disk:
            return hit
        assert self._db is not None
        row = self._db.execute("SELECT live FROM k WHERE key = ?",
                               (_blob(relation, key),)).fetchone()
        return None if row is None else bool(row[0])

    def recent(self, relation: str,
               keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], bool]:
        """The ones among `keys` known from memory alone (the newest keys): a hint for
        the set-based statements, which treat a key this transaction wrote specially
        only to save a detour. A key missed here meets a row with no commit time yet (or
        an existing key, or its own tombstone), so the statement leaves it to the
        row-by-row path, which asks get(): exact, and touching the disk only there."""
        mem = self._mem
        out: dict[tuple[str, ...], bool] = {}
        for key in keys:
            hit = mem.get((relation, key))
            if hit is not None:
                out[key] = hit
        return out

    def _spill(self) -> None:
        if self._db is None:
            # "": a private temporary database on disk, removed when closed; its page
            # cache (SQLite's default, about 2 MB) is all it keeps in memory.
            self._db = sqlite3.connect("", isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE k (key BLOB PRIMARY KEY, live INTEGER NOT NULL) "
                             "WITHOUT ROWID")
        db = self._db
        db.execute("BEGIN")
        # Sorted: the B-tree is filled in order (a third cheaper than as they came).
        db.executemany("INSERT OR REPLACE INTO k (key, live) VALUES (?, ?)",
                       sorted((_blob(r, k), int(v)) for (r, k), v in self._mem.items()))
        db.execute("COMMIT")
        self._on_disk += len(self._mem)  # an upper bound (a key may be there twice)
        self._mem.clear()
        self.spills += 1
