"""Apply a remote transaction at this member, exactly once, keeping its true origin.

Each upstream transaction becomes one local transaction under the replication
origin of the campus that first committed it, with that campus's commit LSN and
time (pg_replication_origin_xact_setup). The commit then advances the origin's
progress atomically with the data: after any crash, progress says exactly which
transactions are in. The row's commit timestamp is the original one, so the next
conflict at this member compares original times, as every other member does.

Rows go in set-based batches (values travel as text and are cast to the target's
own column types). The fast path covers the normal case, a row last written by
the same origin; anything else takes the slow path, where the conflict rules in
core.conflicts decide and the decision is logged.

The Applier is assembled from one part per job, each in its own module:
  sync/tablemap.py      upstream relations matched to local tables (TableMap, Tables)
  sync/session.py       origin session, BEGIN/COMMIT, progress and bookkeeping
  sync/rowpath.py       a transaction's changes in set-based batches (the fast path)
  sync/conflictpath.py  rows the fast path left: decide, act, log (the slow path)
  sync/pipeline.py      whole transactions in bulk scripts, with prepared statements
  sync/records.py       the records they share (Txn, Change, Stats, ApplyError)
The names other modules use stay importable from here.
"""

from __future__ import annotations

from .conflictpath import CLASH_LOG_EVERY, describe_conflict
from .pipeline import BULK_ROWS, CLASSIC_AFTER_MISS, MAX_PREPARED, Pipeline
from .records import EPOCH, ApplyError, Change, Stats, Txn
from .rowpath import BATCH_ROWS
from .tablemap import TableMap

__all__ = [
    "BATCH_ROWS",
    "BULK_ROWS",
    "CLASH_LOG_EVERY",
    "CLASSIC_AFTER_MISS",
    "EPOCH",
    "MAX_PREPARED",
    "Applier",
    "ApplyError",
    "Change",
    "Stats",
    "TableMap",
    "Txn",
    "describe_conflict",
]


class Applier(Pipeline):
    """Applies transactions at one member over one connection (one origin at a time)."""
