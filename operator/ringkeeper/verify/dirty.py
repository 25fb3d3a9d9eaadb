"""The dirty-key ledger after an incremental pass: forget what was found equal.

The sync sidecar records every key it applies (`ringkeeper.dirty_keys`, and
`ringkeeper.dirty_key_sets` from the bulk path); an incremental verification compares
exactly those keys. Once a pass has compared them, the entries older than the pass's
start are known: equal keys need no second look, and keys that differ (or were still
changing) must be looked at again until they agree.

Keeping the whole ledger of a table that differs (as the first version did) made the
next pass re-read every key changed since the divergence: with continuous verification
every few minutes and a divergence nobody repaired for a day, each pass would look up
every key the ring applied that day. So the keys still to be looked at are written
back as fresh entries, and the rest of the old ledger goes, whether the table passed or
not: a pass costs what changed since the last one, plus the keys that differ.

A full run that finds differences adds their keys to the ledger too: the next
incremental pass then looks at them again, so it cannot report a ring Converged while a
difference only the full run could see (on a key the ring did not change) is still
there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..core.verify import Key
from .checksum import DIRTY_KEYS_DDL

KEEP_SQL = ("INSERT INTO ringkeeper.dirty_keys (relation, key) "
            "SELECT $1, k::jsonb FROM unnest($2::text[]) k "
            "ON CONFLICT (relation, key) DO UPDATE SET changed_at = clock_timestamp()")
FORGET_SQL = ("DELETE FROM ringkeeper.dirty_keys WHERE relation = $1 AND changed_at < $2",
              "DELETE FROM ringkeeper.dirty_key_sets WHERE relation = $1 AND changed_at < $2")


def key_json(key: Sequence[str]) -> str:
    """A key as the ledger stores it: a JSON array of its columns' text."""
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


async def forget_compared(conns: Sequence[Any], relation: str, run_start: Sequence[datetime],
                          keep: Sequence[Key]) -> None:
    """At each member (an asyncpg connection, with the clock time the pass started
    there): record `keep` again as fresh entries, then drop every entry older than the
    start, in one transaction, so no key is ever absent from the ledger in between."""
    keys = sorted({key_json(k) for k in keep})
    for pg, started in zip(conns, run_start, strict=True):
        async with pg.transaction():
            if keys:
                await pg.execute(KEEP_SQL, relation, keys)
            for sql in FORGET_SQL:
                await pg.execute(sql, relation, started)


async def remember(conns: Sequence[Any], relation: str, keys: Sequence[Key]) -> None:
    """Add `keys` to every member's ledger (a full run's differences), fresh."""
    entries = sorted({key_json(k) for k in keys})
    if not entries:
        return
    for pg in conns:
        await pg.execute(DIRTY_KEYS_DDL)
        await pg.execute(KEEP_SQL, relation, entries)
