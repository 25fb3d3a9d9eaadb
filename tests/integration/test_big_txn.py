"""A big transaction crosses a ring of sidecar processes in bounded memory (issue 14
item 6), and every small write made meanwhile at another member arrives everywhere.

In the suite: 200,000 rows (about a minute here). Before the fix a receiving sidecar
grew about 0.4 kB per row of an open transaction (81 MB over its baseline at 200k
rows, 140 MB peak); bounded, it grows about 25 MB whatever the size. So the growth
limit below fails the old behaviour at this size, and the absolute 150 MB limit is the
issue's target at 1M rows (`make bench-ring` runs the 1M-row version: BIG_TXN_ROWS).
The small writes' latency at the far member is printed, not asserted: a transaction
still crosses each hop one after another (see docs/ring.md, "Big transactions").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgserver import unavailable

from . import bigtxn

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

for _m in ("15", "17", "18"):
    if unavailable(_m):
        pytest.skip(f"PostgreSQL {_m}: {unavailable(_m)}", allow_module_level=True)

ROWS = int(os.environ.get("RK_BIG_TXN_ROWS", "200000"))
# bypassAfterSeconds of the ring: RK_BIG_TXN_BYPASS=5 RK_BIG_TXN_ROWS=1000000 measures a
# big transaction against a 1.25 s liveness window (core.liveness.walsender_busy).
BYPASS = int(os.environ.get("RK_BIG_TXN_BYPASS", "60"))
PEAK_RSS_MB = 150.0  # the target (at 1M rows)
GROWTH_MB = 50.0  # over the sidecar's own baseline; unbounded was 81 MB at 200k rows


async def test_big_transaction_bounded_memory_and_small_writes_arrive(tmp_path: Path) -> None:
    res = await bigtxn.run(ROWS, tmp_path, bypass_after=BYPASS)
    print(res.summary())
    logs = "\n".join(f"--- {n}\n{t}" for n, t in res.logs.items())
    assert res.big_at == {n: ROWS for n in ("a", "b", "c")}, logs
    assert res.small_written >= 20
    assert res.small_missing == {n: [] for n in ("a", "b", "c")}, logs
    for n, peak in res.peak_rss_mb.items():
        assert peak < PEAK_RSS_MB, (n, res.summary())
        assert peak - res.base_rss_mb[n] < GROWTH_MB, (n, res.summary())
    # Every small write was seen at both other members (latency measured per row).
    assert all(len(v) == res.small_written for v in res.small_latency_ms.values())
